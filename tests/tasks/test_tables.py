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

import duckdb
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
            "UPDATED_AT": pa.array(
                [datetime(2026, 11, 22, tzinfo=UTC)] * len(ids), pa.timestamp("us", "UTC")
            ),
            "PAYLOAD": ["{}"] * len(ids),
        }
    )


def local_run(tmp_path: Path, day: date, tables: dict[str, pa.Table], user_id: str | None = None) -> Path:
    """A publish folder as write_datasets leaves it: Parquet parts and a manifest listing them (`user_id`:
    the manifest's word for the ids of the datasets that have a user_id column)."""
    local = tmp_path / "runs" / day.isoformat() / f"publish-{uuid.uuid4().hex[:6]}"
    datasets = {}
    for name, table in tables.items():
        files = write_parts(table, local, name, 1000, ["parquet"])
        kind = user_id if "user_id" in table.column_names else None
        datasets[name] = {"rows": table.num_rows, "files": files, "user_id": kind}
    (local / "manifest.json").write_text(json.dumps({"run_date": day.isoformat(), "datasets": datasets}))
    return local


def publish(settings: Settings, target: str, day: date, tables: dict[str, pa.Table], tmp_path: Path) -> dict:
    """What upload_run does for a nightly run: the attempt, then the tables, then the pointers."""
    local = local_run(tmp_path, day, tables, settings.publish.published_user_id)
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
    assert (
        publish(off, target, D1, {"experiment_results": experiment_results(history)}, tmp_path)["tables"]
        is None
    )
    assert not (published / "tables").exists()
    on = tiny.settings(publish={"target": target})
    result = publish(
        on, target, D2, {"experiment_results": experiment_results([*history, (D2, "v1", 0.3)])}, tmp_path
    )
    assert result["tables"]["tables"]["experiment_results"]["backfilled_run_dates"] == [
        "2026-11-20",
        "2026-11-21",
    ]
    assert per_night(str(published / "tables" / "experiment_results")) == {
        "2026-11-20": 1,
        "2026-11-21": 1,
        "2026-11-22": 1,
    }


def test_a_snapshot_is_stored_as_the_runs_night_and_a_changed_type_fails_the_upload(
    tmp_path: Path, caplog
) -> None:
    published = tmp_path / "published"
    target = published.as_uri()
    settings = tiny.settings(publish={"target": target})
    # rows a mart kept from an earlier night are what the run published: they are the run's night
    publish(settings, target, D2, {"recommendations": recommendations(D1, ["x"])}, tmp_path)
    assert per_night(str(published / "tables" / "recommendations")) == {"2026-11-22": 1}
    assert "recommendations rows carry run_date 2026-11-21; stored as the run's 2026-11-22" in caplog.text

    pointer = (published / "latest.json").read_text()
    changed = recommendations(D2, ["a"])
    changed = changed.set_column(2, "rank", pa.array(["1"]))
    with pytest.raises(TableError, match="rank is long in the table, string tonight"):
        publish(settings, target, D2, {"recommendations": changed}, tmp_path)
    assert (published / "latest.json").read_text() == pointer  # the pointers did not move
    assert (published / "runs" / "2026-11-22" / "latest.json").read_text() == pointer


def test_tables_on_a_file_target_are_readable_by_others_whatever_the_umask(tmp_path: Path) -> None:
    published = tmp_path / "deep" / "published"
    target = published.as_uri()
    settings = tiny.settings(publish={"target": target})
    previous = os.umask(0o077)  # what a run sets for its private working files
    try:
        for day, users in ((D1, ["id-a", "id-b"]), (D2, ["id-a"]), (D2, ["id-b", "id-c"])):  # a rerun too
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
    # the log keeps no per-file statistics, so no user id is copied into the commits
    log = "".join(p.read_text() for p in (tables / "recommendations" / "_delta_log").glob("*.json"))
    assert "id-" not in log and '"minValues"' not in log


