from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tailor.tasks.features import cutoffs_for
from tailor.tasks.train import (
    feature_matrix,
    seeded_validation_users,
    train_propensity,
    train_ranking,
)
from tailor.warehouse import connect
from tests import tiny


def test_models_beat_their_baselines_on_the_time_holdout(trained_company) -> None:
    _, _, models, quality = trained_company
    assert quality["success"]
    propensity = models["propensity"]["metrics"]
    assert propensity["roc_auc"] > 0.6
    assert propensity["log_loss"] < propensity["baseline"]["log_loss"]
    ranking = models["ranking"]["metrics"]
    assert ranking["ndcg_at_10"] > 1.5 * ranking["baseline"]["ndcg_at_10"]
    assert 0 < ranking["candidate_recall"] <= 1 and 0 < ranking["catalogue_coverage"] <= 1


def test_registry_and_model_files(trained_company) -> None:
    settings, ctx, models, _ = trained_company
    with connect(settings) as con:
        rows = con.execute(
            "select model_name, model_version, training_rows, len(features) from meta.models "
            "where run_date = $d order by model_name",
            {"d": ctx.run_date},
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(name, models[name]["version"]) for name in sorted(models)]
    assert all(r[2] > 0 and r[3] > 5 for r in rows)
    for model in models.values():
        assert model["version"] in model["path"]


def test_retraining_same_inputs_same_seed_gives_the_same_model(trained_company) -> None:
    settings, ctx, models, _ = trained_company
    cuts = cutoffs_for(settings, ctx)
    with connect(settings) as con:
        again = train_propensity(con, settings, ctx, cuts)
        ranking = train_ranking(con, settings, ctx, cuts)
    assert again.version == models["propensity"]["version"]
    assert again.training_data_sha256 == models["propensity"]["training_data_sha256"]
    assert ranking.version == models["ranking"]["version"]


def test_feature_matrix_encodes_categories_with_the_training_vocabulary() -> None:
    frame = pl.DataFrame({"country": ["DE", "FR", "XX", None], "n": [1, 2, 3, 4]})
    matrix = feature_matrix(frame, ("country", "n"), {"country": ["DE", "FR"]})
    assert matrix.dtype == np.float32
    assert matrix[:2, 0].tolist() == [0.0, 1.0] and np.isnan(matrix[2:, 0]).all()


def test_validation_users_are_seeded_and_whole() -> None:
    users = pl.Series(["a", "a", "b", "c", "c", "d"] * 50)
    mask = seeded_validation_users(users, 0.5, 42)
    assert (mask == seeded_validation_users(users, 0.5, 42)).all()
    by_user = pl.DataFrame({"u": users, "m": mask}).group_by("u").agg(pl.col("m").n_unique())
    assert (by_user["m"] == 1).all()


def test_champion_gate_keeps_a_better_champion(company, monkeypatch) -> None:
    from datetime import date

    from tailor.config import load_settings
    from tailor.tasks.extract import extract_sources
    from tailor.tasks.features import build_features
    from tailor.tasks.train import train_models
    from tailor.warehouse import run_context

    settings = load_settings(company / "tailor.yaml")
    first_day, next_day = run_context(settings, date(2026, 11, 20)), run_context(settings, date(2026, 11, 21))
    for ctx in (first_day, next_day):
        extract_sources.fn(settings, ctx)
        build_features.fn(settings, ctx)
    first = train_models.fn(settings, first_day)
    assert first["ranking"]["decision"].startswith("first ranking model: promoted (NDCG@10 ")
    assert "best baseline" in first["ranking"]["decision"]

    # a deliberately weak challenger (one tree on a tiny learning rate) must not replace the champion
    weak = load_settings(
        company / "tailor.yaml",
        {"ranking.n_estimators": 1, "ranking.learning_rate": 0.001, "ranking.num_leaves": 2},
    )
    second = train_models.fn(weak, next_day)
    assert second["ranking"]["version"] == first["ranking"]["version"]
    assert "the champion keeps scoring" in second["ranking"]["decision"]
    assert second["ranking"]["challenger_version"] != first["ranking"]["version"]
    assert "promoted" in second["propensity"]["decision"]  # an equal challenger is promoted
    with connect(settings) as con:
        rows = con.execute(
            "select run_date, model_version, is_promoted from meta.models where model_name = 'ranking' order by run_date"
        ).fetchall()
    assert [(str(r[0]), r[2]) for r in rows] == [("2026-11-20", True), ("2026-11-21", False)]


