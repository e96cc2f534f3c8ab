"""Braze Cloud Data Ingestion, incrementally: `user_updates` holds only the users whose payload changed enough
(`publish.braze`, sql/marts/user_updates.sql) since what Braze was last sent, `user_deletes` the users Braze
must delete, both under a prefix of their own.

Braze's two kinds of source read these differently (docs/outputs.md cites the pages):
- its S3 file source ingests every new file under the sync's folder whole, whatever UPDATED_AT says; so
  each publication writes new files, `PREFIX/braze/<dataset>/<run_date>-<UPDATED_AT>-part-NNNN.parquet`,
  and never rewrites one (a retried upload skips the files already there);
- its warehouse sync takes the rows whose UPDATED_AT is later than the last row it synced; so every
  publication's UPDATED_AT is later than anything published before (max(now, last published + 1 µs)), a
  rerun or backfill included, and the published rows are appended to `marts.braze_user_updates` and
  `marts.braze_user_deletes` (views of `meta.braze_user_update_log`/`meta.braze_user_delete_log`).

What Braze holds is `meta.braze_user_state`: per published id, the hash of the payload last published (none
for a delete). Braze's files go up only once the night is published (after the tables and pointers), and the
state moves right after them (`record_published`), so a night that fails before that sends Braze nothing and
the next run sends its changes. A night is
compared both with what Braze held before the night was first published (so a rerun resends the same users,
and its files differ only in UPDATED_AT) and with what Braze holds now (so a rerun on changed inputs also
corrects what the first run sent).

The state is keyed by the published id, not `user_id`: an erasure removes the user from every table with a
`user_id` (their payload log included), and the delete must still reach Braze. An id stays in the state
until another night is published after its delete, and in the delete log and the Braze files for good
(the pseudonym, or with external ids the id itself: see docs/outputs.md).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from tailor.config import Settings
from tailor.sql import materialize, materialize_temp
from tailor.storage import ObjectStore
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)

BRAZE_DATASETS = ("user_updates", "user_deletes")
BRAZE_PREFIX = "braze"
ONE_MICROSECOND = timedelta(microseconds=1)
STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"  # in file names: sortable, no separators an S3 console would split on

# every statement below names tables from this module only; values are bound
BRAZE_TABLES = (
    # what Braze holds: each published id's newest row and its newest from another night
    "create table if not exists meta.braze_user_state "
    "(external_id varchar, run_date date, updated_at timestamp, payload_md5 varchar)",
    # one row per published night: the UPDATED_AT the next publication must exceed
    "create table if not exists meta.braze_publishes (run_date date, updated_at timestamp, "
    "published_at timestamp, user_updates bigint, user_deletes bigint)",
    # every published row, for Braze's warehouse sync; user_id so an erasure removes the user's payloads
    "create table if not exists meta.braze_user_update_log "
    "(run_date date, user_id varchar, external_id varchar, updated_at timestamp, payload varchar)",
    "create table if not exists meta.braze_user_delete_log (run_date date, external_id varchar, updated_at timestamp)",
    # Braze's column names and nothing else: what a warehouse sync is pointed at
    "create or replace view marts.braze_user_updates as select external_id as EXTERNAL_ID, "
    "updated_at as UPDATED_AT, payload as PAYLOAD from meta.braze_user_update_log",
    "create or replace view marts.braze_user_deletes as select external_id as EXTERNAL_ID, "
    "updated_at as UPDATED_AT from meta.braze_user_delete_log",
    # the full-snapshot feed's history (before the incremental feed): nothing reads it any more
    "drop table if exists meta.user_update_history",
)


def ensure_braze_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists meta")
    con.execute("create schema if not exists marts")
    for statement in BRAZE_TABLES:
        con.execute(statement)


def next_updated_at(con: duckdb.DuckDBPyConnection, now: datetime) -> datetime:
    """This publication's UPDATED_AT (naive UTC, as the warehouse stores time): now, or a microsecond after
    the last published one if the clock says otherwise, so it always sorts after everything published."""
    now = now.astimezone(UTC).replace(tzinfo=None)
    last = con.execute("select max(updated_at) from meta.braze_publishes").fetchall()[0][0]
    return now if last is None else max(now, last + ONE_MICROSECOND)


def braze_id_kind(settings: Settings) -> str:
    """The ids Braze knows the users by: those user_updates is published with."""
    external = "user_updates" in settings.publish.external_id_datasets
    return "external" if external or settings.pseudonym_key() is None else "pseudonymous"


def published_ids(user_ids: pl.Series, settings: Settings) -> pl.DataFrame:
    """(user_id, external_id): each user and the id Braze knows them by, the same function every dataset's
    ids go through."""
    from tailor.tasks.publish import pseudonymize  # publish calls this module: import at use

    key = None if braze_id_kind(settings) == "external" else settings.pseudonym_key()
    frame = pl.DataFrame({"user_id": user_ids, "raw_id": user_ids})
    return pseudonymize(frame, key).select(  # typed even when nobody has a payload tonight
        pl.col("raw_id").cast(pl.Utf8).alias("user_id"), pl.col("user_id").cast(pl.Utf8).alias("external_id")
    )


def build_braze_feeds(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext, now: datetime | None = None
) -> datetime:
    """Tonight's `marts.user_updates` and `marts.user_deletes` against what Braze holds; return their
    UPDATED_AT. Nothing in the state moves until the night is published."""
    ensure_braze_tables(con)
    updated_at = next_updated_at(con, now or datetime.now(UTC))
    materialize(con, "marts/user_update_payloads")
    users = con.sql("select user_id from marts.user_update_payloads order by user_id").pl()["user_id"]
    con.register("braze_ids", published_ids(users, settings).to_arrow())
    try:
        params = {
            "run_date": ctx.run_date,
            "updated_at": updated_at,
            "cutoff": ctx.cutoff,
            "changed_share": settings.publish.braze.recommendations_changed_share,
            "decile_min_move": settings.publish.braze.decile_min_move,
        }
        materialize_temp(con, "features/braze_held_payloads", params, "braze_held", ("external_id",))
        materialize(con, "marts/user_updates", params)
        materialize(con, "marts/user_deletes", params)
        con.execute("drop table braze_held")
    finally:
        con.unregister("braze_ids")
    return updated_at


def stamp_text(updated_at: datetime) -> str:
    return updated_at.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def braze_manifest(
    datasets: dict[str, Any], run_date: date, updated_at: datetime, id_kind: str
) -> dict[str, Any]:
    """The manifest's `braze` entry: UPDATED_AT, and per dataset the Parquet files and the keys (relative to
    the target's PREFIX, not the attempt folder) they are published under for Braze's S3 sync."""
    entry: dict[str, Any] = {
        "updated_at": stamp_text(updated_at),
        "external_id": id_kind,
        "prefix": f"{BRAZE_PREFIX}/",
    }
    for name in BRAZE_DATASETS:
        parts = [file for file in datasets[name]["files"] if file["format"] == "parquet"]
        entry[name] = [
            {
                "path": f"{BRAZE_PREFIX}/{name}/{run_date.isoformat()}-{updated_at:{STAMP_FORMAT}}-"
                f"part-{number:04d}.parquet",
                "source": file["path"],
                "rows": file["rows"],
                "sha256": file["sha256"],
            }
            for number, file in enumerate(parts)
        ]
    return entry


def braze_entry(local_run: Path) -> dict[str, Any] | None:
    manifest = local_run / "manifest.json"
    if not manifest.is_file():
        return None
    entry = json.loads(manifest.read_text()).get("braze")
    return entry if isinstance(entry, dict) else None


def upload_braze_files(store: ObjectStore, local_run: Path) -> list[str]:
    """Put the night's Braze files under their own prefix; a file already there (an upload retried after it
    went in) is left alone, since Braze ingests every new object whole. Return the keys written."""
    entry = braze_entry(local_run)
    if entry is None:
        return []
    written = []
    for name in BRAZE_DATASETS:
        present = set(store.list_keys(f"{BRAZE_PREFIX}/{name}/"))
        for file in entry[name]:
            if file["path"] not in present:
                store.put_file(local_run / file["source"], file["path"])
                written.append(file["path"])
    return written


class BrazeStateError(RuntimeError):
    """The warehouse's Braze feed is not the one the run's files were written from."""


def require_feed(con: duckdb.DuckDBPyConnection, params: dict[str, Any]) -> None:
    """The warehouse's Braze feed is the one of `params` (run_date, updated_at), or BrazeStateError."""
    for table in ("marts.user_updates", "marts.user_deletes"):
        other = con.execute(
            f"select count(*) from {table} where run_date <> $run_date or updated_at <> $updated_at", params
        ).fetchall()[0][0]
        if other:
            raise BrazeStateError(
                f"{table} no longer holds the feed this run published (another night was written since): "
                "rerun the night to bring Braze's state up to date"
            )