def test_an_erasure_reaches_the_nights_the_tables_already_hold(tmp_path: Path) -> None:
    import hashlib
    import hmac

    from tailor.tasks.privacy import KEYED, ensure_register
    from tailor.tasks.tables import erase_from_table
    from tailor.warehouse import connect

    key = os.environ["TAILOR_PSEUDONYM_KEY"].encode()

    def keyed(user: str) -> str:
        return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()

    published = tmp_path / "published"
    target = published.as_uri()
    settings = tiny.settings(
        publish={"target": target, "published_user_id": "pseudonymous"},
        warehouse={"path": str(tmp_path / "tailor.duckdb"), "runs_dir": str(tmp_path / "runs")},
    )
    pseudonyms = {user: keyed(user)[:32] for user in ("u1", "u2", "u3")}
    publish(
        settings, target, D1, {"recommendations": recommendations(D1, list(pseudonyms.values()))}, tmp_path
    )
    # the second night's run erased u2: its rows are without them, and the register holds the keyed hash
    with connect(settings) as con:
        ensure_register(con)
        con.execute(
            "insert into meta.deletion_register values ($hash, $at, $day, $scheme)",
            {"hash": keyed("u2"), "at": datetime(2026, 11, 21, 8), "day": D2, "scheme": KEYED},
        )
    tonight = recommendations(D2, [pseudonyms["u1"], pseudonyms["u3"]])
    result = publish(settings, target, D2, {"recommendations": tonight}, tmp_path)
    assert result["tables"]["tables"]["recommendations"]["erased_run_dates"] == [D1.isoformat()]
    location = str(published / "tables" / "recommendations")
    table = pl.read_delta(location)
    assert pseudonyms["u2"] not in table["user_id"].to_list()
    assert per_night(location) == {"2026-11-21": 2, "2026-11-22": 2}
    again = publish(settings, target, D2, {"recommendations": tonight}, tmp_path)
    assert again["tables"]["tables"]["recommendations"]["erased_run_dates"] == []  # nothing left to erase

    # ids in lists (an audience's users) leave the lists; the rows stay
    from deltalake import write_deltalake

    audiences = pa.table({
        "run_date": pa.array([D1, D1], pa.date32()), "audience_id": ["i1", "i2"],
        "recommended_users": [[pseudonyms["u1"], pseudonyms["u2"]], [pseudonyms["u3"]]],
    })  # fmt: skip
    write_deltalake(str(tmp_path / "audiences"), audiences, partition_by=["run_date"])
    erased = erase_from_table("audiences", str(tmp_path / "audiences"), None, ["user_id"], ["recommended_users"],
                              {pseudonyms["u2"]}, {})  # fmt: skip
    assert erased == [D1.isoformat()]
    after = pl.read_delta(str(tmp_path / "audiences")).sort("audience_id")["recommended_users"].to_list()
    assert after == [[pseudonyms["u1"]], [pseudonyms["u3"]]]


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
        code = block.replace("s3://tailor/demo/tables", tables).replace("http://127.0.0.1:8333", endpoint)
        exec(compile(code, "docs/tables.md", "exec"), namespace)
    return namespace


# Two nights of the real nightly flow publishing to SeaweedFS, and a rerun of the second: the tables read
# with deltalake, DuckDB and polars, against the per-run files of the same nights.

NIGHT1 = date(2026, 11, 21)  # tests.conftest.RUN_DATE
NIGHT2 = NIGHT1 + timedelta(days=1)


def add_next_day_of_events(company: Path) -> None:
    """The last day's interactions again, a day later: a normal next day for the second night."""
    from tests.conftest import DATA_END

    last, new = DATA_END.isoformat(), NIGHT1.isoformat()
    lines = (company / "sources" / "interactions" / f"{last}.csv").read_text().splitlines()
    shifted = [lines[0], *(line.replace(f"{last} ", f"{new} ") for line in lines[1:])]
    (company / "sources" / "interactions" / f"{new}.csv").write_text("\n".join(shifted) + "\n")


