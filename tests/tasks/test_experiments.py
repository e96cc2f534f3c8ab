from __future__ import annotations

import json
import math
import re
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tailor import stats
from tailor import uplift as uplift_lib
from tailor.config import CampaignConfig, VariantConfig, load_settings
from tailor.sql import replace_run_rows
from tailor.tasks import experiments as ex
from tailor.warehouse import connect, run_context


def _units(settings, ctx, campaign: CampaignConfig) -> pl.DataFrame:
    with connect(settings) as con:
        start = ex.window_start(campaign, settings, ctx)
        metrics = [metric for metric, _ in ex.campaign_metrics(campaign, settings.experiments)]
        return ex.experiment_units(con, campaign, settings, ctx, start, metrics)[0]


@pytest.fixture(scope="module")
def analysed(midsize_company):
    out, settings, ctx, models = midsize_company
    summary = ex.analyse_experiments.fn(settings, ctx)
    with connect(settings) as con:
        results = con.sql(
            "select * from meta.experiment_results where run_date = $d", params={"d": ctx.run_date}
        ).pl()
        uplift = con.sql(
            "select * from meta.uplift_evaluation where run_date = $d", params={"d": ctx.run_date}
        ).pl()
    truth = pl.read_parquet(out / "truth" / "campaign_variants.parquet")
    return out, settings, ctx, models, summary, results, uplift, truth


def true_effects(settings, ctx, campaign: CampaignConfig, truth: pl.DataFrame) -> dict[str, float]:
    """Each variant's true conversion effect against no contact, averaged over the analysed units."""
    units = _units(settings, ctx, campaign).select("user_id")
    mine = truth.filter(pl.col("campaign_id") == campaign.campaign_id).join(units, on="user_id")
    means = dict(mine.group_by("variant_id").agg(pl.col("conversion_prob").mean()).iter_rows())
    return {variant: p - means["no_contact"] for variant, p in means.items() if variant != "no_contact"}


def test_every_campaign_variant_and_metric_has_a_row_and_the_allocation_is_trusted(analysed) -> None:
    _, settings, ctx, _, summary, results, _, _ = analysed
    assert set(summary) == {c.campaign_id for c in settings.campaigns}
    for campaign in settings.campaigns:
        mine = results.filter(pl.col("campaign_id") == campaign.campaign_id)
        arms = {v.variant_id for v in campaign.variants} | {"holdout"}
        names = {m.name for m, _ in ex.campaign_metrics(campaign, settings.experiments)}
        # the default guardrails: every other metric of the catalogue, but clicks, which the holdout (the
        # control) cannot have
        assert names == {"conversion_rate", "revenue_per_user", "visit", "units"}
        assert mine.height == len(arms) * len(names)
        assert set(mine["variant_id"]) == arms and set(mine["metric"]) == names
        # the generator randomises sends as configured: no sample-ratio mismatch
        assert mine["is_trusted"].all() and mine["srm_p_value"].min() > settings.experiments.srm_p_value
        tested = mine.filter(~pl.col("is_control") & pl.col("untested_reason").is_null())
        assert tested["p_value_adjusted"].is_not_null().all()
        assert tested["mde"].is_not_null().all() and tested["power_at_observed"].is_not_null().all()
        # the event-based built-ins are measured on the units whose 7-day window closed by the cutoff
        visits = mine.filter((pl.col("metric") == "visit") & (pl.col("variant_id") == "holdout"))
        units = _units(settings, ctx, campaign).filter(pl.col("variant_id") == "holdout")
        closed = units.filter(pl.col("sent_at") + pl.duration(days=7) <= ctx.cutoff)
        assert visits["units"].item() == closed.height > 0 and 0 < visits["mean"].item() < 1
        assert visits["mean"].item() == pytest.approx(closed["metric__visit"].mean())
        # every variant has one verdict on all its rows; the holdout (the control here) none
        variants = mine.filter(pl.col("variant_id") != "holdout")
        assert set(variants["verdict"]) <= set(ex.VERDICTS) and variants["verdict_reason"].is_not_null().all()
        assert variants.group_by("variant_id").agg(pl.col("verdict").n_unique())["verdict"].max() == 1
        assert mine.filter(pl.col("variant_id") == "holdout")["verdict"].is_null().all()
        assert set(mine.filter(pl.col("metric_role") == "primary")["metric"]) == {campaign.primary_metric}
        assert (tested["p_value_adjusted"] >= tested["decision_p_value"] - 1e-12).all()
        assert tested["sequential_ci_low"].le(tested["cuped_ci_low"]).all()


def test_the_generators_true_effects_fall_inside_the_reported_intervals(analysed) -> None:
    _, settings, ctx, _, _, results, _, truth = analysed
    covered_fixed, covered_sequential, total = 0, 0, 0
    for campaign in settings.campaigns:
        effects = true_effects(settings, ctx, campaign, truth)
        rows = results.filter(
            (pl.col("campaign_id") == campaign.campaign_id) & (pl.col("metric") == "conversion_rate")
            & ~pl.col("is_control")
        )  # fmt: skip
        for row in rows.iter_rows(named=True):
            effect = effects[row["variant_id"]]
            covered_fixed += row["ci_low"] <= effect <= row["ci_high"]
            covered_sequential += row["sequential_ci_low"] <= effect <= row["sequential_ci_high"]
            total += 1
            # every variant converts more than no contact in the generator, and the data shows it
            assert row["diff"] > 0 and row["chance_to_beat_control"] > 0.9, row
    assert total == 5
    # 95% intervals: with five of them, missing two would happen about 2% of the time; the always-valid
    # sequential intervals are wider and must cover all five
    assert covered_fixed >= 4 and covered_sequential == 5


