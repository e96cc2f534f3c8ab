from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from tailor.config import CampaignConfig, ComputeConfig, VariantConfig
from tailor.tasks.score import score_users
from tailor.tasks.segments import build_segments
from tailor.tasks.variants import assign_variants, by_share, render_rows, thompson_shares
from tailor.warehouse import connect


def campaign(**overrides) -> CampaignConfig:
    data = {
        "campaign_id": "c1",
        "channel": "email",
        "variants": [
            VariantConfig(
                variant_id="a", weight=1, subject="A {{ user.country }}", body="<p>{{ segment }}</p>"
            ),
            VariantConfig(variant_id="b", weight=3, subject="B {{ items[0].title if items else '-' }}"),
        ],
    } | overrides
    return CampaignConfig(**data)


def test_by_share_follows_the_shares() -> None:
    draws = np.random.default_rng(0).random(100_000)
    chosen = by_share(draws, ["a", "b", "c"], [1.0, 3.0, 6.0])
    shares = [float(np.mean(chosen == v)) for v in "abc"]
    assert all(abs(got - want) < 0.01 for got, want in zip(shares, [0.1, 0.3, 0.6], strict=True))
    assert by_share(np.array([0.0, 0.999999]), ["a", "b"], [1, 1]).tolist() == ["a", "b"]


def test_thompson_shares_favour_the_variant_that_converts_better_and_are_seeded() -> None:
    # Beta(1 + conversions, 1 + failures) posteriors of 1,000, 1,000 and 10 sends
    evidence = {"a": (101.0, 901.0), "b": (151.0, 851.0), "c": (2.0, 10.0)}
    shares, detail = thompson_shares(evidence, ["a", "b", "c"], campaign(), seed=7)
    assert shares == thompson_shares(evidence, ["a", "b", "c"], campaign(), seed=7)[0]
    # a barely tried variant keeps a large share (it might be best); a well-measured loser almost none
    assert shares[2] > 0.2 and shares[0] <= 0.002 and shares[1] > 0.4
    two, _ = thompson_shares(evidence, ["a", "b"], campaign(), seed=7)
    assert two[1] > 0.99
    assert detail["posterior"]["b"]["alpha"] == 151 and detail["posterior"]["b"]["beta"] == 851
    # with no evidence at all (the prior) the shares are equal within Monte Carlo error
    even, _ = thompson_shares({}, ["a", "b"], campaign(), seed=7)
    assert abs(even[0] - 0.5) < 0.02


def test_rendering_escapes_email_html_cuts_to_limits_and_leaves_the_holdout_blank() -> None:
    users = pl.DataFrame({"user_id": ["u1", "u2"], "country": ["DE", "FR"], "language": ["de", "fr"],
                          "segment": ["<new>", "active"]})  # fmt: skip
    items = {"u1": [{"item_id": "i1", "title": "x" * 300, "category": "c", "price_cents": 1, "reason": "r"}]}
    rendered, cut = render_rows(
        campaign(), users, np.array(["b", "holdout"]), np.array([False, True]), items, {"subject": 150}
    )
    assert rendered["subject"][0].endswith("…") and len(rendered["subject"][0]) <= 150 and cut == 1
    assert rendered["subject"][1] is None and rendered["recommended_item_ids"] == ["i1", None]
    html, _ = render_rows(campaign(), users[:1], np.array(["a"]), np.array([False]), {}, {})
    assert html["body"] == ["<p>&lt;new&gt;</p>"] and html["subject"] == ["A DE"]


def test_two_users_with_the_same_items_never_share_each_others_reasons() -> None:
    reasons = campaign(
        variants=[
            VariantConfig(variant_id="a", subject="Hi", body="{% for i in items %}{{ i.reason }}{% endfor %}")
        ]
    )
    users = pl.DataFrame({"user_id": ["u1", "u2"], "country": ["DE", "DE"], "language": ["de", "de"],
                          "segment": ["active", "active"]})  # fmt: skip
    item = {"item_id": "i1", "title": "t", "category": "c", "price_cents": 1}
    items = {
        "u1": [item | {"reason": "Because you viewed A"}],
        "u2": [item | {"reason": "Popular right now"}],
    }
    rendered, _ = render_rows(reasons, users, np.array(["a", "a"]), np.array([False, False]), items, {})
    assert rendered["body"] == ["Because you viewed A", "Popular right now"]


