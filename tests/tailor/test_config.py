from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tailor.config import ConfigError, load_settings
from tests.conftest import REPO


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "tailor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def minimal() -> dict:
    return {
        "project": "acme",
        "sources": {
            name: {"path": f"data/{name}/*.csv"} for name in ("users", "consents", "items", "interactions")
        },
        "publish": {"target": "file://out", "published_user_id": "external"},
    }


def test_demo_config_loads_and_resolves_paths_against_its_folder() -> None:
    settings = load_settings(REPO / "config" / "demo.yaml")
    assert settings.publish.target == "s3://tailor/demo"
    assert settings.resolve(settings.warehouse.path) == (REPO / "var/demo/warehouse/tailor.duckdb").resolve()
    assert {c.campaign_id for c in settings.campaigns} == {"weekly_digest", "app_nudge"}
    assert len(settings.config_sha256) == 64


def test_unknown_key_names_file_and_dotted_key(tmp_path: Path) -> None:
    data = minimal() | {"propensity": {"horizon_dayz": 7}}
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, data))
    assert "tailor.yaml" in str(error.value)
    assert "propensity.horizon_dayz" in str(error.value)
    assert "unknown key" in str(error.value)


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    data = minimal() | {"recommendations": {"k": "ten"}}
    with pytest.raises(ConfigError, match=r"recommendations\.k"):
        load_settings(write(tmp_path, data))


def test_missing_required_value_and_source(tmp_path: Path) -> None:
    data = minimal()
    del data["publish"]
    del data["sources"]["items"]
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, data))
    message = str(error.value)
    assert "'publish': required value missing" in message
    assert "items" in message


def test_unknown_canonical_column_in_mapping(tmp_path: Path) -> None:
    data = minimal()
    data["sources"]["users"]["columns"] = {"shoe_size": "shoe"}
    with pytest.raises(ConfigError, match="shoe_size"):
        load_settings(write(tmp_path, data))


def test_pseudonymous_ids_need_the_key_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    data = minimal()
    data["publish"]["published_user_id"] = "pseudonymous"
    monkeypatch.delenv("TAILOR_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="TAILOR_PSEUDONYM_KEY"):
        load_settings(write(tmp_path, data))
    monkeypatch.setenv("TAILOR_PSEUDONYM_KEY", "k")
    assert load_settings(write(tmp_path, data)).pseudonym_key() == b"k"


def test_bad_timezone_and_target_scheme(tmp_path: Path) -> None:
    data = minimal() | {"timezone": "Mars/Olympus"}
    data["publish"]["target"] = "ftp://somewhere"
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, data))
    assert "timezone" in str(error.value) and "publish.target" in str(error.value)


def test_campaign_variants_must_be_unique(tmp_path: Path) -> None:
    data = minimal() | {
        "campaigns": [
            {
                "campaign_id": "c",
                "channel": "email",
                "variants": [{"variant_id": "a", "subject": "x"}, {"variant_id": "a", "subject": "y"}],
            }
        ]
    }
    with pytest.raises(ConfigError, match=r"campaigns\.0"):
        load_settings(write(tmp_path, data))


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