def test_the_generators_effects_are_covered_at_the_stated_rate_over_many_replays(analysed) -> None:
    """Replay the weekly digest's experiment 300 times: the analysed users, a fresh random assignment
    and outcomes drawn from the generator's true probabilities, through the same comparison code."""
    _, settings, ctx, _, _, _, _, truth = analysed
    campaign = next(c for c in settings.campaigns if c.campaign_id == "weekly_digest")
    units = _units(settings, ctx, campaign)
    probs = (
        truth.filter(pl.col("campaign_id") == "weekly_digest")
        .pivot(on="variant_id", index="user_id", values="conversion_prob")
        .join(units.select("user_id", "events_before"), on="user_id")
    )
    effect = float((probs["discount"] - probs["no_contact"]).mean())
    rng = np.random.default_rng(11)
    runs, covered = 300, 0
    config = settings.model_copy(
        update={"experiments": settings.experiments.model_copy(update={"sequential": False})}
    )
    for _ in range(runs):
        treated = rng.random(probs.height) < 0.5
        p = np.where(treated, probs["discount"].to_numpy(), probs["no_contact"].to_numpy())
        frame = probs.select("events_before").with_columns(
            pl.Series("is_converted", (rng.random(p.size) < p).astype(int))
        )
        metric = ex.catalogue_metrics(settings.experiments)["conversion_rate"]
        row = ex.compare(frame.filter(pl.Series(~treated)), frame.filter(pl.Series(treated)), metric, config)
        # the population effect of a random half, given these users: the mean difference of their probabilities
        covered += row["cuped_ci_low"] <= effect <= row["cuped_ci_high"]
    rate = covered / runs
    assert abs(rate - 0.95) < 4 * (0.95 * 0.05 / runs) ** 0.5, rate


def test_a_broken_allocation_fails_the_sample_ratio_check(analysed) -> None:
    _, settings, ctx, _, _, _, _, _ = analysed
    nudge = next(c for c in settings.campaigns if c.campaign_id == "app_nudge")
    # the campaign system really held out 10%; a config that says 25% sees a broken allocation
    wrong = nudge.model_copy(update={"holdout_share": 0.25})
    with connect(settings) as con:
        rows, summary = ex.analyse_campaign(con, wrong, settings, ctx)
    assert not summary["is_trusted"] and summary["sample_ratio_p_value"] < 1e-6
    assert all(row["is_srm"] and not row["is_trusted"] for row in rows)


def test_the_split_policy_checks_every_variants_share() -> None:
    campaign = CampaignConfig(campaign_id="c", channel="email", holdout_share=0.1,
                              variants=[VariantConfig(variant_id="a"), VariantConfig(variant_id="b", weight=3)])  # fmt: skip
    fair = ex.sample_ratio_check({"holdout": 1000, "a": 2250, "b": 6750}, campaign)
    skewed = ex.sample_ratio_check({"holdout": 1000, "a": 2700, "b": 6300}, campaign)
    stray = ex.sample_ratio_check({"holdout": 1000, "a": 2250, "b": 6750, "old": 40}, campaign)
    assert fair.p_value > 0.5 and skewed.p_value < 1e-10 and stray.p_value < 1e-10


def test_the_uplift_evaluation_runs_on_sends_alone_and_needs_enough_units(analysed) -> None:
    _, settings, ctx, _, _, _, uplift, _ = analysed
    digest = uplift.filter(pl.col("campaign_id") == "weekly_digest")
    assert set(digest["variant_id"]) == {"discount", "editorial", "new_arrivals"}
    # a bar above the campaign's units: no variant is evaluated, and each row says why and what serves
    config = settings.experiments.model_copy(
        update={"uplift": settings.experiments.uplift.model_copy(update={"min_units": 100_000})}
    )
    raised = settings.model_copy(update={"experiments": config})
    campaign = next(c for c in settings.campaigns if c.campaign_id == "weekly_digest")
    with connect(settings) as con:
        starved, _, no_models = ex.evaluate_uplift(con, campaign, raised, ctx, "editorial")
    assert not any(row["drives_policy"] for row in starved) and no_models == []
    assert all("experiments.uplift.min_units (100000)" in row["policy_reason"] for row in starved)
    assert all("the best single variant (editorial) serves" in row["policy_reason"] for row in starved)
    # at the default bar every learner is fitted on train, the best on validation is measured on test
    with connect(settings) as con:
        rows, curves, models = ex.evaluate_uplift(con, campaign, settings, ctx, "editorial")
    assert {row["variant_id"] for row in rows} == {"discount", "editorial", "new_arrivals"}
    for row in rows:
        validation = json.loads(row["validation_qini"])
        assert set(validation) == {"two_model", "x_learner", "transformed_outcome"}
        assert row["learner"] == max(validation, key=validation.get)
        assert row["qini_ci_low"] <= row["qini_coefficient"] <= row["qini_ci_high"]
        assert row["margin_at_target"] == pytest.approx(row["uplift_at_target"] - row["random_uplift"])
        assert row["uplift_at_30"] == row["uplift_at_target"]
        assert row["drives_policy"] == (row["margin_ci_low"] > 0 and row["qini_ci_low"] > 0)
        assert row["sends"] + row["holdout_sends"] == row["test_units"] > 0
    assert len(curves) == 3 * uplift_lib.CURVE_POINTS
    for model in models:
        assert all(Path(path).is_file() for path in json.loads(model["paths"]).values())


def _feedback_warehouse(tmp_path, rows: list[dict], posteriors: list[dict]):
    settings = load_settings_for(tmp_path)
    with connect(settings) as con:
        ex.ensure_tables(con)
        replace_run_rows(
            con,
            "meta.experiment_results",
            ex.RESULT_COLUMNS,
            rows,
            rows[0]["run_date"],
        )
        for day in sorted({p["run_date"] for p in posteriors}):
            replace_run_rows(con, "meta.variant_posteriors", ex.POSTERIOR_COLUMNS,
                             [p for p in posteriors if p["run_date"] == day], day)  # fmt: skip
    return settings


def load_settings_for(tmp_path):
    config = tmp_path / "tailor.yaml"
    config.write_text(
        "project: t\nsources: {users: {path: u.csv}, consents: {path: c.csv}, items: {path: i.csv}, "
        "interactions: {path: e.csv}}\npublish: {target: file://out}\nwarehouse: {path: w.duckdb}\n"
        "campaigns:\n  - campaign_id: c\n    channel: push\n    allocation: {policy: bandit}\n"
        "    variants: [{variant_id: a}, {variant_id: b}]\n"
    )
    return load_settings(config)


