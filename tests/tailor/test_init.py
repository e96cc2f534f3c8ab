"""`tailor init DIR`: a company's project folder that loads and checks cleanly as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from tailor.cli import main
from tailor.config import REQUIRED_SOURCES, load_settings
from tailor.generate import generate
from tailor.init import EXAMPLE_COLUMNS, InitError, init_project, project_name, skeleton_sql
from tailor.schema import TABLES
from tests.conftest import DATA_END, REPO, RUN_DATE
from tests.published import run_folder


def test_init_writes_config_sql_campaign_and_data_that_load(tmp_path: Path) -> None:
    folder = tmp_path / "Acme Shop"
    written = init_project(folder)
    relative = {str(path.relative_to(folder)) for path in written}
    assert {"tailor.yaml", "campaigns/welcome_back.yaml", "data/README.md"} <= relative
    assert {f"sql/{name}.sql" for name in TABLES} <= relative
    assert {f"data/{name}/example.csv" for name in TABLES} <= relative
    settings = load_settings(folder / "tailor.yaml")
    assert settings.project == "acme-shop"
    assert set(settings.sources) == set(TABLES)
    for name in TABLES:
        assert settings.source_sql_path(name) == folder / "sql" / f"{name}.sql"
    assert [c.campaign_id for c in settings.campaigns] == ["welcome_back"]
    assert settings.publish.published_user_id == "pseudonymous"


def test_the_config_explains_its_keys_and_holds_no_secret(tmp_path: Path) -> None:
    init_project(tmp_path / "p")
    text = (tmp_path / "p" / "tailor.yaml").read_text()
    data = yaml.safe_load(text)
    # every key a new user must set is there, and commented
    for key in ("project", "timezone", "seed", "warehouse", "sources", "publish"):
        assert key in data
    for line in text.splitlines():
        if re.match(r"^[a-z_]+: \S", line):  # a top-level scalar key carries its explanation
            assert "#" in line, line
    assert "AWS_ACCESS_KEY_ID" in text and "pseudonym_key_env: TAILOR_PSEUDONYM_KEY" in text
    assert not re.search(r"(secret|password|api_key|access_key)\s*:", text, re.IGNORECASE)
    for name in REQUIRED_SOURCES:
        assert name in text.split("are required")[0].splitlines()[-1]


def test_each_skeleton_names_every_canonical_column_with_its_type_and_description() -> None:
    for table in TABLES.values():
        text = skeleton_sql(table)
        assert re.search(r"with source as \(.*\),\s+final as \(.*\)\s+select \* from final\s*$", text, re.S)
        for column in table.columns:
            line = next(line for line in text.splitlines() if re.search(rf"\b(as )?{column.name},?\s+--", line))
            assert column.duckdb_type in line
            assert ("required" if column.required else "optional") in line
            assert column.description in line


def test_each_skeleton_runs_on_its_example_file_and_returns_the_canonical_columns(tmp_path: Path) -> None:
    init_project(tmp_path / "p")
    con = duckdb.connect()
    for table in TABLES.values():
        sql = (tmp_path / "p" / "sql" / f"{table.name}.sql").read_text()
        example = tmp_path / "p" / "data" / table.name / "example.csv"
        result = con.execute(sql, {"file": str(example)})
        columns = [description[0] for description in result.description]
        rows = result.fetchall()
        assert sorted(columns) == sorted(table.column_names), table.name
        assert rows, table.name
        header = example.read_text().splitlines()[0].split(",")
        assert header == list(EXAMPLE_COLUMNS[table.name].values())


def test_init_refuses_a_folder_that_holds_anything(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(InitError, match="is not empty"):
        init_project(folder)
    assert main(["init", str(folder)]) == 2
    assert capsys.readouterr().err == (
        f"tailor: error: {folder} is not empty: tailor init writes only into a new or empty folder\n"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["init", str(empty), "--project", "shop_1"]) == 0
    said = capsys.readouterr().out
    assert "sql/interactions.sql" in said and "TAILOR_PSEUDONYM_KEY" in said  # what to do next
    assert load_settings(empty / "tailor.yaml").project == "shop_1"


def test_init_refuses_a_file_and_a_bad_project_name(tmp_path: Path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(InitError, match="is a file"):
        init_project(file)
    with pytest.raises(InitError, match="project name"):
        init_project(tmp_path / "new", project="Bad Name")
    assert not (tmp_path / "new").exists()


def test_project_names_fit_the_config_pattern(tmp_path: Path) -> None:
    assert project_name(tmp_path / "Acme Shop (EU)") == "acme-shop-eu"
    assert project_name(tmp_path / "___") == "my-company"


# --- end to end: a company's own folder, outside the repository, with Tailor installed from a wheel

ORDER_LINES_SQL = """-- interactions: one per order line; the order it belongs to says who and when.
with lines as (
    select * from read_csv($file, header = true, all_varchar = true)
),

orders as (
    select * from read_csv($orders, header = true, all_varchar = true)
),

final as (
    select
        -- ids
        orders.customer as user_id,
        lines.sku as item_id,
        -- timestamps
        orders.ordered_at as occurred_at,
        -- attributes
        lines.event as event_type,
        lines.amount as value
    from lines
    inner join orders using (order_id)
)

