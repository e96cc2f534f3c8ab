"""Hand-made warehouses for tests of the SQL models: an in-memory DuckDB with the raw tables as extract
creates them, rows written as dicts, and settings without files behind them."""

from __future__ import annotations

import subprocess
import sys
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


# Another process holding the run lock as a run does: an flock on the file, which names it.
LOCK_HOLDER = """
import fcntl, json, os, socket, sys, time
handle = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(handle, fcntl.LOCK_EX)
os.ftruncate(handle, 0)
os.pwrite(handle, json.dumps({"run_date": sys.argv[2], "pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
print("held", flush=True)
time.sleep(300)
"""
# Prints whether the lock is held by someone else.
LOCK_PROBE = """
import fcntl, os, sys
handle = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("held")
"""


def hold_run_lock(path: Path, run_date: str) -> subprocess.Popen[str]:
    """A process that holds the run lock at `path` until it is killed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path), run_date], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder
