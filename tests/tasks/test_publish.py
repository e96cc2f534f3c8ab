from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from tailor.warehouse import RunContext, connect
from tasks.publish import DATASETS, ConsentViolation, check_consent, pseudonymize, upload_run, write_parts


def test_pseudonyms_are_keyed_stable_and_not_the_id() -> None:
    frame = pl.DataFrame({"user_id": ["u1", "u2", "u1"], "x": [1, 2, 3]})
    once = pseudonymize(frame, b"k1")
    assert once["user_id"].to_list()[0] == once["user_id"].to_list()[2]
    assert not set(once["user_id"]) & {"u1", "u2"} and once["x"].to_list() == [1, 2, 3]
    assert pseudonymize(frame, b"k1").equals(once)
    assert not set(pseudonymize(frame, b"k2")["user_id"]) & set(once["user_id"])
    assert pseudonymize(frame, None).equals(frame)
    ordered = pseudonymize(pl.DataFrame({"user_id": [f"u{i:03d}" for i in range(50)]}), b"k", ["user_id"])
    assert ordered["user_id"].is_sorted()  # sorted by pseudonym, so row order says nothing of the raw ids


def test_manifest_values_are_strict_json() -> None:
    from tasks.publish import json_safe

    assert json_safe({"auc": float("nan"), "m": [1.0, float("inf")], "n": 2}) == {
        "auc": None,
        "m": [1.0, None],
        "n": 2,
    }


def test_parts_are_byte_identical_for_the_same_rows(tmp_path: Path) -> None:
    table = pa.table({"user_id": ["a", "b", "c"], "score": [0.3, 0.2, 0.1]})
    first = write_parts(table, tmp_path / "1", "recs", 2, ["parquet", "csv"])
    second = write_parts(table, tmp_path / "2", "recs", 2, ["parquet", "csv"])
    assert [f["path"] for f in first] == [
        "recs/part-0000.parquet",
        "recs/part-0000.csv",
        "recs/part-0001.parquet",
        "recs/part-0001.csv",
    ]
    assert [f["sha256"] for f in first] == [f["sha256"] for f in second]
    assert sum(f["rows"] for f in first if f["format"] == "parquet") == 3


def test_consent_check_refuses_rows_for_unconsented_users(trained_company) -> None:
    settings, _, _, _ = trained_company
    recommendations = next(d for d in DATASETS if d.name == "recommendations")
    with connect(settings) as con:
        refused = con.execute(
            "select user_id from staging.stg_consents where is_latest and purpose = 'profiling' "
            "and not is_granted limit 1"
        ).fetchall()[0][0]
        granted = con.execute(
            "select user_id from staging.stg_consents where is_latest and purpose = 'profiling' "
            "and is_granted limit 1"
        ).fetchall()[0][0]
        check_consent(con, recommendations, pl.DataFrame({"user_id": [granted]}), settings)
        with pytest.raises(ConsentViolation, match="recommendations: 1 row"):
            check_consent(con, recommendations, pl.DataFrame({"user_id": [granted, refused]}), settings)


def fake_run(tmp_path: Path, day: str) -> tuple[RunContext, Path]:
    run_dir = tmp_path / "runs" / day
    local = run_dir / "publish"
    table = pa.table({"user_id": ["a"]})
    files = write_parts(table, local, "recommendations", 10, ["parquet"])
    manifest = {"run_date": day, "datasets": {"recommendations": {"files": files}}}
    (local / "manifest.json").write_text(json.dumps(manifest))
    return RunContext(date.fromisoformat(day), None, run_dir, 1), local  # type: ignore[arg-type]


def test_latest_moves_forward_only_and_stale_files_go(tmp_path: Path, trained_company) -> None:
    settings = trained_company[0]
    target = f"file://{tmp_path / 'published'}"
    for day in ("2026-01-02", "2026-01-01"):
        ctx, local = fake_run(tmp_path, day)
        result = upload_run.fn(settings, ctx, local, target)
    assert result["latest_moved"] is False
    latest = json.loads((tmp_path / "published" / "latest.json").read_text())
    assert latest == {"run_date": "2026-01-02", "manifest": "runs/2026-01-02/manifest.json"}
    stale = tmp_path / "published" / "runs" / "2026-01-02" / "old" / "part-0000.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    ctx, local = fake_run(tmp_path, "2026-01-02")
    upload_run.fn(settings, ctx, local, target)
    assert not stale.exists()
