"""Experiments: measure every campaign's variants against its control each night, evaluate the uplift
models, and store what the next allocation needs (results, posteriors, paused variants).

Per campaign the units are users (each user's first send in the window, sql/marts/experiment_units.sql),
and per metric every variant is compared with the control (the holdout unless the campaign names a
`control_variant`) by the methods of tailor/stats.py. A failed sample-ratio check marks the whole
campaign's results as not trusted: they are published, flagged, and steer nothing.

The metrics come from the catalogue in config (`experiments.metrics`: Tailor's built-ins and the company's
own, event-based or from its SQL files), each with its CUPED covariate (its pre-period, a users attribute, an
expression over the behaviour before the send, or none). The campaign's `primary_metric` decides; its
`guardrails` are metrics a variant must not significantly worsen; other metrics are not computed. A metric
an arm cannot move by design (a click, for the holdout that gets no message) is not tested, and neither is a
comparison the estimators find too little data for (tailor/stats.py says why, in `untested_reason`).
Each row carries the power of today's sample (minimum detectable effect, power at the observed difference,
days to a decision) and each variant a verdict in words: ship, keep running or stop.

Tables (warehouse):
    meta.experiment_results   one row per run date, campaign, variant and metric (published as
                              experiment_results); a rerun of a date replaces its rows
    meta.variant_posteriors   each variant's Beta posterior of converting, from the bandit's evidence
    meta.uplift_evaluation    per campaign and variant: Qini coefficient and uplift at 10/20/30%
    meta.qini_curves          the Qini curves behind them, for the report
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor import stats, uplift
from tailor.config import (
    METRIC_SQL_PARAMETERS,
    CampaignConfig,
    ConfigError,
    ExperimentsConfig,
    MetricConfig,
    Settings,
)
from tailor.sql import bind, ensure_table, query, read_partition, replace_run_rows, table_exists
from tailor.tasks.train import (
    CONVERSION_HOLDOUT_DAYS,
    conversion_model_name,
    feature_matrix,
    predict_propensity,
)
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)

HOLDOUT = "holdout"
UPLIFT_SHARES = (0.1, 0.2, 0.3)


@dataclass(frozen=True)
class Metric:
    name: str  # in the catalogue (tailor.config ExperimentsConfig.catalogue): the built-ins and the company's
    column: str  # per unit, in the units frame; NULL where the unit is not (yet) measured on the metric
    # CUPED's covariate: an expression over the unit's columns (a bare column name is one: a behaviour before
    # the send, a users attribute, the metric's pre-period), validated by tailor.config.covariate_names; None:
    # no adjustment
    covariate: str | None
    is_rate: bool  # binary: the two-proportion test; otherwise Welch's
    higher_is_better: bool
    # only a user who was sent the message can move it: against the holdout it is zero by construction, so
    # that comparison is not tested
    needs_message: bool = False
    unit: str = "points"  # how a difference reads: a rate in percentage points, a mean in its own unit
    sql: str | None = None  # the company's SQL file that computes it, relative to the config file


def metric_column(name: str) -> str:
    """The units frame's column of an event-based or SQL metric (prefixed: never a unit's own column)."""
    return f"metric__{name}"


def pre_period_column(name: str) -> str:
    """Its value over the same length of time before the send (CUPED's default covariate)."""
    return f"metric__{name}__before"


def as_metric(name: str, definition: MetricConfig) -> Metric:
    """A catalogue entry as the analysis reads it."""
    column = definition.exposure_outcome or metric_column(name)
    choice = definition.covariate_choice
    covariate = {"none": None, "pre_period": pre_period_column(name)}.get(choice, choice)
    is_rate = definition.metric_kind == "binary"
    return Metric(
        name, column, covariate, is_rate, definition.higher_is_better, definition.needs_message,
        "points" if is_rate else (definition.unit or ""), definition.sql,
    )  # fmt: skip


def catalogue_metrics(config: ExperimentsConfig) -> dict[str, Metric]:
    """Every metric a campaign may name, by name."""
    return {name: as_metric(name, definition) for name, definition in config.catalogue.items()}


# Tailor's own metrics as they are without configuration (the hand-made rows of tests and old results read them)
METRICS = tuple(catalogue_metrics(ExperimentsConfig()).values())


def campaign_metrics(campaign: CampaignConfig, config: ExperimentsConfig) -> list[tuple[Metric, str]]:
    """The campaign's metrics and their roles: its primary, then its guardrails. Without guardrails named,
    every other catalogue metric that can be tested against the control: a metric only the message moves
    is left out when the control is the holdout (every comparison with it would be untested)."""
    metrics = catalogue_metrics(config)
    primary = campaign.primary_metric
    if campaign.guardrails is not None:
        guardrails = campaign.guardrails
    else:
        guardrails = [
            name for name, metric in metrics.items()
            if name != primary and not (metric.needs_message and campaign.control_variant is None)
        ]  # fmt: skip
    return [(metrics[primary], "primary"), *((metrics[name], "guardrail") for name in guardrails)]


VERDICTS = ("ship", "keep running", "stop")

RESULT_COLUMNS: dict[str, str] = {
    "run_date": "date",
    "campaign_id": "varchar",
    "variant_id": "varchar",
    "metric": "varchar",
    "control_variant_id": "varchar",
    "is_control": "boolean",
    "window_start": "timestamp",
    "test": "varchar",
    "units": "bigint",
    "mean": "double",
    "control_units": "bigint",
    "control_mean": "double",
    "diff": "double",
    "ci_low": "double",
    "ci_high": "double",
    "p_value": "double",
    "lift": "double",
    "lift_ci_low": "double",
    "lift_ci_high": "double",
    "cuped_diff": "double",
    "cuped_ci_low": "double",
    "cuped_ci_high": "double",
    "cuped_p_value": "double",
    "cuped_interval_narrowing": "double",
    "sequential_ci_low": "double",
    "sequential_ci_high": "double",
    "sequential_p_value": "double",
    "decision_p_value": "double",
    "p_value_adjusted": "double",
    "is_significant": "boolean",
    "chance_to_beat_control": "double",
    "expected_loss": "double",
    "posterior_mean": "double",
    "posterior_sd": "double",
    "srm_p_value": "double",
    "is_srm": "boolean",
    "is_trusted": "boolean",
    "alpha": "double",
    "correction": "varchar",
    # added for issue #18: new columns go last, as a table made before them gains them at its end (inserts
    # are positional)
    "metric_role": "varchar",
    "higher_is_better": "boolean",
    "untested_reason": "varchar",
    "mde": "double",
    "mde_relative": "double",
    "power_at_observed": "double",
    "days_to_decision": "double",
    "verdict": "varchar",
    "verdict_reason": "varchar",
}
POSTERIOR_COLUMNS = {
    "run_date": "date", "campaign_id": "varchar", "variant_id": "varchar", "sends": "bigint",
    "conversions": "bigint", "alpha": "double", "beta": "double", "is_trusted": "boolean",
}  # fmt: skip
UPLIFT_COLUMNS = {
    "run_date": "date", "campaign_id": "varchar", "variant_id": "varchar", "sends": "bigint",
    "holdout_sends": "bigint", "qini_coefficient": "double", "uplift_at_10": "double",
    "uplift_at_20": "double", "uplift_at_30": "double", "incremental_conversions_per_send": "double",
    "variant_model_version": "varchar", "no_contact_model_version": "varchar",
}  # fmt: skip
DECISION_COLUMNS = {
    "run_date": "date", "campaign_id": "varchar", "variant_id": "varchar", "policy": "varchar",
    "users": "bigint", "share": "double", "previous_share": "double", "reason": "varchar",
}  # fmt: skip
CURVE_COLUMNS = {
    "run_date": "date", "campaign_id": "varchar", "variant_id": "varchar", "share_targeted": "double",
    "incremental_per_unit": "double", "random_per_unit": "double",
}  # fmt: skip


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    for table, columns in (
        ("meta.experiment_results", RESULT_COLUMNS),
        ("meta.variant_posteriors", POSTERIOR_COLUMNS),
        ("meta.uplift_evaluation", UPLIFT_COLUMNS),
        ("meta.qini_curves", CURVE_COLUMNS),
        ("meta.allocation_decisions", DECISION_COLUMNS),
    ):
        ensure_table(con, table, columns)
    # a warehouse made by an earlier version lacks the newer result columns: add them (at the end, in order)
    present = {
        name
        for (name,) in con.execute(
            "select column_name from information_schema.columns "
            "where table_schema = 'meta' and table_name = 'experiment_results'"
        ).fetchall()
    }
    for name, sql_type in RESULT_COLUMNS.items():
        if name not in present:
            con.execute(f"alter table meta.experiment_results add column {name} {sql_type}")


def window_start(campaign: CampaignConfig, settings: Settings, ctx: RunContext) -> datetime:
    start = ctx.cutoff - timedelta(days=settings.experiments.window_days)
    if campaign.active_from is not None:
        start = max(start, datetime.combine(campaign.active_from, time(0)))
    return start


def intended_shares(campaign: CampaignConfig) -> dict[str, float]:
    """Each arm's intended share of units. Only the split fixes the variants' shares; the bandit and
    personalized policies move them on purpose, so for them only holdout against contacted is tested."""
    holdout = campaign.holdout_share
    if campaign.allocation.policy != "split":
        return {HOLDOUT: holdout, "contacted": 1 - holdout}
    weights = {variant.variant_id: variant.weight for variant in campaign.approved_variants}
    total = sum(weights.values())
    return {HOLDOUT: holdout} | {variant: (1 - holdout) * w / total for variant, w in weights.items()}


def sample_ratio_check(units_by_arm: dict[str, int], campaign: CampaignConfig) -> stats.SampleRatio:
    shares = intended_shares(campaign)
    if HOLDOUT in shares and campaign.holdout_share == 0:
        shares.pop(HOLDOUT)
    if "contacted" in shares:
        observed = {
            HOLDOUT: units_by_arm.get(HOLDOUT, 0),
            "contacted": sum(n for arm, n in units_by_arm.items() if arm != HOLDOUT),
        }
    else:
        # an arm that should not exist at all (a removed variant still sent) is a broken allocation too
        unknown = sum(n for arm, n in units_by_arm.items() if arm not in shares)
        observed = {arm: units_by_arm.get(arm, 0) for arm in shares} | (
            {"unexpected": unknown} if unknown else {}
        )
        shares = shares | ({"unexpected": 1e-9} if unknown else {})
    return stats.sample_ratio(observed, {arm: s for arm, s in shares.items() if s > 0})


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def covariate_values(frames: list[pl.DataFrame], expression: str) -> list[np.ndarray] | None:
    """The covariate of each frame's units, evaluated over their own columns (Polars' SQL: the expression can
    read nothing else); a unit without one (no attribute known before its send) gets the mean of the others,
    which adjusts it by nothing. None when no unit has one."""
    values = [
        frame.select(pl.sql_expr(expression).cast(pl.Float64)).to_series().fill_nan(None).to_numpy()
        for frame in frames
    ]
    pooled = np.concatenate(values)
    known = pooled[np.isfinite(pooled)]
    if known.size == 0:
        return None
    mean = float(known.mean())
    return [np.where(np.isfinite(x), x, mean) for x in values]


def compare(
    control: pl.DataFrame, treatment: pl.DataFrame, metric: Metric, settings: Settings
) -> dict[str, Any]:
    """One variant against the control on one metric: every statistic the results table holds, or only an
    `untested_reason` when the estimators find too little data."""
    config = settings.experiments
    alpha = config.alpha
    y_c, y_t = (
        control[metric.column].to_numpy().astype(float),
        treatment[metric.column].to_numpy().astype(float),
    )
    s_c, s_t = stats.Sample.of(y_c), stats.Sample.of(y_t)
    if metric.is_rate:
        raw = stats.two_proportions(stats.Sample.of_counts(int(y_c.sum()), y_c.size),
                                    stats.Sample.of_counts(int(y_t.sum()), y_t.size), alpha)  # fmt: skip
    else:
        raw = stats.welch(s_c, s_t, alpha)
    if raw.reason is not None:
        return {"untested_reason": raw.reason}
    row: dict[str, Any] = {
        "test": "two_proportion" if metric.is_rate else "welch",
        "diff": raw.diff, "ci_low": raw.ci_low, "ci_high": raw.ci_high, "p_value": raw.p_value,
        "lift": raw.lift, "lift_ci_low": raw.lift_ci_low, "lift_ci_high": raw.lift_ci_high,
    }  # fmt: skip
    decision = raw
    covariates = (
        covariate_values([control, treatment], metric.covariate)
        if config.cuped and metric.covariate is not None
        else None
    )
    if covariates is not None:
        x_c, x_t = covariates
        x_all, y_all = np.concatenate([x_c, x_t]), np.concatenate([y_c, y_t])
        theta = stats.cuped_theta(x_all, y_all)
        mean_x = float(x_all.mean())
        cuped = stats.welch(
            stats.Sample.of(stats.cuped_adjust(x_c, y_c, theta, mean_x)),
            stats.Sample.of(stats.cuped_adjust(x_t, y_t, theta, mean_x)),
            alpha,
        )
        # against Welch's test on the unadjusted metric: the same method, so only the adjustment differs
        unadjusted = stats.welch(s_c, s_t, alpha)
        row |= {
            "cuped_diff": cuped.diff, "cuped_ci_low": cuped.ci_low, "cuped_ci_high": cuped.ci_high,
            "cuped_p_value": cuped.p_value,
            "cuped_interval_narrowing": 1 - cuped.se / unadjusted.se if unadjusted.se > 0 else 0.0,
        }  # fmt: skip
        decision = cuped
    decision_p = decision.p_value
    decision_ci = (decision.ci_low, decision.ci_high)
    if config.sequential:
        seq = stats.sequential(
            decision.diff, decision.se, s_c.n + s_t.n, alpha, config.sequential_tuning_units
        )
        row |= {
            "sequential_ci_low": seq.ci_low,
            "sequential_ci_high": seq.ci_high,
            "sequential_p_value": seq.p_value,
        }
        decision_p, decision_ci = seq.p_value, (seq.ci_low, seq.ci_high)
    posterior = stats.bayesian(decision.diff, decision.se)
    return row | {
        "decision_p_value": decision_p,
        "decision_ci": decision_ci,
        "chance_to_beat_control": posterior.chance_to_beat_control,
        "expected_loss": posterior.expected_loss,
    }


def arm_posterior(frame: pl.DataFrame, metric: Metric) -> tuple[float, float]:
    """Normal approximation of the arm mean's posterior under a flat prior: (mean, sd)."""
    values = frame[metric.column].to_numpy().astype(float)
    if values.size < 2:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def power_columns(
    control: pl.DataFrame, treatment: pl.DataFrame, metric: Metric, alpha: float, elapsed_days: float
) -> dict[str, Any]:
    """What today's sample can detect, for one variant against the control on one metric: the minimum
    detectable difference, the power at the observed one and the days until it would be detected (80%
    power, two-sided at alpha). The per-unit deviation is the control's on the unadjusted metric (a rate's
    binomial one): CUPED would narrow it, so these are on the safe side; they are fixed-horizon figures
    (the sequential interval, when on, needs somewhat more units)."""
    y_c = control[metric.column].to_numpy().astype(float)
    y_t = treatment[metric.column].to_numpy().astype(float)
    control_mean = float(y_c.mean())
    effect = float(y_t.mean()) - control_mean
    sd = stats.rate_sd(control_mean) if metric.is_rate else math.sqrt(float(y_c.var(ddof=1)))
    n_c, n_t = y_c.size, y_t.size
    mde = stats.minimum_detectable_effect(sd, n_c, n_t, alpha)
    return {
        "mde": mde,
        "mde_relative": mde / control_mean if control_mean else math.nan,
        "power_at_observed": stats.power_at(effect, sd, n_c, n_t, alpha),
        "days_to_decision": stats.days_to_decision(effect, sd, n_c, n_t, elapsed_days, alpha),
    }


def untested_reason(
    metric: Metric, arm: str, control_arm: str, units: int, control_units: int, min_units: int
) -> str | None:
    """Why a variant's comparison on a metric is not tested, or None when it is."""
    if metric.needs_message and HOLDOUT in (arm, control_arm):
        # the holdout's value is zero by construction: a "difference" would be the variant's own rate
        return f"the holdout gets no message, so its {metric.name} is zero by design"
    if control_units == 0:
        return f"the control arm {control_arm} has no units"
    if min(units, control_units) < min_units:
        return (
            f"fewer than experiments.min_units ({min_units}) units: {units} in {arm}, "
            f"{control_units} in {control_arm}"
        )
    return None


def analyse_campaign(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, settings: Settings, ctx: RunContext
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    start = window_start(campaign, settings, ctx)
    metrics = campaign_metrics(campaign, settings.experiments)
    units, measured = experiment_units(con, campaign, settings, ctx, start, [metric for metric, _ in metrics])
    roles = [(measured[metric.name], role) for metric, role in metrics]
    return analyse_units(units, campaign, settings, ctx, start, roles)


def experiment_units(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    settings: Settings,
    ctx: RunContext,
    start: datetime,
    metrics: list[Metric],
) -> tuple[pl.DataFrame, dict[str, Metric]]:
    """The campaign's units with a column per metric and the covariates they read, and the metrics as
    measured (an SQL metric without a pre-period column has no default covariate)."""
    catalogue = settings.experiments.catalogue
    params = {
        "campaign_id": campaign.campaign_id,
        "window_start": start,
        "cutoff": ctx.cutoff,
        "cutoff_day": ctx.run_date,
        "covariate_days": settings.experiments.covariate_days,
        # the event-based definitions as values: the SQL never holds a config's text
        "event_metrics": [
            {
                "metric": metric.name, "event_types": catalogue[metric.name].event_type,
                "window_days": catalogue[metric.name].outcome_window_days,
                "aggregate": catalogue[metric.name].aggregate, "sum_of": catalogue[metric.name].sum_of,
            }
            for metric in metrics if catalogue[metric.name].event_type
        ],
    }  # fmt: skip
    units = query(con, "marts/experiment_units", params).pl()
    units = with_event_metrics(units, [m.name for m in metrics if catalogue[m.name].event_type])
    measured = {metric.name: metric for metric in metrics}
    for metric in metrics:
        if metric.sql is not None:
            units, measured[metric.name] = with_sql_metric(
                con, units, metric, catalogue[metric.name], settings, params
            )
    attributes = sorted({name for metric in metrics for name in catalogue[metric.name].attributes})
    units = with_attributes(units, attributes)
    return units.drop("event_metrics", "user_attributes"), measured


def with_event_metrics(units: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """Each event-based metric's value and pre-period as columns (from the units' list of them)."""
    if not names:
        return units
    long = (
        units.select("user_id", "event_metrics")
        .explode("event_metrics")
        .drop_nulls("event_metrics")
        .unnest("event_metrics")
    )
    for name in names:
        one = long.filter(pl.col("metric") == name).select(
            "user_id",
            pl.col("value").cast(pl.Float64).alias(metric_column(name)),
            pl.col("value_before").cast(pl.Float64).alias(pre_period_column(name)),
        )
        units = units.join(one, on="user_id", how="left")
    return units


def metric_sql(settings: Settings, metric: Metric) -> str:
    """A company metric's SQL, read afresh each run (it may change between runs)."""
    path = settings.resolve(str(metric.sql))
    try:
        return path.read_text(encoding="utf-8").strip().rstrip(";")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"key 'experiments.metrics.{metric.name}.sql': cannot read SQL file {path} ({error})"
        ) from None


def with_sql_metric(
    con: duckdb.DuckDBPyConnection,
    units: pl.DataFrame,
    metric: Metric,
    definition: MetricConfig,
    settings: Settings,
    params: dict[str, Any],
) -> tuple[pl.DataFrame, Metric]:
    """The company's SQL metric joined onto the units by (user_id, sent_at): a unit it returns no row for
    counts 0, one whose window_days (when set) has not closed by the cutoff is not yet measured."""
    key = f"key 'experiments.metrics.{metric.name}.sql'"
    text = metric_sql(settings, metric)
    try:
        # only the parameters a metric's SQL is promised (load_settings checked it reads no other)
        result = con.sql(text, params=bind(text, {name: params[name] for name in METRIC_SQL_PARAMETERS})).pl()
    except (duckdb.Error, KeyError) as error:
        raise ConfigError(f"{key}: {metric.sql} fails: {' '.join(str(error).split())}") from None
    missing = [column for column in ("user_id", "sent_at", "value") if column not in result.columns]
    if missing:
        raise ConfigError(
            f"{key}: {metric.sql} returns no {', '.join(missing)} column; it returns one row per unit: "
            "user_id, sent_at, value and optionally value_before"
        )
    has_before = "value_before" in result.columns
    keep = ["user_id", "sent_at", "value", *(["value_before"] if has_before else [])]
    result = result.select(
        pl.col("user_id").cast(pl.Utf8),
        pl.col("sent_at").cast(pl.Datetime("us")),
        *(pl.col(name).cast(pl.Float64) for name in keep[2:]),
    )
    if result.select(pl.struct("user_id", "sent_at").is_duplicated().any()).item():
        raise ConfigError(f"{key}: {metric.sql} returns more than one row for a unit (user_id, sent_at)")
    if metric.is_rate and not result["value"].drop_nulls().is_in([0.0, 1.0]).all():
        raise ConfigError(f"{key}: {metric.sql} returns values other than 0 and 1 for a binary metric")
    names = {"value": metric.column, "value_before": pre_period_column(metric.name)}
    joined = units.with_columns(pl.col("sent_at").cast(pl.Datetime("us"))).join(
        result.rename({k: v for k, v in names.items() if k in result.columns}),
        on=["user_id", "sent_at"],
        how="left",
    )
    joined = joined.with_columns(pl.col(metric.column).fill_null(0.0))
    if definition.window_days is not None:
        still_open = pl.col("sent_at") + pl.duration(days=definition.window_days) > params["cutoff"]
        joined = joined.with_columns(
            pl.when(still_open).then(None).otherwise(pl.col(metric.column)).alias(metric.column)
        )
    if metric.covariate == pre_period_column(metric.name) and not has_before:
        log.info("metric %s: its SQL returns no value_before, so it has no pre-period covariate", metric.name)
        metric = replace(metric, covariate=None)
    return joined, metric


# A users column a covariate reads is an identifier from config: only ever a plain lowercase name, and only
# one staging.stg_users has (never its ids or timestamps).
_ATTRIBUTE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_NOT_ATTRIBUTES = ("user_id", "created_at", "known_on", "is_latest")


def with_attributes(units: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """The users attributes covariates read, as columns of their own (from the struct of the user's row
    known before the send); ConfigError for a name that is not a numeric column of staging.stg_users
    (load_settings has checked that config declares it: user_features.attributes become its columns)."""
    if not names:
        return units
    fields = {field.name: field.dtype for field in units.schema["user_attributes"].fields}  # type: ignore[union-attr]
    columns = []
    for name in names:
        if not _ATTRIBUTE.match(name) or name in _NOT_ATTRIBUTES or name not in fields:
            raise ConfigError(
                f"covariate {name!r} is not a column of staging.stg_users (its attributes: "
                f"{', '.join(f for f in fields if f not in _NOT_ATTRIBUTES)})"
            )
        if not (fields[name].is_numeric() or fields[name] == pl.Boolean):
            raise ConfigError(f"covariate {name!r}: a users column of type {fields[name]}, not a number")
        columns.append(pl.col("user_attributes").struct.field(name).cast(pl.Float64).alias(name))
    return units.with_columns(columns)


def analyse_units(
    units: pl.DataFrame,
    campaign: CampaignConfig,
    settings: Settings,
    ctx: RunContext,
    start: datetime,
    metrics: list[tuple[Metric, str]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One campaign's result rows and summary from its units (experiment_units' frame), on its metrics and
    their roles (default: campaign_metrics)."""
    config = settings.experiments
    metrics = campaign_metrics(campaign, config) if metrics is None else metrics
    arms = {arm: frame for (arm,), frame in units.partition_by("variant_id", as_dict=True).items()}
    units_by_arm = {arm: frame.height for arm, frame in sorted(arms.items())}
    control_arm = campaign.control_variant or HOLDOUT
    srm = sample_ratio_check(units_by_arm, campaign)
    is_srm = srm.p_value < config.srm_p_value
    if is_srm:
        log.warning(
            "campaign %s: sample-ratio mismatch (p = %.2g; units %s, intended shares %s): its results are "
            "not trusted tonight", campaign.campaign_id, srm.p_value, srm.observed, srm.expected_share,
        )  # fmt: skip
    base = {
        "run_date": ctx.run_date, "campaign_id": campaign.campaign_id, "control_variant_id": control_arm,
        "window_start": start, "srm_p_value": srm.p_value, "is_srm": is_srm, "is_trusted": not is_srm,
        "alpha": config.alpha, "correction": config.correction,
    }  # fmt: skip
    # enrollment so far: the window's units arrived over these days
    elapsed_days = (ctx.cutoff - start).total_seconds() / 86400
    rows: list[dict[str, Any]] = []
    for metric, role in metrics:
        # a unit whose outcome window is still open at the cutoff is not measured on the metric yet
        measured = {arm: frame.filter(pl.col(metric.column).is_not_null()) for arm, frame in arms.items()}
        control = measured.get(control_arm)
        control_units = control.height if control is not None else 0
        metric_rows = []
        for arm, frame in sorted(measured.items()):
            mean, sd = arm_posterior(frame, metric)
            is_control = arm == control_arm
            row = base | {
                "variant_id": arm, "metric": metric.name, "is_control": is_control,
                "units": frame.height, "mean": mean, "posterior_mean": mean, "posterior_sd": sd,
                "control_units": control_units,
                "control_mean": arm_posterior(control, metric)[0] if control is not None else None,
                "metric_role": role,
                "higher_is_better": metric.higher_is_better,
                "untested_reason": None if is_control else untested_reason(
                    metric, arm, control_arm, frame.height, control_units, config.min_units
                ),
            }  # fmt: skip
            if not is_control and row["untested_reason"] is None and control is not None:
                row |= compare(control, frame, metric, settings)
                if row["untested_reason"] is None:
                    row |= power_columns(control, frame, metric, config.alpha, elapsed_days)
            metric_rows.append(row)
        # only tested rows enter the correction: an untested one is no comparison, and counting it would
        # only make the others' adjusted p-values larger
        tested = [row for row in metric_rows if "decision_p_value" in row]
        p_values = [row["decision_p_value"] for row in tested]
        adjusted = (
            p_values if config.correction == "none" else stats.adjust_p_values(p_values, config.correction)
        )
        for row, p_adjusted in zip(tested, adjusted, strict=True):
            low, high = row.pop("decision_ci")
            row["p_value_adjusted"] = p_adjusted
            # significant only if the interval the decision rests on agrees (it does for one comparison)
            row["is_significant"] = bool(p_adjusted < config.alpha and (low > 0 or high < 0))
        rows += metric_rows
    by_name = {metric.name: metric for metric, _ in metrics}
    verdicts = variant_verdicts(rows, campaign, config, srm.p_value, is_srm, by_name)
    for row in rows:
        row["verdict"], row["verdict_reason"] = verdicts.get(row["variant_id"], (None, None))
    summary = {
        "window_start": start.isoformat(),
        "units_by_arm": units_by_arm,
        "control": control_arm,
        "sample_ratio_p_value": _nan_to_none(srm.p_value),
        "is_trusted": not is_srm,
        "significant": sorted(
            f"{row['variant_id']}:{row['metric']}" for row in rows if row.get("is_significant")
        ),
        "verdicts": {arm: verdict for arm, (verdict, _reason) in sorted(verdicts.items())},
    }
    return [
        {k: _nan_to_none(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows
    ], summary


def variant_verdicts(
    rows: list[dict[str, Any]],
    campaign: CampaignConfig,
    config: ExperimentsConfig,
    srm_p_value: float,
    is_srm: bool,
    metrics: dict[str, Metric] | None = None,
) -> dict[str, tuple[str, str]]:
    """variant -> (verdict, reason) for every variant arm; the control and the holdout get none."""
    by_arm: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if not row["is_control"] and row["variant_id"] != HOLDOUT:
            by_arm.setdefault(row["variant_id"], {})[row["metric"]] = row
    return {
        arm: verdict(metric_rows, campaign.primary_metric, config.max_days_to_decision, srm_p_value, is_srm,
                     metrics)
        for arm, metric_rows in by_arm.items()
    }  # fmt: skip


def _direction(row: dict[str, Any]) -> int:
    """+1 when the row is significantly better than the control, -1 when significantly worse, else 0."""
    if not row.get("is_significant"):
        return 0
    # the estimate the decision rests on, as harmful_variants reads it
    estimate = row["cuped_diff"] if row.get("cuped_diff") is not None else row["diff"]
    sign = 1 if estimate > 0 else -1
    return sign if row["higher_is_better"] else -sign


def effect_in_words(row: dict[str, Any], metric: Metric) -> str:
    """A row's difference in words: the metric, the decision's estimate in its unit, the relative lift and
    the adjusted p-value, e.g. 'conversion_rate +1.20 percentage points (+15.0%) against holdout, adjusted p 0.003'."""
    estimate = row["cuped_diff"] if row.get("cuped_diff") is not None else row["diff"]
    unit = f" {metric.unit}" if metric.unit else ""
    amount = f"{estimate * 100:+.2f} percentage points" if metric.is_rate else f"{estimate:+,.2f}{unit}"
    lift = row.get("lift")
    relative = f" ({lift:+.1%})" if lift is not None and math.isfinite(lift) else ""
    return (
        f"{row['metric']} {amount}{relative} against {row['control_variant_id']}, "
        f"adjusted p {row['p_value_adjusted']:.2g}"
    )


def verdict(
    metric_rows: dict[str, dict[str, Any]],
    primary: str,
    max_days: int,
    srm_p_value: float,
    is_srm: bool,
    metrics: dict[str, Metric] | None = None,
) -> tuple[str, str]:
    """GrowthBook-style decision on one variant from its rows (metric -> row), with the numbers behind it.

    Not trusted (sample-ratio mismatch): stop. Primary significantly worse, or any tested guardrail: stop,
    naming it. Primary significantly better: ship. Otherwise keep running, unless detecting the primary's
    observed difference at 80% power would take more than `max_days` days: stop. `metrics` says how each
    metric's difference reads (default: the built-ins)."""
    known = metrics or {metric.name: metric for metric in METRICS}

    def _effect(row: dict[str, Any]) -> str:
        return effect_in_words(row, known[row["metric"]])

    if is_srm:
        return "stop", (
            f"sample-ratio mismatch: fix the assignment before reading results (the arms' units against their "
            f"intended shares: p = {srm_p_value:.2g})"
        )
    main = metric_rows[primary]
    if main["untested_reason"] is not None:
        return "keep running", f"{primary} is not tested yet: {main['untested_reason']}"
    if _direction(main) < 0:
        return "stop", f"the primary metric is significantly worse: {_effect(main)}"
    harmed = [row for name, row in metric_rows.items() if name != primary and _direction(row) < 0]
    if harmed:
        names = ", ".join(row["metric"] for row in harmed)
        return "stop", f"guardrail {names} significantly worse: " + "; ".join(_effect(row) for row in harmed)
    if _direction(main) > 0:
        return "ship", f"{_effect(main)}; no tested guardrail is significantly worse"
    days = main.get("days_to_decision")
    if days is None or not math.isfinite(days):
        return "keep running", f"no difference observed yet: {_effect(main)}"
    if days > max_days:
        return "stop", (
            f"no detectable effect within {max_days} days: {_effect(main)}, which would take about "
            f"{days:,.0f} more days to detect at 80% power (power today {main['power_at_observed']:.0%})"
        )
    if days == 0:
        return "keep running", (
            f"not significant yet, though the sample has {main['power_at_observed']:.0%} power for the "
            f"observed difference: {_effect(main)}"
        )
    return "keep running", (
        f"not significant yet: {_effect(main)}; about {days:,.0f} more days to detect it at 80% power"
    )


def variant_evidence(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, ctx: RunContext
) -> dict[str, tuple[int, int]]:
    """Sends and conversions per variant over the bandit's lookback (holdout excluded)."""
    rows = query(
        con,
        "marts/variant_evidence",
        {
            "campaign_id": campaign.campaign_id,
            "cutoff": ctx.cutoff,
            "cutoff_day": ctx.run_date,
            "lookback_days": campaign.allocation.lookback_days,
        },
    ).fetchall()
    return {variant_id: (int(sends), int(conversions)) for variant_id, sends, conversions in rows}


def posterior_rows(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, ctx: RunContext, is_trusted: bool
) -> list[dict[str, Any]]:
    """Each approved variant's Beta(prior + conversions, prior + failures) posterior of converting."""
    evidence = variant_evidence(con, campaign, ctx)
    prior_a, prior_b = campaign.allocation.prior_successes, campaign.allocation.prior_failures
    rows = []
    for variant in campaign.approved_variants:
        sends, conversions = evidence.get(variant.variant_id, (0, 0))
        rows.append(
            {
                "run_date": ctx.run_date,
                "campaign_id": campaign.campaign_id,
                "variant_id": variant.variant_id,
                "sends": sends,
                "conversions": conversions,
                "alpha": prior_a + conversions,
                "beta": prior_b + sends - conversions,
                "is_trusted": is_trusted,
            }
        )
    return rows


def evaluate_uplift(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    models: dict[str, dict[str, Any]],
    ctx: RunContext,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Qini and uplift at 10/20/30% of each variant's predicted uplift over no contact, on the sends of
    the conversion models' time-based holdout (the last CONVERSION_HOLDOUT_DAYS, which they never saw)."""
    no_contact = models.get(conversion_model_name(campaign.campaign_id, HOLDOUT))
    if no_contact is None or not table_exists(con, "features.campaign_click_examples"):
        return [], []
    examples = read_partition(
        con, "features/campaign_click_examples", ctx.cutoff, ("campaign_id", "sent_at", "user_id")
    ).pl()
    holdout_from = ctx.cutoff - timedelta(days=CONVERSION_HOLDOUT_DAYS)
    recent = examples.filter(
        (pl.col("campaign_id") == campaign.campaign_id) & (pl.col("sent_at") >= holdout_from)
    )
    control = recent.filter(pl.col("variant_id") == HOLDOUT)
    if control.height == 0:
        return [], []
    evaluations, curves = [], []
    for variant in campaign.approved_variants:
        model = models.get(conversion_model_name(campaign.campaign_id, variant.variant_id))
        treated = recent.filter(pl.col("variant_id") == variant.variant_id)
        if model is None or treated.height == 0:
            continue
        frame = pl.concat([treated, control])
        predicted = predicted_uplift(frame, model, no_contact)
        is_treated = np.r_[np.ones(treated.height, bool), np.zeros(control.height, bool)]
        converted = frame["is_converted"].to_numpy().astype(float)
        curve = uplift.qini_curve(predicted, is_treated, converted)
        key = {
            "run_date": ctx.run_date,
            "campaign_id": campaign.campaign_id,
            "variant_id": variant.variant_id,
        }
        evaluations.append(
            key
            | {
                "sends": treated.height,
                "holdout_sends": control.height,
                "qini_coefficient": curve.coefficient,
                **{
                    f"uplift_at_{round(share * 100)}": _nan_to_none(
                        uplift.uplift_at(predicted, is_treated, converted, share)
                    )
                    for share in UPLIFT_SHARES
                },
                "incremental_conversions_per_send": float(curve.incremental[-1]),
                "variant_model_version": model["version"],
                "no_contact_model_version": no_contact["version"],
            }
        )
        small = uplift.downsample(curve)
        curves += [
            key | {"share_targeted": float(s), "incremental_per_unit": float(q), "random_per_unit": float(r)}
            for s, q, r in zip(small.share, small.incremental, small.random, strict=True)
        ]
    return evaluations, curves


def predicted_uplift(
    frame: pl.DataFrame, variant_model: dict[str, Any], no_contact: dict[str, Any]
) -> np.ndarray:
    """P(convert | sent the variant) - P(convert | not contacted), per row (the two-model learner)."""
    return predict_with(frame, variant_model) - predict_with(frame, no_contact)


def predict_with(frame: pl.DataFrame, model: dict[str, Any]) -> np.ndarray:
    """A conversion model's calibrated probabilities; where it did not beat the constant rate on its
    holdout, that rate for everyone (its baseline serves)."""
    serving = model.get("baseline_serving") or {}
    if "constant" in serving:
        return np.full(frame.height, serving["constant"], dtype=np.float64)
    matrix = feature_matrix(frame, tuple(model["features"]), model["categories"])
    return predict_propensity(lgb.Booster(model_file=model["path"]), matrix, model["params"]["calibration"])


@dataclass
class ExperimentRun:
    results: list[dict[str, Any]] = field(default_factory=list)
    posteriors: list[dict[str, Any]] = field(default_factory=list)
    uplift: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@task(name="experiments", cache_policy=NO_CACHE)
def analyse_experiments(
    settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Analyse every configured campaign's sends and store the results; returns a summary per campaign."""
    run = ExperimentRun()
    with connect(settings) as con:
        ensure_tables(con)
        for campaign in settings.campaigns if settings.experiments.enabled else []:
            rows, summary = analyse_campaign(con, campaign, settings, ctx)
            run.results += rows
            run.posteriors += posterior_rows(con, campaign, ctx, summary["is_trusted"])
            evaluations, curves = evaluate_uplift(con, campaign, models, ctx)
            run.uplift += evaluations
            run.curves += curves
            summary["uplift"] = {
                row["variant_id"]: {
                    "qini_coefficient": row["qini_coefficient"],
                    "uplift_at_10": row["uplift_at_10"],
                }
                for row in evaluations
            }
            run.summary[campaign.campaign_id] = summary
        replace_run_rows(con, "meta.experiment_results", RESULT_COLUMNS, run.results, ctx.run_date)
        replace_run_rows(con, "meta.variant_posteriors", POSTERIOR_COLUMNS, run.posteriors, ctx.run_date)
        replace_run_rows(con, "meta.uplift_evaluation", UPLIFT_COLUMNS, run.uplift, ctx.run_date)
        replace_run_rows(con, "meta.qini_curves", CURVE_COLUMNS, run.curves, ctx.run_date)
    return dict(sorted(run.summary.items()))


@dataclass
class Feedback:
    """What the experiments tell tonight's allocation of one campaign."""

    posteriors: dict[str, tuple[float, float]]  # variant -> Beta(alpha, beta) of converting
    evidence: dict[str, tuple[int, int]]  # variant -> (sends, conversions) behind them
    posterior_date: str | None  # the analysis the posteriors come from (None: computed now)
    paused: dict[str, str] = field(default_factory=dict)  # variant -> why it gets no traffic
    notes: list[str] = field(default_factory=list)


def allocation_feedback(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, settings: Settings, ctx: RunContext
) -> Feedback:
    """The latest trusted posteriors (up to tonight) and the variants a trusted analysis found harmful."""
    ensure_tables(con)
    key = {"campaign_id": campaign.campaign_id, "run_date": ctx.run_date}
    stored = con.execute(
        "select run_date, variant_id, alpha, beta, sends, conversions, is_trusted from meta.variant_posteriors "
        "where campaign_id = $campaign_id and run_date <= $run_date order by run_date desc, variant_id",
        key,
    ).fetchall()
    notes = []
    if not stored:  # experiments are off or have not run yet: the evidence itself, now
        rows = posterior_rows(con, campaign, ctx, True)
        feedback = Feedback(
            {r["variant_id"]: (r["alpha"], r["beta"]) for r in rows},
            {r["variant_id"]: (r["sends"], r["conversions"]) for r in rows},
            None,
        )
    else:
        latest_date, latest_trusted = stored[0][0], stored[0][6]
        trusted = [row for row in stored if row[6]]
        if not latest_trusted:
            notes.append(
                f"the analysis of {latest_date} failed the sample-ratio check, so its evidence is not used"
            )
        day = trusted[0][0] if trusted else None
        chosen = [row for row in trusted if row[0] == day]
        feedback = Feedback(
            {row[1]: (row[2], row[3]) for row in chosen},
            {row[1]: (row[4], row[5]) for row in chosen},
            day.isoformat() if day else None,
            notes=notes,
        )
    if settings.experiments.pause_harmful_variants and campaign.allocation.policy != "split":
        feedback.paused = harmful_variants(con, campaign, ctx)
    approved = {variant.variant_id for variant in campaign.approved_variants}
    if feedback.paused and approved <= set(feedback.paused):
        feedback.notes.append(
            "every variant tested worse than the control; none is paused, as one must be sent"
        )
        feedback.paused = {}
    return feedback


def harmful_variants(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, ctx: RunContext
) -> dict[str, str]:
    """Variants whose conversion lift against the control was significantly negative in the latest trusted
    analysis up to tonight."""
    rows = con.execute(
        """
        with latest as (
            select max(run_date) as run_date from meta.experiment_results
            where campaign_id = $campaign_id and run_date <= $run_date
        )
        select variant_id, run_date, coalesce(cuped_diff, diff), control_variant_id,
            coalesce(sequential_ci_low, cuped_ci_low, ci_low), coalesce(sequential_ci_high, cuped_ci_high, ci_high),
            p_value_adjusted
        from meta.experiment_results
        semi join latest using (run_date)
        where campaign_id = $campaign_id and metric = 'conversion_rate' and is_trusted and is_significant
            and not is_control and coalesce(cuped_diff, diff) < 0
        order by variant_id
        """,
        {"campaign_id": campaign.campaign_id, "run_date": ctx.run_date},
    ).fetchall()
    return {
        variant: (
            f"paused: conversion {diff * 100:+.2f} points against {control} "
            f"({low * 100:+.2f} to {high * 100:+.2f}, adjusted p {p:.2g}) in the analysis of {day}"
        )
        for variant, day, diff, control, low, high, p in rows
    }
