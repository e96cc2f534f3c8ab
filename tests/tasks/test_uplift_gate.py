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


# ---- the gate in the personalized allocation -------------------------------------------------------------------


def two_variant_campaign(**allocation) -> CampaignConfig:
    return campaign(**allocation).model_copy(
        update={"variants": [VariantConfig(variant_id="a"), VariantConfig(variant_id="b")]}
    )


def store(con, ctx, rows: list[dict], models: list[dict], extra: list[dict] = ()) -> None:
    """The evaluation as the experiments store it, and optionally rows of other variants."""
    ex.ensure_tables(con)
    replace_run_rows(con, "meta.uplift_evaluation", ex.UPLIFT_COLUMNS, [*rows, *extra], ctx.run_date)
    replace_run_rows(con, "meta.uplift_models", ex.UPLIFT_MODEL_COLUMNS, models, ctx.run_date)


def audience(gold: dict[str, bool]) -> pl.DataFrame:
    """Every user, as marts/campaign_audience gives them: seeded draws, the last without profiling consent."""
    users = sorted(gold)
    rng = np.random.default_rng(3)
    return pl.DataFrame({
        "user_id": users, "allows_profiling": [u != users[-1] for u in users],
        "variant_draw": rng.random(len(users)), "explore_draw": rng.random(len(users)),
    })  # fmt: skip


def unproven_b(ctx, average: float) -> dict:
    return {"run_date": ctx.run_date, "campaign_id": "c", "variant_id": "b", "random_uplift": average,
            "drives_policy": False, "policy_reason": "b: does not clear random targeting"}  # fmt: skip


def test_a_proven_model_gives_each_user_the_variant_of_highest_predicted_uplift(evaluated) -> None:
    from tailor.tasks.variants import allocate_personalized, by_share

    con, ctx, gold, rows, _, models = evaluated[True]
    # b was evaluated and not proven: it counts at its average effect, 0.12, for everyone
    store(con, ctx, rows, models, [unproven_b(ctx, 0.12)])
    chosen_campaign = two_variant_campaign(skip_without_uplift=True, min_uplift=0.04)
    users = audience(gold)
    split = by_share(users["variant_draw"].to_numpy(), ["a", "b"], [1.0, 1.0])
    feedback = ex.Feedback({"a": (10.0, 90.0), "b": (30.0, 70.0)}, {}, None)
    allocation = allocate_personalized(con, chosen_campaign, users, ["a", "b"], split, ctx, feedback)
    frame = users.with_columns(
        variant_id=pl.Series(allocation.variant_id.tolist()), reason=pl.Series(allocation.reason.tolist()),
        gold=pl.Series([gold[u] for u in users["user_id"]]), uplift=pl.Series(allocation.expected_uplift),
    )  # fmt: skip
    by_model = frame.filter(pl.col("reason") == "model_best")
    # gold customers (a gains 0.25 for them) get a; the others, for whom a gains nothing, get b
    assert by_model.filter(pl.col("gold"))["variant_id"].eq("a").mean() > 0.9
    assert by_model.filter(~pl.col("gold"))["variant_id"].eq("b").mean() > 0.9
    # the best candidate's uplift: a's prediction or b's flat 0.12, never below the threshold once kept
    assert by_model["uplift"].min() > 0.04
    assert set(by_model.filter(pl.col("variant_id") == "b")["uplift"].round(12)) == {0.12}
    explorers = frame.filter(pl.col("reason") == "exploration").height / (USERS - 1)
    assert explorers == pytest.approx(0.1, abs=0.015)
    assert frame["reason"][-1] == "no_profiling_consent" and frame["variant_id"][-1] == split[-1]
    assert allocation.detail["uplift_learners"] == {"a": rows[0]["learner"]}
    assert "clears random targeting" in allocation.detail["uplift_gate"]["a"]


def test_without_a_proven_model_the_best_single_variant_serves_and_the_decision_says_why(evaluated) -> None:
    from tailor.tasks.variants import allocate_personalized, by_share, explain

    con, ctx, gold, rows, _, models = evaluated[False]
    store(con, ctx, rows, models)
    users = audience(gold)
    split = by_share(users["variant_draw"].to_numpy(), ["a", "b"], [1.0, 1.0])
    # b converts more often by its posterior (mean 0.3 against 0.1): it is the best single variant
    feedback = ex.Feedback({"a": (10.0, 90.0), "b": (30.0, 70.0)}, {}, None)
    chosen_campaign = two_variant_campaign(skip_without_uplift=True, min_uplift=0.04)
    allocation = allocate_personalized(con, chosen_campaign, users, ["a", "b"], split, ctx, feedback)
    reason, variant = allocation.reason, allocation.variant_id
    not_proven = reason == "uplift_not_proven"
    assert set(reason) == {"uplift_not_proven", "exploration", "no_profiling_consent"}
    assert (variant[not_proven] == "b").all() and not_proven.sum() > 0.85 * USERS
    assert allocation.expected_conversion[not_proven] == pytest.approx(np.full(not_proven.sum(), 0.3))
    assert np.isnan(allocation.expected_uplift).all() and not allocation.is_personalized.any()
    assert allocation.detail["best_single_variant"] == "b"
    logged = explain(
        chosen_campaign, allocation, "b",
        pl.DataFrame({"variant_id": variant.tolist(), "allocation_reason": reason.tolist()}),
    )  # fmt: skip
    assert "uplift not proven" in logged and "does not clear random targeting" in logged
    assert allocation.detail["uplift_gate"]["b"] == "no uplift evaluation yet"


