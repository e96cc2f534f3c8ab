"""Extract: land each configured source in `raw.<table>`, incrementally and idempotently.

Every file is loaded once, by the run whose date follows the file's date; `meta.loaded_files` remembers
which run loaded which file, so a rerun of the same date first removes what that run loaded and then
loads it again, and no row is ever loaded twice. The run sees only files dated before its run date.

A source may map its files through SQL (`sources.<table>.sql`): Tailor's own `sql/sources/NAME.sql` for a
bare name, else a company's file relative to the config. The SQL reads the driving file as `$file` and
each of the source's `inputs` as `$<name>`, the list of its files; a changed input reloads every driving
file, because each driving file's rows were joined with the old input.

A run's loads are provisional until its gates pass (see `gated_loads`): rows a load replaces (a rerun's
earlier loads, a file re-delivered in place) move to the `recovery` schema instead of being deleted, and a
rejected run puts them back. Why not one DuckDB transaction from extract to the gate: extract, erasure and
the two gates are separate Prefect tasks, each on its own connection, and the features gate runs after the
feature build; one transaction would have to span them all on one connection (and hold every replaced
row in memory), and erasure, which must stick even when the gate fails, would be rolled back with it. Why
not a copy of the warehouse file: it costs the whole warehouse every night to protect a few replaced files.
The recovery rows cost only what was replaced, each source's moves and loads commit in one transaction
with a marker naming the run (`recovery.pending`), and putting them back is one transaction too; erasure
reaches `recovery` like every table with a `user_id`, so a rejected run never brings back an erased user.
A run killed between extract and its gates (SIGKILL, power loss) leaves its marker, written by another
process: the next extract finds it and rolls that run back before loading anything.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import Settings, SourceConfig
from tailor.progress import progress, reported
from tailor.retry import retry_unless
from tailor.schema import (
    FILE_DATE,
    INVALID_COLUMNS,
    LOADED_RUN_DATE,
    ORIGINAL_VALUES,
    ROW_KEY,
    SOURCE_FILE,
    TABLES,
    Table,
    source_table,
)
from tailor.sql import bind, read_sql, scalar, table_exists
from tailor.storage import StoredObject, fetch_to_local, list_source_objects
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)
_FILE_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")
# Added to every raw row: where it came from, and which values did not parse (kept as the original text).
LINEAGE_COLUMNS = {
    ROW_KEY: "bigint",
    INVALID_COLUMNS: "varchar[]",
    ORIGINAL_VALUES: "varchar",
    SOURCE_FILE: "varchar",
    FILE_DATE: "date",
    LOADED_RUN_DATE: "date",
}
TRUE_SPELLINGS = ("true", "t", "yes", "y", "1")
FALSE_SPELLINGS = ("false", "f", "no", "n", "0")
# A column whose values mostly fail to parse has changed type upstream: that is drift, not bad rows.
DRIFT_SHARE = 0.5
DRIFT_MIN_VALUES = 5  # fewer bad values than this are bad rows (quarantined), not a changed type
RECOVERY = "recovery"
PENDING = "recovery.pending"
# Names the process whose loads a pending marker belongs to: a marker from another process is a run that
# died before its gates (a pid alone could be reused, e.g. pid 1 in a restarted container).
PROCESS = uuid.uuid4().hex


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
    con.execute("alter table meta.loaded_files add column if not exists fingerprint varchar")
    con.execute("create sequence if not exists raw.row_key_sequence")
    for table in TABLES.values():
        columns = ", ".join(f"{quote_identifier(c.name)} {c.duckdb_type}" for c in table.columns)
        con.execute(f"create table if not exists raw.{table.name} ({columns})")
        # a warehouse from an earlier version lacks the canonical columns added since (order_id, brand...)
        for column in table.columns:
            con.execute(
                f"alter table raw.{table.name} add column if not exists {quote_identifier(column.name)} "
                f"{column.duckdb_type}"
            )
        for name, sql_type in LINEAGE_COLUMNS.items():
            con.execute(f"alter table raw.{table.name} add column if not exists {name} {sql_type}")
    ensure_recovery(con)


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
) -> dict[str, str]:
    """The file's (or the source SQL's) columns and their DuckDB types, in order."""
    statement = f"select column_name, column_type from (describe select * from {relation_sql})"
    # a source's SQL need not read every parameter it is offered (an input, $file): bind what it names
    rows = con.execute(statement, bind(statement, params)).fetchall()
    return {name: column_type for name, column_type in rows}


# file types that hold the canonical type's values exactly: read as they are, not through text (which
# costs most of a typed file's load); every other type is parsed from its text and checked
NATIVE_TYPES = {
    "BIGINT": {"BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UINTEGER", "USMALLINT", "UTINYINT"},
    "DOUBLE": {"DOUBLE", "FLOAT"},
    "TIMESTAMP": {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"},
    "BOOLEAN": {"BOOLEAN"},
    "DATE": {"DATE"},
}


@dataclass(frozen=True)
class SourceInputs:
    """The files a source's SQL reads beside its driving file, as one run finds them."""

    found: dict[str, list[StoredObject]]  # input name -> its files (where to read them), sorted
    fingerprint: str  # changes when any input file is added, removed or replaced; "" without inputs

    def folded(self, stored: StoredObject) -> str:
        """A driving file's fingerprint with the inputs' folded in: its rows depend on both."""
        return f"{stored.fingerprint}|inputs:{self.fingerprint}" if self.fingerprint else stored.fingerprint


