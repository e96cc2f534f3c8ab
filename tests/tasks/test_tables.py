"""The BI tables (tasks/tables.py, docs/tables.md): every dataset a Delta Lake table partitioned by run date
beside the per-run files, read back with deltalake, DuckDB and polars."""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tailor.config import Settings
from tailor.storage import open_store
from tailor.tasks.publish import DATASETS, publish_attempt, write_parts
from tailor.tasks.tables import (
    PARTITION_COLUMN,
    TableError,
    dataset_key,
    partition_predicate,
    storage_options,
    tables_step,
)
from tests import tiny
from tests.conftest import REPO

D1, D2 = date(2026, 11, 21), date(2026, 11, 22)


def recommendations(day: date, users: list[str]) -> pa.Table:
    return pa.table(
        {
            "run_date": pa.array([day] * len(users), pa.date32()),
            "user_id": users,
            "rank": pa.array([1] * len(users), pa.int64()),
            "item_id": [f"i-{day.day}-{u}" for u in users],
        }
    )


def experiment_results(rows: list[tuple[date, str, float]]) -> pa.Table:
    """One row per (night, variant) of one campaign and metric; `window_start` is a naive UTC timestamp."""
    return pa.table(
        {
            "run_date": pa.array([r[0] for r in rows], pa.date32()),
            "campaign_id": ["weekly"] * len(rows),
            "variant_id": [r[1] for r in rows],
            "metric": ["conversion_rate"] * len(rows),
            "window_start": pa.array([datetime(2026, 11, 1)] * len(rows), pa.timestamp("us")),
            "mean": [r[2] for r in rows],
        }
    )


def user_updates(ids: list[str]) -> pa.Table:
    """A dataset without run_date (the table adds it)."""
    return pa.table(
        {
            "EXTERNAL_ID": ids,
            "UPDATED_AT": pa.array([datetime(2026, 11, 22, tzinfo=UTC)] * len(ids), pa.timestamp("us", "UTC")),
            "PAYLOAD": ["{}"] * len(ids),
        }
    )


def local_run(tmp_path: Path, day: date, tables: dict[str, pa.Table]) -> Path:
    """A publish folder as write_datasets leaves it: Parquet parts and a manifest listing them."""
    local = tmp_path / "runs" / day.isoformat() / f"publish-{uuid.uuid4().hex[:6]}"
    datasets = {}
    for name, table in tables.items():
        datasets[name] = {"rows": table.num_rows, "files": write_parts(table, local, name, 1000, ["parquet"])}
    (local / "manifest.json").write_text(json.dumps({"run_date": day.isoformat(), "datasets": datasets}))
    return local


def publish(settings: Settings, target: str, day: date, tables: dict[str, pa.Table], tmp_path: Path) -> dict:
    """What upload_run does for a nightly run: the attempt, then the tables, then the pointers."""
    local = local_run(tmp_path, day, tables)
    store = open_store(target, settings.storage)
    hook = tables_step(settings, store, target, local, day, "runs")
    return publish_attempt(store, local, day, before_pointers=hook)


def per_night(location: str, options: dict[str, str] | None = None) -> dict[str, int]:
    frame = pl.read_delta(location, storage_options=options)
    counts = frame.group_by(PARTITION_COLUMN).len().sort(PARTITION_COLUMN)
    return {str(day): n for day, n in counts.iter_rows()}


def test_the_contract_comes_from_docs_outputs_md() -> None:
    from tailor.contract import CONTRACT_DOC, load_contract

    assert CONTRACT_DOC == REPO / "docs" / "outputs.md"
    contract = load_contract()
    assert {"recommendations", "experiment_results", "allocation_decisions"} <= set(contract)
    assert contract["recommendations"]["rank"].arrow_type == "int64"
    assert contract["recommendations"]["rank"].meaning == "1 = best"


def test_a_partition_predicate_takes_a_date_and_nothing_else() -> None:
    assert partition_predicate(D1) == "run_date = '2026-11-21'"
    for value in ("2026-11-21' or true or '", datetime(2026, 11, 21)):
        with pytest.raises(TypeError):
            partition_predicate(value)  # type: ignore[arg-type]


