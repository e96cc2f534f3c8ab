"""Score: every in-scope user's candidates through the ranker (and the audience items through the
engagement model), every user through the propensity model, then the marts: top-K recommendations with
reasons and fallbacks, and propensity deciles.

Candidates stream through the ranker in Arrow batches so memory stays bounded by a batch, not the table.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import CHANNEL_CONSENT, Settings
from tailor.sql import materialize, read_partition
from tailor.warehouse import RunContext, connect
from tasks.train import RANKING_FEATURES, feature_matrix, predict_propensity

BATCH_ROWS = 500_000


def replace_table(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    schema = table.split(".")[0]  # table names come from code, never from input
    con.execute(f"create schema if not exists {schema}")
    con.register("incoming", data)
    try:
        con.execute(f"create or replace table {table} as select * from incoming")
    finally:
        con.unregister("incoming")


def score_candidates(
    con: duckdb.DuckDBPyConnection, ranker: lgb.Booster, engagement: dict[str, Any], ctx: RunContext
) -> int:
    """The ranker's score for every candidate; for audience items also the engagement probability.

    Each batch's scores go to a Parquet file under the run folder, and the tables are made from those
    files, so memory holds one batch, not every user's candidates."""
    folder = ctx.run_dir / "scores"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    reader = read_partition(
        con, "features/ranking_examples", ctx.cutoff, ("user_id", "item_id")
    ).to_arrow_reader(BATCH_ROWS)
    engagement_booster = lgb.Booster(model_file=engagement["path"])
    calibration = engagement["params"]["calibration"]
    rows = 0
    for index, batch in enumerate(reader):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        scores = ranker.predict(feature_matrix(frame, RANKING_FEATURES, {}))
        frame.select("user_id", "item_id", "is_audience_only").with_columns(
            pl.Series("score", scores)
        ).write_parquet(folder / f"candidates-{index:05d}.parquet")
        rows += frame.height
        audience = frame.filter(pl.col("is_audience_item"))
        probability = (
            predict_propensity(
                engagement_booster, feature_matrix(audience, RANKING_FEATURES, {}), calibration
            )
            if audience.height
            else []
        )
        audience.select("user_id", "item_id").with_columns(
            pl.Series("engagement_probability", np.asarray(probability, dtype=np.float64))
        ).write_parquet(folder / f"audience-{index:05d}.parquet")
    table_from_parts(con, "model.scored_candidates", sorted(folder.glob("candidates-*.parquet")),
                     {"user_id": pl.Utf8, "item_id": pl.Utf8, "is_audience_only": pl.Boolean, "score": pl.Float64})  # fmt: skip
    table_from_parts(con, "model.audience_scores", sorted(folder.glob("audience-*.parquet")),
                     {"user_id": pl.Utf8, "item_id": pl.Utf8, "engagement_probability": pl.Float64})  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def table_from_parts(
    con: duckdb.DuckDBPyConnection, table: str, files: list[Path], schema: dict[str, Any]
) -> None:
    if not files:
        replace_table(con, table, pl.DataFrame(schema=schema).to_arrow())
        return
    # table names come from code; the file list is bound as a parameter
    con.execute(f"create schema if not exists {table.split('.')[0]}")
    con.execute(
        f"create or replace table {table} as select * from read_parquet($files)",
        {"files": [str(path) for path in files]},
    )


def score_propensity(
    con: duckdb.DuckDBPyConnection, booster: lgb.Booster, model: dict[str, Any], ctx: RunContext
) -> int:
    users = read_partition(con, "features/propensity_examples", ctx.cutoff, ("user_id",)).pl()
    matrix = feature_matrix(users, tuple(model["features"]), model["categories"])
    probability = predict_propensity(booster, matrix, model["params"]["calibration"]) if users.height else []
    scored = users.select("user_id").with_columns(
        pl.Series("conversion_probability", np.asarray(probability, dtype=np.float64))
    )
    replace_table(con, "model.scored_users", scored.to_arrow())
    return scored.height


def recommendation_params(settings: Settings, ctx: RunContext, model_version: str) -> dict[str, Any]:
    config = settings.recommendations
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
        "excluded_event_types": settings.ranking.excluded_event_types,
        "model_version": model_version,
    }


@task(name="score", cache_policy=NO_CACHE)
def score_users(settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Rank candidates, score propensity, and build the recommendation and user-score marts."""
    ranking, propensity = models["ranking"], models["propensity"]
    with connect(settings) as con:
        counts = {
            "scored_candidates": score_candidates(
                con, lgb.Booster(model_file=ranking["path"]), models["engagement"], ctx
            ),
            "scored_users": score_propensity(
                con, lgb.Booster(model_file=propensity["path"]), propensity, ctx
            ),
        }
        counts["recommendations"] = materialize(
            con, "marts/recommendations", recommendation_params(settings, ctx, ranking["version"])
        )
        counts["user_scores"] = materialize(
            con,
            "marts/user_scores",
            {
                "run_date": ctx.run_date,
                "horizon_days": settings.propensity.horizon_days,
                "model_version": propensity["version"],
            },
        )
    return counts
