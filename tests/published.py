"""Reading a published `file://` target as a consumer does: through the pointers, never by guessing the
attempt folder (tasks/publish.py describes the layout)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any


def pointer(published: Path, run_date: date | str | None = None, root: str = "runs") -> dict[str, Any]:
    """The date's `latest.json` under `root`, or with no date the newest one (`latest.json` at the top for
    the nightly runs, `ROOT/latest.json` for another root)."""
    if run_date is not None:
        path = published / root / str(run_date) / "latest.json"
    else:
        path = published / ("latest.json" if root == "runs" else f"{root}/latest.json")
    return json.loads(path.read_text())


def run_folder(published: Path, run_date: date | str | None = None, root: str = "runs") -> Path:
    """The folder of a date's current attempt (with no date: the newest date's), e.g.
    `published/runs/2026-11-21/20261201T023512Z-3f9a1c`."""
    return published / pointer(published, run_date, root)["folder"]
