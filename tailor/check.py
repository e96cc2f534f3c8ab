"""`tailor check`: run a project's source mappings on its files, without a nightly run and without Prefect.

Every configured source is loaded by extract's own functions into a scratch DuckDB in a temporary folder
(the configured warehouse is never opened), and then the raw tables are read back: what each canonical
table holds, the dates each stage of a run would see, and every problem, each named by file and column.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from tailor.config import Settings, load_settings
from tailor.schema import (
    INVALID_COLUMNS,
    ORIGINAL_VALUES,
    PERSONAL_COLUMNS,
    ROW_KEY,
    SOURCE_FILE,
    TABLES,
    Table,
)
from tailor.storage import StorageError
from tailor.warehouse import RunContext, connect, run_context

MASK = "***"
SAMPLE_ROWS = 3


@dataclass(frozen=True)
class Problem:
    table: str
    file: str | None  # the file (as lineage names it) or the source's pattern
    column: str | None
    message: str

    def __str__(self) -> str:
        where = " ".join(part for part in (self.table, self.file, self.column) if part)
        return f"{where}: {self.message}"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def masked(column: str, value: Any) -> Any:
    """A value fit to print: personal columns show only whether they hold something."""
    if column in PERSONAL_COLUMNS and value is not None:
        return MASK
    return value


def scratch_settings(settings: Settings, folder: Path) -> Settings:
    """The same sources, with the warehouse and run folders in `folder`: the real warehouse stays shut."""
    warehouse = settings.warehouse.model_copy(
        update={"path": str(folder / "check.duckdb"), "runs_dir": str(folder / "runs")}
    )
    return settings.model_copy(update={"warehouse": warehouse})


def check_project(config: Path, sample_rows: int = SAMPLE_ROWS) -> dict[str, Any]:
    """Load every source into a scratch warehouse and describe it; `problems` empty means ready to run."""
    # imported here: the CLI's other commands need none of extract's dependencies to start
    from tailor.tasks.extract import ExtractError, ensure_meta, extract_source

    settings = load_settings(config)
    problems: list[Problem] = []
    warnings: list[str] = []
    failed: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="tailor-check-") as scratch:
        folder = Path(scratch)
        checked = scratch_settings(settings, folder)
        # every file, whatever its date: the run date is known only once the interactions are in
        every_file = RunContext(date.max, datetime.max, folder / "runs" / "check", settings.seed)
        files: dict[str, int] = {}
        with connect(checked) as con:
            ensure_meta(con)
            for name in settings.sources:
                try:
                    load = extract_source(con, checked, name, every_file)
                except (ExtractError, StorageError) as error:
                    failed.add(name)
                    problems.append(extract_problem(name, settings.sources[name].path, str(error)))
                    continue
                files[name] = load.files_loaded
                warnings += load.warnings
            tables = {
                name: describe_table(con, settings, TABLES[name], files.get(name, 0), sample_rows)
                for name in TABLES
            }
            for name in settings.sources:
                if name not in failed:
                    problems += unparsed_values(con, TABLES[name]) + empty_required_columns(con, TABLES[name])
            problems += missing_references(con, failed)
            # without the interactions there is no run to date (their extract error says why)
            run = {} if "interactions" in failed else run_dates(con, settings, problems)
    return {
        "config": str(config),
        "tables": tables,
        "run": run,
        "warnings": warnings,
        "problems": [asdict(problem) for problem in problems],
        "ok": not problems,
    }


_FILE_LABEL = re.compile(r"^file (\S+): (.*)$", re.DOTALL)


def extract_problem(table: str, pattern: str, message: str) -> Problem:
    """An extract error as a problem: its file out of the message's `source T: file F: ...` label."""
    # the check loads every file whatever its date: the far-off date it uses for that means nothing here
    rest = message.removeprefix(f"source {table}: ").replace(f" before {date.max}", "")
    labelled = _FILE_LABEL.match(rest)
    if labelled:
        return Problem(table, labelled.group(1), None, labelled.group(2))
    return Problem(table, pattern, None, rest)


