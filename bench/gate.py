"""Benchmark: the data-quality gate (extract excluded) on a large interactions load.

    python bench/gate.py --users 200000 --days 60 --out var/bench/gate

Generates a company (about 50 interactions per user over 60 days), extracts it, then times the
`validate_sources` task (Great Expectations on every loaded row, quarantine, volume and freshness) and
reads its peak memory from the process's resource usage. Prints a table and writes `gate.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

os.environ.setdefault("TAILOR_PSEUDONYM_KEY", "bench")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("var/bench/gate"))
    parser.add_argument("--gate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gate_only:
        return gate_only(args.out)

    from tailor.config import load_settings
    from tailor.generate import generate
    from tailor.tasks.extract import extract_sources
    from tailor.warehouse import connect, run_context

    end = date(2026, 11, 20)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if not (args.out / "tailor.yaml").exists():
        generate(args.out, args.users, args.items, args.days, end, seed=42, fmt="parquet")
    timings["generate_s"] = time.perf_counter() - started

    settings = load_settings(args.out / "tailor.yaml")
    ctx = run_context(settings, end + timedelta(days=1))
    started = time.perf_counter()
    loads = extract_sources.fn(settings, ctx)
    timings["extract_s"] = time.perf_counter() - started
    with connect(settings) as con:
        interactions = con.execute("select count(*) from raw.interactions").fetchall()[0][0]

    # the gate in a process of its own, so its peak memory is its own
    gate_run = subprocess.run(
        [sys.executable, __file__, "--out", str(args.out), "--gate-only"],
        check=True,
        capture_output=True,
        text=True,
    )
    gate = json.loads(gate_run.stdout.strip().splitlines()[-1])
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "users": args.users,
        "interactions": interactions,
        "rows_loaded": {name: load.rows_loaded for name, load in loads.items()},
        **{key: round(value, 1) for key, value in timings.items()},
        **gate,
        "gate_rows_per_s": round(sum(load.rows_loaded for load in loads.values()) / gate["gate_s"]),
    }
    print(f"{'metric':<26}{'value':>16}")
    for key, value in result.items():
        if not isinstance(value, dict):
            print(f"{key:<26}{value!s:>16}")
    (args.out / "gate.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def gate_only(out: Path) -> int:
    from tailor.config import load_settings
    from tailor.tasks.validate import validate_sources
    from tailor.warehouse import run_context

    settings = load_settings(out / "tailor.yaml")
    ctx = run_context(settings, date(2026, 11, 21))
    baseline = peak_rss_mb()
    started = time.perf_counter()
    summary = validate_sources.fn(settings, ctx, {})
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "gate_s": round(elapsed, 1),
                "gate_peak_rss_mb": round(peak_rss_mb()),
                "process_rss_before_gate_mb": round(baseline),
                "checks": summary["expectations"],
                "gate_success": summary["success"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
