from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tailor.tasks.publish import (
    DATASETS,
    ConsentViolation,
    Dataset,
    check_consent,
    pseudonymize,
    upload_run,
    write_parts,
)
from tailor.warehouse import RunContext, connect


def test_pseudonyms_are_keyed_stable_and_not_the_id() -> None:
    frame = pl.DataFrame({"user_id": ["u1", "u2", "u1"], "x": [1, 2, 3]})
    once = pseudonymize(frame, b"k1")
    assert once["user_id"].to_list()[0] == once["user_id"].to_list()[2]
    assert not set(once["user_id"]) & {"u1", "u2"} and once["x"].to_list() == [1, 2, 3]
    assert pseudonymize(frame, b"k1").equals(once)
    assert not set(pseudonymize(frame, b"k2")["user_id"]) & set(once["user_id"])
    assert pseudonymize(frame, None).equals(frame)
    ordered = pseudonymize(pl.DataFrame({"user_id": [f"u{i:03d}" for i in range(50)]}), b"k", ["user_id"])
    assert ordered["user_id"].is_sorted()  # sorted by pseudonym, so row order says nothing of the raw ids


def test_a_dataset_with_no_rows_keeps_its_user_id_a_string() -> None:
    # an empty night (no audience, no recommendation) must publish the contract's types, not Arrow `null`
    empty = pl.DataFrame({"user_id": pl.Series([], dtype=pl.Utf8), "x": pl.Series([], dtype=pl.Int64)})
    assert pseudonymize(empty, b"k", ["user_id"]).schema == empty.schema


def test_a_dataset_is_read_in_parts_in_the_order_of_its_pseudonyms() -> None:
    # the streamed parts are what pseudonymizing and sorting the whole table gave: same rows, same order
    import duckdb

    from tailor.tasks.publish import Dataset, dataset_parts, exact_parts, no_user, pseudonymized_part

    con = duckdb.connect()
    con.execute(
        "create table recs as select 'u' || (i % 37) as user_id, i // 37 + 1 as rank, i * 0.5 as score "
        "from range(500) as t(i)"
    )
    dataset = Dataset("recs", "recs", "user_id, rank", None, "test", no_user)
    ctx = RunContext(run_date=date(2026, 11, 21), cutoff=datetime(2026, 11, 21), run_dir=Path("."), seed=1)
    whole = con.sql("select * from recs order by user_id, rank").pl()
    for key, expected in ((b"k", pseudonymize(whole, b"k", ["user_id", "rank"])), (None, whole)):
        parts = [pseudonymized_part(part, key, ()) for part in dataset_parts(con, dataset, ctx, key, 64)]
        assert [part.height for part in parts] == [64] * 7 + [52]
        assert pl.concat(parts).equals(expected)
    # parts do not depend on how the reader cut its batches, and an empty table is one empty part
    batches = pa.table({"x": list(range(10))}).to_batches(max_chunksize=3)
    reader = pa.RecordBatchReader.from_batches(batches[0].schema, batches)
    assert [part.num_rows for part in exact_parts(reader, 4)] == [4, 4, 2]
    empty = pa.RecordBatchReader.from_batches(pa.schema([("x", pa.int64())]), [])
    assert [(part.num_rows, part.schema.names) for part in exact_parts(empty, 4)] == [(0, ["x"])]


def test_manifest_values_are_strict_json() -> None:
    from tailor.tasks.publish import json_safe

    assert json_safe({"auc": float("nan"), "m": [1.0, float("inf")], "n": 2}) == {
        "auc": None,
        "m": [1.0, None],
        "n": 2,
    }


def test_parts_are_byte_identical_for_the_same_rows(tmp_path: Path) -> None:
    table = pa.table({"user_id": ["a", "b", "c"], "score": [0.3, 0.2, 0.1]})
    first = write_parts(table, tmp_path / "1", "recs", 2, ["parquet", "csv"])
    second = write_parts(table, tmp_path / "2", "recs", 2, ["parquet", "csv"])
    assert [f["path"] for f in first] == [
        "recs/part-0000.parquet",
        "recs/part-0000.csv",
        "recs/part-0001.parquet",
        "recs/part-0001.csv",
    ]
    assert [f["sha256"] for f in first] == [f["sha256"] for f in second]
    assert sum(f["rows"] for f in first if f["format"] == "parquet") == 3