def test_snapshots_are_partitions_a_rerun_replaces_and_history_is_counted_once(tmp_path: Path) -> None:
    published = tmp_path / "published"
    settings = tiny.settings(publish={"target": published.as_uri()})
    target = published.as_uri()
    night1 = {
        "recommendations": recommendations(D1, ["a", "b", "c"]),
        "experiment_results": experiment_results([(D1, "holdout", 0.1), (D1, "v1", 0.2)]),
        "user_updates": user_updates(["a", "b"]),
    }
    first = publish(settings, target, D1, night1, tmp_path)
    assert set(first["tables"]["tables"]) == set(night1)
    # the next night republishes the whole experiment history: tonight's rows and last night's again
    night2 = {
        "recommendations": recommendations(D2, ["a", "b"]),
        "experiment_results": experiment_results(
            [(D1, "holdout", 0.1), (D1, "v1", 0.2), (D2, "holdout", 0.3), (D2, "v1", 0.4)]
        ),
        "user_updates": user_updates(["c"]),
    }
    publish(settings, target, D2, night2, tmp_path)
    tables = published / "tables"
    assert per_night(str(tables / "recommendations")) == {"2026-11-21": 3, "2026-11-22": 2}
    assert per_night(str(tables / "experiment_results")) == {"2026-11-21": 2, "2026-11-22": 2}
    assert per_night(str(tables / "user_updates")) == {"2026-11-21": 2, "2026-11-22": 1}

    # a rerun of the second night with other rows: its partitions are replaced, the first night's stay as
    # they were published even where tonight's history recomputed them
    rerun = {
        "recommendations": recommendations(D2, ["a", "b", "c", "d"]),
        "experiment_results": experiment_results(
            [(D1, "holdout", 9.0), (D1, "v1", 9.0), (D2, "holdout", 0.5), (D2, "v1", 0.6), (D2, "v2", 0.7)]
        ),
        "user_updates": user_updates(["c"]),
    }
    again = publish(settings, target, D2, rerun, tmp_path)
    assert per_night(str(tables / "recommendations")) == {"2026-11-21": 3, "2026-11-22": 4}
    assert per_night(str(tables / "experiment_results")) == {"2026-11-21": 2, "2026-11-22": 3}
    results = pl.read_delta(str(tables / "experiment_results"))
    assert sorted(results.filter(pl.col("run_date") == D1)["mean"].to_list()) == [0.1, 0.2]
    # naive timestamps are UTC by the contract: the table says so (Delta `timestamp`, readable everywhere)
    assert results.schema["window_start"] == pl.Datetime("us", "UTC")
    assert again["tables"]["tables"]["experiment_results"]["backfilled_run_dates"] == []
    # each commit names the attempt it came from
    history = DeltaTable(str(tables / "recommendations")).history(1)[0]
    assert history["tailor.attempt"] == again["manifest"].removeprefix(target + "/").rsplit("/", 1)[0]
    assert (tables / "recommendations" / "run_date=2026-11-22").is_dir()


def test_a_history_table_switched_on_later_fills_in_the_nights_it_lacks(tmp_path: Path) -> None:
    published = tmp_path / "published"
    target = published.as_uri()
    off = tiny.settings(publish={"target": target, "tables": False})
    history = [(D1 - timedelta(days=1), "v1", 0.1), (D1, "v1", 0.2)]
    assert publish(off, target, D1, {"experiment_results": experiment_results(history)}, tmp_path)["tables"] is None
    assert not (published / "tables").exists()
    on = tiny.settings(publish={"target": target})
    result = publish(on, target, D2, {"experiment_results": experiment_results([*history, (D2, "v1", 0.3)])}, tmp_path)
    assert result["tables"]["tables"]["experiment_results"]["backfilled_run_dates"] == ["2026-11-20", "2026-11-21"]
    assert per_night(str(published / "tables" / "experiment_results")) == {
        "2026-11-20": 1,
        "2026-11-21": 1,
        "2026-11-22": 1,
    }


def test_a_snapshot_with_rows_of_another_night_or_a_changed_type_fails_the_upload(tmp_path: Path) -> None:
    published = tmp_path / "published"
    target = published.as_uri()
    settings = tiny.settings(publish={"target": target})
    with pytest.raises(TableError, match="recommendations: a snapshot dataset with rows for 2026-11-21"):
        publish(settings, target, D2, {"recommendations": recommendations(D1, ["a"])}, tmp_path)
    assert not (published / "latest.json").exists()  # the pointers did not move

    publish(settings, target, D1, {"recommendations": recommendations(D1, ["a"])}, tmp_path)
    changed = recommendations(D2, ["a"])
    changed = changed.set_column(2, "rank", pa.array(["1"]))
    with pytest.raises(TableError, match="rank is long in the table, string tonight"):
        publish(settings, target, D2, {"recommendations": changed}, tmp_path)
    assert json.loads((published / "latest.json").read_text())["run_date"] == D1.isoformat()


