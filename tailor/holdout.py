"""Offline evaluation of any configured company on its own last days: hold them out, run the nightly
pipeline on the rest, and measure what it would have published beside the obvious baselines.

- The holdout is the last `holdout_days` days of purchases; the run's date is its first day, so every
  feature, model and recommendation sees only what came before (the nightly run's own point-in-time rules).
- The nightly pipeline runs as a nightly run does, up to the published recommendations: extract, erasure,
  the data-quality gate, features, training with its gates, scoring.
- Two protocols, both counting only purchases of items the run could recommend (live and not excluded by
  `recommendations.exclude`) by customers with a purchase before the holdout:
  `all_purchases` (every item bought in the holdout), and `new_items` (only items the customer had never
  bought before; Tailor's and popularity's lists without what the customer bought).
- Baselines are computed here from the purchase history, independently of the pipeline's own: popularity
  (most buyers in the last POPULARITY_DAYS days), buy-again (the customer's items by the number of days they
  bought them, the latest first), and buy-again backfilled with popularity; for new items, popularity
  without what the customer bought.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from tailor import metrics
from tailor.config import Settings, load_settings
from tailor.schema import TABLES
from tailor.tasks.extract import extract_sources, quote_identifier
from tailor.tasks.features import build_features, build_staging_models
from tailor.tasks.privacy import erase_deleted_users, register_key
from tailor.tasks.repeats import load as load_repeats
from tailor.tasks.score import score_users
from tailor.tasks.train import train_models
from tailor.tasks.validate import validate_features, validate_sources
from tailor.warehouse import connect, run_context

log = logging.getLogger(__name__)

K = 10
POPULARITY_DAYS = 28
FAR_FUTURE = date(2100, 1, 1)  # a run date after every file: the whole history loads
ALL_PURCHASES, NEW_ITEMS = "all_purchases", "new_items"
METRIC_KEYS = ("ndcg_at_10", "map_at_10", "precision_at_10", "recall_at_10", "mrr")
# a customer's list is their recommendations; scores are made comparable across methods by rank
PURCHASE_COLUMNS = ("user_id", "item_id", "occurred_at")


def work_settings(
    config_path: Path, work_dir: Path, name: str, sources: dict[str, Any] | None = None
) -> Settings:
    """The company's settings with the warehouse, run folders and publish target moved under work_dir
    (and, for the night, its sources replaced by the data before the holdout)."""
    folder = work_dir / name
    return load_settings(
        config_path,
        {
            "warehouse.path": str(folder / "tailor.duckdb"),
            "warehouse.runs_dir": str(folder / "runs"),
            "publish.target": "file://" + str(folder / "published"),
        }
        | ({"sources": sources} if sources is not None else {}),
    )


def load_everything(settings: Settings) -> None:
    """Every row of the company's sources through its own mappings, into the work warehouse."""
    settings.resolve(settings.warehouse.path).unlink(missing_ok=True)
    extract_sources.fn(settings, run_context(settings, FAR_FUTURE))


def all_purchases(settings: Settings) -> pl.DataFrame:
    """Every purchase in the company's data, staged as a run would (deduplicated, returns netted out)."""
    everything = run_context(settings, FAR_FUTURE)
    with connect(settings) as con:
        build_staging_models(con, everything, settings)
        return con.sql(
            "select user_id, item_id, occurred_at from staging.stg_interactions where event_type = 'purchase'"
        ).pl()


