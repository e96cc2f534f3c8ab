"""Consent withdrawal, erasure and clean logs, proved on a real nightly run of the small company."""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, time, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from tailor.config import load_settings
from tailor.flows.nightly import nightly
from tailor.warehouse import connect
from tests.conftest import DATA_END, RUN_DATE
from tests.published import run_folder

pytestmark = pytest.mark.integration


def latest_consents(root: Path) -> pl.DataFrame:
    frames = [
        pl.read_csv(path, try_parse_dates=True)
        for path in sorted((root / "sources" / "consents").glob("*.csv"))
    ]
    return (
        pl.concat(frames).sort("updated_at").group_by("user_id", "purpose").agg(pl.col("is_granted").last())
    )


def fully_consented_active_user(root: Path, excluded: set[str]) -> str:
    consents = latest_consents(root).filter(pl.col("is_granted"))
    everyone = consents.group_by("user_id").len().filter(pl.col("len") == 3)["user_id"]
    events = pl.concat(
        [
            pl.read_csv(p).select("user_id")
            for p in sorted((root / "sources" / "interactions").glob("*.csv"))[-10:]
        ]
    )
    active = events.group_by("user_id").len().sort("len", "user_id", descending=[True, False])
    return next(u for u in active["user_id"] if u in set(everyone) and u not in excluded)


def id_pattern(ids: list[str]) -> re.Pattern[str]:
    # no look-behind: DuckDB's regular expressions (RE2) have none
    return re.compile(r"(^|[^A-Za-z0-9_])(" + "|".join(map(re.escape, ids)) + r")([^A-Za-z0-9_]|$)")


def warehouse_hits(settings, pattern: re.Pattern[str]) -> list[str]:
    """Every table and text column of the warehouse that holds one of the ids."""
    hits = []
    with connect(settings) as con:
        columns = con.execute(
            "select c.table_schema, c.table_name, c.column_name from information_schema.columns c "
            "join information_schema.tables t using (table_catalog, table_schema, table_name) "
            "where t.table_type = 'BASE TABLE' and (c.data_type like '%VARCHAR%' or c.data_type = 'JSON') "
            "and c.table_schema not in ('information_schema', 'pg_catalog')"
        ).fetchall()
        for schema, table, column in columns:
            count = con.execute(
                f'select count(*) from {schema}.{table} where regexp_matches(cast("{column}" as varchar), $p)',
                {"p": pattern.pattern},
            ).fetchall()[0][0]
            if count:
                hits.append(f"{schema}.{table}.{column}: {count}")
    return hits


def file_hits(folder: Path, pattern: re.Pattern[str]) -> list[str]:
    """Every file under the folder that holds one of the ids (Parquet is read, not grepped)."""
    hits = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            text = json.dumps(pq.read_table(path).to_pylist(), default=str)
        else:
            text = path.read_bytes().decode("utf-8", errors="replace")
        if pattern.search(text):
            hits.append(str(path.relative_to(folder)))
    return hits


@pytest.fixture(scope="module")
def privacy_run(small_company: Path, tmp_path_factory, prefect_harness):
    import shutil

    root = tmp_path_factory.mktemp("privacy") / "company"
    shutil.copytree(small_company, root)
    deleted = pl.concat(
        [pl.read_csv(p) for p in sorted((root / "sources" / "deletion_requests").glob("*.csv"))]
    )["user_id"].to_list()
    withdrawn = fully_consented_active_user(root, set(deleted))
    # yesterday, the user withdrew every consent
    at = datetime.combine(DATA_END, time(10))
    pl.DataFrame(
        {"user_id": [withdrawn] * 3, "purpose": ["marketing_email", "marketing_push", "profiling"],
         "is_granted": [False] * 3, "updated_at": [at] * 3}
    ).write_csv(root / "sources" / "consents" / f"{DATA_END.isoformat()}-withdrawals.csv",
                datetime_format="%Y-%m-%d %H:%M:%S")  # fmt: skip
    logger = logging.getLogger()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    previous_umask = os.umask(0o022)  # a scheduler's usual umask: the run's own files must still be private
    try:
        summary = nightly(config_path=str(root / "tailor.yaml"), run_date=RUN_DATE)
    finally:
        os.umask(previous_umask)
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    messages = [record.getMessage() for record in records]
    return root, load_settings(root / "tailor.yaml"), deleted, withdrawn, summary, messages