def test_consent_check_refuses_rows_for_unconsented_users(trained_company) -> None:
    settings, _, _, _ = trained_company
    datasets = {d.name: d for d in DATASETS}

    def user(purpose: str, granted: bool) -> str:
        return con.execute(
            "select user_id from staging.stg_consents where is_latest and purpose = $p and is_granted = $g "
            "order by user_id limit 1",
            {"p": purpose, "g": granted},
        ).fetchall()[0][0]

    with connect(settings) as con:
        profiled, unprofiled = user("profiling", True), user("profiling", False)
        emailable, unemailable = user("marketing_email", True), user("marketing_email", False)
        recs = pl.DataFrame({"user_id": [profiled], "is_personalized": [True], "channels": [""]})
        check_consent(con, datasets["recommendations"], recs, settings)
        with pytest.raises(ConsentViolation, match=r"recommendations: 1 row.*profiling"):
            check_consent(
                con, datasets["recommendations"], recs.with_columns(user_id=pl.lit(unprofiled)), settings
            )
        # a fallback row needs no profiling, but every channel it lists needs that channel's consent
        fallback = pl.DataFrame({"user_id": [unemailable], "is_personalized": [False], "channels": ["email"]})
        with pytest.raises(ConsentViolation, match="marketing_email"):
            check_consent(con, datasets["recommendations"], fallback, settings)
        with pytest.raises(ConsentViolation, match="segments: 1 row"):
            check_consent(con, datasets["segments"], pl.DataFrame({"user_id": [unprofiled]}), settings)
        content = pl.DataFrame(
            {"user_id": [emailable], "campaign_id": ["weekly_digest"], "is_personalized": [False]}
        )
        check_consent(con, datasets["content"], content, settings)
        with pytest.raises(ConsentViolation, match="content"):
            check_consent(
                con, datasets["content"], content.with_columns(user_id=pl.lit(unemailable)), settings
            )
        # an audience's listed users need profiling, though the dataset has no user_id column
        segment = pl.DataFrame({"audience_type": ["item"], "recommended_users": [[profiled]]})
        assert check_consent(con, datasets["personalize_segments"], segment, settings) is not None
        with pytest.raises(ConsentViolation, match=r"personalize_segments: 1 row.*profiling"):
            check_consent(
                con,
                datasets["personalize_segments"],
                segment.with_columns(recommended_users=pl.lit([profiled, unprofiled])),
                settings,
            )


def fake_run(tmp_path: Path, day: str, n_files: int = 1, seed: int = 0) -> tuple[RunContext, Path]:
    """A run folder with `n_files` small part files and a manifest; another `seed` gives other bytes."""
    run_dir = tmp_path / "runs" / day
    local = run_dir / ("publish" if seed == 0 else f"publish-{seed}")
    table = pa.table({"user_id": [f"u{seed}-{n}" for n in range(n_files)]})
    files = write_parts(table, local, "recommendations", 1, ["parquet"])
    manifest = {"run_date": day, "datasets": {"recommendations": {"files": files}}}
    (local / "manifest.json").write_text(json.dumps(manifest))
    return RunContext(date.fromisoformat(day), None, run_dir, 1), local  # type: ignore[arg-type]


def verify_latest(store, latest_key: str = "latest.json") -> dict:
    """What a reader does: follow latest.json to a manifest and check every file it lists; the pointer."""
    latest = json.loads(store.get_bytes(latest_key))
    manifest = json.loads(store.get_bytes(latest["manifest"]))
    folder = latest["manifest"].rsplit("/", 1)[0]
    assert folder == latest["folder"]
    for dataset in manifest["datasets"].values():
        for file in dataset["files"]:
            body = store.get_bytes(f"{folder}/{file['path']}")
            assert body is not None, file["path"]
            assert hashlib.sha256(body).hexdigest() == file["sha256"], file["path"]
    return latest