def data_before(settings: Settings, cutoff: datetime, folder: Path) -> dict[str, Any]:
    """The company's canonical tables as they stood at the cutoff, one undated snapshot file each (rows
    whose own time is later left out, outcomes after it blanked), and the sources that read them: the
    night sees the rest of the data as if it had been delivered that day."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = {}
    with connect(settings) as con:
        for name in settings.sources:
            table = TABLES[name]
            columns = []
            for column in table.columns:
                ref = quote_identifier(column.name)
                # an outcome (opened, converted) after the cutoff had not happened yet
                later = column.is_event_time and column.name != table.event_time_columns[0]
                columns.append(f"case when {ref} < $cutoff then {ref} end as {ref}" if later else ref)
            first_time = table.event_time_columns[0] if table.event_time_columns else None
            since = f"where {quote_identifier(first_time)} < $cutoff" if first_time else ""
            path = folder / f"{name}.parquet"
            # names come from the schema; the cutoff is bound
            rows = con.sql(
                f"select {', '.join(columns)} from raw.{name} {since}",
                params={"cutoff": cutoff} if first_time else None,
            ).to_arrow_table()
            pq.write_table(rows, path)
            sources[name] = {"path": str(path), "format": "parquet"}
    return sources


def holdout_start(purchases: pl.DataFrame, holdout_days: int) -> date:
    newest = purchases["occurred_at"].max()
    if newest is None:
        raise ValueError("the company's data holds no purchase: nothing to evaluate")
    return newest.date() - timedelta(days=holdout_days - 1)


def run_night(settings: Settings, run_date: date) -> dict[str, Any]:
    """The nightly pipeline up to the recommendations, for one date, as a nightly run does it."""
    settings.resolve(settings.warehouse.path).unlink(missing_ok=True)
    ctx = run_context(settings, run_date)
    loads = extract_sources.fn(settings, ctx)
    erase_deleted_users.fn(settings, ctx)
    validate_sources.fn(settings, ctx, loads)
    build_features.fn(settings, ctx)
    validate_features.fn(settings, ctx)
    models = train_models.fn(settings, ctx)
    score_users(settings, ctx, models)
    with connect(settings) as con:
        recommendations = con.sql(
            "select user_id, item_id, rank, served_by from marts.recommendations order by user_id, rank"
        ).pl()
        scored = con.sql(
            "select user_id, item_id, coalesce(discovery_score, score) as score from model.scored_candidates "
            "where not is_audience_only"
        ).pl()
        recommendable = con.sql(
            "select item_id from features.item_features where cutoff = $cutoff and is_live",
            params={"cutoff": ctx.cutoff},
        ).pl()
        repeats = load_repeats(con, run_date)
    return {
        "cutoff": ctx.cutoff,
        "recommendations": recommendations,
        "scored": scored,
        "recommendable": recommendable["item_id"],
        "repeats": repeats,
        "models": models,
    }


def popularity(history: pl.DataFrame, cutoff: datetime, recommendable: pl.Series) -> pl.DataFrame:
    """Items by distinct buyers in the POPULARITY_DAYS before the cutoff, most first (item_id, score)."""
    recent = history.filter(pl.col("occurred_at") >= cutoff - timedelta(days=POPULARITY_DAYS))
    return (
        recent.filter(pl.col("item_id").is_in(recommendable.implode()))
        .group_by("item_id")
        .agg(pl.col("user_id").n_unique().cast(pl.Float64).alias("score"))
        .sort(["score", "item_id"], descending=[True, False])
    )


def buy_again_scores(history: pl.DataFrame, recommendable: pl.Series) -> pl.DataFrame:
    """Each customer's items by the days they bought them, then by how lately (user_id, item_id, score)."""
    days = history.with_columns(pl.col("occurred_at").dt.date().alias("day"))
    per_item = (
        days.filter(pl.col("item_id").is_in(recommendable.implode()))
        .group_by("user_id", "item_id")
        .agg(pl.col("day").n_unique().alias("n_days"), pl.col("occurred_at").max().alias("last"))
    )
    # whole days first; the latest purchase breaks ties (a fraction below one day's weight)
    newest = per_item["last"].max()
    return per_item.with_columns(
        (
            pl.col("n_days").cast(pl.Float64)
            + 0.5 / (2.0 + (newest - pl.col("last")).dt.total_seconds() / 86400.0)  # type: ignore[operator]
        ).alias("score")
    ).select("user_id", "item_id", "score")


def popularity_lists(
    users: pl.Series, popular: pl.DataFrame, excluded: pl.DataFrame | None, k: int
) -> pl.DataFrame:
    """Per user the most popular items, without the user's `excluded` pairs (user_id, item_id, score)."""
    longest = 0 if excluded is None else int(excluded.group_by("user_id").len()["len"].max() or 0)
    head = popular.head(k + longest)
    pairs = pl.DataFrame({"user_id": users.unique().sort()}).join(head, how="cross")
    if excluded is not None:
        pairs = pairs.join(excluded.select("user_id", "item_id"), on=["user_id", "item_id"], how="anti")
    return pairs


