"""The DuckDB warehouse and the facts of one run (its date, its data cutoff, its working folder)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from tailor.config import Settings


@dataclass(frozen=True)
class RunContext:
    run_date: date
    cutoff: datetime  # the run sees data strictly before this instant (UTC, naive)
    run_dir: Path
    seed: int

    def cutoff_minus(self, days: int) -> datetime:
        return self.cutoff - timedelta(days=days)


def today_in(zone: str) -> date:
    return datetime.now(ZoneInfo(zone)).date()


def start_of_day_utc(day: date, zone: str) -> datetime:
    """Midnight of `day` in `zone`, as a naive UTC timestamp (how the warehouse stores time)."""
    local_midnight = datetime.combine(day, time(0), tzinfo=ZoneInfo(zone))
    return local_midnight.astimezone(UTC).replace(tzinfo=None)


def run_context(settings: Settings, run_date: date | None = None) -> RunContext:
    day = run_date or today_in(settings.timezone)
    run_dir = settings.resolve(settings.warehouse.runs_dir) / day.isoformat()
    return RunContext(
        run_date=day,
        cutoff=start_of_day_utc(day, settings.timezone),
        run_dir=run_dir,
        seed=settings.seed,
    )


@contextmanager
def connect(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    path = settings.resolve(settings.warehouse.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config: dict[str, str | int] = {}
    if settings.warehouse.threads:
        config["threads"] = settings.warehouse.threads
    if settings.warehouse.memory_limit:
        config["memory_limit"] = settings.warehouse.memory_limit
    con = duckdb.connect(str(path), config=config)
    # timestamps are UTC throughout; the host's zone must never shift a cast (set after connecting:
    # the setting needs the built-in ICU extension, which loads with the connection)
    con.execute("set TimeZone = 'UTC'")
    try:
        yield con
    finally:
        con.close()