def test_each_distinct_text_is_rendered_once_and_equals_a_render_of_the_users_own_context(monkeypatch) -> None:
    from tailor import templates
    from tailor.templates import compile_template

    mixed = campaign(variants=[VariantConfig(
        variant_id="a", subject="Hi {{ user.country }}", headline="{{ items[0].title if items else 'new' }}",
        body="{% set n = items|length %}<p>{{ segment }}: {{ n }}</p>", call_to_action="Open",
    )])  # fmt: skip
    rng = np.random.default_rng(5)
    n = 300
    users = pl.DataFrame({"user_id": [f"u{i}" for i in range(n)], "country": rng.choice(["DE", "FR"], n),
                          "language": "de", "segment": rng.choice(["active", "new", "lapsed"], n)})  # fmt: skip
    item = {"item_id": "i", "title": "t", "category": "c", "price_cents": 1, "reason": "r"}
    items = {f"u{i}": [item | {"title": f"t{i % 7}"}] * (i % 3) for i in range(n)}
    renders: list[str] = []
    original = templates.BoundedTemplate.render
    monkeypatch.setattr(templates.BoundedTemplate, "render", lambda self, *a, **k: renders.append(self.name or "")
                        or original(self, *a, **k))  # fmt: skip
    rendered, _ = render_rows(mixed, users, np.full(n, "a"), np.zeros(n, dtype=bool), items, {})
    # a fixed call to action once, a subject per country, a headline per list of items, a body per (items,
    # segment): what each template reads, and nothing else, tells users' texts apart
    lists = [tuple(tuple(it.values()) for it in items[u]) for u in users["user_id"]]
    assert len(renders) == 1 + 2 + len(set(lists)) + len(set(zip(lists, users["segment"], strict=True)))
    assert len(renders) < 2 * n
    for row, user in enumerate(users.iter_rows(named=True)):
        context = {"user": {"country": user["country"], "language": "de"}, "segment": user["segment"],
                   "items": items[user["user_id"]], "campaign": {"id": "c1", "channel": "email"}}  # fmt: skip
        for field in ("subject", "headline", "body", "call_to_action"):
            own = compile_template(getattr(mixed.variants[0], field), "email", field).render(context).strip()
            assert rendered[field][row] == (own or None), (row, field)


@pytest.fixture(scope="module")
def allocated(trained_company):
    settings, ctx, models, _ = trained_company
    draft = VariantConfig(variant_id="draft-new-1", status="draft", subject="Draft {{ user.country }}")
    campaigns = []
    for c in settings.campaigns:
        update: dict = {"variants": [*c.variants, draft]}
        if c.campaign_id == "app_nudge":
            update["audience"] = c.audience.model_copy(update={"segments": ["active", "loyal"]})
        campaigns.append(c.model_copy(update=update))
    settings = settings.model_copy(update={"campaigns": campaigns})
    score_users(settings, ctx, models)
    build_segments.fn(settings, ctx, models)
    first = assign_variants(settings, ctx, models)
    return settings, ctx, models, first


def test_allocation_is_deterministic_and_holds_out_the_configured_share(allocated) -> None:
    settings, ctx, models, first = allocated
    with connect(settings) as con:
        snapshot = con.execute("select * from marts.content order by all").fetchall()
    assert assign_variants(settings, ctx, models) == first
    with connect(settings) as con:
        assert con.execute("select * from marts.content order by all").fetchall() == snapshot
        in_order = con.execute("select campaign_id, user_id, subject from marts.content").fetchall()
    # rendered in four user shards instead of one: the same rows, in the same order
    sharded = settings.model_copy(update={"compute": ComputeConfig(shards=4)})
    assert assign_variants(sharded, ctx, models) == first
    with connect(settings) as con:
        assert con.execute("select campaign_id, user_id, subject from marts.content").fetchall() == in_order
        assert con.execute("select * from marts.content order by all").fetchall() == snapshot
    for campaign_config in settings.campaigns:
        info = first[campaign_config.campaign_id]
        n, share = info["audience_users"], campaign_config.holdout_share
        # within four standard errors of the configured share
        assert abs(info["holdout_share_observed"] - share) < 4 * math.sqrt(share * (1 - share) / n), info
        assert "draft-new-1" not in info["users_by_arm"]


def test_content_respects_consent_audience_and_renders_every_message(allocated) -> None:
    settings, _, _, first = allocated
    with connect(settings) as con:
        unconsented = con.execute(
            "select count(*) from (select user_id, unnest(string_split(consent_purpose, ',')) as purpose "
            "from marts.content) c anti join (select user_id, purpose from staging.stg_consents "
            "where is_latest and is_granted) g using (user_id, purpose)"
        ).fetchall()[0][0]
        personalized_unprofiled = con.execute(
            "select count(*) from marts.content where is_personalized and user_id not in (select user_id "
            "from staging.stg_consents where is_latest and purpose = 'profiling' and is_granted)"
        ).fetchall()[0][0]
        outside_audience = con.execute(
            "select count(*) from marts.content where campaign_id = 'app_nudge' and segment not in ('active', 'loyal')"
        ).fetchall()[0][0]
        blanks = con.execute(
            "select count(*) filter (where is_holdout and coalesce(subject, body, recommended_item_ids) is not null), "
            "count(*) filter (where not is_holdout and (subject is null or body is null)) from marts.content"
        ).fetchall()[0]
        reasons = dict(
            con.execute(
                "select allocation_reason, count(*) from marts.content where campaign_id = 'weekly_digest' group by 1"
            ).fetchall()
        )
    assert unconsented == 0 and personalized_unprofiled == 0 and outside_audience == 0
    assert blanks == (0, 0)
    assert first["app_nudge"]["policy"] == "bandit" and set(first["app_nudge"]["posterior"]) == {
        "urgency",
        "social_proof",
    }
    # no uplift evaluation has run: the personalized policy serves the best single variant and says why
    assert set(reasons) == {"holdout", "uplift_not_proven", "exploration", "no_profiling_consent"}


