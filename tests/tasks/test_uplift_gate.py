"""The uplift evaluation from sends and outcomes alone, and the gate it sets for the personalized policy, on
hand-built warehouses whose sends carry a known per-user uplift (not the generator: here the truth is exact)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from tailor import uplift
from tailor.config import AllocationConfig, CampaignConfig, VariantConfig
from tailor.sql import replace_run_rows
from tailor.tasks import experiments as ex
from tailor.tasks.features import build_staging_models
from tests import tiny

USERS = 8000
BASE_RATE = 0.1
GOLD_UPLIFT = 0.25  # what the variant adds for a gold customer; nothing for the others


def campaign(policy: str = "personalized", **allocation) -> CampaignConfig:
    return CampaignConfig(
        campaign_id="c",
        channel="email",
        holdout_share=0.5,
        allocation=AllocationConfig(policy=policy, exploration_share=0.1, **allocation),
        variants=[VariantConfig(variant_id="a")],
    )


def sent_warehouse(seed: int, attribute_drives: bool, tmp_path):
    """8,000 users sent once in February (half holdout); 40% are `gold` customers, a users attribute the
    company declares (stg_users gains the column, as a declared attribute does). When `attribute_drives`,
    the variant lifts a gold customer's conversion by 0.25 and nobody else's; otherwise conversion is 0.1 for
    everyone, whatever the arm. The last user has no profiling consent."""
    rng = np.random.default_rng(seed)
    users = [f"u{i:05d}" for i in range(USERS)]
    gold = rng.random(USERS) < 0.4
    treated = rng.random(USERS) < 0.5
    rate = BASE_RATE + (GOLD_UPLIFT * (gold & treated) if attribute_drives else 0.0)
    converted = rng.random(USERS) < rate
    sent = [datetime(2026, 2, 1) + timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 20, USERS)]
    con = tiny.warehouse()
    tiny.insert(
        con, "users", [{"user_id": u, "created_at": datetime(2025, 1, 1), "country": "FR"} for u in users]
    )
    tiny.insert(con, "consents", [
        {"user_id": u, "purpose": purpose, "is_granted": True, "updated_at": datetime(2025, 1, 1)}
        for u in users[:-1] for purpose in ("profiling", "email")
    ] + [{"user_id": users[-1], "purpose": "email", "is_granted": True, "updated_at": datetime(2025, 1, 1)}])  # fmt: skip
    tiny.insert(con, "campaign_exposures", [
        {"campaign_id": "c", "variant_id": "a" if t else "holdout", "user_id": u, "sent_at": s,
         "converted_at": s + timedelta(hours=5) if c else None, "revenue_cents": 1000 if c else 0}
        for u, t, s, c in zip(users, treated, sent, converted, strict=True)
    ])  # fmt: skip
    ctx = tiny.context(tmp_path)
    build_staging_models(con, ctx)
    tier = pl.DataFrame({"user_id": users, "loyalty_tier": np.where(gold, "gold", "basic")})
    con.register("tiers", tier.to_arrow())
    con.execute("alter table staging.stg_users add column loyalty_tier varchar")
    con.execute(
        "update staging.stg_users set loyalty_tier = tiers.loyalty_tier from tiers where tiers.user_id = stg_users.user_id"
    )
    con.unregister("tiers")
    return con, ctx, dict(zip(users, gold, strict=True))


def settings(**uplift_config):
    return tiny.settings(
        campaigns=[campaign().model_dump()],
        experiments={
            "uplift": {"bootstrap_samples": 100, "learners": ["two_model", "x_learner"]} | uplift_config
        },
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The evaluation of a warehouse whose gold customers gain from the variant, and of one where nothing
    does: (connection, context, gold by user, rows, curves, models) for each."""
    out = {}
    for drives in (True, False):
        tmp = tmp_path_factory.mktemp(f"uplift-{drives}")
        con, ctx, gold = sent_warehouse(7, drives, tmp)
        config = settings()
        rows, curves, models = ex.evaluate_uplift(con, config.campaigns[0], config, ctx, best_single="a")
        out[drives] = (con, ctx, gold, rows, curves, models)
    return out


def test_a_driving_attribute_gives_a_model_that_clears_random_and_drives_the_policy(evaluated) -> None:
    _, _, _, rows, curves, models = evaluated[True]
    (row,) = rows
    assert row["drives_policy"], row["policy_reason"]
    assert row["margin_ci_low"] > 0 and row["qini_ci_low"] > 0
    # the top 30% of each arm are gold customers (40% of all): they gain 0.25; the average effect is 0.1
    assert row["uplift_at_target"] == pytest.approx(GOLD_UPLIFT, abs=0.06)
    assert row["random_uplift_ci_low"] < 0.4 * GOLD_UPLIFT < row["random_uplift_ci_high"]
    assert row["margin_at_target"] == pytest.approx(row["uplift_at_target"] - row["random_uplift"])
    assert "clears random targeting" in row["policy_reason"] and row["learner"] in row["policy_reason"]
    assert row["learner"] == max(json.loads(row["validation_qini"]).items(), key=lambda kv: kv[1])[0]
    assert row["sends"] + row["holdout_sends"] == row["test_units"]
    assert {"two_model", "x_learner"} == set(json.loads(row["validation_qini"]))
    assert len(curves) == uplift.CURVE_POINTS
    (model,) = models
    assert "loyalty_tier" in json.loads(model["features"]) and "age_band" not in json.loads(model["features"])
    assert json.loads(model["categories"])["loyalty_tier"] == ["basic", "gold"]


def test_an_outcome_independent_of_everything_does_not_drive_the_policy(evaluated) -> None:
    _, _, _, rows, _, _ = evaluated[False]
    (row,) = rows
    assert not row["drives_policy"]
    assert row["margin_ci_low"] <= 0 or row["qini_ci_low"] <= 0
    assert "does not clear random targeting" in row["policy_reason"]
    assert "the best single variant (a) serves" in row["policy_reason"]


def test_too_few_units_are_not_evaluated_and_say_so(evaluated) -> None:
    con, ctx, _, _, _, _ = evaluated[True]
    config = settings(min_units=5000)
    rows, curves, models = ex.evaluate_uplift(con, config.campaigns[0], config, ctx)
    (row,) = rows
    assert (
        not row["drives_policy"] and "fewer than experiments.uplift.min_units (5000)" in row["policy_reason"]
    )
    assert curves == [] and models == [] and row.get("qini_coefficient") is None

