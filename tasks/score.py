"""Score: every in-scope user's candidates through the ranker (and the audience items through the
engagement model), every user through the propensity model, then the marts: top-K recommendations with
reasons and fallbacks, and propensity deciles.

The candidates and users are written out in user shards (tasks/shards.py); each shard is scored by its own
task, so memory holds a shard, not the table, and the shards can run on a Dask cluster.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from tailor.config import CHANNEL_CONSENT, Settings
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
    candidates = shard.read("candidates")
    scores = rank_candidates(candidates, models["ranking"])
    discovery = (
        rank_candidates(candidates, models["discovery"])
        if "discovery" in models
        else np.full(candidates.height, np.nan)
    )
    write_scores(shard, "scored_candidates", candidates.select("user_id", "item_id", "is_audience_only")
                 .with_columns(pl.Series("score", np.asarray(scores, dtype=np.float64)),
                               pl.Series("discovery_score", discovery).fill_nan(None)))  # fmt: skip
    engagement = models.get("engagement")
    # no engagement model serving (its predictions were constant): no audience is scored tonight
    audience = candidates.filter(pl.col("is_audience_item") & pl.lit(engagement is not None))
    del candidates
    probability = (
        predict_propensity(
            lgb.Booster(model_file=engagement["path"]),
            feature_matrix(audience, RANKING_FEATURES, {}),
            engagement["params"]["calibration"],
        )
        if audience.height and engagement is not None
        else []
    )
    write_scores(shard, "audience_scores", audience.select("user_id", "item_id").with_columns(
        pl.Series("engagement_probability", np.asarray(probability, dtype=np.float64))))  # fmt: skip
    users = shard.read("users")
    conversion = score_propensity(users, models["propensity"]) if users.height else []
    write_scores(shard, "scored_users", users.select("user_id").with_columns(
        pl.Series("conversion_probability", np.asarray(conversion, dtype=np.float64))))  # fmt: skip
    # the process shows where the shard ran: this one, or a Dask worker
    run_logger().info("shard %s of %s: %s candidates, %s users scored in process %s",
                      shard.index + 1, shard.count, len(scores), users.height, os.getpid())  # fmt: skip
    return {"candidates": len(scores), "users": users.height}


def rank_candidates(candidates: pl.DataFrame, ranking: dict[str, Any]) -> np.ndarray:
    """The serving order's scores: the ranker's, or the baseline's that beat it on the holdout."""
    if not candidates.height:
        return np.asarray([], dtype=np.float64)
    served_by = ranking.get("served_by", MODEL)
    if served_by != MODEL:
        scores = ranking_baseline_scores(candidates, served_by.removeprefix(BASELINE_PREFIX))
        # an item the baseline does not offer goes last, never out: the list still fills to k
        return scores.to_numpy().astype(np.float64).clip(min=-1e12)
    ranker = lgb.Booster(model_file=ranking["path"])
    return np.asarray(ranker.predict(feature_matrix(candidates, RANKING_FEATURES, {})), dtype=np.float64)


def score_propensity(users: pl.DataFrame, propensity: dict[str, Any]) -> np.ndarray:
    """Calibrated purchase probabilities from the propensity model, or from the baseline that beat it."""
    if "baseline_serving" in propensity and propensity.get("served_by", MODEL) != MODEL:
        return predict_propensity_baseline(users, propensity["baseline_serving"])
    return predict_propensity(
        lgb.Booster(model_file=propensity["path"]),
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
    """The whole scoring stage in this process, shard after shard (the flow runs the shards as tasks)."""
    shards = prepare_scoring.fn(settings, ctx)
    needed = {name: models[name] for name in SCORING_MODELS if name in models}
    counts = [score_shard.fn(shard, needed) for shard in shards]
    return finish_scoring.fn(settings, ctx, models, shards, counts)