def test_without_a_proven_uplift_model_the_truly_best_single_variant_serves(midsize_company) -> None:
    """Where no uplift model is proven (here: min_units above the campaign's units, so none is evaluated), the
    personalized policy gives every profiled user who does not explore the variant of highest posterior
    conversion; the generator knows each user's true conversion probability under each variant: it is the
    true best."""
    from tailor.tasks.experiments import analyse_experiments

    out, settings, ctx, models = midsize_company
    experiments = settings.experiments.model_copy(
        update={"uplift": settings.experiments.uplift.model_copy(update={"min_units": 100_000})}
    )
    settings = settings.model_copy(update={"experiments": experiments})
    score_users(settings, ctx, models)
    build_segments.fn(settings, ctx, models)
    analyse_experiments.fn(settings, ctx)
    summary = assign_variants(settings, ctx, models)
    assert summary["weekly_digest"]["policy"] == "personalized"
    assert summary["weekly_digest"]["best_single_variant"] == "editorial"
    with connect(settings) as con:
        content = con.sql(
            "select user_id, variant_id, allocation_reason from marts.content "
            "where campaign_id = 'weekly_digest' and not is_holdout"
        ).pl()
        logged = con.execute(
            "select reason from meta.allocation_decisions where campaign_id = 'weekly_digest' "
            "and variant_id = 'editorial' and run_date = $d",
            {"d": ctx.run_date},
        ).fetchall()[0][0]
    truth = pl.read_parquet(out / "truth" / "campaign_variants.parquet").filter(
        pl.col("campaign_id") == "weekly_digest"
    )
    served = content.filter(pl.col("allocation_reason") == "uplift_not_proven")
    assert served.height > 2000 and set(served["variant_id"]) == {"editorial"}
    true_rates = (
        truth.join(served.select("user_id"), on="user_id")
        .group_by("variant_id")
        .agg(pl.col("conversion_prob").mean())
    )
    best = true_rates.filter(pl.col("variant_id") != "no_contact").sort("conversion_prob")["variant_id"][-1]
    assert best == "editorial", true_rates.to_dicts()
    reasons = set(content["allocation_reason"])
    assert reasons == {"uplift_not_proven", "exploration", "no_profiling_consent"}
    assert "no uplift model proven, the best single variant (editorial) serves" in logged
    assert "experiments.uplift.min_units" in logged


def test_the_holdout_stays_when_policy_and_weights_change_and_moves_with_the_salt(allocated) -> None:
    settings, ctx, models, _ = allocated

    def holdout_users(campaigns: list[CampaignConfig]) -> set[tuple[str, str]]:
        assign_variants(settings.model_copy(update={"campaigns": campaigns}), ctx, models)
        with connect(settings) as con:
            return set(
                con.execute("select campaign_id, user_id from marts.content where is_holdout").fetchall()
            )

    before = holdout_users(settings.campaigns)
    reweighted = [
        c.model_copy(
            update={
                "allocation": c.allocation.model_copy(update={"policy": "split"}),
                "variants": [v.model_copy(update={"weight": 1 + i}) for i, v in enumerate(c.variants)],
            }
        )
        for c in settings.campaigns
    ]
    assert holdout_users(reweighted) == before
    resalted = [c.model_copy(update={"salt": "another"}) for c in settings.campaigns]
    moved = holdout_users(resalted)
    assert len(moved & before) < 0.5 * len(before)
    assign_variants(settings, ctx, models)  # leave the module's state as the fixture made it


