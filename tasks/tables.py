"""BI tables: every published dataset is also a Delta Lake table with a location of its own, partitioned by
run date, beside the per-run files (which stay as they are for the campaign systems):

    PREFIX/tables/<dataset>/_delta_log/...                     the table's commits (what a reader follows)
    PREFIX/tables/<dataset>/run_date=YYYY-MM-DD/part-*.parquet  the rows of one run
    PREFIX/tables/<dataset>/_schema.json                       JSON Schema of a row, from docs/outputs.md
    PREFIX/tables/<dataset>/_ddl/athena.sql, trino.sql         registering the table in a catalog

Why Delta, and how each engine reads it: docs/tables.md.

- Snapshot datasets (a night's full state: recommendations, segments, ...): one partition per run date; a
  rerun of a date replaces that date's partition in one commit (an overwrite with a partition predicate).
- History datasets (`Dataset.history`: experiment_results, allocation_decisions, policy_evaluation), whose
  per-run files repeat every night up to the run: each row goes once into the partition of the night that produced it (its own
  `run_date`); a rerun replaces only its night's rows, and a night the table lacks (tables switched on later)
  is filled in from the history, never a night the table already has.
- The rows are read back from the local publish folder that `write_datasets` wrote, so the table holds
  exactly the files' rows: after the consent check and with the same pseudonyms.
- `upload_run` writes the tables once the attempt's files and manifest are in and before the pointers move; a
  failed table write fails the upload, which is retried as a whole (every write here is idempotent).
- One writer at a time: a run holds the run lock. On S3, deltalake 1.x commits with a conditional put
  (If-None-Match), so even a second writer could not overwrite a commit: it fails instead. No DynamoDB lock
  and no `AWS_S3_ALLOW_UNSAFE_RENAME`; the target must take conditional writes (AWS S3, SeaweedFS, MinIO).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tailor.config import Settings, StorageConfig
from tailor.contract import DocumentedColumn, load_contract
from tailor.storage import PUBLISHED_FILE_MODE, PUBLISHED_FOLDER_MODE, ObjectStore
from tailor.tasks.publish import DATASETS, Dataset

log = logging.getLogger(__name__)

TABLES_ROOT = "tables"
PARTITION_COLUMN = "run_date"
SCHEMA_FILE = "_schema.json"
DDL_FOLDER = "_ddl"
TABLE_FORMAT = "delta"
# the names the DDL registers the tables under (rename to taste: the location is what matters)
DDL_SCHEMA = "tailor"
TRINO_CATALOG = "delta"
ADDED_RUN_DATE_MEANING = "the run that published the row (added for the table: the partition column)"


class TableError(RuntimeError):
    """A BI table could not take the night's rows; the message names the table and why."""


def table_key(name: str) -> str:
    """The table's folder relative to the target (PREFIX)."""
    return f"{TABLES_ROOT}/{name}"


def table_uri(target: str, name: str) -> str:
    return f"{target.rstrip('/')}/{table_key(name)}"


def local_root(target: str) -> Path | None:
    """The folder of a `file://` target (None for S3), as tailor.storage.open_store reads it."""
    parsed = urlparse(target)
    return Path(parsed.netloc + parsed.path) if parsed.scheme == "file" else None


def delta_location(target: str, name: str) -> str:
    """What deltalake opens: a plain path for a `file://` target, the `s3://` URI otherwise."""
    root = local_root(target)
    return str(root / table_key(name)) if root is not None else table_uri(target, name)


def manifest_tables(settings: Settings) -> dict[str, Any] | None:
    """The manifest's `tables` entry: where each dataset's table lives, relative to PREFIX like the pointers
    (the manifest cannot name the target: a rerun to another target gives the same bytes)."""
    if not settings.publish.tables:
        return None
    return {
        "format": TABLE_FORMAT,
        "partitioned_by": [PARTITION_COLUMN],
        "locations": {dataset.name: table_key(dataset.name) for dataset in DATASETS},
    }


