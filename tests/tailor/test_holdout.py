from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from tailor import metrics
from tailor.holdout import buy_again_scores, popularity, popularity_lists, top_k, with_backfill
from tests.conftest import REPO

ONLINE_RETAIL = REPO.parent / "shared" / "data" / "online-retail-ii" / "online_retail_II.parquet"


def purchases(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(user, item, datetime.fromisoformat(at)) for user, item, at in rows],
        schema=["user_id", "item_id", "occurred_at"],
        orient="row",
    )


HISTORY = purchases([
    ("u1", "tea", "2026-11-01"), ("u1", "tea", "2026-11-08"), ("u1", "tea", "2026-11-08T12:00"),
    ("u1", "jam", "2026-11-09"), ("u1", "pen", "2026-10-01"),
    ("u2", "jam", "2026-11-10"), ("u3", "jam", "2026-11-11"), ("u3", "cup", "2026-11-12"),
])  # fmt: skip
ALL_ITEMS = pl.Series(["tea", "jam", "pen", "cup"])


def test_buy_again_orders_by_days_bought_then_by_how_lately() -> None:
    scores = buy_again_scores(HISTORY, ALL_ITEMS)
    u1 = top_k(scores, pl.Series(["u1"]))
    # tea on 2 days (twice on one of them) beats jam and pen on 1; jam (Nov 9) beats pen (Oct 1)
    assert u1["item_id"].to_list() == ["tea", "jam", "pen"]
    # an item that may not be recommended is never a buy-again pick
    assert "pen" not in buy_again_scores(HISTORY, pl.Series(["tea", "jam"]))["item_id"].to_list()


def test_popularity_counts_buyers_in_its_window_and_skips_what_a_user_bought() -> None:
    popular = popularity(HISTORY, datetime(2026, 11, 20), ALL_ITEMS)
    # pen was bought 50 days before the cutoff: outside the 28-day window
    assert popular["item_id"].to_list() == ["jam", "cup", "tea"]
    bought = HISTORY.select("user_id", "item_id").unique()
    lists = top_k(popularity_lists(pl.Series(["u1", "u3"]), popular, bought, 10), pl.Series(["u1", "u3"]))
    assert lists.filter(pl.col("user_id") == "u1")["item_id"].to_list() == ["cup"]
    assert lists.filter(pl.col("user_id") == "u3")["item_id"].to_list() == ["tea"]


def test_buy_again_backfilled_with_popularity_keeps_own_items_first_without_repeats() -> None:
    users = pl.Series(["u2"])
    popular = popularity(HISTORY, datetime(2026, 11, 20), ALL_ITEMS)
    merged = top_k(with_backfill(buy_again_scores(HISTORY, ALL_ITEMS), popularity_lists(users, popular, None, 10)), users)
    assert merged["item_id"].to_list() == ["jam", "cup", "tea"]


@pytest.mark.integration
@pytest.mark.skipif(not ONLINE_RETAIL.exists(), reason="needs ../shared/data/online-retail-ii (not in CI)")
def test_online_retail_beats_its_baselines_by_a_tenth_on_both_protocols(tmp_path: Path) -> None:
    from tailor.cli import main

    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    out = tmp_path / "out"
    code = main(["evaluate", "--config", str(REPO / "examples" / "online-retail" / "tailor.yaml"),
                 "--holdout-days", "14", "--work-dir", str(tmp_path / "work"), "--out", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["holdout"]["start"].startswith("2011-11-26")
    for protocol in ("all_purchases", "new_items"):
        info = result["protocols"][protocol]
        assert info["tailor_over_best_baseline"] >= 1.10, (protocol, info)
    assert result["protocols"]["all_purchases"]["best_baseline"] in ("buy_again", "buy_again_popularity")
    # the published files are enough to recompute every figure
    truth = pl.read_csv(out / "test.csv", schema_overrides={"user_id": pl.Utf8, "item_id": pl.Utf8})
    lists = pl.read_csv(out / "topk.csv", schema_overrides={"user_id": pl.Utf8, "item_id": pl.Utf8})
    for protocol, info in result["protocols"].items():
        for method, figures in info["methods"].items():
            top = lists.filter((pl.col("protocol") == protocol) & (pl.col("method") == method))
            recomputed = metrics.ranking_metrics(
                top.select("user_id", "item_id", "rank"), truth.filter(pl.col("protocol") == protocol), 10
            )
            assert recomputed["ndcg_at_10"] == pytest.approx(figures["ndcg_at_10"]), (protocol, method)
