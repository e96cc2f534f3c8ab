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
    meta.uplift_evaluation    per campaign and variant: the uplift model fitted on sends and outcomes alone
                              (sql/features/uplift_examples.sql), chosen on validation, measured on test:
                              Qini, AUUC, uplift@k per group and the margin over random targeting, with
                              bootstrap intervals, and whether it drives the personalized policy
    meta.uplift_models        the chosen learners' files, features and categories, for the allocation
    meta.qini_curves          the test Qini curves behind them, for the report
    meta.policy_evaluation    per campaign: candidate policies valued off-policy from the logged sends
                              (tasks/ope.py; published as policy_evaluation)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor import human, stats, uplift
from tailor.config import (
    METRIC_SQL_PARAMETERS,
    CampaignConfig,
    ConfigError,
    ExperimentsConfig,
    MetricConfig,
    Settings,
)
from tailor.progress import progress, reported
from tailor.sql import bind, ensure_table, query, replace_run_rows
from tailor.tasks.features import stage_user_sql_features
from tailor.tasks.ope import POLICY_COLUMNS, evaluate_policies, store_policy_evaluation
from tailor.tasks.train import (
    VARIANT_SEPARATOR,
    check_features,
    feature_matrix,
    lightgbm_params,
    predict_propensity,
    user_model_features,
    vocabulary,
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
    # added for issue #19 (at the end: a table made before them gains them there): the uplift model is fitted
    # and measured in the experiments on sends and outcomes alone, and gates the personalized policy
    "learner": "varchar", "split": "varchar", "outcome": "varchar", "train_units": "bigint",
    "validation_units": "bigint", "test_units": "bigint", "bootstrap_samples": "bigint",
    "qini_ci_low": "double", "qini_ci_high": "double", "auuc": "double", "auuc_ci_low": "double",
    "auuc_ci_high": "double", "target_share": "double", "uplift_at_target": "double",
    "uplift_at_target_ci_low": "double", "uplift_at_target_ci_high": "double", "random_uplift": "double",
    "random_uplift_ci_low": "double", "random_uplift_ci_high": "double", "margin_at_target": "double",
    "margin_ci_low": "double", "margin_ci_high": "double", "validation_qini": "varchar",
    "drives_policy": "boolean", "policy_reason": "varchar",
}  # fmt: skip
# the chosen learner of each evaluation, as the allocation loads it (files under the run's folder)
UPLIFT_MODEL_COLUMNS = {
    "run_date": "date", "campaign_id": "varchar", "variant_id": "varchar", "learner": "varchar",
    "version": "varchar", "propensity": "double", "features": "varchar", "categories": "varchar",
    "paths": "varchar",
}  # fmt: skip
UPLIFT_OUTCOME = "is_converted"
# columns of sql/features/uplift_examples.sql that are not features; the rest but these are user attributes
UPLIFT_UNIT_COLUMNS = (
    "campaign_id",
    "variant_id",
    "user_id",
    "sent_at",
    "is_converted",
    "is_clicked",
    "revenue_cents",
)
UPLIFT_BASE_FEATURES = (
    "days_since_signup", "n_events_7d", "n_events_30d", "n_events_90d", "n_events_365d", "n_purchases_7d",
    "n_purchases_30d", "n_purchases_90d", "n_purchases_365d", "spend_cents_7d", "spend_cents_30d",
    "spend_cents_90d", "spend_cents_365d", "days_since_last_event", "days_since_last_purchase",
    "n_campaign_sends_before",
)  # fmt: skip
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
        ("meta.uplift_models", UPLIFT_MODEL_COLUMNS),
        ("meta.allocation_decisions", DECISION_COLUMNS),
        ("meta.policy_evaluation", POLICY_COLUMNS),
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
    add_missing_columns(con, "meta.uplift_evaluation", UPLIFT_COLUMNS)


