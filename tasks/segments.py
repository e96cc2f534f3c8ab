"""Segments: RFM segments from configured rules, behavioural clusters learned from the user features, a
profile of every segment in words, and the item and category audiences (batch segments).

Clustering: k-means on standardized, log-scaled behaviour; the number of clusters is the one in the
configured range with the best silhouette score on a seeded sample. Each cluster is then described by the
features whose mean sets it furthest apart from everyone's, in words a marketer reads.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from tailor import human
from tailor.config import RfmRule, Settings
from tailor.progress import reported
from tailor.sql import materialize, query
from tailor.tasks.score import replace_table
from tailor.warehouse import RunContext, connect

# feature -> (transform, words when above average, words when below, what it measures, unit of its mean).
# The units say how a mean reads to people (format_value): `per_30_days` shows a daily rate over 30 days,
# since a rate of 0.0123 orders a day says less than 0.4 orders in 30 days.
CLUSTER_FEATURES: dict[str, tuple[str, str, str, str, str]] = {
    "events_per_day_90d": ("log", "frequent visitors", "occasional visitors", "events in 30 days", "per_30_days"),
    "purchases_per_day_90d": ("log", "frequent buyers", "rare buyers", "orders in 30 days", "per_30_days"),
    "revenue_cents_90d": ("log", "big spenders", "small spenders", "revenue in 90 days", "cents"),
    "n_distinct_items_30d": ("log", "explorers", "narrow browsers", "distinct items in 30 days", "count"),
    "days_since_last_event": ("cap90", "drifting away", "recently active", "days since the last visit", "days"),
    "top_category_share_90d": ("none", "single-category fans", "all-rounders", "share of the top category", "share"),
    "n_campaign_clicks_90d": ("log", "campaign clickers", "campaign ignorers", "campaign clicks in 90 days", "count"),
}  # fmt: skip
SILHOUETTE_SAMPLE = 5_000
DESCRIBED_FEATURES = 3
# below this many users a clustering says nothing: everyone is one cluster
MIN_USERS_TO_CLUSTER = 50


def cluster_matrix(frame: pl.DataFrame) -> np.ndarray:
    """Each cluster feature on a scale where distances mean something: logs for counts, caps for recency."""
    columns = []
    for name, (transform, *_) in CLUSTER_FEATURES.items():
        values = frame[name].cast(pl.Float64).fill_null(90.0 if transform == "cap90" else 0.0).to_numpy()
        if transform == "log":
            values = np.log1p(np.maximum(values, 0))
        elif transform == "cap90":
            values = np.minimum(values, 90.0)
        columns.append(values)
    return np.column_stack(columns)


def standardize(matrix: np.ndarray) -> np.ndarray:
    if not len(matrix):
        return matrix
    mean, std = matrix.mean(axis=0), matrix.std(axis=0)
    return (matrix - mean) / np.where(std > 0, std, 1.0)


def choose_clusters(scaled: np.ndarray, settings: Settings) -> tuple[KMeans, dict[int, float]]:
    """Fit k-means for every k in the configured range on a seeded sample; keep the best silhouette."""
    config = settings.segments
    rng = np.random.default_rng(settings.seed)
    fit_rows = scaled[rng.permutation(len(scaled))[: config.cluster_sample_users]]
    score_rows = fit_rows[: min(SILHOUETTE_SAMPLE, len(fit_rows))]
    scores: dict[int, float] = {}
    best: KMeans | None = None
    for k in range(config.clusters_min, min(config.clusters_max, len(score_rows) - 1) + 1):
        model = KMeans(n_clusters=k, n_init=3, random_state=settings.seed).fit(fit_rows)
        scores[k] = float(silhouette_score(score_rows, model.predict(score_rows), random_state=settings.seed))
        if best is None or scores[k] > scores[best.n_clusters]:
            best = model
    if best is None:
        raise ValueError("segments: too few users to try the configured numbers of clusters")
    return best, scores


def format_value(value: float, unit: str) -> str:
    """A mean as people read it, in the data's units and never in scientific notation: cents as money
    with two decimals, counts and days whole (one decimal below 10, where rounding would hide the
    difference between 0.3 and 0.8), shares as percentages."""
    if not np.isfinite(value):
        return "-"
    if unit == "cents":
        return human.money(value / 100)
    if unit == "share":
        return human.share(value, digits=0)
    if unit == "per_30_days":
        value *= 30
    if abs(value) >= 10:
        return f"{value:,.0f}"
    return f"{value:.1f}".removesuffix(".0")


def describe_cluster(z_means: np.ndarray, raw_means: np.ndarray, overall: np.ndarray) -> tuple[str, str]:
    """(a short name, a sentence) from the features that set the cluster furthest apart."""
    names = list(CLUSTER_FEATURES)
    order = np.argsort(-np.abs(z_means), kind="stable")[:DESCRIBED_FEATURES]
    phrases, words = [], []
    for index in order:
        _, above, below, measure, unit = CLUSTER_FEATURES[names[index]]
        is_above = z_means[index] > 0
        words.append(above if is_above else below)
        strength = "far " if abs(z_means[index]) >= 1 else ""
        direction = "more" if is_above else "fewer"
        if names[index] in ("top_category_share_90d", "revenue_cents_90d", "days_since_last_event"):
            direction = "higher" if is_above else "lower"
        cluster_mean, everyone = format_value(raw_means[index], unit), format_value(overall[index], unit)
        phrases.append(f"{strength}{direction} {measure} than average ({cluster_mean} vs {everyone})")
    return ", ".join(words[:2]), "; ".join(phrases).capitalize() + "."


def build_clusters(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Cluster every user who allows profiling; store model.user_clusters; return the cluster profiles."""
    users = query(con, "marts/cluster_inputs", {"cutoff": ctx.cutoff}).pl()
    raw = cluster_matrix(users) if users.height else np.empty((0, len(CLUSTER_FEATURES)))
    scaled = standardize(raw)
    if users.height < MIN_USERS_TO_CLUSTER:
        labels, scores = np.zeros(users.height, dtype=np.int64), {}
    else:
        model, scores = choose_clusters(scaled, settings)
        labels = model.predict(scaled)
    profiles = cluster_profiles(raw, scaled, labels)
    names = dict(zip(profiles["segment_id"], profiles["segment_name"], strict=True))
    clusters = pl.DataFrame(
        {
            "user_id": users["user_id"],
            "cluster_id": [f"cluster_{label}" for label in labels],
        },
        schema={"user_id": pl.Utf8, "cluster_id": pl.Utf8},
    ).with_columns(pl.col("cluster_id").replace_strict(names, default=None).alias("cluster_name"))
    replace_table(con, "model.user_clusters", clusters.to_arrow())
    chosen = len(set(labels.tolist()))
    return profiles, {"clusters": chosen, "silhouette_by_k": scores}


