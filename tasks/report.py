"""The run report: one self-contained HTML page (static SVG charts drawn by Vega-Lite through Altair and
vl-convert, no script, no request) published beside the run's outputs as report.html.

It answers, in order: did the night work (checks, rows against the previous run, every stage timed with a
total), are the models worth serving (each beside its baselines, a warning when one does not beat them or
predicts a constant), what do the experiments say (a verdict per variant, relative lift in % with its
interval, chance to beat control and expected loss, the sample-ratio check, power and the days to a
decision, the effect and the exposure over time), is anyone treated unfairly (the flagged groups by name),
and what was allocated. The page is tasks/templates/report.html.j2; this module gathers its facts.

The report is rendered twice: by the `report` task (so a failed publish still leaves one in the run folder)
and again while the run is published, once its files are up, so that it times the publish and the upload
too and links the published datasets, the Data Docs, the manifest and the previous report.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import jinja2
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor import charts, human
from tailor.config import CampaignConfig, Settings
from tailor.progress import reported
from tailor.sql import ensure_table, replace_run_rows, table_exists
from tailor.tasks.experiments import Metric, catalogue_metrics, ensure_tables, intended_shares
from tailor.tasks.fairness import ensure_audit_table
from tailor.warehouse import RunContext, connect

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPORT_FILE = "report.html"


@dataclass
class PageContext:
    """What only the publish knows: where things are published, and how long it took."""

    links: list[tuple[str, str]] = field(default_factory=list)  # (label, relative href)
    datasets: list[tuple[str, str, int]] = field(default_factory=list)  # (name, href, rows)
    previous_report: str | None = None
    extra_timings: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = number
    env.filters["pct"] = percent
    env.filters["p"] = human.p_phrase  # in a sentence: p = 0.032, p < 0.001
    env.filters["pvalue"] = human.p_value  # in a table's cell: 0.032, < 0.001
    env.filters["setting"] = human.setting  # a configured threshold as written: 0.8, 0.05
    return env


def number(value: Any, digits: int = 3) -> str:
    """Numbers as people read them (tailor.human.number): thousands separated, floats to `digits`
    significant digits in plain decimals, never scientific notation (999.7 is 1,000 and 0.00004 is 0.00004,
    not 1e+03 and 4.00e-05); booleans yes or no, text as it is."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return human.number(value, digits)
    return str(value)


def percent(value: Any, digits: int = 1) -> str:
    """A ratio as a percentage with its sign, grouped (0.208 -> +20.8%, 26 -> +2,600.0%)."""
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{100 * value:+,.{digits}f}%"


def read(con: duckdb.DuckDBPyConnection, sql: str, ctx: RunContext) -> pl.DataFrame:
    return con.sql(sql, params={"run_date": ctx.run_date}).pl()


# ---- the run -------------------------------------------------------------------------------------------


