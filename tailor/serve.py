"""`tailor serve`: the deployments of prefect.yaml, served from this process.

Schedules need a Prefect server (the temporary one a plain flow run starts cannot schedule). Without
PREFECT_API_URL a local server is started on 127.0.0.1 and stopped on exit; with it (a shared server or
Prefect Cloud) the same deployments register there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tailor.config import Settings
from tailor.prefect_api import TIMEOUT_ENV, PrefectServerError, die_with_parent, healthy, start_timeout


def deployments(settings: Settings, config_path: Path) -> list[Any]:
    """The nightly run on its cron; the experiment analysis and backfills on demand."""
    from prefect.schedules import Cron

    from tailor.flows.experiments import experiments
    from tailor.flows.schedule import backfill, scheduled_nightly

    parameters = {"config_path": str(config_path)}
    return [
        scheduled_nightly.to_deployment(
            name="nightly",
            schedule=Cron(settings.schedule.cron, timezone=settings.timezone),
            concurrency_limit=1,
            parameters=parameters,
            description="Tonight's run, after the nights the config says to catch up.",
        ),
        experiments.to_deployment(
            name="experiments", parameters=parameters, description="The experiment analysis on its own."
        ),
        backfill.to_deployment(name="backfill", parameters=parameters, description="Rerun a range of dates."),
    ]


@contextmanager
def local_server(port: int) -> Iterator[str]:
    """A Prefect server on 127.0.0.1:port for as long as the block runs; its API URL."""
    api_url = f"http://127.0.0.1:{port}/api"
    if healthy(api_url):  # one is already there (an earlier `tailor serve`, a developer's server)
        yield api_url
        return
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    # it dies with this process, even when this one is killed (see tailor.prefect_api)
    linux = sys.platform.startswith("linux")
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent if linux else None,
    )
    try:
        timeout = start_timeout()
        deadline = time.monotonic() + timeout
        while not healthy(api_url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise PrefectServerError(
                    f"the local Prefect server on port {port} did not start within {timeout:g}s (is the port "
                    f"free? on a busy machine raise {TIMEOUT_ENV})"
                )
            time.sleep(0.5)
        yield api_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def serve_schedules(settings: Settings, config_path: Path, port: int) -> int:
    from prefect import serve

    if os.environ.get("PREFECT_API_URL"):
        serve(*deployments(settings, config_path))
        return 0
    with local_server(port) as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api_url}):
            print(f"Prefect server: {api_url.removesuffix('/api')} (the UI shows the runs)", flush=True)
            serve(*deployments(settings, config_path))
    return 0
