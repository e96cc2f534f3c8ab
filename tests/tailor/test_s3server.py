from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tailor.s3server import _main


def run_stop(pidfile: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["python -m tailor.s3server", "stop", "--pidfile", pidfile])
    _main()
    return capsys.readouterr().out


def test_stop_without_a_pidfile_says_there_is_nothing_to_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_stop("var/s3.pid", monkeypatch, capsys) == "no SeaweedFS server to stop (no var/s3.pid)\n"


def test_stop_with_a_pidfile_naming_a_dead_process_says_so_and_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    finished = subprocess.Popen(["sleep", "0"])
    finished.wait()  # waited for, so its PID names no process any more
    (tmp_path / "var").mkdir()
    pidfile = tmp_path / "var" / "s3.pid"
    pidfile.write_text(str(finished.pid))
    assert run_stop("var/s3.pid", monkeypatch, capsys) == (
        f"SeaweedFS (PID {finished.pid}) was not running; removed var/s3.pid\n"
    )
    assert not pidfile.exists()
