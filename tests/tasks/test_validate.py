from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tailor.tasks.validate import QualityReport, activity_frame, run_suite

from tailor.config import ConfigError
from tailor.quality import ExpectationSpec, load_suite, load_suites, resolve_kwargs
from tailor.schema import TABLES

CUTOFF = datetime(2026, 1, 3)
INTERACTIONS = load_suites("raw")["interactions"]


def events(**overrides) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "_row_key": [1, 2],
            "_source_file": ["f1", "f1"],
            "user_id": ["u1", "u2"],
            "item_id": ["i1", "i1"],
            "event_type": ["view", "purchase"],
            "occurred_at": pd.to_datetime(["2026-01-02 10:00", "2026-01-02 11:00"]),
            "_n_invalid_values": [0, 0],
            "_rating": [None, None],
            "_purchase_value": [None, 1999.0],
            "_user_is_known": [True, True],
            "_item_is_known": [True, True],
            "_is_duplicate": [False, False],
        }
    )
    for column, values in overrides.items():
        frame[column] = values
    return frame


def failed(checks) -> dict[str, list[int]]:
    return {c.rule: c.row_keys for c in checks if not c.success}


def test_every_shipped_suite_loads_and_names_real_expectations() -> None:
    raw, features = load_suites("raw"), load_suites("features")
    assert set(raw) == set(TABLES)  # every canonical table has its suite
    assert set(features) == {"user_features", "item_features", "ranking_examples", "propensity_examples"}
    assert {e.severity for s in raw.values() for e in s.expectations} == {"critical", "warning"}


def test_clean_rows_pass_every_expectation() -> None:
    checks = run_suite("interactions", events(), INTERACTIONS.expectations, CUTOFF)
    assert len(checks) == len(INTERACTIONS.expectations) and not failed(checks)


def test_failing_rows_are_named_by_row_key_for_quarantine() -> None:
    frame = events(
        user_id=["u1", None],
        occurred_at=pd.to_datetime(["2026-01-02 10:00", "2026-01-05 00:00"]),
        event_type=["teleport", "purchase"],
        _purchase_value=[None, -5.0],
    )
    checks = run_suite("interactions", frame, INTERACTIONS.expectations, CUTOFF)
    assert failed(checks) == {
        "user_id_present": [2],
        "not_in_future": [2],
        "known_event_type": [1],
        "purchase_value_not_negative": [2],
    }
    bad_type = next(c for c in checks if c.rule == "known_event_type")
    assert bad_type.sample == ["teleport"] and bad_type.quarantine and bad_type.severity == "warning"


def test_report_summary_and_message() -> None:
    checks = run_suite("interactions", events(_is_duplicate=[False, True]), INTERACTIONS.expectations, CUTOFF)
    report = QualityReport(checks, {"interactions": 1})
    summary = report.summary()
    assert summary["failed_warning"] == 1 and summary["failed_critical"] == 0 and summary["success"] is True
    assert summary["quarantined_rows"] == {"interactions": 1}
    assert (
        "interactions: not_a_duplicate (expect_column_values_to_be_in_set on _is_duplicate) failed for 1 of 2"
        in (summary["failures"][0])
    )


def test_relative_time_bounds() -> None:
    resolved = resolve_kwargs({"column": "t", "min_value": "cutoff-10d", "max_value": "cutoff"}, CUTOFF)
    assert resolved["min_value"] == pd.Timestamp("2025-12-24")
    assert resolved["max_value"] < pd.Timestamp(CUTOFF) and resolved["column"] == "t"


def test_volume_and_freshness_inputs() -> None:
    history = [(date(2026, 1, d), 100) for d in range(1, 15)] + [(date(2026, 1, 15), 10)]
    frame = activity_frame(history, date(2026, 1, 16), INTERACTIONS)
    assert frame["volume_ratio"][0] == pytest.approx(0.1) and frame["lag_days"][0] == 1
    short = activity_frame(history[:3], date(2026, 1, 20), INTERACTIONS)
    assert pd.isna(short["volume_ratio"][0]) and short["lag_days"][0] == 17


def test_a_bad_suite_file_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "interactions.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "table": "interactions",
                "stage": "raw",
                "expectations": [{"rule": "x", "type": "expect_column_values_to_be_nice", "kwarg": {}}],
            }
        )
    )
    with pytest.raises(ConfigError) as error:
        load_suite(path)
    assert "interactions.yaml" in str(error.value)
    assert "expectations.0.type" in str(error.value) and "expectations.0.kwarg': unknown key" in str(
        error.value
    )
    with pytest.raises(ValueError, match="lower_snake_case"):
        ExpectationSpec(rule="Bad Rule", type="expect_column_values_to_not_be_null")


def test_chunked_validation_agrees_with_one_pass(company: Path, monkeypatch) -> None:
    import tailor.tasks.validate as validate
    from tailor.tasks.extract import extract_sources

    from tailor.config import load_settings
    from tailor.warehouse import connect, run_context

    events = company / "sources" / "interactions" / "2026-11-20.csv"
    lines = events.read_text().splitlines()
    events.write_text("\n".join([lines[0], *lines[1:], lines[1]]) + "\n")  # one duplicate event in a file
    settings = load_settings(company / "tailor.yaml")
    ctx = run_context(settings, date(2026, 11, 21))

    def gate_outcome() -> dict[str, tuple[bool, int, int]]:
        loads = extract_sources.fn(settings, ctx)
        validate.validate_sources.fn(settings, ctx, loads)
        with connect(settings) as con:
            rows = con.execute(
                "select table_name || '.' || rule, is_success, unexpected_count, rows_checked "
                "from meta.data_quality_results where stage = 'raw'"
            ).fetchall()
            quarantined = con.execute("select count(*) from quarantine.interactions").fetchall()[0][0]
        return {name: (ok, n, checked) for name, ok, n, checked in rows} | {"quarantined": quarantined}

    one_pass = gate_outcome()
    monkeypatch.setattr(validate, "CHUNK_ROWS", 3000)  # interactions in about seven chunks of files
    chunked = gate_outcome()
    assert chunked == one_pass
    assert one_pass["interactions.not_a_duplicate"][:2] == (False, 1) and one_pass["quarantined"] == 1