def test_before_any_evaluation_the_best_single_variant_serves(tmp_path) -> None:
    from tailor.tasks.variants import allocate_personalized, by_share

    con, ctx, gold = sent_warehouse(8, False, tmp_path)
    users = audience(gold)
    split = by_share(users["variant_draw"].to_numpy(), ["a", "b"], [1.0, 1.0])
    feedback = ex.Feedback({"a": (50.0, 50.0)}, {}, None)  # b has no posterior yet: its prior, mean 0.5
    allocation = allocate_personalized(con, two_variant_campaign(), users, ["a", "b"], split, ctx, feedback)
    assert allocation.detail["uplift_gate"] == {
        "a": "no uplift evaluation yet",
        "b": "no uplift evaluation yet",
    }
    not_proven = allocation.reason == "uplift_not_proven"
    assert not_proven.any() and (allocation.variant_id[not_proven] == "a").all()  # a tie at 0.5: the first


def test_users_the_proven_model_expects_nothing_from_are_not_contacted(evaluated) -> None:
    from tailor.tasks.variants import allocate_personalized, by_share

    con, ctx, gold, rows, _, models = evaluated[True]
    store(con, ctx, rows, models)
    users = audience(gold)
    split = by_share(users["variant_draw"].to_numpy(), ["a"], [1.0])
    feedback = ex.Feedback({"a": (10.0, 90.0)}, {}, None)
    skipping = campaign(skip_without_uplift=True, min_uplift=0.1)
    allocation = allocate_personalized(con, skipping, users, ["a"], split, ctx, feedback)
    is_gold = np.array([gold[u] for u in users["user_id"]])
    skipped, kept = allocation.reason == "no_expected_uplift", allocation.reason == "model_best"
    assert allocation.detail["not_contacted_no_uplift"] == skipped.sum() > 0
    # a gains 0.25 for gold customers and nothing for the others: the others are not contacted
    assert is_gold[kept].mean() > 0.9 and (~is_gold[skipped]).mean() > 0.9
    assert (allocation.expected_uplift[kept] > 0.1).all() and (
        allocation.expected_uplift[skipped] <= 0.1
    ).all()


def test_an_uplift_table_from_before_the_new_columns_gains_them() -> None:
    old = dict(list(ex.UPLIFT_COLUMNS.items())[: list(ex.UPLIFT_COLUMNS).index("learner")])
    con = tiny.warehouse()
    con.execute("create schema if not exists meta")
    con.execute(f"create table meta.uplift_evaluation ({', '.join(f'{n} {t}' for n, t in old.items())})")
    ex.ensure_tables(con)
    row = {"run_date": tiny.RUN_DATE, "campaign_id": "c", "variant_id": "a", "qini_coefficient": 0.01,
           "learner": "x_learner", "drives_policy": True}  # fmt: skip
    replace_run_rows(con, "meta.uplift_evaluation", ex.UPLIFT_COLUMNS, [row], tiny.RUN_DATE)
    stored = con.sql("select * from meta.uplift_evaluation").pl()
    assert stored.columns == list(ex.UPLIFT_COLUMNS)
    assert stored.select("qini_coefficient", "learner", "drives_policy").rows() == [(0.01, "x_learner", True)]


def test_the_report_shows_each_variants_learner_intervals_random_margin_and_gate(evaluated) -> None:
    from tailor.tasks.report import uplift_rows

    _, _, _, rows, _, _ = evaluated[True]
    _, _, _, flat, _, _ = evaluated[False]
    frame = pl.DataFrame([rows[0], flat[0] | {"variant_id": "b"}])
    shown = uplift_rows(frame)
    assert [row["variant_id"] for row in shown] == ["a", "b"]
    a, b = shown
    r = rows[0]
    assert a["learner"] == r["learner"] and a["drives the policy"] is True and b["drives the policy"] is False
    assert a["qini"] == f"{r['qini_coefficient']:.3f} ({r['qini_ci_low']:.3f} to {r['qini_ci_high']:.3f})"
    assert a["uplift@30%"].startswith(f"{r['uplift_at_target']:.3f} (")
    assert a["random"].startswith(f"{r['random_uplift']:.3f} (") and a["margin"].startswith(
        f"{r['margin_at_target']:.3f} ("
    )
    assert a["why"] == r["policy_reason"] and "does not clear random targeting" in b["why"]