def cluster_profiles(raw: np.ndarray, scaled: np.ndarray, labels: np.ndarray) -> pl.DataFrame:
    overall_raw = raw_means(raw)
    rows, used_names = [], set()
    for label in sorted(set(labels.tolist())):
        members = labels == label
        name, description = describe_cluster(
            scaled[members].mean(axis=0), raw_means(raw[members]), overall_raw
        )
        if name in used_names:  # two clusters can share their two strongest traits
            name = f"{name} ({label})"
        used_names.add(name)
        rows.append(
            {
                "segment_type": "cluster",
                "segment_id": f"cluster_{label}",
                "segment_name": name,
                "users": int(members.sum()),
                "description": description,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "segment_type": pl.Utf8,
            "segment_id": pl.Utf8,
            "segment_name": pl.Utf8,
            "users": pl.Int64,
            "description": pl.Utf8,
        },
    )


def raw_means(raw: np.ndarray) -> np.ndarray:
    """Means on the original scale (counts, not their logs) so the words quote familiar numbers."""
    values = raw.copy()
    for index, (transform, *_) in enumerate(CLUSTER_FEATURES.values()):
        if transform == "log":
            values[:, index] = np.expm1(values[:, index])
    return values.mean(axis=0) if len(values) else np.zeros(raw.shape[1])