def withdraw_profiling(company: Path, user_id: str) -> None:
    """`user_id` withdraws profiling consent on NIGHT1's day: one user's inputs change for the second night."""
    (company / "sources" / "consents" / f"{NIGHT1.isoformat()}.csv").write_text(
        f"user_id,purpose,is_granted,updated_at\n{user_id},profiling,false,{NIGHT1.isoformat()} 09:30:00\n"
    )


def payloads_by_published_id(config_path: Path) -> dict[str, str]:
    """The warehouse's payloads of the last night, keyed by the id Braze knows each user by."""
    from tailor.config import load_settings
    from tailor.tasks.braze import published_ids
    from tailor.warehouse import connect

    settings = load_settings(config_path)
    with connect(settings) as con:
        payloads = con.sql("select user_id, payload from marts.user_update_payloads").pl()
    ids = published_ids(payloads["user_id"], settings)
    joined = payloads.join(ids, on="user_id")
    return dict(zip(joined["external_id"], joined["payload"], strict=True))


def read_json(client, key: str) -> dict[str, Any]:
    from tests.conftest import TEST_BUCKET

    return json.loads(client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read())


def per_night_of_every_table(
    target: str, names: list[str], options: dict[str, str]
) -> dict[str, dict[str, int]]:
    return {name: per_night(f"{target}/tables/{name}", options) for name in names}


def jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date | datetime) else value


@pytest.fixture(scope="module")
def two_nights(small_company: Path, s3_server, prefect_harness, tmp_path_factory):
    """The small company published for NIGHT1 and NIGHT2 to its own prefix on the test S3 server; the
    counts per table and night after NIGHT2, then NIGHT2 is run again."""
    import shutil

    import boto3
    import yaml

    from tailor.config import StorageConfig
    from tailor.flows.nightly import nightly
    from tests.conftest import TEST_BUCKET

    company = tmp_path_factory.mktemp("tables") / "company"
    shutil.copytree(small_company, company, ignore=shutil.ignore_patterns("var", "published"))
    config_path = company / "tailor.yaml"
    config = yaml.safe_load(config_path.read_text())
    prefix = f"tables-{uuid.uuid4().hex[:8]}"
    target = f"s3://{TEST_BUCKET}/{prefix}"
    config["storage"] = {"endpoint_url": s3_server.endpoint_url}
    config["publish"] = {"target": target, "published_user_id": "pseudonymous"}
    config_path.write_text(yaml.safe_dump(config))
    options = storage_options(target, StorageConfig(endpoint_url=s3_server.endpoint_url))
    assert options is not None
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")

    first = nightly(config_path=str(config_path), run_date=NIGHT1)
    names = sorted(first["published"]["tables"]["tables"])
    after_first = per_night_of_every_table(target, names, options)
    add_next_day_of_events(company)
    # the user who withdraws: the first (by id) whose payload needed profiling on the first night
    from tailor.config import load_settings
    from tailor.warehouse import connect

    with connect(load_settings(config_path)) as con:
        [(withdrawn,)] = con.execute(
            "select min(user_id) from marts.user_update_payloads where needs_profiling"
        ).fetchall()
    withdraw_profiling(company, withdrawn)
    second = nightly(config_path=str(config_path), run_date=NIGHT2)
    after_second = per_night_of_every_table(target, names, options)
    payloads_second = payloads_by_published_id(config_path)

    def manifest_of(night: date) -> dict[str, Any]:
        return read_json(client, f"{prefix}/{read_json(client, f'{prefix}/runs/{night}/latest.json')['manifest']}")

    manifests = {night: manifest_of(night) for night in (NIGHT1, NIGHT2)}
    rerun = nightly(config_path=str(config_path), run_date=NIGHT2)
    return {
        "target": target, "prefix": prefix, "options": options, "client": client, "endpoint": s3_server.endpoint_url,
        "summaries": (first, second, rerun), "names": names, "after_first": after_first,
        "after_second": after_second, "manifests": manifests, "rerun_manifest": manifest_of(NIGHT2),
        "withdrawn": withdrawn, "payloads_second": payloads_second,
        "settings": load_settings(config_path),
    }  # fmt: skip


