"""Progress of long steps (files extracted, tables checked, features built, boosting rounds, shards scored and
rendered). The steps report; where it goes depends on who watches:

- the log (the terminal's log lines, the run's log file, the Prefect API's run logs): a line at most every
  LINE_EVERY_S seconds while a step advances, one when it ends, and a heartbeat line from a watcher thread
  whenever no step has said anything for HEARTBEAT_S seconds, so a scheduler's log never goes quiet for
  longer than that, even inside one long SQL statement (every stage of the nightly flow runs as a step:
  `reported`);
- a terminal: rich progress bars on stderr, when the CLI shows them (not with --quiet, --json, under a
  scheduler or in tests).

A step that ends within QUIET_BELOW_S seconds logs nothing: its stage's own lines say enough.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("tailor.progress")

LINE_EVERY_S = 10.0  # a step that advances often logs no more than this
HEARTBEAT_S = 20.0  # a step that has not advanced (one long statement) still says it is alive
QUIET_BELOW_S = 2.0
WATCH_EVERY_S = 1.0  # how often the heartbeat looks

_display: Progress | None = None
_lock = threading.Lock()
_active: set[Step] = set()
_watcher: threading.Thread | None = None
_last_line = 0.0  # when any step last logged (time.monotonic)


def _run_ids() -> dict[str, Any]:
    """The Prefect run the step belongs to, so lines logged from the watcher thread reach that run's logs."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return {}
    ids: dict[str, Any] = {}
    flow_context, task_context = FlowRunContext.get(), TaskRunContext.get()
    if flow_context is not None and flow_context.flow_run is not None:
        ids["flow_run_id"] = flow_context.flow_run.id
    if task_context is not None:
        ids["task_run_id"] = task_context.task_run.id
        ids.setdefault("flow_run_id", task_context.task_run.flow_run_id)
    return ids


def _amount(count: float) -> str:
    return f"{count:,.0f}" if count == int(count) else f"{count:,.1f}"


class Step:
    """One step's counts and when it last said something."""

    def __init__(self, label: str, total: float | None, unit: str) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0.0
        self.note = ""
        self.started = self.last_line = time.monotonic()
        self.extra = _run_ids()

    def status(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.total is not None:
            counts = f"{_amount(self.done)}/{_amount(self.total)} {self.unit}, "
        else:  # a step without a count of its own (one statement, a library call) only says how long
            counts = f"{_amount(self.done)} {self.unit}, " if self.done else ""
        return f"{counts}{f'{self.note}, ' if self.note else ''}{elapsed:.0f} s"

    def line(self, what: str) -> None:
        global _last_line
        self.last_line = _last_line = time.monotonic()
        log.info("%s: %s", self.label, what, extra=self.extra)


class Bar:
    def __init__(self, step: Step, display: Progress | None, task_id: int | None) -> None:
        self.step, self.display, self.task_id = step, display, task_id

    def advance(self, steps: float = 1, note: str | None = None) -> None:
        self.step.done += steps
        if note:
            self.step.note = note
        if time.monotonic() - self.step.last_line >= LINE_EVERY_S:
            self.step.line(self.step.status())
        if self.display is not None and self.task_id is not None:
            self.display.update(self.task_id, advance=steps, **({"note": note} if note else {}))

    def set_total(self, total: float) -> None:
        """The step turned out shorter (a booster stopped early): the bar ends at what was done."""
        self.step.total = total
        if self.display is not None and self.task_id is not None:
            self.display.update(self.task_id, total=total)


def _watch() -> None:
    """The heartbeat: when no step has said anything for HEARTBEAT_S seconds, the innermost one (the latest
    started) says where it is."""
    global _watcher
    while True:
        time.sleep(WATCH_EVERY_S)
        with _lock:
            if not _active:
                _watcher = None
                return
            innermost = max(_active, key=lambda step: step.started)
        # a step that has just started has not been silent: the watcher counts from its start
        if time.monotonic() - max(_last_line, innermost.started) >= HEARTBEAT_S:
            innermost.line(f"still working: {innermost.status()}")


def _start_watcher() -> None:
    global _watcher
    if _watcher is None:
        _watcher = threading.Thread(target=_watch, name="tailor-progress", daemon=True)
        _watcher.start()


@contextmanager
def progress(
    label: str, total: float | None, unit: str, log_end: bool = True, keep_bar: bool = False
) -> Iterator[Bar]:
    """A step of `total` units (None: not known ahead), advanced as they finish; logged, and drawn as a bar
    when the CLI shows progress. `log_end=False`: the caller logs the step's outcome itself. A step's bar
    goes when it ends, unless `keep_bar` (a stage's: the terminal keeps one line per stage done)."""
    step = Step(label, total, unit)
    with _lock:
        _active.add(step)
        _start_watcher()
    task_id = _display.add_task(label, total=total, unit=unit, note="") if _display is not None else None
    try:
        yield Bar(step, _display, task_id)
    finally:
        with _lock:
            _active.discard(step)
        if task_id is not None and _display is not None:
            if keep_bar:  # shown as finished, at what was done (a booster stopped early, a step without units)
                final = step.total if step.total is not None else max(step.done, 1)
                _display.update(task_id, total=final, completed=final)
            else:
                _display.remove_task(task_id)
    if log_end and time.monotonic() - step.started >= QUIET_BELOW_S:
        step.line(f"done, {step.status()}")


@contextmanager
def show_progress(enabled: bool) -> Iterator[None]:
    """Draw every step's bar on stderr while the block runs (the CLI's run and backfill)."""
    global _display
    if not enabled:
        yield
        return
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    ) as display:
        _display = display
        try:
            yield
        finally:
            _display = None


@contextmanager
def boosting_rounds(label: str, rounds: int) -> Iterator[Any]:
    """A LightGBM callback that advances a step per boosting round, noting the latest validation score; the
    step ends at the rounds actually run (early stopping ends most boosters well before `rounds`)."""
    with progress(label, total=rounds, unit="rounds") as bar:

        def callback(env: Any) -> None:
            scores = getattr(env, "evaluation_result_list", None) or []
            bar.advance(1, note=", ".join(f"{name} {value:.4f}" for _, name, value, *_ in scores[:1]) or None)

        yield callback
        bar.set_total(bar.step.done)


P = ParamSpec("P")
R = TypeVar("R")


def reported(label: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the function as a step without a count of its own: a stage whose work has no natural unit still
    gets the heartbeat and its end line (put it under `@task`, so the step runs inside the task run)."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with progress(label, total=None, unit="", keep_bar=True):
                return function(*args, **kwargs)

        return wrapper

    return decorate