def find_inputs(settings: Settings, table_name: str, run_date: date) -> SourceInputs:
    """Every input's files this run may see (dated before the run date, or undated); none is an error."""
    source = settings.sources[table_name]
    found: dict[str, list[StoredObject]] = {}
    digest = hashlib.sha256()
    for name, pattern_text in sorted(source.inputs.items()):
        pattern = settings.resolve_uri(pattern_text)
        objects = eligible_files(list_source_objects(pattern, settings.storage), run_date)
        if not objects:
            raise ExtractError(
                f"source {table_name}: input {name} (sources.{table_name}.inputs.{name}): no file matches "
                f"{pattern} before {run_date}"
            )
        found[name] = objects
        for stored in objects:
            # named relative to the config's folder, as driving files are: a moved deployment reloads nothing
            digest.update(f"{name}\0{settings.source_identity(stored.uri)}\0{stored.fingerprint}\n".encode())
    return SourceInputs(found, digest.hexdigest()[:16] if found else "")


def fetch_inputs(inputs: SourceInputs, settings: Settings, ctx: RunContext) -> dict[str, list[str]]:
    """Local paths of every input file, downloaded once per source and run when they are on S3."""
    downloads = ctx.run_dir / "downloads"
    return {
        name: [str(fetch_to_local(stored.uri, downloads, settings.storage)) for stored in objects]
        for name, objects in inputs.found.items()
    }


