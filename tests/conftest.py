"""Shared fixtures: a real SeaweedFS S3 server, a Prefect test harness and a small generated company."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "tailor-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "tailor-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("TAILOR_PSEUDONYM_KEY", "test-pseudonym-key")

# Under pytest-xdist every worker gets a Prefect home of its own: the temporary servers of two workers' runs
# on one SQLite database would lock each other out.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    os.environ["PREFECT_HOME"] = str(_home / "workers" / os.environ["PYTEST_XDIST_WORKER"])
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes the last folder only

from tailor.s3server import SeaweedServer, free_port

REPO = Path(__file__).resolve().parents[1]
DATA_END = date(2026, 11, 20)
RUN_DATE = date(2026, 11, 21)
TEST_BUCKET = "tailor-test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real SeaweedFS S3 server on a free loopback port, stopped by its PID at the end."""
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    server = SeaweedServer(data_dir=data_dir, s3_port=free_port(), buckets=(TEST_BUCKET,)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def small_company(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated company (sources, config, truth); treat as read-only, copy to modify."""
    from tailor.generate import generate

    out = tmp_path_factory.mktemp("company")
    generate(out, n_users=800, n_items=200, days=35, end=DATA_END, seed=7, fmt="csv")
    return out


@pytest.fixture
def company(tmp_path: Path, small_company: Path) -> Path:
    """A private, writable copy of the small company's sources and config."""
    import shutil

    target = tmp_path / "company"
    shutil.copytree(small_company, target, ignore=shutil.ignore_patterns("var", "published"))
    return target


@pytest.fixture(scope="session")
def trained_company(tmp_path_factory: pytest.TempPathFactory, small_company: Path):
    """The small company taken through extract, validate, features and train (task functions, no flow)."""
    import shutil

    from tailor.config import load_settings
    from tailor.tasks.extract import extract_sources
    from tailor.tasks.features import build_features
    from tailor.tasks.train import train_models
    from tailor.tasks.validate import validate_sources
    from tailor.warehouse import run_context

    root = tmp_path_factory.mktemp("trained") / "company"
    shutil.copytree(small_company, root)
    settings = load_settings(root / "tailor.yaml")
    ctx = run_context(settings, RUN_DATE)
    loads = extract_sources.fn(settings, ctx)
    quality = validate_sources.fn(settings, ctx, loads)
    build_features.fn(settings, ctx)
    models = train_models.fn(settings, ctx)
    return settings, ctx, models, quality


@pytest.fixture(scope="session")
def midsize_company(tmp_path_factory: pytest.TempPathFactory):
    """5,000 users over 60 days, extracted, featured and trained: enough sends and purchases for the
    models to be measured against the generator's ground truth. (folder, settings, context, models)"""
    from tailor.config import load_settings
    from tailor.generate import generate
    from tailor.tasks.extract import extract_sources
    from tailor.tasks.features import build_features
    from tailor.tasks.train import train_models
    from tailor.warehouse import run_context

    out = tmp_path_factory.mktemp("midsize")
    generate(out, n_users=5000, n_items=600, days=60, end=date(2026, 11, 26), seed=42)
    settings = load_settings(out / "tailor.yaml")
    ctx = run_context(settings, date(2026, 11, 27))
    extract_sources.fn(settings, ctx)
    build_features.fn(settings, ctx)
    return out, settings, ctx, train_models.fn(settings, ctx)
