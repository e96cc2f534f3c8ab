"""Extract: land each configured source in `raw.<table>`, incrementally and idempotently.

Every file is loaded once, by the run whose date follows the file's date; `meta.loaded_files` remembers
which run loaded which file, so a rerun of the same date first removes what that run loaded and then
loads it again, and no row is ever loaded twice. The run sees only files dated before its run date.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import Settings, SourceConfig
from tailor.retry import retry_unless
from tailor.schema import FILE_DATE, LOADED_RUN_DATE, SOURCE_FILE, TABLES, Table
from tailor.sql import read_sql, scalar
from tailor.storage import StoredObject, fetch_to_local, list_source_objects
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)
_FILE_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


class ExtractError(RuntimeError):
    """A source that cannot be loaded; the message names the source, the file and the column."""


@dataclass
class SourceLoad:
    table: str
    files_loaded: int = 0
    rows_loaded: int = 0
    watermark: str | None = None  # newest file date loaded so far for this source
    warnings: list[str] = field(default_factory=list)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def file_date(uri: str) -> date | None:
    found = _FILE_DATE.findall(Path(uri).name)
    return date.fromisoformat(found[-1]) if found else None


def ensure_meta(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists raw")
    con.execute("create schema if not exists meta")
    con.execute(
        """
        create table if not exists meta.loaded_files (
            source varchar, file_uri varchar, file_date date, loaded_run_date date, row_count bigint,
            byte_count bigint
        )
        """
    )
    for table in TABLES.values():
        columns = ", ".join(f"{quote_identifier(c.name)} {c.duckdb_type}" for c in table.columns)
        con.execute(
            f"create table if not exists raw.{table.name} ({columns}, "
            f"{SOURCE_FILE} varchar, {FILE_DATE} date, {LOADED_RUN_DATE} date)"
        )


def reader_sql(source: SourceConfig) -> tuple[str, dict[str, object]]:
    """The table function reading one file (`$path`), with its options as bound parameters."""
    fmt = source.file_format()
    if fmt == "parquet":
        return "read_parquet($path)", {}
    if fmt == "jsonl":
        return "read_json($path, format = 'newline_delimited')", {}
    options = source.csv
    params: dict[str, object] = {
        "delimiter": options.delimiter,
        "header": options.header,
        "encoding": options.encoding,
    }
    if options.column_names:
        params["names"] = options.column_names
        return (
            "read_csv($path, delim = $delimiter, header = $header, encoding = $encoding, "
            "all_varchar = true, names = $names)",
            params,
        )
    return (
        "read_csv($path, delim = $delimiter, header = $header, encoding = $encoding, all_varchar = true)",
        params,
    )


def describe_columns(
    con: duckdb.DuckDBPyConnection, relation_sql: str, params: dict[str, object]
) -> list[str]:
    rows = con.execute(f"select column_name from (describe select * from {relation_sql})", params).fetchall()
    return [row[0] for row in rows]


def projection(table: Table, source: SourceConfig, present: list[str], label: str) -> tuple[str, list[str]]:
    """SELECT list mapping the file's columns onto the canonical ones; and warnings (extra columns)."""
    expressions = []
    mapped = set()
    for column in table.columns:
        file_column = source.columns.get(column.name, column.name)
        if file_column not in present:
            if column.required or column.name in source.columns:
                raise ExtractError(
                    f"{label}: column '{file_column}' (mapped to {table.name}.{column.name}) is missing; "
                    f"the file has {', '.join(present)}"
                )
            expressions.append(f"null::{column.duckdb_type} as {quote_identifier(column.name)}")
            continue
        mapped.add(file_column)
        ref = quote_identifier(file_column)
        if (
            column.duckdb_type == "TIMESTAMP"
            and source.csv.timestamp_format
            and source.file_format() == "csv"
        ):
            value = f"strptime({ref}, $timestamp_format)"
        elif column.duckdb_type == "BOOLEAN":
            value = f"cast(lower(trim(cast({ref} as varchar))) as boolean)"
        else:
            value = f"cast({ref} as {column.duckdb_type})"
        expressions.append(f"{value} as {quote_identifier(column.name)}")
    extra = [name for name in present if name not in mapped]
    warnings = [f"{label}: column(s) {', '.join(extra)} not mapped, ignored"] if extra else []
    return ", ".join(expressions), warnings


def _failing_column(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    source: SourceConfig,
    relation: str,
    params: dict[str, object],
) -> str:
    """After a failed cast, find which column (and a sample value) did not convert.

    Runs on its own cursor: the failed insert has aborted the load's transaction."""
    con = con.cursor()
    for column in table.columns:
        file_column = source.columns.get(column.name, column.name)
        ref = quote_identifier(file_column)
        try:
            rows = con.execute(
                f"select {ref} from {relation} where {ref} is not null "
                f"and try_cast({ref} as {column.duckdb_type}) is null limit 1",
                params,
            ).fetchall()
        except duckdb.Error:
            continue
        if rows:
            return (
                f"column '{file_column}': value {str(rows[0][0])[:40]!r} is not a valid {column.duckdb_type}"
            )
    return "a value could not be converted"


