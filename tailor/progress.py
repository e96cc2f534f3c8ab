"""Progress of long steps (files extracted, shards scored and rendered). The steps report; the CLI decides
whether anyone is watching: on a terminal it draws rich progress bars on stderr, and with --quiet, --json,
under a scheduler or in tests nothing is drawn."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_display: Progress | None = None


class Bar:
    def __init__(self, display: Progress | None, task_id: int | None) -> None:
        self.display, self.task_id = display, task_id

    def advance(self, steps: int = 1, note: str | None = None) -> None:
        if self.display is not None and self.task_id is not None:
            self.display.update(self.task_id, advance=steps, **({"note": note} if note else {}))


@contextmanager
def progress(label: str, total: int, unit: str) -> Iterator[Bar]:
    """A bar for one step: `total` units, advanced as they finish. Silent unless the CLI shows progress."""
    if _display is None:
        yield Bar(None, None)
        return
    task_id = _display.add_task(label, total=total, unit=unit, note="")
    yield Bar(_display, task_id)


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
