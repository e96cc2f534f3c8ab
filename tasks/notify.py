"""Tell someone when a run fails: which flow, which date, which task, and the error.

Attached to the flows as Prefect `on_failure` hooks. Channels come from `notifications` in the config: a
webhook (a JSON POST to the URL held by the environment variable it names) and an email through SMTP
(credentials from the environment). The run's failure is recorded in `meta.runs` first. A notification that
cannot be delivered is logged and never hides the run's own error.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import time
import urllib.request
from datetime import date
from email.message import EmailMessage
from typing import Any

from tailor.config import NotificationsConfig, Settings, load_settings

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 10
WEBHOOK_RETRY_DELAYS = (0.0, 1.0, 4.0)  # seconds before each attempt


def failed_task(flow_run_id: Any) -> tuple[str | None, str | None]:
    """(the first failed task's name, the run date of the flow run it belongs to), from the Prefect API.
    A failed subflow (a nightly run inside a backfill) is followed down to the task that failed in it."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterParentTaskRunId,
            TaskRunFilter,
            TaskRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        run_date = None
        with get_client(sync_client=True) as client:
            for _ in range(5):  # flows nest two deep here; the bound only guards against a cycle
                runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                    task_run_filter=TaskRunFilter(
                        state=dict(type=TaskRunFilterStateType(any_=[StateType.FAILED]))
                    ),
                )
                if not runs:
                    return None, run_date
                first = sorted(runs, key=lambda run: run.start_time or run.expected_start_time)[0]
                children = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[first.id])
                    )
                )
                if not children:
                    return first.name, run_date
                flow_run_id = children[0].id
                run_date = children[0].parameters.get("run_date")
            return first.name, run_date
    except Exception as error:  # the API may be gone already; the message still goes out
        log.warning("could not read the failed task from the Prefect API: %s", type(error).__name__)
        return None, None


def failure_message(
    flow_name: str, run_date: str | None, task_name: str | None, error: str
) -> dict[str, Any]:
    where = f"task {task_name}" if task_name else "the flow itself"
    return {
        "text": f"Tailor: {flow_name} for {run_date or 'today'} failed in {where}: {error}",
        "flow": flow_name,
        "run_date": run_date,
        "task": task_name,
        "error": error,
    }


def post_webhook(url: str, message: dict[str, Any]) -> None:
    body = json.dumps(message).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    last: Exception | None = None
    for delay in WEBHOOK_RETRY_DELAYS:
        time.sleep(delay)
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
                if response.status < 300:
                    return
        except Exception as error:
            last = error
    raise RuntimeError(f"webhook delivery failed: {type(last).__name__ if last else 'non-2xx answer'}")


def send_email(config: NotificationsConfig, message: dict[str, Any]) -> None:
    smtp = config.smtp
    assert smtp is not None
    email = EmailMessage()
    email["Subject"] = message["text"][:150]
    email["From"] = smtp.sender
    email["To"] = ", ".join(smtp.recipients)
    email.set_content(json.dumps(message, indent=2))
    with smtplib.SMTP(smtp.host, smtp.port, timeout=WEBHOOK_TIMEOUT_SECONDS) as client:
        if smtp.starttls:
            client.starttls()
        if smtp.username_env and smtp.password_env:
            client.login(os.environ[smtp.username_env], os.environ[smtp.password_env])
        client.send_message(email)


def notify(settings: Settings, message: dict[str, Any]) -> list[str]:
    """Deliver to every configured channel; return the channels reached."""
    config = settings.notifications
    reached = []
    if config.webhook_url_env and os.environ.get(config.webhook_url_env):
        try:
            post_webhook(os.environ[config.webhook_url_env], message)
            reached.append("webhook")
        except Exception as error:
            log.error("failure notification by webhook not delivered: %s", error)
    if config.smtp is not None:
        try:
            send_email(config, message)
            reached.append("email")
        except Exception as error:
            log.error("failure notification by email not delivered: %s", type(error).__name__)
    return reached


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect on_failure hook: record the failure and notify."""
    parameters = flow_run.parameters or {}
    run_date = parameters.get("run_date") or parameters.get("start")
    run_day = str(run_date) if run_date else None
    try:
        state.result()
        error, refused = state.message or "failed", False
    except BaseException as exc:  # the run's own exception, re-raised by result()
        from tailor.tasks.runs import RunInProgress

        error, refused = f"{type(exc).__name__}: {exc}", isinstance(exc, RunInProgress)
    try:
        settings = load_settings(parameters["config_path"])
    except Exception as exc:
        log.error("failure of %s not notified: the config cannot be read (%s)", flow.name, exc)
        return
    if run_day is None and flow.name == "tailor-nightly":
        from tailor.warehouse import today_in

        run_day = today_in(settings.timezone).isoformat()
    # a run refused because another holds the warehouse must not mark that other run failed
    if run_day and flow.name == "tailor-nightly" and not refused:
        from tailor.tasks.runs import record

        try:
            record(settings, date.fromisoformat(run_day), "failed", flow.name, error[:2000])
        except Exception as exc:
            log.error("failure of %s not recorded in meta.runs: %s", flow.name, type(exc).__name__)
    if flow_run.parent_task_run_id is not None:
        return  # a subflow (a night of a backfill): the outermost flow notifies, naming this night's task
    task_name, inner_date = failed_task(flow_run.id)
    message = failure_message(flow.name, str(inner_date) if inner_date else run_day, task_name, error)
    reached = notify(settings, message)
    log.info("failure of %s for %s notified by %s", flow.name, run_day, ", ".join(reached) or "no channel")