def test_latest_moves_forward_only_and_each_date_has_its_pointer(tmp_path: Path, trained_company) -> None:
    from tests.published import pointer, run_folder

    settings = trained_company[0]
    published = tmp_path / "published"
    target = published.as_uri()
    for day in ("2026-01-02", "2026-01-01"):
        ctx, local = fake_run(tmp_path, day)
        result = upload_run.fn(settings, ctx, local, target)
    assert result["latest_moved"] is False  # a backfill of an older date moves its own pointer only
    latest = pointer(published)
    assert latest["run_date"] == "2026-01-02" and latest == pointer(published, "2026-01-02")
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", latest["attempt"])
    assert latest["manifest"] == f"runs/2026-01-02/{latest['attempt']}/manifest.json"
    assert pointer(published, "2026-01-01")["run_date"] == "2026-01-01"
    assert (run_folder(published, "2026-01-01") / "recommendations" / "part-0000.parquet").is_file()
    first = run_folder(published, "2026-01-02")

    # the same date again: a new attempt, byte-identical (the attempt is named in the pointers only)
    ctx, local = fake_run(tmp_path, "2026-01-02")
    again = upload_run.fn(settings, ctx, local, target)
    second = run_folder(published)
    assert again["latest_moved"] and second != first and second.parent == first.parent
    assert (second / "manifest.json").read_bytes() == (first / "manifest.json").read_bytes()
    assert first.is_dir() and again["removed_attempts"] == []  # kept for readers of the old pointer


def test_superseded_attempts_go_after_the_retention_and_named_ones_stay(tmp_path: Path) -> None:
    from tailor.config import StorageConfig
    from tailor.storage import open_store
    from tailor.tasks.publish import publish_attempt

    store = open_store((tmp_path / "published").as_uri(), StorageConfig())
    start = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    folders = {}
    for hours, day in ((0, "2026-01-02"), (1, "2026-01-01"), (2, "2026-01-01"), (3, "2026-01-02")):
        ctx, local = fake_run(tmp_path, day, seed=hours)
        run = publish_attempt(store, local, ctx.run_date, keep_superseded_hours=24,
                              now=start + timedelta(hours=hours))  # fmt: skip
        folders[hours] = f"runs/{day}/{run['attempt']}"
    # 23 hours after 2026-01-02's pointer moved: nothing goes yet; 24 hours after 2026-01-01's, its old one
    ctx, local = fake_run(tmp_path, "2026-01-03", seed=9)
    later = publish_attempt(store, local, ctx.run_date, now=start + timedelta(hours=26))
    assert later["removed_attempts"] == [folders[1]]
    ctx, local = fake_run(tmp_path, "2026-01-03", seed=10)
    last = publish_attempt(store, local, ctx.run_date, now=start + timedelta(hours=27))
    assert last["removed_attempts"] == [folders[0]]
    # every pointer's attempt is there, nothing else of those dates, and no empty folder is left behind
    for day, hours in (("2026-01-01", 2), ("2026-01-02", 3)):
        assert sorted(p.name for p in (tmp_path / "published" / "runs" / day).iterdir()) == sorted(
            ["latest.json", folders[hours].rsplit("/", 1)[1]]
        )
    verify_latest(store)
    assert json.loads(store.get_bytes("latest.json"))["run_date"] == "2026-01-03"