def _result(day: date, variant: str, diff: float, significant: bool, trusted: bool = True) -> dict:
    return {
        "run_date": day, "campaign_id": "c", "variant_id": variant, "metric": "conversion_rate",
        "control_variant_id": "holdout", "is_control": False, "diff": diff, "ci_low": diff - 0.01,
        "ci_high": diff + 0.01, "p_value_adjusted": 0.001 if significant else 0.4, "is_significant": significant,
        "is_trusted": trusted, "is_srm": not trusted,
    }  # fmt: skip


def _posterior(day: date, variant: str, conversions: int, trusted: bool = True) -> dict:
    return {"run_date": day, "campaign_id": "c", "variant_id": variant, "sends": 1000, "conversions": conversions,
            "alpha": 1.0 + conversions, "beta": 1001.0 - conversions, "is_trusted": trusted}  # fmt: skip


def test_a_significantly_harmful_variant_is_paused_and_an_untrusted_night_steers_nothing(tmp_path) -> None:
    day = date(2026, 11, 20)
    rows = [_result(day, "a", -0.03, True), _result(day, "b", 0.01, False)]
    posteriors = [_posterior(day - timedelta(days=1), "a", 50), _posterior(day - timedelta(days=1), "b", 90),
                  _posterior(day, "a", 200, trusted=False), _posterior(day, "b", 10, trusted=False)]  # fmt: skip
    settings = _feedback_warehouse(tmp_path, rows, posteriors)
    campaign = settings.campaigns[0]
    with connect(settings) as con:
        feedback = ex.allocation_feedback(con, campaign, settings, run_context(settings, day))
    assert set(feedback.paused) == {"a"} and "paused: conversion -3.00 points" in feedback.paused["a"]
    # tonight's posteriors failed the sample-ratio check: yesterday's trusted ones are used instead
    assert feedback.posterior_date == (day - timedelta(days=1)).isoformat()
    assert feedback.posteriors == {"a": (51.0, 951.0), "b": (91.0, 911.0)}
    assert any("sample-ratio" in note for note in feedback.notes)


def test_no_variant_is_paused_when_every_one_would_be(tmp_path) -> None:
    day = date(2026, 11, 20)
    settings = _feedback_warehouse(
        tmp_path, [_result(day, "a", -0.03, True), _result(day, "b", -0.02, True)], [_posterior(day, "a", 5)]
    )
    with connect(settings) as con:
        feedback = ex.allocation_feedback(con, settings.campaigns[0], settings, run_context(settings, day))
    assert feedback.paused == {} and any("none is paused" in note for note in feedback.notes)


def test_the_next_nights_bandit_moves_toward_the_variant_that_converted_better(
    midsize_company, tmp_path
) -> None:
    """Night one allocates from the generated history; a week of sends follows in which urgency converts
    three times as often as social proof; night two's analysis sees it and the decision log says so."""
    from tailor.tasks.extract import extract_sources
    from tailor.tasks.features import build_staging_models
    from tailor.tasks.score import score_users
    from tailor.tasks.segments import build_segments
    from tailor.tasks.variants import assign_variants

    source, settings, ctx, models = midsize_company
    root = tmp_path / "company"
    shutil.copytree(source, root)
    settings = load_settings(root / "tailor.yaml")
    settings = settings.model_copy(
        update={"campaigns": [c for c in settings.campaigns if c.campaign_id == "app_nudge"]}
    )
    score_users(settings, ctx, models)
    build_segments.fn(settings, ctx, models)
    ex.analyse_experiments.fn(settings, ctx)
    night_one = assign_variants(settings, ctx, models)["app_nudge"]["intended_shares"]

    # a week of sends to the campaign's users, reported on the last day
    with connect(settings) as con:
        users = [r[0] for r in con.execute("select distinct user_id from staging.stg_campaign_exposures "
                                           "where campaign_id = 'app_nudge' order by 1").fetchall()]  # fmt: skip
    rng = np.random.default_rng(3)
    n = len(users)
    arm = rng.choice(["urgency", "social_proof", "holdout"], size=n, p=[0.45, 0.45, 0.1])
    rate = np.select([arm == "urgency", arm == "social_proof"], [0.3, 0.1], 0.05)
    sent_at = [ctx.cutoff + timedelta(hours=8 + int(h)) for h in rng.integers(0, 10, n)]
    converted = rng.random(n) < rate
    new_file = (
        root / "sources" / "campaign_exposures" / f"{(ctx.run_date + timedelta(days=4)).isoformat()}.csv"
    )
    pl.DataFrame({
        "campaign_id": "app_nudge", "variant_id": arm, "user_id": users, "sent_at": sent_at,
        "opened_at": None, "clicked_at": None,
        "converted_at": [s + timedelta(hours=20) if c else None for s, c in zip(sent_at, converted, strict=True)],
        "revenue_cents": np.where(converted, 5000, 0),
    }).write_csv(new_file, datetime_format="%Y-%m-%d %H:%M:%S")  # fmt: skip
    night_two_ctx = run_context(settings, ctx.run_date + timedelta(days=7))
    extract_sources.fn(settings, night_two_ctx)
    with connect(settings) as con:
        build_staging_models(con, night_two_ctx)
    ex.analyse_experiments.fn(settings, night_two_ctx)
    night_two = assign_variants(settings, night_two_ctx, models)["app_nudge"]["intended_shares"]
    assert night_two["urgency"] > night_one["urgency"] + 0.2 and night_two["urgency"] > 0.9, (
        night_one,
        night_two,
    )
    with connect(settings) as con:
        logged = con.execute(
            "select share, previous_share, reason from meta.allocation_decisions "
            "where run_date = $d and campaign_id = 'app_nudge' and variant_id = 'urgency'",
            {"d": night_two_ctx.run_date},
        ).fetchall()
    (share, previous, reason) = logged[0]
    assert previous == pytest.approx(night_one["urgency"]) and share == pytest.approx(night_two["urgency"])
    assert "Thompson sampling" in reason and night_two_ctx.run_date.isoformat() in reason


