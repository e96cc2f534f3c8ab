"""The temporary Prefect server: started with room for a busy host, never left behind, one line when it fails."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tailor.prefect_api import PrefectServerError, prefect_api, start_server

SERVER_MODULE = "tailor.prefect_api"


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads processes from /proc")


def test_a_configured_api_is_used_and_no_server_is_started(monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    before = children(os.getpid())
    with prefect_api() as url:
        assert url == "http://127.0.0.1:9/api"
        assert children(os.getpid()) == before


def test_a_server_that_cannot_start_in_time_is_one_line_and_leaves_nothing(monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    before = set(children(os.getpid()))
    with pytest.raises(PrefectServerError) as failed:
        start_server(timeout=0.3)
    message = str(failed.value)
    assert "\n" not in message
    assert "did not answer within 0.3s" in message and "TAILOR_PREFECT_START_TIMEOUT_SECONDS" in message
    assert message.count("did not answer") == 2  # it tried again on a fresh port
    left = [pid for pid in children(os.getpid()) if pid not in before and running(pid)]
    assert left == []


def test_a_run_killed_with_sigkill_leaves_no_server(small_company: Path, tmp_path: Path) -> None:
    company = tmp_path / "company"
    shutil.copytree(small_company, company, ignore=shutil.ignore_patterns("var", "published"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a fresh one: the slowest start there is
    run = subprocess.Popen(
        [sys.executable, "-m", "tailor.cli", "run", "--config", str(company / "tailor.yaml"),
         "--run-date", "2026-11-21", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        servers = lambda: [pid for pid in children(run.pid) if SERVER_MODULE in command_line(pid)]  # noqa: E731
        assert wait_until(lambda: bool(servers()), 120), run.stderr.read() if run.poll() is not None else ""
        server = servers()[0]
        # killed once the flow is under way (it holds the lock and talks to the server)
        assert wait_until(lambda: (company / "var" / "tailor.duckdb").exists(), 180)
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert wait_until(lambda: not running(server), 30), f"server {server} outlived its run"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
