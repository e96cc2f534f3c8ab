from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from tailor.schema import TABLES
from tasks.validate import DataQualityError, QualityReport, run_suite

CUTOFF = datetime(2026, 1, 3)


def events(**overrides) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "item_id": ["i1", "i1"],
            "event_type": ["view", "purchase"],
            "occurred_at": pd.to_datetime(["2026-01-02 10:00", "2026-01-02 11:00"]),
            "_source_file": ["f1", "f1"],
        }
    )
    for column, values in overrides.items():
        frame[column] = values
    return frame


def failed(checks) -> set[tuple[str, str]]:
    return {(c.expectation, c.column) for c in checks if not c.success}


def test_clean_rows_pass_every_expectation() -> None:
    checks = run_suite(TABLES["interactions"], events(), CUTOFF)
    assert len(checks) == 7 and not failed(checks)


def test_null_key_future_time_and_unknown_event_type_fail() -> None:
    frame = events(
        user_id=["u1", None],
        occurred_at=pd.to_datetime(["2026-01-02 10:00", "2026-01-05 00:00"]),
        event_type=["view", "teleport"],
    )
    checks = run_suite(TABLES["interactions"], frame, CUTOFF)
    assert failed(checks) == {
        ("expect_column_values_to_not_be_null", "user_id"),
        ("expect_column_values_to_be_between", "occurred_at"),
        ("expect_column_values_to_be_in_set", "event_type"),
    }
    bad_type = next(c for c in checks if c.expectation == "expect_column_values_to_be_in_set")
    assert bad_type.unexpected_count == 1 and bad_type.sample == ["teleport"]


def test_duplicate_key_within_a_file_fails_across_files_does_not() -> None:
    same = events(
        user_id=["u1", "u1"], event_type=["view", "view"], occurred_at=pd.to_datetime(["2026-01-02"] * 2)
    )
    assert ("expect_compound_columns_to_be_unique", "user_id+item_id+event_type+occurred_at") in failed(
        run_suite(TABLES["interactions"], same, CUTOFF)
    )
    across = same.assign(_source_file=["f1", "f2"])
    assert not failed(run_suite(TABLES["interactions"], across, CUTOFF))


def test_report_summary_and_error_message_name_table_and_expectation() -> None:
    checks = run_suite(TABLES["interactions"], events(user_id=["u1", None]), CUTOFF)
    report = QualityReport(checks)
    summary = report.summary()
    assert summary["failed_critical"] == 1 and summary["success"] is False
    message = "; ".join(c.describe() for c in report.critical_failures)
    assert "interactions: expect_column_values_to_not_be_null on user_id failed for 1 row(s)" in message
    assert issubclass(DataQualityError, RuntimeError)


def test_validate_task_stores_results_and_raises(company) -> None:
    from datetime import date

    from tailor.config import load_settings
    from tailor.warehouse import connect, run_context
    from tasks.extract import extract_sources
    from tasks.validate import validate_sources

    future = company / "sources" / "interactions" / "2026-11-20.csv"
    with future.open("a") as handle:
        handle.write("u001,i001,view,2027-01-01 00:00:00,\n")
    settings = load_settings(company / "tailor.yaml")
    ctx = run_context(settings, date(2026, 11, 21))
    extract_sources.fn(settings, ctx)
    with pytest.raises(
        DataQualityError, match="interactions: expect_column_values_to_be_between on occurred_at"
    ):
        validate_sources.fn(settings, ctx)
    with connect(settings) as con:
        rows = con.execute(
            "select table_name, column_name, unexpected_count from meta.data_quality_results where not is_success"
        ).fetchall()
        left = con.execute(
            "select count(*) from raw.interactions where _loaded_run_date = $d", {"d": ctx.run_date}
        ).fetchall()[0][0]
        remembered = con.execute("select count(*) from meta.loaded_files").fetchall()[0][0]
    assert rows == [("interactions", "occurred_at", 1)]
    # a failed gate forgets what its run loaded: the next run checks those files again
    assert left == 0 and remembered == 0