def test_stored_results_are_replaced_when_a_night_is_rerun(analysed) -> None:
    _, settings, ctx, _, first, _, _, _ = analysed
    assert ex.analyse_experiments.fn(settings, ctx) == first
    with connect(settings) as con:
        counts = con.execute(
            "select count(*), count(distinct (campaign_id, variant_id, metric)) from meta.experiment_results "
            "where run_date = $d",
            {"d": ctx.run_date},
        ).fetchall()[0]
    assert counts[0] == counts[1]


def test_sample_ratio_of_an_empty_campaign_is_not_a_failure() -> None:
    campaign = CampaignConfig(campaign_id="c", channel="email", variants=[VariantConfig(variant_id="a")])
    check = ex.sample_ratio_check({}, campaign)
    assert math.isnan(check.p_value) and check.reason.startswith("not enough data")
    assert not check.p_value < 0.001  # so the campaign is not flagged


# Planted experiments: units made by hand, analysed by the same code as the warehouse's.

DAY = date(2026, 11, 20)


def planted_units(seed: int, arms: dict[str, tuple[int, float, float, float]]) -> pl.DataFrame:
    """experiment_units rows: arm -> (units, conversion rate, click rate, revenue in cents per conversion)."""
    rng = np.random.default_rng(seed)
    frames = []
    for arm, (n, converts, clicks, revenue) in arms.items():
        converted = rng.random(n) < converts
        frames.append(
            pl.DataFrame({
                "variant_id": arm, "user_id": [f"{arm}-{i}" for i in range(n)],
                "is_converted": converted.astype(int), "is_clicked": (rng.random(n) < clicks).astype(int),
                "revenue_cents": np.where(converted, revenue, 0), "events_before": rng.poisson(3, n).astype(float),
            })
        )  # fmt: skip
    return pl.concat(frames)


def analyse_planted(tmp_path, units: pl.DataFrame, **campaign_update) -> tuple[list[dict], dict]:
    """The planted units analysed on the three metrics they carry (the primary and the other two as
    guardrails)."""
    primary = campaign_update.get("primary_metric", "conversion_rate")
    planted = ("conversion_rate", "click_rate", "revenue_per_user")
    campaign_update.setdefault("guardrails", [name for name in planted if name != primary])
    settings = load_settings_for(tmp_path)
    campaign = settings.campaigns[0].model_copy(update=campaign_update)
    ctx = run_context(settings, DAY)
    return ex.analyse_units(units, campaign, settings, ctx, ctx.cutoff - timedelta(days=14))


def rows_of(rows: list[dict], variant: str) -> dict[str, dict]:
    return {row["metric"]: row for row in rows if row["variant_id"] == variant}


def test_click_rate_against_the_holdout_is_not_tested_nor_counted_in_the_correction(tmp_path) -> None:
    # variants click a lot, the holdout never (it gets no message): a naive test would call it significant
    units = planted_units(1, {"holdout": (1000, 0.05, 0.0, 5000), "a": (4500, 0.05, 0.3, 5000),
                              "b": (4500, 0.05, 0.2, 5000)})  # fmt: skip
    rows, summary = analyse_planted(tmp_path, units)
    for variant in ("a", "b"):
        click = rows_of(rows, variant)["click_rate"]
        assert "holdout gets no message" in click["untested_reason"]
        for column in ("diff", "p_value", "p_value_adjusted", "is_significant", "mde", "days_to_decision"):
            assert click.get(column) is None, column
        assert rows_of(rows, variant)["conversion_rate"]["untested_reason"] is None
    assert not any(name.endswith(":click_rate") for name in summary["significant"])

    # against variant a, the holdout's click row is untested and b's is the only one Holm corrects: its
    # adjusted p-value is its own (counting the holdout's would double it)
    rows, _ = analyse_planted(tmp_path, units, control_variant="a")
    assert "no message" in rows_of(rows, "holdout")["click_rate"]["untested_reason"]
    b_click = rows_of(rows, "b")["click_rate"]
    assert b_click["untested_reason"] is None and b_click["decision_p_value"] > 0
    assert b_click["p_value_adjusted"] == pytest.approx(b_click["decision_p_value"], rel=1e-12)
    conversions = [rows_of(rows, arm)["conversion_rate"] for arm in ("holdout", "b")]
    adjusted = stats.adjust_p_values([row["decision_p_value"] for row in conversions], "holm")
    assert [row["p_value_adjusted"] for row in conversions] == pytest.approx(adjusted)


def test_a_strong_effect_ships_and_the_power_columns_agree_with_stats(tmp_path) -> None:
    units = planted_units(2, {"holdout": (2000, 0.05, 0.0, 5000), "a": (9000, 0.15, 0.3, 5000),
                              "b": (9000, 0.05, 0.3, 5000)})  # fmt: skip
    rows, summary = analyse_planted(tmp_path, units)
    a = rows_of(rows, "a")
    assert {row["verdict"] for row in a.values()} == {"ship"}
    assert a["conversion_rate"]["verdict_reason"].startswith("conversion_rate +10.")
    assert "against holdout" in a["conversion_rate"]["verdict_reason"]
    assert summary["verdicts"]["a"] == "ship" and summary["verdicts"]["b"] != "ship"
    assert (
        a["conversion_rate"]["metric_role"] == "primary"
        and a["revenue_per_user"]["metric_role"] == "guardrail"
    )
    assert all(row["higher_is_better"] for row in rows)
    conversion = a["conversion_rate"]
    sd = stats.rate_sd(conversion["control_mean"])
    mde = stats.minimum_detectable_effect(sd, 2000, 9000, 0.05)
    assert conversion["mde"] == pytest.approx(mde)
    assert conversion["mde_relative"] == pytest.approx(mde / conversion["control_mean"])
    assert conversion["power_at_observed"] > 0.999 and conversion["days_to_decision"] == 0
    # b's difference is noise: it would take longer than the cap to detect, or it is not there at all
    b = rows_of(rows, "b")["conversion_rate"]
    assert b["verdict"] in {"keep running", "stop"} and b["power_at_observed"] < 0.8
    assert rows_of(rows, "holdout")["conversion_rate"]["verdict"] is None


