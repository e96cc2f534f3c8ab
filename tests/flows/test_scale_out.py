"""The nightly flow with its shards on a local Dask cluster of two workers (prefect-dask), against the same
night run in this process: the same published files, byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
import yaml

from tailor.flows.nightly import nightly
from tests.conftest import RUN_DATE
from tests.published import run_folder

pytestmark = pytest.mark.integration


def configure(company: Path, compute: dict) -> Path:
    config_path = company / "tailor.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["compute"] = compute
    config["publish"]["target"] = (company / "published").as_uri()
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def dataset_files(company: Path, manifest: dict) -> dict[str, str]:
    """SHA-256 of each published file; of Braze's feeds, of their rows less UPDATED_AT, which is the
    publication's time (each run takes its own, later than any before) and so differs between the two runs."""
    root = run_folder(company / "published", RUN_DATE)
    hashes = {}
    for name, dataset in manifest["datasets"].items():
        for file in dataset["files"]:
            path = root / file["path"]
            if name in ("user_updates", "user_deletes"):
                rows = pl.read_parquet(path).drop("UPDATED_AT") if file["format"] == "parquet" else None
                body = b"" if rows is None else rows.write_ipc(None).getvalue()
            else:
                body = path.read_bytes()
            hashes[file["path"]] = hashlib.sha256(body).hexdigest()
    return hashes


def test_the_nightly_flow_on_a_two_worker_dask_cluster_publishes_what_the_local_run_does(
    company: Path, tmp_path: Path, prefect_harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    # the Dask workers are separate processes: they must report to the same Prefect server
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    on_dask = tmp_path / "on-dask"
    shutil.copytree(company, on_dask)
    local = nightly(config_path=str(configure(company, {"shards": 1})), run_date=RUN_DATE)
    before = shard_processes()
    assert set(before) == {os.getpid()}  # the local runner scores in this process
    dask_config = configure(on_dask, {"task_runner": "dask", "dask_workers": 2, "shards": 3})
    distributed = nightly(config_path=str(dask_config), run_date=RUN_DATE)

    assert distributed["scored"] == local["scored"] | {"shards": 3}
    assert distributed["campaigns"] == local["campaigns"]
    manifests = [json.loads((run_folder(c / "published", RUN_DATE) / "manifest.json").read_text())
                 for c in (company, on_dask)]  # fmt: skip
    assert manifests[0]["datasets"].keys() == manifests[1]["datasets"].keys()
    local_files, dask_files = dataset_files(company, manifests[0]), dataset_files(on_dask, manifests[1])
    assert local_files.keys() == dask_files.keys()
    assert [path for path in local_files if local_files[path] != dask_files[path]] == []
    # the shard tasks ran in the cluster's worker processes, not in this one
    on_cluster = shard_processes() - before
    assert on_cluster.total() == 3 and os.getpid() not in on_cluster


def shard_processes() -> Counter[int]:
    """The processes the score-shard task runs logged that they ran in."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId, TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="score-shard"))
        )
        logs = client.read_logs(
            log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[r.id for r in runs]))
        )
    return Counter(int(found[1]) for log in logs if (found := re.search(r"in process (\d+)", log.message)))