KILLED_UPLOAD = """
import os, sys, threading, time
from datetime import date
from pathlib import Path
from tailor.config import StorageConfig
from tailor.storage import open_store
from tailor.tasks.publish import publish_attempt

target, local, day, endpoint, marker = sys.argv[1:6]
store = open_store(target, StorageConfig(endpoint_url=endpoint or None))
put_file, lock, started, finished = store.put_file, threading.Lock(), [0], [0]

def put_some(path, key):
    with lock:
        started[0] += 1
        stall = started[0] > 3
    if not stall:
        put_file(path, key)
        with lock:
            finished[0] += 1
        return
    while finished[0] < 3:
        time.sleep(0.01)
    Path(marker).touch()  # three files are in: the test kills this process with SIGKILL
    time.sleep(600)

store.put_file = put_some
publish_attempt(store, Path(local), date.fromisoformat(day))
"""


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_a_republish_killed_mid_upload_leaves_latest_on_a_complete_attempt(
    kind: str, tmp_path: Path, request
) -> None:
    """The issue's acceptance test: latest.json names a complete attempt whatever happens to a republish."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    from tailor.config import StorageConfig
    from tailor.storage import open_store
    from tailor.tasks.publish import publish_attempt
    from tests.conftest import REPO, TEST_BUCKET

    if kind == "s3":
        endpoint = request.getfixturevalue("s3_server").endpoint_url
        target = f"s3://{TEST_BUCKET}/killed-{uuid.uuid4().hex[:8]}"
    else:
        endpoint, target = "", (tmp_path / "published").as_uri()
    store = open_store(target, StorageConfig(endpoint_url=endpoint or None, max_attempts=2))
    day = "2026-01-02"
    ctx, local = fake_run(tmp_path, day, n_files=12)
    publish_attempt(store, local, ctx.run_date)
    before = verify_latest(store)

    # the same date with other rows (a rerun after a deletion request), killed after three files
    _, changed = fake_run(tmp_path, day, n_files=12, seed=1)
    marker = tmp_path / "stalled"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_UPLOAD, target, str(changed), day, endpoint, str(marker)], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the upload never stalled"
            time.sleep(0.1)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    attempts = {key.split("/")[2] for key in store.list_keys(f"runs/{day}/") if key.count("/") >= 3}
    assert len(attempts) == 2  # the killed one is there, partly written
    assert verify_latest(store) == before
    assert json.loads(store.get_bytes(f"runs/{day}/latest.json")) == before

    # a complete republish moves the pointers; a later publish past the retention removes the others
    after = publish_attempt(store, changed, ctx.run_date)
    latest = verify_latest(store)
    assert latest["attempt"] == after["attempt"] != before["attempt"]
    assert json.loads(store.get_bytes(f"runs/{day}/latest.json")) == latest
    ctx_next, local_next = fake_run(tmp_path, "2026-01-03")
    cleaned = publish_attempt(store, local_next, ctx_next.run_date, now=datetime.now(UTC) + timedelta(hours=25))
    assert len(cleaned["removed_attempts"]) == 2 and before["folder"] in cleaned["removed_attempts"]
    assert {key.split("/")[2] for key in store.list_keys(f"runs/{day}/")} == {"latest.json", latest["attempt"]}
    assert verify_latest(store, f"runs/{day}/latest.json") == latest


def test_published_files_are_readable_by_others_whatever_the_umask(tmp_path: Path, trained_company) -> None:
    import os
    import stat

    settings = trained_company[0]
    published = tmp_path / "deep" / "published"
    ctx, local = fake_run(tmp_path, "2026-01-02", n_files=3)
    previous = os.umask(0o077)  # what a run sets for its private working files
    try:
        upload_run.fn(settings, ctx, local, published.as_uri())
    finally:
        os.umask(previous)
    paths = [tmp_path / "deep", *(tmp_path / "deep").rglob("*")]
    assert any(p.name == "latest.json" for p in paths) and len(paths) > 8
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def contract() -> dict[str, dict[str, str]]:
    """docs/outputs.md: dataset -> {column: type}, read from its '## name' sections and tables."""
    from tests.conftest import REPO

    datasets: dict[str, dict[str, str]] = {}
    current = None
    for line in (REPO / "docs" / "outputs.md").read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            datasets[current] = {}
        elif current and line.startswith("| `"):
            column, data_type = (cell.strip() for cell in line.strip("|").split("|")[:2])
            datasets[current][column.strip("`")] = data_type
    return datasets


@pytest.fixture(scope="module")
def published(trained_company, tmp_path_factory):
    from tailor.tasks.publish import write_datasets
    from tailor.tasks.score import score_users
    from tailor.tasks.segments import build_segments
    from tailor.tasks.variants import assign_variants

    settings, ctx, models, quality = trained_company
    score_users(settings, ctx, models)
    build_segments.fn(settings, ctx, models)
    assign_variants(settings, ctx, models)
    local = write_datasets.fn(settings, ctx, models, quality, {})
    return settings, ctx, models, quality, local


def test_published_datasets_match_the_contract_in_docs(published) -> None:
    from tailor.schema import DATASET_NAMES

    *_, local = published
    manifest = json.loads((local / "manifest.json").read_text())
    documented = contract()
    assert list(documented) == list(DATASET_NAMES) and set(manifest["datasets"]) == set(DATASET_NAMES)
    for name, dataset in manifest["datasets"].items():
        schema = pq.read_schema(local / dataset["files"][0]["path"])
        actual = {field.name: str(field.type) for field in schema}
        assert actual == documented[name], name
        assert dataset["columns"] == actual


def readme_warehouse_tables() -> dict[str, str]:
    """README.md: dataset -> the warehouse table it is read from, from the table headed
    "| dataset | warehouse table |", one dataset a row."""
    from tests.conftest import REPO

    lines = (REPO / "README.md").read_text().splitlines()
    [header] = [i for i, line in enumerate(lines) if line.startswith("| dataset | warehouse table |")]
    tables: dict[str, str] = {}
    for line in lines[header + 2 :]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        dataset, table = (cell.strip().strip("`") for cell in line.strip("|").split("|")[:2])
        assert dataset not in tables, f"README lists {dataset} twice"
        tables[dataset] = table
    return tables


def test_the_readme_names_the_warehouse_table_of_every_dataset() -> None:
    """Not every dataset is a mart: the README's table must name the table publish reads, for every dataset
    and no other, so a new dataset or a moved table fails here until the docs follow."""
    assert readme_warehouse_tables() == {dataset.name: dataset.table for dataset in DATASETS}


def warehouse_rows(con: duckdb.DuckDBPyConnection, dataset: Dataset, run_date: date) -> int:
    """The rows of the dataset's table that the run publishes: its night's, every night's up to it, or all."""
    rows = con.table(dataset.table)
    column, night = duckdb.ColumnExpression("run_date"), duckdb.ConstantExpression(run_date)
    if dataset.this_run_only:
        rows = rows.filter(column == night)
    elif dataset.history:
        rows = rows.filter(column <= night)
    return rows.count("*").fetchall()[0][0]


