"""The experiments flow on its own, for real: Prefect (test harness), DuckDB and a local target."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from tailor.flows.experiments import EXPERIMENT_DATASETS, experiments
from tests.conftest import RUN_DATE
from tests.published import pointer, run_folder

pytestmark = pytest.mark.integration


def test_the_experiments_flow_publishes_under_its_own_prefix(company: Path, prefect_harness) -> None:
    config_path = company / "tailor.yaml"
    config = yaml.safe_load(config_path.read_text())
    published = company / "published"
    config["publish"]["target"] = published.as_uri()
    config_path.write_text(yaml.safe_dump(config))

    summary = experiments(config_path=str(config_path), run_date=RUN_DATE)

    assert set(summary["experiments"]) == {"weekly_digest", "app_nudge"}
    latest = json.loads((published / "experiments" / "latest.json").read_text())
    assert latest == pointer(published, RUN_DATE, root="experiments")  # the date's pointer names the same
    assert latest["run_date"] == RUN_DATE.isoformat()
    assert latest["manifest"] == f"experiments/{RUN_DATE}/{latest['attempt']}/manifest.json"
    run = run_folder(published, RUN_DATE, root="experiments")
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["datasets"]) == set(EXPERIMENT_DATASETS)
    results = pl.read_parquet(run / "experiment_results" / "part-0000.parquet")
    assert set(results["campaign_id"]) == {"weekly_digest", "app_nudge"}
    assert results.height == manifest["datasets"]["experiment_results"]["rows"]
    # no model has served yet, yet the uplift evaluation runs on sends and outcomes alone: a row per variant
    uplift = pl.read_parquet(run / "uplift_evaluation" / "part-0000.parquet")
    assert manifest["datasets"]["uplift_evaluation"]["rows"] == uplift.height == 5
    assert (
        set(uplift["campaign_id"]) == {"weekly_digest", "app_nudge"}
        and uplift["policy_reason"].is_not_null().all()
    )
    # the generated sends carry their logging propensity: every campaign's policies are valued off-policy
    policies = pl.read_parquet(run / "policy_evaluation" / "part-0000.parquet")
    assert policies.height == manifest["datasets"]["policy_evaluation"]["rows"]
    as_logged = policies.filter((pl.col("policy") == "as_logged") & (pl.col("metric") == "conversion_rate"))
    assert set(as_logged["campaign_id"]) == {"weekly_digest", "app_nudge"}
    assert as_logged["value"].is_not_null().all() and as_logged["reason"].is_null().all()
    assert ((as_logged["ci_low"] <= as_logged["value"]) & (as_logged["value"] <= as_logged["ci_high"])).all()
    # the personalized policy as the gate runs it (no model proven on 800 users: the best single variant),
    # valued on the uplift test users' sends only
    personalized = policies.filter(
        (pl.col("policy") == "personalized") & (pl.col("metric") == "conversion_rate") & (pl.col("estimator") == "snipw")
    ).join(as_logged.filter(pl.col("estimator") == "snipw").select("campaign_id", all_rows="logged_rows"), on="campaign_id")
    assert personalized.height == 2
    for row in personalized.to_dicts():
        assert "the best single variant" in row["reason"] and "test users" in row["reason"], row["reason"]
        assert 0 < row["logged_rows"] < row["all_rows"]
    assert "<svg" in (run / "report.html").read_text()
    # the nightly run's own layout is untouched
    assert not (published / "latest.json").exists() and not (published / "runs").exists()
