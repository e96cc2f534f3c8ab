"""Score: every in-scope user's candidates through the ranker (and the audience items through the
engagement model), every user through the propensity model, then the marts: top-K recommendations with
reasons and fallbacks, and propensity deciles.

A local run streams the candidates from DuckDB to the models in batches, so memory holds a batch. With a
shard count set or a Dask cluster, the candidates and users are written out in user shards
(tasks/shards.py); each shard is scored by its own task, so memory holds a shard, not the table, and the
shards can run on a Dask cluster.
"""

from __future__ import annotations

import logging
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from tailor.config import CHANNEL_CONSENT, Settings
from tailor.progress import progress, reported
from tailor.sql import materialize, scalar
from tailor.tasks.repeats import RepeatDecision, excluded_event_types
from tailor.tasks.repeats import load as load_repeats
from tailor.tasks.shards import Shard, export_shards, make_shards
from tailor.tasks.train import (
    BASELINE_PREFIX,
    MODEL,
    RANKING_FEATURES,
    feature_matrix,
    predict_propensity,
    predict_propensity_baseline,
    ranking_baseline_scores,
    served_by_label,
)
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)



def replace_table(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    schema = table.split(".")[0]  # table names come from code, never from input
    con.execute(f"create schema if not exists {schema}")
    con.register("incoming", data)
    try:
        con.execute(f"create or replace table {table} as select * from incoming")
    finally:
        con.unregister("incoming")


SCORED_SCHEMAS: dict[str, dict[str, Any]] = {
    "scored_candidates": {"user_id": pl.Utf8, "item_id": pl.Utf8, "is_audience_only": pl.Boolean, "score": pl.Float64,
                          "discovery_score": pl.Float64},
    "audience_scores": {"user_id": pl.Utf8, "item_id": pl.Utf8, "engagement_probability": pl.Float64},
    "scored_users": {"user_id": pl.Utf8, "conversion_probability": pl.Float64},
}  # fmt: skip
# discovery and engagement may be missing: discovery exists only where repeats are allowed, and a model
# that learned nothing does not serve
SCORING_MODELS = ("ranking", "discovery", "engagement", "propensity")


@task(name="prepare-scoring", cache_policy=NO_CACHE)
@reported("prepare-scoring")
def prepare_scoring(settings: Settings, ctx: RunContext) -> list[Shard]:
    """Every in-scope user's candidates and propensity features, one Parquet folder per user shard."""
    folder = ctx.run_dir / "scoring"
    shutil.rmtree(folder, ignore_errors=True)
    with connect(settings) as con:
        users = int(
            scalar(
                con,
                "select count(*) from features.propensity_examples where cutoff = $cutoff",
                {"cutoff": ctx.cutoff},
            )
        )
        shards = make_shards(folder, settings.compute.shard_count(users))
        export_shards(con, "features.ranking_examples", ctx.cutoff, shards, "candidates")
        export_shards(con, "features.propensity_examples", ctx.cutoff, shards, "users")
    log.info("scoring %s users in %s shards", f"{users:,}", len(shards))
    return shards


def run_logger() -> Any:
    """The task run's logger (its lines reach the Prefect API from a Dask worker too); outside a run, ours."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def write_scores(shard: Shard, name: str, frame: pl.DataFrame) -> None:
    frame.cast(SCORED_SCHEMAS[name]).write_parquet(shard.path(name))  # type: ignore[arg-type]


@task(name="score-shard", cache_policy=NO_CACHE, task_run_name="score-shard-{shard.index}")
def score_shard(shard: Shard, models: dict[str, dict[str, Any]]) -> dict[str, int]:
    """One shard: the ranker's score for every candidate, the engagement probability of audience items,
    and the users' conversion propensity. Reads and writes only the shard's files."""
    scored, audience = score_candidates(shard.read("candidates"), models)
    write_scores(shard, "scored_candidates", scored)
    write_scores(shard, "audience_scores", audience)
    users = shard.read("users")
    write_scores(shard, "scored_users", score_user_frame(users, models))
    # the process shows where the shard ran: this one, or a Dask worker
    run_logger().info("shard %s of %s: %s candidates, %s users scored in process %s",
                      shard.index + 1, shard.count, scored.height, users.height, os.getpid())  # fmt: skip
    return {"candidates": scored.height, "users": users.height}


def score_candidates(
    candidates: pl.DataFrame, models: dict[str, dict[str, Any]]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(every candidate's ranking and discovery scores, the audience items' engagement probability)."""
    engagement = models.get("engagement")
    # no engagement model serving (its predictions were constant): no audience is scored tonight
    is_audience = candidates["is_audience_item"].fill_null(False).to_numpy() & (engagement is not None)
    # the ranker, discovery and engagement models read the same features: the matrix is built once
    rankers = [models[name] for name in ("ranking", "discovery") if name in models]
    needs_matrix = is_audience.any() or any(m.get("served_by", MODEL) == MODEL for m in rankers)
    matrix = feature_matrix(candidates, RANKING_FEATURES, {}) if candidates.height and needs_matrix else None
    scores = rank_candidates(candidates, models["ranking"], matrix)
    discovery = (
        rank_candidates(candidates, models["discovery"], matrix)
        if "discovery" in models
        else np.full(candidates.height, np.nan)
    )
    scored = candidates.select("user_id", "item_id", "is_audience_only").with_columns(
        pl.Series("score", np.asarray(scores, dtype=np.float64)),
        pl.Series("discovery_score", discovery).fill_nan(None),
    )
    probability = (
        predict_propensity(
            booster(engagement["path"]), matrix[is_audience], engagement["params"]["calibration"]
        )
        if is_audience.any() and engagement is not None and matrix is not None
        else []
    )
    audience_scores = candidates.filter(pl.Series(is_audience)).select("user_id", "item_id").with_columns(
        pl.Series("engagement_probability", np.asarray(probability, dtype=np.float64))
    )
    return scored, audience_scores


def score_user_frame(users: pl.DataFrame, models: dict[str, dict[str, Any]]) -> pl.DataFrame:
    conversion = score_propensity(users, models["propensity"]) if users.height else []
    return users.select("user_id").with_columns(
        pl.Series("conversion_probability", np.asarray(conversion, dtype=np.float64))
    )


def booster(path: str) -> lgb.Booster:
    """A model file loaded once per process and version of the file (a stream scores many batches with it)."""
    stat = os.stat(path)
    return _booster(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _booster(path: str, mtime_ns: int, size: int) -> lgb.Booster:
    return lgb.Booster(model_file=path)


# a batch of candidates streamed from DuckDB: about 0.5 GB of features and matrix, whatever the company's size
STREAM_ROWS = 1_000_000


def streams_locally(settings: Settings) -> bool:
    """A local run with no shard count set streams candidates from DuckDB to the models: no shard files
    (shards exist for runners that cannot read the warehouse, such as a Dask cluster)."""
    return settings.compute.task_runner == "local" and settings.compute.shards is None


@task(name="score-candidates", cache_policy=NO_CACHE)
@reported("score-candidates")
def stream_scores(
    settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]
) -> tuple[list[Shard], list[dict[str, int]]]:
    """Every in-scope user's candidates streamed from DuckDB through the models in batches of STREAM_ROWS
    rows, the scores written as they come; memory holds one batch. Returns what the shards would (one
    shard's files) for the gather step."""
    folder = ctx.run_dir / "scoring"
    shutil.rmtree(folder, ignore_errors=True)
    (shard,) = make_shards(folder, 1)
    writers = {name: pq.ParquetWriter(shard.path(name), scored_schema(name)) for name in SCORED_SCHEMAS}
    candidates, users = 0, 0
    try:
        with connect(settings) as con:
            total = int(scalar(con, "select count(*) from features.ranking_examples where cutoff = $cutoff",
                               {"cutoff": ctx.cutoff}))  # fmt: skip
            reader = con.sql(
                "select * from features.ranking_examples where cutoff = $cutoff", params={"cutoff": ctx.cutoff}
            ).to_arrow_reader(STREAM_ROWS)
            with progress("scoring candidates", total=total, unit="rows") as bar:
                for batch in reader:
                    scored, audience = score_candidates(pl.from_arrow(pa.Table.from_batches([batch])), models)
                    writers["scored_candidates"].write_table(cast_scores(scored, "scored_candidates"))
                    writers["audience_scores"].write_table(cast_scores(audience, "audience_scores"))
                    candidates += scored.height
                    bar.advance(scored.height)
            frame = con.sql(
                "select * from features.propensity_examples where cutoff = $cutoff", params={"cutoff": ctx.cutoff}
            ).pl()
            writers["scored_users"].write_table(cast_scores(score_user_frame(frame, models), "scored_users"))
            users = frame.height
    finally:
        for writer in writers.values():
            writer.close()
    run_logger().info("%s candidates and %s users scored in process %s, streamed from the warehouse",
                      f"{candidates:,}", f"{users:,}", os.getpid())  # fmt: skip
    return [shard], [{"candidates": candidates, "users": users}]


def scored_schema(name: str) -> pa.Schema:
    return pl.DataFrame(schema=SCORED_SCHEMAS[name]).to_arrow().schema


def cast_scores(frame: pl.DataFrame, name: str) -> pa.Table:
    return frame.cast(SCORED_SCHEMAS[name]).to_arrow().cast(scored_schema(name))  # type: ignore[arg-type]


def rank_candidates(
    candidates: pl.DataFrame, ranking: dict[str, Any], matrix: np.ndarray | None = None
) -> np.ndarray:
    """The serving order's scores: the ranker's, or the baseline's that beat it on the holdout. `matrix`: the
    candidates' ranking features, when the caller has built them."""
    if not candidates.height:
        return np.asarray([], dtype=np.float64)
    served_by = ranking.get("served_by", MODEL)
    if served_by != MODEL:
        scores = ranking_baseline_scores(candidates, served_by.removeprefix(BASELINE_PREFIX))
        # an item the baseline does not offer goes last, never out: the list still fills to k
        return scores.to_numpy().astype(np.float64).clip(min=-1e12)
    ranker = booster(ranking["path"])
    if matrix is None:
        matrix = feature_matrix(candidates, RANKING_FEATURES, {})
    return np.asarray(ranker.predict(matrix), dtype=np.float64)


def score_propensity(users: pl.DataFrame, propensity: dict[str, Any]) -> np.ndarray:
    """Calibrated purchase probabilities from the propensity model, or from the baseline that beat it."""
    if "baseline_serving" in propensity and propensity.get("served_by", MODEL) != MODEL:
        return predict_propensity_baseline(users, propensity["baseline_serving"])
    return predict_propensity(
        booster(propensity["path"]),
        feature_matrix(users, tuple(propensity["features"]), propensity["categories"]),
        propensity["params"]["calibration"],
    )


def table_from_parts(con: duckdb.DuckDBPyConnection, table: str, files: list[Path]) -> None:
    """The table made of the shards' files (every shard writes one, empty or not)."""
    # table names come from code; the file list is bound as a parameter
    con.execute(f"create schema if not exists {table.split('.')[0]}")
    con.execute(
        f"create or replace table {table} as select * from read_parquet($files)",
        {"files": [str(path) for path in files]},
    )


def recommendation_params(
    settings: Settings,
    ctx: RunContext,
    ranking: dict[str, Any],
    repeats: RepeatDecision,
    discovery: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config = settings.recommendations
    is_model = ranking.get("served_by", MODEL) == MODEL
    return {
        "run_date": ctx.run_date,
        "cutoff": ctx.cutoff,
        "k": config.k,
        "channels": list(config.channels),
        "channel_purposes": [CHANNEL_CONSENT[channel] for channel in config.channels],
        "required_consent": config.requires_consent,
        "max_per_category": config.max_per_category,
        "new_item_days": settings.ranking.new_item_days,
        "new_item_boost": config.new_item_boost,
        "min_history_events": config.min_history_events,
        "history_days": settings.ranking.history_days,
        "fallback_days": config.fallback_days,
        "excluded_event_types": excluded_event_types(settings, repeats),
        "model_version": ranking["version"] if is_model else None,
        "served_by": served_by_label(ranking, "ranking"),
        "discovery_served_by": served_by_label(discovery, "discovery") if discovery else None,
    }


@task(name="score", cache_policy=NO_CACHE)
@reported("score")
def finish_scoring(
    settings: Settings,
    ctx: RunContext,
    models: dict[str, dict[str, Any]],
    shards: list[Shard],
    shard_counts: list[dict[str, int]],
) -> dict[str, int]:
    """The shards' scores into the model tables, then the recommendation and user-score marts."""
    ranking, propensity = models["ranking"], models["propensity"]
    with connect(settings) as con:
        for name in SCORED_SCHEMAS:
            table_from_parts(con, f"model.{name}", [shard.path(name) for shard in shards])
        counts = {
            "shards": len(shards),
            "scored_candidates": sum(part["candidates"] for part in shard_counts),
            "scored_users": sum(part["users"] for part in shard_counts),
        }
        repeats = load_repeats(con, ctx.run_date)
        counts["recommendations"] = materialize(
            con, "marts/recommendations", recommendation_params(settings, ctx, ranking, repeats, models.get("discovery"))
        )
        counts["user_scores"] = materialize(
            con,
            "marts/user_scores",
            {
                "run_date": ctx.run_date,
                "horizon_days": settings.propensity.horizon_days,
                "model_version": propensity["version"]
                if propensity.get("served_by", MODEL) == MODEL
                else None,
                "served_by": served_by_label(propensity, "propensity"),
            },
        )
    shutil.rmtree(ctx.run_dir / "scoring", ignore_errors=True)
    return counts


def score_users(settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The whole scoring stage in this process: streamed, or shard after shard when a shard count is set
    (the flow runs the shards as tasks)."""
    needed = {name: models[name] for name in SCORING_MODELS if name in models}
    if streams_locally(settings):
        shards, counts = stream_scores.fn(settings, ctx, needed)
    else:
        shards = prepare_scoring.fn(settings, ctx)
        counts = [score_shard.fn(shard, needed) for shard in shards]
    return finish_scoring.fn(settings, ctx, models, shards, counts)