def check_feed_current(settings: Settings, ctx: RunContext, local_run: Path) -> None:
    """Before anything is uploaded: the warehouse still holds the feed this run wrote (no other night was
    written since), so Braze never gets a night whose state could not then be recorded."""
    entry = braze_entry(local_run)
    if entry is None:
        return
    updated_at = datetime.fromisoformat(entry["updated_at"]).astimezone(UTC).replace(tzinfo=None)
    params = {"run_date": ctx.run_date, "updated_at": updated_at}
    with connect(settings) as con:
        ensure_braze_tables(con)
        require_feed(con, params)


def record_published(
    settings: Settings, ctx: RunContext, local_run: Path, published_at: datetime
) -> dict | None:
    """The night is published: move what Braze holds to it and append its rows to the warehouse-sync logs,
    in one transaction. Recording the same publication twice (a retried upload) changes nothing."""
    entry = braze_entry(local_run)
    if entry is None:
        return None
    updated_at = datetime.fromisoformat(entry["updated_at"]).astimezone(UTC).replace(tzinfo=None)
    params = {"run_date": ctx.run_date, "updated_at": updated_at}
    with connect(settings) as con:
        ensure_braze_tables(con)
        done = con.execute(
            "select count(*) from meta.braze_publishes where run_date = $run_date and updated_at = $updated_at",
            params,
        ).fetchall()[0][0]
        if done:
            return {"updated_at": entry["updated_at"], "recorded": False}
        require_feed(con, params)
        counts = {
            name: con.execute(f"select count(*) from marts.{name}").fetchall()[0][0]
            for name in BRAZE_DATASETS
        }
        con.execute("begin transaction")
        try:
            materialize_temp(
                con, "features/braze_state_after_publish", params, "braze_state_next", ("external_id",)
            )
            con.execute("delete from meta.braze_user_state")
            con.execute(
                "insert into meta.braze_user_state (external_id, run_date, updated_at, payload_md5) "
                "select external_id, run_date, updated_at, payload_md5 from braze_state_next"
            )
            con.execute("drop table braze_state_next")
            con.execute(
                "insert into meta.braze_user_update_log (run_date, user_id, external_id, updated_at, payload) "
                "select run_date, user_id, external_id, updated_at, payload from marts.user_updates "
                "order by external_id"
            )
            con.execute(
                "insert into meta.braze_user_delete_log (run_date, external_id, updated_at) "
                "select run_date, external_id, updated_at from marts.user_deletes order by external_id"
            )
            con.execute(
                "insert into meta.braze_publishes values ($run_date, $updated_at, $published_at, $updates, $deletes)",
                {**params, "published_at": published_at.astimezone(UTC).replace(tzinfo=None),
                 "updates": counts["user_updates"], "deletes": counts["user_deletes"]},
            )  # fmt: skip
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
    log.info("braze: %d update(s) and %d delete(s) published with UPDATED_AT %s",
             counts["user_updates"], counts["user_deletes"], entry["updated_at"])  # fmt: skip
    return {"updated_at": entry["updated_at"], "recorded": True, **counts}
