"""Validate: a Great Expectations gate on the rows this run loaded, before anything is trained on them.

The suite of each table is derived from the canonical schema: keys present and unique within a file,
event times neither after the run's cutoff nor implausibly old, closed value sets respected. Every
outcome is stored in `meta.data_quality_results`; a failed `critical` expectation stops the run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import Settings
from tailor.schema import ALLOWED_VALUES, LOADED_RUN_DATE, MAX_EVENT_AGE_YEARS, SOURCE_FILE, TABLES, Table
from tailor.warehouse import RunContext, connect
from tasks.extract import unload_run

log = logging.getLogger(__name__)
CRITICAL, WARNING = "critical", "warning"


class DataQualityError(RuntimeError):
    """A critical expectation failed; the message names the table and the expectation."""


@dataclass
class Check:
    table: str
    expectation: str
    column: str
    severity: str
    success: bool
    unexpected_count: int
    sample: list[str] = field(default_factory=list)

    def describe(self) -> str:
        sample = f" (e.g. {', '.join(self.sample[:3])})" if self.sample else ""
        return f"{self.table}: {self.expectation} on {self.column} failed for {self.unexpected_count} row(s){sample}"


@dataclass
class QualityReport:
    checks: list[Check]

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
            "success": not self.critical_failures,
            "failures": [check.describe() for check in self.failed],
        }


def expectations_for(table: Table, cutoff: datetime) -> list[Any]:
    """The suite of one table, from its schema: (GX expectation, severity) pairs."""
    import great_expectations as gx

    suite: list[Any] = []
    for column in table.key:
        suite.append(
            gx.expectations.ExpectColumnValuesToNotBeNull(column=column, meta={"severity": CRITICAL})
        )
    suite.append(
        gx.expectations.ExpectCompoundColumnsToBeUnique(
            column_list=[*table.key, SOURCE_FILE], meta={"severity": CRITICAL}
        )
    )
    oldest = cutoff - timedelta(days=365 * MAX_EVENT_AGE_YEARS)
    for name in table.event_time_columns:
        if table.column(name).required and name not in table.key:
            suite.append(
                gx.expectations.ExpectColumnValuesToNotBeNull(column=name, meta={"severity": CRITICAL})
            )
        suite.append(
            gx.expectations.ExpectColumnValuesToBeBetween(
                column=name,
                min_value=pd.Timestamp(oldest),
                # strictly before the cutoff: the run sees data up to the end of the previous day
                max_value=pd.Timestamp(cutoff - timedelta(microseconds=1)),
                meta={"severity": CRITICAL},
            )
        )
    for (table_name, column_name), allowed in ALLOWED_VALUES.items():
        if table_name == table.name:
            suite.append(
                gx.expectations.ExpectColumnValuesToBeInSet(
                    column=column_name, value_set=list(allowed), meta={"severity": CRITICAL}
                )
            )
    return suite


def loaded_rows(con: duckdb.DuckDBPyConnection, table: Table, ctx: RunContext) -> pd.DataFrame:
    columns = {*table.key, *table.event_time_columns}
    select = []
    for name in sorted(columns):
        if (table.name, name) in ALLOWED_VALUES:
            select.append(f"lower(trim({name})) as {name}")
        else:
            select.append(name)
    for (table_name, name), _ in ALLOWED_VALUES.items():
        if table_name == table.name and name not in columns:
            select.append(f"lower(trim({name})) as {name}")
    sql = (
        f"select {', '.join(select)}, {SOURCE_FILE} from raw.{table.name} where {LOADED_RUN_DATE} = $run_date"
    )
    return con.execute(sql, {"run_date": ctx.run_date}).df()


def _sample(values: list[Any] | None) -> list[str]:
    return [str(value)[:60] for value in (values or [])[:5]]


class Gate:
    """One ephemeral Great Expectations context, shared by every table's suite in a run."""

    def __init__(self) -> None:
        import great_expectations as gx

        # GX announces each temporary docs folder at INFO; a nightly log does not need that
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        self._gx = gx
        self.context = gx.get_context(mode="ephemeral")
        _quiet(self.context)
        self.source = self.context.data_sources.add_pandas("tailor")

    def run(self, table: Table, frame: pd.DataFrame, cutoff: datetime) -> list[Check]:
        gx = self._gx
        batch = self.source.add_dataframe_asset(table.name).add_batch_definition_whole_dataframe(
            "loaded_by_run"
        )
        suite = self.context.suites.add(gx.ExpectationSuite(name=f"{table.name}_schema"))
        for expectation in expectations_for(table, cutoff):
            suite.add_expectation(expectation)
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{table.name}_raw", data=batch, suite=suite)
        )
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(name=f"{table.name}_gate", validation_definitions=[definition])
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        return [
            _check(table, outcome)
            for validation in result.run_results.values()
            for outcome in validation.results
        ]


def _check(table: Table, outcome: Any) -> Check:
    config = outcome.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or "+".join(c for c in kwargs.get("column_list", []) if c != SOURCE_FILE)
    return Check(
        table=table.name,
        expectation=config.type,
        column=column,
        severity=config.meta.get("severity", CRITICAL),
        success=bool(outcome.success),
        unexpected_count=int(outcome.result.get("unexpected_count") or 0),
        sample=_sample(outcome.result.get("partial_unexpected_list")),
    )


def run_suite(table: Table, frame: pd.DataFrame, cutoff: datetime) -> list[Check]:
    """One table's suite on one frame, in a context of its own."""
    return Gate().run(table, frame, cutoff)


def _quiet(context: Any) -> None:
    """GX draws progress bars on stderr for every metric; a nightly log does not want them."""
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except (ImportError, AttributeError):  # older layouts of GX: bars are cosmetic
        pass


def store_results(con: duckdb.DuckDBPyConnection, ctx: RunContext, checks: list[Check]) -> None:
    con.execute("create schema if not exists meta")
    con.execute(
        """
        create table if not exists meta.data_quality_results (
            run_date date, table_name varchar, expectation varchar, column_name varchar, severity varchar,
            is_success boolean, unexpected_count bigint, unexpected_sample varchar[]
        )
        """
    )
    con.execute(
        "delete from meta.data_quality_results where run_date = $run_date", {"run_date": ctx.run_date}
    )
    for check in checks:
        con.execute(
            "insert into meta.data_quality_results values ($run_date, $table, $expectation, $column, $severity, "
            "$success, $count, $sample)",
            {
                "run_date": ctx.run_date,
                "table": check.table,
                "expectation": check.expectation,
                "column": check.column,
                "severity": check.severity,
                "success": check.success,
                "count": check.unexpected_count,
                "sample": check.sample,
            },
        )


@task(name="validate", cache_policy=NO_CACHE)
def validate_sources(settings: Settings, ctx: RunContext) -> dict[str, Any]:
    """Run the gate on every configured source; raise DataQualityError on a critical failure."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    checks: list[Check] = []
    gate = Gate()
    with connect(settings) as con:
        for table_name in settings.sources:
            table = TABLES[table_name]
            checks += gate.run(table, loaded_rows(con, table, ctx), ctx.cutoff)
        store_results(con, ctx, checks)
    report = QualityReport(checks)
    for check in report.failed:
        log.warning("data quality %s: %s", check.severity, check.describe())
    if report.critical_failures:
        with connect(settings) as con:
            unload_run(con, ctx.run_date)
        raise DataQualityError(
            "data-quality gate failed, nothing published: "
            + "; ".join(check.describe() for check in report.critical_failures)
        )
    return report.summary()