def test_platt_scaling_recovers_a_known_calibration() -> None:
    from tailor.calibration import apply_platt, calibration_table, fit_platt

    rng = np.random.default_rng(0)
    raw = rng.normal(0, 1, 50_000)
    labels = rng.random(raw.size) < 1 / (1 + np.exp(-(2 * raw - 1)))
    a, b = fit_platt(raw, labels)
    assert abs(a - 2) < 0.1 and abs(b + 1) < 0.1
    table = calibration_table(labels, apply_platt(raw, {"a": a, "b": b}))
    assert len(table) == 10
    assert all(abs(row["mean_predicted"] - row["observed_rate"]) < 0.03 for row in table)


def test_propensity_comes_within_003_of_the_true_probabilities(midsize_company) -> None:
    """On generated data the truth is known: the model's holdout AUC must come within 0.03 of the AUC
    that the generator's own conversion probabilities reach on the same users and window."""
    from tailor import metrics
    from tailor.generate import window_conversion_probability

    out, settings, ctx, models = midsize_company
    model = models["propensity"]
    holdout_cutoff = ctx.cutoff_minus(settings.propensity.horizon_days)
    with connect(settings) as con:
        holdout = con.sql(
            "select user_id, is_converted from features.propensity_examples where cutoff = $c order by user_id",
            params={"c": holdout_cutoff},
        ).pl()
    truth = holdout.join(
        pl.read_parquet(out / "truth" / "users.parquet"), on="user_id", maintain_order="left"
    )
    true_probability = window_conversion_probability(
        truth["daily_purchase_prob"].to_numpy(), holdout_cutoff.date(), settings.propensity.horizon_days
    )
    ceiling = metrics.roc_auc(truth["is_converted"].to_numpy(), true_probability)
    assert holdout.height > 3000
    assert model["metrics"]["roc_auc"] >= ceiling - 0.03, (model["metrics"]["roc_auc"], ceiling)
    # calibrated: on the holdout, mean predicted probability is close to the observed rate
    table = model["metrics"]["calibration_table"]
    predicted = sum(row["mean_predicted"] * row["users"] for row in table) / sum(
        row["users"] for row in table
    )
    assert abs(predicted - model["metrics"]["holdout_positive_rate"]) < 0.02


def test_conversion_models_are_trained_per_campaign_and_variant_on_earlier_sends(midsize_company) -> None:
    from tailor.tasks.train import CONVERSION_PREFIX, VARIANT_SEPARATOR

    _, settings, ctx, models = midsize_company
    conversions = {name: model for name, model in models.items() if name.startswith(CONVERSION_PREFIX)}
    assert conversions, "no conversion model was trained"
    variants_by_campaign: dict[str, set[str]] = {}
    for name, model in conversions.items():
        campaign_id, _, variant_id = name.removeprefix(CONVERSION_PREFIX).partition(VARIANT_SEPARATOR)
        variants_by_campaign.setdefault(campaign_id, set()).add(variant_id)
        assert "variant_id" not in model["features"] and "age_band" not in model["features"]
        assert model["metrics"]["holdout_sends"] > 0 and 0 <= model["metrics"]["roc_auc"] <= 1
        assert model["trained_cutoff"] < model["holdout_cutoff"], name
    # one model per variant, and the no-contact model of the uplift learner, fitted on the holdout's sends
    # one model per variant, and the no-contact model of the uplift learner; a model that learned nothing
    # (constant predictions) or no more than the constant rate is served by that rate, and says so
    assert variants_by_campaign["weekly_digest"] == {"discount", "editorial", "new_arrivals", "holdout"}
    for name, model in conversions.items():
        if model["served_by"] != "model":
            assert model["served_by"] == "baseline:constant_rate", name
            assert "constant_rate baseline serves instead" in model["decision"], model["decision"]
            assert model["baseline_serving"]["constant"] == model["metrics"]["training_positive_rate"]
    assert 0 < models["engagement"]["metrics"]["roc_auc"] <= 1
    with connect(settings) as con:
        # each send's features are the user's snapshot at or before the send, never a later one
        mismatched = con.execute(
            """
            with examples as (
                select *, (select max(cutoff) from features.user_features f where f.cutoff <= e.sent_at) as snap
                from features.campaign_click_examples e where e.cutoff = $c
            )
            select count(*) filter (where u.n_events_90d is distinct from examples.n_events_90d), count(*)
            from examples join features.user_features u on u.cutoff = examples.snap and u.user_id = examples.user_id
            """,
            {"c": ctx.cutoff},
        ).fetchall()[0]
    assert mismatched[0] == 0 and mismatched[1] > 0