def test_every_dataset_is_in_the_warehouse_table_the_manifest_and_readme_name(published) -> None:
    """The manifest's `warehouse_table` is the README's, the table is in the warehouse after the run, and
    it holds the rows the run published. (Before the Braze test below, which edits the marts.)"""
    settings, ctx, *_, local = published
    manifest = json.loads((local / "manifest.json").read_text())
    documented = readme_warehouse_tables()
    named = {name: entry["warehouse_table"] for name, entry in manifest["datasets"].items()}
    assert named == documented
    with connect(settings) as con:
        present = {f"{schema}.{table}" for schema, table in con.execute(
            "select table_schema, table_name from information_schema.tables").fetchall()}  # fmt: skip
        for dataset in DATASETS:
            assert dataset.table in present, dataset.name
            assert warehouse_rows(con, dataset, ctx.run_date) == manifest["datasets"][dataset.name]["rows"], (
                dataset.name
            )


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_personalize_batch_lines_have_personalizes_shape(published) -> None:
    """Every line is the documented batch inference shape, `error` included, with scores in Personalize's
    sense on one scale for personalized and fallback users; the Parquet file holds the same lists."""
    from tests.personalize_shapes import BATCH_INFERENCE_LINE, check_scores, validate

    *_, local = published
    lines = jsonl(local / "personalize_batch" / "part-0000.jsonl")
    batch = pl.read_parquet(local / "personalize_batch" / "part-0000.parquet")
    recommendations = pl.read_parquet(local / "recommendations" / "part-0000.parquet")
    for line in lines:
        validate(line, BATCH_INFERENCE_LINE)
    check_scores(lines)
    assert len(lines) == batch.height == recommendations["user_id"].n_unique()

    # the JSON lines and the Parquet rows agree, items in the recommendations' order, channels kept
    ranked = recommendations.sort("user_id", "rank").group_by("user_id", maintain_order=True)
    expected = {
        row["user_id"]: row for row in ranked.agg("item_id", pl.first("channels")).iter_rows(named=True)
    }
    rows = {row["user_id"]: row for row in batch.iter_rows(named=True)}
    for line in lines:
        user, output = line["input"]["userId"], line["output"]
        assert output == {"recommendedItems": rows[user]["recommended_items"], "scores": rows[user]["scores"]}
        assert output["recommendedItems"] == expected[user]["item_id"]
        assert rows[user]["channels"] == expected[user]["channels"]

    # one scale: every user's list shares 1, its first score between 1/K and 1, personalized or not
    summary = batch.select(
        "is_personalized",
        pl.col("scores").list.sum().alias("total"),
        pl.col("scores").list.first().alias("top"),
        (pl.col("scores").list.first() * pl.col("scores").list.len()).alias("top_times_k"),
        pl.col("scores").list.min().alias("low"),
        pl.col("scores").list.max().alias("high"),
    )
    assert set(summary["is_personalized"]) == {True, False}  # both kinds were published
    assert ((summary["total"] - 1).abs() < 1e-9).all() and (summary["top_times_k"] >= 1 - 1e-9).all()
    by_kind = summary.group_by("is_personalized").agg(pl.col("low").min(), pl.col("high").max())
    assert (by_kind["low"] > 0).all() and (by_kind["high"] <= 1).all()
    # and the two kinds' first scores overlap (raw, ranker scores ran -0.5..0.5 and popularity 0.25..1)
    tops = summary.group_by("is_personalized").agg(
        pl.col("top").min().alias("least"), pl.col("top").max().alias("most")
    )
    assert tops["least"].max() <= tops["most"].min()