def test_tables_on_a_file_target_are_readable_by_others_whatever_the_umask(tmp_path: Path) -> None:
    published = tmp_path / "deep" / "published"
    target = published.as_uri()
    settings = tiny.settings(publish={"target": target})
    previous = os.umask(0o077)  # what a run sets for its private working files
    try:
        for day, users in ((D1, ["a", "b"]), (D2, ["a"]), (D2, ["b", "c"])):  # a rerun too
            publish(settings, target, day, {"recommendations": recommendations(day, users)}, tmp_path)
    finally:
        os.umask(previous)
    tables = published / "tables"
    paths = [tables, *tables.rglob("*")]
    names = {p.name for p in paths}
    assert {"_delta_log", "_schema.json", "athena.sql", "trino.sql", "run_date=2026-11-22"} <= names
    assert any(p.suffix == ".parquet" for p in paths) and any(p.parent.name == "_delta_log" for p in paths)
    wrong = [(str(p), oct(stat.S_IMODE(p.stat().st_mode))) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o755 if p.is_dir() else 0o644)]  # fmt: skip
    assert wrong == []


def test_s3_options_come_from_the_storage_config_and_the_aws_chain(monkeypatch) -> None:
    from tailor.config import StorageConfig

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert storage_options("file:///srv/published", StorageConfig()) is None
    options = storage_options("s3://bucket/prefix", StorageConfig(endpoint_url="http://127.0.0.1:8333"))
    assert options is not None
    assert options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8333" and options["AWS_ALLOW_HTTP"] == "true"
    assert options["AWS_ACCESS_KEY_ID"] == "key-id" and options["AWS_REGION"] == "us-east-1"
    # commits rely on S3's conditional put (If-None-Match): never on an unsafe rename
    assert "AWS_S3_ALLOW_UNSAFE_RENAME" not in options
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert "AWS_ENDPOINT_URL" not in (storage_options("s3://bucket/prefix", StorageConfig()) or {})


def test_the_key_of_each_dataset_is_in_its_published_names() -> None:
    keys = {dataset.name: dataset_key(dataset) for dataset in DATASETS}
    assert keys["recommendations"] == ["run_date", "user_id", "rank"]
    assert keys["experiment_results"] == ["run_date", "campaign_id", "metric", "variant_id"]
    assert keys["user_updates"] == ["run_date", "EXTERNAL_ID"]


def test_a_stale_writer_cannot_overwrite_a_commit_on_s3(s3_server) -> None:
    """Why no lock and no AWS_S3_ALLOW_UNSAFE_RENAME: deltalake commits with a conditional put, which
    SeaweedFS (like AWS S3) honours, so a writer that lost a race fails instead of overwriting a commit."""
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError

    from tailor.config import StorageConfig
    from tests.conftest import TEST_BUCKET

    target = f"s3://{TEST_BUCKET}/stale-{uuid.uuid4().hex[:8]}"
    options = storage_options(target, StorageConfig(endpoint_url=s3_server.endpoint_url))
    location = f"{target}/tables/recommendations"
    rows = recommendations(D1, ["a", "b"])
    write_deltalake(location, rows, mode="overwrite", partition_by=["run_date"], storage_options=options)
    first, stale = (DeltaTable(location, storage_options=options) for _ in range(2))
    write_deltalake(first, rows, mode="overwrite", predicate=partition_predicate(D1))
    with pytest.raises(CommitFailedError):
        write_deltalake(stale, rows, mode="overwrite", predicate=partition_predicate(D1))
    assert DeltaTable(location, storage_options=options).version() == 1


def documented_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "docs" / "tables.md").read_text(), re.S)


def run_documented(tables: str, endpoint: str) -> dict[str, Any]:
    """Every Python block of docs/tables.md, in order, against the given tables (the docs name the demo's)."""
    namespace: dict[str, Any] = {}
    for block in documented_blocks():
        code = block.replace("s3://tailor/published/tables", tables).replace("http://127.0.0.1:8333", endpoint)
        exec(compile(code, "docs/tables.md", "exec"), namespace)
    return namespace