select * from final
"""


def installed_tailor(tmp_path: Path) -> Path:
    """Tailor built as a wheel from a copy of the repository's sources and installed into a folder of
    its own (never editable): what a company gets from `pip install tailor`."""
    source = tmp_path / "tailor-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("tailor", "flows", "tasks", "sql", "config"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    # an absolute path: pip reads a bare folder name as a package to download
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source.resolve())]
    subprocess.run(build, check=True, capture_output=True, text=True, timeout=240)
    (wheel,) = wheels.glob("tailor-*.whl")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, text=True, timeout=120)
    return target


def write_company_files(generated: Path, project: Path) -> dict[str, int]:
    """The generated company's files, reshaped into the exports the project's SQL reads: every table under
    the example files' column names; users, consents, items and sends as one snapshot each (the newest
    version of a row wins); interactions split into daily order lines and one orders export."""
    for example in project.glob("data/*/example.csv"):
        example.unlink()  # as data/README.md says: the examples go when the real files come
    rows: dict[str, int] = {}
    for table in TABLES:
        daily = sorted((generated / "sources" / table).glob("*.csv"))
        if table == "interactions":
            orders = []
            for file in daily:
                frame = pl.read_csv(file, infer_schema=False).with_row_index("line")
                frame = frame.with_columns((pl.lit(file.stem + "-") + pl.col("line").cast(pl.String)).alias("order_id"))
                lines = {"order_id": "order_id", "item_id": "sku", "event_type": "event", "value": "amount"}
                write(frame.select(list(lines)).rename(lines), project / "data" / "order_lines" / file.name)
                orders.append(frame.select("order_id", customer="user_id", ordered_at="occurred_at"))
            write(pl.concat(orders), project / "data" / "orders" / "orders.csv")
            rows[table] = sum(frame.height for frame in orders)
            continue
        frame = pl.concat([pl.read_csv(file, infer_schema=False) for file in daily])
        frame = frame.unique(subset=list(TABLES[table].key), keep="last", maintain_order=True)
        renames = {c: n for c, n in EXAMPLE_COLUMNS[table].items() if c in frame.columns}
        write(frame.rename(renames), project / "data" / table / "export.csv")
        rows[table] = frame.height
    return rows


def write(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)


@pytest.mark.integration
def test_a_project_folder_outside_the_repository_runs_a_night_from_an_installed_wheel(tmp_path: Path) -> None:
    site = installed_tailor(tmp_path)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "PYTHONPATH"))},
        "PYTHONPATH": str(site),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "TAILOR_PSEUDONYM_KEY": "project-folder-test-key",
    }

    def tailor(*args: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tailor.cli", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    # the environment a company has: Tailor from the wheel, and no top-level flows, tasks or sql
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    origins = json.loads(probe.stdout)
    for module in ("tailor", "tailor.tasks.extract", "tailor.sql_models"):
        assert origins[module].startswith(str(site)), (module, origins[module])
        assert not origins[module].startswith(str(REPO))
    assert origins["importable"] == {"tasks": False, "flows": False, "sql": False}

    created = tailor("init", "acme")
    assert created.returncode == 0, created.stderr
    project = tmp_path / "acme"
    assert tailor("init", "acme").returncode == 2  # never over a folder that holds anything

    generated = tmp_path / "generated"
    generate(generated, n_users=800, n_items=200, days=35, end=DATA_END, seed=7, fmt="csv")
    rows = write_company_files(generated, project)
    (project / "sql" / "interactions.sql").write_text(ORDER_LINES_SQL)
    config = project / "tailor.yaml"
    text = config.read_text()
    for old, new in (
        ("path: data/interactions/*.csv", "path: data/order_lines/*.csv"),
        ("    # inputs:", "    inputs:"),
        ("    #   orders: data/orders/*.csv", "      orders: data/orders/*.csv"),
        # small data on a shared 2-core machine: one thread spins less, and early stopping needs few trees
        ("  runs_dir: var/runs", "  threads: 1\n  runs_dir: var/runs"),
        ("  training_windows: 3 ", "  n_estimators: 150\n  training_windows: 3 "),
    ):
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)

    checked = tailor("check", "--config", "acme/tailor.yaml", "--json", timeout=120)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    result = json.loads(checked.stdout)
    assert result["run"]["run_date"] == RUN_DATE.isoformat()
    assert result["tables"]["interactions"]["rows"] == rows["interactions"]  # every line found its order
    assert result["tables"]["interactions"]["files"] == 35
    assert {name: result["tables"][name]["rows"] for name in rows} == rows

    published = tmp_path / "published"
    run = tailor(
        "run", "--config", "acme/tailor.yaml", "--run-date", RUN_DATE.isoformat(),
        "--target", f"file://{published}", "--json", timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    summary = json.loads(run.stdout[run.stdout.index("{") :])
    assert summary["extracted"]["interactions"] == rows["interactions"]
    latest = json.loads((published / "latest.json").read_text())
    assert latest["run_date"] == RUN_DATE.isoformat()
    manifest = json.loads((published / latest["manifest"]).read_text())
    files = [file["path"] for dataset in manifest["datasets"].values() for file in dataset["files"]]
    assert any(path.startswith("recommendations") for path in files)
    for path in files:
        assert (run_folder(published, RUN_DATE) / path).is_file(), path
    # the company's folder holds its own warehouse and nothing of Tailor's code
    assert (project / "var" / "tailor.duckdb").is_file()
    assert not any((project / name).exists() for name in ("tailor", "tasks", "flows"))


PROBE = """
import importlib.util, json
import tailor, tailor.tasks.extract, tailor.sql_models
print(json.dumps({
    "tailor": tailor.__file__,
    "tailor.tasks.extract": tailor.tasks.extract.__file__,
    "tailor.sql_models": list(tailor.sql_models.__path__)[0],
    "importable": {name: importlib.util.find_spec(name) is not None for name in ("tasks", "flows", "sql")},
}))
"""