def test_personalize_segments_lines_have_personalizes_segment_shape(published) -> None:
    """One line per item audience, in the documented Item-Affinity or Item-Attribute-Affinity shape, its
    users those of item_audiences, most likely first."""
    from tests.personalize_shapes import BATCH_SEGMENT_LINE, validate

    *_, local = published
    lines = jsonl(local / "personalize_segments" / "part-0000.jsonl")
    audiences = pl.read_parquet(local / "item_audiences" / "part-0000.parquet").sort("rank")
    expected = {
        (row["audience_type"], row["audience_id"]): row["user_id"]
        for row in audiences.group_by("audience_type", "audience_id", maintain_order=True)
        .agg("user_id")
        .iter_rows(named=True)
    }
    assert {kind for kind, _ in expected} == {"category"} and len(lines) == len(expected) > 0
    for line in lines:
        validate(line, BATCH_SEGMENT_LINE)
        if "input" in line:
            key = ("item", line["input"]["itemId"])
        else:
            key = ("category", re.fullmatch(r'ITEMS\.category = "(.*)"', line["itemAttributes"]).group(1))
        assert line["output"]["recommendedUsers"] == expected[key]


def test_ids_in_personalize_segments_are_pseudonymised(published, monkeypatch) -> None:
    """Published pseudonymously, every user id inside the lists is the pseudonym of the raw id in the same
    place; the manifest says so."""
    from dataclasses import replace

    from tailor.tasks.publish import write_datasets

    settings, ctx, models, quality, _ = published
    monkeypatch.setenv(settings.publish.pseudonym_key_env, "a-key")
    publish = settings.publish.model_copy(update={"published_user_id": "pseudonymous"})
    pseudonymous = settings.model_copy(update={"publish": publish})
    out = write_datasets.fn(pseudonymous, replace(ctx, run_dir=ctx.run_dir.parent / "pseudonymous"), models,
                            quality, {})  # fmt: skip
    with connect(settings) as con:
        raw = con.sql(
            "select audience_id, list(user_id order by rank) as users from marts.item_audiences group by all"
        ).pl()
    lines = jsonl(out / "personalize_segments" / "part-0000.jsonl")
    published_lists = {line["itemAttributes"]: line["output"]["recommendedUsers"] for line in lines}
    for audience_id, users in raw.iter_rows():
        listed = published_lists[f'ITEMS.category = "{audience_id}"']
        assert listed == [published_id(pseudonymous, user) for user in users]
        assert all(re.fullmatch(r"[0-9a-f]{32}", user) for user in listed)
    parquet = pl.read_parquet(out / "personalize_segments" / "part-0000.parquet")
    assert parquet["recommended_users"].to_list() == [published_lists[q] for q in parquet["item_attributes"]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["datasets"]["personalize_segments"]["user_id"] == "pseudonymous"


def test_braze_gets_only_changed_users_each_night_later_each_time(published, tmp_path: Path) -> None:
    """The issue's done-when: one user's inputs change between two published nights; the second night's
    Braze file holds exactly that user, with an UPDATED_AT later than the first night's, and a rerun of the
    second night gets a later one still. A user who leaves is in user_deletes; a quiet night publishes empty
    files; every publication is a new file under braze/, and none is rewritten."""
    from dataclasses import replace

    from tailor.tasks.publish import write_datasets
    from tailor.tasks.score import score_users
    from tailor.tasks.segments import build_segments
    from tailor.tasks.variants import assign_variants

    settings, ctx, models, quality, _ = published
    # the nights after the first reuse the first night's marts (its run_date): no BI tables, which refuse them
    settings = settings.model_copy(update={"publish": settings.publish.model_copy(update={"tables": False})})
    root = tmp_path / "published"

    def publish(night: RunContext) -> dict:
        local = write_datasets.fn(settings, night, models, quality, {})
        upload_run.fn(settings, night, local, root.as_uri())
        return json.loads((local / "manifest.json").read_text())["braze"]

    def braze_file(entry: dict, name: str) -> pa.Table:
        [file] = entry[name]
        path = root / file["path"]
        assert path.parent == root / "braze" / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == file["sha256"]
        return pq.read_table(path)

    def day(n: int) -> RunContext:
        return replace(ctx, run_date=ctx.run_date + timedelta(days=n), cutoff=ctx.cutoff + timedelta(days=n),
                       run_dir=ctx.run_dir.parent / f"braze-{n}")  # fmt: skip

    try:
        first = publish(day(0))  # a folder of its own: the module's `published` run stays as it is
        updates = braze_file(first, "user_updates")
        assert updates.column_names == ["EXTERNAL_ID", "UPDATED_AT", "PAYLOAD"]
        assert updates.schema.field("UPDATED_AT").type == pa.timestamp("us", tz="UTC")
        assert "isAdjustedToUTC=true" in str(
            pq.ParquetFile(root / first["user_updates"][0]["path"]).schema.column(1).logical_type
        )
        attributes = {"recommended_item_ids", "rfm_segment", "propensity_decile", "campaign_variants"}
        assert set(json.loads(updates["PAYLOAD"][0].as_py())) == attributes
        with connect(settings) as con:
            everyone = con.execute("select count(*) from marts.user_update_payloads").fetchall()[0][0]
            changed, leaving, reordered = (row[0] for row in con.execute(
                "select user_id from marts.user_update_payloads order by user_id limit 3").fetchall())  # fmt: skip
            # the user moved segment; a small move of someone else's list is not sent (publish.braze)
            con.execute("update marts.segments set rfm_segment = 'changed' where user_id = $u", {"u": changed})
            swapped = con.execute("update marts.recommendations set rank = 3 - rank where user_id = $u and rank <= 2",
                                  {"u": reordered}).fetchall()  # fmt: skip
            assert swapped == [(2,)]  # the reorder happened: its absence below is the rule, not a no-op
            for table in ("recommendations", "content", "segments", "user_scores"):
                con.execute(f"delete from marts.{table} where user_id = $u", {"u": leaving})
        assert updates.num_rows == everyone  # the first night Braze holds nothing: everyone is new

        second = publish(day(1))
        moved = braze_file(second, "user_updates")
        assert moved["EXTERNAL_ID"].to_pylist() == [published_id(settings, changed)]
        assert moved["UPDATED_AT"][0].as_py() > max(updates["UPDATED_AT"].to_pylist())
        deletes = braze_file(second, "user_deletes")
        assert deletes.column_names == ["EXTERNAL_ID", "UPDATED_AT"]
        assert deletes.to_pylist() == [{"EXTERNAL_ID": published_id(settings, leaving),
                                        "UPDATED_AT": moved["UPDATED_AT"][0].as_py()}]  # fmt: skip

        rerun = publish(day(1))  # the same rows, in new files, later still
        again = braze_file(rerun, "user_updates")
        assert again["EXTERNAL_ID"] == moved["EXTERNAL_ID"] and again["PAYLOAD"] == moved["PAYLOAD"]
        assert again["UPDATED_AT"][0].as_py() > moved["UPDATED_AT"][0].as_py()
        assert braze_file(rerun, "user_deletes")["EXTERNAL_ID"] == deletes["EXTERNAL_ID"]
        assert braze_file(second, "user_updates") == moved  # the earlier file is still there, unchanged

        quiet = publish(day(2))
        assert [braze_file(quiet, name).num_rows for name in ("user_updates", "user_deletes")] == [0, 0]
        assert len(list((root / "braze" / "user_updates").iterdir())) == 4
        with connect(settings) as con:
            logged = con.execute("select count(*), count(distinct UPDATED_AT) from marts.braze_user_updates")
            assert logged.fetchall() == [(everyone + 2, 3)]
    finally:
        with connect(settings) as con:
            for table in ("user_state", "publishes", "user_update_log", "user_delete_log"):
                con.execute(f"delete from meta.braze_{table}")
        score_users(settings, ctx, models)
        build_segments.fn(settings, ctx, models)
        assign_variants(settings, ctx, models)


def published_id(settings, user_id: str) -> str:
    key = settings.pseudonym_key()
    return pseudonymize(pl.DataFrame({"user_id": [user_id]}), key)["user_id"][0]


def test_only_the_datasets_config_names_carry_the_real_id(published, monkeypatch) -> None:
    import json

    import pyarrow.parquet as pq

    from tailor.tasks.publish import write_datasets

    settings, ctx, models, quality, _ = published
    monkeypatch.setenv(settings.publish.pseudonym_key_env, "a-key")
    publish = settings.publish.model_copy(
        update={"published_user_id": "pseudonymous", "external_id_datasets": ["user_updates"]}
    )
    local = write_datasets.fn(settings.model_copy(update={"publish": publish}), ctx, models, quality, {})
    manifest = json.loads((local / "manifest.json").read_text())
    feed = pq.read_table(local / "user_updates" / "part-0000.parquet").column("EXTERNAL_ID").to_pylist()
    recommended = pq.read_table(local / "recommendations" / "part-0000.parquet").column("user_id").to_pylist()
    assert manifest["datasets"]["user_updates"]["user_id"] == "external"
    assert manifest["datasets"]["recommendations"]["user_id"] == "pseudonymous"
    assert all(uid.startswith("u") and len(uid) < 10 for uid in feed)
    assert all(len(uid) == 32 for uid in recommended)


def test_the_readmes_duckdb_query_reads_the_latest_run_of_a_folder(tmp_path: Path) -> None:
    """The documented query runs on the installed DuckDB against a published folder, following latest.json."""
    import duckdb

    from tailor.config import StorageConfig
    from tailor.storage import open_store
    from tailor.tasks.publish import publish_attempt
    from tests.conftest import REPO

    published = tmp_path / "published"
    store = open_store(published.as_uri(), StorageConfig())
    for day, title in (("2026-01-02", "newest"), ("2026-01-01", "older")):
        local = tmp_path / day
        (local / "recommendations").mkdir(parents=True)
        rows = {"user_id": ["b", "a", "a"], "rank": [1, 2, 1], "item_title": [title] * 3, "reason_text": ["r"] * 3}
        pq.write_table(pa.table(rows), local / "recommendations" / "part-0000.parquet")
        (local / "manifest.json").write_text("{}")
        publish_attempt(store, local, date.fromisoformat(day))
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", readme, re.S)
    query = next(block for block in blocks if "/srv/tailor/published" in block)
    con = duckdb.connect()
    statements = [s for s in query.replace("/srv/tailor/published", str(published)).split(";") if s.strip()]
    for statement in statements[:-1]:
        con.execute(statement)
    rows = con.execute(statements[-1]).fetchall()
    assert rows == [("a", 1, "newest", "r"), ("a", 2, "newest", "r"), ("b", 1, "newest", "r")]
