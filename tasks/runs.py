"""One run at a time, and a ledger of runs: what the scheduler needs to avoid duplicates and catch up.

- The run lock is a file beside the warehouse, created exclusively; it names the run date and the process
  holding it. A second run (the same date or another: they share the warehouse) is refused with that name.
  A lock left by a process that no longer exists on this host, or an empty or unreadable lock file older
  than a few seconds (a run killed between creating and writing it), is taken over with a warning.
- `meta.runs` records each run date's latest attempt: started, succeeded or failed, and when. The scheduled
  flow reads it to find the nights it missed.
"""

from __future__ import annotations

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# locks this process holds: the CLI takes the lock before it starts Prefect, the flow inside takes it again
_HELD: set[Path] = set()
# a lock file is written right after it is created: empty or unreadable for longer than this, it is debris
UNREADABLE_LOCK_GRACE_SECONDS = 30


def _holder_of(path: Path) -> dict[str, object] | None:
    """The holder the lock file names; None when the file is empty or not a lock's JSON."""
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return current if isinstance(current, dict) and current.get("pid") else None


def _stale(path: Path, current: dict[str, object] | None, host: str) -> str | None:
    """Why the lock can be taken over, or None while it may still be held."""
    if current is None:
        try:
            age = datetime.now(UTC).timestamp() - path.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        if age > UNREADABLE_LOCK_GRACE_SECONDS:
            return f"it is empty or unreadable and {age:.0f}s old"
        return None
    if current.get("host") == host and not _alive(int(str(current.get("pid", 0)) or 0)):
        return f"it was left by process {current.get('pid')}, which is gone"
    return None


@contextmanager
def run_lock(settings: Settings, run_date: date) -> Iterator[None]:
    path = lock_path(settings)
    if path in _HELD:  # this process already holds it (the CLI around its flow)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"run_date": run_date.isoformat(), "pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    for _ in range(3):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            break
        except FileExistsError:
            current = _holder_of(path)
            reason = _stale(path, current, str(holder["host"]))
            if reason:
                log.warning("run lock %s: %s; taking it over", path, reason)
                path.unlink(missing_ok=True)
                continue
            if current is None:
                raise RunInProgress(
                    f"{path} is being created by another run (it is not yet readable); this run for {run_date} "
                    "was not started"
                ) from None
            raise RunInProgress(
                f"a run for {current.get('run_date', '?')} (process {current.get('pid', '?')} on "
                f"{current.get('host', '?')}, since {current.get('since', '?')}) holds {path}; this run for "
                f"{run_date} was not started"
            ) from None
    else:
        raise RunInProgress(f"could not take the run lock {path}")
    with os.fdopen(handle, "w") as file:
        json.dump(holder, file)
    _HELD.add(path)
    try:
        yield
    finally:
        _HELD.discard(path)
        path.unlink(missing_ok=True)


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
