from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tailor.config import ConfigError
from tailor.quality import ExpectationSpec, load_suite, load_suites, resolve_kwargs
from tailor.schema import TABLES
from tailor.tasks.validate import QualityReport, activity_frame, run_suite

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
            "quantity": [None, 1.0],
            "_abs_quantity": [None, 1.0],
            "unit_price_cents": [None, 1999],
            "_user_is_known": [True, True],
            "_item_is_known": [True, True],
            "_is_duplicate": [False, False],
            "_return_follows_purchase": [None, None],
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


def test_a_misspelled_suite_key_gets_the_closest_valid_key_and_a_far_one_none(tmp_path: Path) -> None:
    path = tmp_path / "interactions.yaml"
    expectation = {"rule": "x", "type": "expect_column_values_to_not_be_null", "kwarg": {}, "colour": "red"}
    suite = {
        "table": "interactions",
        "stage": "raw",
        "expectations": [expectation],
        "volume": {"min_ratoi": 0.5},
    }
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError) as error:
        load_suite(path)
    assert str(error.value) == (
        f"{path}: key 'expectations.0.colour': unknown key; "
        "key 'expectations.0.kwarg': unknown key (did you mean 'kwargs'?); "
        "key 'volume.min_ratoi': unknown key (did you mean 'min_ratio'?)"
    )


def test_chunked_validation_agrees_with_one_pass(company: Path, monkeypatch) -> None:
    import tailor.tasks.validate as validate
    from tailor.config import load_settings
    from tailor.tasks.extract import extract_sources
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


def test_order_line_rules_catch_zero_and_huge_quantities_and_negative_prices() -> None:
    frame = pd.concat([events().iloc[[1]]] * 5, ignore_index=True)  # five clean purchase lines, then:
    frame["_row_key"] = [1, 2, 3, 4, 5]
    frame["quantity"] = [2.0, 0.0, -1.0, 80_995.0, 1.0]
    frame["_abs_quantity"] = frame["quantity"].abs()
    frame["unit_price_cents"] = [150, 150, 150, 1, -100]
    # row 3 is a cancellation: the gate reads its amount as no purchase's, so it may be negative
    frame["_purchase_value"] = [300.0, 0.0, None, 80_995.0, 100.0]
    frame["_return_follows_purchase"] = [None, None, True, None, None]
    checks = run_suite("interactions", frame, INTERACTIONS.expectations, CUTOFF)
    assert failed(checks) == {
        "quantity_not_zero": [2],
        "quantity_plausible": [4],
        "unit_price_not_negative": [5],
    }
    assert all(c.quarantine for c in checks if not c.success)


def test_a_return_without_an_earlier_purchase_is_a_warning_not_quarantine() -> None:
    frame = events(event_type=["purchase", "return"], _purchase_value=[1999.0, None],
                   quantity=[1.0, -1.0], _abs_quantity=[1.0, 1.0], unit_price_cents=[1999, 1999],
                   _return_follows_purchase=[None, False])  # fmt: skip
    checks = run_suite("interactions", frame, INTERACTIONS.expectations, CUTOFF)
    assert failed(checks) == {"return_follows_purchase": []}  # no row keys: nothing is quarantined
    rule = next(c for c in checks if c.rule == "return_follows_purchase")
    assert rule.severity == "warning" and not rule.quarantine and rule.unexpected_count == 1