def describe_table(
    con: duckdb.DuckDBPyConnection, settings: Settings, table: Table, files: int, sample_rows: int
) -> dict[str, Any]:
    source = settings.sources.get(table.name)
    info: dict[str, Any] = {
        "configured": source is not None,
        "path": source.path if source else None,
        "sql": source.sql if source else None,
        "files": files,
        "rows": int(con.execute(f"select count(*) from raw.{table.name}").fetchall()[0][0]),
        "event_time": {},
        "sample": [],
    }
    for column in table.event_time_columns:
        low, high = con.execute(
            f"select min({quote(column)}), max({quote(column)}) from raw.{table.name}"
        ).fetchall()[0]
        info["event_time"][column] = [_text(low), _text(high)]
    names = table.column_names
    rows = con.execute(
        f"select {', '.join(quote(c) for c in names)} from raw.{table.name} order by {ROW_KEY} limit $n",
        {"n": sample_rows},
    ).fetchall()
    info["sample"] = [
        {column: masked(column, _text(value)) for column, value in zip(names, row, strict=True)} for row in rows
    ]
    return info


def _text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return value


def unparsed_values(con: duckdb.DuckDBPyConnection, table: Table) -> list[Problem]:
    """Values kept as their original text because they did not parse (the lineage columns), per file."""
    rows = con.execute(
        f"""
        select {SOURCE_FILE}, name, count(*) as n, min(json_extract_string({ORIGINAL_VALUES}, '$.' || name))
        from (select {SOURCE_FILE}, unnest({INVALID_COLUMNS}) as name, {ORIGINAL_VALUES} from raw.{table.name})
        group by all
        order by all
        """
    ).fetchall()
    problems = []
    for file, column, count, sample in rows:
        example = MASK if column in PERSONAL_COLUMNS else repr(str(sample)[:40])
        problems.append(
            Problem(
                table.name,
                file,
                column,
                f"{count} value(s) do not parse as {table.column(column).duckdb_type} (e.g. {example})",
            )
        )
    return problems


def empty_required_columns(con: duckdb.DuckDBPyConnection, table: Table) -> list[Problem]:
    """A required column with no value in a whole file: a mapping that selects null, or the wrong column."""
    problems = []
    for column in table.required_columns:
        rows = con.execute(
            f"select {SOURCE_FILE}, count(*) from raw.{table.name} group by {SOURCE_FILE} "
            f"having count({quote(column)}) = 0 order by {SOURCE_FILE}"
        ).fetchall()
        problems += [
            Problem(table.name, file, column, f"required, but null in all {count} row(s)") for file, count in rows
        ]
    return problems


def missing_references(con: duckdb.DuckDBPyConnection, failed: set[str]) -> list[Problem]:
    """Users and items that interactions name but the users and items files do not hold."""
    problems: list[Problem] = []
    for column, table in (("user_id", "users"), ("item_id", "items")):
        if failed & {table, "interactions"}:
            continue  # a source that did not load would make every reference look missing
        rows = con.execute(
            f"""
            select i.{SOURCE_FILE}, count(distinct i.{column}), list(distinct i.{column} order by i.{column})[:3]
            from raw.interactions as i
            anti join raw.{table} as t using ({column})
            where i.{column} is not null
            group by all
            order by all
            """
        ).fetchall()
        for file, count, examples in rows:
            shown = "" if column in PERSONAL_COLUMNS else f" (e.g. {', '.join(examples)})"
            problems.append(
                Problem("interactions", file, column, f"{count} {column} value(s) not in {table}{shown}")
            )
    return problems


