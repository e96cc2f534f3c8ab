"""The run report: one self-contained HTML page (inline SVG plots, no script) published beside the run's
outputs as report.html: the experiments (each campaign's lift with its intervals, the posterior of each arm,
the uplift model's Qini curves), the allocation decisions, the fairness audit and the features each model
used."""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor import plots
from tailor.config import Settings
from tailor.sql import ensure_table, replace_run_rows, table_exists
from tailor.tasks.experiments import METRICS, ensure_tables
from tailor.tasks.fairness import ensure_audit_table
from tailor.warehouse import RunContext, connect

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
.wide { overflow-x: auto; } .plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plot text { font-size: 11px; } .plot .plot-title { font-size: 13px; font-weight: 600; }
.flag { color: #b00; font-weight: 600; } .ok { color: #070; } .empty { color: #888; }
.warning { border-left: 4px solid #b60; background: #fff6e8; padding: .2em 1em; }
"""


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if isinstance(value, float) else escape(str(value))


def table(frame: pl.DataFrame, text_columns: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in frame.columns)
    rows = []
    for row in frame.iter_rows(named=True):
        cells = "".join(
            f'<td class="text">{escape(str(value))}</td>'
            if column in text_columns
            else f"<td>{_number(value)}</td>"
            for column, value in row.items()
        )
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )


def read(con: duckdb.DuckDBPyConnection, sql: str, ctx: RunContext) -> pl.DataFrame:
    return con.sql(sql, params={"run_date": ctx.run_date}).pl()


def campaign_section(
    campaign_id: str, results: pl.DataFrame, curves: pl.DataFrame, uplift: pl.DataFrame
) -> str:
    mine = results.filter(pl.col("campaign_id") == campaign_id)
    first = mine.row(0, named=True)
    trust = (
        f'<span class="ok">sample ratio as intended (p = {first["srm_p_value"]:.3g})</span>'
        if first["is_trusted"]
        else f'<span class="flag">sample-ratio mismatch (p = {first["srm_p_value"]:.3g}): results not trusted</span>'
    )
    parts = [f"<h2>Campaign {escape(campaign_id)}</h2>",
             f"<p>Control: <b>{escape(first['control_variant_id'])}</b>; sends from {first['window_start']} "
             f"({first['correction']} correction, alpha {first['alpha']}). {trust}</p>"]  # fmt: skip
    lift_plots, posterior_plots = [], []
    for metric in METRICS:
        rows = mine.filter(pl.col("metric") == metric.name).sort("variant_id")
        scale, unit = (100.0, " pt") if metric.is_rate else (1.0, "")
        tested = rows.filter(~pl.col("is_control"))
        intervals = []
        for row in tested.iter_rows(named=True):
            estimate = row["cuped_diff"] if row["cuped_diff"] is not None else row["diff"]
            for label, low, high, est in (
                ("fixed", row["ci_low"], row["ci_high"], row["diff"]),
                ("CUPED", row["cuped_ci_low"], row["cuped_ci_high"], estimate),
                ("sequential", row["sequential_ci_low"], row["sequential_ci_high"], estimate),
            ):
                if low is not None:
                    intervals.append(
                        (f"{row['variant_id']} ({label})", est * scale, low * scale, high * scale)
                    )
                elif label == "fixed":
                    intervals.append((f"{row['variant_id']}", math.nan, math.nan, math.nan))
        lift_plots.append(plots.interval_chart(f"{metric.name}: difference against control", intervals, unit))
        densities = {
            row["variant_id"]: plots.normal_density(
                row["posterior_mean"] * scale, row["posterior_sd"] * scale
            )
            for row in rows.iter_rows(named=True)
            if row["posterior_sd"] is not None
        }
        posterior_plots.append(
            plots.line_chart(
                f"{metric.name}: posterior of each arm",
                densities,
                metric.name + (" (%)" if metric.is_rate else ""),
                "density",
            )
        )
        parts.append(f"<h3>{escape(metric.name)}</h3>")
        parts.append(
            table(
                rows.select(
                    "variant_id",
                    "units",
                    "mean",
                    "diff",
                    "ci_low",
                    "ci_high",
                    "lift",
                    "p_value",
                    "cuped_diff",
                    "cuped_interval_narrowing",
                    "sequential_ci_low",
                    "sequential_ci_high",
                    "p_value_adjusted",
                    "is_significant",
                    "chance_to_beat_control",
                    "expected_loss",
                ),
                ("variant_id",),
            )
        )
    parts.append('<div class="plots">' + "".join(lift_plots) + "</div>")
    parts.append('<div class="plots">' + "".join(posterior_plots) + "</div>")
    evaluation = uplift.filter(pl.col("campaign_id") == campaign_id)
    if evaluation.height:
        parts.append("<h3>Uplift model (two-model learner) on the last two weeks' sends</h3>")
        parts.append(
            table(
                evaluation.drop("run_date", "campaign_id"),
                ("variant_id", "variant_model_version", "no_contact_model_version"),
            )
        )
        mine_curves = curves.filter(pl.col("campaign_id") == campaign_id).sort("variant_id", "share_targeted")
        series: dict[str, tuple[list[float], list[float]]] = {}
        for (variant_id,), curve in mine_curves.partition_by(
            "variant_id", as_dict=True, maintain_order=True
        ).items():
            share = curve["share_targeted"].to_list()
            series[f"{variant_id} model"] = (share, curve["incremental_per_unit"].to_list())
            series[f"{variant_id} random"] = (share, curve["random_per_unit"].to_list())
        parts.append(
            '<div class="plots">'
            + plots.line_chart(
                "Qini curves",
                series,
                "share of sends targeted",
                "incremental conversions per send",
                dashed=tuple(label for label in series if label.endswith("random")),
            )
            + "</div>"
        )
    return "\n".join(parts)


def fairness_section(con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext) -> str:
    ensure_audit_table(con)
    audit = read(con, "select * from meta.fairness_audit where run_date = $run_date", ctx)
    parts = ["<h2>Fairness audit</h2>"]
    if audit.height == 0:
        return parts[0] + '<p class="empty">No audit in this run.</p>'
    threshold = settings.fairness.min_ratio
    flagged = audit.filter(pl.col("is_flagged"))
    parts.append(
        f'<p class="flag">{flagged.height} disparate-impact ratio(s) under {threshold}</p>'
        if flagged.height
        else f'<p class="ok">No disparate-impact ratio under {threshold} (groups of at least '
        f"{settings.fairness.min_group_users} users, Holm-adjusted).</p>"
    )
    unknown = (
        audit.filter(pl.col("is_unknown_group").fill_null(False))
        .group_by("attribute")
        .agg(pl.col("users").max())
        .sort("attribute")
    )
    if unknown.height:
        listed = ", ".join(
            f"{escape(r['attribute'])}: {r['users']:,} users" for r in unknown.iter_rows(named=True)
        )
        parts.append(
            f"<p>Group unknown (missing, blank or 'unknown'), reported apart and never flagged: {listed}.</p>"
        )
    # per attribute and subject, the worst known group's ratio, on the same scale as the threshold
    worst = (
        audit.filter(
            ~pl.col("is_small_group")
            & ~pl.col("is_unknown_group").fill_null(False)
            & pl.col("disparate_impact_ratio").is_not_null()
        )
        .sort("disparate_impact_ratio")
        .group_by("attribute", "subject", "subject_id", maintain_order=True)
        .first()
        .sort("disparate_impact_ratio")
        .head(25)
    )
    bars = [
        (f"{r['attribute']}={r['group_value']}: {r['subject_id']}", r["disparate_impact_ratio"])
        for r in worst.iter_rows(named=True)
    ]
    parts.append(
        '<div class="plots">'
        + plots.bar_chart(f"Lowest disparate-impact ratios (line: {threshold})", bars, reference=threshold)
        + "</div>"
    )
    columns = ("attribute", "group_value", "subject", "subject_id", "metric", "users", "value",
               "reference_group", "disparate_impact_ratio", "p_value_adjusted", "is_flagged")  # fmt: skip
    shown = flagged if flagged.height else worst
    parts.append(
        table(
            shown.select(columns),
            ("attribute", "group_value", "subject", "subject_id", "metric", "reference_group"),
        )
    )
    return "\n".join(parts)


def exclusions_section(con: duckdb.DuckDBPyConnection, settings: Settings) -> str:
    """recommendations.exclude: each rule in force and how many of tonight's catalogue items it keeps out
    of recommendations (an item meeting several rules counts under the first)."""
    rules = settings.recommendations.exclude.rules()
    parts = ["<h2>Items never recommended</h2>"]
    if not rules:
        return parts[0] + '<p class="empty">No exclusion rule: every live item may be recommended.</p>'
    counts: dict[str, int] = {}
    total = None
    if table_exists(con, "staging.stg_items"):
        counts = dict(
            con.execute(
                "select excluded_by, count(*) from staging.stg_items where is_latest and is_excluded group by 1"
            ).fetchall()
        )
        total = int(con.execute("select count(*) from staging.stg_items where is_latest").fetchall()[0][0])
    frame = pl.DataFrame(
        [{"rule": name, "setting": setting, "items": counts.get(name, 0)} for name, setting in rules],
        schema={"rule": pl.Utf8, "setting": pl.Utf8, "items": pl.Int64},
    )
    excluded = sum(counts.values())
    parts.append(
        f"<p>{excluded:,} of {total:,} catalogue items excluded (<code>recommendations.exclude</code>; an item "
        "meeting several rules counts under the first).</p>"
        if total is not None
        else '<p class="empty">No catalogue staged in this run.</p>'
    )
    parts.append(table(frame, ("rule", "setting")))
    return "\n".join(parts)


def models_section(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> str:
    """Each model's gate metric against its baseline, the champion decision, its features, and the
    propensity model's ROC and calibration and the ranker against popularity as plots."""
    if not table_exists(con, "meta.models"):
        return ""
    models = read(
        con,
        "select model_name, model_version, is_promoted, decision, metrics, array_to_string(features, ', ') as features "
        "from meta.models where run_date = $run_date order by model_name",
        ctx,
    )
    if models.height == 0:
        return ""
    rows, plots_html, warnings = [], [], []
    for row in models.iter_rows(named=True):
        metrics = json.loads(row["metrics"])
        ranking = "ndcg_at_10" in metrics
        metric = "ndcg_at_10" if ranking else "roc_auc"
        baseline = best_baseline(metrics, metric, ranking)
        if is_warning(row["decision"]):
            warnings.append(f"{row['model_name']}: {row['decision']}")
        rows.append({"model": row["model_name"], "version": row["model_version"], "serving": row["is_promoted"],
                     "metric": metric, "value": metrics.get(metric), "baseline": baseline,
                     "decision": row["decision"], "features": row["features"]})  # fmt: skip
        if row["model_name"] == "propensity":
            roc = metrics.get("roc_curve") or {"fpr": [], "tpr": []}
            plots_html.append(plots.line_chart(
                f"Propensity ROC (AUC {metrics['roc_auc']:.3f})",
                {"model": (roc["fpr"], roc["tpr"]), "random": ([0.0, 1.0], [0.0, 1.0])},
                "false positive rate", "true positive rate", dashed=("random",),
            ))  # fmt: skip
            table_rows = metrics.get("calibration_table", [])
            predicted = [r["mean_predicted"] for r in table_rows]
            top = max([*predicted, *(r["observed_rate"] for r in table_rows), 1e-9])
            plots_html.append(plots.line_chart(
                "Propensity calibration (by decile)",
                {"observed": (predicted, [r["observed_rate"] for r in table_rows]), "perfect": ([0.0, top], [0.0, top])},
                "mean predicted probability", "observed rate", dashed=("perfect",),
            ))  # fmt: skip
        if row["model_name"] in ("ranking", "discovery"):
            baselines = metrics.get("baselines") or {metrics["baseline"].get("name", "popularity"): metrics["baseline"]}
            bars = []
            for name in ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "mrr"):
                bars += [(f"{name} {row['model_name']}", metrics[name])]
                bars += [(f"{name} {baseline}", values[name]) for baseline, values in baselines.items()]
            plots_html.append(plots.bar_chart(
                f"{row['model_name'].capitalize()} on the holdout: the model against its baselines", bars
            ))  # fmt: skip
    table_html = table(pl.DataFrame(rows), ("model", "version", "metric", "decision", "features"))
    warning_html = (
        '<div class="warning"><p><strong>Not served tonight:</strong></p><ul>'
        + "".join(f"<li>{escape(line)}</li>" for line in warnings)
        + "</ul></div>"
        if warnings
        else ""
    )
    return (
        "<h2>Models</h2>" + warning_html + repeats_html(con, ctx) + table_html
        + '<div class="plots">' + "".join(plots_html) + "</div>"
    )  # fmt: skip


def repeats_html(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> str:
    """What the run chose about recommending what customers bought before, and why."""
    if not table_exists(con, "meta.repeat_decisions"):
        return ""
    rows = con.execute(
        "select reason from meta.repeat_decisions where run_date = $run_date", {"run_date": ctx.run_date}
    ).fetchall()
    return f"<p>Repeat purchases (<code>ranking.repeat_purchases</code>): {escape(rows[0][0])}.</p>" if rows else ""


def best_baseline(metrics: dict[str, Any], metric: str, ranking: bool) -> float | None:
    """The baseline a model had to beat: the best of the ranker's or the propensity model's, else the
    constant score (ROC AUC 0.5)."""
    if ranking:
        return metrics["baseline"].get(metric)
    baselines = metrics.get("baselines")
    if baselines:
        return max(values[metric] for values in baselines.values())
    return 0.5


def is_warning(decision: str | None) -> bool:
    """A decision that kept a model from serving because a baseline beat it or it learned nothing."""
    return bool(decision) and ("serves instead" in decision or "not served" in decision)


def run_summary_section(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> str:
    """Did last night work? The data-quality gate, rows per stage against the previous run, timings."""
    parts = ["<h2>Run summary</h2>"]
    if table_exists(con, "meta.data_quality_results"):
        checks = read(
            con,
            "select stage, table_name, rule, severity, is_success, unexpected_count, rows_checked "
            "from meta.data_quality_results where run_date = $run_date order by stage, table_name, rule",
            ctx,
        )
        failed = checks.filter(~pl.col("is_success"))
        critical = failed.filter(pl.col("severity") == "critical").height
        status = "flag" if critical else "ok"
        parts.append(
            f'<p class="{status}">Data quality: {checks.height - failed.height} of {checks.height} checks passed, '
            f"{critical} critical and {failed.height - critical} warning failure(s).</p>"
        )
        if failed.height:
            parts.append(table(failed, ("stage", "table_name", "rule", "severity")))
    counts = row_counts(con, ctx)
    if counts.height:
        parts.append("<h3>Rows per stage, against the previous run</h3>")
        parts.append(table(counts, ("stage", "table_name")))
    timings = stage_timings()
    if timings:
        parts.append(
            '<div class="plots">' + plots.bar_chart("Stage timings (seconds)", timings, " s") + "</div>"
        )
    return "\n".join(parts)


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


def stage_timings() -> list[tuple[str, float]]:
    """The finished task runs of the current flow run, with their durations, from the Prefect API."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.runtime import flow_run

        if not flow_run.id:
            return []
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
    except Exception:  # outside a flow run, or the API is not reachable: the report goes without timings
        return []
    finished = [run for run in runs if run.start_time and run.end_time]
    finished.sort(key=lambda run: run.start_time)
    return [(run.name.rsplit("-", 1)[0], (run.end_time - run.start_time).total_seconds()) for run in finished]


def segments_and_allocation_section(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> str:
    parts = []
    if table_exists(con, "marts.segment_profiles"):
        profiles = con.sql(
            "select segment_type, segment_name, users from marts.segment_profiles order by segment_type, users desc"
        ).pl()
        if profiles.height:
            bars = [
                (f"{r['segment_type']}: {r['segment_name']}", float(r["users"]))
                for r in profiles.iter_rows(named=True)
            ]
            parts.append(plots.bar_chart("Segment sizes (users)", bars))
    decisions = read(
        con,
        "select campaign_id, variant_id, share from meta.allocation_decisions where run_date = $run_date order by all",
        ctx,
    )
    if decisions.height:
        bars = [
            (f"{r['campaign_id']}: {r['variant_id']}", r["share"]) for r in decisions.iter_rows(named=True)
        ]
        parts.append(plots.bar_chart("Variant allocation tonight (share)", bars))
    return (
        "<h2>Segments and allocation</h2>" + '<div class="plots">' + "".join(parts) + "</div>"
        if parts
        else ""
    )


def render(con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext) -> str:
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
    body = [f"<h1>Tailor run {ctx.run_date.isoformat()} ({escape(settings.project)})</h1>",
            f"<p>Data up to {ctx.cutoff.isoformat()} UTC.</p>", run_summary_section(con, ctx),
            exclusions_section(con, settings), models_section(con, ctx), segments_and_allocation_section(con, ctx),
            "<h2>Experiments</h2>"]  # fmt: skip
    if results.height == 0:
        body.append('<p class="empty">No campaign sends to analyse.</p>')
    for campaign_id in sorted(set(results["campaign_id"].to_list())):
        body.append(campaign_section(campaign_id, results, curves, uplift))
    body.append(fairness_section(con, settings, ctx))
    body.append("<h2>Allocation decisions</h2>")
    body.append(table(decisions, ("campaign_id", "variant_id", "policy", "reason")) if decisions.height
                else '<p class="empty">No campaign was allocated in this run.</p>')  # fmt: skip
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Tailor run {ctx.run_date.isoformat()}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
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
            "select model_name, is_promoted, decision from meta.models where run_date = $d order by 1",
            {"d": ctx.run_date},
        ).fetchall():
            lines.append(f"| {name} | {'yes' if promoted else 'no'} | {decision} |")
        lines.append("")
    significant = con.execute(
        "select campaign_id, variant_id, metric, diff from meta.experiment_results where run_date = $d and "
        "is_significant order by all",
        {"d": ctx.run_date},
    ).fetchall()
    lines += ["| campaign | variant | metric | difference |", "|---|---|---|---|"]
    lines += [f"| {c} | {v} | {m} | {d:+.4g} |" for c, v, m, d in significant] or ["| - | - | - | - |"]
    ensure_audit_table(con)
    flagged = con.execute(
        "select count(*) from meta.fairness_audit where run_date = $d and is_flagged", {"d": ctx.run_date}
    ).fetchall()[0][0]
    lines += ["", f"Fairness audit: {flagged} flagged ratio(s)."]
    return "\n".join(lines)


@task(name="report", cache_policy=NO_CACHE)
def write_report(settings: Settings, ctx: RunContext) -> Path:
    """Render the run report into the run folder (publishing copies it beside the outputs) and attach its
    headline to the flow run as a Prefect artifact."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    path = ctx.run_dir / "report" / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(settings) as con:
        path.write_text(render(con, settings, ctx), encoding="utf-8")
        markdown = artifact_markdown(con, ctx)
    if FlowRunContext.get() is not None:  # a task of a flow run, not a plain function call
        create_markdown_artifact(
            markdown=markdown, key="tailor-run-report", description=f"Tailor run {ctx.run_date}"
        )
    return path
