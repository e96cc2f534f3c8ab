"""Score: every in-scope user's candidates through the ranker, every user through the propensity model,
then the marts: top-K recommendations with reasons, and propensity deciles.

Candidates stream through the ranker in Arrow batches so memory stays bounded by a batch, not the table.
"""

from __future__ import annotations

from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import Settings
from tailor.sql import materialize, read_partition
from tailor.warehouse import RunContext, connect
from tasks.train import PROPENSITY_FEATURES, RANKING_FEATURES, feature_matrix, predict_propensity

BATCH_ROWS = 500_000


def replace_table(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    con.execute("create schema if not exists model")
    con.register("incoming", data)
    try:
        con.execute(f"create or replace table {table} as select * from incoming")
    finally:
        con.unregister("incoming")


def score_candidates(con: duckdb.DuckDBPyConnection, booster: lgb.Booster, ctx: RunContext) -> int:
    reader = read_partition(
        con, "features/ranking_examples", ctx.cutoff, ("user_id", "item_id")
    ).to_arrow_reader(BATCH_ROWS)
    parts = []
    for batch in reader:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        scores = booster.predict(feature_matrix(frame, RANKING_FEATURES, {}))
        parts.append(frame.select("user_id", "item_id").with_columns(pl.Series("score", scores)))
    scored = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "score": pl.Float64})
    )
    replace_table(con, "model.scored_candidates", scored.to_arrow())
    return scored.height


def score_propensity(
    con: duckdb.DuckDBPyConnection, booster: lgb.Booster, model: dict[str, Any], ctx: RunContext
) -> int:
    users = read_partition(con, "features/propensity_examples", ctx.cutoff, ("user_id",)).pl()
    matrix = feature_matrix(users, PROPENSITY_FEATURES, model["categories"])
    probability = predict_propensity(booster, matrix, model["params"]["calibration"]) if users.height else []
    scored = users.select("user_id").with_columns(
        pl.Series("conversion_probability", np.asarray(probability, dtype=np.float64))
    )
    replace_table(con, "model.scored_users", scored.to_arrow())
    return scored.height


@task(name="score", cache_policy=NO_CACHE)
def score_users(settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Rank candidates, score propensity, and build the recommendation and propensity marts."""
    ranking, propensity = models["ranking"], models["propensity"]
    with connect(settings) as con:
        counts = {
            "scored_candidates": score_candidates(con, lgb.Booster(model_file=ranking["path"]), ctx),
            "scored_users": score_propensity(
                con, lgb.Booster(model_file=propensity["path"]), propensity, ctx
            ),
        }
        counts["mart_recommendations"] = materialize(
            con,
            "marts/mart_recommendations",
            {
                "run_date": ctx.run_date,
                "cutoff": ctx.cutoff,
                "k": settings.recommendations.k,
                "new_item_days": settings.ranking.new_item_days,
                "required_consent": settings.recommendations.requires_consent,
                "model_version": ranking["version"],
            },
        )
        counts["mart_user_propensity"] = materialize(
            con,
            "marts/mart_user_propensity",
            {
                "run_date": ctx.run_date,
                "horizon_days": settings.propensity.horizon_days,
                "model_version": propensity["version"],
            },
        )
    return counts