@pytest.mark.integration
def test_two_nights_are_two_partitions_and_a_rerun_changes_no_count(two_nights) -> None:
    target, options, names = two_nights["target"], two_nights["options"], two_nights["names"]
    manifests = two_nights["manifests"]
    assert set(names) == set(manifests[NIGHT2]["datasets"])  # every published dataset is a table
    rerun = two_nights["summaries"][2]
    assert rerun["published"]["tables"]["location"] == f"{target}/tables"
    assert manifests[NIGHT2]["tables"]["locations"]["recommendations"] == "tables/recommendations"
    after = per_night_of_every_table(target, names, options)
    assert after == two_nights["after_second"]  # the rerun replaced the second night, no count moved
    for name in names:
        rows = {str(night): manifests[night]["datasets"][name]["rows"] for night in (NIGHT1, NIGHT2)}
        history = next(d for d in DATASETS if d.name == name).history
        assert after[name].get(str(NIGHT1), 0) == two_nights["after_first"][name].get(str(NIGHT1), 0), name
        if history:
            # the second night's files repeat the first night's rows; the table holds each once
            assert sum(after[name].values()) == rows[str(NIGHT2)], name
            assert after[name].get(str(NIGHT1), 0) == rows[str(NIGHT1)], name
        else:
            assert {night: n for night, n in after[name].items()} == {n: r for n, r in rows.items() if r}, (
                name
            )
    assert after["experiment_results"][str(NIGHT1)] > 0 and after["experiment_results"][str(NIGHT2)] > 0
    assert after["recommendations"][str(NIGHT1)] > 0 and after["recommendations"][str(NIGHT2)] > 0
    # the rerun's commit replaced its night's partition: one commit per night's write, never an append
    history = DeltaTable(f"{target}/tables/recommendations", storage_options=options).history()
    writes = [h for h in history if h["operation"] == "WRITE"]
    assert [h["tailor.run_date"] for h in reversed(writes)] == [str(NIGHT1), str(NIGHT2), str(NIGHT2)]
    assert all(h["operationParameters"]["mode"] == "Overwrite" for h in writes)


@pytest.mark.integration
def test_duckdb_finds_one_row_per_key_per_night_and_the_files_rows(two_nights) -> None:
    target, options, prefix, client = (two_nights[k] for k in ("target", "options", "prefix", "client"))
    con = duckdb.connect()
    for dataset in DATASETS:
        if dataset.name not in two_nights["names"]:
            continue
        con.register(
            dataset.name,
            DeltaTable(f"{target}/tables/{dataset.name}", storage_options=options).to_pyarrow_dataset(),
        )
        key = ", ".join(f'"{column}"' for column in dataset_key(dataset))  # names from DATASETS, not input
        duplicates = con.sql(
            f"SELECT {key}, count(*) AS n FROM {dataset.name} GROUP BY ALL HAVING count(*) > 1 LIMIT 3"
        ).fetchall()
        assert duplicates == [], (dataset.name, duplicates)
    # the second night's partition holds exactly the rows of the second night's published file
    pointer = read_json(client, f"{prefix}/runs/{NIGHT2}/latest.json")
    from tests.conftest import TEST_BUCKET

    body = client.get_object(
        Bucket=TEST_BUCKET, Key=f"{prefix}/{pointer['folder']}/recommendations/part-0000.parquet"
    )
    published = pl.read_parquet(body["Body"].read())
    con.register("published_recommendations", published.to_arrow())
    columns = ", ".join(f'"{c}"' for c in published.columns)
    difference = con.sql(
        f"(SELECT {columns} FROM recommendations WHERE run_date = $night EXCEPT ALL "
        f"SELECT {columns} FROM published_recommendations) UNION ALL (SELECT {columns} FROM "
        f"published_recommendations EXCEPT ALL SELECT {columns} FROM recommendations WHERE run_date = $night)",
        params={"night": NIGHT2},
    ).fetchall()
    assert difference == [] and published.height > 0
    assert published["user_id"].str.contains(r"^[0-9a-f]{32}$").all()  # the pseudonyms, not the raw ids


