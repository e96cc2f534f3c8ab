"""`sources.<table>.sql` and `inputs`: a company's SQL beside its config, checked when the config loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tailor.config import ConfigError, load_settings
from tests.conftest import REPO


def write(root: Path, interactions: dict) -> Path:
    sources = {name: {"path": f"data/{name}/*.csv"} for name in ("users", "consents", "items")}
    data = {
        "project": "acme",
        "sources": {**sources, "interactions": {"path": "data/lines/*.csv", **interactions}},
        "publish": {"target": "file://out", "published_user_id": "external"},
    }
    path = root / "tailor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_sql_path_is_relative_to_the_config_and_a_bare_name_is_built_in(tmp_path: Path) -> None:
    (tmp_path / "mapping").mkdir()
    (tmp_path / "mapping" / "events.sql").write_text("select * from read_csv($file)\n")
    settings = load_settings(write(tmp_path, {"sql": "mapping/events.sql"}))
    assert settings.source_sql_path("interactions") == tmp_path / "mapping" / "events.sql"
    assert not settings.sources["interactions"].builtin_sql
    movielens = load_settings(REPO / "config" / "movielens.yaml")
    assert movielens.sources["users"].builtin_sql
    assert movielens.source_sql_path("users").name == "movielens_users.sql"
    assert movielens.source_sql_path("users").parent.name == "sources"


def test_a_missing_sql_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, {"sql": "sql/interactions.sql"}))
    message = str(error.value)
    assert "key 'sources.interactions.sql'" in message
    assert str(tmp_path / "sql" / "interactions.sql") in message and "does not exist" in message


def test_a_missing_built_in_sql_is_a_config_error_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'sources\.interactions\.sql'.*movielens_ratingz\.sql"):
        load_settings(write(tmp_path, {"sql": "movielens_ratingz"}))


@pytest.mark.parametrize(
    ("name", "why"),
    [("Orders", "lowercase identifier"), ("1st", "lowercase identifier"), ("file", "is taken"),
     ("run_date", "is taken"), ("order-lines", "lowercase identifier")],
)  # fmt: skip
def test_input_names_are_identifiers_that_clash_with_nothing_extract_binds(
    tmp_path: Path, name: str, why: str
) -> None:
    (tmp_path / "q.sql").write_text("select * from read_csv($file)\n")
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, {"sql": "q.sql", "inputs": {name: "data/x/*.csv"}}))
    assert "sources.interactions.inputs" in str(error.value) and why in str(error.value)


def test_inputs_need_sql_to_read_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\.interactions.*set sql as well"):
        load_settings(write(tmp_path, {"inputs": {"orders": "data/orders/*.csv"}}))


def test_sql_reading_a_parameter_it_is_not_given_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "q.sql").write_text(
        "-- $comments may name anything\n"
        "select * from read_csv($file) join read_csv($ordres) using (order_id)\n"
    )
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, {"sql": "q.sql", "inputs": {"orders": "data/orders/*.csv"}}))
    message = str(error.value)
    assert "key 'sources.interactions.sql'" in message and "$ordres" in message
    assert "$comments" not in message and "$orders" in message  # what it is given
    (tmp_path / "q.sql").write_text("select * from read_csv($file) join read_csv($orders) using (order_id)\n")
    settings = load_settings(write(tmp_path, {"sql": "q.sql", "inputs": {"orders": "data/orders/*.csv"}}))
    assert settings.sources["interactions"].inputs == {"orders": "data/orders/*.csv"}
