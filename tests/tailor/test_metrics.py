from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from tailor import metrics


def frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "item_id", "rank"], orient="row")


def truth(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "item_id"], orient="row")


def test_truth_ranked_against_itself_is_perfect() -> None:
    top = frame([("u1", "a", 1), ("u1", "b", 2), ("u2", "c", 1)])
    result = metrics.ranking_metrics(top, truth([("u1", "a"), ("u1", "b"), ("u2", "c")]), k=2)
    assert result["ndcg_at_2"] == pytest.approx(1.0)
    assert result["map_at_2"] == pytest.approx(1.0)
    assert result["recall_at_2"] == pytest.approx(1.0)
    assert result["mrr"] == pytest.approx(1.0)
    assert result["precision_at_2"] == pytest.approx((2 / 2 + 1 / 2) / 2)


def test_no_hit_scores_zero() -> None:
    top = frame([("u1", "x", 1), ("u1", "y", 2)])
    result = metrics.ranking_metrics(top, truth([("u1", "a")]), k=2)
    assert result["ndcg_at_2"] == 0.0 and result["precision_at_2"] == 0.0 and result["mrr"] == 0.0


def test_hand_computed_values() -> None:
    # u1: relevant {a, c}; ranked x, a, c -> hits at 2 and 3
    top = frame([("u1", "x", 1), ("u1", "a", 2), ("u1", "c", 3)])
    result = metrics.ranking_metrics(top, truth([("u1", "a"), ("u1", "c")]), k=3)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert result["ndcg_at_3"] == pytest.approx(dcg / idcg)
    assert result["map_at_3"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["precision_at_3"] == pytest.approx(2 / 3)
    assert result["mrr"] == pytest.approx(1 / 2)


def test_users_without_relevant_items_are_not_averaged() -> None:
    top = frame([("u1", "a", 1), ("u2", "b", 1)])
    result = metrics.ranking_metrics(top, truth([("u1", "a")]), k=1)
    assert result["users"] == 1 and result["precision_at_1"] == 1.0


def test_top_k_breaks_ties_by_item_id() -> None:
    scored = pl.DataFrame({"user_id": ["u", "u", "u"], "item_id": ["c", "b", "a"], "s": [1.0, 2.0, 2.0]})
    top = metrics.top_k_from_scores(scored, "s", 2)
    assert top["item_id"].to_list() == ["a", "b"] and top["rank"].to_list() == [1, 2]


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = rng.random(300) + labels * 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size
    )
    assert metrics.roc_auc(labels, scores) == pytest.approx(pairwise)
    assert metrics.roc_auc(labels, labels.astype(float)) == pytest.approx(1.0)


def test_probability_metrics() -> None:
    labels = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.1, 0.6, 0.4])
    assert metrics.brier_score(labels, p) == pytest.approx((0.01 + 0.01 + 0.16 + 0.16) / 4)
    assert metrics.log_loss(labels, p) == pytest.approx(-np.mean(np.log([0.9, 0.9, 0.6, 0.6])))
    assert metrics.average_precision(labels, p) == pytest.approx(1.0)
    assert metrics.average_precision(np.array([0, 1]), np.array([0.9, 0.1])) == pytest.approx(0.5)


def test_average_precision_is_tie_aware_like_sklearn() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.15
    constant = np.full(400, 0.2)
    # a constant model: the positive rate, in any row order (the row-order version gave 1.0 or 0.08)
    assert metrics.average_precision(labels, constant) == pytest.approx(labels.mean())
    order = np.argsort(~labels)
    assert metrics.average_precision(labels[order], constant) == pytest.approx(labels.mean())
    tied = np.round(rng.random(400) + 0.3 * labels, 1)
    assert metrics.average_precision(labels, tied) == pytest.approx(average_precision_score(labels, tied))


def test_roc_points_follow_sklearns_curve_and_enclose_the_auc() -> None:
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(4)
    labels = rng.random(3000) < 0.2
    scores = np.round(rng.random(3000) + 0.3 * labels, 2)  # rounded: many ties
    points = metrics.roc_points(labels, scores, points=10_000)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert points["fpr"] == pytest.approx(fpr.tolist(), abs=1e-6) and points["tpr"] == pytest.approx(
        tpr.tolist(), abs=1e-6
    )
    assert np.trapezoid(points["tpr"], points["fpr"]) == pytest.approx(
        metrics.roc_auc(labels, scores), abs=1e-6
    )
    thin = metrics.roc_points(labels, scores, points=51)
    assert len(thin["fpr"]) <= 51 and thin["fpr"][0] == 0 and thin["tpr"][-1] == 1
