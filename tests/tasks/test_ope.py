"""Policy evaluation in the experiments stage (tasks/ope.py) on hand-made logs with known values: sends
randomised between a holdout and two variants whose conversion rates swap between two countries, so each
variant alone is worth 0.20 per send, and sending each country its better variant 0.30."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from tailor.config import load_settings
from tailor.sql import replace_run_rows
from tailor.tasks import ope as policy_evaluation
from tailor.tasks.experiments import DECISION_COLUMNS, ensure_tables
from tailor.warehouse import connect, run_context

RUN_DATE = date(2026, 11, 20)
START = datetime(2026, 10, 1)
HOLDOUT_SHARE = 0.2
# conversion rate by arm and country: a is better in FR, b in DE
RATES = {("a", "DE"): 0.10, ("a", "FR"): 0.30, ("b", "DE"): 0.30, ("b", "FR"): 0.10, ("holdout", "DE"): 0.05,
         ("holdout", "FR"): 0.05}  # fmt: skip
ARM_CHANCES = {"holdout": HOLDOUT_SHARE, "a": 0.4, "b": 0.4}


def settings_for(tmp_path, policy: str = "bandit", tolerance: float = 0.005):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "tailor.yaml"
    config.write_text(
        "project: t\nsources: {users: {path: u.csv}, consents: {path: c.csv}, items: {path: i.csv}, "
        "interactions: {path: e.csv}}\npublish: {target: file://out}\nwarehouse: {path: w.duckdb}\nseed: 11\n"
        "experiments: {ope_bootstrap_samples: 300}\n"
        f"campaigns:\n  - campaign_id: c\n    channel: push\n    holdout_share: {HOLDOUT_SHARE}\n"
        f"    allocation: {{policy: {policy}, context: country, contextual_tolerance: {tolerance}}}\n"
        "    variants: [{variant_id: a}, {variant_id: b}]\n"
    )
    return load_settings(config)


def logged(
    n: int, seed: int, rates: dict[tuple[str, str], float], with_propensity: bool = True
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    arms = list(ARM_CHANCES)
    arm = rng.choice(arms, size=n, p=list(ARM_CHANCES.values()))
    country = np.where(np.arange(n) % 2 == 0, "DE", "FR")
    converted = rng.random(n) < np.array([rates[(a, c)] for a, c in zip(arm, country, strict=True)])
    sent_at = [START + timedelta(days=int(d), hours=9) for d in rng.integers(0, 40, n)]
    return pl.DataFrame(
        {
            "campaign_id": "c",
            "variant_id": arm,
            "user_id": [f"u{i:05d}" for i in range(n)],
            "country": country,
            "sent_at": sent_at,
            "converted_at": [
                s + timedelta(hours=5) if c else None for s, c in zip(sent_at, converted, strict=True)
            ],
            "revenue_cents": np.where(converted, 2000, 0),
            "is_holdout": arm == "holdout",
            "position": pl.Series([None] * n, dtype=pl.Int64),
            "propensity": [ARM_CHANCES[a] if with_propensity else None for a in arm],
            "known_on": START.date(),
        }
    )


def warehouse(settings, sends: pl.DataFrame, decisions: list[dict] | None = None) -> None:
    with connect(settings) as con:
        ensure_tables(con)
        con.execute("create schema if not exists staging")
        users = sends.select(
            "user_id", "country", pl.lit("de").alias("language"), pl.lit(True).alias("is_latest")
        )
        con.register("exposures_frame", sends.drop("country").to_arrow())
        con.register("users_frame", users.to_arrow())
        con.execute("create or replace table staging.stg_campaign_exposures as select * from exposures_frame")
        con.execute("create or replace table staging.stg_users as select * from users_frame")
        for day in sorted({row["run_date"] for row in decisions or []}):
            replace_run_rows(con, "meta.allocation_decisions", DECISION_COLUMNS,
                             [row for row in decisions or [] if row["run_date"] == day], day)  # fmt: skip


def posteriors(
    a: tuple[float, float] = (200.0, 800.0), b: tuple[float, float] = (200.0, 800.0)
) -> list[dict]:
    return [{"campaign_id": "c", "variant_id": variant, "alpha": alpha, "beta": beta}
            for variant, (alpha, beta) in {"a": a, "b": b}.items()]  # fmt: skip


def evaluate(settings, rows: list[dict] | None = None) -> pl.DataFrame:
    ctx = run_context(settings, RUN_DATE)
    with connect(settings) as con:
        found = policy_evaluation.evaluate_policies(con, settings.campaigns[0], settings, ctx, START,
                                                    rows if rows is not None else posteriors())  # fmt: skip
        policy_evaluation.store_policy_evaluation(con, found, ctx)
    return pl.DataFrame(found)


def value(frame: pl.DataFrame, policy: str, estimator: str, metric: str = "conversion_rate") -> dict:
    rows = frame.filter(
        (pl.col("policy") == policy) & (pl.col("estimator") == estimator) & (pl.col("metric") == metric)
    )
    assert rows.height == 1, (policy, estimator, metric)
    return rows.row(0, named=True)


def test_each_policy_is_valued_within_its_interval_and_the_contextual_bandit_finds_the_better_variant(
    tmp_path,
) -> None:
    settings = settings_for(tmp_path)
    sends = logged(6000, seed=1, rates=RATES)
    warehouse(settings, sends)
    frame = evaluate(settings)
    on_policy = float(sends["converted_at"].is_not_null().mean())
    for estimator in ("ipw", "snipw", "dr"):
        for policy in ("variant:a", "variant:b"):
            row = value(frame, policy, estimator)
            assert row["ci_low"] <= 0.20 <= row["ci_high"], row
            assert row["logged_rows"] == 6000 and 0 < row["effective_sample_size"] < 6000
        # the bandit's posteriors are equal: half of each variant, 0.20 again
        bandit = value(frame, "bandit", estimator)
        assert bandit["ci_low"] <= 0.20 <= bandit["ci_high"], bandit
        # the policy as logged has weights of 1: exactly the mean conversion of the sends
        assert value(frame, "as_logged", estimator)["value"] == pytest.approx(on_policy)
        contextual = value(frame, "contextual_bandit", estimator)
        assert contextual["value"] > bandit["value"] + 0.05, (contextual, bandit)
    # revenue per send is the conversion rate times the 2,000 cents each conversion brought
    revenue = value(frame, "variant:a", "ipw", "revenue_per_send")
    assert revenue["value"] == pytest.approx(2000 * value(frame, "variant:a", "ipw")["value"])
    difference = value(frame, "contextual_bandit - bandit", "snipw_difference")
    assert difference["ci_low"] > 0, difference
    with connect(settings) as con:
        serves, why = policy_evaluation.contextual_verdict(
            con, settings.campaigns[0], run_context(settings, RUN_DATE)
        )
    assert serves and why.startswith("contextual bandit serves"), why


def test_without_a_context_effect_the_contextual_bandit_does_not_serve_at_zero_tolerance(tmp_path) -> None:
    settings = settings_for(tmp_path, tolerance=0.0)
    flat = {key: 0.2 if key[0] != "holdout" else 0.05 for key in RATES}
    warehouse(settings, logged(3000, seed=3, rates=flat))
    frame = evaluate(settings)
    difference = value(frame, "contextual_bandit - bandit", "snipw_difference")
    assert difference["ci_low"] < 0 < difference["ci_high"], difference
    with connect(settings) as con:
        serves, why = policy_evaluation.contextual_verdict(
            con, settings.campaigns[0], run_context(settings, RUN_DATE)
        )
    assert not serves and why.startswith("contextual bandit not better off-policy:"), why


def test_a_rerun_replaces_the_nights_rows(tmp_path) -> None:
    settings = settings_for(tmp_path)
    warehouse(settings, logged(500, seed=3, rates=RATES))
    first = evaluate(settings)
    evaluate(settings)
    with connect(settings) as con:
        stored = con.execute(
            "select count(*) from meta.policy_evaluation where run_date = $d", {"d": RUN_DATE}
        )
        assert stored.fetchall()[0][0] == first.height


def test_without_logged_propensities_the_decision_logs_bandit_shares_weigh_the_sends(tmp_path) -> None:
    settings = settings_for(tmp_path)
    sends = logged(4000, seed=4, rates=RATES, with_propensity=False)
    days = sorted({s.date() for s in sends["sent_at"]})
    # the decision log said a and b had half the contacted users each on every day but the first (the
    # holdout's row is there too: its share is the configured holdout share whatever the row says)
    decisions = [{"run_date": day, "campaign_id": "c", "variant_id": v, "policy": "bandit", "users": 10,
                  "share": 0.5, "previous_share": None, "reason": "thompson"}
                 for day in days[1:] for v in ("a", "b", "holdout")]  # fmt: skip
    warehouse(settings, sends, decisions)
    frame = evaluate(settings)
    first_day = int(sends.filter(pl.col("sent_at").dt.date() == days[0]).height)
    row = value(frame, "variant:a", "snipw")
    assert row["logged_rows"] == 4000 - first_day
    assert row["reason"] == f"{first_day:,} of 4,000 sends without a logging propensity left out"
    assert row["ci_low"] <= 0.20 <= row["ci_high"], row


def test_a_split_campaign_is_weighed_by_its_weights_and_a_personalized_one_is_skipped(tmp_path) -> None:
    split = settings_for(tmp_path / "split", policy="split")
    warehouse(split, logged(3000, seed=5, rates=RATES, with_propensity=False))
    row = value(evaluate(split), "variant:b", "ipw")
    assert row["reason"] is None and row["ci_low"] <= 0.20 <= row["ci_high"], row

    personalized = settings_for(tmp_path / "personalized", policy="personalized")
    warehouse(personalized, logged(3000, seed=5, rates=RATES, with_propensity=False))
    frame = evaluate(personalized)
    assert frame["value"].is_null().all()
    reasons = set(frame["reason"])
    assert reasons == {"no logging propensity for any of 3,000 sends: the exposures carry no `propensity` and the "
                       "allocation (personalized) logged no share every user had"}  # fmt: skip


def test_one_send_is_not_enough_data(tmp_path) -> None:
    settings = settings_for(tmp_path)
    warehouse(settings, logged(1, seed=6, rates=RATES))
    frame = evaluate(settings)
    assert frame["value"].is_null().all() and set(frame["logged_rows"]) == {1}
    assert set(frame["reason"]) == {"not enough data: 1 logged send(s) in the window"}
    with connect(settings) as con:
        serves, why = policy_evaluation.contextual_verdict(
            con, settings.campaigns[0], run_context(settings, RUN_DATE)
        )
    assert not serves and "not enough data" in why


def test_the_report_shows_each_policy_with_its_estimators_and_intervals(tmp_path) -> None:
    from tailor.tasks.report import policy_table

    settings = settings_for(tmp_path)
    warehouse(settings, logged(2000, seed=7, rates=RATES))
    frame = evaluate(settings)
    with connect(settings) as con:
        table = policy_table(con, "c", run_context(settings, RUN_DATE))
    assert [row["policy"] for row in table] == sorted(set(frame["policy"]))
    row = next(r for r in table if r["policy"] == "variant:a")
    snipw = value(frame, "variant:a", "snipw")
    low, high = snipw["ci_low"] * 100, snipw["ci_high"] * 100
    assert row["snipw"] == f"{snipw['value'] * 100:.2f}% ({low:.2f} to {high:.2f})"
    assert {"ipw", "snipw", "dr"} <= set(row)
    difference = next(r for r in table if r["policy"] == "contextual_bandit - bandit")
    assert difference["snipw_difference"].endswith(")") and " points (" in difference["snipw_difference"]
