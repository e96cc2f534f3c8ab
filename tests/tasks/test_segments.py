from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from tailor.config import RfmRule
from tailor.tasks.score import score_users
from tailor.tasks.segments import (
    CLUSTER_FEATURES,
    build_segments,
    describe_cluster,
    format_value,
    rule_description,
)
from tailor.warehouse import connect


@pytest.fixture(scope="module")
def segmented(trained_company):
    settings, ctx, models, _ = trained_company
    settings = settings.model_copy(
        update={
            "item_audiences": settings.item_audiences.model_copy(
                update={"categories": ["books", "electronics"], "top_n": 25}
            )
        }
    )
    # the audience items must be candidates: rebuild candidates with this config, then score
    from tailor.tasks.features import build_candidates
    from tailor.tasks.repeats import load as load_repeats

    with connect(settings) as con:
        build_candidates(con, settings, ctx.cutoff, False, load_repeats(con, ctx.run_date))
    score_users(settings, ctx, models)
    counts = build_segments.fn(settings, ctx, models)
    return settings, ctx, models, counts


def test_describe_cluster_names_the_most_distinctive_features_in_words() -> None:
    n = len(CLUSTER_FEATURES)
    z = np.zeros(n)
    z[list(CLUSTER_FEATURES).index("revenue_cents_90d")] = 1.8
    z[list(CLUSTER_FEATURES).index("days_since_last_event")] = -0.9
    raw, overall = np.ones(n), np.ones(n)
    name, description = describe_cluster(z, raw, overall)
    assert name == "big spenders, recently active"
    assert description.startswith("Far higher revenue") and "lower days since the last visit" in description


def test_rule_description_reads_like_the_rule() -> None:
    rule = RfmRule(name="loyal", max_days_since_purchase=30, min_purchases_90d=3)
    assert rule_description(rule) == (
        "Users who bought within 30 days and 3 or more orders in 90 days (first matching rule wins)."
    )


def test_rule_description_writes_large_and_fractional_thresholds_in_plain_grouped_digits() -> None:
    # `:g` wrote 1e+06 for a million days; counts were never grouped
    rule = RfmRule(name="x", max_days_since_signup=10_000, max_days_since_purchase=2600.0,
                   min_days_since_purchase=1_000_000.0, max_days_since_activity=2.25, min_purchases_90d=1200)  # fmt: skip
    description = rule_description(rule)
    assert description == (
        "Users who signed up within 10,000 days and bought within 2,600 days and last bought 1,000,000 or "
        "more days ago and were active within 2.25 days and 1,200 or more orders in 90 days "
        "(first matching rule wins)."
    )
    assert not re.search(r"\de[+-]\d", description)


def test_a_tiny_share_in_a_cluster_description_is_still_visible() -> None:
    assert format_value(0.00004, "share") == "0.004%"  # was 0%
    assert format_value(260_000_000.0, "cents") == "2,600,000.00"


def test_cluster_descriptions_quote_means_in_the_datas_units_rounded_for_people() -> None:
    names = list(CLUSTER_FEATURES)
    raw, overall = np.zeros(len(names)), np.zeros(len(names))
    values = {
        "revenue_cents_90d": (4_612_345.0, 46_123.0),  # cents: 46,123.45 and 461.23 in money
        "purchases_per_day_90d": (0.0123, 0.1),  # a day: 0.4 and 3 orders in 30 days
        "top_category_share_90d": (0.625, 0.481),
        "n_distinct_items_30d": (12_345.6, 2.0),
        "days_since_last_event": (3.2, 41.7),
    }
    for name, (cluster, everyone) in values.items():
        raw[names.index(name)], overall[names.index(name)] = cluster, everyone
    for name in values:  # each feature in turn the most distinctive
        z = np.zeros(len(names))
        z[names.index(name)] = 2.0
        _, description = describe_cluster(z, raw, overall)
        assert "e+" not in description and "e-" not in description, description
        expected = {
            "revenue_cents_90d": "(46,123.45 vs 461.23)",
            "purchases_per_day_90d": "(0.4 vs 3)",
            "top_category_share_90d": "(62% vs 48%)",
            "n_distinct_items_30d": "(12,346 vs 2)",
            "days_since_last_event": "(3.2 vs 42)",
        }[name]
        assert expected in description, description
    assert format_value(float("nan"), "count") == "-" and format_value(9.96, "count") == "10"


