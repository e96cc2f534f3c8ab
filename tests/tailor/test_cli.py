from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tailor.cli import build_parser, format_summary, main, summary_rows


def test_help_explains_every_option(capsys) -> None:
    for command, options in (
        ("generate", ["--users", "--items", "--days", "--end", "--seed", "--format", "--out"]),
        ("run", ["--config", "--run-date", "--target"]),
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        for option in options:
            assert option in text, (command, option)


def test_bad_config_fails_fast_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"project": "x", "sourcez": {}}))
    result = subprocess.run(
        [sys.executable, "-m", "tailor.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("tailor: error: ")
    assert "bad.yaml" in result.stderr and "'sourcez': unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_presign_takes_what_s3_can_sign_and_backfill_does_not_take_it(capsys) -> None:
    assert build_parser().parse_args(["run", "--config", "c.yaml", "--presign", "604800"]).presign == 604800
    for argv in (["run", "--config", "c.yaml", "--presign", "604801"], ["run", "--config", "c.yaml", "--presign", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
    assert "7 days" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["backfill", "--config", "c.yaml", "--start", "2026-11-01", "--end", "2026-11-02",
                                   "--presign", "60"])  # fmt: skip


def test_a_config_mistake_is_reported_before_prefect_or_lightgbm_is_even_imported(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"project": "x", "recommendations": {"max_per_categroy": 3}}))
    probe = (
        "import sys; from tailor.cli import main; code = main(['run', '--config', sys.argv[1]]); "
        "print(code, sorted(m for m in ('prefect', 'lightgbm', 'great_expectations', 'duckdb') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[0] == "2 []", result.stdout + result.stderr
    assert "did you mean 'max_per_category'?" in result.stderr


def test_bad_dates_are_rejected_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--config", "c.yaml", "--run-date", "27/11/2026"])
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_generate_command_writes_a_runnable_company(tmp_path: Path, capsys) -> None:
    assert (
        main(
            [
                "generate",
                "--users",
                "50",
                "--items",
                "20",
                "--days",
                "14",
                "--end",
                "2026-02-01",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "interactions" in capsys.readouterr().out
    assert (tmp_path / "tailor.yaml").exists()
    assert len(list((tmp_path / "sources" / "interactions").glob("*.csv"))) == 14


def test_summary_mentions_where_and_what(trained_company) -> None:
    models = trained_company[2]
    summary = {
        "run_date": "2026-11-21",
        "wall_seconds": 1.0,
        "extracted": {"users": 10},
        "data_quality": {"passed": 3, "expectations": 3, "failed_warning": 0},
        "models": {name: {"version": m["version"], "metrics": m["metrics"]} for name, m in models.items()},
        "segments": {"segments": 7, "item_audiences": 3, "clustering": {"clusters": 4}},
        "campaigns": {"c": {"policy": "bandit", "users_by_arm": {"a": 5, "holdout": 1}}},
        "experiments": {
            "c": {
                "units_by_arm": {"a": 40, "holdout": 5},
                "is_trusted": False,
                "sample_ratio_p_value": 1e-5,
                "significant": ["a:click_rate"],
                "uplift": {"a": {"qini_coefficient": 0.0123, "uplift_at_10": 0.1}},
            }
        },
        "published": {
            "target": "s3://b/p",
            "files": ["s3://b/p/runs/x/part-0000.parquet"],
            "manifest": "s3://b/p/runs/x/manifest.json",
            "report": "s3://b/p/runs/x/report.html",
            "latest": "s3://b/p/latest.json",
            "latest_moved": True,
        },
    }
    text = format_summary(summary)
    assert "s3://b/p/latest.json" in text and "NDCG@10" in text and "ROC AUC" in text and "3/3" in text
    assert "4 behavioural clusters" in text and "bandit" in text and "holdout 1" in text
    assert "SAMPLE-RATIO MISMATCH (p < 0.001)" in text and "a:click_rate" in text and "Qini 0.0123" in text
    assert "s3://b/p/runs/x/report.html" in text
    # with the links a person opens, the report line gives them instead of the s3:// URI
    summary["published"]["links"] = {
        "report": {"open": "https://example/report.html", "presigned": "https://signed", "expires_in_seconds": 3600},
        "data_docs": [{"open": "/srv/published/runs/x/data_docs/raw/index.html"}],
    }
    text = format_summary(summary)
    assert "report: https://example/report.html\n" in text
    assert "report without credentials (for 3,600 s): https://signed" in text
    assert "data docs: /srv/published/runs/x/data_docs/raw/index.html" in text
    # the closing table for a terminal: one row per stage, each saying what the stage produced
    summary |= {
        "feature_rows": {"user_features": 70, "candidates": 30},
        "scored": {"scored_users": 9, "scored_candidates": 90, "shards": 2, "recommendations": 80},
        "models": {name: m | {"decision": None} for name, m in summary["models"].items()},
    }
    rows = dict(summary_rows(summary))
    assert list(rows) == ["extract", "validate", "features", "train", "score", "segments", "variants", "publish"]
    assert rows["features"] == "100 rows in 2 tables" and rows["validate"] == "3/3 checks passed"
    assert rows["score"] == "9 users, 90 candidates in 2 shard(s), 80 recommendations"
    assert rows["variants"] == "c 6 users" and rows["publish"] == "1 files to s3://b/p"


def test_readme_documents_every_canonical_column_and_starts_with_the_commands() -> None:
    from tailor.schema import TABLES
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    first_lines = "\n".join(readme.splitlines()[:5])
    assert "make demo" in first_lines and "make test" in first_lines
    for table in TABLES.values():
        assert f"`{table.name}`" in readme
        for column in table.columns:
            assert f"`{column.name}`" in readme, f"{table.name}.{column.name} is not documented"


def test_quiet_prints_nothing_json_prints_json_and_errors_always_show(tmp_path, capsys) -> None:
    import argparse
    import json

    from tailor.cli import main, report

    summary = {"run_date": "2026-11-21", "n": 3}
    report(argparse.Namespace(json=False, quiet=True), summary, lambda s: "text")
    assert capsys.readouterr().out == ""
    report(argparse.Namespace(json=True, quiet=True), summary, lambda s: "text")
    assert json.loads(capsys.readouterr().out) == summary
    report(argparse.Namespace(json=False, quiet=False), summary, lambda s: f"ran {s['n']}")
    assert capsys.readouterr().out == "ran 3\n"
    # a quiet run that cannot start still says why, on stderr, with exit code 2
    assert main(["run", "--config", str(tmp_path / "missing.yaml"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "missing.yaml" in captured.err