def test_the_time_split_measures_on_the_last_days_of_sends(evaluated) -> None:
    con, ctx, _, _, _, _ = evaluated[True]
    # sends run from February 1 to 21 and the cutoff is March 2: the last 13 days hold February 17 to 21
    config = settings(split="time", test_days=13, validation_days=4)
    (row,), _, _ = ex.evaluate_uplift(con, config.campaigns[0], config, ctx)
    units = ex.uplift_examples(con, config.campaigns[0], config, ctx, datetime(2026, 1, 1))
    test_from, validation_from = datetime(2026, 2, 17), datetime(2026, 2, 13)
    assert row["split"] == "time" and row["test_units"] == units.filter(pl.col("sent_at") >= test_from).height
    assert (
        row["validation_units"]
        == units.filter(pl.col("sent_at").is_between(validation_from, test_from, "left")).height
    )
    assert row["train_units"] == units.filter(pl.col("sent_at") < validation_from).height
    assert row["drives_policy"], row["policy_reason"]


def test_a_sensitive_attribute_is_a_feature_only_when_config_names_it(evaluated) -> None:
    con, ctx, *_ = evaluated[True]
    units = ex.uplift_examples(con, campaign(), tiny.settings(), ctx, datetime(2026, 1, 1))
    default = ex.uplift_features(units, tiny.settings(), "uplift_c__a")
    allowed = ex.uplift_features(
        units, tiny.settings(privacy={"sensitive_features": ["age_band"]}), "uplift_c__a"
    )
    assert {"country", "language", "loyalty_tier"} <= set(default) and not {"age_band", "gender"} & set(
        default
    )
    assert "age_band" in allowed and "gender" not in allowed
    assert set(ex.UPLIFT_BASE_FEATURES) <= set(default)


@pytest.fixture(scope="module")
def generated_company(tmp_path_factory: pytest.TempPathFactory):
    """10,000 generated users over 60 days, extracted: the generator's discount e-mail works for the price
    sensitive and not for the others, and only the users file's coupon_share (a declared attribute) shows who
    they are."""
    from datetime import date

    from tailor.config import load_settings
    from tailor.generate import generate
    from tailor.tasks.extract import extract_sources
    from tailor.warehouse import run_context

    out = tmp_path_factory.mktemp("uplift-generated")
    generate(out, n_users=10_000, n_items=300, days=60, end=date(2026, 11, 26), seed=42)
    settings = load_settings(out / "tailor.yaml")
    ctx = run_context(settings, date(2026, 11, 27))
    extract_sources.fn(settings, ctx)
    return settings, ctx


def evaluate_discount(settings, ctx) -> dict:
    from tailor.warehouse import connect

    digest = next(c for c in settings.campaigns if c.campaign_id == "weekly_digest")
    discount_only = digest.model_copy(
        update={"variants": [v for v in digest.variants if v.variant_id == "discount"]}
    )
    with connect(settings) as con:
        build_staging_models(con, ctx, settings)
        rows, _curves, _models = ex.evaluate_uplift(con, discount_only, settings, ctx)
    assert len(rows) == 1
    return rows[0]


def test_on_generated_data_the_attribute_that_drives_uplift_lets_the_model_clear_random(generated_company) -> None:
    from tailor.config import UserFeaturesConfig

    settings, ctx = generated_company
    assert "coupon_share" in settings.user_features.attributes
    with_attribute = evaluate_discount(settings, ctx)
    without = evaluate_discount(settings.model_copy(update={"user_features": UserFeaturesConfig()}), ctx)
    # with it, uplift@30% and Qini beat random targeting with intervals that clear it
    assert with_attribute["drives_policy"], with_attribute["policy_reason"]
    assert with_attribute["margin_ci_low"] > 0 and with_attribute["qini_ci_low"] > 0
    assert with_attribute["uplift_at_target_ci_low"] > with_attribute["random_uplift"]
    # without it the same learners on the same sends do not, and both figures fall
    assert not without["drives_policy"], without["policy_reason"]
    assert with_attribute["margin_at_target"] > without["margin_at_target"] + 0.05
    assert with_attribute["qini_coefficient"] > without["qini_coefficient"] + 0.005
    assert with_attribute["test_units"] == without["test_units"]


def test_the_policy_evaluation_values_the_personalized_policy_on_the_evaluations_own_test_units(evaluated) -> None:
    from tailor.tasks import ope

    con, ctx, _, rows, _, models = evaluated[True]
    store(con, ctx, rows, models)
    config = settings()
    chosen = config.campaigns[0]
    start = ex.window_start(chosen, config, ctx)
    sends = ope.logged_sends(con, chosen.campaign_id, config, ctx, start)
    units = ex.uplift_units(con, chosen, config, ctx)
    built = ope.personalized_policy(con, chosen, config, ctx, start, {}, sends, 2)
    # the analysis hands over the test part it evaluated on, rather than building the units twice
    given = ope.personalized_policy(con, chosen, config, ctx, start, {}, sends, 2, units.test())
    assert "uplift models of a proven" in given[2]
    assert given[1].sum() == units.test().height == rows[0]["test_units"]
    assert np.array_equal(built[0], given[0]) and np.array_equal(built[1], given[1]) and built[2] == given[2]