def test_rfm_segments_follow_the_first_matching_rule(segmented) -> None:
    settings, ctx, _, counts = segmented
    with connect(settings) as con:
        frame = con.sql(
            "select s.*, f.days_since_signup, f.days_since_last_event from marts.segments s "
            "join features.user_features f on f.cutoff = $c and f.user_id = s.user_id",
            params={"c": ctx.cutoff},
        ).pl()
        unprofiled = con.execute(
            "select count(*) from marts.segments anti join (select user_id from staging.stg_consents "
            "where is_latest and purpose = 'profiling' and is_granted) using (user_id)"
        ).fetchall()[0][0]
    assert frame.height == counts["segments"] > 0 and unprofiled == 0
    new = frame.filter(pl.col("rfm_segment") == "new")
    assert new.height > 0 and (new["days_since_signup"] <= 30).all()
    old = frame.filter(pl.col("days_since_signup") > 30)
    loyal = old.filter(pl.col("rfm_segment") == "loyal")
    assert loyal.height > 0
    assert ((loyal["n_purchases_90d"] >= 3) & (loyal["days_since_last_purchase"] <= 30)).all()
    # an old user who bought 3+ times within 30 days can be nothing but loyal
    should_be_loyal = old.filter(
        (pl.col("n_purchases_90d") >= 3) & (pl.col("days_since_last_purchase") <= 30)
    )
    assert (should_be_loyal["rfm_segment"] == "loyal").all()
    assert set(frame["rfm_segment"]) <= {"new", "loyal", "active", "at_risk", "lapsed"}


def test_clusters_are_chosen_in_range_named_and_described(segmented) -> None:
    settings, _, _, counts = segmented
    clustering = counts["clustering"]
    config = settings.segments
    assert config.clusters_min <= clustering["clusters"] <= config.clusters_max
    assert set(clustering["silhouette_by_k"]) == set(range(config.clusters_min, config.clusters_max + 1))
    best_k = max(clustering["silhouette_by_k"], key=clustering["silhouette_by_k"].get)
    assert clustering["clusters"] == best_k
    with connect(settings) as con:
        profiles = con.sql("select * from marts.segment_profiles").pl()
        missing = con.execute("select count(*) from marts.segments where cluster_id is null").fetchall()[0][0]
    clusters = profiles.filter(pl.col("segment_type") == "cluster")
    assert clusters.height == best_k and clusters["segment_name"].n_unique() == best_k
    assert clusters["description"].str.contains("than average").all()
    assert clusters["users"].sum() == counts["segments"] and missing == 0
    rfm = profiles.filter(pl.col("segment_type") == "rfm")
    assert rfm["segment_id"].to_list() == [rule.name for rule in config.rfm_rules]


def test_item_audiences_are_the_top_users_by_an_independent_computation(segmented) -> None:
    settings, ctx, _, counts = segmented
    with connect(settings) as con:
        audiences = con.sql("select * from marts.item_audiences where audience_type = 'category'").pl()
        scores = con.sql(
            "select a.user_id, a.item_id, a.engagement_probability as p, i.category from model.audience_scores a "
            "join staging.stg_items i on i.item_id = a.item_id and i.is_latest"
        ).pl()
        top_books = (
            con.sql(
                "select item_id, popularity_rank from features.item_features "
                "where cutoff = $c and is_live and category = 'books'",
                params={"c": ctx.cutoff},
            )
            .pl()
            .sort("popularity_rank", "item_id")
            .head(settings.item_audiences.items_per_category)
        )
    assert counts["item_audiences"] == audiences.height > 0
    expected = (
        scores.filter(pl.col("item_id").is_in(top_books["item_id"].to_list()))
        .group_by("user_id")
        .agg((1 - (1 - pl.col("p")).product()).alias("score"))
        .sort(["score", "user_id"], descending=[True, False])
        .head(25)
    )
    books = audiences.filter(pl.col("audience_id") == "books").sort("rank")
    assert books["rank"].to_list() == list(range(1, 26))
    assert books["user_id"].to_list() == expected["user_id"].to_list()
    assert np.allclose(books["score"].to_numpy(), expected["score"].to_numpy())