def add_missing_columns(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str]) -> None:
    """A table made by an earlier version gains the columns it lacks, at its end in the given order (inserts
    are positional). Names and types come from the constants above, never from input."""
    schema, _, name = table.partition(".")
    present = {
        column
        for (column,) in con.execute(
            "select column_name from information_schema.columns where table_schema = $schema and table_name = $name",
            {"schema": schema, "name": name},
        ).fetchall()
    }
    for column, sql_type in columns.items():
        if column not in present:
            con.execute(f"alter table {table} add column {column} {sql_type}")


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
            "campaign %s: sample-ratio mismatch (%s; units %s, intended shares %s): its results are "
            "not trusted tonight", campaign.campaign_id, human.p_phrase(srm.p_value), srm.observed,
            srm.expected_share,
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
    the adjusted p-value, e.g. 'conversion_rate +1.20 percentage points (+15.0%) against holdout, adjusted
    p = 0.003' ('adjusted p < 0.001' when smaller: never scientific notation)."""
    estimate = row["cuped_diff"] if row.get("cuped_diff") is not None else row["diff"]
    unit = f" {metric.unit}" if metric.unit else ""
    amount = f"{estimate * 100:+.2f} percentage points" if metric.is_rate else f"{estimate:+,.2f}{unit}"
    lift = row.get("lift")
    relative = f" ({lift:+,.1%})" if lift is not None and math.isfinite(lift) else ""
    p_value = human.p_phrase(row["p_value_adjusted"], "adjusted p")
    return f"{row['metric']} {amount}{relative} against {row['control_variant_id']}, {p_value}"


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
            f"intended shares: {human.p_phrase(srm_p_value)})"
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
    settings: Settings,
    ctx: RunContext,
    best_single: str | None = None,
    units: UpliftUnits | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per approved variant, an uplift model of its units against the holdout's, from sends and outcomes alone
    (sql/features/uplift_examples.sql): every configured learner fitted on the training part, the best
    validation Qini chosen, and that one measured on the test part with bootstrap intervals. Returns the
    evaluation rows, the test Qini curves and the chosen learners' model rows (meta.uplift_models).
    `best_single` names the variant that serves where no model is proven (for the policy's sentence); `units`
    are the campaign's uplift units when the caller has them (uplift_units)."""
    config = settings.experiments.uplift
    if not config.enabled:
        return [], [], []
    units = units if units is not None else uplift_units(con, campaign, settings, ctx)
    examples, parts = units.examples, units.parts
    control = examples["variant_id"] == HOLDOUT
    evaluations, curves, models = [], [], []
    variants = campaign.approved_variants
    with progress(f"uplift {campaign.campaign_id}", total=len(variants), unit="variants") as bar:
        for variant in variants:
            bar.advance(0, note=variant.variant_id)
            mine = (examples["variant_id"] == variant.variant_id) | control
            outcome = evaluate_variant(
                examples.filter(mine),
                parts[mine.to_numpy()],
                campaign,
                variant.variant_id,
                settings,
                ctx,
                best_single,
            )
            bar.advance(1)
            if outcome is None:
                continue
            evaluation, curve, model = outcome
            evaluations.append(evaluation)
            curves += curve
            models += [model] if model else []
    return evaluations, curves, models


@dataclass(frozen=True)
class UpliftUnits:
    """A campaign's uplift units (uplift_examples in mode 'experiment', from its window's start) and each
    one's part (split_parts)."""

    examples: pl.DataFrame
    parts: np.ndarray

    def test(self) -> pl.DataFrame:
        """The test part: the units no learner was fitted or chosen on."""
        return self.examples.filter(pl.Series(self.parts == uplift.TEST))


def uplift_units(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, settings: Settings, ctx: RunContext
) -> UpliftUnits:
    examples = uplift_examples(con, campaign, settings, ctx, window_start(campaign, settings, ctx))
    return UpliftUnits(examples, split_parts(examples, settings, ctx))


def uplift_examples(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    settings: Settings | None,
    ctx: RunContext,
    start: datetime,
    mode: str = "experiment",
) -> pl.DataFrame:
    """The campaign's units sent from `start` (mode 'experiment') or every profiled user at the cutoff (mode
    'score'), with the uplift models' features (sql/features/uplift_examples.sql) and the company's own SQL
    features (user_features.sql) as of each unit's day."""
    examples = query(
        con,
        "features/uplift_examples",
        {
            "mode": mode,
            "campaign_id": campaign.campaign_id,
            "window_start": start,
            "cutoff": ctx.cutoff,
            "cutoff_day": ctx.run_date,
        },
    ).pl()
    return with_company_features(con, settings, examples)


def with_company_features(
    con: duckdb.DuckDBPyConnection, settings: Settings | None, examples: pl.DataFrame
) -> pl.DataFrame:
    """The company's SQL features joined to each unit as of the start of its send's day: run once per day
    with sends (the SQL reads only what happened before that cutoff), so a unit never sees its own future."""
    if settings is None or settings.user_features.sql is None or examples.height == 0:
        return examples
    anchored = examples.with_columns(pl.col("sent_at").dt.truncate("1d").alias("_anchor_day"))
    parts = []
    for day in anchored["_anchor_day"].unique().sort().to_list():
        stage_user_sql_features(con, settings, day, day.date())
        parts.append(con.sql("select * from user_sql_features").pl().with_columns(_anchor_day=pl.lit(day)))
    company = pl.concat(parts).with_columns(pl.col("_anchor_day").cast(anchored.schema["_anchor_day"]))
    return anchored.join(company, on=["user_id", "_anchor_day"], how="left", maintain_order="left").drop(
        "_anchor_day"
    )


def uplift_features(examples: pl.DataFrame, settings: Settings, model_name: str) -> tuple[str, ...]:
    """The behaviour columns and every user attribute the examples carry (the users source's declared
    columns included), without a sensitive attribute unless privacy.sensitive_features names it."""
    attributes = tuple(
        name
        for name in examples.columns
        if name not in UPLIFT_UNIT_COLUMNS and name not in UPLIFT_BASE_FEATURES
    )
    features = user_model_features((*UPLIFT_BASE_FEATURES, *attributes), settings)
    absent = [name for name in features if name not in examples.columns]
    if absent:
        # declared, yet staging was built without them (a tool staging outside a run): learn without them
        log.warning("%s: declared feature(s) %s not in the uplift examples", model_name, ", ".join(absent))
        features = tuple(name for name in features if name in examples.columns)
    check_features(model_name, features, settings)
    return features


def uplift_matrix(
    frame: pl.DataFrame, features: tuple[str, ...], categories: dict[str, list[str]]
) -> tuple[np.ndarray, list[int]]:
    """The float32 matrix the learners take, and the positions of its categorical columns."""
    return feature_matrix(frame, features, categories), [
        i for i, name in enumerate(features) if name in categories
    ]


def uplift_boosting(settings: Settings) -> uplift.Boosting:
    config = settings.experiments.uplift
    params = lightgbm_params(
        settings,
        "regression",  # each booster sets its own objective
        learning_rate=config.learning_rate,
        num_leaves=config.num_leaves,
        min_data_in_leaf=config.min_data_in_leaf,
    )
    return uplift.Boosting(
        params, config.n_estimators, config.early_stopping_rounds, config.early_stopping_share, settings.seed
    )


def split_parts(examples: pl.DataFrame, settings: Settings, ctx: RunContext) -> np.ndarray:
    """Each unit's part (train, validation, test) under experiments.uplift.split."""
    config = settings.experiments.uplift
    if config.split == "time":
        return uplift.time_split(
            examples["sent_at"].to_numpy(), ctx.cutoff, config.test_days, config.validation_days
        )
    shares = (config.train_share, config.validation_share, config.test_share)
    return uplift.random_split(examples["user_id"].to_numpy(), shares, settings.seed)


def too_few_units(treated: np.ndarray, parts: np.ndarray, min_units: int) -> str | None:
    """Why a variant cannot be evaluated (too few treated or control units in a part), or None."""
    for part in (uplift.TRAIN, uplift.VALIDATION, uplift.TEST):
        in_part = parts == part
        n_t, n_c = int((treated & in_part).sum()), int((~treated & in_part).sum())
        if min(n_t, n_c) < min_units:
            return (
                f"fewer than experiments.uplift.min_units ({min_units}) units in the {part} part: {n_t:,} "
                f"treated, {n_c:,} holdout"
            )
    return None


def serves_sentence(best_single: str | None) -> str:
    return (
        f"the best single variant ({best_single}) serves" if best_single else "the best single variant serves"
    )


def evaluate_variant(
    units: pl.DataFrame,
    parts: np.ndarray,
    campaign: CampaignConfig,
    variant_id: str,
    settings: Settings,
    ctx: RunContext,
    best_single: str | None,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None] | None:
    """One variant against the holdout: the evaluation row, its test Qini curve and the chosen learner's
    model row; None when the variant has no unit at all."""
    config = settings.experiments.uplift
    treated = (units["variant_id"] == variant_id).to_numpy()
    if not treated.any():
        return None
    key = {"run_date": ctx.run_date, "campaign_id": campaign.campaign_id, "variant_id": variant_id}
    base = key | {
        "split": config.split, "outcome": UPLIFT_OUTCOME, "target_share": config.target_share,
        "train_units": int((parts == uplift.TRAIN).sum()), "validation_units": int((parts == uplift.VALIDATION).sum()),
        "test_units": int((parts == uplift.TEST).sum()), "bootstrap_samples": config.bootstrap_samples,
    }  # fmt: skip
    shortage = too_few_units(treated, parts, config.min_units)
    if shortage is not None:
        reason = f"not evaluated: {shortage}; {serves_sentence(best_single)}"
        return base | {"drives_policy": False, "policy_reason": reason}, [], None
    name = f"uplift_{campaign.campaign_id}{VARIANT_SEPARATOR}{variant_id}"
    train = units.filter(pl.Series(parts == uplift.TRAIN))
    features = uplift_features(train, settings, name)
    categories = vocabulary(train, features)
    y = units[UPLIFT_OUTCOME].cast(pl.Float64).to_numpy()
    x, categorical = uplift_matrix(units, features, categories)
    learner, validation_qini = chosen_learner(x, treated, y, categorical, parts, settings)
    is_test = parts == uplift.TEST
    scores = learner.predict(x[is_test])
    shares = tuple(sorted({*UPLIFT_SHARES, config.target_share}))
    result = uplift.evaluate(
        scores, treated[is_test], y[is_test], shares, config.bootstrap_samples, settings.seed,
        level=1 - settings.experiments.alpha, groups=units["user_id"].to_numpy()[is_test],
    )  # fmt: skip
    drives, reason = policy_reason(learner.kind, result, config.target_share, best_single)
    version, paths = save_learner(learner, ctx, name)
    curve = uplift.qini_curve(scores, treated[is_test], y[is_test])
    row = base | evaluation_columns(result, config.target_share) | {
        "incremental_conversions_per_send": float(curve.incremental[-1]), "variant_model_version": version,
        "learner": learner.kind, "validation_qini": json.dumps(validation_qini, sort_keys=True),
        "drives_policy": drives, "policy_reason": reason,
    }  # fmt: skip
    model = key | {
        "learner": learner.kind, "version": version, "propensity": learner.propensity,
        "features": json.dumps(list(features)), "categories": json.dumps(categories, sort_keys=True),
        "paths": json.dumps(paths, sort_keys=True),
    }  # fmt: skip
    small = uplift.downsample(curve)
    curves = [
        key | {"share_targeted": float(s), "incremental_per_unit": float(q), "random_per_unit": float(r)}
        for s, q, r in zip(small.share, small.incremental, small.random, strict=True)
    ]
    return {n: _nan_to_none(v) if isinstance(v, float) else v for n, v in row.items()}, curves, model


def chosen_learner(
    x: np.ndarray,
    treated: np.ndarray,
    y: np.ndarray,
    categorical: list[int],
    parts: np.ndarray,
    settings: Settings,
) -> tuple[uplift.FittedLearner, dict[str, float]]:
    """Every configured learner fitted on the training units (a seeded sample of max_training_units when there
    are more); the one with the highest Qini coefficient on the validation units (ties: the first
    configured), and each learner's validation Qini."""
    boosting = uplift_boosting(settings)
    is_train, is_valid = parts == uplift.TRAIN, parts == uplift.VALIDATION
    cap = settings.experiments.uplift.max_training_units
    if is_train.sum() > cap:
        sampled = np.random.default_rng(settings.seed).choice(np.flatnonzero(is_train), cap, replace=False)
        is_train = np.zeros_like(is_train)
        is_train[sampled] = True
    fitted, validation_qini = {}, {}
    for kind in settings.experiments.uplift.learners:
        fitted[kind] = uplift.FIT[kind](x[is_train], treated[is_train], y[is_train], categorical, boosting)
        scores = fitted[kind].predict(x[is_valid])
        validation_qini[kind] = uplift.qini_curve(scores, treated[is_valid], y[is_valid]).coefficient
    best = max(settings.experiments.uplift.learners, key=lambda kind: validation_qini[kind])
    return fitted[best], validation_qini


def evaluation_columns(result: uplift.UpliftScores, target_share: float) -> dict[str, Any]:
    """The evaluation's figures as meta.uplift_evaluation columns."""
    target, margin = result.uplift_at[target_share], result.margin[target_share]
    return {
        "sends": result.treated_units, "holdout_sends": result.control_units,
        "qini_coefficient": result.qini.value, "qini_ci_low": result.qini.low, "qini_ci_high": result.qini.high,
        **{f"uplift_at_{round(share * 100)}": result.uplift_at[share].value for share in UPLIFT_SHARES},
        "auuc": result.auuc.value, "auuc_ci_low": result.auuc.low, "auuc_ci_high": result.auuc.high,
        "uplift_at_target": target.value, "uplift_at_target_ci_low": target.low,
        "uplift_at_target_ci_high": target.high, "random_uplift": result.random.value,
        "random_uplift_ci_low": result.random.low, "random_uplift_ci_high": result.random.high,
        "margin_at_target": margin.value, "margin_ci_low": margin.low, "margin_ci_high": margin.high,
    }  # fmt: skip


def _interval(estimate: uplift.Estimate) -> str:
    return f"{estimate.value:.3f} ({estimate.low:.3f} to {estimate.high:.3f})"


def policy_reason(
    learner: str, result: uplift.UpliftScores, share: float, best_single: str | None
) -> tuple[bool, str]:
    """Whether the model drives the personalized policy, and why in words: only when the interval of its
    margin over random targeting and that of its Qini coefficient both lie above zero."""
    at, margin = result.uplift_at[share], result.margin[share]
    figures = (
        f"{learner}: uplift@{share:.0%} {_interval(at)} against random {result.random.value:.3f}: "
        f"margin {_interval(margin)}, Qini {_interval(result.qini)}"
    )
    if margin.clears_zero and result.qini.clears_zero:
        return True, f"{figures}: clears random targeting, the model drives the policy"
    unclear = [
        name for name, estimate in (("margin", margin), ("Qini", result.qini)) if not estimate.clears_zero
    ]
    serves = serves_sentence(best_single)
    return False, (
        f"{figures}: does not clear random targeting (the {' and '.join(unclear)} "
        f"{'interval does' if len(unclear) == 1 else 'intervals do'} not lie above 0): {serves}"
    )


def save_learner(learner: uplift.FittedLearner, ctx: RunContext, name: str) -> tuple[str, dict[str, str]]:
    """The learner's boosters under the run's folder, named by a hash of their text: (version, role -> path)."""
    digest = hashlib.sha256()
    for role in sorted(learner.boosters):
        digest.update(learner.boosters[role].model_to_string().encode())
    version = digest.hexdigest()[:12]
    return version, learner.save(ctx.run_dir / "models" / "uplift", f"{name}-{learner.kind}-{version}")


def best_single_variant(posteriors: dict[str, tuple[float, float]]) -> str | None:
    """The variant with the highest posterior mean conversion, Beta(alpha, beta): what serves without a
    proven uplift model (ties: the first by name)."""
    if not posteriors:
        return None
    return max(sorted(posteriors), key=lambda v: posteriors[v][0] / (posteriors[v][0] + posteriors[v][1]))


@dataclass(frozen=True)
class UpliftGate:
    """What the latest uplift evaluation up to tonight lets the personalized policy do with one campaign."""

    run_date: date | None  # the evaluation read (None: none yet)
    models: dict[
        str, dict[str, Any]
    ]  # variant -> its model row (meta.uplift_models), where it drives the policy
    average_effect: dict[
        str, float
    ]  # variant -> its measured average effect over no contact, every evaluated one
    reasons: dict[str, str]  # variant -> the evaluation's policy_reason

    def only(self, variant_ids: list[str]) -> UpliftGate:
        """The gate restricted to these variants (tonight's live ones)."""
        keep = set(variant_ids)
        return UpliftGate(
            self.run_date,
            {v: model for v, model in self.models.items() if v in keep},
            {v: effect for v, effect in self.average_effect.items() if v in keep},
            {v: reason for v, reason in self.reasons.items() if v in keep},
        )


def uplift_gate(con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, ctx: RunContext) -> UpliftGate:
    """The campaign's latest uplift evaluation up to the run date, with the models that may drive the policy."""
    ensure_tables(con)
    key = {"campaign_id": campaign.campaign_id, "run_date": ctx.run_date}
    rows = con.execute(
        """
        with latest as (
            select max(run_date) as run_date from meta.uplift_evaluation
            where campaign_id = $campaign_id and run_date <= $run_date
        )
        select evaluation.run_date, evaluation.variant_id, evaluation.drives_policy, evaluation.random_uplift,
            evaluation.policy_reason, models.learner, models.propensity, models.features, models.categories,
            models.paths
        from meta.uplift_evaluation as evaluation
        semi join latest using (run_date)
        left join meta.uplift_models as models using (run_date, campaign_id, variant_id)
        where evaluation.campaign_id = $campaign_id
        order by evaluation.variant_id
        """,
        key,
    ).fetchall()
    models, average, reasons = {}, {}, {}
    for (
        _day,
        variant,
        drives,
        random_uplift,
        reason,
        learner,
        propensity,
        features,
        categories,
        paths,
    ) in rows:
        reasons[variant] = reason
        if random_uplift is not None:
            average[variant] = float(random_uplift)
        if drives and learner is not None:
            models[variant] = {
                "learner": learner, "propensity": propensity, "features": tuple(json.loads(features)),
                "categories": json.loads(categories), "paths": json.loads(paths),
            }  # fmt: skip
    return UpliftGate(rows[0][0] if rows else None, models, average, reasons)


def predicted_uplift(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    users: pl.DataFrame,
    gate: UpliftGate,
    ctx: RunContext,
    settings: Settings | None = None,
) -> dict[str, np.ndarray]:
    """Each gated variant's predicted uplift for `users` (in their order), from the features at the cutoff
    computed as the evaluation computed them at each send (sql/features/uplift_examples.sql, mode 'score').
    A user the features do not know (created after the cutoff) has missing features, as LightGBM allows."""
    scored = uplift_examples(con, campaign, settings, ctx, ctx.cutoff, mode="score")
    frame = users.select("user_id").join(scored, on="user_id", how="left", maintain_order="left")
    return gated_scores(gate, frame)


def gated_scores(gate: UpliftGate, frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """Each proven variant's predicted uplift for the rows of `frame` (uplift features), from its stored learner."""
    out = {}
    for variant, model in gate.models.items():
        learner = uplift.load_learner(model["learner"], model["paths"], model["propensity"])
        out[variant] = learner.predict(feature_matrix(frame, tuple(model["features"]), model["categories"]))
    return out


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
    uplift_models: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)  # meta.policy_evaluation (tasks/ope.py)
    # campaign -> the test part of its uplift units (None: uplift off), until its policies are evaluated
    test_units: dict[str, pl.DataFrame | None] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@task(name="experiments", cache_policy=NO_CACHE)
@reported("experiments")
def analyse_experiments(settings: Settings, ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Analyse every configured campaign's sends and store the results; returns a summary per campaign.
    Sends, outcomes and the staging tables are all it reads: no nightly model, so a failed or skipped
    training never stops it."""
    run = ExperimentRun()
    campaigns = settings.campaigns if settings.experiments.enabled else []
    with connect(settings) as con, progress("experiments: campaigns", total=len(campaigns), unit="campaigns") as bar:
        ensure_tables(con)
        for campaign in campaigns:
            bar.advance(0, note=campaign.campaign_id)
            rows, summary = analyse_campaign(con, campaign, settings, ctx)
            run.results += rows
            posteriors = posterior_rows(con, campaign, ctx, summary["is_trusted"])
            run.posteriors += posteriors
            best = best_single_variant({row["variant_id"]: (row["alpha"], row["beta"]) for row in posteriors})
            # the units' features cost most of the analysis: built once, their test part kept for the policy
            # evaluation's personalized policy (valued on the same sends)
            units = None
            if settings.experiments.uplift.enabled:
                units = uplift_units(con, campaign, settings, ctx)
            evaluations, curves, uplift_models = evaluate_uplift(con, campaign, settings, ctx, best, units)
            run.test_units[campaign.campaign_id] = units.test() if units is not None else None
            del units
            run.uplift += evaluations
            run.curves += curves
            run.uplift_models += uplift_models
            summary["uplift"] = {
                row["variant_id"]: {
                    "learner": row.get("learner"),
                    "qini_coefficient": row.get("qini_coefficient"),
                    "uplift_at_target": row.get("uplift_at_target"),
                    "margin_at_target": row.get("margin_at_target"),
                    "drives_policy": row["drives_policy"],
                }
                for row in evaluations
            }
            run.summary[campaign.campaign_id] = summary
            bar.advance(1)
        replace_run_rows(con, "meta.experiment_results", RESULT_COLUMNS, run.results, ctx.run_date)
        replace_run_rows(con, "meta.variant_posteriors", POSTERIOR_COLUMNS, run.posteriors, ctx.run_date)
        replace_run_rows(con, "meta.uplift_evaluation", UPLIFT_COLUMNS, run.uplift, ctx.run_date)
        replace_run_rows(con, "meta.qini_curves", CURVE_COLUMNS, run.curves, ctx.run_date)
        replace_run_rows(con, "meta.uplift_models", UPLIFT_MODEL_COLUMNS, run.uplift_models, ctx.run_date)
        # after the uplift evaluation is stored: the personalized candidate is the policy its gate allows
        with progress("experiments: policy values", total=len(campaigns), unit="campaigns") as policy_bar:
            for campaign in campaigns:
                start = window_start(campaign, settings, ctx)
                test_units = run.test_units.pop(campaign.campaign_id, None)
                run.policies += evaluate_policies(con, campaign, settings, ctx, start, run.posteriors, test_units)
                policy_bar.advance(1, note=campaign.campaign_id)
        store_policy_evaluation(con, run.policies, ctx)
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
            f"({low * 100:+.2f} to {high * 100:+.2f}, {human.p_phrase(p, 'adjusted p')}) in the analysis "
            f"of {day}"
        )
        for variant, day, diff, control, low, high, p in rows
    }