def with_backfill(first: pl.DataFrame, backfill: pl.DataFrame) -> pl.DataFrame:
    """`first`'s items ahead of every backfill item (user_id, item_id, score)."""
    lifted = first.with_columns(pl.col("score") + 1e9)
    rest = backfill.join(first.select("user_id", "item_id"), on=["user_id", "item_id"], how="anti")
    return pl.concat([lifted, rest.select(lifted.columns)])


def top_k(frame: pl.DataFrame, users: pl.Series) -> pl.DataFrame:
    return metrics.top_k_from_scores(frame.filter(pl.col("user_id").is_in(users.implode())), "score", K)


def measure(top: pl.DataFrame, truth: pl.DataFrame) -> dict[str, float]:
    result = metrics.ranking_metrics(top, truth, K)
    hit_users = top.join(truth, on=["user_id", "item_id"], how="semi")["user_id"].n_unique()
    return {key: result[key] for key in METRIC_KEYS} | {"hit_rate_at_10": hit_users / max(result["users"], 1)}


def evaluate_company(config_path: Path, holdout_days: int, work_dir: Path) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    everything = work_settings(config_path, work_dir, "everything")
    register_key(everything)  # the night honours deletion requests: without the key, say so before loading
    load_everything(everything)
    purchases = all_purchases(everything)
    start = holdout_start(purchases, holdout_days)
    sources = data_before(everything, run_context(everything, start).cutoff, work_dir / "before-holdout")
    night = run_night(work_settings(config_path, work_dir, "night", sources), start)
    cutoff = night["cutoff"].replace(tzinfo=None)
    end = cutoff + timedelta(days=holdout_days)
    recommendable = night["recommendable"]
    history = purchases.filter(pl.col("occurred_at") < cutoff)
    bought = history.select("user_id", "item_id").unique()
    future = purchases.filter((pl.col("occurred_at") >= cutoff) & (pl.col("occurred_at") < end))
    truth_all = (
        future.filter(
            pl.col("item_id").is_in(recommendable.implode())
            & pl.col("user_id").is_in(bought["user_id"].implode())
        )
        .select("user_id", "item_id")
        .unique()
        .sort("user_id", "item_id")
    )
    truth_new = truth_all.join(bought, on=["user_id", "item_id"], how="anti")
    users_all, users_new = truth_all["user_id"].unique(), truth_new["user_id"].unique()

    popular = popularity(history, cutoff, recommendable)
    buy_again = buy_again_scores(history, recommendable)
    tailor_all = night["recommendations"].with_columns((-pl.col("rank").cast(pl.Float64)).alias("score"))
    lists = {
        ALL_PURCHASES: {
            "tailor": top_k(tailor_all, users_all),
            "popularity": top_k(popularity_lists(users_all, popular, None, K), users_all),
            "buy_again": top_k(buy_again, users_all),
            "buy_again_popularity": top_k(
                with_backfill(buy_again, popularity_lists(users_all, popular, None, K)), users_all
            ),
        },
        NEW_ITEMS: {
            # what Tailor's serving order ranks first among items the customer never bought; a customer
            # without scored candidates gets Tailor's popular fallback, also without what they bought
            "tailor": top_k(
                new_items_order(night, bought, popularity_lists(users_new, popular, bought, K)), users_new
            ),
            "popularity_not_bought": top_k(popularity_lists(users_new, popular, bought, K), users_new),
        },
    }
    truths = {ALL_PURCHASES: truth_all, NEW_ITEMS: truth_new}
    protocols = {}
    for protocol, methods in lists.items():
        measured = {name: measure(top, truths[protocol]) for name, top in methods.items()}
        baselines = {name: value for name, value in measured.items() if name != "tailor"}
        best = max(baselines, key=lambda name: baselines[name]["ndcg_at_10"])
        protocols[protocol] = {
            "users": truths[protocol]["user_id"].n_unique(),
            "relevant_pairs": truths[protocol].height,
            "methods": measured,
            "best_baseline": best,
            "tailor_over_best_baseline": measured["tailor"]["ndcg_at_10"]
            / max(baselines[best]["ndcg_at_10"], 1e-12),
        }
    served = night["recommendations"].filter(pl.col("user_id").is_in(users_all.implode()))
    return {
        "config": str(config_path),
        "k": K,
        "holdout": {"days": holdout_days, "start": cutoff.isoformat(), "end": end.isoformat()},
        "history_purchases": history.height,
        "holdout_purchases": future.height,
        "popularity_days": POPULARITY_DAYS,
        "repeat_purchases": night["repeats"].reason,
        "served_by": dict(served.group_by("served_by").len().sort("served_by").iter_rows()),
        # each model against its baselines on the run's own holdout: the gate that chose what served
        "models": {
            name: gate_figures(model)
            for name, model in sorted(night["models"].items())
            if name in ("ranking", "discovery", "propensity", "engagement")
        },
        "protocols": protocols,
        "_truth": truths,
        "_lists": lists,
    }


