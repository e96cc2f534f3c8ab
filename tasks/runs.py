"""One run at a time, and a ledger of runs: what the scheduler needs to avoid duplicates and catch up.

- The run lock is an exclusive flock on a file beside the warehouse, which names the run date and the
  process holding it. A second run (the same date or another: they share the warehouse) is refused with
  that name. The kernel drops the lock with its process, so a run that was killed never blocks the next
  one (which says, as a warning, that it took the lock over), and an empty file is no lock at all.
- `meta.runs` records each run date's latest attempt: started, succeeded or failed, and when. The scheduled
  flow reads it to find the nights it missed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import Settings
from tailor.warehouse import connect

log = logging.getLogger(__name__)


class RunInProgress(RuntimeError):
    """Another run holds the warehouse."""


def lock_path(settings: Settings) -> Path:
    warehouse = settings.resolve(settings.warehouse.path)
    return warehouse.with_name(warehouse.name + ".lock")


# locks this process holds: the CLI takes the lock before it starts Prefect, the flow inside takes it again
_HELD: set[Path] = set()


def _holder_of(path: Path) -> dict[str, object]:
    """The holder the lock file names ({} when it names none: empty, or left by a run that is gone)."""
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return current if isinstance(current, dict) else {}


@contextmanager
def run_lock(settings: Settings, run_date: date) -> Iterator[None]:
    """An exclusive lock (flock) on a file beside the warehouse. The kernel releases it when its process
    ends, however it ends, so a killed run never blocks the next one, and two runs can never both take over
    a stale lock. The file stays (removing it would let a run lock a file another run is about to replace);
    it names the current holder, for the message a refused run prints."""
    path = lock_path(settings)
    if path in _HELD:  # this process already holds it (the CLI around its flow)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        current = _holder_of(path)
        raise RunInProgress(
            f"a run for {current.get('run_date', '?')} (process {current.get('pid', '?')} on "
            f"{current.get('host', '?')}, since {current.get('since', '?')}) holds {path}; this run for "
            f"{run_date} was not started"
        ) from None
    left = _holder_of(path)
    if left.get("pid"):
        log.warning("run lock %s was left by process %s, which is gone: taking it over", path, left["pid"])
    holder = {"run_date": run_date.isoformat(), "pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    os.ftruncate(handle, 0)
    os.pwrite(handle, json.dumps(holder).encode(), 0)
    _HELD.add(path)
    try:
        yield
    finally:
        _HELD.discard(path)
        os.ftruncate(handle, 0)  # released: the file names no one
        os.close(handle)  # closing releases the flock


def ensure_ledger(con) -> None:
    con.execute("create schema if not exists meta")
    con.execute(
        "create table if not exists meta.runs (run_date date primary key, status varchar, started_at timestamp, "
        "finished_at timestamp, flow varchar, error varchar)"
    )


def record(settings: Settings, run_date: date, status: str, flow: str, error: str | None = None) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    with connect(settings) as con:
        ensure_ledger(con)
        if status == "started":
            con.execute(
                "insert or replace into meta.runs values ($d, 'started', $now, null, $flow, null)",
                {"d": run_date, "now": now, "flow": flow},
            )
        else:
            con.execute(
                "update meta.runs set status = $status, finished_at = $now, error = $error where run_date = $d",
                {"d": run_date, "status": status, "now": now, "error": error},
            )


@task(name="run-started", cache_policy=NO_CACHE)
def run_started(settings: Settings, run_date: date, flow: str) -> None:
    record(settings, run_date, "started", flow)


@task(name="run-succeeded", cache_policy=NO_CACHE)
def run_succeeded(settings: Settings, run_date: date, flow: str) -> None:
    record(settings, run_date, "succeeded", flow)


def dates_to_run(settings: Settings, today: date) -> list[date]:
    """Tonight, preceded (catch_up: all) by the nights missed since the last successful run, at most
    catch_up_days of them in all."""
    config = settings.schedule
    if config.catch_up == "newest":
        return [today]
    with connect(settings) as con:
        ensure_ledger(con)
        last = con.execute(
            "select max(run_date) from meta.runs where status = 'succeeded' and run_date < $today",
            {"today": today},
        ).fetchall()[0][0]
    if last is None:
        return [today]
    missed = [last + timedelta(days=n) for n in range(1, (today - last).days + 1)]
    return missed[-config.catch_up_days :]
