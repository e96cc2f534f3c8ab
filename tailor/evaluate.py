"""Offline ranking benchmark: the nightly pipeline's extract, features, candidates and ranker under the
protocol of the Microsoft Recommenders benchmark table (MovieLens 100K).

- `stratified`: per user, a seeded random 75/25 split of their ratings; `temporal`: per user, the newest
  25% held out. Every rating counts as an interaction; relevance is binary.
- The ranker learns from a second split of the training part (75/25 again), whose held-out part is
  placed just after the cutoff, so the same point-in-time feature SQL turns it into labels.
- The model's top-k among items the user has not rated in train is measured against the held-out
  ratings, beside a most-popular baseline computed on the same split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tailor import metrics
from tailor.config import Settings, load_settings
from tailor.sql import materialize, read_partition, scalar
from tailor.tasks.extract import extract_sources
from tailor.tasks.features import build_candidates, build_cutoff_features, build_staging_models
from tailor.tasks.repeats import RepeatDecision
from tailor.tasks.repeats import decide as decide_repeats
from tailor.tasks.score import replace_table
from tailor.tasks.train import RANKING_FEATURES, feature_matrix, fit_ranker
from tailor.warehouse import connect, run_context

K = 10
TEST_SHARE = 0.25
PROTOCOLS = ("stratified", "temporal")


@dataclass(frozen=True)
class Split:
    train: pl.DataFrame
    test: pl.DataFrame


def split_ratings(ratings: pl.DataFrame, protocol: str, seed: int, test_share: float = TEST_SHARE) -> Split:
    """Per user: the first floor((1 - share) * n) ratings train, the rest test; in a seeded random order
    (stratified) or by time (temporal: the newest ratings are the test)."""
    ordered = ratings.sort("user_id", "item_id", "occurred_at")
    if protocol == "stratified":
        draws = np.random.default_rng(seed).random(ordered.height)
        ordered = ordered.with_columns(pl.Series("_order", draws))
    else:
        ordered = ordered.with_columns(pl.col("occurred_at").cast(pl.Float64).alias("_order"))
    ranked = ordered.with_columns(
        pl.col("_order").rank("ordinal").over("user_id").alias("_position"),
        pl.len().over("user_id").alias("_n"),
    )
    in_train = pl.col("_position") <= (pl.col("_n") * (1 - test_share)).floor()
    helper = ["_order", "_position", "_n"]
    return Split(ranked.filter(in_train).drop(helper), ranked.filter(~in_train).drop(helper))


def stage_interactions(con: Any, history: pl.DataFrame, future: pl.DataFrame, cutoff: datetime) -> None:
    """Make `history` the interactions before the cutoff and `future` the ones just after it."""
    moved = future.with_columns(
        pl.lit(cutoff + timedelta(hours=1)).cast(pl.Datetime("us")).alias("occurred_at")
    )
    frame = pl.concat([history.with_columns(pl.col("occurred_at").cast(pl.Datetime("us"))), moved])
    replace_table(con, "staging.stg_interactions", frame.to_arrow())
    materialize(con, "staging/stg_purchase_days")  # derived from the interactions just staged


def popularity_top_k(train: pl.DataFrame, users: pl.Series, k: int) -> pl.DataFrame:
    """Most-rated items in train first, skipping what each user rated in train."""
    counts = (
        train.group_by("item_id").agg(pl.len().alias("n")).sort(["n", "item_id"], descending=[True, False])
    )
    head = counts.head(k + int(train.group_by("user_id").len()["len"].max() or 0))
    candidates = pl.DataFrame({"user_id": users.unique()}).join(head, how="cross")
    unseen = candidates.join(train.select("user_id", "item_id"), on=["user_id", "item_id"], how="anti")
    return metrics.top_k_from_scores(unseen.with_columns(pl.col("n").cast(pl.Float64)), "n", k)


def evaluate(config_path: Path, protocol: str, data_dir: Path, work_dir: Path) -> dict[str, Any]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    base = load_settings(config_path)
    overrides: dict[str, Any] = {
        f"sources.{name}.path": str((data_dir / Path(source.path).name).resolve())
        for name, source in base.sources.items()
    }
    overrides |= {
        "warehouse.path": str(work_dir / "tailor.duckdb"),
        "warehouse.runs_dir": str(work_dir / "runs"),
    }
    (work_dir / "tailor.duckdb").unlink(missing_ok=True)
    settings = load_settings(config_path, overrides)
    first = run_context(settings, datetime(2100, 1, 1).date())
    extract_sources.fn(settings, first)
    with connect(settings) as con:
        newest = scalar(con, "select max(occurred_at) from raw.interactions")
        ctx = run_context(settings, newest.date() + timedelta(days=2))
        build_staging_models(con, ctx)
        ratings = con.sql(
            "select user_id, item_id, event_type, relevance, value, occurred_at from staging.stg_interactions"
        ).pl()
        split = split_ratings(ratings, protocol, settings.seed)
        inner = split_ratings(split.train, protocol, settings.seed + 1)
        # users and items are a static snapshot, loaded "today": all of it counts as known at the cutoff
        known_before = first.run_date + timedelta(days=1)
        repeats = decide_repeats(con, settings, ctx.cutoff)
        booster = train_stage(con, settings, ctx, inner, known_before, repeats)
        scored = score_stage(con, settings, ctx, split, booster, known_before, repeats)
    return report(settings, protocol, split, scored)


def train_stage(
    con: Any, settings: Settings, ctx: Any, inner: Split, known_before: date, repeats: RepeatDecision
) -> Any:
    stage_interactions(con, inner.train, inner.test, ctx.cutoff)
    build_cutoff_features(con, settings, ctx.cutoff, known_before, with_ranking=True)
    build_candidates(con, settings, ctx.cutoff, True, repeats)
    examples = read_partition(con, "features/ranking_examples", ctx.cutoff, ("user_id", "item_id")).pl()
    booster, *_ = fit_ranker(examples, settings)
    return booster


def score_stage(
    con: Any,
    settings: Settings,
    ctx: Any,
    split: Split,
    booster: Any,
    known_before: date,
    repeats: RepeatDecision,
) -> pl.DataFrame:
    stage_interactions(con, split.train, split.test.head(0), ctx.cutoff)
    build_cutoff_features(con, settings, ctx.cutoff, known_before, with_ranking=True)
    build_candidates(con, settings, ctx.cutoff, False, repeats)
    examples = read_partition(con, "features/ranking_examples", ctx.cutoff, ("user_id", "item_id")).pl()
    return examples.select("user_id", "item_id").with_columns(
        pl.Series("score", booster.predict(feature_matrix(examples, RANKING_FEATURES, {})))
    )


def report(settings: Settings, protocol: str, split: Split, scored: pl.DataFrame) -> dict[str, Any]:
    truth = split.test.select("user_id", "item_id").unique()
    test_users = truth["user_id"].unique()
    top_k = metrics.top_k_from_scores(
        scored.filter(pl.col("user_id").is_in(test_users.implode())), "score", K
    )
    baseline_top_k = popularity_top_k(split.train, test_users, K)
    keys = ("map_at_10", "ndcg_at_10", "precision_at_10", "recall_at_10")
    model = metrics.ranking_metrics(top_k, truth, K)
    baseline = metrics.ranking_metrics(baseline_top_k, truth, K)
    candidate_recall = truth.join(
        scored.select("user_id", "item_id"), on=["user_id", "item_id"], how="semi"
    ).height
    return {
        "protocol": protocol,
        "seed": settings.seed,
        "users": int(model["users"]),
        "train_ratings": split.train.height,
        "test_ratings": split.test.height,
        **{key: model[key] for key in keys},
        "mrr": model["mrr"],
        "candidate_recall": candidate_recall / max(truth.height, 1),
        "baseline": {"name": "most popular", **{key: baseline[key] for key in keys}},
        "_top_k": top_k,
        "_test": truth.sort("user_id", "item_id"),
    }


def write_outputs(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    public = {key: value for key, value in result.items() if not key.startswith("_")}
    (out / "metrics.json").write_text(json.dumps(public, indent=2) + "\n")
    result["_test"].write_csv(out / "test.csv")
    result["_top_k"].sort("user_id", "rank").write_csv(out / "topk.csv")
