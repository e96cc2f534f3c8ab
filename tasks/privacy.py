"""Erasure: honour every deletion request in the run that receives it, and keep honouring it.

Right after extraction, before anything reads the new rows:
1. every user named in `raw.deletion_requests` is removed from every table of the warehouse that has a
   `user_id` column (raw, quarantine, staging, features, model inputs and scores, marts, meta history), from
   the quarantine's original values and the data-quality samples, and from the local working copies of
   earlier runs (downloads, score files, local copies of published files);
2. the request itself is then deleted: what remains is a keyed hash of the id in `meta.deletion_register`
   (SHA-256 over the pseudonymisation key and the id), so the warehouse holds no copy of the id;
3. every later run drops, from the rows it has just loaded, any row whose user's hash is registered: a
   source system that still sends the user's events does not bring them back.

Everything downstream (features, models, scores, published files) is rebuilt from raw each night, so it is
clean from that run on: models are retrained without the user at the next training.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import duckdb
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import Settings
from tailor.schema import LOADED_RUN_DATE, TABLES, USER_ID
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)

REGISTER = "meta.deletion_register"
# without a pseudonymisation key (external ids published) the hash still hides the id from a casual reader
DEFAULT_HASH_SALT = "tailor-deletion-register"
# local working files of earlier runs that can hold user ids; models and reports hold none
RUN_COPIES = ("downloads", "publish", "scoring", "rendering", "data_docs", ".data_docs")


def hash_salt(settings: Settings) -> str:
    key = settings.pseudonym_key()
    return key.decode() if key else DEFAULT_HASH_SALT


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
    for table in tables_in(con, "quarantine"):
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


def drop_new_rows_of_erased_users(con: duckdb.DuckDBPyConnection, salt: str, ctx: RunContext) -> int:
    """Rows this run loaded whose user is in the register (a source still sending an erased user)."""
    removed = 0
    for name, spec in TABLES.items():
        if USER_ID not in spec.column_names:
            continue
        table = f"raw.{name}"
        params = {"run_date": ctx.run_date, "salt": salt}
        where = f"{LOADED_RUN_DATE} = $run_date and sha256($salt || {USER_ID}) in (select user_hash from {REGISTER})"
        before = con.execute(f"select count(*) from {table} where {where}", params).fetchall()[0][0]
        if before:
            con.execute(f"delete from {table} where {where}", params)
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
def erase_deleted_users(settings: Settings, ctx: RunContext) -> dict[str, Any]:
    """Honour new deletion requests everywhere and drop registered users from tonight's new rows."""
    salt = hash_salt(settings)
    with connect(settings) as con:
        con.execute("create schema if not exists meta")
        con.execute(
            f"create table if not exists {REGISTER} (user_hash varchar primary key, requested_at timestamp, "
            "registered_on date)"
        )
        con.execute(
            f"create or replace temp table erase_ids as select {USER_ID}, min(requested_at) as requested_at "
            f"from raw.deletion_requests where {USER_ID} is not null group by {USER_ID}"
        )
        new_requests = con.execute("select count(*) from erase_ids").fetchall()[0][0]
        removed = 0
        if new_requests:
            con.execute("begin transaction")
            con.execute(
                f"insert or ignore into {REGISTER} select sha256($salt || {USER_ID}), requested_at, $run_date "
                "from erase_ids",
                {"salt": salt, "run_date": ctx.run_date},
            )
            removed = erase_everywhere(con)  # deletion_requests itself has a user_id column: emptied too
            con.execute("commit")
            cleared = clear_run_copies(settings.resolve(settings.warehouse.runs_dir))
            log.info(
                "erasure: %d new request(s) honoured, %d row(s) removed, %d local run folder(s) cleared",
                new_requests, removed, cleared,
            )  # fmt: skip
        con.execute("drop table erase_ids")
        late = drop_new_rows_of_erased_users(con, salt, ctx)
        registered = con.execute(f"select count(*) from {REGISTER}").fetchall()[0][0]
    if late:
        log.info("erasure: %d newly loaded row(s) of erased users dropped", late)
    return {"new_requests": int(new_requests), "rows_removed": int(removed), "late_rows_dropped": int(late),
            "users_erased_to_date": int(registered)}  # fmt: skip