def test_a_harmed_guardrail_stops_the_variant_and_is_named(tmp_path) -> None:
    # a converts three times as often, but each conversion brings a tenth of the revenue
    units = planted_units(3, {"holdout": (2000, 0.05, 0.0, 5000), "a": (9000, 0.15, 0.3, 500),
                              "b": (9000, 0.05, 0.3, 5000)})  # fmt: skip
    rows, summary = analyse_planted(tmp_path, units)
    a = rows_of(rows, "a")
    assert a["conversion_rate"]["is_significant"] and a["revenue_per_user"]["is_significant"]
    assert summary["verdicts"]["a"] == "stop"
    reason = a["conversion_rate"]["verdict_reason"]
    assert reason.startswith("guardrail revenue_per_user significantly worse") and "cents" in reason
    # with revenue as the primary metric the same variant is stopped for its primary
    rows, _ = analyse_planted(tmp_path, units, primary_metric="revenue_per_user")
    a = rows_of(rows, "a")
    assert (
        a["revenue_per_user"]["metric_role"] == "primary"
        and a["conversion_rate"]["metric_role"] == "guardrail"
    )
    assert a["revenue_per_user"]["verdict"] == "stop"
    assert a["revenue_per_user"]["verdict_reason"].startswith("the primary metric is significantly worse")


def test_a_sample_ratio_mismatch_stops_every_variant(tmp_path) -> None:
    # the holdout has a quarter of the units where the campaign holds out a tenth
    units = planted_units(4, {"holdout": (3000, 0.05, 0.0, 5000), "a": (4500, 0.15, 0.3, 5000),
                              "b": (4500, 0.05, 0.3, 5000)})  # fmt: skip
    rows, summary = analyse_planted(tmp_path, units)
    assert not summary["is_trusted"] and summary["verdicts"] == {"a": "stop", "b": "stop"}
    for row in rows:
        if row["variant_id"] != "holdout":
            assert row["verdict_reason"].startswith(
                "sample-ratio mismatch: fix the assignment before reading results"
            )


def _hand_row(
    metric: str,
    diff: float,
    significant: bool,
    days: float | None = None,
    role: str = "guardrail",
    reason: str | None = None,
) -> dict:
    return {"metric": metric, "diff": diff, "cuped_diff": None, "lift": 0.1, "is_significant": significant,
            "higher_is_better": True, "control_variant_id": "holdout", "p_value_adjusted": 0.2,
            "days_to_decision": days, "power_at_observed": 0.3, "metric_role": role, "untested_reason": reason}  # fmt: skip


def test_the_verdict_waits_for_a_decision_only_up_to_the_configured_days() -> None:
    def decide(days: float | None, max_days: int = 60, **primary) -> tuple[str, str]:
        rows = {
            "conversion_rate": _hand_row("conversion_rate", 0.004, False, days, "primary") | primary,
            "click_rate": _hand_row("click_rate", 0.0, False, reason="the holdout gets no message"),
            "revenue_per_user": _hand_row("revenue_per_user", -3.0, False, 12),
        }
        return ex.verdict(rows, "conversion_rate", max_days, 0.5, False)

    assert decide(12) == ("keep running", decide(12)[1]) and "about 12 more days" in decide(12)[1]
    assert decide(61)[0] == "stop" and decide(61)[1].startswith("no detectable effect within 60 days")
    assert decide(61, max_days=90)[0] == "keep running"
    assert decide(None)[0] == "keep running" and "no difference observed yet" in decide(None)[1]
    assert decide(0)[0] == "keep running" and "not significant yet, though" in decide(0)[1]
    # lower is better: a significant drop ships, a significant rise stops
    assert decide(0, is_significant=True, higher_is_better=False, diff=-0.01)[0] == "ship"
    assert decide(0, is_significant=True, higher_is_better=False, diff=0.01)[0] == "stop"
    # too few units in the primary's comparison: keep running, saying so
    small = decide(
        None, untested_reason="fewer than experiments.min_units (100) units: 40 in a, 12 in holdout"
    )
    assert small[0] == "keep running" and "40 in a" in small[1]


def test_effects_and_verdicts_read_without_scientific_notation() -> None:
    metrics = {metric.name: metric for metric in ex.METRICS}
    tiny_p = _hand_row("conversion_rate", 0.012, True) | {"lift": 0.15, "p_value_adjusted": 3e-7}
    effect = ex.effect_in_words(tiny_p, metrics["conversion_rate"])
    assert effect == "conversion_rate +1.20 percentage points (+15.0%) against holdout, adjusted p < 0.001"
    # a large money difference and lift are grouped digits; a p-value of 0.0123 keeps two digits
    big = _hand_row("revenue_per_user", 260_000.0, True) | {"lift": 26.0, "p_value_adjusted": 0.0123}
    effect = ex.effect_in_words(big, metrics["revenue_per_user"])
    assert effect == "revenue_per_user +260,000.00 cents (+2,600.0%) against holdout, adjusted p = 0.012"
    primary = _hand_row("conversion_rate", 0.012, True, 0, "primary") | {"p_value_adjusted": 3e-7}
    rows = {"conversion_rate": primary}
    shipped = ex.verdict(rows, "conversion_rate", 60, 0.5, False)
    assert shipped == ("ship", "conversion_rate +1.20 percentage points (+10.0%) against holdout, adjusted p < "
                               "0.001; no tested guardrail is significantly worse")  # fmt: skip
    mismatch = ex.verdict(rows, "conversion_rate", 60, 3e-7, True)
    assert mismatch[1].endswith("(the arms' units against their intended shares: p < 0.001)")
    for text in (effect, shipped[1], mismatch[1]):
        assert not re.search(r"\de[+-]\d", text), text