def test_an_exposure_propensity_outside_the_unit_interval_is_quarantined_by_file_and_row() -> None:
    suite = load_suites("raw")["campaign_exposures"]
    n = 5
    frame = pd.DataFrame(
        {
            "_row_key": range(1, n + 1),
            "_source_file": ["f1", "f1", "f1", "f2", "f2"],
            "campaign_id": ["c1"] * n,
            "user_id": [f"u{i}" for i in range(n)],
            "sent_at": pd.to_datetime(["2026-01-02 10:00"] * n),
            "_latest_event_at": pd.to_datetime(["2026-01-02 10:00"] * n),
            "revenue_cents": [0] * n,
            # 0 and 1.5 are not probabilities a policy sent with; 1 is (a certain send), none is allowed
            "propensity": [0.25, 0.0, 1.0, 1.5, None],
            "_n_invalid_values": [0] * n,
            "_user_is_known": [True] * n,
        }
    )
    checks = run_suite("campaign_exposures", frame, suite.expectations, CUTOFF)
    assert failed(checks) == {"propensity_in_unit_interval": [2, 4]}
    rule = next(c for c in checks if c.rule == "propensity_in_unit_interval")
    assert rule.quarantine and rule.files == ["f1", "f2"]
    assert "in f1, f2" in rule.describe()


def test_items_with_a_negative_price_are_caught() -> None:
    items = load_suites("raw")["items"]
    frame = pd.DataFrame(
        {
            "_row_key": [1, 2, 3],
            "_source_file": ["f1"] * 3,
            "item_id": ["a", "b", "c"],
            "published_at": pd.to_datetime(["2026-01-01"] * 3),
            "price_cents": [199, -5, None],
            "_n_invalid_values": [0, 0, 0],
        }
    )
    checks = run_suite("items", frame, items.expectations, CUTOFF)
    assert failed(checks) == {"price_not_negative": [2]}


def test_the_gate_rows_know_returns_duplicates_across_orders_and_line_facts() -> None:
    """sql/checks/raw_interactions.sql on hand-made rows: which return follows a purchase, and that the
    same item at the same instant in two orders is no duplicate."""
    from tailor.sql import query
    from tests import tiny

    con = tiny.warehouse()
    at = datetime(2026, 2, 20, 10)
    later = datetime(2026, 2, 21, 10)
    tiny.insert(con, "interactions", [
        {"user_id": "u1", "item_id": "i1", "event_type": "purchase", "occurred_at": at, "order_id": "o1", "quantity": 2.0},
        {"user_id": "u1", "item_id": "i1", "event_type": "purchase", "occurred_at": at, "order_id": "o2", "quantity": 2.0},
        {"user_id": "u1", "item_id": "i1", "event_type": "purchase", "occurred_at": at, "order_id": "o2", "quantity": 2.0},
        {"user_id": "u1", "item_id": "i1", "event_type": "purchase", "occurred_at": later, "order_id": "C1", "quantity": -1.0, "value": -300.0},
        {"user_id": "u1", "item_id": "i2", "event_type": "Return", "occurred_at": later, "quantity": 1.0},
        {"user_id": "u2", "item_id": "i1", "event_type": "purchase", "occurred_at": at, "quantity": -1.0},
    ])  # fmt: skip
    rows = (
        query(con, "checks/raw_interactions", {"run_date": tiny.RUN_DATE, "files": ["f1"]})
        .pl()
        .sort("_row_key")
    )
    assert rows["_is_duplicate"].to_list() == [False, False, True, False, False, False]
    assert rows["_return_follows_purchase"].to_list() == [None, None, None, True, False, False]
    assert rows["_purchase_value"].to_list() == [None, None, None, None, None, None]  # no values given
    assert rows["_abs_quantity"].to_list() == [2.0, 2.0, 2.0, 1.0, 1.0, 1.0]


# --- a rejected run leaves the warehouse as it was ------------------------------------------------------

RUN_DAY = date(2026, 11, 21)


def warehouse_state(settings) -> tuple:
    """raw.users and meta.loaded_files, by row count and a checksum of every row."""
    from tailor.warehouse import connect

    with connect(settings) as con:
        return tuple(
            con.execute(
                "select (select count(*) from raw.users), "
                "(select md5(string_agg(cast(u as varchar), '|' order by _row_key)) from raw.users u), "
                "(select count(*) from meta.loaded_files), "
                "(select md5(string_agg(cast(f as varchar), '|' order by source, file_uri)) "
                " from meta.loaded_files f)"
            ).fetchall()[0]
        )