def load_file(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    source: SourceConfig,
    stored: StoredObject,
    local: Path,
    run_date: date,
) -> tuple[int, list[str]]:
    label = f"source {table.name}: file {stored.uri}"
    if stored.size == 0:
        raise ExtractError(f"{label}: file is empty")
    if source.sql:
        relation, params = f"({read_sql('sources/' + source.sql.removesuffix('.sql'))})", {"file": str(local)}
    else:
        reader, reader_params = reader_sql(source)
        relation, params = reader, {"path": str(local), **reader_params}
    try:
        present = describe_columns(con, relation, params)
    except duckdb.Error as error:
        raise ExtractError(
            f"{label}: cannot be read as {source.file_format()}: {_first_line(error)}"
        ) from None
    select_list, warnings = projection(table, source, present, label)
    if source.csv.timestamp_format and "$timestamp_format" in select_list:
        params = {**params, "timestamp_format": source.csv.timestamp_format}
    lineage = {"source_file": stored.uri, "file_date": file_date(stored.uri), "run_date": run_date}
    try:
        con.execute(
            f"insert into raw.{table.name} select {select_list}, $source_file, $file_date, $run_date "
            f"from {relation}",
            {**params, **lineage},
        )
    except duckdb.ConversionException:
        raise ExtractError(f"{label}: {_failing_column(con, table, source, relation, params)}") from None
    except duckdb.Error as error:
        raise ExtractError(f"{label}: {_first_line(error)}") from None
    rows = int(
        scalar(
            con,
            f"select count(*) from raw.{table.name} "
            f"where {SOURCE_FILE} = $source_file and {LOADED_RUN_DATE} = $run_date",
            {"source_file": stored.uri, "run_date": run_date},
        )
    )
    if rows == 0:
        raise ExtractError(f"{label}: file has a header but no rows")
    return rows, warnings


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def eligible_files(objects: list[StoredObject], run_date: date) -> list[StoredObject]:
    """Files this run may see: dated before the run date, or undated (a full snapshot)."""
    return [o for o in objects if (day := file_date(o.uri)) is None or day < run_date]


def extract_source(
    con: duckdb.DuckDBPyConnection, settings: Settings, table_name: str, ctx: RunContext
) -> SourceLoad:
    source = settings.sources[table_name]
    table = TABLES[table_name]
    pattern = settings.resolve_uri(source.path)
    objects = eligible_files(list_source_objects(pattern, settings.storage), ctx.run_date)
    if not objects:
        raise ExtractError(f"source {table_name}: no file matches {pattern} before {ctx.run_date}")
    result = SourceLoad(table_name)
    con.execute("begin transaction")
    try:
        # a rerun of this date replaces what this date loaded
        con.execute(
            f"delete from raw.{table_name} where {LOADED_RUN_DATE} = $run_date", {"run_date": ctx.run_date}
        )
        con.execute(
            "delete from meta.loaded_files where source = $source and loaded_run_date = $run_date",
            {"source": table_name, "run_date": ctx.run_date},
        )
        already = {
            row[0]
            for row in con.execute(
                "select file_uri from meta.loaded_files where source = $source", {"source": table_name}
            ).fetchall()
        }
        for stored in objects:
            if stored.uri in already:
                continue
            local = fetch_to_local(stored.uri, ctx.run_dir / "downloads", settings.storage)
            rows, warnings = load_file(con, table, source, stored, local, ctx.run_date)
            con.execute(
                "insert into meta.loaded_files values ($source, $uri, $file_date, $run_date, $rows, $bytes)",
                {
                    "source": table_name,
                    "uri": stored.uri,
                    "file_date": file_date(stored.uri),
                    "run_date": ctx.run_date,
                    "rows": rows,
                    "bytes": stored.size,
                },
            )
            result.files_loaded += 1
            result.rows_loaded += rows
            result.warnings += warnings
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    newest = scalar(
        con, "select max(file_date) from meta.loaded_files where source = $source", {"source": table_name}
    )
    result.watermark = newest.isoformat() if newest else None
    for warning in result.warnings:
        log.warning(warning)
    return result


@task(
    name="extract",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_unless(ExtractError),
    cache_policy=NO_CACHE,
)
def extract_sources(settings: Settings, ctx: RunContext) -> dict[str, SourceLoad]:
    """Load every configured source; retried when storage fails, not when a file is bad."""
    loads = {}
    with connect(settings) as con:
        ensure_meta(con)
        for table_name in settings.sources:
            loads[table_name] = extract_source(con, settings, table_name, ctx)
    return loads