def rule_description(rule: RfmRule) -> str:
    """The rule in a marketer's words, its thresholds as configured (to six significant digits) in plain
    grouped digits: 2,600 days, and 1,000,000 days where `:g` wrote 1e+06."""
    parts = []
    if rule.max_days_since_signup is not None:
        parts.append(f"signed up within {human.setting(rule.max_days_since_signup)} days")
    if rule.max_days_since_purchase is not None:
        parts.append(f"bought within {human.setting(rule.max_days_since_purchase)} days")
    if rule.min_days_since_purchase is not None:
        parts.append(f"last bought {human.setting(rule.min_days_since_purchase)} or more days ago")
    if rule.max_days_since_activity is not None:
        parts.append(f"were active within {human.setting(rule.max_days_since_activity)} days")
    if rule.min_purchases_90d is not None:
        # purchases are orders: a basket of many lines counts once
        parts.append(f"{human.setting(rule.min_purchases_90d)} or more orders in 90 days")
    return ("Users who " + " and ".join(parts) if parts else "Everyone else") + " (first matching rule wins)."


def rule_params(settings: Settings) -> dict[str, list[Any]]:
    rules = settings.segments.rfm_rules
    return {
        "rule_names": [rule.name for rule in rules],
        "max_days_since_signup": [rule.max_days_since_signup for rule in rules],
        "max_days_since_purchase": [rule.max_days_since_purchase for rule in rules],
        "min_days_since_purchase": [rule.min_days_since_purchase for rule in rules],
        "max_days_since_activity": [rule.max_days_since_activity for rule in rules],
        "min_purchases_90d": [rule.min_purchases_90d for rule in rules],
    }


def segment_profiles(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext, clusters: pl.DataFrame
) -> pl.DataFrame:
    counts = dict(
        con.execute("select rfm_segment, count(*) from marts.segments group by rfm_segment").fetchall()
    )
    total = max(sum(counts.values()), 1)
    rfm = pl.DataFrame(
        [
            {
                "segment_type": "rfm",
                "segment_id": rule.name,
                "segment_name": rule.name.replace("_", " "),
                "users": int(counts.get(rule.name, 0)),
                "description": rule_description(rule),
            }
            for rule in settings.segments.rfm_rules
        ],
        schema=clusters.schema,
    )
    return (
        pl.concat([rfm, clusters])
        .with_columns(
            pl.lit(ctx.run_date).alias("run_date"),
            (pl.col("users") / total).alias("user_share"),
        )
        .select(
            "run_date", "segment_type", "segment_id", "segment_name", "users", "user_share", "description"
        )
    )


@task(name="segments", cache_policy=NO_CACHE)
@reported("segments")
def build_segments(settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """RFM segments and clusters per user, their profiles, and the item and category audiences."""
    with connect(settings) as con:
        clusters, clustering = build_clusters(con, settings, ctx)
        counts: dict[str, Any] = {
            "segments": materialize(
                con,
                "marts/segments",
                {"run_date": ctx.run_date, "cutoff": ctx.cutoff, **rule_params(settings)},
            )
        }
        profiles = segment_profiles(con, settings, ctx, clusters)
        replace_table(con, "marts.segment_profiles", profiles.to_arrow())
        counts["segment_profiles"] = profiles.height
        counts["item_audiences"] = materialize(
            con,
            "marts/item_audiences",
            {
                "run_date": ctx.run_date,
                "item_ids": settings.item_audiences.items,
                "categories": settings.item_audiences.categories,
                "items_per_category": settings.item_audiences.items_per_category,
                "cutoff": ctx.cutoff,
                "top_n": settings.item_audiences.top_n,
                # no engagement model serves when it learned nothing: its audiences are empty tonight
                "model_version": (models.get("engagement") or {}).get("version"),
            },
        )
    return counts | {"clustering": clustering}
