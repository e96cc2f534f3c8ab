"""A night between trainings (registry.retrain_every_days) scores with the models the last training night left,
and builds only the scoring cutoff's features."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tailor.config import load_settings
from tailor.flows.nightly import nightly
from tailor.warehouse import connect
from tests.conftest import RUN_DATE
from tests.flows.test_operations import configure

pytestmark = pytest.mark.integration


def test_the_night_after_a_training_scores_with_its_models_and_builds_no_training_features(
    company: Path, prefect_harness
) -> None:
    config_path = configure(company, registry={"retrain_every_days": 7})
    trained = nightly(config_path=str(config_path), run_date=RUN_DATE - timedelta(days=1))
    scored = nightly(config_path=str(config_path), run_date=RUN_DATE)

    assert trained["models"] and all(model["trained"] for model in trained["models"].values())
    assert scored["models"] and not any(model["trained"] for model in scored["models"].values())
    # the same models serve: the versions the training night promoted
    versions = {name: model["version"] for name, model in trained["models"].items()}
    assert {name: model["version"] for name, model in scored["models"].items()} == versions
    # features at the scoring cutoff alone: one partition per model, where the training night built several
    per_model = lambda rows: {key.split("@")[0] for key in rows if "@" in key}  # noqa: E731
    assert sum(key.startswith("propensity_examples@") for key in trained["feature_rows"]) > 1
    assert [key for key in scored["feature_rows"] if key.startswith("propensity_examples@")] == [
        f"propensity_examples@{RUN_DATE:%Y-%m-%d}"
    ]
    assert per_model(scored["feature_rows"]) <= per_model(trained["feature_rows"])
    assert scored["scored"]["recommendations"] > 0
    settings = load_settings(config_path)
    with connect(settings) as con:
        trainings = con.execute("select run_date from meta.model_trainings order by 1").fetchall()
        registered = con.execute("select distinct run_date from meta.models order by 1").fetchall()
    assert trainings == registered == [(RUN_DATE - timedelta(days=1),)]
