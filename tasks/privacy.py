"""Erasure: honour every deletion request in the run that receives it, and keep honouring it.

Right after extraction, before anything reads the new rows:
1. every user named in `raw.deletion_requests` is removed from every table of the warehouse that has a
   `user_id` column (raw, quarantine, staging, features, model inputs and scores, marts, meta history), from
   the quarantine's original values and the data-quality samples, and from the local working copies of
   earlier runs (downloads, score files, local copies of published files);
2. the request itself is then deleted: what remains is a keyed hash of the id in `meta.deletion_register`
   (HMAC-SHA256 of the id under the pseudonymisation key, TAILOR_PSEUDONYM_KEY), so the warehouse holds no
   copy of the id, and without the key no list of candidate ids can be matched against the register. The
   key is required in every mode of `publish.published_user_id`: with external ids published, a public
   salt would let anyone holding the warehouse recover every erased id;
3. every later run drops, from the rows it has just loaded, any row whose user's hash is registered: a
   source system that still sends the user's events does not bring them back;
4. the warehouse file is then rewritten (tailor.warehouse.compact): deleted rows stay in a DuckDB file's
   freed blocks until overwritten, so without it the erased ids and e-mails stay readable in its bytes.

Registers written before the key was required hold `sha256(salt || id)` with the key, or with a public
salt when external ids were published (scheme `sha256-salted`). They cannot be re-keyed without the ids,
so they are kept and still matched by the old hash; an old entry is replaced by its keyed hash the first
time its id is seen again (a new request, or a row a source still sends), and the salted ones that never
come back stay as they are (they were written before this fix; erase them again to be sure: see README).

Everything downstream (features, models, scores, published files) is rebuilt from raw each night, so it is
clean from that run on: models are retrained without the user at the next training.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import ConfigError, Settings
from tailor.progress import reported
from tailor.schema import LOADED_RUN_DATE, TABLES, USER_ID
from tailor.sql import bind
from tailor.tasks.features import drop_other_nights_features
from tailor.warehouse import RunContext, compact, compaction_marker, connect

log = logging.getLogger(__name__)

REGISTER = "meta.deletion_register"
KEYED, SALTED = "hmac-sha256", "sha256-salted"  # the register's hash schemes: new entries are keyed
# the public salt of registers written without a key (external ids published): matched, never written
LEGACY_PUBLIC_SALT = "tailor-deletion-register"
# local working files of earlier runs that can hold user ids; models and reports hold none
RUN_COPIES = ("downloads", "publish", "scoring", "rendering", "data_docs", ".data_docs")
SHA256_BLOCK = 64


def register_key(settings: Settings) -> bytes:
    """The secret the register's hashes are keyed with: the pseudonymisation key, in every mode."""
    name = settings.publish.pseudonym_key_env
    key = os.environ.get(name, "")
    if not key:
        raise ConfigError(
            f"the environment variable {name} (the pseudonymisation key) is not set: the deletion register "
            "is keyed with it whatever publish.published_user_id says"
        )
    return key.encode()


@dataclass(frozen=True)
class RegisterHash:
    """HMAC-SHA256 of user ids computed in DuckDB (`sql(column)`), with the key's pads as bound blobs
    (the key never appears in SQL text); plus the salted hashes of registers written before the key."""

    params: dict[str, object]

    @classmethod
    def of(cls, key: bytes) -> RegisterHash:
        block = (hashlib.sha256(key).digest() if len(key) > SHA256_BLOCK else key).ljust(SHA256_BLOCK, b"\0")
        return cls({
            "hmac_ipad": bytes(b ^ 0x36 for b in block),
            "hmac_opad": bytes(b ^ 0x5C for b in block),
            "salt_key": key.decode(errors="replace"),
            "salt_public": LEGACY_PUBLIC_SALT,
        })  # fmt: skip

    @staticmethod
    def sql(column: str) -> str:
        return f"sha256($hmac_opad || unhex(sha256($hmac_ipad || encode({column}))))"

    @staticmethod
    def salted_sql(column: str) -> list[str]:
        return [f"sha256($salt_key || {column})", f"sha256($salt_public || {column})"]


