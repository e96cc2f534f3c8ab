"""The one way SQL runs: files under `sql/`, values bound as `$name` parameters, never formatted in.

A model file `sql/<layer>/<name>.sql` materializes as the table `<layer>.<name>`; the identifiers come
from the file's own path, the values only ever from bound parameters.
"""

from __future__ import annotations

import logging
import re
import time
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from tailor.progress import progress

log = logging.getLogger(__name__)

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def sql_root() -> Path:
    return Path(str(resources.files("tailor.sql_models")))


@cache
def read_sql(model: str) -> str:
    """The text of `sql/<model>.sql` (model like 'staging/stg_users'), without its trailing semicolon."""
    path = sql_root() / f"{model}.sql"
    return path.read_text(encoding="utf-8").strip().rstrip(";")


def bind(text: str, params: dict[str, Any]) -> dict[str, Any]:
    """Keep the parameters the statement names; a named one that is missing is a programming error."""
    wanted = parameter_names(text)
    missing = wanted - params.keys()
    if missing:
        raise KeyError(f"SQL parameter(s) not provided: {', '.join(sorted(missing))}")
    return {name: params[name] for name in wanted}


def parameter_names(text: str) -> set[str]:
    """The `$name` parameters a statement reads: not those in comments or string literals ('$USD')."""
    return set(_PARAM.findall(_strip_comments(text)))


def _strip_comments(text: str) -> str:
    # one left-to-right pass: an apostrophe in a comment opens no string, and "--" in a string is no comment
    return re.sub(r"'(?:[^']|'')*'|--[^\n]*", lambda found: "''" if found.group().startswith("'") else "", text)


def table_name(model: str) -> str:
    layer, _, name = model.partition("/")
    for part in (layer, name):
        if not _IDENTIFIER.match(part):
            raise ValueError(f"model name {model!r} is not a plain identifier path")
    return f"{layer}.{name}"


def query(con: duckdb.DuckDBPyConnection, model: str, params: dict[str, Any] | None = None):
    """Run a SELECT model and return the DuckDB relation (lazy: fetch with .pl(), .fetchall()...)."""
    text = read_sql(model)
    return con.sql(text, params=bind(text, params or {}))


def materialize(con: duckdb.DuckDBPyConnection, model: str, params: dict[str, Any] | None = None) -> int:
    """Replace the table `<layer>.<name>` with the model's result; return its row count."""
    text = read_sql(model)
    target = table_name(model)
    con.execute(f"create schema if not exists {target.split('.')[0]}")
    con.execute(f"create or replace table {target} as {text}", bind(text, params or {}))
    return count_rows(con, target)


def materialize_temp(
    con: duckdb.DuckDBPyConnection, model: str, params: dict[str, Any], name: str, order_by: tuple[str, ...]
) -> None:
    """The model's result as the temporary table `name` (this connection only), sorted so that reads of a
    range of `order_by` skip the rest."""
    for identifier in (name, *order_by):
        if not _IDENTIFIER.match(identifier):
            raise ValueError(f"{identifier!r} is not a plain identifier")
    text = read_sql(model)
    order = f" order by {', '.join(order_by)}" if order_by else ""
    con.execute(f"create or replace temp table {name} as select * from ({text}){order}", bind(text, params))


