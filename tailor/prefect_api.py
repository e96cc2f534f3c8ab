"""The Prefect API a run talks to: the configured one, or a temporary server that Tailor supervises.

Prefect 3 records every flow and task run through an API, so a run needs one. With `PREFECT_API_URL` set (a
shared server, Prefect Cloud) Tailor uses it and starts nothing. Without it, Prefect's own temporary server
waits a fixed 20 s for itself, which a busy 2-core host does not meet (40 to 60 s measured at load average
4 to 17), and it outlives a run that is killed. So Tailor starts that server itself:

- the same app Prefect's temporary server runs (SQLite under PREFECT_HOME, no UI), on a free loopback port;
- a start-up wait sized for a busy host (TAILOR_PREFECT_START_TIMEOUT_SECONDS, default 180, measured on the
  wall clock) and one more attempt on a fresh port;
- the server dies with the run: it is stopped when the run ends or fails, and a watchdog in the server
  process (plus the kernel's parent-death signal on Linux) ends it when the run is killed, even by SIGKILL;
- when it cannot start at all, one line says so (`PrefectServerError`, exit code 2).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT_ENV = "TAILOR_PREFECT_START_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 180.0
ATTEMPTS = 2
WATCHDOG_SECONDS = 1.0
NOTE_EVERY_S = 10.0  # how often a slow start says it is still waiting
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class PrefectServerError(RuntimeError):
    """The temporary Prefect server did not start."""


def start_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise PrefectServerError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise PrefectServerError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return seconds


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _find_prctl() -> Any:
    # looked up here, in the parent: loading a library between fork and exec can deadlock a threaded process
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    return None


_PRCTL = _find_prctl()


def die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the parent dies (Linux only; elsewhere
    the watchdog in the server process does the same, a second later)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "tailor.prefect_api", "--port", str(port), "--parent", str(os.getpid())]


def server_env() -> dict[str, str]:
    # what Prefect's own temporary server sets: no UI, and the app knows it is ephemeral
    return {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }


def _last_line(log_file: tempfile._TemporaryFileWrapper) -> str:  # type: ignore[type-arg]
    log_file.seek(0)
    lines = [line.strip() for line in log_file.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_server(timeout: float) -> tuple[subprocess.Popen[bytes], str]:
    """A healthy server and its API URL, or PrefectServerError after ATTEMPTS tries."""
    problems: list[str] = []
    for attempt in range(1, ATTEMPTS + 1):
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        with tempfile.TemporaryFile() as server_log:
            process = subprocess.Popen(
                server_command(port),
                env=server_env(),
                stdin=subprocess.DEVNULL,
                stdout=server_log,
                stderr=server_log,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
            started = time.monotonic()
            # the run's first lines come from here: say what it waits for, and keep saying it on a busy host
            log.info("Prefect API: starting a temporary server on 127.0.0.1:%d (attempt %d)", port, attempt)
            next_note = started + NOTE_EVERY_S
            while True:
                if healthy(api_url):
                    log.info(
                        "Prefect API: temporary server on %s (pid %s, ready in %.1fs, attempt %d)",
                        api_url, process.pid, time.monotonic() - started, attempt,
                    )  # fmt: skip
                    return process, api_url
                waited = time.monotonic() - started
                if process.poll() is not None:
                    problems.append(f"it exited with code {process.returncode} ({_last_line(server_log)})")
                    break
                if waited > timeout:
                    stop(process)
                    problems.append(f"it did not answer within {timeout:g}s")
                    break
                if time.monotonic() > next_note:  # a busy host: say that it is still coming
                    log.info("waiting for the temporary Prefect server (%.0fs, attempt %d)", waited, attempt)
                    next_note += NOTE_EVERY_S
                time.sleep(0.25)
    raise PrefectServerError(
        f"the temporary Prefect server did not start ({'; then '.join(problems)}): on a busy machine raise "
        f"{TIMEOUT_ENV} (now {timeout:g}), or set PREFECT_API_URL to a running Prefect server"
    )


def configured_api_url() -> str | None:
    """The API the user configured: in the environment, or in Prefect's profile, .env or prefect.toml
    (`prefect cloud login`, `prefect config set` write the profile)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextmanager
def prefect_api() -> Iterator[str]:
    """For the block: PREFECT_API_URL, set in the environment (child processes such as Dask workers inherit
    it) and in Prefect's settings; a temporary server is stopped when the block ends, however it ends."""
    configured = configured_api_url()
    if configured:
        yield configured
        return
    process, api_url = start_server(start_timeout())
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        drain_prefect_workers()
        os.environ.pop("PREFECT_API_URL", None)
        stop(process)


def drain_prefect_workers() -> None:
    """Send the logs and events Prefect still holds before its server goes (as prefect_test_harness does),
    so that no connection error is printed after the run."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(RuntimeError):  # never started
            worker.drain_all(timeout=30)


def _watch_parent(parent: int) -> None:
    """End this server when the run that started it is gone (its parent changes when it dies)."""
    while True:
        time.sleep(WATCHDOG_SECONDS)
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """The server process: Prefect's API app under uvicorn, watched by a thread that ends it with its run."""
    parser = argparse.ArgumentParser(prog="python -m tailor.prefect_api")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    threading.Thread(target=_watch_parent, args=(args.parent,), daemon=True).start()
    import prefect
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        app_dir=str(prefect.__module_path__.parent),
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