def test_a_paused_variants_reason_writes_a_tiny_p_value_plainly(tmp_path) -> None:
    day = date(2026, 11, 20)
    rows = [_result(day, "a", -0.03, True) | {"p_value_adjusted": 3e-7}, _result(day, "b", 0.01, False)]
    settings = _feedback_warehouse(tmp_path, rows, [_posterior(day, "a", 5)])
    with connect(settings) as con:
        paused = ex.harmful_variants(con, settings.campaigns[0], run_context(settings, day))
    assert paused == {
        "a": "paused: conversion -3.00 points against holdout (-4.00 to -2.00, adjusted p < 0.001) in the "
        "analysis of 2026-11-20"
    }  # `.2g` wrote 3e-07


def test_primary_metric_and_guardrails_are_validated_against_the_catalogue(tmp_path) -> None:
    from tailor.config import ConfigError

    assert [metric.name for metric in ex.METRICS] == [
        "conversion_rate", "click_rate", "revenue_per_user", "visit", "units"
    ]  # fmt: skip
    settings = load_settings_for(tmp_path)
    assert settings.campaigns[0].primary_metric == "conversion_rate"
    assert settings.experiments.max_days_to_decision == 60
    config = tmp_path / "tailor.yaml"
    text = config.read_text()
    config.write_text(text.replace("    variants:", "    primary_metric: opens\n    variants:"))
    with pytest.raises(
        ConfigError,
        match=r"tailor\.yaml: campaigns\.0: primary_metric 'opens' is not in experiments\.metrics "
        r"\(conversion_rate, click_rate, revenue_per_user, visit, units\)",
    ) as error:
        load_settings(config)
    assert "\n" not in str(error.value)
    # a campaign file is named as the file, and a guardrail as the guardrail
    config.write_text(text)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "spring.yaml").write_text(
        "campaign_id: spring\nchannel: email\nprimary_metric: visit\nguardrails: [units, visits]\n"
        "variants: [{variant_id: a}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"spring\.yaml: guardrails 'visits' is not in experiments\.metrics"
    ):
        load_settings(config)
    (campaigns / "spring.yaml").write_text(
        "campaign_id: spring\nchannel: email\nprimary_metric: visit\nguardrails: [units, visit]\n"
        "variants: [{variant_id: a}]\n"
    )
    with pytest.raises(ConfigError, match=r"spring\.yaml: key 'guardrails'.*'visit' is the primary_metric"):
        load_settings(config)
    (campaigns / "spring.yaml").unlink()
    # click_rate cannot be decided against the holdout, which gets no message
    config.write_text(text.replace("    variants:", "    primary_metric: click_rate\n    variants:"))
    with pytest.raises(
        ConfigError, match="primary_metric 'click_rate' cannot be measured against the holdout"
    ):
        load_settings(config)
    config.write_text(
        text.replace("    variants:", "    primary_metric: click_rate\n    control_variant: a\n    variants:")
    )
    settings = load_settings(config)
    campaign = settings.campaigns[0]
    assert campaign.primary_metric == "click_rate"
    # against a variant, every other metric is a default guardrail; against the holdout, clicks are not
    roles = [(metric.name, role) for metric, role in ex.campaign_metrics(campaign, settings.experiments)]
    assert roles == [("click_rate", "primary"), ("conversion_rate", "guardrail"),
                     ("revenue_per_user", "guardrail"), ("visit", "guardrail"), ("units", "guardrail")]  # fmt: skip
    held_out = campaign.model_copy(update={"primary_metric": "visit", "control_variant": None})
    names = [metric.name for metric, _ in ex.campaign_metrics(held_out, settings.experiments)]
    assert names == ["visit", "conversion_rate", "revenue_per_user", "units"]


def test_a_results_table_from_before_the_new_columns_gains_them(tmp_path) -> None:
    settings = load_settings_for(tmp_path)
    old = dict(list(ex.RESULT_COLUMNS.items())[: list(ex.RESULT_COLUMNS).index("metric_role")])
    with connect(settings) as con:
        con.execute("create schema meta")
        con.execute(f"create table meta.experiment_results ({', '.join(f'{n} {t}' for n, t in old.items())})")
        ex.ensure_tables(con)
        row = _result(DAY, "a", 0.01, True) | {"verdict": "ship", "days_to_decision": 0.0}
        replace_run_rows(con, "meta.experiment_results", ex.RESULT_COLUMNS, [row], DAY)
        stored = con.sql("select * from meta.experiment_results").pl()
    assert stored.columns == list(ex.RESULT_COLUMNS)
    assert stored["verdict"].to_list() == ["ship"] and stored["diff"].to_list() == [0.01]


# A company's own metrics and covariates, on a hand-made warehouse.