def materialize_partition(
    con: duckdb.DuckDBPyConnection,
    model: str,
    partition_column: str,
    params: dict[str, Any],
    buckets: int = 1,
) -> int:
    """Replace one partition (rows whose `partition_column` equals that parameter) of `<layer>.<name>`.

    The model must select `$<partition_column> as <partition_column>`; rerunning it replaces, never appends.
    A model that takes `$bucket` is run once per bucket of users (it keeps the users whose hash falls in
    `$bucket`, or the rows an earlier model built in that bucket), so memory holds one bucket's rows, not
    every user's; `$buckets` is how many there are (a model taking only that runs once, for all of them).
    """
    started = time.perf_counter()
    text = read_sql(model)
    target = table_name(model)
    params = {"bucket": 0, "buckets": buckets} | params
    bound = bind(text, params)
    con.execute(f"create schema if not exists {target.split('.')[0]}")
    wanted = con.execute(
        f"select column_name, column_type from (describe select * from ({text}))", bound
    ).fetchall()
    existing = con.execute(
        "select column_name, data_type from information_schema.columns where table_schema = $schema "
        "and table_name = $table order by ordinal_position",
        {"schema": target.split(".")[0], "table": target.split(".")[1]},
    ).fetchall()
    if existing and [tuple(row) for row in existing] != [tuple(row) for row in wanted]:
        # the model's columns changed (an upgrade): its partitions are derived data, rebuilt as runs need them
        con.execute(f"drop table {target}")
    con.execute(f"create table if not exists {target} as select * from ({text}) where false", bound)
    # partitions are read back in an explicit order (read_partition), so the insert need not keep its
    # input's order: without that constraint DuckDB streams large inserts in far less memory
    con.execute("set preserve_insertion_order = false")
    con.execute("begin transaction")
    try:
        con.execute(
            f"delete from {target} where {partition_column} = $value", {"value": params[partition_column]}
        )
        per_bucket = "bucket" in bound
        with progress(f"{target}[{params[partition_column]}]", total=buckets if per_bucket else 1,
                      unit="buckets", log_end=False) as bar:  # fmt: skip
            for bucket in range(buckets if per_bucket else 1):
                values = bound | ({"bucket": bucket} if per_bucket else {})
                con.execute(f"insert into {target} by name {text}", values)
                bar.advance(1)
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    finally:
        con.execute("reset preserve_insertion_order")
    rows = int(
        scalar(
            con,
            f"select count(*) from {target} where {partition_column} = $value",
            {"value": params[partition_column]},
        )
    )
    # one line per model and partition: where a feature build spends its time
    log.info("%s[%s]: %s rows in %.1f s", target, params[partition_column], f"{rows:,}",
             time.perf_counter() - started)  # fmt: skip
    return rows


def read_partition(con: duckdb.DuckDBPyConnection, model: str, cutoff: Any, order_by: tuple[str, ...]):
    """One cutoff's rows of a partitioned model table, in a stable order (a relation: .pl(), readers)."""
    for column in order_by:
        if not _IDENTIFIER.match(column):
            raise ValueError(f"order column {column!r} is not a plain identifier")
    return con.sql(
        f"select * from {table_name(model)} where cutoff = $cutoff order by {', '.join(order_by)}",
        params={"cutoff": cutoff},
    )


def count_rows(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(scalar(con, f"select count(*) from {table}"))


def scalar(con: duckdb.DuckDBPyConnection, statement: str, params: dict[str, Any] | None = None) -> Any:
    """The single value of a one-row, one-column statement (fully fetched: DuckDB 2 refuses new work
    on a connection while a result is unfinished)."""
    rows = con.execute(statement, params or {}).fetchall()
    return rows[0][0] if rows else None


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether `schema.name` exists as a table."""
    schema, _, name = table.partition(".")
    return bool(
        scalar(
            con,
            "select count(*) from information_schema.tables where table_schema = $schema and table_name = $name",
            {"schema": schema, "name": name},
        )
    )


def ensure_table(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str]) -> None:
    """Create `schema.name` with these columns (name -> DuckDB type) unless it exists. Names and types come
    from constants in the code, never from input."""
    con.execute(f"create schema if not exists {table.split('.')[0]}")
    ddl = ", ".join(f"{name} {sql_type}" for name, sql_type in columns.items())
    con.execute(f"create table if not exists {table} ({ddl})")


def replace_run_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: dict[str, str],
    rows: list[dict[str, Any]],
    run_date: Any,
) -> None:
    """Replace one run date's rows of a history table: rerunning a night gives the same table."""
    con.execute(f"delete from {table} where run_date = $run_date", {"run_date": run_date})
    if not rows:
        return
    frame = pl.DataFrame(
        [{name: row.get(name) for name in columns} for row in rows], infer_schema_length=None
    )
    con.register("new_run_rows", frame.to_arrow())
    try:
        con.execute(f"insert into {table} select {', '.join(columns)} from new_run_rows")
    finally:
        con.unregister("new_run_rows")