def _contextual_night(tmp_path, rates: dict, tolerance: float, seed: int, sends: int):
    """The hand-made logs of tests/tasks/test_ope.py (two variants whose rates swap between DE and FR),
    evaluated tonight, then a contextual_bandit campaign allocated over 4,000 new users of each country."""
    from tailor.tasks.experiments import allocation_feedback
    from tailor.tasks.variants import allocate, explain
    from tailor.warehouse import run_context
    from tests.tasks.test_ope import RUN_DATE, evaluate, logged, posteriors, settings_for, warehouse

    settings = settings_for(tmp_path, policy="contextual_bandit", tolerance=tolerance)
    warehouse(settings, logged(sends, seed=seed, rates=rates))
    evaluate(settings)
    ctx = run_context(settings, RUN_DATE)
    c = settings.campaigns[0]
    n = 8000
    users = pl.DataFrame({"user_id": [f"n{i}" for i in range(n)], "country": ["DE", "FR"] * (n // 2),
                          "language": "de", "segment": "active",
                          "variant_draw": np.random.default_rng(1).random(n)})  # fmt: skip
    with connect(settings) as con:
        feedback = allocation_feedback(con, c, settings, ctx)
        feedback.posteriors = {row["variant_id"]: (row["alpha"], row["beta"]) for row in posteriors()}
        allocation = allocate(con, c, users, {}, settings, ctx, feedback)
    return users, allocation, [explain(c, allocation, v, users) for v in ("a", "b")]


def test_the_contextual_bandit_serves_each_country_its_better_variant_once_evaluated(tmp_path) -> None:
    from tests.tasks.test_ope import RATES

    users, allocation, reasons = _contextual_night(tmp_path, RATES, tolerance=0.005, seed=1, sends=6000)
    de = users["country"].to_numpy() == "DE"
    # b converts 0.30 in DE against a's 0.10, and the reverse in FR
    assert np.mean(allocation.variant_id[de] == "b") > 0.95
    assert np.mean(allocation.variant_id[~de] == "a") > 0.95
    assert set(allocation.reason) == {"contextual_thompson"}
    assert sum(allocation.shares.values()) == pytest.approx(1.0)
    assert all(r.startswith("contextual bandit serves: conversion per send +") for r in reasons), reasons
    assert "per country over 2 contexts" in reasons[0]


def test_the_context_free_bandit_serves_when_the_contextual_one_is_not_better_off_policy(tmp_path) -> None:
    from tests.tasks.test_ope import RATES

    flat = {key: 0.2 if key[0] != "holdout" else 0.05 for key in RATES}
    users, allocation, reasons = _contextual_night(tmp_path, flat, tolerance=0.0, seed=3, sends=3000)
    assert set(allocation.reason) == {"thompson"}
    # equal pooled posteriors: half each, whatever the country
    de = users["country"].to_numpy() == "DE"
    assert abs(np.mean(allocation.variant_id[de] == "a") - 0.5) < 0.03
    assert all(r.startswith("contextual bandit not better off-policy: conversion per send") for r in reasons)
    assert all("Thompson sampling: P(best)" in r for r in reasons), reasons


def test_allocation_reasons_write_shares_and_chances_as_readable_percentages() -> None:
    import re

    import duckdb

    from tailor.tasks.experiments import Feedback, ensure_tables
    from tailor.tasks.variants import Allocation, decision_rows, explain
    from tests import tiny

    bandit = campaign(holdout_share=0.005, allocation={"policy": "bandit"})
    empty = np.array([])
    allocation = Allocation(empty, empty, empty, empty, empty, {"a": 0.99996, "b": 0.00004}, {
        "posterior": {"a": {"p_best": 0.99996}, "b": {"p_best": 0.00004}},
        "evidence": {"a": (26_000, 1_300), "b": (2_600, 1)}, "posterior_date": "2026-11-20",
    })  # fmt: skip
    content = pl.DataFrame({"variant_id": ["a"] * 199 + ["holdout"], "is_holdout": [False] * 199 + [True]})
    con = duckdb.connect()
    ensure_tables(con)
    reasons = {
        row["variant_id"]: row["reason"]
        for row in decision_rows(con, bandit, allocation, Feedback({}, {}, None), content, tiny.context())
    }
    assert reasons == {
        "a": "Thompson sampling: P(best) 100% from 26,000 sends and 1,300 conversions (analysis of 2026-11-20)",
        "b": "Thompson sampling: P(best) 0.004% from 2,600 sends and 1 conversions (analysis of 2026-11-20)",
        "holdout": "holdout: 0.5% of the audience is never contacted",  # `.0%` wrote 0%
    }  # `.3f` wrote P(best) 1.000 and 0.000
    contextual = Allocation(empty, empty, empty, empty, empty, {"a": 0.125, "b": 0.875}, {
        "contextual": "contextual bandit serves", "context": "country", "context_shares": {"de": {}, "fr": {}},
    })  # fmt: skip
    assert explain(bandit, contextual, "a", content) == (
        "contextual bandit serves; Thompson sampling per country over 2 contexts, share 12.5% overall"
    )
    assert not any(re.search(r"\de[+-]\d", reason) for reason in reasons.values())