def test_a_deleted_user_leaves_no_trace_in_any_table_or_file(privacy_run) -> None:
    root, settings, deleted, _, summary, _ = privacy_run
    assert deleted, "the generator wrote no deletion request"
    pattern = id_pattern(deleted)
    # the sources still hold them (the source system did not erase them) and the run loaded their events
    assert file_hits(root / "sources" / "interactions", pattern)
    assert warehouse_hits(settings, pattern) == []
    assert file_hits(root / "var" / "runs", pattern) == []
    # the published files carry pseudonyms: neither the ids nor their pseudonyms may be there
    published = id_pattern([*deleted, *pseudonyms_of(settings, deleted)])
    assert file_hits(root / "published", published) == []
    with connect(settings) as con:
        registered = con.execute("select count(*) from meta.deletion_register").fetchall()[0][0]
    assert registered == len(set(deleted))
    assert summary["erasure"]["new_requests"] == len(set(deleted)) and summary["erasure"]["rows_removed"] > 0


def emails_of(root: Path, users: list[str]) -> list[str]:
    frame = pl.concat([pl.read_csv(p, infer_schema=False) for p in sorted((root / "sources" / "users").glob("*.csv"))])
    return frame.filter(pl.col("user_id").is_in(users))["email"].drop_nulls().to_list()


def warehouse_file_hits(settings, values: list[str]) -> list[str]:
    """The values found in the raw bytes of the warehouse's own files (the database, its WAL if any),
    freed blocks included. A plain substring search: DuckDB stores strings back to back, with nothing
    between them that a word boundary could match."""
    warehouse = settings.resolve(settings.warehouse.path)
    files = [p for p in warehouse.parent.iterdir() if p.is_file() and p.name.startswith(warehouse.name)]
    assert warehouse in files
    contents = [p.read_bytes() for p in files]
    return [value for value in values if any(value.encode() in data for data in contents)]


def test_an_erasure_rewrites_the_warehouse_file_so_no_freed_block_holds_the_user(privacy_run) -> None:
    root, settings, deleted, _, summary, _ = privacy_run
    emails = emails_of(root, deleted)
    assert emails, "the erased users have e-mail addresses in the sources"
    assert summary["erasure"]["warehouse_compacted"]
    assert warehouse_file_hits(settings, deleted + emails) == []
    # the same bytes hold the others' addresses as text: the absence above is the erasure, not compression
    users = pl.concat([pl.read_csv(p) for p in (root / "sources" / "users").glob("*.csv")])["user_id"]
    assert warehouse_file_hits(settings, emails_of(root, sorted(set(users) - set(deleted))))


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_warehouse_and_the_run_folders_are_private_whatever_the_umask(privacy_run) -> None:
    _, settings, _, _, _, _ = privacy_run
    assert mode(settings.resolve(settings.warehouse.path)) == 0o600
    runs = settings.resolve(settings.warehouse.runs_dir)
    assert mode(runs) == 0o700
    inside = list(runs.rglob("*"))
    assert any(p.suffix == ".txt" and p.parent.name == "models" for p in inside)  # the saved models
    assert [str(p) for p in inside if mode(p) != (0o700 if p.is_dir() else 0o600)] == []


def test_the_deletion_register_is_keyed_with_the_secret_key(privacy_run) -> None:
    import hashlib
    import hmac

    root, settings, deleted, _, _, _ = privacy_run
    with connect(settings) as con:
        register = con.execute("select user_hash, scheme from meta.deletion_register").fetchall()
    key = os.environ["TAILOR_PSEUDONYM_KEY"].encode()
    assert {h for h, _ in register} == {hmac.new(key, u.encode(), hashlib.sha256).hexdigest() for u in deleted}
    assert {scheme for _, scheme in register} == {"hmac-sha256"}
    # hashing every known id with the public salt, or none, recovers no one
    users = pl.concat([pl.read_csv(p) for p in (root / "sources" / "users").glob("*.csv")])["user_id"]
    guesses = {
        hashlib.sha256((salt + user).encode()).hexdigest()
        for user in users
        for salt in ("tailor-deletion-register", "")
    }
    assert not guesses & {h for h, _ in register}


