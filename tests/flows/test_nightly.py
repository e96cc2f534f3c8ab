"""The whole nightly flow, for real: Prefect (test harness), Great Expectations, DuckDB, LightGBM, and a
SeaweedFS S3 server started on a free loopback port."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import date
from pathlib import Path

import boto3
import pytest
import yaml

from tailor.config import load_settings
from tailor.flows.nightly import nightly
from tailor.schema import DATASET_NAMES
from tailor.tasks.validate import DataQualityError
from tailor.warehouse import connect
from tests.conftest import RUN_DATE, TEST_BUCKET

pytestmark = pytest.mark.integration
BRAZE = ("user_updates", "user_deletes")


@pytest.fixture
def s3_company(company: Path, s3_server) -> tuple[Path, str]:
    """The small company publishing pseudonymous ids to its own prefix on the test S3 server."""
    config_path = company / "tailor.yaml"
    config = yaml.safe_load(config_path.read_text())
    prefix = f"nightly-{uuid.uuid4().hex[:8]}"
    config["storage"] = {"endpoint_url": s3_server.endpoint_url}
    config["publish"] = {"target": f"s3://{TEST_BUCKET}/{prefix}", "published_user_id": "pseudonymous"}
    config_path.write_text(yaml.safe_dump(config))
    return config_path, prefix


def s3(s3_server):
    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")


def read_json(client, key: str) -> dict:
    return json.loads(client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read())


def published_hashes(client, prefix: str, folder: str, manifest: dict) -> dict[str, str]:
    """SHA-256 of every file the manifest lists, read from the attempt folder a pointer names."""
    hashes = {}
    for dataset in manifest["datasets"].values():
        for file in dataset["files"]:
            key = f"{prefix}/{folder}/{file['path']}"
            hashes[file["path"]] = hashlib.sha256(
                client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read()
            ).hexdigest()
    return hashes


def without_braze_stamps(manifest: dict) -> dict:
    """The manifest less what a rerun changes on purpose: Braze's UPDATED_AT, and so its files' bytes."""
    copy = json.loads(json.dumps(manifest))
    copy.pop("braze")
    for name in BRAZE:
        for file in copy["datasets"][name]["files"]:
            del file["bytes"], file["sha256"]
    return copy


def test_nightly_publishes_a_consistent_run_and_reruns_identically(
    s3_company, s3_server, prefect_harness
) -> None:
    config_path, prefix = s3_company
    summary = nightly(config_path=str(config_path), run_date=RUN_DATE)
    client = s3(s3_server)

    latest = read_json(client, f"{prefix}/latest.json")
    assert latest["run_date"] == RUN_DATE.isoformat() and latest["folder"].startswith(f"runs/{RUN_DATE}/")
    assert latest["manifest"] == f"{latest['folder']}/manifest.json"
    assert read_json(client, f"{prefix}/runs/{RUN_DATE}/latest.json") == latest  # the date's own pointer
    folder = f"{prefix}/{latest['folder']}"
    manifest = read_json(client, f"{prefix}/{latest['manifest']}")
    assert manifest["run_date"] == RUN_DATE.isoformat()
    assert manifest["config_sha256"] == load_settings(config_path).config_sha256
    assert {"propensity", "ranking"} <= set(manifest["models"])
    assert all(
        name in {"propensity", "ranking", "engagement"} or name.startswith("conversion_")
        for name in manifest["models"]
    )
    assert manifest["data_quality"]["success"] is True
    assert set(manifest["datasets"]) == set(DATASET_NAMES)
    assert set(manifest["outputs"]["campaigns"]) == {"weekly_digest", "app_nudge"}
    assert manifest["data_docs"] == {
        "raw": "data_docs/raw/index.html",
        "features": "data_docs/features/index.html",
    }
    docs = client.get_object(Bucket=TEST_BUCKET, Key=f"{folder}/data_docs/raw/index.html")
    assert b"<html" in docs["Body"].read().lower()
    # the experiment analysis ran before allocation and its results and report are published
    assert set(manifest["outputs"]["experiments"]) == {"weekly_digest", "app_nudge"}
    assert manifest["datasets"]["experiment_results"]["rows"] > 0
    assert manifest["datasets"]["allocation_decisions"]["rows"] == 7  # 3 + 2 variants and 2 holdouts
    assert manifest["report"] == "report.html"
    report = client.get_object(Bucket=TEST_BUCKET, Key=f"{folder}/report.html")["Body"].read()
    assert b"Campaign weekly_digest" in report and b"<svg" in report and b"<script" not in report

    settings = load_settings(config_path)
    with connect(settings) as con:
        for name in (
            "recommendations",
            "user_scores",
            "segments",
            "content",
            "personalize_batch",
            "user_updates",
        ):
            rows = con.execute(f"select count(*) from marts.{name}").fetchall()[0][0]
            dataset = manifest["datasets"][name]
            assert rows > 0 and dataset["rows"] == rows, name
            assert sum(f["rows"] for f in dataset["files"] if f["format"] == "parquet") == rows
            assert "email" not in dataset["columns"]
            assert {"user_id", "EXTERNAL_ID"} & set(dataset["columns"]), name
        raw_interactions = con.execute("select count(*) from raw.interactions").fetchall()[0][0]
        checks = con.execute(
            "select count(*) from marts.data_quality where run_date = $d", {"d": RUN_DATE}
        ).fetchall()[0][0]
    # the summary's and the manifest's counts add up to the night's published data_quality rows
    quality = manifest["data_quality"]
    assert quality["expectations"] == checks == sum(quality["checks_by_stage"].values())
    assert quality["checks_by_stage"]["published files"] > 0 and summary["data_quality"] == quality
    from tailor.cli import checks_by_stage

    # in the night's order on the summary, whatever order the manifest's JSON keeps
    assert re.fullmatch(r"\d+ on sources, \d+ on features, \d+ on published files", checks_by_stage(quality))
    assert [uri.rsplit("/", 2)[1] for uri in summary["published"]["data_docs"]] == ["features", "raw"]
    assert manifest["datasets"]["recommendations"]["model_versions"] == {
        "ranking": manifest["models"]["ranking"]["version"]
    }

    first = published_hashes(client, prefix, latest["folder"], manifest)
    for dataset in manifest["datasets"].values():
        for file in dataset["files"]:
            assert first[file["path"]] == file["sha256"]
    assert any(f.endswith(".csv") for f in first)

    # published ids are pseudonyms, not the company's ids
    import polars as pl

    key = f"{folder}/recommendations/part-0000.parquet"
    body = client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read()
    users = pl.read_parquet(body)["user_id"]
    assert users.str.contains(r"^[0-9a-f]{32}$").all()
    assert summary["published"]["latest_moved"] is True

    # Braze's own prefix holds the night's feeds, the files the manifest names
    for name in BRAZE:
        for file in manifest["braze"][name]:
            body = client.get_object(Bucket=TEST_BUCKET, Key=f"{prefix}/{file['path']}")["Body"].read()
            assert file["path"].startswith(f"braze/{name}/")
            assert hashlib.sha256(body).hexdigest() == file["sha256"]

    # the same night again: same rows loaded, byte-identical files, in a new attempt the pointers moved to.
    # Braze's feeds alone differ, on purpose: the same rows with a later UPDATED_AT (Braze's warehouse sync
    # takes only rows newer than the last it synced), in new files under braze/ (its S3 sync ingests each
    # new file), so their checksums and the manifest's braze entry differ; their rows are compared instead
    nightly(config_path=str(config_path), run_date=RUN_DATE)
    moved = read_json(client, f"{prefix}/runs/{RUN_DATE}/latest.json")
    assert moved["attempt"] != latest["attempt"] and read_json(client, f"{prefix}/latest.json") == moved
    again = read_json(client, f"{prefix}/{moved['manifest']}")
    feeds = {file["path"] for name in BRAZE for file in manifest["datasets"][name]["files"]}
    rerun = published_hashes(client, prefix, moved["folder"], again)
    assert {path: sha for path, sha in rerun.items() if path not in feeds} == {
        path: sha for path, sha in first.items() if path not in feeds
    }
    assert without_braze_stamps(again) == without_braze_stamps(manifest)
    assert again["braze"]["updated_at"] > manifest["braze"]["updated_at"]
    for name in BRAZE:
        keys = [f"{prefix}/{published['braze'][name][0]['path']}" for published in (manifest, again)]
        before, after = (
            pl.read_parquet(client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read()) for key in keys
        )
        assert keys[0] != keys[1] and after.drop("UPDATED_AT").equals(before.drop("UPDATED_AT")), name
        assert after["UPDATED_AT"].min() > before["UPDATED_AT"].max() if before.height else True
    with connect(settings) as con:
        assert con.execute("select count(*) from raw.interactions").fetchall()[0][0] == raw_interactions


def test_a_failed_gate_publishes_nothing_and_keeps_the_previous_run(
    s3_company, s3_server, prefect_harness
) -> None:
    config_path, prefix = s3_company
    nightly(config_path=str(config_path), run_date=RUN_DATE)
    client = s3(s3_server)
    before = read_json(client, f"{prefix}/latest.json")

    bad = config_path.parent / "sources" / "interactions" / f"{RUN_DATE}.csv"
    bad.write_text("user_id,item_id,event_type,occurred_at,value\nu001,i001,view,2031-01-01 00:00:00,\n")
    next_day = date.fromordinal(RUN_DATE.toordinal() + 1)
    state = nightly(config_path=str(config_path), run_date=next_day, return_state=True)
    assert state.is_failed()
    with pytest.raises(DataQualityError) as failure:
        state.result()
    message = str(failure.value)
    assert "interactions: quarantine_share" in message and "not_in_future on occurred_at: 1" in message
    assert f"sources/interactions/{RUN_DATE}.csv" in message  # the message names the file
    assert "interactions: volume" in message
    assert read_json(client, f"{prefix}/latest.json") == before
    listed = client.list_objects_v2(Bucket=TEST_BUCKET, Prefix=f"{prefix}/runs/{next_day}/")
    assert listed["KeyCount"] == 0
    assert re.match(r"\d{4}-\d{2}-\d{2}", before["run_date"])


def test_a_bad_file_fails_once_without_pointless_retries(company: Path, prefect_harness) -> None:
    (company / "sources" / "items" / "2026-11-20.csv").write_text("")
    state = nightly(config_path=str(company / "tailor.yaml"), run_date=RUN_DATE, return_state=True)
    assert state.is_failed()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
    extract_runs = [
        r for r in runs if r.flow_run_id == state.state_details.flow_run_id and r.name.startswith("extract")
    ]
    assert len(extract_runs) == 1 and extract_runs[0].run_count == 1
    from tailor.tasks.extract import ExtractError

    with pytest.raises(ExtractError, match=r"items/2026-11-20\.csv: file is empty"):
        state.result()


def test_a_target_that_cannot_take_the_output_fails_before_extract(
    company: Path, s3_server, prefect_harness
) -> None:
    import time

    from prefect.client.orchestration import get_client

    from tailor.storage import StorageError

    config_path = company / "tailor.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["storage"] = {"endpoint_url": s3_server.endpoint_url}
    config["publish"]["target"] = "s3://no-such-bucket/nightly"
    config_path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    state = nightly(config_path=str(config_path), run_date=RUN_DATE, return_state=True)
    assert state.is_failed() and time.monotonic() - started < 60
    with pytest.raises(StorageError) as error:
        state.result()
    assert str(error.value) == (
        "publish target s3://no-such-bucket/nightly failed its write check: bucket 'no-such-bucket' does not exist"
    )
    with get_client(sync_client=True) as client:
        names = [r.name for r in client.read_task_runs() if r.flow_run_id == state.state_details.flow_run_id]
    assert any(name.startswith("check-target") for name in names)
    assert not any(name.startswith("extract") for name in names)
