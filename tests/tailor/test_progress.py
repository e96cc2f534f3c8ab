from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import lightgbm as lgb
import numpy as np
import pytest

from tailor import progress as progress_module
from tailor.progress import boosting_rounds, progress, reported


@pytest.fixture
def fast_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds become tenths of a second, so a test can wait past a heartbeat."""
    monkeypatch.setattr(progress_module, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(progress_module, "WATCH_EVERY_S", 0.05)
    monkeypatch.setattr(progress_module, "QUIET_BELOW_S", 0.0)
    # a watcher left by an earlier test's steps may be inside a full-length sleep: let it see no step and end
    watcher = progress_module._watcher
    if watcher is not None:
        watcher.join(timeout=10)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()


@pytest.fixture
def caplog() -> Iterator[Records]:
    """The progress logger's records, caught on the logger itself: once Prefect has configured logging,
    Tailor's loggers no longer propagate to the root, where pytest's own caplog listens."""
    handler, logger = Records(), logging.getLogger("tailor.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)


def lines(caplog: Records) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_step_silent_inside_one_long_call_still_logs_a_heartbeat(fast_clock, caplog) -> None:
    with progress("one long statement", total=None, unit=""):
        time.sleep(0.8)  # the step never advances, as inside one SQL statement
    heartbeats = [line for line in lines(caplog) if "still working" in line]
    assert heartbeats and all(line.startswith("one long statement: still working") for line in heartbeats)
    assert lines(caplog)[-1].startswith("one long statement: done")


def test_the_heartbeat_names_the_innermost_step_and_stays_quiet_while_steps_log(fast_clock, caplog) -> None:
    progress_module.LINE_EVERY_S = 0.0
    try:
        with progress("stage", total=None, unit=""), progress("inner", total=10, unit="parts") as bar:
            time.sleep(0.5)
            caplog.clear()
            for _ in range(10):  # advancing every 0.1 s: each advance logs, so no heartbeat is needed
                bar.advance(1)
                time.sleep(0.1)
    finally:
        progress_module.LINE_EVERY_S = 10.0
    logged = lines(caplog)
    assert not any("still working" in line for line in logged), logged
    assert "inner: 10/10 parts" in " ".join(logged)


def test_the_heartbeat_before_any_advance_is_the_innermost_steps(fast_clock, caplog) -> None:
    with progress("stage", total=None, unit=""), progress("inner", total=3, unit="tables"):
        time.sleep(0.6)
    beats = [line for line in lines(caplog) if "still working" in line]
    assert beats and all(line.startswith("inner: still working: 0/3 tables") for line in beats), beats


def test_a_step_that_just_started_is_given_its_heartbeat_interval(fast_clock, caplog) -> None:
    progress_module._last_line = 0.0  # nothing logged for as long as the process has run
    with progress("fresh", total=3, unit="files"):
        time.sleep(0.15)  # a few of the watcher's looks, all before HEARTBEAT_S
    assert not [line for line in lines(caplog) if "still working" in line]


def test_lines_while_advancing_are_rate_limited(caplog) -> None:
    with progress("quick", total=1000, unit="rows") as bar:
        for _ in range(1000):
            bar.advance(1)
    # under LINE_EVERY_S and QUIET_BELOW_S: a thousand advances, not one line
    assert lines(caplog) == []


def test_a_reported_stage_logs_its_end_and_returns_what_the_function_returns(fast_clock, caplog) -> None:

    @reported("a stage")
    def stage(x: int) -> int:
        """Doubles."""
        return 2 * x

    assert stage(21) == 42
    assert stage.__name__ == "stage" and stage.__doc__ == "Doubles."
    assert lines(caplog)[-1].startswith("a stage: done, ")


def test_a_failed_step_logs_no_done_line(fast_clock, caplog) -> None:
    with pytest.raises(ValueError), progress("breaks", total=2, unit="parts"):
        raise ValueError("bad")
    assert not any("done" in line for line in lines(caplog))


def test_boosting_rounds_count_the_rounds_early_stopping_let_run(fast_clock, caplog) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] + rng.normal(scale=2.0, size=400) > 0).astype(float)
    fit, valid = lgb.Dataset(x[:300], y[:300]), lgb.Dataset(x[300:], y[300:])
    params = {"objective": "binary", "verbose": -1, "seed": 0, "learning_rate": 0.3}
    with boosting_rounds("train toy", 500) as advance:
        booster = lgb.train(params, fit, num_boost_round=500, valid_sets=[valid],
                            callbacks=[lgb.early_stopping(5, verbose=False), advance])  # fmt: skip
    ran = booster.best_iteration + 5  # the best round, then the rounds that did not beat it
    assert ran < 500  # it stopped early: the step must end at what ran, not at the bound
    done = lines(caplog)[-1]
    assert done.startswith(f"train toy: done, {ran}/{ran} rounds, binary_logloss "), done


def test_lines_from_a_task_carry_its_run_so_they_reach_its_prefect_logs(prefect_harness, fast_clock, caplog) -> None:
    from prefect import flow, task


    @task
    def slow() -> None:
        with progress("slow task step", total=None, unit=""):
            time.sleep(0.5)

    @flow
    def night() -> None:
        slow()

    night()
    records = [r for r in caplog.records if r.getMessage().startswith("slow task step: still working")]
    assert records and all(getattr(r, "task_run_id", None) and getattr(r, "flow_run_id", None) for r in records)
