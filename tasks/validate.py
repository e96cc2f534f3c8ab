"""Validate: the data-quality gate, run with Great Expectations on the rows each run loads (raw) and on
tonight's feature tables (features), from the suites in `config/quality/<stage>/<table>.yaml`.

- A failed `critical` expectation stops the run before training and publishing; the run's loads are
  forgotten so the next run checks those files again, and the rows they replaced (a file re-delivered in
  place, a rerun's earlier loads) are put back from `recovery` (tasks/extract.py: unload_run), so a
  rejected file never removes rows that were there before it.
- Rows failing a `quarantine: true` rule move from `raw.<table>` to `quarantine.<table>` with the run
  date, the source file, the failed rules and their original values; more than the suite's
  `quarantine_max_share` of a table's loaded rows in quarantine is critical.
- Volume (the newest file day against the trailing median) and freshness (the newest file against the
  run date) are checked per source, also through Great Expectations.
- Every outcome lands in `meta.data_quality_results`, and Data Docs (HTML) are written for publishing.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import Settings
from tailor.datadocs import localize_assets
from tailor.progress import progress, reported
from tailor.quality import ExpectationSpec, TableSuite, expectation_class, load_suites, resolve_kwargs
from tailor.schema import ORIGINAL_VALUES, PERSONAL_COLUMNS, ROW_KEY, SOURCE_FILE, TABLES
from tailor.sql import materialize_temp, query, scalar
from tailor.tasks.extract import SourceLoad, quote_identifier, unload_run
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)
CRITICAL, WARNING = "critical", "warning"
SAMPLE_SIZE = 5
CHUNK_ROWS = 1_000_000
GATE_BATCH_ROWS = 200_000  # rows read from DuckDB at a time while a chunk is assembled


class DataQualityError(RuntimeError):
    """A critical expectation failed; the message names the table and the expectation."""


@dataclass
class Check:
    stage: str
    table: str
    rule: str
    expectation: str
    column: str
    severity: str
    success: bool
    unexpected_count: int
    rows_checked: int
    sample: list[str] = field(default_factory=list)
    quarantine: bool = False
    row_keys: list[int] = field(default_factory=list, repr=False)
    files: list[str] = field(default_factory=list)

    def describe(self, with_sample: bool = True) -> str:
        """One line for logs and errors; sample values only from columns that say nothing about a person."""
        quotable = with_sample and self.column not in PERSONAL_COLUMNS
        sample = f" (e.g. {', '.join(self.sample[:3])})" if self.sample and quotable else ""
        files = (
            f" in {', '.join(self.files[:3])}" + (" and others" if len(self.files) > 3 else "")
            if self.files
            else ""
        )
        return (
            f"{self.table}: {self.rule} ({self.expectation} on {self.column}) failed for "
            f"{self.unexpected_count} of {self.rows_checked} row(s){files}{sample}"
        )


# what each stage's checks are about, in the run's summary and manifest (meta.data_quality keeps the stage)
STAGE_NAMES = {"extract": "sources", "raw": "sources", "features": "features", "output": "published files"}


def in_pipeline_order(counts: Counter[str]) -> dict[str, int]:
    order = list(dict.fromkeys(STAGE_NAMES.values()))
    return dict(sorted(counts.items(), key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0])))


@dataclass
class QualityReport:
    checks: list[Check]
    quarantined: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.success]

    @property
    def critical_failures(self) -> list[Check]:
        return [check for check in self.failed if check.severity == CRITICAL]

    def summary(self) -> dict[str, Any]:
        return {
            "expectations": len(self.checks),
            "passed": len(self.checks) - len(self.failed),
            "failed_critical": len(self.critical_failures),
            "failed_warning": len(self.failed) - len(self.critical_failures),
            "checks_by_stage": in_pipeline_order(Counter(STAGE_NAMES.get(c.stage, c.stage) for c in self.checks)),
            "quarantined_rows": dict(sorted(self.quarantined.items())),
            "success": not self.critical_failures,
            # published in the manifest: no sample values, which may hold ids
            "failures": [f"[{check.severity}] {check.describe(with_sample=False)}" for check in self.failed],
        }


def combine(*summaries: dict[str, Any]) -> dict[str, Any]:
    """One summary over the gate's stages (for the manifest and the run summary)."""
    quarantined: dict[str, int] = {}
    by_stage: Counter[str] = Counter()
    for summary in summaries:
        for table, rows in summary.get("quarantined_rows", {}).items():
            quarantined[table] = quarantined.get(table, 0) + rows
        by_stage.update(summary.get("checks_by_stage", {}))
    return {
        "expectations": sum(s["expectations"] for s in summaries),
        "checks_by_stage": in_pipeline_order(by_stage),
        "passed": sum(s["passed"] for s in summaries),
        "failed_critical": sum(s["failed_critical"] for s in summaries),
        "failed_warning": sum(s["failed_warning"] for s in summaries),
        "quarantined_rows": quarantined,
        "success": all(s["success"] for s in summaries),
        "failures": [failure for s in summaries for failure in s["failures"]],
    }