def gate_figures(model: dict[str, Any]) -> dict[str, Any]:
    scores = model["metrics"]
    metric = "ndcg_at_10" if "ndcg_at_10" in scores else "roc_auc"
    return {
        "decision": model["decision"],
        "served_by": model.get("served_by"),
        "metric": metric,
        "value": scores[metric],
        "baselines": {name: values[metric] for name, values in (scores.get("baselines") or {}).items()},
    }


def new_items_order(night: dict[str, Any], bought: pl.DataFrame, fallback: pl.DataFrame) -> pl.DataFrame:
    """Tailor's order of the items new to each customer: its discovery ranker's where one serves (it
    picks the new items of the published lists), else its ranker's."""
    scored = night["scored"].join(bought, on=["user_id", "item_id"], how="anti")
    rest = fallback.join(scored.select("user_id").unique(), on="user_id", how="anti")
    return pl.concat(
        [scored.select("user_id", "item_id", "score"), rest.select("user_id", "item_id", "score")]
    )


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """metrics.json, and test.csv and topk.csv so anyone can recompute every figure."""
    out.mkdir(parents=True, exist_ok=True)
    public = {key: value for key, value in result.items() if not key.startswith("_")}
    (out / "metrics.json").write_text(json.dumps(public, indent=2, default=str) + "\n")
    pl.concat(
        [
            truth.with_columns(pl.lit(protocol).alias("protocol"))
            for protocol, truth in result["_truth"].items()
        ]
    ).select("protocol", "user_id", "item_id").write_csv(out / "test.csv")
    pl.concat(
        [
            top.with_columns(pl.lit(protocol).alias("protocol"), pl.lit(method).alias("method"))
            for protocol, methods in result["_lists"].items()
            for method, top in methods.items()
        ]
    ).select("protocol", "method", "user_id", "rank", "item_id").sort(
        "protocol", "method", "user_id", "rank"
    ).write_csv(out / "topk.csv")


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"holdout {result['holdout']['start'][:10]} to {result['holdout']['end'][:10]} "
        f"({result['holdout']['days']} days); repeat purchases {result['repeat_purchases']}",
        f"served: {', '.join(f'{name} {n:,} rows' for name, n in result['served_by'].items())}",
    ]
    for protocol, info in result["protocols"].items():
        lines.append(f"\n{protocol}: {info['users']:,} customers, {info['relevant_pairs']:,} purchases")
        lines.append(f"  {'method':<24}{'NDCG@10':>9}{'hit@10':>9}{'MAP@10':>9}{'recall@10':>11}")
        for name, value in info["methods"].items():
            lines.append(
                f"  {name:<24}{value['ndcg_at_10']:>9.4f}{value['hit_rate_at_10']:>9.3f}"
                f"{value['map_at_10']:>9.4f}{value['recall_at_10']:>11.4f}"
            )
        lines.append(
            f"  tailor / best baseline ({info['best_baseline']}): {info['tailor_over_best_baseline']:.3f}x"
        )
    return "\n".join(lines)