BASKET_SQL = """
-- each unit's purchase value in the 14 days after its send, and in the 14 days before it
with sends as (
    select user_id, min(sent_at) as sent_at
    from staging.stg_campaign_exposures
    where campaign_id = $campaign_id and sent_at >= $window_start and sent_at < $cutoff
        and known_on < $cutoff_day
    group by user_id
)

select
    sends.user_id,
    sends.sent_at,
    coalesce(sum(events.value) filter (where events.occurred_at >= sends.sent_at), 0) as value,
    coalesce(sum(events.value) filter (where events.occurred_at < sends.sent_at), 0) as value_before
from sends
left join staging.stg_interactions as events
    on events.user_id = sends.user_id
    and events.event_type = 'purchase'
    and events.occurred_at >= sends.sent_at - interval 14 day
    and events.occurred_at < sends.sent_at + interval 14 day
group by all
"""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def spring_company(tmp_path) -> tuple:
    """4,000 users, half sent variant a and half held out, from Feb 1 to 20 (plus 200 on Feb 27, whose 7-day
    window is still open at the March 2 cutoff). A user's past-year spend (a users attribute) drives whether
    they visit in the week after the send; their visits in the week before it (the metric's pre-period)
    depend on it only weakly. Variant a raises visiting and buying."""
    from tailor.tasks.features import build_staging_models
    from tests import tiny

    rng = np.random.default_rng(19)
    n, late = 4000, 200
    users = [f"u{i:04d}" for i in range(n)]
    spend = rng.lognormal(4, 1, n)
    z = np.log(spend) - 4
    treated = rng.random(n) < 0.5
    sent_at = [datetime(2026, 2, 1, 9) + timedelta(hours=int(h)) for h in rng.integers(0, 19 * 24, n - late)]
    sent_at += [datetime(2026, 2, 27, 9)] * late
    visits = rng.random(n) < _sigmoid(-0.5 + 1.5 * z + 0.4 * treated)
    visited_before = rng.random(n) < _sigmoid(-0.5 + 0.3 * z)
    bought = rng.random(n) < np.where(treated, 0.3, 0.1)
    con = tiny.warehouse()
    # a company-declared users attribute, as extract adds it to raw.users (user_features.attributes)
    con.execute("alter table raw.users add column past_year_spend double")
    tiny.insert(con, "users", [
        {"user_id": u, "created_at": datetime(2025, 1, 1), "past_year_spend": float(s)}
        for u, s in zip(users, spend, strict=True)
    ])  # fmt: skip
    tiny.insert(con, "campaign_exposures", [
        {"campaign_id": "spring", "variant_id": "a" if t else "holdout", "user_id": u, "sent_at": s,
         "revenue_cents": 0}
        for u, t, s in zip(users, treated, sent_at, strict=True)
    ])  # fmt: skip
    events = []
    for i, user in enumerate(users):
        facts = [({"event_type": "view", "occurred_at": sent_at[i] + timedelta(hours=30)}, visits[i]),
                 ({"event_type": "click", "occurred_at": sent_at[i] - timedelta(days=3)}, visited_before[i]),
                 ({"event_type": "purchase", "occurred_at": sent_at[i] + timedelta(days=2), "value": 2000.0},
                  bought[i])]  # fmt: skip
        events += [event | {"user_id": user, "item_id": "i1"} for event, happened in facts if happened]
    tiny.insert(con, "interactions", events)
    (tmp_path / "basket.sql").write_text(BASKET_SQL)
    visit = {"event_type": ["view", "click"], "window_days": 7}
    metrics = {
        "visit_7d": visit,
        "visit_7d_by_spend": visit | {"covariate": "past_year_spend"},
        "visit_7d_by_log_spend": visit | {"covariate": "ln(1 + past_year_spend)"},
        "basket_cents": {"sql": "basket.sql", "kind": "continuous", "window_days": 14, "unit": "cents"},
    }
    settings = tiny.settings(
        user_features={"attributes": {"past_year_spend": "numeric"}}, experiments={"metrics": metrics}
    )
    # as load_settings leaves it: the SQL file is found relative to the config file
    settings = settings.model_copy(update={"config_path": str(tmp_path / "tailor.yaml")})
    build_staging_models(con, tiny.context(), settings)
    campaign = CampaignConfig(
        campaign_id="spring", channel="email", holdout_share=0.5, primary_metric="visit_7d",
        guardrails=["visit_7d_by_spend", "visit_7d_by_log_spend", "basket_cents", "units"],
        variants=[VariantConfig(variant_id="a")],
    )  # fmt: skip
    truth = {"treated": treated, "visits": visits, "bought": bought, "late": late, "sent_at": sent_at}
    return con, settings, campaign, truth


def test_a_declared_metric_with_a_users_attribute_as_covariate_narrows_the_interval_more(tmp_path) -> None:
    from tests import tiny

    con, settings, campaign, truth = spring_company(tmp_path)
    rows, summary = ex.analyse_campaign(con, campaign, settings, tiny.context())
    a = rows_of(rows, "a")
    assert summary["is_trusted"] and set(a) == {
        "visit_7d", "visit_7d_by_spend", "visit_7d_by_log_spend", "basket_cents", "units"
    }  # fmt: skip
    assert a["visit_7d"]["metric_role"] == "primary" and a["basket_cents"]["metric_role"] == "guardrail"
    # the units whose 7-day window is still open are not measured yet; the three visit metrics agree
    treated, late = truth["treated"], truth["late"]
    measured = ~np.r_[np.zeros(len(treated) - late, bool), np.ones(late, bool)]
    visits = truth["visits"]
    expected = float(visits[treated & measured].mean())
    for name in ("visit_7d", "visit_7d_by_spend", "visit_7d_by_log_spend"):
        assert a[name]["units"] == int((treated & measured).sum()), name
        assert a[name]["mean"] == pytest.approx(expected), name
        assert a[name]["test"] == "two_proportion" and a[name]["diff"] > 0
        assert a[name]["diff"] == pytest.approx(a["visit_7d"]["diff"])
    default = a["visit_7d"]["cuped_interval_narrowing"]
    by_spend = a["visit_7d_by_spend"]["cuped_interval_narrowing"]
    by_log_spend = a["visit_7d_by_log_spend"]["cuped_interval_narrowing"]
    # the pre-period (visits in the week before) says little about next week's; the spend says much
    assert 0 <= default < 0.02 and by_spend > default + 0.03 and by_log_spend > by_spend, (
        default,
        by_spend,
        by_log_spend,
    )
    width = {
        name: a[name]["cuped_ci_high"] - a[name]["cuped_ci_low"] for name in ("visit_7d", "visit_7d_by_spend")
    }
    assert width["visit_7d_by_spend"] < width["visit_7d"]
    assert a["visit_7d"]["verdict"] == "ship" and a["visit_7d"]["verdict_reason"].startswith("visit_7d +")


