"""`tailor init DIR`: a company's project folder that loads and checks cleanly as written."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
import yaml

from tailor.cli import main
from tailor.config import REQUIRED_SOURCES, load_settings
from tailor.init import EXAMPLE_COLUMNS, InitError, init_project, project_name, skeleton_sql
from tailor.schema import TABLES


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
