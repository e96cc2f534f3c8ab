from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
import yaml

from tailor.config import RankingConfig, Settings, load_settings
from tailor.tasks.repeats import RepeatDecision
from tailor.tasks.repeats import save as save_repeats
from tailor.tasks.retrain import model_signature, record_training, retrain_reason
from tailor.tasks.train import ensure_registry
from tailor.warehouse import run_context

TRAINED_ON = date(2026, 11, 21)
ALLOWED = RepeatDecision("auto", True, 0.5, 100, "allowed")
NOT_ALLOWED = RepeatDecision("auto", False, 0.01, 100, "not allowed")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    config = {
        "project": "acme",
        "sources": {name: {"path": f"data/{name}/*.csv"} for name in ("users", "consents", "items", "interactions")},
        "publish": {"target": "file://out", "published_user_id": "external"},
        "registry": {"retrain_every_days": 7},
    }
    path = tmp_path / "tailor.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path)


def trained_warehouse(settings: Settings, model_file: Path) -> duckdb.DuckDBPyConnection:
    """A warehouse whose last training was TRAINED_ON, leaving a ranker served from `model_file`."""
    con = duckdb.connect()
    ensure_registry(con)
    con.execute(
        "insert into meta.models (run_date, model_name, serving_json) values ($d, 'ranking', $serving)",
        {"d": TRAINED_ON, "serving": json.dumps({"served_by": "model", "path": str(model_file)})},
    )
    record_training(con, settings, TRAINED_ON)
    save_repeats(con, TRAINED_ON, ALLOWED)
    return con


def reason_on(con: duckdb.DuckDBPyConnection, settings: Settings, days_later: int, repeats: RepeatDecision = ALLOWED):
    ctx = run_context(settings, TRAINED_ON + timedelta(days=days_later))
    save_repeats(con, ctx.run_date, repeats)
    return retrain_reason(con, settings, ctx)


def test_the_nights_between_trainings_score_with_the_serving_models(settings: Settings, tmp_path: Path) -> None:
    model = tmp_path / "ranking.txt"
    model.write_text("a model")
    con = trained_warehouse(settings, model)
    assert [reason_on(con, settings, days) for days in range(1, 7)] == [None] * 6
    assert "7 night(s) ago" in reason_on(con, settings, 7)
    # a rerun of the training night trains again, as that night did
    assert "no earlier training" in str(retrain_reason(con, settings, run_context(settings, TRAINED_ON)))


def test_every_night_trains_by_default(settings: Settings, tmp_path: Path) -> None:
    model = tmp_path / "ranking.txt"
    model.write_text("a model")
    nightly = settings.model_copy(update={"registry": settings.registry.model_copy(update={"retrain_every_days": 1})})
    con = trained_warehouse(nightly, model)
    assert "registry.retrain_every_days: 1" in reason_on(con, nightly, 1)


def test_what_the_models_were_trained_under_changing_retrains_the_next_night(
    settings: Settings, tmp_path: Path
) -> None:
    model = tmp_path / "ranking.txt"
    model.write_text("a model")
    con = trained_warehouse(settings, model)
    changed = settings.model_copy(update={"ranking": RankingConfig(popular_candidates=7)})
    assert model_signature(changed) != model_signature(settings)
    assert "model settings" in reason_on(con, changed, 2)
    # the cadence itself and the publish target change no model
    cadence = settings.model_copy(update={"registry": settings.registry.model_copy(update={"retrain_every_days": 3})})
    assert model_signature(cadence) == model_signature(settings)
    assert "repeat-purchase decision" in reason_on(con, settings, 2, NOT_ALLOWED)
    model.unlink()
    assert "ranking" in reason_on(con, settings, 3) and "missing" in reason_on(con, settings, 3)
