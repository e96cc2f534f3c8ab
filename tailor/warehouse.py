"""The DuckDB warehouse and the facts of one run (its date, its data cutoff, its working folder).

The warehouse, the run folders and everything in them hold personal data: they are the account's alone
(files 0600, folders 0700) whatever the process umask. The warehouse file and the run folders get their
modes here, explicitly; `private_umask` covers what the tasks and libraries create inside them (DuckDB's
WAL, models, downloads, Data Docs) for the length of a flow run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from tailor.config import Settings
from tailor.storage import StorageError

log = logging.getLogger(__name__)
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

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


def private_dir(path: Path, fix_existing: bool = True) -> Path:
    """Create the folder as 0700; an existing one is made 0700 too unless `fix_existing` is false (a folder
    the company chose, such as the one holding the warehouse). Missing parents get the usual modes: they
    may also hold what is published (`var/` above both `var/runs` and a `var/published` target)."""
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    if fix_existing or not existed:
        os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode passes through the umask
    return path


@contextmanager
def private_umask() -> Iterator[None]:
    """Everything created inside the block is the account's alone (0600 files, 0700 folders). Process-wide
    (one run per process); published files set their own modes (tailor/storage.py)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def run_context(settings: Settings, run_date: date | None = None) -> RunContext:
    day = run_date or today_in(settings.timezone)
    run_dir = settings.resolve(settings.warehouse.runs_dir) / day.isoformat()
    return RunContext(
        run_date=day,
        cutoff=start_of_day_utc(day, settings.timezone),
        run_dir=run_dir,
        seed=settings.seed,
    )


def private_run_folders(settings: Settings, ctx: RunContext) -> None:
    """The runs folder and this run's folder, the account's alone (a run creates them; reading a context,
    as `tailor check` does, does not)."""
    private_dir(settings.resolve(settings.warehouse.runs_dir))
    private_dir(ctx.run_dir)


def warehouse_path(settings: Settings) -> Path:
    return settings.resolve(settings.warehouse.path)


@contextmanager
def connect(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    path = warehouse_path(settings)
    private_dir(path.parent, fix_existing=False)
    config: dict[str, str | int] = {}
    if settings.warehouse.threads:
        config["threads"] = settings.warehouse.threads
    if settings.warehouse.memory_limit:
        config["memory_limit"] = settings.warehouse.memory_limit
    con = duckdb.connect(str(path), config=config)
    os.chmod(path, PRIVATE_FILE_MODE)  # DuckDB creates it through the umask
    # timestamps are UTC throughout; the host's zone must never shift a cast (set after connecting:
    # the setting needs the built-in ICU extension, which loads with the connection)
    con.execute("set TimeZone = 'UTC'")
    try:
        yield con
    finally:
        con.close()


def _fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def compact(settings: Settings) -> bool:
    """Rewrite the warehouse into a new file holding only live rows and swap it in, so no freed block of
    the old file keeps a deleted value (DuckDB reuses freed blocks but never wipes them). Costs a full
    copy: called after an erasure. Crash-safe: the old file stays in place until the new one is complete
    and synced, and the swap is an atomic rename. False (with a warning) when it could not be done safely."""
    path = warehouse_path(settings)
    fresh = path.with_name(path.name + ".compact")
    old_wal, fresh_wal = wal_path(path), wal_path(fresh)
    for leftover in (fresh, fresh_wal):  # an earlier compaction that died halfway
        leftover.unlink(missing_ok=True)
    try:
        with connect(settings) as con:
            con.execute("checkpoint")
            current = con.execute("select current_database()").fetchall()[0][0]
            # ATTACH takes no parameters: the path comes from the config, quoted as a literal
            con.execute(f"attach '{str(fresh).replace(chr(39), chr(39) * 2)}' as tailor_compacted")
            try:
                con.execute(f'copy from database "{current.replace(chr(34), chr(34) * 2)}" to tailor_compacted')
            finally:
                con.execute("detach tailor_compacted")
    except (duckdb.Error, OSError) as error:
        # a full disk, most likely: the half copy holds personal data, so it goes; the old file is intact
        for leftover in (fresh, fresh_wal):
            leftover.unlink(missing_ok=True)
        raise StorageError(
            f"the warehouse {path} could not be rewritten after an erasure (it needs room for a second copy "
            f"beside it): {' '.join(str(error).split())[:200]}"
        ) from None
    if old_wal.exists() or fresh_wal.exists():
        # a WAL left after a checkpointed close: swapping now could lose or replay its changes
        log.warning("warehouse compaction skipped: a write-ahead log was left beside %s", path)
        fresh.unlink(missing_ok=True)
        return False
    os.chmod(fresh, PRIVATE_FILE_MODE)
    _fsync(fresh)
    os.replace(fresh, path)
    _fsync(path.parent)  # the rename itself
    compaction_marker(settings).unlink(missing_ok=True)
    return True


def compaction_marker(settings: Settings) -> Path:
    """Present while erased values may still sit in the file's freed blocks: a compaction that failed or was
    skipped is tried again by the next run, even one with nothing new to erase."""
    path = warehouse_path(settings)
    return path.with_name(path.name + ".compact-pending")


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + ".wal")