def quality_summary(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> dict[str, Any] | None:
    if not table_exists(con, "meta.data_quality_results"):
        return None
    checks = read(
        con,
        "select stage, table_name, rule, severity, is_success, unexpected_count, rows_checked "
        "from meta.data_quality_results where run_date = $run_date order by stage, table_name, rule",
        ctx,
    )
    failed = checks.filter(~pl.col("is_success"))
    return {
        "total": checks.height,
        "passed": checks.height - failed.height,
        "critical": failed.filter(pl.col("severity") == "critical").height,
        "failed": failed.to_dicts(),
    }


# (stage, label, the table the count reads, SQL counting this run's rows with $run_date and $cutoff)
COUNTS = (
    ("extract", "raw rows loaded", "meta.loaded_files",
     "select coalesce(sum(row_count), 0) from meta.loaded_files where loaded_run_date = $run_date"),
    ("features", "features.user_features", "features.user_features",
     "select count(*) from features.user_features where cutoff = $cutoff"),
    ("features", "features.candidates", "features.candidates",
     "select count(*) from features.candidates where cutoff = $cutoff"),
    *(("outputs", f"marts.{name}", f"marts.{name}", f"select count(*) from marts.{name}")
      for name in ("recommendations", "user_scores", "segments", "item_audiences", "content")),
)  # fmt: skip

COUNT_COLUMNS = {"run_date": "date", "stage": "varchar", "table_name": "varchar", "row_count": "bigint"}


def row_counts(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> pl.DataFrame:
    """Tonight's row counts, stored in meta.run_counts, beside the previous run's."""
    ensure_table(con, "meta.run_counts", COUNT_COLUMNS)
    rows = []
    for stage, name, source, sql in COUNTS:
        if not table_exists(con, source):
            continue
        params = {k: v for k, v in {"run_date": ctx.run_date, "cutoff": ctx.cutoff}.items() if f"${k}" in sql}
        rows.append({"run_date": ctx.run_date, "stage": stage, "table_name": name,
                     "row_count": int(con.execute(sql, params).fetchall()[0][0])})  # fmt: skip
    replace_run_rows(con, "meta.run_counts", COUNT_COLUMNS, rows, ctx.run_date)
    return con.sql(
        """
        with previous as (
            select stage, table_name, row_count from meta.run_counts
            where run_date = (select max(run_date) from meta.run_counts where run_date < $d)
        )
        select now.stage, now.table_name, now.row_count as rows, previous.row_count as previous_rows,
            round(100.0 * (now.row_count - previous.row_count) / nullif(previous.row_count, 0), 1) as change_pct
        from meta.run_counts as now
        left join previous using (stage, table_name)
        where now.run_date = $d
        order by now.stage, now.table_name
        """,
        params={"d": ctx.run_date},
    ).pl()


def stage_timings() -> tuple[list[tuple[str, float]], float | None]:
    """The finished task runs of the current flow run with their durations, and the seconds since the flow
    run started (None outside a flow run), from the Prefect API."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.runtime import flow_run

        if not flow_run.id:
            return [], None
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
            started = client.read_flow_run(flow_run.id).start_time
    except Exception:  # outside a flow run, or the API is not reachable: the report goes without timings
        return [], None
    finished = sorted(
        (run for run in runs if run.start_time and run.end_time), key=lambda run: run.start_time
    )
    timings = [
        (run.name.rsplit("-", 1)[0], (run.end_time - run.start_time).total_seconds()) for run in finished
    ]
    if started is None:
        return timings, None
    from datetime import UTC, datetime

    return timings, (datetime.now(UTC) - started).total_seconds()


def run_section(con: duckdb.DuckDBPyConnection, ctx: RunContext, page: PageContext) -> dict[str, Any]:
    timings, wall = stage_timings()
    timings = timings + page.extra_timings
    frame = pl.DataFrame(
        [{"stage": name, "seconds": round(seconds, 2)} for name, seconds in timings],
        schema={"stage": pl.Utf8, "seconds": pl.Float64},
    )
    return {
        "quality": quality_summary(con, ctx),
        "counts": row_counts(con, ctx).to_dicts(),
        "timings": frame.to_dicts(),
        "total_seconds": wall,
        "stage_seconds": float(frame["seconds"].sum()) if frame.height else None,
        "timing_chart": charts.bar_chart(frame, "stage", "seconds", "Time per stage", "seconds", "stage")
        if frame.height
        else "",
    }


# ---- models --------------------------------------------------------------------------------------------


def best_baseline(metrics: dict[str, Any], metric: str, ranking: bool) -> tuple[str, float | None]:
    """The baseline a model had to beat and its score: the best of the ranker's or the propensity model's
    baselines, else a constant score (ROC AUC 0.5)."""
    if ranking:
        baselines = metrics.get("baselines") or {
            metrics["baseline"].get("name", "popularity"): metrics["baseline"]
        }
        name, values = max(baselines.items(), key=lambda item: item[1].get(metric) or -math.inf)
        return name, values.get(metric)
    baselines = metrics.get("baselines")
    if baselines:
        name, values = max(baselines.items(), key=lambda item: item[1][metric])
        return name, values[metric]
    return "constant score", 0.5


def predicts_a_constant(metrics: dict[str, Any]) -> bool:
    """A binary model whose scores are all alike: its ROC curve is the diagonal's two ends and its
    calibration one value, whatever the labels."""
    if metrics.get("is_constant"):
        return True
    roc = metrics.get("roc_curve") or {}
    calibration = {round(row["mean_predicted"], 9) for row in metrics.get("calibration_table") or []}
    return (len(roc.get("fpr") or []) == 2 and "roc_auc" in metrics) or len(calibration) == 1


def feature_importance(path: str | None, top: int = 15) -> pl.DataFrame:
    """The model's features by share of total gain (LightGBM), the largest first."""
    import lightgbm as lgb

    if not path or not Path(path).is_file():
        return pl.DataFrame(schema={"feature": pl.Utf8, "gain_share": pl.Float64})
    booster = lgb.Booster(model_file=path)
    gains = booster.feature_importance(importance_type="gain")
    total = float(gains.sum()) or 1.0
    frame = pl.DataFrame({"feature": booster.feature_name(), "gain_share": [float(g) / total for g in gains]})
    return frame.sort("gain_share", descending=True).head(top)


# the models serving tonight: trained tonight, or on the last training night (registry.retrain_every_days)
LATEST_TRAINING = "select max(run_date) from meta.models where run_date <= $run_date"


def models_section(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> dict[str, Any] | None:
    if not table_exists(con, "meta.models"):
        return None
    models = read(
        con,
        "select model_name, model_version, is_promoted, decision, metrics, features, path "
        f"from meta.models where run_date = ({LATEST_TRAINING}) order by model_name",
        ctx,
    )
    if models.height == 0:
        return None
    rows, chart_html = [], []
    for row in models.iter_rows(named=True):
        metrics = json.loads(row["metrics"])
        ranking = "ndcg_at_10" in metrics
        metric = "ndcg_at_10" if ranking else "roc_auc"
        baseline_name, baseline = best_baseline(metrics, metric, ranking)
        value = metrics.get(metric)
        warnings = []
        if predicts_a_constant(metrics):
            warnings.append("predicts the same score for everyone: it has learned nothing")
        if value is not None and baseline is not None and value <= baseline:
            warnings.append(
                f"does not beat {baseline_name} ({metric} {number(value)} against {number(baseline)})"
            )
        importance = feature_importance(row["path"])
        rows.append({
            "name": row["model_name"], "version": row["model_version"], "serving": bool(row["is_promoted"]),
            "metric": metric, "value": value, "baseline_name": baseline_name, "baseline": baseline,
            "decision": row["decision"] or "", "warnings": warnings, "features": list(row["features"] or []),
            "importance": charts.bar_chart(
                importance, "feature", "gain_share", f"{row['model_name']}: feature importance",
                "share of total gain", "feature", percent=True,
            ) if importance.height else "",
        })  # fmt: skip
        if row["model_name"] == "propensity":
            chart_html += propensity_charts(metrics)
        if ranking and row["model_name"] in ("ranking", "discovery"):
            chart_html.append(ranking_chart(row["model_name"], metrics))
    return {"models": rows, "charts": chart_html, "repeats": repeats_reason(con, ctx)}


def propensity_charts(metrics: dict[str, Any]) -> list[str]:
    roc = metrics.get("roc_curve") or {"fpr": [], "tpr": []}
    curve = pl.concat([
        pl.DataFrame({"fpr": roc["fpr"], "tpr": roc["tpr"], "line": "model"},
                     schema={"fpr": pl.Float64, "tpr": pl.Float64, "line": pl.Utf8}),
        pl.DataFrame({"fpr": [0.0, 1.0], "tpr": [0.0, 1.0], "line": "random"}),
    ])  # fmt: skip
    calibration = metrics.get("calibration_table") or []
    top = max([*(r["mean_predicted"] for r in calibration), *(r["observed_rate"] for r in calibration), 1e-9])
    observed = pl.concat([
        pl.DataFrame({"predicted": [r["mean_predicted"] for r in calibration],
                      "observed": [r["observed_rate"] for r in calibration], "line": "model"},
                     schema={"predicted": pl.Float64, "observed": pl.Float64, "line": pl.Utf8}),
        pl.DataFrame({"predicted": [0.0, top], "observed": [0.0, top], "line": "perfect"}),
    ])  # fmt: skip
    return [
        charts.line_chart(curve, "fpr", "tpr", f"Propensity ROC (AUC {number(metrics.get('roc_auc'))})",
                          "false positive rate", "true positive rate", dash="line", dash_title="line"),
        charts.line_chart(observed, "predicted", "observed", "Propensity calibration (by decile)",
                          "mean predicted probability", "observed conversion rate", dash="line", dash_title="line"),
    ]  # fmt: skip


def ranking_chart(name: str, metrics: dict[str, Any]) -> str:
    baselines = metrics.get("baselines") or {
        metrics["baseline"].get("name", "popularity"): metrics["baseline"]
    }
    rows = []
    for measure in ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "mrr"):
        rows.append({"measure": measure, "model": name, "value": metrics.get(measure)})
        rows += [{"measure": measure, "model": b, "value": v.get(measure)} for b, v in baselines.items()]
    frame = pl.DataFrame(rows, schema={"measure": pl.Utf8, "model": pl.Utf8, "value": pl.Float64})
    frame = frame.with_columns((pl.col("measure") + " · " + pl.col("model")).alias("bar"))
    return charts.bar_chart(
        frame,
        "bar",
        "value",
        f"{name.capitalize()} on the holdout against its baselines",
        "score (0 to 1)",
        "measure · model",
        color="model",
        color_title="model",
    )


def repeats_reason(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> str | None:
    if not table_exists(con, "meta.repeat_decisions"):
        return None
    rows = con.execute(
        "select reason from meta.repeat_decisions where run_date = $run_date", {"run_date": ctx.run_date}
    ).fetchall()
    return rows[0][0] if rows else None


# ---- experiments ---------------------------------------------------------------------------------------


def in_units(row: dict[str, Any], currency: str, metrics: dict[str, Metric]) -> dict[str, str]:
    """The row's means and expected loss as people read them: rates in %, money in the data's currency
    (the results hold cents), other means in their own unit."""
    metric = metrics.get(row["metric"])

    def shown(value: Any) -> str:
        if value is None or not isinstance(value, int | float) or not math.isfinite(value):
            return "-"
        if metric is not None and metric.is_rate:
            return f"{100 * value:.2f}%"
        if metric is not None and metric.unit != "cents":
            return f"{value:,.2f} {metric.unit}".rstrip()
        return f"{value / 100:,.2f} {currency}"

    return {
        "control_shown": shown(row.get("control_mean")),
        "mean_shown": shown(row.get("mean")),
        "loss_shown": shown(row.get("expected_loss")),
    }


def outcome(row: dict[str, Any]) -> str:
    if not row.get("is_significant"):
        return "not significant"
    good = (row.get("lift") or 0) > 0
    return "better" if good == bool(row.get("higher_is_better", True)) else "worse"


def arm_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per variant (from the results' own verdict when the analysis gave one)."""
    verdicts: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["is_control"] or row["variant_id"] in verdicts:
            continue
        if row.get("verdict"):
            verdicts[row["variant_id"]] = {"variant_id": row["variant_id"], "verdict": row["verdict"],
                                           "reason": row.get("verdict_reason") or ""}  # fmt: skip
    return sorted(verdicts.values(), key=lambda v: v["variant_id"])


def srm_table(campaign: CampaignConfig | None, units_by_arm: dict[str, int]) -> list[dict[str, Any]]:
    """Observed units per arm against the counts the intended shares expect."""
    if campaign is None or not units_by_arm:
        return []
    shares = intended_shares(campaign)
    total = sum(units_by_arm.values())
    if "contacted" in shares:
        observed = {"holdout": units_by_arm.get("holdout", 0),
                    "contacted": sum(n for arm, n in units_by_arm.items() if arm != "holdout")}  # fmt: skip
    else:
        observed = {arm: units_by_arm.get(arm, 0) for arm in shares}
    return [
        {"arm": arm, "observed": observed[arm], "expected": round(total * share), "share": share}
        for arm, share in shares.items()
        if share > 0 or observed.get(arm)
    ]


def campaign_section(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext, campaign_id: str,
    results: pl.DataFrame, curves: pl.DataFrame, uplift: pl.DataFrame,
) -> dict[str, Any]:  # fmt: skip
    mine = results.filter(pl.col("campaign_id") == campaign_id).sort("metric", "variant_id")
    rows = mine.to_dicts()
    first = rows[0]
    campaign = next((c for c in settings.campaigns if c.campaign_id == campaign_id), None)
    # a metric whose window is still open measures fewer units: the arm's units are its most measured ones
    units_by_arm: dict[str, int] = {}
    for r in rows:
        if r["units"] is not None:
            units_by_arm[r["variant_id"]] = max(units_by_arm.get(r["variant_id"], 0), r["units"])
    tested = [r for r in rows if not r["is_control"]]
    lift_rows = pl.DataFrame(
        [{"label": f"{r['variant_id']} · {r['metric']}",
          "lift_pct": None if r.get("lift") is None else 100 * r["lift"],
          "low_pct": None if r.get("lift_ci_low") is None else 100 * r["lift_ci_low"],
          "high_pct": None if r.get("lift_ci_high") is None else 100 * r["lift_ci_high"],
          "outcome": outcome(r)} for r in tested],
        schema={"label": pl.Utf8, "lift_pct": pl.Float64, "low_pct": pl.Float64, "high_pct": pl.Float64,
                "outcome": pl.Utf8},
    )  # fmt: skip
    primary = next((r.get("metric") for r in rows if r.get("metric_role") == "primary"), "conversion_rate")
    return {
        "campaign_id": campaign_id,
        "control": first["control_variant_id"],
        "window_start": first["window_start"],
        "trusted": bool(first["is_trusted"]),
        "srm_p_value": first["srm_p_value"],
        "srm": srm_table(campaign, units_by_arm),
        "alpha": first["alpha"],
        "correction": first["correction"],
        "verdicts": arm_verdicts(rows),
        "rows": [
            r
            | {"outcome": outcome(r)}
            | in_units(r, settings.currency, catalogue_metrics(settings.experiments))
            for r in tested
        ],
        "lift_chart": charts.lift_chart(
            lift_rows, f"{campaign_id}: relative lift against {first['control_variant_id']}"
        ),
        "history": history_charts(con, campaign_id, primary, ctx),
        "uplift": uplift_rows(uplift.filter(pl.col("campaign_id") == campaign_id)),
        "qini": qini_chart(campaign_id, curves),
        "policies": policy_table(con, campaign_id, ctx),
    }


def policy_table(con: duckdb.DuckDBPyConnection, campaign_id: str, ctx: RunContext) -> list[dict[str, Any]]:
    """Tonight's off-policy estimates of the campaign's conversion rate per send: one row per policy, each
    estimator's value with its bootstrap interval, and why where a policy has no estimate."""
    rows = con.execute(
        "select policy, estimator, value, ci_low, ci_high, effective_sample_size, logged_rows, reason "
        "from meta.policy_evaluation where run_date = $run_date and campaign_id = $campaign_id "
        "and metric = 'conversion_rate' order by policy, estimator",
        {"run_date": ctx.run_date, "campaign_id": campaign_id},
    ).fetchall()
    table: dict[str, dict[str, Any]] = {}
    for policy, estimator, value, low, high, ess, logged_rows, reason in rows:
        # a difference between two policies reads in percentage points, a value as a rate
        unit, sign = (" points", "+") if estimator == "snipw_difference" else ("%", "")
        shown = (
            "-"
            if value is None or low is None or high is None
            else f"{value * 100:{sign}.2f}{unit} ({low * 100:{sign}.2f} to {high * 100:{sign}.2f})"
        )
        entry = table.setdefault(
            policy,
            {"policy": policy, "logged_rows": logged_rows, "reason": reason, "effective_sample_size": None}
            | dict.fromkeys(("ipw", "snipw", "dr", "snipw_difference")),
        )
        entry[estimator] = shown
        if estimator == "snipw":
            entry["effective_sample_size"] = ess
    return list(table.values())


def _with_interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({low:.3f} to {high:.3f})"


def uplift_rows(evaluation: pl.DataFrame) -> list[dict[str, Any]]:
    """Per variant, the uplift evaluation as the report shows it: the chosen learner, Qini and uplift at the
    target share with their intervals, random targeting's value, the margin over it and whether the model
    drives the personalized policy, in the evaluation's words."""
    rows = []
    for r in evaluation.sort("variant_id").to_dicts():
        share = r.get("target_share")
        rows.append({
            "variant_id": r["variant_id"],
            "learner": r.get("learner") or "-",
            "split": r.get("split") or "-",
            "test units": r.get("test_units"),
            "qini": _with_interval(r.get("qini_coefficient"), r.get("qini_ci_low"), r.get("qini_ci_high")),
            f"uplift@{share:.0%}" if share else "uplift@k": _with_interval(
                r.get("uplift_at_target"), r.get("uplift_at_target_ci_low"), r.get("uplift_at_target_ci_high")),
            "random": _with_interval(r.get("random_uplift"), r.get("random_uplift_ci_low"), r.get("random_uplift_ci_high")),
            "margin": _with_interval(r.get("margin_at_target"), r.get("margin_ci_low"), r.get("margin_ci_high")),
            "drives the policy": bool(r.get("drives_policy")),
            "why": r.get("policy_reason") or "-",
        })  # fmt: skip
    return rows


def history_charts(
    con: duckdb.DuckDBPyConnection, campaign_id: str, metric: str, ctx: RunContext
) -> list[str]:
    """The primary metric's lift and each arm's exposure, night by night, from the published history."""
    history = con.sql(
        "select run_date, variant_id, is_control, units, lift, lift_ci_low, lift_ci_high "
        "from meta.experiment_results where campaign_id = $c and metric = $m and run_date <= $d order by all",
        params={"c": campaign_id, "m": metric, "d": ctx.run_date},
    ).pl()
    if history.select("run_date").n_unique() < 2:
        return []
    effect = history.filter(~pl.col("is_control") & pl.col("lift").is_not_null()).select(
        pl.col("run_date").cast(pl.Utf8), "variant_id", (pl.col("lift") * 100).alias("lift_pct"),
        (pl.col("lift_ci_low") * 100).alias("low_pct"), (pl.col("lift_ci_high") * 100).alias("high_pct"),
    )  # fmt: skip
    exposure = history.select(pl.col("run_date").cast(pl.Utf8), "variant_id", "units")
    return [
        charts.line_chart(effect, "run_date", "lift_pct", f"{metric}: lift over time", "run date",
                          "relative lift against control (%)", series="variant_id", series_title="variant",
                          x_type="O", band=("low_pct", "high_pct")),
        charts.line_chart(exposure, "run_date", "units", "Exposure over time", "run date", "users in the arm",
                          series="variant_id", series_title="arm", x_type="O"),
    ]  # fmt: skip


def qini_chart(campaign_id: str, curves: pl.DataFrame) -> str:
    mine = curves.filter(pl.col("campaign_id") == campaign_id)
    if mine.height == 0:
        return ""
    frame = pl.concat([
        mine.select("variant_id", (pl.col("share_targeted") * 100).alias("targeted_pct"),
                    pl.col("incremental_per_unit").alias("incremental"), pl.lit("model").alias("targeting")),
        mine.select("variant_id", (pl.col("share_targeted") * 100).alias("targeted_pct"),
                    pl.col("random_per_unit").alias("incremental"), pl.lit("random").alias("targeting")),
    ])  # fmt: skip
    return charts.line_chart(
        frame,
        "targeted_pct",
        "incremental",
        "Qini curves: targeting by the uplift model against random",
        "share of sends targeted (%)",
        "incremental conversions per send",
        series="variant_id",
        series_title="variant",
        dash="targeting",
        dash_title="targeting",
    )


# ---- fairness, segments, allocation, exclusions --------------------------------------------------------


def fairness_section(con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext) -> dict[str, Any]:
    ensure_audit_table(con)
    audit = read(con, "select * from meta.fairness_audit where run_date = $run_date", ctx)
    threshold = settings.fairness.min_ratio
    shown = human.setting(threshold)
    if audit.height == 0:
        return {"audited": False, "threshold": threshold}
    unknown_group = pl.col("is_unknown_group").fill_null(False)
    flagged = audit.filter(pl.col("is_flagged")).sort("disparate_impact_ratio")
    judged = audit.filter(
        ~pl.col("is_small_group") & ~unknown_group & pl.col("disparate_impact_ratio").is_not_null()
    )
    # per attribute and subject, the worst judged group's ratio, on the threshold's scale
    worst = (
        judged.sort("disparate_impact_ratio")
        .group_by("attribute", "subject", "subject_id", maintain_order=True)
        .first()
        .sort("disparate_impact_ratio")
        .head(25)
        .with_columns(
            (pl.col("attribute") + "=" + pl.col("group_value") + " · " + pl.col("subject_id")).alias("group"),
            pl.when(pl.col("is_flagged")).then(pl.lit("flagged"))
            .when(pl.col("disparate_impact_ratio") < threshold).then(pl.lit(f"under {shown}, not significant"))
            .otherwise(pl.lit(f"{shown} or more")).alias("status"),
        )
    )  # fmt: skip
    scale = charts.alt.Scale(
        domain=["flagged", f"under {shown}, not significant", f"{shown} or more"],
        range=[charts.BAD, "#E69F00", charts.NEUTRAL],
    )
    apart = audit.filter(pl.col("is_small_group") | unknown_group).select(
        "attribute", "group_value", "subject_id", "users",
        pl.when(unknown_group).then(pl.lit("unknown group")).otherwise(pl.lit("too small to judge")).alias("why"),
    ).unique().sort("attribute", "group_value", "subject_id")  # fmt: skip
    return {
        "audited": True,
        "threshold": threshold,
        "min_group_users": settings.fairness.min_group_users,
        "flagged": flagged.select(
            "attribute",
            "group_value",
            "subject",
            "subject_id",
            "metric",
            "users",
            "value",
            "reference_group",
            "disparate_impact_ratio",
            "p_value_adjusted",
        ).to_dicts(),
        "under_not_flagged": judged.filter(
            ~pl.col("is_flagged") & (pl.col("disparate_impact_ratio") < threshold)
        ).height,
        "apart": apart.to_dicts(),
        "chart": charts.bar_chart(
            worst,
            "group",
            "disparate_impact_ratio",
            f"Lowest disparate-impact ratio per subject (line: {shown})",
            "disparate-impact ratio (group rate / reference rate)",
            "group · subject",
            color="status",
            color_title="status",
            color_scale=scale,
            reference=threshold,
        )
        if worst.height
        else "",
    }


def segments_and_allocation(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> list[str]:
    parts = []
    if table_exists(con, "marts.segment_profiles"):
        profiles = con.sql(
            "select segment_type || ': ' || segment_name as segment, users from marts.segment_profiles "
            "order by segment_type, users desc"
        ).pl()
        if profiles.height:
            parts.append(charts.bar_chart(profiles, "segment", "users", "Segment sizes", "users", "segment"))
    decisions = read(
        con,
        "select campaign_id || ': ' || variant_id as arm, share from meta.allocation_decisions "
        "where run_date = $run_date order by all",
        ctx,
    )
    if decisions.height:
        parts.append(charts.bar_chart(decisions, "arm", "share", "Variant allocation tonight", "share of the "
                                      "campaign's users", "campaign: arm", percent=True))  # fmt: skip
    return parts


def exclusions(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict[str, Any]:
    """recommendations.exclude: each rule in force and how many of tonight's catalogue items it keeps out
    of recommendations (an item meeting several rules counts under the first)."""
    rules = settings.recommendations.exclude.rules()
    counts: dict[str, int] = {}
    total = None
    if rules and table_exists(con, "staging.stg_items"):
        counts = dict(
            con.execute(
                "select excluded_by, count(*) from staging.stg_items where is_latest and is_excluded group by 1"
            ).fetchall()
        )
        total = int(con.execute("select count(*) from staging.stg_items where is_latest").fetchall()[0][0])
    return {
        "rules": [
            {"rule": name, "setting": setting, "items": counts.get(name, 0)} for name, setting in rules
        ],
        "excluded": sum(counts.values()),
        "total": total,
    }


# ---- the page ------------------------------------------------------------------------------------------


def render(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext, page: PageContext | None = None
) -> str:
    page = page or PageContext()
    ensure_tables(con)
    results = read(con, "select * from meta.experiment_results where run_date = $run_date", ctx)
    curves = read(con, "select * from meta.qini_curves where run_date = $run_date", ctx)
    uplift = read(con, "select * from meta.uplift_evaluation where run_date = $run_date order by all", ctx)
    decisions = read(
        con,
        "select campaign_id, variant_id, policy, users, share, previous_share, reason "
        "from meta.allocation_decisions where run_date = $run_date order by campaign_id, variant_id",
        ctx,
    )
    campaigns = [
        campaign_section(con, settings, ctx, campaign_id, results, curves, uplift)
        for campaign_id in sorted(set(results["campaign_id"].to_list()))
    ]
    template = _environment().get_template("report.html.j2")
    return template.render(
        project=settings.project,
        currency=settings.currency,
        run_date=ctx.run_date.isoformat(),
        cutoff=ctx.cutoff.isoformat(),
        page=page,
        run=run_section(con, ctx, page),
        exclusions=exclusions(con, settings),
        models=models_section(con, ctx),
        segments=segments_and_allocation(con, ctx),
        campaigns=campaigns,
        fairness=fairness_section(con, settings, ctx),
        decisions=decisions.to_dicts(),
    )


def artifact_markdown(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> str:
    """The report's headline as a Prefect artifact: tables in markdown, for the Prefect UI."""
    lines = [
        f"# Tailor run {ctx.run_date.isoformat()}",
        "",
        "report.html is published beside the outputs.",
        "",
    ]
    if table_exists(con, "meta.data_quality_results"):
        passed, total = con.execute(
            "select count(*) filter (where is_success), count(*) from meta.data_quality_results where run_date = $d",
            {"d": ctx.run_date},
        ).fetchall()[0]
        lines += [f"Data quality: {passed} of {total} checks passed.", ""]
    if table_exists(con, "meta.models"):
        lines += ["| model | serving | decision |", "|---|---|---|"]
        for name, promoted, decision in con.execute(
            f"select model_name, is_promoted, decision from meta.models where run_date = ({LATEST_TRAINING}) "
            "order by 1",
            {"run_date": ctx.run_date},
        ).fetchall():
            lines.append(f"| {name} | {'yes' if promoted else 'no'} | {decision} |")
        lines.append("")
    significant = con.execute(
        "select campaign_id, variant_id, metric, lift from meta.experiment_results where run_date = $d and "
        "is_significant order by all",
        {"d": ctx.run_date},
    ).fetchall()
    lines += ["| campaign | variant | metric | lift |", "|---|---|---|---|"]
    lines += [f"| {c} | {v} | {m} | {percent(lift)} |" for c, v, m, lift in significant] or [
        "| - | - | - | - |"
    ]
    ensure_audit_table(con)
    flagged = con.execute(
        "select attribute || '=' || group_value || ' (' || subject_id || ')' from meta.fairness_audit "
        "where run_date = $d and is_flagged order by 1",
        {"d": ctx.run_date},
    ).fetchall()
    lines += [
        "",
        "Fairness audit: " + (", ".join(f[0] for f in flagged) + " flagged" if flagged else "none flagged"),
    ]
    return "\n".join(lines)


@task(name="report", cache_policy=NO_CACHE)
@reported("report")
def write_report(settings: Settings, ctx: RunContext) -> Path:
    """Render the run report into the run folder and attach its headline to the flow run as a Prefect
    artifact. Publishing renders it again with the publish's timings and links (`published_report`)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    path = ctx.run_dir / "report" / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(settings) as con:
        path.write_text(render(con, settings, ctx), encoding="utf-8")
        markdown = artifact_markdown(con, ctx)
    if FlowRunContext.get() is not None:  # a task of a flow run, not a plain function call
        create_markdown_artifact(
            markdown=markdown, key="tailor-run-report", description=f"Tailor run {ctx.run_date}"
        )
    return path


def relative_href(from_folder: str, to_key: str) -> str:
    """A link from a page in `from_folder` to `to_key`, both relative to the target's root."""
    up = len([part for part in from_folder.split("/") if part])
    return "../" * up + to_key


def published_report(
    settings: Settings,
    ctx: RunContext,
    local_run: Path,
    attempt_folder: str,
    previous_folder: str | None,
    publish_started: float,
) -> bytes:
    """The report as published: timed to this point of the upload, linked to what the attempt holds and
    to the previous run's report."""
    manifest = json.loads((local_run / "manifest.json").read_text())
    links = [("manifest", "manifest.json")]
    links += [
        (f"Data Docs: {stage}", href) for stage, href in sorted((manifest.get("data_docs") or {}).items())
    ]
    datasets = []
    for name, entry in manifest.get("datasets", {}).items():
        first = next(iter(entry.get("files") or []), None)
        if first is not None:
            datasets.append((name, first["path"], int(entry.get("rows") or 0)))
    page = PageContext(
        links=links,
        datasets=datasets,
        previous_report=relative_href(attempt_folder, f"{previous_folder}/{REPORT_FILE}")
        if previous_folder
        else None,
        extra_timings=[("publish and upload", time.monotonic() - publish_started)],
    )
    with connect(settings) as con:
        return render(con, settings, ctx, page).encode("utf-8")