def test_a_metric_from_the_companys_sql_file_is_computed_and_tested(tmp_path) -> None:
    from tests import tiny

    con, settings, campaign, truth = spring_company(tmp_path)
    rows, _ = ex.analyse_campaign(con, campaign, settings, tiny.context())
    basket = rows_of(rows, "a")["basket_cents"]
    holdout = rows_of(rows, "holdout")["basket_cents"]
    # measured once its 14 days closed (sent by Feb 16), the value the file returns: 2,000 cents a purchase
    treated, bought = truth["treated"], truth["bought"]
    closed = np.array([s <= datetime(2026, 2, 16, 0) for s in truth["sent_at"]])
    assert basket["units"] == int((treated & closed).sum()) and holdout["units"] == int(
        (~treated & closed).sum()
    )
    assert basket["mean"] == pytest.approx(2000 * bought[treated & closed].mean())
    assert basket["control_mean"] == pytest.approx(2000 * bought[~treated & closed].mean())
    assert basket["test"] == "welch" and basket["untested_reason"] is None
    assert basket["is_significant"] and basket["ci_low"] > 0
    metric = ex.catalogue_metrics(settings.experiments)["basket_cents"]
    assert ex.effect_in_words(basket, metric).startswith(f"basket_cents {basket['cuped_diff']:+,.2f} cents")
    # its pre-period is the file's value_before: no purchases before the sends, so nothing to adjust by
    assert basket["cuped_interval_narrowing"] == pytest.approx(0.0, abs=1e-12)


def test_a_metric_sql_file_or_covariate_that_does_not_fit_is_a_config_error_naming_it(tmp_path) -> None:
    from tailor.config import ConfigError
    from tests import tiny

    con, settings, campaign, _ = spring_company(tmp_path)
    sql_file = tmp_path / "basket.sql"
    only_basket = campaign.model_copy(update={"primary_metric": "basket_cents", "guardrails": []})
    for text, expected in (
        ("select user_id, sent_at from staging.stg_campaign_exposures", "returns no value column"),
        ("select user_id, sent_at, 1 as value from staging.stg_campaign_exposures "
         "union all select user_id, sent_at, 2 from staging.stg_campaign_exposures", "more than one row for a unit"),
        ("select user_id, sent_at, 1 as value from no_such_table", "fails: Catalog Error"),
    ):  # fmt: skip
        sql_file.write_text(text)
        with pytest.raises(ConfigError, match=r"key 'experiments\.metrics\.basket_cents\.sql'") as error:
            ex.analyse_campaign(con, only_basket, settings, tiny.context())
        assert expected in str(error.value)
    # a binary metric's file must return 0 or 1
    binary = settings.experiments.metrics["basket_cents"].model_copy(update={"kind": "binary"})
    binary_settings = settings.model_copy(update={"experiments": settings.experiments.model_copy(
        update={"metrics": settings.experiments.metrics | {"basket_cents": binary}})})  # fmt: skip
    sql_file.write_text("select user_id, sent_at, 2 as value from staging.stg_campaign_exposures")
    with pytest.raises(ConfigError, match="values other than 0 and 1 for a binary metric"):
        ex.analyse_campaign(con, only_basket, binary_settings, tiny.context())
    # a covariate on a users column that is not a number, or not there at all
    for covariate, expected in (("country", "a users column of type String, not a number"),
                                ("loyalty_tier", "'loyalty_tier' is not a column of staging.stg_users")):  # fmt: skip
        metric = settings.experiments.metrics["visit_7d"].model_copy(update={"covariate": covariate})
        bad = settings.model_copy(update={"experiments": settings.experiments.model_copy(
            update={"metrics": {"visit_7d": metric}})})  # fmt: skip
        with pytest.raises(ConfigError, match=expected):
            ex.analyse_campaign(con, campaign.model_copy(update={"guardrails": []}), bad, tiny.context())


def test_a_campaign_on_exposure_outcomes_alone_needs_no_event_metrics(tmp_path) -> None:
    from tests import tiny

    con, settings, campaign, truth = spring_company(tmp_path)
    plain = campaign.model_copy(
        update={"primary_metric": "conversion_rate", "guardrails": ["revenue_per_user"]}
    )
    rows, summary = ex.analyse_campaign(con, plain, settings, tiny.context())
    assert {row["metric"] for row in rows} == {"conversion_rate", "revenue_per_user"}
    assert summary["units_by_arm"] == {
        "a": int(truth["treated"].sum()),
        "holdout": int((~truth["treated"]).sum()),
    }
    # nobody converted: a difference of zero, tested
    conversion = rows_of(rows, "a")["conversion_rate"]
    assert conversion["diff"] == 0 and conversion["untested_reason"] is None


def test_the_uplift_learners_fit_on_a_seeded_sample_of_at_most_max_training_units(
    trained_company, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tailor import uplift
    from tailor.tasks.experiments import chosen_learner

    settings = trained_company[0]
    uplift_config = settings.experiments.uplift.model_copy(
        update={"max_training_units": 1_000, "learners": ["two_model"]}
    )
    settings = settings.model_copy(
        update={"experiments": settings.experiments.model_copy(update={"uplift": uplift_config})}
    )
    fitted_rows = []
    real = uplift.FIT["two_model"]

    def recording(x, treated, y, categorical, boosting):
        fitted_rows.append((len(x), x[:, 0].sum()))
        return real(x, treated, y, categorical, boosting)

    monkeypatch.setitem(uplift.FIT, "two_model", recording)
    rng = np.random.default_rng(0)
    x = rng.random((5_000, 3))
    treated, y = rng.random(5_000) < 0.5, (rng.random(5_000) < 0.2).astype(float)
    parts = np.where(np.arange(5_000) < 4_000, uplift.TRAIN, uplift.VALIDATION)
    chosen_learner(x, treated, y, [], parts, settings)
    chosen_learner(x, treated, y, [], parts, settings)
    assert fitted_rows[0][0] == 1_000 and fitted_rows[0] == fitted_rows[1]  # the same sample: the seed's
    fitted_rows.clear()
    fewer = np.where(np.arange(5_000) < 800, uplift.TRAIN, uplift.VALIDATION)
    chosen_learner(x, treated, y, [], fewer, settings)
    assert fitted_rows[0] == (800, x[:800, 0].sum())  # under the cap: every training unit