@pytest.mark.integration
def test_the_schema_and_ddl_beside_each_table_cover_exactly_its_columns(two_nights) -> None:
    from jsonschema import Draft202012Validator

    from tailor.contract import load_contract

    target, options, prefix, client = (two_nights[k] for k in ("target", "options", "prefix", "client"))
    from tests.conftest import TEST_BUCKET

    manifest = two_nights["manifests"][NIGHT2]
    for name in two_nights["names"]:
        published = list(manifest["datasets"][name]["columns"])
        expected = set(published) | {PARTITION_COLUMN}
        schema = read_json(client, f"{prefix}/tables/{name}/_schema.json")
        Draft202012Validator.check_schema(schema)
        assert set(schema["properties"]) == expected == set(schema["required"]), name
        table = DeltaTable(f"{target}/tables/{name}", storage_options=options)
        assert {field.name for field in table.schema().fields} == expected, name
        assert schema["x-table"]["location"] == f"{target}/tables/{name}"
        documented = load_contract().get(name, {})
        for column, arrow_type in manifest["datasets"][name]["columns"].items():
            described = schema["properties"][column]
            # naive timestamps are UTC by the contract; the table marks them so
            assert described["x-arrow-type"] == arrow_type.replace("timestamp[us]", "timestamp[us, tz=UTC]")
            assert described["description"] == (documented[column].meaning if column in documented else "")
        validator = Draft202012Validator(schema)
        rows = pl.read_delta(f"{target}/tables/{name}", storage_options=options).head(200).to_dicts()
        for row in rows:
            errors = list(validator.iter_errors({k: jsonable(v) for k, v in row.items()}))
            assert errors == [], (name, errors[0].message)
        for engine in ("athena", "trino"):
            ddl = client.get_object(Bucket=TEST_BUCKET, Key=f"{prefix}/tables/{name}/_ddl/{engine}.sql")
            text = ddl["Body"].read().decode()
            listed = {line.split()[1] for line in text.splitlines() if line.startswith("--   ")}
            assert listed == expected, (name, engine)
            assert f"{target}/tables/{name}" in text
    assert (
        "is_significant"
        in read_json(client, f"{prefix}/tables/experiment_results/_schema.json")["properties"]
    )
    described = read_json(client, f"{prefix}/tables/recommendations/_schema.json")["properties"]["rank"]
    assert described["description"] == "1 = best" and described["type"] == "integer"


@pytest.mark.integration
def test_the_documented_polars_and_duckdb_queries_run_on_the_published_tables(two_nights) -> None:
    tables = f"{two_nights['target']}/tables"
    namespace = run_documented(tables, two_nights["endpoint"])
    after = per_night_of_every_table(two_nights["target"], two_nights["names"], two_nights["options"])
    assert namespace["STORAGE"]["AWS_ENDPOINT_URL"] == two_nights["endpoint"]
    assert namespace["last_night"]["run_date"].unique().to_list() == [NIGHT2]
    assert namespace["last_night"].height == after["recommendations"][str(NIGHT2)]
    nights = namespace["experiment_nights"]
    assert dict(zip(map(str, nights["run_date"]), nights["rows"], strict=True)) == after["experiment_results"]
    assert [(str(night), rows) for night, _, rows in namespace["users_per_night"]] == list(
        after["recommendations"].items()
    )
    assert all(users > 0 for _, users, _ in namespace["users_per_night"])
    assert {str(row[0]) for row in namespace["conversion_lift"]} == {str(NIGHT1), str(NIGHT2)}


def braze_rows(two_nights: dict[str, Any], manifest: dict[str, Any], name: str) -> pl.DataFrame:
    """A night's Braze file, read from the bucket where Braze's S3 sync reads it (PREFIX/braze/<name>/)."""
    from tests.conftest import TEST_BUCKET

    [file] = manifest["braze"][name]
    assert file["path"].startswith(f"braze/{name}/")
    body = two_nights["client"].get_object(Bucket=TEST_BUCKET, Key=f"{two_nights['prefix']}/{file['path']}")
    return pl.read_parquet(body["Body"].read())


