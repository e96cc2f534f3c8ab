"""The experiments: analyse every campaign's A/B test and bandit, evaluate the uplift models, and publish
the results. Runs inside the nightly flow (before allocation, which uses what it learns) and on its own
(`tailor experiments`), when it publishes under `experiments/RUN_DATE/ATTEMPT/` with its own `latest.json`
pointers (tasks/publish.py)."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow

from tailor.config import Settings, load_settings
from tailor.tasks.experiments import analyse_experiments
from tailor.tasks.extract import extract_sources, gated_loads
from tailor.tasks.features import build_staging
from tailor.tasks.notify import notify_failure
from tailor.tasks.privacy import erase_deleted_users, register_key
from tailor.tasks.publish import check_publish_target, upload_run, write_datasets
from tailor.tasks.report import write_report
from tailor.tasks.runs import run_lock
from tailor.tasks.train import serving_models
from tailor.tasks.validate import validate_sources
from tailor.warehouse import RunContext, private_run_folders, private_umask, run_context

EXPERIMENT_DATASETS = ("experiment_results", "uplift_evaluation", "allocation_decisions", "policy_evaluation")


@flow(name="tailor-experiment-analysis", validate_parameters=False)
def experiment_analysis(settings: Settings, ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Tonight's analysis of every campaign, stored in the warehouse for the allocation and publication."""
    return analyse_experiments(settings, ctx)


@flow(name="tailor-experiments", on_failure=[notify_failure])
def experiments(config_path: str, run_date: date | None = None, target: str | None = None) -> dict[str, Any]:
    """Extract the newest sends, analyse them (from sends and outcomes alone: no model of the nightly run
    is needed) and publish the results. It shares the warehouse with the nightly run, so it takes the same
    run lock."""
    settings = load_settings(config_path, {"publish.target": target} if target else None)
    register_key(settings)  # erasure needs it in every mode: say so before anything runs
    ctx = run_context(settings, run_date)
    # the warehouse and working files are the account's alone; published files set their own modes
    with private_umask(), run_lock(settings, ctx.run_date):
        private_run_folders(settings, ctx)
        check_publish_target(settings)  # before extract: a bad target fails in seconds
        with gated_loads(settings, ctx):  # a rejected file puts back the rows it replaced
            loads = extract_sources(settings, ctx)
            erase_deleted_users(settings, ctx)
            quality = validate_sources(settings, ctx, loads)
        build_staging(settings, ctx)
        models = serving_models(settings, ctx)
        campaigns = experiment_analysis(settings, ctx)
        write_report(settings, ctx)
        only = EXPERIMENT_DATASETS
        local = write_datasets(settings, ctx, models, quality, {"experiments": campaigns}, only=only)
        target_uri = settings.resolve_uri(settings.publish.target)
        published = upload_run(settings, ctx, local, target_uri, root="experiments")
    return {"run_date": ctx.run_date.isoformat(), "experiments": campaigns, "published": published}
