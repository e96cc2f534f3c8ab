"""Every failure class the README names ends the same way: exactly one line on stderr, exit code 2, and with
--json a JSON object on stdout that carries the error. Classes found before any work starts run the real
command in a subprocess; those found during a run go through the CLI's `main` against the test's Prefect
server (a subprocess would spend most of its time starting another one)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import DATA_END, RUN_DATE
from tests.tiny import hold_run_lock

DATA_DAY = DATA_END.isoformat()


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("tailor: error: "), stderr
    return lines[0]


def tailor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tailor.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def edit_config(company: Path, change: Callable[[dict], None]) -> Path:
    path = company / "tailor.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))
    return path


# --- found before any work starts: the real command, in a subprocess


def test_config_class_unknown_key(company: Path) -> None:
    config = edit_config(
        company, lambda c: c.setdefault("recommendations", {}).update({"max_per_categroy": 3})
    )
    result = tailor("run", "--config", str(config), "--quiet")
    assert result.returncode == 2
    assert "'recommendations.max_per_categroy': unknown key (did you mean 'max_per_category'?)" in one_line(
        result.stderr
    )


def test_config_class_malformed_yaml(company: Path) -> None:
    config = company / "tailor.yaml"
    config.write_text(config.read_text() + "\nbroken: [unclosed\n")
    result = tailor("run", "--config", str(config), "--json")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "not valid YAML: line" in line
    assert json.loads(result.stdout)["error_type"] == "ConfigError"


def test_usage_class_a_date_in_the_wrong_form(company: Path) -> None:
    result = tailor("run", "--config", str(company / "tailor.yaml"), "--run-date", "20261121")
    assert result.returncode == 2
    assert "YYYY-MM-DD" in one_line(result.stderr)


def test_generate_size_class(tmp_path: Path) -> None:
    result = tailor("generate", "--users", "1000000000", "--out", str(tmp_path / "huge"))
    assert result.returncode == 2
    assert "GiB of memory" in one_line(result.stderr)
    assert not (tmp_path / "huge").exists()


def test_lock_class_a_run_in_progress_is_refused_before_anything_starts(company: Path) -> None:
    holder = hold_run_lock(company / "var" / "tailor.duckdb.lock", DATA_DAY)
    try:
        result = tailor("run", "--config", str(company / "tailor.yaml"), "--quiet")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2
    assert f"process {holder.pid}" in one_line(result.stderr)
    # refused before the warehouse was opened or a server started
    assert not (company / "var" / "tailor.duckdb").exists()


def test_server_start_class(company: Path, tmp_path: Path) -> None:
    env = {"TAILOR_PREFECT_START_TIMEOUT_SECONDS": "0.3", "PREFECT_HOME": str(tmp_path / "prefect")}
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    result = subprocess.run(
        [sys.executable, "-m", "tailor.cli", "run", "--config", str(company / "tailor.yaml"), "--json"],
        capture_output=True, text=True, timeout=300, env={**environment, **env},
    )  # fmt: skip
    assert result.returncode == 2
    assert "temporary Prefect server did not start" in one_line(result.stderr)
    assert json.loads(result.stdout)["error_type"] == "PrefectServerError"


def refused_before_the_server(company: Path, tmp_path: Path, config: Path) -> str:
    """The run's one line when a Prefect server could not start in time: a check that fails before the
    server gives its own line, one after it would give the server's (and no flow run, so no notification,
    can exist without the server)."""
    env = {"TAILOR_PREFECT_START_TIMEOUT_SECONDS": "0.3", "PREFECT_HOME": str(tmp_path / "prefect")}
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    result = subprocess.run(
        [sys.executable, "-m", "tailor.cli", "run", "--config", str(config), "--quiet"],
        capture_output=True, text=True, timeout=300, env={**environment, **env},
    )  # fmt: skip
    assert result.returncode == 2
    return one_line(result.stderr)


def test_missing_sources_are_found_before_the_server_starts(company: Path, tmp_path: Path) -> None:
    (company / "sources" / "items").rename(company / "sources" / "items-moved")
    line = refused_before_the_server(company, tmp_path, company / "tailor.yaml")
    assert re.search(r"source items: no file matches \S*sources/items/\S* before ", line), line
    assert not (company / "var" / "tailor.duckdb").exists()


def test_an_unwritable_target_is_found_before_the_server_starts(company: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the target folder should be")
    config = edit_config(company, lambda c: c["publish"].update({"target": f"file://{blocked}"}))
    line = refused_before_the_server(company, tmp_path, config)
    assert str(blocked) in line and "temporary Prefect server" not in line, line


# --- found during a run: the CLI's main, with the test session's Prefect server


@pytest.fixture
def cli(prefect_harness, monkeypatch, capfd):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))

    def run(*args: str) -> tuple[int, str, str]:
        from tailor.cli import main

        code = main(list(args))
        captured = capfd.readouterr()
        return code, captured.out, captured.err

    return run


def truncated_file(company: Path) -> str:
    path = company / "sources" / "interactions" / f"{DATA_DAY}.csv"
    path.write_bytes(path.read_bytes()[:4000])
    return rf"interactions/{DATA_DAY}\.csv: line \d+ has \d field"


def wrong_values(company: Path) -> str:
    path = company / "sources" / "interactions" / f"{DATA_DAY}.csv"
    rows = path.read_text().splitlines()
    # the whole day's events from the future: far more than the share the gate quarantines quietly
    future = lambda row: ",".join([*row.split(",")[:3], "2031-01-01 00:00:00", *row.split(",")[4:]])  # noqa: E731
    path.write_text("\n".join([rows[0], *map(future, rows[1:])]) + "\n")
    return r"interactions: quarantine_share"


def duplicate_ids(company: Path) -> str:
    path = sorted((company / "sources" / "users").glob("*.csv"))[-1]
    rows = path.read_text().splitlines()
    path.write_text("\n".join([*rows, *rows[1:4]]) + "\n")
    return "user_id_unique_in_file"


def unreachable_target(company: Path) -> str:
    edit_config(company, lambda c: c.update({"storage": {"endpoint_url": "http://127.0.0.1:9"}}))
    return r"publish target s3://tailor-missing/x failed its write check"


@dataclass(frozen=True)
class InRun:
    name: str
    make: Callable[[Path], str]  # breaks the company, returns a regex the line must match
    error_type: str
    extra: tuple[str, ...] = ()


IN_RUN = [
    InRun("file", truncated_file, "ExtractError"),
    InRun("value", wrong_values, "DataQualityError"),
    InRun("gate", duplicate_ids, "DataQualityError"),
    InRun("upload", unreachable_target, "StorageError", ("--target", "s3://tailor-missing/x")),
]


@pytest.mark.parametrize("case", IN_RUN, ids=[case.name for case in IN_RUN])
def test_failures_during_a_run(case: InRun, company: Path, cli) -> None:

    pattern = case.make(company)
    config = str(company / "tailor.yaml")
    code, out, err = cli(
        "run", "--config", config, "--run-date", RUN_DATE.isoformat(), "--quiet", *case.extra
    )
    assert code == 2 and out == ""
    line = one_line(err)
    assert re.search(pattern, line), line
    assert "(log: " in line  # the whole story, tracebacks included, is in the run's log file
    log_file = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    assert case.error_type in log_file.read_text()
    assert not (company / "published" / "latest.json").exists()


def test_consent_class(company: Path, cli, monkeypatch) -> None:
    """A row for a user without consent, slipped past every filter upstream, stops the publication."""
    from tailor.tasks import publish

    read = publish.dataset_parts

    def with_an_unconsented_row(con, dataset, ctx, key, rows_per_file) -> Iterator[pl.DataFrame]:
        for frame in read(con, dataset, ctx, key, rows_per_file):
            if dataset.name != "recommendations" or frame.is_empty():
                yield frame
                continue
            unconsented = con.execute(
                "select user_id from staging.stg_consents where is_latest and purpose = 'profiling' "
                "and not is_granted order by user_id limit 1"
            ).fetchall()[0][0]
            row = frame.head(1).with_columns(user_id=pl.lit(unconsented), is_personalized=pl.lit(True))
            yield pl.concat([frame, row])

    monkeypatch.setattr(publish, "dataset_parts", with_an_unconsented_row)
    config = str(company / "tailor.yaml")
    code, out, err = cli("run", "--config", config, "--run-date", RUN_DATE.isoformat(), "--json")
    assert code == 2
    line = one_line(err)
    assert "recommendations: 1 row" in line and "profiling" in line
    assert json.loads(out)["error_type"] == "ConsentViolation"
    assert not (company / "published" / "latest.json").exists()


def test_without_quiet_the_terminal_shows_the_run_but_no_traceback(company: Path, tmp_path: Path) -> None:
    """The real command with its own temporary server: Prefect's lines stay, the traceback goes to the log."""
    pattern = truncated_file(company)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    result = subprocess.run(
        [sys.executable, "-m", "tailor.cli", "run", "--config", str(company / "tailor.yaml"),
         "--run-date", RUN_DATE.isoformat()],
        capture_output=True, text=True, timeout=600, env={**environment, "PREFECT_HOME": str(tmp_path / "p")},
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert "Task run 'extract" in result.stderr and "Failed" in result.stderr  # the run was shown
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("tailor: error: ") and re.search(pattern, lines[-1])
    log_file = Path(lines[-1].rsplit("(log: ", 1)[1].rstrip(")"))
    assert "Traceback" in log_file.read_text()
