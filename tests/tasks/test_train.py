from __future__ import annotations

import numpy as np
import polars as pl

from tailor.warehouse import connect
from tasks.features import cutoffs_for
from tasks.train import feature_matrix, seeded_validation_users, train_propensity, train_ranking


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
    assert [(r[0], r[1]) for r in rows] == [
        ("propensity", models["propensity"]["version"]),
        ("ranking", models["ranking"]["version"]),
    ]
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