def test_sensitive_attributes_reach_a_model_only_when_config_names_them(trained_company) -> None:
    from tailor.tasks.train import (
        PROPENSITY_FEATURES,
        SensitiveFeatureError,
        check_features,
        user_model_features,
    )

    settings, ctx, models, _ = trained_company
    assert not {"age_band", "gender"} & set(models["propensity"]["features"])
    # a sensitive attribute added to a feature list by mistake is stopped before fitting
    with pytest.raises(SensitiveFeatureError, match="gender"):
        check_features("propensity", (*PROPENSITY_FEATURES, "gender"), settings)
    # a column made sensitive by config leaves the features it was in
    country_sensitive = settings.model_copy(
        update={
            "privacy": settings.privacy.model_copy(
                update={"sensitive_attributes": ["age_band", "gender", "country"]}
            )
        }
    )
    assert "country" not in user_model_features(PROPENSITY_FEATURES, country_sensitive)
    # named in config, it is used, and the model's feature list says so
    allowed = settings.model_copy(
        update={"privacy": settings.privacy.model_copy(update={"sensitive_features": ["age_band"]})}
    )
    with connect(settings) as con:
        model = train_propensity(con, allowed, ctx, cutoffs_for(allowed, ctx))
    assert "age_band" in model.features and "gender" not in model.features
    assert "age_band" in model.categories


def test_sensitive_features_must_be_declared_sensitive_attributes() -> None:
    from tailor.config import PrivacyConfig

    with pytest.raises(ValueError, match="not in sensitive_attributes"):
        PrivacyConfig(sensitive_features=["country"])
    with pytest.raises(ValueError, match="not a users column"):
        tiny.settings(privacy={"sensitive_attributes": ["email"]})
    # a company's own attribute may be sensitive once it is declared
    declared = tiny.settings(
        privacy={"sensitive_attributes": ["gender", "health_flag"]},
        user_features={"attributes": {"health_flag": "categorical"}},
    )
    assert declared.privacy.sensitive_attributes == ["gender", "health_flag"]


def test_a_flow_that_does_not_train_serves_what_the_night_served(midsize_company) -> None:
    from tailor.tasks.train import serving_models

    _, settings, ctx, models = midsize_company
    again = serving_models.fn(settings, ctx)
    # a model the night did not serve (constant predictions, lost to its baseline) is not brought back
    assert set(again) == set(models)
    for name, model in models.items():
        assert again[name]["version"] == model["version"], name
        assert again[name].get("served_by") == model.get("served_by"), name


def test_model_decisions_write_small_tolerances_and_margins_plainly(tmp_path, monkeypatch) -> None:
    import re

    from tailor.tasks import train

    settings = tiny.settings(registry={"tolerance": 0.00005, "baseline_margin": 0.005})
    serves, warning = train.baseline_verdict(
        "propensity", {"metrics": {"roc_auc": 0.6}}, {"baselines": {"recency": {"roc_auc": 0.74}}}, settings
    )
    assert (serves, warning) == (
        "baseline:recency",
        "propensity: ROC AUC 0.6000 does not beat recency's 0.7400 (margin 0.5%): the recency baseline serves "
        "instead",
    )  # `.0%` wrote margin 0%
    path = tmp_path / "champion.txt"
    path.write_text("model")
    champion = {"version": "v1", "path": str(path), "features": ["f"], "metrics": {"roc_auc": 0.7}}
    monkeypatch.setattr(train, "current_champion", lambda *_args: champion)
    monkeypatch.setattr(train, "current_features", lambda *_args: ["f"])
    monkeypatch.setattr(train, "rescore_champion", lambda *_args: {"roc_auc": 0.7})
    challenger = train.TrainedModel("propensity", "v2", "", "", "", ["f"], {}, {}, 1, {"roc_auc": 0.69},
                                    10, "", str(path))  # fmt: skip
    _, promoted, decision = train.champion_gate(None, settings, tiny.context(), None, challenger)
    assert not promoted and decision == (
        "roc_auc 0.6900 is worse than champion v1's 0.7000 by more than 0.00005: the champion keeps scoring"
    )  # str(float) wrote 5e-05
    assert not re.search(r"\de[+-]\d", warning + decision)
