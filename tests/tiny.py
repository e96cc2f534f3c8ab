"""Hand-made warehouses for tests of the SQL models: an in-memory DuckDB with the raw tables as extract
creates them, rows written as dicts, and settings without files behind them."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from tailor.config import REQUIRED_SOURCES, Settings
from tailor.tasks.extract import ensure_meta
from tailor.warehouse import RunContext

RUN_DATE = date(2026, 3, 2)
CUTOFF = datetime(2026, 3, 2)
LOADED = RUN_DATE  # as the run itself loads them


def settings(**sections: Any) -> Settings:
    """Valid settings whose sections are the given ones over the defaults (nothing is read from disk)."""
    return Settings.model_validate(
        {
            "project": "tiny",
            "sources": {name: {"path": f"{name}.csv"} for name in REQUIRED_SOURCES},
            "publish": {"target": "file:///tmp/tiny", "published_user_id": "external"},
            **sections,
        }
    )


def context(tmp_path: Path | None = None) -> RunContext:
    return RunContext(RUN_DATE, CUTOFF, (tmp_path or Path("/nonexistent")) / "run", 7)


def warehouse() -> duckdb.DuckDBPyConnection:
    """raw.* with every canonical and lineage column, empty."""
    con = duckdb.connect()
    ensure_meta(con)
    return con


def insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    """Rows into raw.<table>, loaded by the run from the undated file f1 with every value parsed; a
    column a row does not name is NULL."""
    lineage = {"_source_file": "f1", "_loaded_run_date": LOADED, "_invalid_columns": []}
    frame = pl.DataFrame([lineage | row for row in rows], infer_schema_length=None)
    con.register("tiny_rows", frame.to_arrow())
    try:
        con.execute(
            f"insert into raw.{table} by name select *, nextval('raw.row_key_sequence') as _row_key "
            "from tiny_rows"
        )
    finally:
        con.unregister("tiny_rows")