def night(settings, day: date) -> dict:
    """Extract, erasure and the source gate, as a nightly run does them."""
    from tailor.tasks.extract import extract_sources, gated_loads
    from tailor.tasks.privacy import erase_deleted_users
    from tailor.tasks.validate import validate_sources
    from tailor.warehouse import run_context

    ctx = run_context(settings, day)
    with gated_loads(settings, ctx):
        loads = extract_sources.fn(settings, ctx)
        erase_deleted_users.fn(settings, ctx)
        return validate_sources.fn(settings, ctx, loads)


def halve(path: Path) -> bytes:
    """Rewrite the file in place with half its rows; return what it held."""
    original = path.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    path.write_text("".join(lines[: 1 + (len(lines) - 1) // 2]))
    return original


def test_a_half_snapshot_redelivered_in_place_fails_the_gate_and_keeps_the_old_rows(company: Path) -> None:
    from tailor.config import load_settings
    from tailor.tasks.validate import DataQualityError

    settings = load_settings(company / "tailor.yaml")
    assert night(settings, RUN_DAY)["success"]
    before = warehouse_state(settings)
    snapshot = company / "sources" / "users" / "2026-10-17.csv"  # the users known before the data starts
    original = halve(snapshot)
    # the same night again, then the next one: each replaces the file's rows, and its gate rejects them
    for day in (RUN_DAY, RUN_DAY + timedelta(days=1)):
        with pytest.raises(DataQualityError, match="nothing published"):
            night(settings, day)
        assert warehouse_state(settings) == before, day
    snapshot.write_bytes(original)
    assert night(settings, RUN_DAY)["success"]
    assert warehouse_state(settings)[0] == before[0]


def test_a_run_killed_between_extract_and_the_gate_is_rolled_back_by_the_next(company: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tailor.config import load_settings
    from tailor.tasks.extract import resolve_pending
    from tailor.warehouse import connect

    settings = load_settings(company / "tailor.yaml")
    assert night(settings, RUN_DAY)["success"]
    before = warehouse_state(settings)
    snapshot = company / "sources" / "users" / "2026-10-17.csv"
    original = halve(snapshot)
    # another process loads the half file and dies before its gate, as a SIGKILL leaves it
    script = (
        "import os, signal, sys\n"
        "from datetime import date\n"
        "from tailor.config import load_settings\n"
        "from tailor.tasks.extract import extract_sources\n"
        "from tailor.warehouse import run_context\n"
        "settings = load_settings(sys.argv[1])\n"
        "extract_sources.fn(settings, run_context(settings, date.fromisoformat(sys.argv[2])))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(company / "tailor.yaml"), (RUN_DAY + timedelta(days=1)).isoformat()],
        env=os.environ.copy(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert warehouse_state(settings)[0] < before[0]  # the half file's rows replaced the old ones
    snapshot.write_bytes(original)
    # the next run finds the dead run's marker and puts the warehouse back before it loads anything
    with connect(settings) as con:
        resolve_pending(con)
    assert warehouse_state(settings) == before
    assert night(settings, RUN_DAY)["success"]
    assert warehouse_state(settings)[0] == before[0]


def test_the_gate_keeps_no_chunk_in_great_expectations_after_checking_it() -> None:
    # GX caches every batch it validates: kept, a million users' 77 chunks of 1M rows held 23 GB
    from tailor.quality import load_suites
    from tailor.tasks.validate import Gate

    gate = Gate("raw")
    frame = pd.DataFrame({"user_id": ["u1", "u2", None], "_row_key": [1, 2, 3], "_source_file": ["f", "f", "f"]})
    specs = [spec for spec in load_suites("raw", None)["interactions"].expectations if spec.rule == "user_id_present"]
    checks = gate.run("interactions", frame, specs, datetime(2026, 11, 21))
    assert [(c.rule, c.success, c.unexpected_count, c.row_keys) for c in checks] == [("user_id_present", False, 1, [3])]
    engine = gate.source.get_execution_engine()
    assert engine.batch_manager.batch_data_cache == {} and engine.batch_manager.batch_cache == {}