def storage_options(target: str, storage: StorageConfig) -> dict[str, str] | None:
    """deltalake's options for an S3 target, resolved the way boto3 resolves them for the per-run files: the
    configured endpoint (or AWS_ENDPOINT_URL), the region, and credentials from the standard AWS chain
    (environment, profile, instance role), which deltalake's own client does not read from a profile."""
    if urlparse(target).scheme != "s3":
        return None
    import boto3

    options = {"AWS_REGION": storage.region}
    endpoint = (
        storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"  # a local server (the demo's SeaweedFS); refused otherwise
    credentials = boto3.session.Session().get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options["AWS_ACCESS_KEY_ID"] = frozen.access_key
        options["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
    return options


def partition_predicate(day: date) -> str:
    """Delta's predicate for one run date's partition. deltalake takes predicates as SQL text only; the value
    is a `date` rendered by isoformat (digits and dashes), never text from input."""
    if not isinstance(day, date) or isinstance(day, datetime):
        raise TypeError(f"a partition predicate takes a date, not {type(day).__name__}")
    return f"{PARTITION_COLUMN} = '{day.isoformat()}'"


# Arrow type -> (JSON Schema, Delta, Athena, Trino). Naive timestamps are UTC by the contract and become
# Delta's `timestamp` (UTC): `timestamp_ntz` needs reader version 3, which not every engine reads.
_SCALAR_TYPES: tuple[tuple[Callable[[pa.DataType], bool], tuple[dict[str, str], str, str, str]], ...] = (
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
     ({"type": "string"}, "string", "string", "varchar")),
    (pa.types.is_int64, ({"type": "integer"}, "long", "bigint", "bigint")),
    (pa.types.is_int32, ({"type": "integer"}, "integer", "int", "integer")),
    (pa.types.is_int16, ({"type": "integer"}, "short", "smallint", "smallint")),
    (pa.types.is_int8, ({"type": "integer"}, "byte", "tinyint", "tinyint")),
    (pa.types.is_float32, ({"type": "number"}, "float", "float", "real")),
    (pa.types.is_float64, ({"type": "number"}, "double", "double", "double")),
    (pa.types.is_boolean, ({"type": "boolean"}, "boolean", "boolean", "boolean")),
    (pa.types.is_date32, ({"type": "string", "format": "date"}, "date", "date", "date")),
    (pa.types.is_timestamp,
     ({"type": "string", "format": "date-time"}, "timestamp", "timestamp", "timestamp(3) with time zone")),
)  # fmt: skip


def _types(data_type: pa.DataType) -> tuple[dict[str, Any], Any, str, str]:
    for matches, (as_json, as_delta, as_athena, as_trino) in _SCALAR_TYPES:
        if matches(data_type):
            return dict(as_json), as_delta, as_athena, as_trino
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        item_json, item_delta, item_athena, item_trino = _types(data_type.value_type)
        return (
            {"type": "array", "items": {**item_json, "type": [item_json["type"], "null"]}},
            {"type": "array", "elementType": item_delta, "containsNull": True},
            f"array<{item_athena}>",
            f"array({item_trino})",
        )
    # unsigned integers, structs, maps, decimals: no published dataset has one; a new one needs a mapping here
    raise TableError(f"no table type for Arrow type {data_type} (tasks/tables.py maps the published types)")


def table_rows(rows: pa.Table, run_date: date) -> pa.Table:
    """The published rows as the table stores them: with a `run_date` (the run's, for a dataset without
    one) and naive timestamps marked UTC (the same instants; see `_types`)."""
    if PARTITION_COLUMN not in rows.column_names:
        rows = rows.add_column(0, PARTITION_COLUMN, pa.array([run_date] * rows.num_rows, pa.date32()))
    elif not pa.types.is_date32(rows.schema.field(PARTITION_COLUMN).type):
        raise TableError(f"{PARTITION_COLUMN} is {rows.schema.field(PARTITION_COLUMN).type}, not a date")
    fields = [
        pa.field(f.name, pa.timestamp(f.type.unit, "UTC"), f.nullable)
        if pa.types.is_timestamp(f.type) and f.type.tz is None
        else f
        for f in rows.schema
    ]
    return rows.cast(pa.schema(fields))


@dataclass(frozen=True)
class TableColumn:
    name: str
    data_type: pa.DataType
    meaning: str
    nullable: bool


def dataset_key(dataset: Dataset) -> list[str]:
    """The columns that identify a row within a night (the dataset's order, under its published names)."""
    renamed = dict(dataset.rename)
    key = [renamed.get(c.strip(), c.strip()) for c in dataset.order_by.split(",")]
    return key if PARTITION_COLUMN in key else [PARTITION_COLUMN, *key]


def table_columns(dataset: Dataset, schema: pa.Schema) -> list[TableColumn]:
    """The table's columns: the published ones (names and types as in the files, which a test holds to
    docs/outputs.md), their meaning from docs/outputs.md; the key's columns are never null."""
    documented: dict[str, DocumentedColumn] = load_contract().get(dataset.name, {})
    key = set(dataset_key(dataset))
    columns = []
    for field in schema:
        meaning = documented[field.name].meaning if field.name in documented else ""
        if field.name == PARTITION_COLUMN and field.name not in documented:
            meaning = ADDED_RUN_DATE_MEANING
        columns.append(TableColumn(field.name, field.type, meaning, field.name not in key))
    return columns


def json_schema(dataset: Dataset, columns: list[TableColumn], location: str) -> dict[str, Any]:
    """JSON Schema (2020-12) of one row, with each column's Arrow, Delta, Athena and Trino type beside it."""
    properties: dict[str, Any] = {}
    for column in columns:
        as_json, as_delta, as_athena, as_trino = _types(column.data_type)
        kind = as_json["type"]
        properties[column.name] = {
            **as_json,
            "type": [kind, "null"] if column.nullable else kind,
            "description": column.meaning,
            "x-arrow-type": str(column.data_type),
            "x-delta-type": as_delta,
            "x-athena-type": as_athena,
            "x-trino-type": as_trino,
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": dataset.name,
        "description": dataset.description,
        "type": "object",
        "properties": properties,
        "required": [column.name for column in columns],
        "additionalProperties": False,
        "x-table": {
            "format": TABLE_FORMAT,
            "location": location,
            "partition_columns": [PARTITION_COLUMN],
            "key": dataset_key(dataset),
            "rows": "history: each night's rows once, in its own partition"
            if dataset.history
            else "snapshot: one partition per run date, replaced by a rerun",
            "contract": "docs/outputs.md",
        },
    }


def sql_text(value: str) -> str:
    """A SQL string literal for generated DDL (a location may hold a quote)."""
    return "'" + value.replace("'", "''") + "'"


def _column_comments(columns: list[TableColumn], engine: int) -> list[str]:
    """One comment line per column: name, the engine's type, nullability, meaning (docs/outputs.md)."""
    width = max(len(c.name) for c in columns)
    typed = [(c, _types(c.data_type)[engine]) for c in columns]
    type_width = max(len(t) for _, t in typed)
    lines = []
    for column, sql_type in typed:
        flags = "partition" if column.name == PARTITION_COLUMN else ("" if column.nullable else "not null")
        meaning = " ".join(column.meaning.split())
        lines.append(f"--   {column.name:<{width}}  {sql_type:<{type_width}}  {flags:<9}  {meaning}".rstrip())
    return lines


def athena_ddl(dataset: Dataset, columns: list[TableColumn], location: str) -> str:
    # Athena reads a Delta table's columns from its log and refuses a column list or other properties
    return "\n".join(
        [
            f"-- {dataset.name}: {dataset.description}",
            "-- Tailor BI table (Delta Lake), partitioned by run_date; docs/tables.md. Athena takes the columns",
            "-- from the Delta log (a column list is refused); they are, as docs/outputs.md documents them:",
            *_column_comments(columns, 2),
            f"CREATE EXTERNAL TABLE {DDL_SCHEMA}.{dataset.name}",
            f"LOCATION {sql_text(location.rstrip('/') + '/')}",
            "TBLPROPERTIES ('table_type' = 'DELTA');",
            "",
        ]
    )


def trino_ddl(dataset: Dataset, columns: list[TableColumn], location: str) -> str:
    # the Delta Lake connector registers an existing table by location and reads its columns from the log
    return "\n".join(
        [
            f"-- {dataset.name}: {dataset.description}",
            "-- Tailor BI table (Delta Lake), partitioned by run_date; docs/tables.md. Trino's Delta Lake",
            "-- connector reads the columns from the Delta log; they are, as docs/outputs.md documents them:",
            *_column_comments(columns, 3),
            "-- Needs delta.register-table-procedure.enabled=true in the catalog's properties.",
            f"CALL {TRINO_CATALOG}.system.register_table(",
            f"    schema_name => {sql_text(DDL_SCHEMA)},",
            f"    table_name => {sql_text(dataset.name)},",
            f"    table_location => {sql_text(location)}",
            ");",
            "",
        ]
    )


def _delta_schema_types(table: Any) -> dict[str, Any]:
    return {field["name"]: field["type"] for field in json.loads(table.schema().to_json())["fields"]}


def _check_types(name: str, existing: Any, rows: pa.Table) -> None:
    """Refuse a changed column type: deltalake would cast tonight's values to the old type, silently."""
    current = _delta_schema_types(existing)
    changed = [
        f"{field.name} is {current[field.name]} in the table, {_types(field.type)[1]} tonight"
        for field in rows.schema
        if field.name in current and current[field.name] != _types(field.type)[1]
    ]
    if changed:
        raise TableError(
            f"table {name}: " + "; ".join(changed) + ". A changed type needs a new table: move the table's "
            "folder aside (docs/tables.md, 'Schema changes') or set publish.tables: false"
        )


def _dates(rows: pa.Table) -> list[date]:
    return sorted(pc.unique(rows[PARTITION_COLUMN]).to_pylist())


def write_table(
    name: str,
    location: str,
    rows: pa.Table,
    run_date: date,
    history: bool,
    options: dict[str, str] | None,
    metadata: dict[str, str],
    keep_hours: float,
) -> dict[str, Any]:
    """Replace the run date's partition with tonight's rows and, for a history dataset, add the nights the
    table lacks; then remove files no commit has used for `keep_hours`. Returns what was done."""
    from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
    from deltalake.exceptions import DeltaError

    others = [day for day in _dates(rows) if day != run_date]
    if others and not history:
        # a snapshot is what the run published: its partition is the run's date, whatever date the rows
        # carry (rows of another night mean a mart was not rebuilt; the run's files hold them just the same)
        log.warning("tables: %s rows carry run_date %s; stored as the run's %s", name, others[0], run_date)
        rows = rows.set_column(
            rows.schema.get_field_index(PARTITION_COLUMN),
            PARTITION_COLUMN,
            pa.array([run_date] * rows.num_rows, pa.date32()),
        )
        others = []
    existing = (
        DeltaTable(location, storage_options=options) if DeltaTable.is_deltatable(location, options) else None
    )
    if existing is not None:
        _check_types(name, existing, rows)
    previous = last_run_date(existing) if existing is not None else None
    common: dict[str, Any] = {
        "partition_by": [PARTITION_COLUMN],
        "schema_mode": "merge",  # a column added to a dataset is added to its table (null on older nights)
        "storage_options": options,
        # the per-run files' compression; the commit names the run and attempt it came from
        "writer_properties": WriterProperties(compression="ZSTD"),
        "commit_properties": CommitProperties(custom_metadata=metadata),
    }
    if existing is None:
        # no per-file min/max statistics in the log: they would copy user ids into commits that no rewrite
        # of a partition reaches; the run_date partitions still let every engine skip the other nights
        common["configuration"] = {"delta.dataSkippingNumIndexedCols": "0"}
    tonight = rows.filter(pc.equal(rows[PARTITION_COLUMN], pa.scalar(run_date, pa.date32())))
    backfilled: list[str] = []
    try:
        write_deltalake(
            location, tonight, mode="overwrite", predicate=partition_predicate(run_date), **common
        )
        table = DeltaTable(location, storage_options=options)
        if others:
            present = {part[PARTITION_COLUMN] for part in table.partitions()}
            missing = [day for day in others if day.isoformat() not in present]
            if missing:
                wanted = pa.array(missing, pa.date32())
                write_deltalake(
                    location, rows.filter(pc.is_in(rows[PARTITION_COLUMN], wanted)), mode="append", **common
                )
                backfilled = [day.isoformat() for day in missing]
                table = DeltaTable(location, storage_options=options)
        # files a rerun replaced stay for readers still on the older version (like superseded attempts);
        # vacuum commits even when it removes nothing, so it runs only when there is something to remove
        retention = max(0, math.ceil(keep_hours))
        stale = table.vacuum(retention_hours=retention, dry_run=True, enforce_retention_duration=False)
        if stale:
            table.vacuum(retention_hours=retention, dry_run=False, enforce_retention_duration=False)
            table = DeltaTable(location, storage_options=options)
    except DeltaError as error:
        raise TableError(f"table {name} at {location}: {str(error).splitlines()[0]}") from error
    return {
        "version": table.version(),
        "rows": tonight.num_rows,
        "backfilled_run_dates": backfilled,
        "removed_files": len(stale),
        "previous_run_date": previous.isoformat() if previous else None,
    }


def last_run_date(table: Any) -> date | None:
    """The run date of the table's newest write by a run (vacuums and erasures are not runs' writes)."""
    for commit in table.history(50):
        if (
            commit.get("tailor.run_date")
            and not commit.get("tailor.erasure")
            and commit["operation"] == "WRITE"
        ):
            return date.fromisoformat(commit["tailor.run_date"])
    return None


def erased_pseudonyms(settings: Settings, since: date) -> set[str]:
    """The pseudonyms of the users the deletion register took in from the run of `since` on. The register
    holds HMAC-SHA256 of each id under the pseudonymisation key, and a published pseudonym is the first 32
    hex characters of that same HMAC (tasks/privacy.py, tasks/publish.py): no id is needed to find them."""
    from tailor.tasks.privacy import KEYED, REGISTER
    from tailor.tasks.publish import PSEUDONYM_HEX_CHARS
    from tailor.warehouse import connect

    schema, name = REGISTER.split(".")
    with connect(settings) as con:
        found = con.execute(
            "select count(*) from information_schema.tables where table_schema = $schema and table_name = $name",
            {"schema": schema, "name": name},
        ).fetchall()[0][0]
        if not found:
            return set()
        rows = con.execute(
            f"select user_hash from {REGISTER} where scheme = $scheme and registered_on >= $since",
            {"scheme": KEYED, "since": since},
        ).fetchall()
    return {row[0][:PSEUDONYM_HEX_CHARS] for row in rows}


def erase_from_table(
    name: str,
    location: str,
    options: dict[str, str] | None,
    columns: list[str],
    lists: list[str],
    pseudonyms: set[str],
    metadata: dict[str, str],
) -> list[str]:
    """Rewrite every partition that holds one of the pseudonyms: without those users' rows (`columns`) and
    without their ids in lists (`lists`). Returns the run dates rewritten; the replaced files go with the
    next vacuum, as a rerun's do."""
    import polars as pl
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.exceptions import DeltaError

    table = DeltaTable(location, storage_options=options)
    present = {field.name for field in table.schema().fields}
    columns = [column for column in columns if column in present]
    lists = [column for column in lists if column in present]
    if not pseudonyms or not (columns or lists):
        return []
    wanted = pa.array(sorted(pseudonyms), pa.string())
    scan = table.to_pyarrow_dataset()
    hit: set[date] = set()
    for column in columns:  # only the id column is read, with the filter pushed down
        found = scan.to_table(columns=[PARTITION_COLUMN], filter=pc.field(column).isin(wanted))
        hit |= set(found[PARTITION_COLUMN].to_pylist())
    for column in lists:
        listed = scan.to_table(columns=[PARTITION_COLUMN, column])
        values = listed[column].combine_chunks()
        holding = pc.filter(pc.list_parent_indices(values), pc.is_in(pc.list_flatten(values), wanted))
        hit |= set(pc.take(listed[PARTITION_COLUMN], holding).to_pylist())
    ids = sorted(pseudonyms)
    for day in sorted(hit):
        part = scan.to_table(filter=pc.field(PARTITION_COLUMN) == pa.scalar(day, pa.date32()))
        frame = pl.DataFrame(pl.from_arrow(part))
        for column in columns:
            frame = frame.filter(pl.col(column).is_null() | ~pl.col(column).is_in(ids))
        for column in lists:
            frame = frame.with_columns(
                pl.col(column).list.eval(pl.element().filter(~pl.element().is_in(ids)))
            )
        try:
            write_deltalake(
                location,
                frame.to_arrow().cast(part.schema),
                mode="overwrite",
                predicate=partition_predicate(day),
                storage_options=options,
                commit_properties=CommitProperties(
                    custom_metadata={**metadata, "tailor.erasure": day.isoformat()}
                ),
            )
        except DeltaError as error:
            raise TableError(
                f"table {name}: erasure in {day} failed: {str(error).splitlines()[0]}"
            ) from error
    return [day.isoformat() for day in sorted(hit)]


def published_rows(local_run: Path, files: Iterable[dict[str, Any]]) -> pa.Table:
    """A dataset's rows from its Parquet parts in the local publish folder, in the files' order."""
    parts = [pq.read_table(local_run / file["path"]) for file in files if file["format"] == "parquet"]
    if not parts:
        raise TableError(f"no Parquet part for {files}")
    return pa.concat_tables(parts)


def make_folders(folder: Path) -> None:
    """Create the missing folders down to `folder`, each 0755 (mkdir obeys the run's umask, 077); folders
    that exist keep the mode their owner gave them."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        os.chmod(path, PUBLISHED_FOLDER_MODE)


def make_readable(folder: Path) -> None:
    """0755 folders and 0644 files in a table's folder: deltalake creates them under the run's umask (077),
    and the tables are for other accounts to read."""
    os.chmod(folder, PUBLISHED_FOLDER_MODE)
    for dirpath, dirnames, filenames in os.walk(folder):
        for dirname in dirnames:
            os.chmod(os.path.join(dirpath, dirname), PUBLISHED_FOLDER_MODE)
        for filename in filenames:
            os.chmod(os.path.join(dirpath, filename), PUBLISHED_FILE_MODE)


def write_tables(
    settings: Settings,
    store: ObjectStore,
    target: str,
    local_run: Path,
    run_date: date,
    attempt_folder: str,
) -> dict[str, Any]:
    """Write every dataset of the run's manifest to its table, with its JSON schema and DDL beside it."""
    manifest = json.loads((local_run / "manifest.json").read_text())
    options = storage_options(target, settings.storage)
    root = local_root(target)
    written: dict[str, Any] = {}
    metadata = {"tailor.run_date": run_date.isoformat(), "tailor.attempt": attempt_folder}
    tonight = {
        dataset.name: table_rows(published_rows(local_run, manifest["datasets"][dataset.name]["files"]), run_date)
        for dataset in DATASETS
        if dataset.name in manifest["datasets"]
    }
    # every table is checked before any is written: a refused one must not leave the others a night ahead
    from deltalake import DeltaTable

    for name, rows in tonight.items():
        for field in rows.schema:
            try:
                _types(field.type)
            except TableError as error:
                raise TableError(f"table {name}, column {field.name}: {error}") from None
        location = delta_location(target, name)
        if DeltaTable.is_deltatable(location, options):
            _check_types(name, DeltaTable(location, storage_options=options), rows)
    for dataset in DATASETS:
        if dataset.name not in tonight:
            continue
        location = delta_location(target, dataset.name)
        rows = tonight[dataset.name]
        if root is not None:
            make_folders(Path(location))
        try:
            result = write_table(
                dataset.name, location, rows, run_date, dataset.history, options, metadata,
                settings.publish.keep_superseded_attempts_hours,
            )  # fmt: skip
        finally:
            if root is not None:
                make_readable(Path(location))
        uri = table_uri(target, dataset.name)
        columns = table_columns(dataset, rows.schema)
        schema = json.dumps(json_schema(dataset, columns, uri), indent=2, ensure_ascii=False) + "\n"
        store.put_bytes(schema.encode(), f"{table_key(dataset.name)}/{SCHEMA_FILE}")
        store.put_bytes(
            athena_ddl(dataset, columns, uri).encode(), f"{table_key(dataset.name)}/{DDL_FOLDER}/athena.sql"
        )
        store.put_bytes(
            trino_ddl(dataset, columns, uri).encode(), f"{table_key(dataset.name)}/{DDL_FOLDER}/trino.sql"
        )
        written[dataset.name] = {"location": uri, **result}
        log.info(
            "tables: %s version %s (%s rows for %s)",
            dataset.name,
            result["version"],
            result["rows"],
            run_date,
        )
    erase_in_tables(settings, target, options, manifest, written, metadata)
    return {"format": TABLE_FORMAT, "location": table_uri(target, "").rstrip("/"), "tables": written}


# the columns of a published dataset that hold pseudonyms: user_id, Braze's EXTERNAL_ID (the same HMAC)
USER_COLUMNS = ["user_id", "EXTERNAL_ID"]


def erase_in_tables(
    settings: Settings,
    target: str,
    options: dict[str, str] | None,
    manifest: dict[str, Any],
    written: dict[str, Any],
    metadata: dict[str, str],
) -> None:
    """Carry erasures into the nights the tables already hold: tonight's rows are without the users the
    register took in since each table's previous write, and so, after this, are the earlier nights. Only
    pseudonyms can be found this way: a table of external ids keeps its earlier nights (docs/tables.md)."""
    users = [
        dataset
        for dataset in DATASETS
        if dataset.name in written
        and written[dataset.name]["previous_run_date"]
        and manifest["datasets"][dataset.name].get("user_id") == "pseudonymous"
    ]
    if not users or settings.pseudonym_key() is None:
        return
    since = min(date.fromisoformat(written[dataset.name]["previous_run_date"]) for dataset in users)
    pseudonyms = erased_pseudonyms(settings, since)
    root = local_root(target)
    for dataset in users:
        location = delta_location(target, dataset.name)
        lists = list(getattr(dataset, "user_lists", ()))  # ids in lists: an audience's users
        try:
            erased = erase_from_table(
                dataset.name, location, options, USER_COLUMNS, lists, pseudonyms, metadata
            )
        finally:
            if root is not None:
                make_readable(Path(location))
        written[dataset.name]["erased_run_dates"] = erased
        if erased:
            log.info("tables: %s rewritten without erased users in %s", dataset.name, ", ".join(erased))


def tables_step(
    settings: Settings, store: ObjectStore, target: str, local_run: Path, run_date: date, root: str
) -> Callable[[str], dict[str, Any]] | None:
    """What `publish_attempt` runs before it moves the pointers: the nightly runs' tables, when
    `publish.tables` is on. The experiments flow run on its own (`root` experiments) leaves them to the
    nightly run, so each partition has one writer."""
    if not settings.publish.tables or root != "runs":
        return None
    return lambda attempt_folder: write_tables(settings, store, target, local_run, run_date, attempt_folder)
