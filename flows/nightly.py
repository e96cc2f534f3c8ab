"""The nightly run: extract -> erase -> validate -> features -> experiments -> train -> score -> segments ->
variants -> fairness audit -> report -> publish."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow

from tailor.config import Settings, load_settings
from tailor.flows.experiments import experiment_analysis
from tailor.flows.sharded import assign_variants, score_users
from tailor.tasks.extract import extract_sources, gated_loads
from tailor.tasks.fairness import audit_fairness
from tailor.tasks.features import build_features_cached
from tailor.tasks.notify import notify_failure
from tailor.tasks.privacy import erase_deleted_users, register_key
from tailor.tasks.publish import check_publish_target, published_quality, upload_run, write_datasets
from tailor.tasks.report import write_report
from tailor.tasks.runs import run_lock, run_started, run_succeeded
from tailor.tasks.segments import build_segments
from tailor.tasks.train import train_models
from tailor.tasks.validate import combine, validate_features, validate_sources
from tailor.warehouse import RunContext, private_run_folders, private_umask, run_context


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"nightly-{flow_run.parameters.get('run_date') or 'today'}"


@flow(name="tailor-nightly", flow_run_name=_run_name, on_failure=[notify_failure])
def nightly(
    config_path: str, run_date: date | None = None, target: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Turn the sources into published recommendations, scores, segments, audiences and campaign content
    for one day. One run at a time: a second one is refused while this one holds the warehouse. A rerun of
    the night with nothing new reuses its features, unless `force`."""
    settings = load_settings(config_path, {"publish.target": target} if target else None)
    register_key(settings)  # erasure needs it in every mode: say so before anything runs
    ctx = run_context(settings, run_date)
    # the warehouse, models and working files are the account's alone; published files set their own modes
    with private_umask(), run_lock(settings, ctx.run_date):
        private_run_folders(settings, ctx)
        run_started(settings, ctx.run_date, "tailor-nightly")
        summary = run_stages(settings, ctx, force)
        run_succeeded(settings, ctx.run_date, "tailor-nightly")
    return summary


def run_stages(settings: Settings, ctx: RunContext, force: bool) -> dict[str, Any]:
    check_publish_target(settings)  # a target that cannot take the output fails now, not after the night
    # the night's loads are kept only once both gates pass: any failure up to there puts back the rows
    # they replaced, so a rejected file never costs the warehouse the rows it had
    with gated_loads(settings, ctx):
        loads = extract_sources(settings, ctx)
        erasure = erase_deleted_users(settings, ctx)
        source_quality = validate_sources(settings, ctx, loads)
        feature_rows = build_features_cached(settings, force)(settings, ctx)
        quality = combine(source_quality, validate_features(settings, ctx))
    # the experiments read sends and outcomes alone: they are analysed (and stored) before training, so a
    # model that cannot be trained tonight never stops them; `tailor experiments` can then publish them
    experiments = experiment_analysis(settings, ctx)
    models = train_models(settings, ctx)
    scored = score_users(settings, ctx, models)
    segments = build_segments(settings, ctx, models)
    campaigns = assign_variants(settings, ctx, models)
    fairness = audit_fairness(settings, ctx)
    write_report(settings, ctx)
    outputs = {"segments": segments, "experiments": experiments, "campaigns": campaigns, "fairness": fairness}
    local_run = write_datasets(settings, ctx, models, quality, outputs)
    published = upload_run(settings, ctx, local_run, settings.resolve_uri(settings.publish.target))
    return {
        "run_date": ctx.run_date.isoformat(),
        "extracted": {name: load.rows_loaded for name, load in loads.items()},
        "watermarks": {name: load.watermark for name, load in loads.items()},
        "erasure": erasure,
        "data_quality": published_quality(local_run),
        "feature_rows": feature_rows,
        "models": {
            name: {
                "version": m["version"],
                "metrics": m["metrics"],
                "decision": m["decision"],
                "served_by": m.get("served_by"),
                "trained": m.get("trained", True),
            }
            for name, m in models.items()
        },
        # what a person must hear: a model that lost to its baseline (or learned nothing) is not serving
        "warnings": [m["warning"] for m in models.values() if m.get("warning")],
        "scored": scored,
        "segments": segments,
        "experiments": experiments,
        "campaigns": campaigns,
        "fairness": fairness,
        "published": published,
    }