def is_close(held: dict[str, Any], tonight: dict[str, Any], changed_share: float, decile_move: int) -> bool:
    """publish.braze's rule, restated: what Braze holds is close enough to tonight's payload."""
    held_items, items = held["recommended_item_ids"], tonight["recommended_item_ids"]
    gone = [item for item in held_items if item not in items]
    deciles = (held["propensity_decile"], tonight["propensity_decile"])
    return (
        held["rfm_segment"] == tonight["rfm_segment"]
        and held["campaign_variants"] == tonight["campaign_variants"]
        and (deciles[0] == deciles[1] or (None not in deciles and abs(deciles[0] - deciles[1]) < decile_move))
        and len(items) <= len(held_items)
        and len(gone) <= changed_share * len(held_items)
    )


@pytest.mark.integration
def test_braze_gets_the_users_whose_payload_changed_enough_between_two_real_nights(two_nights) -> None:
    """The issue's done-when on the real flow: one user withdraws profiling consent between two nights, and
    a normal day of events arrives for everyone (so the models retrain and most lists move a little). The
    second night's Braze files hold that user, no user whose payload is unchanged or close to what Braze
    holds (publish.braze), later than the first night's; a rerun sends the same rows later still. With
    nothing else changed, the file holds that one user alone (tests/tasks/test_publish.py)."""
    from tailor.tasks.braze import published_ids

    first_manifest, second_manifest = (two_nights["manifests"][night] for night in (NIGHT1, NIGHT2))
    first = braze_rows(two_nights, first_manifest, "user_updates")
    held = dict(zip(first["EXTERNAL_ID"], first["PAYLOAD"], strict=True))  # the first night: everyone
    tonight = two_nights["payloads_second"]
    updates = braze_rows(two_nights, second_manifest, "user_updates")
    deletes = braze_rows(two_nights, second_manifest, "user_deletes")
    sent = dict(zip(updates["EXTERNAL_ID"], updates["PAYLOAD"], strict=True))
    assert updates.height == len(sent) and all(sent[user] == tonight[user] for user in sent)
    assert set(deletes["EXTERNAL_ID"]) == set(held) - set(tonight)
    rule = two_nights["settings"].publish.braze
    for user, payload in tonight.items():
        if user not in held:
            assert user in sent
        elif held[user] == payload or user not in sent:
            # never resent unchanged; left unsent only when close (it may be sent when close if a held
            # item is no longer among its candidates)
            assert user not in sent or held[user] != payload
            assert is_close(json.loads(held[user]), json.loads(payload), rule.recommendations_changed_share,
                            rule.decile_min_move), user  # fmt: skip
    [withdrawn] = published_ids(pl.Series([two_nights["withdrawn"]]), two_nights["settings"])["external_id"]
    assert withdrawn in held and withdrawn in set(sent) | set(deletes["EXTERNAL_ID"])
    if withdrawn in tonight:  # still reachable: nothing in the payload needs profiling any more
        payload = json.loads(tonight[withdrawn])
        assert payload["rfm_segment"] is None and payload["propensity_decile"] is None
    moved = sum(held.get(user) != payload for user, payload in tonight.items())
    print(f"braze: {len(sent)} of {len(tonight)} users sent, {moved} payloads moved")  # for docs/outputs.md
    assert 0 < len(sent) < moved  # close payloads are not sent again

    stamps = [
        braze_rows(two_nights, manifest, "user_updates")["UPDATED_AT"].unique().to_list()
        for manifest in (first_manifest, second_manifest, two_nights["rerun_manifest"])
    ]
    assert all(len(stamp) == 1 for stamp in stamps) and stamps[0][0] < stamps[1][0] < stamps[2][0]
    assert str(updates.schema["UPDATED_AT"]) == "Datetime(time_unit='us', time_zone='UTC')"
    again = braze_rows(two_nights, two_nights["rerun_manifest"], "user_updates")
    assert again.drop("UPDATED_AT").sort("EXTERNAL_ID").equals(updates.drop("UPDATED_AT").sort("EXTERNAL_ID"))
