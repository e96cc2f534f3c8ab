"""When to train: every `registry.retrain_every_days` nights, or sooner when what the models were trained
under has changed. The nights between score with the models that serve now and build features only at the
scoring cutoff (a training night builds them at every training cutoff too, the night's larger part)."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from functools import cache
from importlib.metadata import version
from pathlib import Path

import duckdb

from tailor.config import Settings
from tailor.sql import ensure_table, sql_root
from tailor.tasks.repeats import load as load_repeats
from tailor.warehouse import RunContext

TRAININGS_TABLE = "meta.model_trainings"
TRAINING_COLUMNS = {"run_date": "date", "model_signature": "varchar"}
# what a model is trained under: a change to any of these sections retrains the next night
MODEL_SECTIONS = ("seed", "ranking", "propensity", "recommendations", "item_audiences", "user_features", "campaigns")


@cache
def code_version() -> str:
    """The package version and every SQL model's text: a changed model must rebuild."""
    digest = hashlib.sha256(version("tailor").encode())
    for path in sorted(sql_root().rglob("*.sql")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def user_sql_version(settings: Settings) -> str:
    """The company's user-feature SQL as it is now: an edit to it changes the features, as a config edit does."""
    sql = settings.user_features.sql
    if sql is None:
        return ""
    path = settings.resolve(sql)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"


def model_signature(settings: Settings) -> str:
    """The settings, company SQL and code the models are trained under (not the publish target, the
    schedule or the cadence itself, which change no model)."""
    dumped = settings.model_dump(mode="json")
    sections = {name: dumped.get(name) for name in MODEL_SECTIONS}
    sections["registry"] = {k: v for k, v in dumped["registry"].items() if k != "retrain_every_days"}
    text = json.dumps(sections, sort_keys=True, default=str) + user_sql_version(settings) + code_version()
    return hashlib.sha256(text.encode()).hexdigest()


def last_training(con: duckdb.DuckDBPyConnection, before: date) -> tuple[date, str] | None:
    """(run date, model signature) of the latest night before `before` that trained."""
    ensure_table(con, TRAININGS_TABLE, TRAINING_COLUMNS)
    rows = con.execute(
        f"select run_date, model_signature from {TRAININGS_TABLE} where run_date < $before "
        "order by run_date desc limit 1",
        {"before": before},
    ).fetchall()
    return (rows[0][0], rows[0][1]) if rows else None


def record_training(con: duckdb.DuckDBPyConnection, settings: Settings, run_date: date) -> None:
    ensure_table(con, TRAININGS_TABLE, TRAINING_COLUMNS)
    con.execute(f"delete from {TRAININGS_TABLE} where run_date = $d", {"d": run_date})
    con.execute(f"insert into {TRAININGS_TABLE} values ($d, $s)", {"d": run_date, "s": model_signature(settings)})


def missing_model_files(con: duckdb.DuckDBPyConnection, run_date: date) -> list[str]:
    """Models the night `run_date` left serving whose files are gone."""
    rows = con.execute(
        "select model_name, serving_json from meta.models where run_date = $d order by model_name", {"d": run_date}
    ).fetchall()
    missing = []
    for name, serving_json in rows:
        serving = json.loads(serving_json) if serving_json else {}
        if serving.get("served_by") == "model" and not Path(serving.get("path", "")).exists():
            missing.append(name)
    return missing


def retrain_reason(con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext) -> str | None:
    """Why tonight trains, or None: the models trained on the last training night go on serving. Reads the
    night's repeat-purchase decision, so it is asked after the feature build has saved it."""
    every = settings.registry.retrain_every_days
    last = last_training(con, ctx.run_date)
    if last is None:
        return "no earlier training"
    trained_on, signature = last
    age = (ctx.run_date - trained_on).days
    if age >= every:
        return f"the models were trained {age} night(s) ago (registry.retrain_every_days: {every})"
    if signature != model_signature(settings):
        return "the model settings, the company's user-feature SQL or the code changed since the last training"
    if load_repeats(con, trained_on).is_allowed != load_repeats(con, ctx.run_date).is_allowed:
        return "the repeat-purchase decision changed since the last training"
    missing = missing_model_files(con, trained_on)
    if missing:
        return f"the file of {', '.join(missing)} is missing"
    return None
