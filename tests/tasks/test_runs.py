from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date

import pytest

from tailor.config import load_settings
from tailor.tasks.runs import (
    UNREADABLE_LOCK_GRACE_SECONDS,
    RunInProgress,
    dates_to_run,
    ensure_ledger,
    lock_path,
    record,
    run_lock,
)
from tailor.warehouse import connect


def settings_for(tmp_path, **schedule):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "tailor.yaml"
    config.write_text(
        "project: t\nsources: {users: {path: u.csv}, consents: {path: c.csv}, items: {path: i.csv}, "
        "interactions: {path: e.csv}}\npublish: {target: file://out}\nwarehouse: {path: w.duckdb}\n"
        f"schedule: {json.dumps(schedule)}\n"
    )
    return load_settings(config)


def hold_lock_from(settings, pid: int, run_date: str = "2026-11-21") -> None:
    """The lock file as another run on this host writes it."""
    import socket

    lock_path(settings).parent.mkdir(parents=True, exist_ok=True)
    lock_path(settings).write_text(
        json.dumps(
            {"run_date": run_date, "pid": pid, "host": socket.gethostname(), "since": "2026-11-21T01:00:00"}
        )
    )


def test_a_second_run_is_refused_while_the_first_holds_the_warehouse(tmp_path) -> None:
    settings = settings_for(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        hold_lock_from(settings, holder.pid)
        with (
            pytest.raises(RunInProgress, match=rf"a run for 2026-11-21 \(process {holder.pid}") as refused,
            run_lock(settings, date(2026, 11, 21)),
        ):
            pass
        assert "2026-11-21 was not started" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the next run takes the lock, and releases it
    with run_lock(settings, date(2026, 11, 22)):
        assert json.loads(lock_path(settings).read_text())["run_date"] == "2026-11-22"
    assert not lock_path(settings).exists()


def test_the_process_that_holds_the_lock_can_take_it_again_and_keeps_it(tmp_path) -> None:
    """The CLI takes the lock before Prefect starts; the flow inside takes it again without releasing it."""
    settings = settings_for(tmp_path)
    with run_lock(settings, date(2026, 11, 21)):
        with run_lock(settings, date(2026, 11, 21)):
            pass
        assert json.loads(lock_path(settings).read_text())["pid"] == os.getpid()
    assert not lock_path(settings).exists()


def test_an_empty_lock_file_blocks_briefly_then_is_taken_over(tmp_path) -> None:
    settings = settings_for(tmp_path)
    lock_path(settings).parent.mkdir(parents=True, exist_ok=True)
    lock_path(settings).write_text("")
    # just created: another run may be writing it
    with pytest.raises(RunInProgress, match="not yet readable"), run_lock(settings, date(2026, 11, 21)):
        pass
    old = time.time() - UNREADABLE_LOCK_GRACE_SECONDS - 5
    os.utime(lock_path(settings), (old, old))
    with run_lock(settings, date(2026, 11, 21)):
        assert json.loads(lock_path(settings).read_text())["run_date"] == "2026-11-21"


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path) -> None:
    settings = settings_for(tmp_path)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    lock_path(settings).parent.mkdir(parents=True, exist_ok=True)
    lock_path(settings).write_text(
        json.dumps({"run_date": "2026-11-20", "pid": int(gone.stdout), "host": socket.gethostname()})
    )
    with run_lock(settings, date(2026, 11, 21)):
        assert json.loads(lock_path(settings).read_text())["run_date"] == "2026-11-21"


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