def run_dates(con: duckdb.DuckDBPyConnection, settings: Settings, problems: list[Problem]) -> dict[str, Any]:
    """The night after the newest interaction, and the dates each of its stages would read."""
    from tailor.tasks.features import cutoffs_for

    first, last = con.execute("select min(occurred_at), max(occurred_at) from raw.interactions").fetchall()[0]
    if last is None:
        problems.append(
            Problem("interactions", None, "occurred_at", "no interaction with a time: nothing to learn from")
        )
        return {}
    # stored as UTC; the run date is a day in the config's zone
    newest_day = last.replace(tzinfo=UTC).astimezone(ZoneInfo(settings.timezone)).date()
    ctx = run_context(settings, newest_day + timedelta(days=1))
    cuts = cutoffs_for(settings, ctx)
    history = timedelta(days=settings.ranking.history_days)
    stages = [
        ("ranking training", cuts.ranking_train, settings.ranking.label_days),
        ("ranking holdout", cuts.ranking_holdout, settings.ranking.label_days),
        *(
            (f"propensity training {i + 1}", cutoff, settings.propensity.horizon_days)
            for i, cutoff in enumerate(cuts.propensity_train)
        ),
        ("propensity holdout", cuts.propensity_holdout, settings.propensity.horizon_days),
        ("scoring", cuts.score, None),
    ]
    described = []
    for stage, cutoff, label_days in stages:
        label_end = cutoff + timedelta(days=label_days) if label_days else None
        described.append(
            {
                "stage": stage,
                "history_from": _text(cutoff - history),
                "cutoff": _text(cutoff),
                "labels_until": _text(label_end),
                "history_interactions": count_between(con, cutoff - history, cutoff),
                "label_interactions": count_between(con, cutoff, label_end) if label_end else None,
            }
        )
    earliest = min(cuts.all())
    if first >= earliest:
        source = con.execute(
            f"select {SOURCE_FILE} from raw.interactions where occurred_at = $first limit 1", {"first": first}
        ).fetchall()[0][0]
        problems.append(
            Problem(
                "interactions",
                source,
                "occurred_at",
                f"too little history: the first interaction ({_text(first)}) is not before the earliest "
                f"training cutoff ({_text(earliest)}) of the run of {ctx.run_date}; training needs "
                f"{(ctx.cutoff - earliest).days} days of interactions before the newest day",
            )
        )
    return {
        "run_date": ctx.run_date.isoformat(),
        "cutoff": _text(ctx.cutoff),
        "first_interaction": _text(first),
        "last_interaction": _text(last),
        "stages": described,
    }


def count_between(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> int:
    return int(
        con.execute(
            "select count(*) from raw.interactions where occurred_at >= $start and occurred_at < $end",
            {"start": start, "end": end},
        ).fetchall()[0][0]
    )


def format_check(result: dict[str, Any]) -> str:
    """The check as a person reads it: table by table, then the run's dates, then the problems."""
    lines = [f"tailor check {result['config']} (loaded into a scratch database; the warehouse is untouched)"]
    for name, info in result["tables"].items():
        lines.append("")
        if not info["configured"]:
            lines.append(f"{name}: not configured")
            continue
        mapping = f" via {info['sql']}" if info["sql"] else ""
        lines.append(f"{name}: {info['rows']:,} rows from {info['files']} file(s) ({info['path']}{mapping})")
        for column, (low, high) in info["event_time"].items():
            lines.append(f"  {column}: {low} .. {high}" if low is not None else f"  {column}: no value")
        lines += ["  " + line for line in _grid(info["sample"])]
    run = result["run"]
    if run:
        lines += [
            "",
            f"run of {run['run_date']} (the day after the newest interaction): data before {run['cutoff']}",
            f"  {'stage':<24}{'history from':<22}{'cutoff':<22}{'labels until':<22}interactions (history/labels)",
        ]
        for stage in run["stages"]:
            labels = stage["label_interactions"]
            lines.append(
                f"  {stage['stage']:<24}{stage['history_from']:<22}{stage['cutoff']:<22}"
                f"{stage['labels_until'] or '-':<22}{stage['history_interactions']:,}"
                + (f" / {labels:,}" if labels is not None else "")
            )
    if result["warnings"]:
        lines += ["", "warnings:", *(f"  {warning}" for warning in result["warnings"])]
    lines.append("")
    if result["problems"]:
        lines.append(f"problems ({len(result['problems'])}):")
        lines += [f"  {Problem(**problem)}" for problem in result["problems"]]
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def _grid(rows: list[dict[str, Any]], width: int = 20) -> list[str]:
    """A few rows as aligned columns, each value cut to `width` characters."""
    if not rows:
        return []
    columns = list(rows[0])

    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    widths = {c: max(len(c), *(len(cell(row[c])) for row in rows)) for c in columns}
    header = "  ".join(c.ljust(widths[c]) for c in columns).rstrip()
    return [header, *("  ".join(cell(row[c]).ljust(widths[c]) for c in columns).rstrip() for row in rows)]
