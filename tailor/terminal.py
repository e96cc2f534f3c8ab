"""What a run prints on the terminal, and what goes to its log file instead.

An expected failure (a bad file, a config key, a gate, a lock...) is one line on stderr, printed by the CLI.
Prefect logs the same failure as ERROR lines with the whole traceback; on the terminal those tracebacks are
noise for a mistake the user has to fix in their data or config, so the console drops them (the line
itself stays) while the run's log file and the Prefect API keep everything. With `--quiet` nothing but the
CLI's own line reaches the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

# the run log hangs on the root logger (everything that propagates: Prefect, libraries' warnings) and on
# the loggers that do not propagate
NON_PROPAGATING = ("tailor", "prefect.extra", "prefect._internal", "uvicorn", "fastapi")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _all_loggers() -> list[logging.Logger]:
    named = [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    return [logging.getLogger(), *named]


def _is_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return not isinstance(handler, logging.FileHandler) and stream in (sys.stderr, sys.stdout, sys.__stderr__)


class ExpectedFailureFilter(logging.Filter):
    """Keeps the record, drops its traceback when the exception is one the CLI explains in one line."""

    def __init__(self, expected: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and isinstance(error, self.expected):
            record.exc_info = None
            record.exc_text = None
        return True


def console_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    return [
        (logger, handler) for logger in _all_loggers() for handler in logger.handlers if _is_console(handler)
    ]


def quiet_console() -> None:
    """No log line on the terminal: the run's log file and the Prefect API still get them."""
    for logger, handler in console_handlers():
        logger.removeHandler(handler)
    # without any handler the root logger would fall back to logging.lastResort, which prints to stderr
    logging.getLogger().addHandler(logging.NullHandler())
    logging.captureWarnings(True)  # library warnings go to the log file, not the terminal


def filter_expected_failures(expected: tuple[type[BaseException], ...]) -> None:
    for _, handler in console_handlers():
        handler.addFilter(ExpectedFailureFilter(expected))


def attach_run_log(folder: Path, command: str) -> logging.FileHandler:
    """A private log file for this command: every log line of Tailor and Prefect and every library warning,
    tracebacks included. Detach it with `detach_run_log` when the command ends."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{command}-{os.getpid()}.log"
    path.touch(mode=0o600)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    for name in NON_PROPAGATING:
        logger = logging.getLogger(name)
        if not logger.propagate:
            logger.addHandler(handler)
    logging.getLogger("tailor").setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler


def detach_run_log(handler: logging.FileHandler) -> None:
    for logger in _all_loggers():
        if handler in logger.handlers:
            logger.removeHandler(handler)
    handler.close()
