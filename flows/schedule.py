"""The scheduled entry points: the nightly run with its missed-night policy, and backfills.

`scheduled_nightly` is what the cron deployment calls (prefect.yaml, `tailor serve`): tonight's run, preceded
by the nights it missed when `schedule.catch_up` is `all`. `backfill` reruns a range of dates in date order;
each date's outputs are replaced, and `latest.json` ends on the newest date published.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from prefect import flow

from tailor.config import load_settings
from tailor.flows.nightly import nightly
from tailor.tasks.notify import notify_failure
from tailor.tasks.runs import dates_to_run
from tailor.warehouse import today_in


@flow(name="tailor-scheduled-nightly", on_failure=[notify_failure])
def scheduled_nightly(config_path: str, target: str | None = None) -> dict[str, Any]:
    """Tonight's run, after the missed nights the config says to catch up (oldest first)."""
    settings = load_settings(config_path)
    dates = dates_to_run(settings, today_in(settings.timezone))
    return {
        day.isoformat(): summary_of(nightly(config_path=config_path, run_date=day, target=target))
        for day in dates
    }


@flow(name="tailor-backfill", on_failure=[notify_failure])
def backfill(
    config_path: str, start: date, end: date, target: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Rerun every date from start to end inclusive, in date order; stops at the first failure. `force`
    rebuilds features the cache would reuse."""
    if end < start:
        raise ValueError(f"backfill: end {end} is before start {start}")
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    return {
        day.isoformat(): summary_of(nightly(config_path=config_path, run_date=day, target=target))
        for day in days
    }


def summary_of(run: dict[str, Any]) -> dict[str, Any]:
    return {"published": run["published"]["manifest"], "latest_moved": run["published"]["latest_moved"]}
