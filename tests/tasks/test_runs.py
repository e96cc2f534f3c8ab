from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import date

import pytest

from tailor.config import load_settings
from tailor.tasks.runs import (
    RunInProgress,
    dates_to_run,
    ensure_ledger,
    lock_path,
    record,
    run_lock,
)
from tailor.warehouse import connect
from tests.tiny import LOCK_PROBE, hold_run_lock


def settings_for(tmp_path, **schedule):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "tailor.yaml"
    config.write_text(
        "project: t\nsources: {users: {path: u.csv}, consents: {path: c.csv}, items: {path: i.csv}, "
        "interactions: {path: e.csv}}\npublish: {target: file://out}\nwarehouse: {path: w.duckdb}\n"
        f"schedule: {json.dumps(schedule)}\n"
    )
    return load_settings(config)


def test_a_second_run_is_refused_while_the_first_holds_the_warehouse(tmp_path) -> None:
    settings = settings_for(tmp_path)
    holder = hold_run_lock(lock_path(settings), "2026-11-21")
    try:
        with (
            pytest.raises(RunInProgress, match=rf"a run for 2026-11-21 \(process {holder.pid}") as refused,
            run_lock(settings, date(2026, 11, 21)),
        ):
            pass
        assert "2026-11-21 was not started" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    # its process is gone, and with it the lock: the next run takes it, says so, and releases it
    with run_lock(settings, date(2026, 11, 22)):
        assert json.loads(lock_path(settings).read_text())["run_date"] == "2026-11-22"
    assert lock_path(settings).read_text() == ""  # released: the file names no one


def test_the_process_that_holds_the_lock_can_take_it_again_and_keeps_it(tmp_path) -> None:
    """The CLI takes the lock before Prefect starts; the flow inside takes it again without releasing it."""
    settings = settings_for(tmp_path)
    with run_lock(settings, date(2026, 11, 21)):
        with run_lock(settings, date(2026, 11, 21)):
            pass
        assert json.loads(lock_path(settings).read_text())["pid"] == os.getpid()
        other = subprocess.run(
            [sys.executable, "-c", LOCK_PROBE, str(lock_path(settings))], capture_output=True, text=True
        )
        assert other.stdout.strip() == "held"  # still held after the inner block


def test_an_empty_or_leftover_lock_file_is_no_lock(tmp_path) -> None:
    settings = settings_for(tmp_path)
    lock_path(settings).parent.mkdir(parents=True, exist_ok=True)
    lock_path(settings).write_text("")
    with run_lock(settings, date(2026, 11, 21)):
        assert json.loads(lock_path(settings).read_text())["run_date"] == "2026-11-21"
    # a file a killed run left, still naming it
    lock_path(settings).write_text(json.dumps({"run_date": "2026-11-20", "pid": 999999, "host": "h"}))
    warnings: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append  # type: ignore[method-assign]
    logging.getLogger("tailor.tasks.runs").addHandler(handler)
    try:
        with run_lock(settings, date(2026, 11, 21)):
            pass
    finally:
        logging.getLogger("tailor.tasks.runs").removeHandler(handler)
    assert any("left by process 999999, which is gone" in w.getMessage() for w in warnings)


def _ledger(settings, rows: list[tuple[date, str]]) -> None:
    with connect(settings) as con:
        ensure_ledger(con)
    for day, status in rows:
        record(settings, day, "started", "tailor-nightly")
        if status != "started":
            record(settings, day, status, "tailor-nightly", "boom" if status == "failed" else None)


def test_missed_nights_are_caught_up_as_configured(tmp_path) -> None:
    today = date(2026, 11, 27)
    newest = settings_for(tmp_path / "a", catch_up="newest")
    _ledger(newest, [(date(2026, 11, 22), "succeeded")])
    assert dates_to_run(newest, today) == [today]
    every = settings_for(tmp_path / "b", catch_up="all", catch_up_days=3)
    _ledger(every, [(date(2026, 11, 22), "succeeded"), (date(2026, 11, 23), "failed")])
    # the last success was the 22nd: the 23rd to the 27th were missed; at most three are run, oldest first
    assert dates_to_run(every, today) == [date(2026, 11, 25), date(2026, 11, 26), today]
    _ledger(every, [(date(2026, 11, 26), "succeeded")])
    assert dates_to_run(every, today) == [today]
    assert dates_to_run(settings_for(tmp_path / "c", catch_up="all"), today) == [today]  # no history yet