def test_a_deleted_user_sent_again_by_the_source_is_dropped_on_load(privacy_run, tmp_path) -> None:
    from tailor.tasks.extract import extract_sources
    from tailor.tasks.privacy import erase_deleted_users
    from tailor.warehouse import run_context

    root, settings, deleted, _, _, _ = privacy_run
    next_day = RUN_DATE + timedelta(days=1)
    pl.DataFrame(
        {"user_id": [deleted[0], "u001"], "item_id": ["i001", "i001"], "event_type": ["view", "view"],
         "occurred_at": [datetime.combine(RUN_DATE, time(9))] * 2, "value": [None, None]}
    ).write_csv(root / "sources" / "interactions" / f"{RUN_DATE.isoformat()}.csv",
                datetime_format="%Y-%m-%d %H:%M:%S")  # fmt: skip
    ctx = run_context(settings, next_day)
    extract_sources.fn(settings, ctx)
    result = erase_deleted_users.fn(settings, ctx)
    assert result["new_requests"] == 0 and result["late_rows_dropped"] == 1
    assert warehouse_hits(settings, id_pattern(deleted)) == []
    with connect(settings) as con:
        kept = con.execute(
            "select count(*) from raw.interactions where user_id = 'u001' and _loaded_run_date = $d",
            {"d": next_day},
        ).fetchall()[0][0]
    assert kept == 1


def pseudonyms_of(settings, users: list[str]) -> list[str]:
    from tailor.tasks.publish import pseudonym

    return [pseudonym(settings.pseudonym_key(), user) for user in users]


def test_a_user_who_withdrew_consent_yesterday_gets_nothing_today(privacy_run) -> None:
    root, settings, _, withdrawn, _, _ = privacy_run
    run = run_folder(root / "published", RUN_DATE)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["user_id"].startswith("pseudonymous")  # the generated config, as every config, by default
    hits = file_hits(run, id_pattern([withdrawn, *pseudonyms_of(settings, [withdrawn])]))
    assert hits == [], hits
    # the search finds a published user by pseudonym: the absence above is no search that cannot match
    published = pl.read_parquet(run / "recommendations" / "part-0000.parquet")["user_id"][0]
    assert file_hits(run / "recommendations", id_pattern([published]))
    # the same user is in the warehouse's raw data: the absence above is consent, not a missing user
    assert file_hits(root / "sources" / "interactions", id_pattern([withdrawn]))


def test_the_logs_of_a_run_hold_no_credentials_or_personal_data(privacy_run) -> None:
    root, _, _, _, _, messages = privacy_run
    assert len(messages) > 20  # the run did log
    text = "\n".join(messages)
    secrets = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["TAILOR_PSEUDONYM_KEY"]]
    assert not any(secret in text for secret in secrets)
    emails = re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", text)
    assert emails == []
    users = pl.concat([pl.read_csv(p) for p in (root / "sources" / "users").glob("*.csv")])
    found = [match.group(2) for match in id_pattern(users["user_id"].to_list()).finditer(text)]
    assert found == [], found[:5]


