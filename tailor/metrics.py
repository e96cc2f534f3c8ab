"""Offline metrics with explicit column contracts (the conventions of Microsoft Recommenders).

Ranking metrics take `top_k` (user_id, item_id, rank starting at 1) and `truth` (user_id, item_id: the
relevant items) and average over users with at least one relevant item; binary relevance.
"""

from __future__ import annotations

import numpy as np
import polars as pl

USER, ITEM, RANK = "user_id", "item_id", "rank"


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pl.Series(np.asarray(scores, dtype=np.float64)).rank("average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_points(labels: np.ndarray, scores: np.ndarray, points: int = 51) -> dict[str, list[float]]:
    """The ROC curve (false and true positive rates at every distinct score, from the highest down),
    thinned to about `points` points for plots; ends at (0, 0) and (1, 1)."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return {"fpr": [], "tpr": []}
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], labels[order]
    # one point per distinct score: the last position of each run of ties
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tpr = np.r_[0.0, np.cumsum(hits)[last_of_run] / n_pos]
    fpr = np.r_[0.0, np.cumsum(~hits)[last_of_run] / n_neg]
    keep = np.unique(np.round(np.linspace(0, tpr.size - 1, min(points, tpr.size))).astype(int))
    return {"fpr": fpr[keep].round(6).tolist(), "tpr": tpr[keep].round(6).tolist()}


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (scikit-learn's average precision). Tied scores form one
    threshold, so a model that scores everyone alike gets the positive rate, whatever the rows' order."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return float("nan")
    return float(average_precision_score(labels, np.asarray(scores, dtype=np.float64)))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-15) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(
        np.mean((np.asarray(probabilities, dtype=np.float64) - np.asarray(labels, dtype=np.float64)) ** 2)
    )


def top_k_from_scores(frame: pl.DataFrame, score_column: str, k: int) -> pl.DataFrame:
    """The k best items per user by score; ties broken by item id so the result is deterministic."""
    return (
        frame.sort([USER, score_column, ITEM], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over(USER).alias(RANK))
        .filter(pl.col(RANK) <= k)
        .select(USER, ITEM, RANK)
    )


def ranking_metrics(top_k: pl.DataFrame, truth: pl.DataFrame, k: int) -> dict[str, float]:
    """MAP@k, NDCG@k, precision@k, recall@k and MRR, averaged over users with relevant items."""
    truth = truth.select(USER, ITEM).unique()
    n_relevant = truth.group_by(USER).agg(pl.len().alias("n_relevant"))
    hits = (
        top_k.filter(pl.col(RANK) <= k)
        .join(truth.with_columns(pl.lit(True).alias("is_hit")), on=[USER, ITEM], how="left")
        .with_columns(pl.col("is_hit").fill_null(False))
        .sort(USER, RANK)
        .with_columns(pl.col("is_hit").cast(pl.Int64).cum_sum().over(USER).alias("hits_so_far"))
    )
    per_user = hits.group_by(USER).agg(
        pl.col("is_hit").sum().alias("n_hits"),
        (pl.col("is_hit").cast(pl.Float64) / (pl.col(RANK) + 1).log(2)).sum().alias("dcg"),
        (pl.when(pl.col("is_hit")).then(pl.col("hits_so_far") / pl.col(RANK)).otherwise(0.0))
        .sum()
        .alias("ap_sum"),
        pl.col(RANK).filter(pl.col("is_hit")).min().alias("first_hit_rank"),
    )
    # sorted: group_by order varies between runs, and float means must not
    users = (
        n_relevant.join(per_user, on=USER, how="left")
        .with_columns(
            pl.col("n_hits").fill_null(0), pl.col("dcg").fill_null(0.0), pl.col("ap_sum").fill_null(0.0)
        )
        .sort(USER)
    )
    ideal_discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal_discounts[np.minimum(users["n_relevant"].to_numpy(), k)]
    n_rel = users["n_relevant"].to_numpy().astype(np.float64)
    n_hits = users["n_hits"].to_numpy().astype(np.float64)
    first = users["first_hit_rank"].to_numpy().astype(np.float64)
    if users.height == 0:
        return {f"{name}_at_{k}": float("nan") for name in ("map", "ndcg", "precision", "recall")} | {
            "mrr": float("nan")
        }
    return {
        f"map_at_{k}": float(np.mean(users["ap_sum"].to_numpy() / np.minimum(n_rel, k))),
        f"ndcg_at_{k}": float(np.mean(users["dcg"].to_numpy() / idcg)),
        f"precision_at_{k}": float(np.mean(n_hits / k)),
        f"recall_at_{k}": float(np.mean(n_hits / n_rel)),
        "mrr": float(np.mean(np.where(np.isnan(first), 0.0, 1.0 / np.nan_to_num(first, nan=1.0)))),
        "users": float(users.height),
    }