def _sample(values: list[Any] | None) -> list[str]:
    return [str(value)[:60] for value in (values or [])[:SAMPLE_SIZE]]


def timestamps_as_numbers(frame: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """The frame with every timestamp column as float microseconds since the epoch (NaN for a missing
    value: exact to the microsecond for any date GX will see), and the names of those columns."""
    temporal = {name for name, kind in frame.dtypes.items() if pd.api.types.is_datetime64_any_dtype(kind)}
    if not temporal:
        return frame, temporal
    converted = frame.copy(deep=False)
    for name in temporal:
        column = frame[name].dt.tz_localize(None) if frame[name].dt.tz is not None else frame[name]
        micros = column.astype("datetime64[us]").to_numpy().astype("int64").astype("float64")
        micros[column.isna().to_numpy()] = float("nan")
        converted[name] = micros
    return converted, temporal


def numeric_time_bounds(spec: ExpectationSpec, temporal: set[str], cutoff: datetime) -> ExpectationSpec:
    """A spec on a timestamp column with its time bounds resolved to microseconds since the epoch."""
    if spec.kwargs.get("column") not in temporal:
        return spec
    resolved = resolve_kwargs(spec.kwargs, cutoff)
    kwargs = {
        key: (int(value.as_unit("us").asm8.astype("int64")) if isinstance(value, pd.Timestamp) else value)
        for key, value in resolved.items()
    }
    return spec.model_copy(update={"kwargs": kwargs})


def as_timestamp(value: str) -> str:
    try:
        return str(pd.Timestamp(int(float(value)), unit="us"))
    except ValueError:
        return value


class Gate:
    """One ephemeral Great Expectations context per stage of a run; builds the stage's Data Docs."""

    def __init__(self, stage: str) -> None:
        import great_expectations as gx

        # GX announces each temporary docs folder at INFO; a nightly log does not need that
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        self._gx = gx
        self.stage = stage
        self.context = gx.get_context(mode="ephemeral")
        _quiet(self.context)
        self.source = self.context.data_sources.add_pandas(f"tailor_{stage}")

    def run(
        self, name: str, frame: pd.DataFrame, specs: list[ExpectationSpec], cutoff: datetime
    ) -> list[Check]:
        # GX compares timestamps to bounds one Python call per value (most of the gate's time); as
        # microseconds since the epoch the same comparison is vectorised
        frame, temporal = timestamps_as_numbers(frame)
        specs = [numeric_time_bounds(spec, temporal, cutoff) for spec in specs]
        checks = self._run(name, frame, specs, cutoff)
        for check in checks:
            if check.column in temporal:
                check.sample = [as_timestamp(value) for value in check.sample]
        return checks

    def _run(
        self, name: str, frame: pd.DataFrame, specs: list[ExpectationSpec], cutoff: datetime
    ) -> list[Check]:
        """Every expectation on the frame. Counting is cheap and listing every failing row is not, so the
        rows (for quarantine, and the files an error names) are listed only for the rules that failed, in a
        second pass over just those rules."""
        checks = self._validate(name, frame, specs, cutoff, with_rows=False)
        failed = {c.rule for c in checks if not c.success and ROW_KEY in frame.columns}
        if failed:
            listed = self._validate(
                name, frame, [s for s in specs if s.rule in failed], cutoff, with_rows=True
            )
            by_rule = {check.rule: check for check in listed}
            checks = [by_rule.get(check.rule, check) for check in checks]
        return checks

    def _validate(
        self, name: str, frame: pd.DataFrame, specs: list[ExpectationSpec], cutoff: datetime, with_rows: bool
    ) -> list[Check]:
        gx = self._gx
        # the listing pass is a validation of its own in the Data Docs, named after the checks it lists
        asset = f"{name}_failing_rows" if with_rows else name
        batch = self.source.add_dataframe_asset(asset).add_batch_definition_whole_dataframe("this_run")
        suite = self.context.suites.add(gx.ExpectationSuite(name=f"{self.stage}.{asset}"))
        for spec in specs:
            expectation_type = expectation_class(spec.type)
            assert expectation_type is not None  # checked when the suite was loaded
            suite.add_expectation(
                expectation_type(**resolve_kwargs(spec.kwargs, cutoff), meta={"rule": spec.rule})
            )
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{self.stage}.{asset}", data=batch, suite=suite)
        )
        complete = {"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_KEY, SOURCE_FILE]}
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=f"{self.stage}.{asset}.gate",
                validation_definitions=[definition],
                # the context keeps every result; the Data Docs are built once, by write_docs, not per chunk
                actions=[],
                result_format=complete if with_rows else "SUMMARY",
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        self._release_batches()
        by_rule = {spec.rule: spec for spec in specs}
        checks = []
        for validation in result.run_results.values():
            for outcome in validation.results:
                spec = by_rule[outcome.expectation_config.meta["rule"]]
                checks.append(self._check(name, spec, outcome, len(frame)))
        return checks

    def _check(self, table: str, spec: ExpectationSpec, outcome: Any, rows: int) -> Check:
        kwargs = spec.kwargs
        column = kwargs.get("column") or "+".join(
            c
            for c in kwargs.get("column_list", [kwargs.get("column_A", ""), kwargs.get("column_B", "")])
            if c != SOURCE_FILE
        )
        result = outcome.result
        unexpected = [entry for entry in result.get("unexpected_index_list") or [] if ROW_KEY in entry]
        keys = [int(entry[ROW_KEY]) for entry in unexpected]
        files = sorted({str(entry[SOURCE_FILE]) for entry in unexpected if SOURCE_FILE in entry})
        return Check(
            stage=self.stage,
            table=table,
            rule=spec.rule,
            expectation=spec.type,
            column=column,
            # a quarantine rule's failing rows leave the run; only their share can make it critical
            severity=WARNING if spec.quarantine else spec.severity,
            success=bool(outcome.success),
            unexpected_count=int(result.get("unexpected_count") or 0),
            rows_checked=rows,
            sample=_sample(result.get("partial_unexpected_list")),
            quarantine=spec.quarantine,
            row_keys=keys if spec.quarantine else [],
            files=files,
        )

    def _release_batches(self) -> None:
        """Drop the chunk GX keeps in its execution engine (every batch's data and resolved metrics): kept,
        a million users' 77 chunks held 23 GB. The results stay in the context for the Data Docs."""
        engine = self.source.get_execution_engine()
        engine.batch_manager.batch_data_cache.clear()
        engine.batch_manager.reset_batch_cache()
        metric_cache = getattr(engine, "_metric_cache", None)
        if isinstance(metric_cache, dict):
            metric_cache.clear()

    def write_docs(self, folder: Path) -> Path | None:
        """Build the stage's Data Docs site from every result and copy it into `folder` (and remove GX's
        temporary copy)."""
        self.context.build_data_docs()
        sites = self.context.get_docs_sites_urls()
        if not sites or not sites[0].get("site_url"):
            return None
        site = Path(urlparse(sites[0]["site_url"]).path).parent
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(site, folder)
        shutil.rmtree(site, ignore_errors=True)
        localize_assets(folder)  # the pages load their scripts and styles from the folder, not from CDNs
        return folder / "index.html"


def _quiet(context: Any) -> None:
    """GX draws progress bars on stderr for every metric; a nightly log does not want them."""
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except (ImportError, AttributeError):  # older layouts of GX: bars are cosmetic
        pass


def checked_columns(con: duckdb.DuckDBPyConnection, specs: list[ExpectationSpec]) -> str:
    """The select list of gate_rows that a table's expectations read, with the row key and file that
    failing rows are listed by: every other column would only cost conversion and memory. All columns
    when a rule has a row condition (it may read any)."""
    present = [row[0] for row in con.execute("select column_name from (describe gate_rows)").fetchall()]
    if any("row_condition" in spec.kwargs for spec in specs):
        return ", ".join(quote_identifier(name) for name in present)
    wanted = {ROW_KEY, SOURCE_FILE}
    for spec in specs:
        kwargs = spec.kwargs
        wanted.update(name for key in ("column", "column_A", "column_B") if isinstance(name := kwargs.get(key), str))
        wanted.update(kwargs.get("column_list") or [])
    # a column a rule names but the rows lack stays out: GX then reports the rule as failed, naming it
    return ", ".join(quote_identifier(name) for name in present if name in wanted)


def chunk_frames(con: duckdb.DuckDBPyConnection, columns: str, chunks: list[list[str]]) -> Iterator[pd.DataFrame]:
    """Each chunk's rows of gate_rows (its files', in file and row order) from one ordered pass over the
    table: a query per chunk read the whole table once per chunk, quadratic in the files. Memory holds a
    chunk and a batch."""
    reader = con.sql(f"select {columns} from gate_rows order by {SOURCE_FILE}, {ROW_KEY}").to_arrow_reader(
        GATE_BATCH_ROWS
    )
    pending = reader.schema.empty_table()  # rows read and not yet handed out
    exhausted = False
    for files in chunks:
        last = files[-1] if files else None
        # read on until a row past the chunk's last file arrives, or the rows end
        while last is not None and not exhausted and (
            pending.num_rows == 0 or pending[SOURCE_FILE][-1].as_py() <= last
        ):
            try:
                pending = pa.concat_tables([pending, pa.Table.from_batches([reader.read_next_batch()])])
            except StopIteration:
                exhausted = True
        inside = 0 if last is None else int(pc.sum(pc.less_equal(pending[SOURCE_FILE], last)).as_py() or 0)
        yield pending.slice(0, inside).to_pandas()
        pending = pending.slice(inside)


def gate_frame(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    """Rows for Great Expectations through Arrow: about 8 times faster than DuckDB's own pandas
    conversion for string columns, to the same dtypes."""
    return con.sql(sql, params=params).to_arrow_table().to_pandas()


def run_suite(table: str, frame: pd.DataFrame, specs: list[ExpectationSpec], cutoff: datetime) -> list[Check]:
    """One table's expectations on one frame, in a context of its own (for tests and tools)."""
    return Gate("raw").run(table, frame, specs, cutoff)


# --- chunks -------------------------------------------------------------------------------------------


def file_chunks(con: duckdb.DuckDBPyConnection, table: str, ctx: RunContext) -> list[list[str]]:
    """This run's files of a table, grouped into chunks of about CHUNK_ROWS rows: whole files, so a
    rule about rows within one file sees the whole file, and memory stays bounded by the chunk."""
    files = con.execute(
        "select file_uri, row_count from meta.loaded_files where source = $table and loaded_run_date = $run_date "
        "order by file_uri",
        {"table": table, "run_date": ctx.run_date},
    ).fetchall()
    chunks: list[list[str]] = [[]]
    rows_in_chunk = 0
    for uri, rows in files:
        if chunks[-1] and rows_in_chunk + rows > CHUNK_ROWS:
            chunks.append([])
            rows_in_chunk = 0
        chunks[-1].append(uri)
        rows_in_chunk += rows
    return [chunk for chunk in chunks if chunk] or [[]]


def merge_parts(table: str, parts: list[list[Check]]) -> list[Check]:
    """One check per rule from the checks of each chunk."""
    merged = []
    for same_rule in zip(*parts, strict=True):
        first = same_rule[0]
        merged.append(
            Check(
                stage=first.stage,
                table=table,
                rule=first.rule,
                expectation=first.expectation,
                column=first.column,
                severity=first.severity,
                success=all(c.success for c in same_rule),
                unexpected_count=sum(c.unexpected_count for c in same_rule),
                rows_checked=sum(c.rows_checked for c in same_rule),
                sample=[s for c in same_rule for s in c.sample][:SAMPLE_SIZE],
                quarantine=first.quarantine,
                row_keys=[k for c in same_rule for k in c.row_keys],
                files=sorted({f for c in same_rule for f in c.files}),
            )
        )
    return merged


# --- quarantine ---------------------------------------------------------------------------------------


def quarantine_rows(con: duckdb.DuckDBPyConnection, table: str, checks: list[Check], ctx: RunContext) -> int:
    """Move rows failing quarantine rules from raw.<table> to quarantine.<table>; return how many."""
    rules_by_key: dict[int, list[str]] = {}
    for check in checks:
        if check.quarantine and not check.success:
            for key in check.row_keys:
                rules_by_key.setdefault(key, []).append(check.rule)
    con.execute("create schema if not exists quarantine")
    con.execute(
        f"""
        create table if not exists quarantine.{table} (
            run_date date, source_file varchar, failed_rules varchar[], original_values json, row_key bigint
        )
        """
    )
    con.execute(f"delete from quarantine.{table} where run_date = $run_date", {"run_date": ctx.run_date})
    if not rules_by_key:
        return 0
    failing = pa.table(
        {"row_key": list(rules_by_key), "failed_rules": [sorted(set(r)) for r in rules_by_key.values()]}
    )
    canonical = ", ".join(
        f"{quote_identifier(c.name)} := {quote_identifier(c.name)}" for c in TABLES[table].columns
    )
    con.register("quarantine_keys", failing)
    try:
        con.execute("begin transaction")
        # identifiers come from the canonical schema; values are bound
        con.execute(
            f"""
            insert into quarantine.{table}
            select $run_date, {SOURCE_FILE}, keys.failed_rules,
                coalesce({ORIGINAL_VALUES}, to_json(struct_pack({canonical}))), {ROW_KEY}
            from raw.{table} inner join quarantine_keys as keys on keys.row_key = raw.{table}.{ROW_KEY}
            """,
            {"run_date": ctx.run_date},
        )
        con.execute(f"delete from raw.{table} where {ROW_KEY} in (select row_key from quarantine_keys)")
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    finally:
        con.unregister("quarantine_keys")
    return len(rules_by_key)


def quarantine_share_check(
    table: str, quarantined: int, loaded: int, suite: TableSuite, checks: list[Check]
) -> Check:
    share = quarantined / loaded if loaded else 0.0
    failing = [c for c in checks if c.quarantine and not c.success]
    by_rule = [f"{c.rule} on {c.column}: {c.unexpected_count}" for c in failing]
    return Check(
        stage="raw",
        table=table,
        rule="quarantine_share",
        expectation=f"quarantined share at most {suite.quarantine_max_share:.1%}",
        column="*",
        severity=CRITICAL,
        success=share <= suite.quarantine_max_share,
        unexpected_count=quarantined,
        rows_checked=loaded,
        sample=by_rule,
        files=sorted({f for c in failing for f in c.files}),
    )


# --- volume and freshness -----------------------------------------------------------------------------


def activity_frame(history: list[tuple[date, int]], run_date: date, suite: TableSuite) -> pd.DataFrame:
    """One row: the newest file day's rows over the trailing median, and the newest file's lag in days."""
    days = sorted(history)
    newest_day, newest_rows = days[-1] if days else (None, 0)
    earlier = [rows for _, rows in days[:-1]]
    volume = suite.volume
    trailing = earlier[-volume.trailing_days :] if volume else []
    enough = volume is not None and len(trailing) >= volume.min_history
    ratio = newest_rows / statistics.median(trailing) if enough and statistics.median(trailing) > 0 else None
    lag = (run_date - newest_day).days if newest_day else None
    return pd.DataFrame(
        {
            "newest_file_day": [str(newest_day)],
            "newest_day_rows": [newest_rows],
            "volume_ratio": [ratio],
            "lag_days": [lag if lag is not None else 10**6],
        }
    )


def activity_specs(suite: TableSuite) -> list[ExpectationSpec]:
    specs = []
    if suite.volume:
        specs.append(
            ExpectationSpec(
                rule="volume",
                type="expect_column_values_to_be_between",
                kwargs={
                    "column": "volume_ratio",
                    "min_value": suite.volume.min_ratio,
                    "max_value": suite.volume.max_ratio,
                },
                severity=suite.volume.severity,
                description="the newest file day's rows against the trailing median of earlier days",
            )
        )
    if suite.freshness:
        specs.append(
            ExpectationSpec(
                rule="freshness",
                type="expect_column_values_to_be_between",
                kwargs={"column": "lag_days", "max_value": suite.freshness.max_lag_days},
                severity=suite.freshness.severity,
                description="days from the newest file to the run date",
            )
        )
    return specs


def newest_event_day(con: duckdb.DuckDBPyConnection, table: str, ctx: RunContext) -> list[tuple[date, int]]:
    """[(the day of the newest event before the cutoff, the events of that day)], or [] without events."""
    columns = TABLES[table].event_time_columns
    if not columns:
        return []
    column = columns[0]  # names come from the schema, never from input
    row = con.execute(
        f"select max({column}) from raw.{table} where {column} < $cutoff", {"cutoff": ctx.cutoff}
    ).fetchall()[0]
    if row[0] is None:
        return []
    day = row[0].date()
    rows = scalar(
        con,
        f"select count(*) from raw.{table} where {column} >= $start and {column} < $cutoff",
        {"start": datetime.combine(day, datetime.min.time()), "cutoff": ctx.cutoff},
    )
    return [(day, int(rows))]


def activity_checks(
    con: duckdb.DuckDBPyConnection, gate: Gate, suite: TableSuite, ctx: RunContext
) -> list[Check]:
    specs = activity_specs(suite)
    if not specs:
        return []
    history = [
        (day, int(rows))
        for source, day, rows in query(con, "checks/source_activity", {"run_date": ctx.run_date}).fetchall()
        if source == suite.table
    ]
    newest_what = "file"
    if not history:
        # undated snapshots (a full export each night): how fresh the data is shows in its newest event
        history, newest_what = newest_event_day(con, suite.table, ctx), "event"
    frame = activity_frame(history, ctx.run_date, suite)
    checks = gate.run(f"{suite.table}_activity", frame, specs, ctx.cutoff)
    for check in checks:
        check.table = suite.table
        row = frame.iloc[0]
        check.sample = [
            f"newest {newest_what} {row['newest_file_day']}, {row['newest_day_rows']} rows"
            + (f", {row['volume_ratio']:.2f}x the trailing median" if pd.notna(row["volume_ratio"]) else "")
        ]
    return checks


# --- results ------------------------------------------------------------------------------------------


def extract_warning_checks(loads: dict[str, SourceLoad]) -> list[Check]:
    return [
        Check("extract", table, "extract_warning", "schema drift or unusual values at extract", "*", WARNING,
              False, 1, load.rows_loaded, [warning[-200:]])
        for table, load in sorted(loads.items())
        for warning in load.warnings
    ]  # fmt: skip


def store_results(
    con: duckdb.DuckDBPyConnection, ctx: RunContext, stages: tuple[str, ...], checks: list[Check]
) -> None:
    con.execute("create schema if not exists meta")
    con.execute(
        """
        create table if not exists meta.data_quality_results (
            run_date date, stage varchar, table_name varchar, rule varchar, expectation varchar,
            column_name varchar, severity varchar, is_success boolean, unexpected_count bigint,
            rows_checked bigint, unexpected_sample varchar[]
        )
        """
    )
    con.execute(
        "delete from meta.data_quality_results where run_date = $run_date and list_contains($stages, stage)",
        {"run_date": ctx.run_date, "stages": list(stages)},
    )
    if not checks:
        return
    rows = pa.Table.from_pylist(
        [
            {
                "run_date": ctx.run_date,
                "stage": c.stage,
                "table_name": c.table,
                "rule": c.rule,
                "expectation": c.expectation,
                "column_name": c.column,
                "severity": c.severity,
                "is_success": c.success,
                "unexpected_count": c.unexpected_count,
                "rows_checked": c.rows_checked,
                "unexpected_sample": c.sample,
            }
            for c in checks
        ]
    )
    con.register("new_results", rows)
    try:
        con.execute("insert into meta.data_quality_results by name select * from new_results")
    finally:
        con.unregister("new_results")


def fail_if_critical(report: QualityReport, settings: Settings, ctx: RunContext, stage: str) -> None:
    for check in report.failed:
        log.warning("data quality [%s] %s", check.severity, check.describe())
    if report.critical_failures:
        with connect(settings) as con:
            unload_run(con, ctx.run_date)
        raise DataQualityError(
            f"data-quality gate ({stage}) failed, nothing published: "
            + "; ".join(check.describe() for check in report.critical_failures)
        )


def suites_for(settings: Settings, stage: str) -> dict[str, TableSuite]:
    folder = settings.resolve(settings.quality.suites_dir) if settings.quality.suites_dir else None
    return load_suites(stage, folder)


@task(name="validate-sources", cache_policy=NO_CACHE)
@reported("validate-sources")
def validate_sources(settings: Settings, ctx: RunContext, loads: dict[str, SourceLoad]) -> dict[str, Any]:
    """The gate on the rows this run loaded: quarantine bad rows, stop on a critical failure."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    try:
        return _validate_sources(settings, ctx, loads)
    except DataQualityError:
        raise
    except Exception:
        # a gate that broke halfway checked nothing for sure: the next run must check these files again
        with connect(settings) as con:
            unload_run(con, ctx.run_date)
        raise


def _validate_sources(settings: Settings, ctx: RunContext, loads: dict[str, SourceLoad]) -> dict[str, Any]:
    suites = suites_for(settings, "raw")
    gate = Gate("raw")
    checks = extract_warning_checks(loads)
    quarantined = {}
    checked = [table for table in settings.sources if table in suites]
    with connect(settings) as con, progress("gate: sources", total=len(checked), unit="tables") as bar:
        for table in checked:
            suite = suites[table]
            bar.advance(0, note=table)
            parts, loaded = [], 0
            chunks = file_chunks(con, table, ctx)
            # the checked rows of every chunk in one pass (duplicates are found against all loaded rows
            # once, not once per chunk); each chunk then reads its files' range of the sorted table
            every_file = [uri for chunk in chunks for uri in chunk]
            materialize_temp(con, f"checks/raw_{table}", {"run_date": ctx.run_date, "files": every_file},
                             "gate_rows", (SOURCE_FILE, ROW_KEY))  # fmt: skip
            columns = checked_columns(con, suite.expectations)
            for part, frame in enumerate(chunk_frames(con, columns, chunks)):
                parts.append(gate.run(f"{table}_part{part}", frame, suite.expectations, ctx.cutoff))
                loaded += len(frame)
                del frame
            con.execute("drop table gate_rows")
            table_checks = merge_parts(table, parts)
            quarantined[table] = quarantine_rows(con, table, table_checks, ctx)
            table_checks.append(
                quarantine_share_check(table, quarantined[table], loaded, suite, table_checks)
            )
            checks += table_checks + activity_checks(con, gate, suite, ctx)
            bar.advance(1, note=f"{table}: {loaded:,} rows in {len(parts)} chunk(s)")
        store_results(con, ctx, ("extract", "raw"), checks)
    with progress("gate: data docs (sources)", total=None, unit="pages"):
        gate.write_docs(ctx.run_dir / "data_docs" / "raw")
    report = QualityReport(checks, quarantined)
    fail_if_critical(report, settings, ctx, "sources")
    return report.summary()


def user_ranges(con: duckdb.DuckDBPyConnection, rows: int) -> list[tuple[str | None, str | None]]:
    """Ranges of user_id in gate_rows holding about CHUNK_ROWS rows each (a user's rows in one range, so
    every rule about a user's rows sees all of them); one open range for a small table."""
    chunks = -(-rows // CHUNK_ROWS)
    if chunks <= 1:
        return [(None, None)]
    quantiles = [index / chunks for index in range(1, chunks)]
    bounds = sorted(set(con.execute("select quantile_disc(user_id, $q) from gate_rows", {"q": quantiles})
                        .fetchall()[0][0]))  # fmt: skip
    return list(zip([None, *bounds], [*bounds, None], strict=True))


USER_RANGE = (
    "select {columns} from gate_rows where ($low is null or user_id >= $low) and ($high is null or user_id < $high) "
    "or ($low is null and user_id is null)"
)


@task(name="validate-features", cache_policy=NO_CACHE)
@reported("validate-features")
def validate_features(settings: Settings, ctx: RunContext) -> dict[str, Any]:
    """The gate on tonight's feature tables, before any model trains on or scores them."""
    suites = suites_for(settings, "features")
    gate = Gate("features")
    checks: list[Check] = []
    with connect(settings) as con, progress("gate: features", total=len(suites), unit="tables") as bar:
        for table, suite in suites.items():
            bar.advance(0, note=table)
            # the table's checked rows once, sorted by user (if it has users), then a range of users at a time
            has_users = "user_id" in query(con, f"checks/features_{table}", {"cutoff": ctx.cutoff}).columns
            materialize_temp(con, f"checks/features_{table}", {"cutoff": ctx.cutoff}, "gate_rows",
                             ("user_id",) if has_users else ())  # fmt: skip
            rows = int(con.execute("select count(*) from gate_rows").fetchall()[0][0])
            ranges = user_ranges(con, rows) if has_users else [(None, None)]
            columns = checked_columns(con, suite.expectations)
            parts = []
            for index, (low, high) in enumerate(ranges):
                frame = gate_frame(con, (USER_RANGE if has_users else "select {columns} from gate_rows").format(columns=columns),
                                   {"low": low, "high": high} if has_users else {})  # fmt: skip
                parts.append(gate.run(f"{table}_part{index}" if len(ranges) > 1 else table, frame,
                                      suite.expectations, ctx.cutoff))  # fmt: skip
                del frame
            con.execute("drop table gate_rows")
            checks += merge_parts(table, parts)
            bar.advance(1, note=f"{table}: {rows:,} rows")
        store_results(con, ctx, ("features",), checks)
    with progress("gate: data docs (features)", total=None, unit="pages"):
        gate.write_docs(ctx.run_dir / "data_docs" / "features")
    report = QualityReport(checks)
    fail_if_critical(report, settings, ctx, "features")
    return report.summary()