def test_an_erasure_also_clears_the_quarantine_and_data_quality_samples(privacy_run) -> None:
    """A user whose bad rows were quarantined and sampled on an earlier night asks to be erased."""
    from tailor.tasks.extract import extract_sources
    from tailor.tasks.privacy import erase_deleted_users
    from tailor.warehouse import run_context

    root, settings, _, withdrawn, _, _ = privacy_run
    with connect(settings) as con:
        con.execute(
            "insert into quarantine.interactions (run_date, source_file, failed_rules, original_values, row_key) "
            "values ($d, 'x.csv', ['known_event_type'], json_object('user_id', $u, 'event_type', 'clik'), -1)",
            {"d": RUN_DATE, "u": withdrawn},
        )
        con.execute(
            "update meta.data_quality_results set unexpected_sample = [$u, 'someone-else'] "
            "where rowid = (select min(rowid) from meta.data_quality_results)",
            {"u": withdrawn},
        )
    assert warehouse_hits(settings, id_pattern([withdrawn]))
    day = RUN_DATE + timedelta(days=3)
    pl.DataFrame(
        {"user_id": [withdrawn], "requested_at": [datetime.combine(day - timedelta(days=1), time(8))]}
    ).write_csv(
        root / "sources" / "deletion_requests" / f"{(day - timedelta(days=1)).isoformat()}.csv",
        datetime_format="%Y-%m-%d %H:%M:%S",
    )
    ctx = run_context(settings, day)
    extract_sources.fn(settings, ctx)
    assert erase_deleted_users.fn(settings, ctx)["new_requests"] == 1
    assert warehouse_hits(settings, id_pattern([withdrawn])) == []
    with connect(settings) as con:
        kept = con.execute(
            "select count(*) from meta.data_quality_results where list_contains(unexpected_sample, 'someone-else')"
        ).fetchall()[0][0]
    assert kept == 0  # the sample is dropped as a whole, the check itself is kept


def test_erasure_without_the_key_fails_in_one_line_naming_the_variable(company: Path, monkeypatch) -> None:
    from tailor.config import ConfigError
    from tailor.errors import USER_ERRORS
    from tailor.tasks.privacy import erase_deleted_users
    from tailor.warehouse import run_context

    settings = load_settings(company / "tailor.yaml")
    monkeypatch.delenv("TAILOR_PSEUDONYM_KEY")  # gone after the config was read: the erasure itself refuses
    with pytest.raises(ConfigError, match="TAILOR_PSEUDONYM_KEY") as error:
        erase_deleted_users.fn(settings, run_context(settings, RUN_DATE))
    assert isinstance(error.value, USER_ERRORS) and "\n" not in str(error.value)
    assert not settings.resolve(settings.warehouse.path).exists()  # refused before touching anything


def test_a_register_from_before_the_key_still_drops_its_users_and_is_keyed_as_they_return(company: Path) -> None:
    import hashlib
    import hmac

    from tailor.tasks.extract import extract_sources
    from tailor.tasks.privacy import erase_deleted_users
    from tailor.warehouse import run_context

    settings = load_settings(company / "tailor.yaml")
    ctx = run_context(settings, RUN_DATE)
    extract_sources.fn(settings, ctx)
    with connect(settings) as con:
        returning, absent = "u001", "someone-who-never-comes-back"
        assert con.execute("select count(*) from raw.interactions where user_id = $u", {"u": returning}).fetchall()[0][0]
        # the register as the old scheme wrote it with external ids: sha256 of a public salt and the id
        con.execute(
            "create table meta.deletion_register (user_hash varchar primary key, requested_at timestamp, "
            "registered_on date)"
        )
        for user in (returning, absent):
            con.execute(
                "insert into meta.deletion_register values (sha256('tailor-deletion-register' || $u), "
                "timestamp '2026-01-01', date '2026-01-02')",
                {"u": user},
            )
    result = erase_deleted_users.fn(settings, ctx)
    assert result["late_rows_dropped"] > 0
    key = os.environ["TAILOR_PSEUDONYM_KEY"].encode()
    with connect(settings) as con:
        assert warehouse_hits(settings, id_pattern([returning])) == []
        register = dict(con.execute("select user_hash, scheme from meta.deletion_register").fetchall())
    assert register[hmac.new(key, returning.encode(), hashlib.sha256).hexdigest()] == "hmac-sha256"
    assert hashlib.sha256(f"tailor-deletion-register{returning}".encode()).hexdigest() not in register
    # an old entry whose id never comes back cannot be keyed without it: it stays, matched the old way
    assert register[hashlib.sha256(f"tailor-deletion-register{absent}".encode()).hexdigest()] == "sha256-salted"
