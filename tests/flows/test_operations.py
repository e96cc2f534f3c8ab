"""Operations, for real: backfills, failure notifications to a local HTTP and SMTP server, and the
deployments served by `tailor serve` on a local Prefect server."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from tailor.config import load_settings
from tailor.flows.nightly import nightly
from tailor.flows.schedule import backfill
from tailor.s3server import free_port
from tailor.warehouse import connect
from tests.conftest import REPO, RUN_DATE
from tests.published import run_folder

pytestmark = pytest.mark.integration


def configure(company: Path, **extra) -> Path:
    config_path = company / "tailor.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["publish"]["target"] = (company / "published").as_uri()
    config.update(extra)
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def test_a_backfill_reruns_dates_in_order_and_latest_ends_on_the_newest(
    company: Path, prefect_harness
) -> None:
    config_path = configure(company)
    first, last = RUN_DATE - timedelta(days=1), RUN_DATE
    # tonight's run already happened; the backfill replaces it and the night before
    nightly(config_path=str(config_path), run_date=last)
    manifest = run_folder(company / "published", last) / "manifest.json"
    before = json.loads(manifest.read_text())["datasets"]["recommendations"]["files"][0]["sha256"]
    summary = backfill(config_path=str(config_path), start=first, end=last)
    assert list(summary) == [first.isoformat(), last.isoformat()]
    latest = json.loads((company / "published" / "latest.json").read_text())
    assert latest["run_date"] == last.isoformat()
    # the same inputs give the same files: the rerun published them again, identical, in a new attempt
    # (the manifest itself may differ: the history datasets now hold the night before)
    rerun = run_folder(company / "published", last) / "manifest.json"
    assert rerun != manifest and manifest.is_file()  # the superseded attempt is kept for its readers
    assert json.loads(rerun.read_text())["datasets"]["recommendations"]["files"][0]["sha256"] == before
    with connect(load_settings(config_path)) as con:
        ledger = con.execute("select run_date, status from meta.runs order by run_date").fetchall()
    assert ledger == [(first, "succeeded"), (last, "succeeded")]


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_failed_run_notifies_by_webhook_and_email_naming_flow_date_task_and_error(
    company: Path, prefect_harness, monkeypatch
) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    mails = []

    class Keep(Message):
        def handle_message(self, message) -> None:
            mails.append(message)

    smtp = Controller(Keep(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    http = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TAILOR_TEST_WEBHOOK", f"http://127.0.0.1:{http.server_port}/hook")
        config_path = configure(
            company,
            notifications={
                "webhook_url_env": "TAILOR_TEST_WEBHOOK",
                "smtp": {"host": "127.0.0.1", "port": smtp.port, "sender": "tailor@example.org",
                         "recipients": ["oncall@example.org"], "starttls": False},
            },
        )  # fmt: skip
        # the interactions source loses its files: extraction fails
        for path in (company / "sources" / "interactions").glob("*.csv"):
            path.unlink()
        Hook.received.clear()
        with pytest.raises(Exception, match="no file matches"):
            nightly(config_path=str(config_path), run_date=RUN_DATE)
        # inside a backfill the night fails the same way: one message, from the backfill, naming the night
        with pytest.raises(Exception, match="no file matches"):
            backfill(config_path=str(config_path), start=RUN_DATE - timedelta(days=1), end=RUN_DATE)
    finally:
        http.shutdown()
        smtp.stop()
    assert len(Hook.received) == 2
    nested = Hook.received[1]
    assert nested["flow"] == "tailor-backfill" and nested["task"].startswith("extract")
    assert nested["run_date"] == (RUN_DATE - timedelta(days=1)).isoformat()  # the night that failed
    message = Hook.received[0]
    assert message["flow"] == "tailor-nightly" and message["run_date"] == RUN_DATE.isoformat()
    assert message["task"].startswith("extract") and "no file matches" in message["error"]
    assert (
        len(mails) == 2 and "tailor-nightly" in mails[0]["Subject"] and mails[0]["To"] == "oncall@example.org"
    )
    with connect(load_settings(config_path)) as con:
        status = con.execute(
            "select status, error from meta.runs where run_date = $d", {"d": RUN_DATE}
        ).fetchall()
    assert status[0][0] == "failed" and "no file matches" in status[0][1]


def test_prefect_yaml_deploys_flows_that_exist_with_their_parameters() -> None:
    import importlib
    import inspect

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {"nightly", "experiments", "backfill"}
    for deployment in spec["deployments"]:
        module, name = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module("tailor." + module.removesuffix(".py").replace("/", ".")), name)
        signature = inspect.signature(flow.fn)
        assert set(deployment["parameters"]) <= set(signature.parameters), deployment["name"]
        assert (REPO / deployment["parameters"]["config_path"]).exists()
    nightly_schedule = next(d for d in spec["deployments"] if d["name"] == "nightly")["schedules"][0]
    assert nightly_schedule["cron"] == load_settings(REPO / "config" / "demo.yaml").schedule.cron
