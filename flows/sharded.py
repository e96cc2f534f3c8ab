"""The sharded stages: a step that writes each user shard's inputs, one task per shard on the configured
task runner (this process, or a Dask cluster with `compute.task_runner: dask`), and a step that gathers
the shards' results into the warehouse."""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.futures import PrefectFuture, as_completed

from tailor.config import Settings
from tailor.progress import progress
from tailor.tasks.score import (
    SCORING_MODELS,
    finish_scoring,
    prepare_scoring,
    score_shard,
    stream_scores,
    streams_locally,
)
from tailor.tasks.shards import Shard, task_runner
from tailor.tasks.variants import allocate_campaigns, render_shard, store_content
from tailor.warehouse import RunContext


def gather(futures: list[PrefectFuture[Any]], label: str, unit: str) -> list[Any]:
    """The futures' results in shard order, advancing a progress bar as each shard finishes."""
    with progress(label, total=len(futures), unit=unit) as bar:
        for future in as_completed(futures):
            future.result()  # a failed shard fails the stage here, naming its task
            bar.advance(1)
    return [future.result() for future in futures]


@flow(name="tailor-score-shards")
def score_shards(shards: list[Shard], models: dict[str, dict[str, Any]]) -> list[dict[str, int]]:
    return gather(score_shard.map(shards, unmapped(models)), "scoring users", "shards")


@flow(name="tailor-render-shards")
def render_shards(settings: Settings, shards: list[Shard]) -> list[dict[str, int]]:
    return gather(render_shard.map(unmapped(settings), shards), "rendering content", "shards")


def score_users(settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]) -> dict[str, int]:
    scoring_models = {name: models[name] for name in SCORING_MODELS if name in models}
    if streams_locally(settings):
        shards, counts = stream_scores(settings, ctx, scoring_models)
    else:
        shards = prepare_scoring(settings, ctx)
        counts = score_shards.with_options(task_runner=task_runner(settings))(shards, scoring_models)
    return finish_scoring(settings, ctx, models, shards, counts)


def assign_variants(
    settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    plan = allocate_campaigns(settings, ctx, models)
    truncated = render_shards.with_options(task_runner=task_runner(settings))(settings, plan.shards)
    return store_content(settings, ctx, plan, truncated)