def source_sql(settings: Settings, table_name: str) -> str | None:
    """The SELECT a source's files go through, or None when they are read as they are. A company's file
    is read afresh every time (it may change between runs); Tailor's own are cached with the package."""
    source = settings.sources[table_name]
    if source.sql is None:
        return None
    if source.builtin_sql:
        return read_sql("sources/" + source.sql)
    path = settings.source_sql_path(table_name)
    try:
        text = Path(str(path)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ExtractError(f"source {table_name}: cannot read its SQL file {path} ({error})") from None
    return text.strip().rstrip(";")


def unread_inputs(sql: str | None, inputs: dict[str, str], table_name: str) -> list[str]:
    """Inputs the source's SQL never names: most likely a typo, since their files are fetched for nothing."""
    if sql is None:
        return []
    named = _named_parameters(sql)
    return [
        f"source {table_name}: input {name} is not read by its SQL (no ${name} in it)"
        for name in inputs
        if name not in named
    ]


def _named_parameters(sql: str) -> set[str]:
    # the parameters bind() would keep: comments may mention any
    return set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", re.sub(r"--[^\n]*", "", sql)))


@dataclass(frozen=True)
class Projection:
    typed: list[str]  # one expression per canonical column, NULL where a value does not parse
    originals: dict[str, str]  # canonical column -> the file's value as text, for mapped columns
    warnings: list[str]


def projection(table: Table, source: SourceConfig, present: dict[str, str], label: str) -> Projection:
    """Map the file's columns (name -> DuckDB type) onto the canonical ones; values that do not parse
    become NULL and are reported per row (never a failed load), and an unmapped extra column is a warning."""
    typed, originals = [], {}
    mapped = set()
    for column in table.columns:
        file_column = source.columns.get(column.name, column.name)
        if file_column not in present:
            if column.required or column.name in source.columns:
                raise ExtractError(
                    f"{label}: column '{file_column}' (mapped to {table.name}.{column.name}) is missing; "
                    f"the file has {', '.join(present)}{_delimiter_hint(list(present), source)}"
                )
            typed.append(f"null::{column.duckdb_type} as {quote_identifier(column.name)}")
            continue
        mapped.add(file_column)
        ref = quote_identifier(file_column)
        if present[file_column] in NATIVE_TYPES.get(column.duckdb_type, ()):
            typed.append(f"cast({ref} as {column.duckdb_type}) as {quote_identifier(column.name)}")
            continue
        text = f"nullif(trim(cast({ref} as varchar)), '')"
        if (
            column.duckdb_type == "TIMESTAMP"
            and source.csv.timestamp_format
            and source.file_format() == "csv"
        ):
            value = f"try_strptime({text}, $timestamp_format)"
        elif column.duckdb_type == "BOOLEAN":
            value = (
                f"case when list_contains($true_spellings, lower({text})) then true "
                f"when list_contains($false_spellings, lower({text})) then false end"
            )
        else:
            value = typed_value(text, column.duckdb_type)
        typed.append(f"{value} as {quote_identifier(column.name)}")
        originals[column.name] = text
    extra = [name for name in present if name not in mapped]
    warnings = [f"{label}: column(s) {', '.join(extra)} not mapped, ignored"] if extra else []
    return Projection(typed, originals, warnings)


def typed_value(text: str, duckdb_type: str) -> str:
    """A text value parsed to its canonical type, NULL when it does not parse. Stricter than a cast:
    an offset or zone on a timestamp is honoured (stored as UTC), and a fraction never rounds into an
    integer column (19.99 in price_cents is a unit error, not 20 cents)."""
    if duckdb_type == "TIMESTAMP":
        return f"cast(try_cast({text} as timestamptz) as timestamp)"
    if duckdb_type == "BIGINT":
        return (
            f"case when try_cast({text} as double) = floor(try_cast({text} as double)) "
            f"then try_cast(try_cast({text} as double) as bigint) end"
        )
    return f"try_cast({text} as {duckdb_type})"


def _delimiter_hint(present: list[str], source: SourceConfig) -> str:
    if len(present) != 1 or source.file_format() != "csv":
        return ""
    for delimiter in (";", "\t", "|", ","):
        if delimiter != source.csv.delimiter and delimiter in present[0]:
            return f" (the file looks delimited by {delimiter!r}; the source says {source.csv.delimiter!r})"
    return ""


def insert_sql(table: Table, projection: Projection, relation: str) -> str:
    """INSERT of one file into raw.<table>: typed columns, which values failed to parse, lineage."""
    checks = ", ".join(
        f"case when original_values.{quote_identifier(name)} is not null and {quote_identifier(name)} is null "
        f"then '{name}' end"
        for name in projection.originals
    )
    originals = ", ".join(
        f"{quote_identifier(name)} := {text}" for name, text in projection.originals.items()
    )
    # a file whose every column is read as it is has no text to keep
    original_values = f"struct_pack({originals})" if originals else "null::struct(none varchar)"
    invalid = f"list_filter([{checks}], lambda name: name is not null)" if checks else "[]::varchar[]"
    canonical = ", ".join(quote_identifier(c.name) for c in table.columns)
    return f"""
        insert into raw.{table.name} by name
        with source as (
            select * from {relation}
        ),
        parsed as (
            select {", ".join(projection.typed)}, {original_values} as original_values
            from source
        ),
        final as (
            select
                {canonical},
                {invalid} as {INVALID_COLUMNS},
                original_values
            from parsed
        )
        select
            {canonical},
            nextval('raw.row_key_sequence') as {ROW_KEY},
            {INVALID_COLUMNS},
            case when len({INVALID_COLUMNS}) > 0 then to_json(original_values) end as {ORIGINAL_VALUES},
            $source_file as {SOURCE_FILE},
            $file_date as {FILE_DATE},
            $run_date as {LOADED_RUN_DATE}
        from final
    """


def load_file(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    source: SourceConfig,
    stored: StoredObject,
    local: Path,
    run_date: date,
    sql: str | None = None,
    inputs: dict[str, list[str]] | None = None,
) -> tuple[int, list[str]]:
    """Load one driving file into raw.<table>. With `sql` (the source's SELECT, see source_sql) the file is
    `$file` and each input `$<name>`; without it the file is read with the source's reader options."""
    identity = stored.uri  # how lineage names the file: relative to the config's folder when local
    label = f"source {table.name}: file {identity}"
    if stored.size == 0:
        raise ExtractError(f"{label}: file is empty")
    if sql is None and source.sql:
        raise ValueError("a source with sql needs its text: pass source_sql(settings, table)")
    if sql is not None:
        # the newline keeps a trailing comment in the file from swallowing the closing parenthesis
        relation, params = f"({sql}\n)", {"file": str(local), **(inputs or {})}
    else:
        reader, reader_params = reader_sql(source)
        relation, params = reader, {"path": str(local), **reader_params}
    try:
        present = describe_columns(con, relation, params)
    except duckdb.Error as error:
        raise ExtractError(f"{label}: {_readable(error, source, local)}") from None
    shape = projection(table, source, present, label)
    if source.csv.timestamp_format and source.file_format() == "csv":
        params = {**params, "timestamp_format": source.csv.timestamp_format}
    lineage = {"source_file": identity, "file_date": file_date(identity), "run_date": run_date}
    statement = insert_sql(table, shape, relation)
    spellings = {"true_spellings": list(TRUE_SPELLINGS), "false_spellings": list(FALSE_SPELLINGS)}
    # every row this insert adds gets a row key above this one: later reads of the file's rows filter on
    # the key, which min/max statistics prune, instead of scanning the whole table once per file
    first_key = int(scalar(con, "select nextval('raw.row_key_sequence')"))
    try:
        rows = int(con.execute(statement, bind(statement, {**params, **lineage, **spellings})).fetchall()[0][0])
    except duckdb.Error as error:
        raise ExtractError(f"{label}: {_readable(error, source, local)}") from None
    if rows == 0:
        raise ExtractError(f"{label}: file has a header but no rows")
    check_drift(con, table, identity, first_key, label)
    return rows, shape.warnings + boolean_spellings(con, table, source, present, relation, params, label)


def check_drift(
    con: duckdb.DuckDBPyConnection, table: Table, uri: str, first_key: int, label: str
) -> None:
    """Fail when most of a column's values do not parse (counting only rows that have a value in it):
    the upstream type changed."""
    where = {"uri": uri, "first_key": first_key}
    failures = con.execute(
        f"""
        select name, count(*) as failed, any_value(json_extract_string({ORIGINAL_VALUES}, '$.' || name)) as sample
        from (select unnest({INVALID_COLUMNS}) as name, {ORIGINAL_VALUES} from raw.{table.name}
              where {ROW_KEY} > $first_key and {SOURCE_FILE} = $uri)
        group by name order by name
        """,
        where,
    ).fetchall()
    for name, failed, sample in failures:
        parsed = scalar(
            con,
            f"select count({quote_identifier(name)}) from raw.{table.name} "
            f"where {ROW_KEY} > $first_key and {SOURCE_FILE} = $uri",
            where,
        )
        with_value = failed + int(parsed or 0)
        if failed >= DRIFT_MIN_VALUES and failed / with_value >= DRIFT_SHARE:
            raise ExtractError(
                f"{label}: column {table.name}.{name} changed type: {failed} of {with_value} value(s) are not "
                f"{table.column(name).duckdb_type} (e.g. {str(sample)[:40]!r})"
            )


def boolean_spellings(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    source: SourceConfig,
    present: dict[str, str],
    relation: str,
    params: dict[str, object],
    label: str,
) -> list[str]:
    """Booleans given as yes/no, y/n, 1/0 or t/f parse, but a data engineer should hear of it."""
    warnings = []
    unusual = [*TRUE_SPELLINGS[1:], *FALSE_SPELLINGS[1:]]
    for column in table.columns:
        file_column = source.columns.get(column.name, column.name)
        if column.duckdb_type != "BOOLEAN" or file_column not in present:
            continue
        ref = quote_identifier(file_column)
        statement = f"select count(*) from {relation} where list_contains($unusual, lower(trim(cast({ref} as varchar))))"
        count = scalar(con, statement, bind(statement, {**params, "unusual": unusual}))
        if count:
            warnings.append(
                f"{label}: column '{file_column}': {count} value(s) spelled yes/no, y/n, 1/0 or t/f, "
                "read as booleans"
            )
    return warnings


_COLUMNS_MISMATCH = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")
_LINE = re.compile(r"Line: (\d+)")


def _readable(error: Exception, source: SourceConfig, local: Path) -> str:
    """DuckDB's reader errors, as one line a data engineer can act on."""
    text = str(error)
    if "Invalid unicode" in text or "byte sequence mismatch" in text:
        return f"not valid {source.csv.encoding} text (set csv.encoding for this source)"
    if source.file_format() == "csv" and "sniffing" in text:
        ragged = _ragged_line(local, source)
        if ragged:
            return ragged
    mismatch = _COLUMNS_MISMATCH.search(text)
    if mismatch:
        line = _LINE.search(text)
        where = f"line {line.group(1)}" if line else "a line"
        return (
            f"{where} has {mismatch.group(2)} field(s), expected {mismatch.group(1)} "
            "(truncated or malformed file)"
        )
    if source.sql:
        # the SQL reads the file itself (any format, any options): name the SQL, not a reader
        return f"its SQL ({source.sql}) fails on this file: {_first_line(error)}"
    return f"cannot be read as {source.file_format()}: {_first_line(error)}"


def _ragged_line(local: Path, source: SourceConfig) -> str | None:
    """The first line whose field count differs from the first line's (only read when parsing failed)."""
    import csv

    encoding = {"utf-8": "utf-8", "latin-1": "latin-1", "utf-16": "utf-16"}[source.csv.encoding]
    with local.open(newline="", encoding=encoding, errors="replace") as handle:
        rows = csv.reader(handle, delimiter=source.csv.delimiter.replace("\\t", "\t"))
        expected = None
        for number, row in enumerate(rows, start=1):
            if expected is None:
                expected = len(row)
            elif len(row) != expected:
                return f"line {number} has {len(row)} field(s), expected {expected} (truncated or malformed file)"
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def eligible_files(objects: list[StoredObject], run_date: date) -> list[StoredObject]:
    """Files this run may see: dated before the run date, or undated (a full snapshot)."""
    return [o for o in objects if (day := file_date(o.uri)) is None or day < run_date]


def extract_source(
    con: duckdb.DuckDBPyConnection, settings: Settings, table_name: str, ctx: RunContext
) -> SourceLoad:
    source = settings.sources[table_name]
    table = source_table(table_name, settings.user_features.attributes)
    for column in table.columns[len(TABLES[table_name].columns) :]:
        # the company's declared attributes: names checked by config, types from tailor.schema
        con.execute(
            f"alter table raw.{table.name} add column if not exists {quote_identifier(column.name)} "
            f"{column.duckdb_type}"
        )
    pattern = settings.resolve_uri(source.path)
    found = eligible_files(list_source_objects(pattern, settings.storage), ctx.run_date)
    # a file is known by its path relative to the config's folder, so moving a deployment (or a test
    # copying one) does not make every file look new; `located` keeps where to read it from
    objects = [replace(o, uri=settings.source_identity(o.uri)) for o in found]
    located = {o.uri: f.uri for o, f in zip(objects, found, strict=True)}
    result = SourceLoad(table_name)
    if not objects and table.may_be_empty:
        return result
    if not objects:
        raise ExtractError(f"source {table_name}: no file matches {pattern} before {ctx.run_date}")
    sql = source_sql(settings, table_name)
    inputs = find_inputs(settings, table_name, ctx.run_date)
    input_paths: dict[str, list[str]] | None = None  # fetched once, and only if a driving file needs them
    result.warnings += unread_inputs(sql, source.inputs, table_name)
    con.execute("begin transaction")
    try:
        # committed with this source's loads: until a gate accepts them, a failure (or the next run, if
        # this one dies) puts back what they replaced
        mark_pending(con, table_name, ctx.run_date)
        # a rerun of this date replaces what this date loaded (kept in recovery until the gates pass)
        stash(con, f"raw.{table_name}", f"{LOADED_RUN_DATE} = $run_date", {"run_date": ctx.run_date})
        stash(con, "meta.loaded_files", "source = $source and loaded_run_date = $run_date",
              {"source": table_name, "run_date": ctx.run_date})  # fmt: skip
        forget_quarantine(con, table_name, ctx.run_date)
        already = dict(
            con.execute(
                "select file_uri, fingerprint from meta.loaded_files where source = $source",
                {"source": table_name},
            ).fetchall()
        )
        with progress(f"extract {table_name}", total=len(objects), unit="files") as bar:
            for stored in objects:
                fingerprint = inputs.folded(stored)
                if stored.uri in already:
                    if already[stored.uri] == fingerprint:
                        bar.advance(1)
                        continue
                    # the file (or an input it was joined with) was replaced since an earlier run loaded it
                    forget_file(con, table_name, stored.uri)
                local = fetch_to_local(located[stored.uri], ctx.run_dir / "downloads", settings.storage)
                if input_paths is None:
                    input_paths = fetch_inputs(inputs, settings, ctx)
                rows, warnings = load_file(
                    con, table, source, stored, local, ctx.run_date, sql=sql, inputs=input_paths
                )
                con.execute(
                    "insert into meta.loaded_files by name select $source as source, $uri as file_uri, "
                    "$file_date as file_date, $run_date as loaded_run_date, $rows as row_count, $bytes as byte_count, "
                    "$fingerprint as fingerprint",
                    {
                        "source": table_name,
                        "uri": stored.uri,
                        "file_date": file_date(stored.uri),
                        "run_date": ctx.run_date,
                        "rows": rows,
                        "bytes": stored.size,
                        "fingerprint": fingerprint,
                    },
                )
                result.files_loaded += 1
                result.rows_loaded += rows
                result.warnings += warnings
                bar.advance(1, note=f"{result.rows_loaded:,} rows")
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


def stash(con: duckdb.DuckDBPyConnection, table: str, where: str, params: dict[str, object]) -> None:
    """Move the rows of `table` (schema.name) matching `where` to recovery.<schema>_<name>: deleted for
    the run, restorable until its gates pass. Identifiers come from code; values are bound."""
    kept = f"{RECOVERY}.{table.replace('.', '_')}"
    # created from the table as it is now (recovery tables are dropped whenever nothing is pending)
    con.execute(f"create table if not exists {kept} as from {table} limit 0")
    con.execute(f"insert into {kept} by name select * from {table} where {where}", params)
    con.execute(f"delete from {table} where {where}", params)


def forget_file(con: duckdb.DuckDBPyConnection, table_name: str, uri: str) -> None:
    stash(con, f"raw.{table_name}", f"{SOURCE_FILE} = $uri", {"uri": uri})
    if table_exists(con, f"quarantine.{table_name}"):
        stash(con, f"quarantine.{table_name}", "source_file = $uri", {"uri": uri})
    stash(con, "meta.loaded_files", "source = $source and file_uri = $uri", {"source": table_name, "uri": uri})


def forget_quarantine(con: duckdb.DuckDBPyConnection, table: str, run_date: date) -> None:
    if table_exists(con, f"quarantine.{table}"):
        stash(con, f"quarantine.{table}", "run_date = $run_date", {"run_date": run_date})


def ensure_recovery(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"create schema if not exists {RECOVERY}")
    con.execute(
        f"create table if not exists {PENDING} (run_date date, source varchar, process varchar, "
        "marked_at timestamp)"
    )


def mark_pending(con: duckdb.DuckDBPyConnection, table_name: str, run_date: date) -> None:
    con.execute(
        f"insert into {PENDING} select $run_date, $source, $process, $now "
        f"where not exists (select 1 from {PENDING} where run_date = $run_date and source = $source)",
        {"run_date": run_date, "source": table_name, "process": PROCESS,
         "now": datetime.now(UTC).replace(tzinfo=None)},
    )  # fmt: skip


def recovery_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The recovery schema's copies of replaced rows, as schema_table names (raw_users, loaded_files...)."""
    rows = con.execute(
        "select table_name from information_schema.tables where table_schema = $schema and "
        "table_type = 'BASE TABLE' and table_name <> 'pending' order by 1",
        {"schema": RECOVERY},
    ).fetchall()
    return [name for (name,) in rows]


def pending_sources(con: duckdb.DuckDBPyConnection, run_date: date) -> list[str]:
    if not table_exists(con, PENDING):
        return []
    rows = con.execute(
        f"select distinct source from {PENDING} where run_date = $d order by 1", {"d": run_date}
    ).fetchall()
    return [source for (source,) in rows]


def _discard_recovery(con: duckdb.DuckDBPyConnection) -> None:
    for name in recovery_tables(con):
        con.execute(f"drop table {RECOVERY}.{name}")
    con.execute(f"delete from {PENDING}")


def unload_run(con: duckdb.DuckDBPyConnection, run_date: date) -> bool:
    """Roll back a run that failed before its gates accepted its loads, in one transaction: forget every
    row and file it loaded (so the next run loads and checks those files again) and put back the rows its
    loads replaced. Only the sources it marked are touched; False when nothing was pending for that date
    (its loads were accepted, or it loaded nothing)."""
    sources = pending_sources(con, run_date)
    if not sources:
        return False
    con.execute("begin transaction")
    try:
        for table in sources:
            con.execute(f"delete from raw.{table} where {LOADED_RUN_DATE} = $d", {"d": run_date})
            if table_exists(con, f"quarantine.{table}"):
                con.execute(f"delete from quarantine.{table} where run_date = $d", {"d": run_date})
            con.execute(
                "delete from meta.loaded_files where source = $source and loaded_run_date = $d",
                {"source": table, "d": run_date},
            )
        for name in recovery_tables(con):
            schema, table = name.split("_", 1)
            # the rows as they were before the run (erasure has reached them here too)
            con.execute(f"insert into {schema}.{table} by name select * from {RECOVERY}.{name}")
        _discard_recovery(con)
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    return True


def accept_loads(con: duckdb.DuckDBPyConnection) -> None:
    """Every gate passed: the rows the run's loads replaced are gone for good."""
    if table_exists(con, PENDING):
        con.execute("begin transaction")
        _discard_recovery(con)
        con.execute("commit")


def resolve_pending(con: duckdb.DuckDBPyConnection) -> None:
    """Before a run loads anything: roll back a run that died before its gates (its marker names another
    process), or accept the loads of an earlier extract in this process that no gate judged (a tool or a
    test calling the tasks one by one, which keeps its loads as it always did)."""
    pending = con.execute(
        f"select run_date, bool_or(process <> $me) from {PENDING} group by run_date order by run_date",
        {"me": PROCESS},
    ).fetchall()
    for run_date, orphaned in pending:
        if orphaned:
            log.warning(
                "the run for %s ended before its data-quality gates: its loads are rolled back and the rows "
                "they replaced restored", run_date,
            )  # fmt: skip
            unload_run(con, run_date)
    accept_loads(con)  # whatever is left is this process's, and recovery tables start from today's schemas


@contextmanager
def gated_loads(settings: Settings, ctx: RunContext) -> Iterator[None]:
    """The stages from extract to the last gate: on any failure inside (a gate, or a task between them),
    the run's loads are rolled back and the rows they replaced restored; past the block, they are kept."""
    try:
        yield
    except BaseException:
        with connect(settings) as con:
            unload_run(con, ctx.run_date)
        raise
    with connect(settings) as con:
        accept_loads(con)


def check_sources_present(settings: Settings, run_date: date) -> None:
    """Before anything starts: every source that may not be empty has a file this run may read, and every
    input of a source's SQL has one, so a wrong path fails in seconds, not after the server and the lock's
    work. Only lists the files (extract reads them)."""
    for table_name, source in settings.sources.items():
        pattern = settings.resolve_uri(source.path)
        if TABLES[table_name].may_be_empty:
            continue
        if not eligible_files(list_source_objects(pattern, settings.storage), run_date):
            raise ExtractError(f"source {table_name}: no file matches {pattern} before {run_date}")
        find_inputs(settings, table_name, run_date)


@task(
    name="extract",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_unless(ExtractError),
    cache_policy=NO_CACHE,
)
@reported("extract")
def extract_sources(settings: Settings, ctx: RunContext) -> dict[str, SourceLoad]:
    """Load every configured source; retried when storage fails, not when a file is bad."""
    loads = {}
    with connect(settings) as con:
        ensure_meta(con)
        resolve_pending(con)
        try:
            for table_name in settings.sources:
                loads[table_name] = extract_source(con, settings, table_name, ctx)
        except Exception:
            unload_run(con, ctx.run_date)
            raise
    return loads