def ensure_register(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists meta")
    con.execute(
        f"create table if not exists {REGISTER} (user_hash varchar primary key, requested_at timestamp, "
        "registered_on date, scheme varchar)"
    )
    if "scheme" not in {row[0] for row in con.execute(f"describe {REGISTER}").fetchall()}:
        # a register from before the key was required: every entry is sha256(salt || id), kept as such
        con.execute(f"alter table {REGISTER} add column scheme varchar")
        con.execute(f"update {REGISTER} set scheme = '{SALTED}'")


def run(con: duckdb.DuckDBPyConnection, statement: str, params: dict[str, object]) -> list[tuple[Any, ...]]:
    """Execute with the parameters the statement names (the hash's pads are offered to every one)."""
    return con.execute(statement, bind(statement, params)).fetchall()


def upgrade_salted(
    con: duckdb.DuckDBPyConnection, hashes: RegisterHash, ids: str, params: dict[str, object] | None = None
) -> int:
    """Replace the salted entries of the ids in the query `ids` (one column, user_id; its parameters in
    `params`) by keyed ones."""
    candidates = " union all ".join(
        f"select {USER_ID}, {expr} as salted_hash from ({ids})"
        for expr in RegisterHash.salted_sql(USER_ID)
    )
    matched = (
        f"from {REGISTER} r join ({candidates}) i on r.user_hash = i.salted_hash and r.scheme = '{SALTED}'"
    )
    offered = {**hashes.params, **(params or {})}
    found = int(run(con, f"select count(*) {matched}", offered)[0][0])
    if found:
        run(
            con,
            f"insert or ignore into {REGISTER} (user_hash, requested_at, registered_on, scheme) "
            f"select {RegisterHash.sql('i.' + USER_ID)}, r.requested_at, r.registered_on, '{KEYED}' {matched}",
            offered,
        )
        run(con, f"delete from {REGISTER} where user_hash in (select r.user_hash {matched})", offered)
    return found


def tables_with_column(con: duckdb.DuckDBPyConnection, column: str) -> list[str]:
    """Every base table in the warehouse with that column, as schema.table."""
    rows = con.execute(
        "select distinct c.table_schema, c.table_name from information_schema.columns c "
        "join information_schema.tables t using (table_catalog, table_schema, table_name) "
        "where c.column_name = $column and t.table_type = 'BASE TABLE' order by all",
        {"column": column},
    ).fetchall()
    return [f"{schema}.{name}" for schema, name in rows]


def tables_in(con: duckdb.DuckDBPyConnection, schema: str) -> list[str]:
    rows = con.execute(
        "select table_name from information_schema.tables where table_schema = $schema and "
        "table_type = 'BASE TABLE' order by 1",
        {"schema": schema},
    ).fetchall()
    return [f"{schema}.{name}" for (name,) in rows]


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    schema, name = table.split(".")
    return bool(
        con.execute(
            "select count(*) from information_schema.columns where table_schema = $s and table_name = $t "
            "and column_name = $c",
            {"s": schema, "t": name, "c": column},
        ).fetchall()[0][0]
    )


def erase_everywhere(con: duckdb.DuckDBPyConnection) -> int:
    """Remove the users in the temporary table `erase_ids` from every table; return the rows removed."""
    removed = 0
    # table names come from the catalogue, never from input
    for table in tables_with_column(con, USER_ID):
        before = con.execute(f"select count(*) from {table}").fetchall()[0][0]
        con.execute(f"delete from {table} where {USER_ID} in (select {USER_ID} from erase_ids)")
        removed += before - con.execute(f"select count(*) from {table}").fetchall()[0][0]
    # the quarantine, and the recovery's copies of it, name the user inside each row's original values
    for table in [*tables_in(con, "quarantine"), *tables_in(con, "recovery")]:
        column = "original_values" if has_column(con, table, "original_values") else None
        if column:
            con.execute(
                f"delete from {table} where json_extract_string({column}, '$.{USER_ID}') in "
                f"(select {USER_ID} from erase_ids)"
            )
    for table in tables_with_column(con, "unexpected_sample"):
        # a sample of unexpected values may name the user: drop the sample, keep the check
        con.execute(
            f"update {table} set unexpected_sample = null "
            f"where list_has_any(unexpected_sample, (select list({USER_ID}) from erase_ids))"
        )
    return removed


def drop_new_rows_of_erased_users(con: duckdb.DuckDBPyConnection, hashes: RegisterHash, ctx: RunContext) -> int:
    """Rows this run loaded whose user is in the register (a source still sending an erased user)."""
    salted = bool(con.execute(f"select count(*) from {REGISTER} where scheme = '{SALTED}'").fetchall()[0][0])
    removed = 0
    for name, spec in TABLES.items():
        if USER_ID not in spec.column_names:
            continue
        table = f"raw.{name}"
        params = {"run_date": ctx.run_date, **hashes.params}
        new_ids = f"select distinct {USER_ID} from {table} where {LOADED_RUN_DATE} = $run_date"
        if salted:  # an old entry is matched by its old hash once more, and keyed from now on
            upgrade_salted(con, hashes, new_ids, {"run_date": ctx.run_date})
        keyed = f"select user_hash from {REGISTER} where scheme = '{KEYED}'"
        where = f"{LOADED_RUN_DATE} = $run_date and {RegisterHash.sql(USER_ID)} in ({keyed})"
        before = run(con, f"select count(*) from {table} where {where}", params)[0][0]
        if before:
            run(con, f"delete from {table} where {where}", params)
            removed += before
    return removed


def clear_run_copies(runs_dir: Path) -> int:
    """Delete the local working copies of earlier runs that may hold user ids; return how many folders."""
    cleared = 0
    for run in sorted(runs_dir.glob("*")) if runs_dir.exists() else []:
        for name in RUN_COPIES:
            folder = run / name
            if folder.is_dir():
                shutil.rmtree(folder)
                cleared += 1
    return cleared


@task(name="erase-deleted-users", cache_policy=NO_CACHE)
@reported("erase-deleted-users")
def erase_deleted_users(settings: Settings, ctx: RunContext) -> dict[str, Any]:
    """Honour new deletion requests everywhere and drop registered users from tonight's new rows."""
    hashes = RegisterHash.of(register_key(settings))
    with connect(settings) as con:
        ensure_register(con)
        drop_other_nights_features(con, ctx)
        con.execute(
            f"create or replace temp table erase_ids as select {USER_ID}, min(requested_at) as requested_at "
            f"from raw.deletion_requests where {USER_ID} is not null group by {USER_ID}"
        )
        new_requests = con.execute("select count(*) from erase_ids").fetchall()[0][0]
        removed = 0
        if new_requests:
            con.execute("begin transaction")
            upgrade_salted(con, hashes, f"select {USER_ID} from erase_ids")
            run(
                con,
                f"insert or ignore into {REGISTER} (user_hash, requested_at, registered_on, scheme) "
                f"select {RegisterHash.sql(USER_ID)}, requested_at, $run_date, '{KEYED}' from erase_ids",
                {"run_date": ctx.run_date, **hashes.params},
            )
            removed = erase_everywhere(con)  # deletion_requests itself has a user_id column: emptied too
            con.execute("commit")
            cleared = clear_run_copies(settings.resolve(settings.warehouse.runs_dir))
            log.info(
                "erasure: %d new request(s) honoured, %d row(s) removed, %d local run folder(s) cleared",
                new_requests, removed, cleared,
            )  # fmt: skip
        con.execute("drop table erase_ids")
        late = drop_new_rows_of_erased_users(con, hashes, ctx)
        registered = con.execute(f"select count(*) from {REGISTER}").fetchall()[0][0]
    if late:
        log.info("erasure: %d newly loaded row(s) of erased users dropped", late)
    # the deleted rows (and the requests) are still in the file's freed blocks: rewrite it without them
    marker = compaction_marker(settings)
    if new_requests or late:
        marker.touch(mode=0o600)
    compacted = marker.exists() and compact(settings)
    if compacted:
        log.info("erasure: warehouse file rewritten without the freed blocks")
    return {"new_requests": int(new_requests), "rows_removed": int(removed), "late_rows_dropped": int(late),
            "users_erased_to_date": int(registered), "warehouse_compacted": compacted}  # fmt: skip
