"""`tailor serve`: the deployments of prefect.yaml served by a local Prefect server, a triggered run completed.
Apart from tests/flows/test_operations.py so that parallel workers can take it on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tailor.s3server import free_port
from tests.conftest import RUN_DATE
from tests.flows.test_operations import configure

pytestmark = pytest.mark.integration


def test_tailor_serve_runs_a_triggered_deployment_to_completion(company: Path, tmp_path: Path) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config_path = configure(company)
    port = free_port()
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    env.pop("PREFECT_API_URL")
    serve = subprocess.Popen(
        [sys.executable, "-m", "tailor.cli", "serve", "--config", str(config_path), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api"
    try:
        with temporary_settings({PREFECT_API_URL: api}):
            deadline = time.monotonic() + 120
            run = None
            while run is None:
                try:
                    run = run_deployment(
                        "tailor-backfill/backfill",
                        parameters={"config_path": str(config_path), "start": RUN_DATE.isoformat(),
                                    "end": RUN_DATE.isoformat()},
                        timeout=300,
                    )  # fmt: skip
                except Exception:
                    if time.monotonic() > deadline or serve.poll() is not None:
                        raise
                    time.sleep(2)  # the server or the deployment is not up yet
        assert run.state.is_completed(), run.state
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
    latest = json.loads((company / "published" / "latest.json").read_text())
    assert latest["run_date"] == RUN_DATE.isoformat()
