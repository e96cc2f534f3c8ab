"""Benchmark: precompute and publish every output for a large company.

    python bench/outputs.py --users 1000000 --days 28 --out var/bench/outputs

Generates a company (Parquet sources), then runs every stage of the nightly run as task functions in this
process (extract, validate, features, train, score, segments, variants, write, upload to a local folder),
timing each, and reads the peak memory of the process (DuckDB, LightGBM and Python share it). The first
stages are timed too, but the figure this benchmark is for is score + segments + variants + write + upload:
turning tonight's models into every published dataset. Prints a table and writes `outputs.json`.

Candidate sources are trimmed for this size (see CANDIDATES): the ranker scores every candidate of every
user, and candidate count is the lever that sets the scoring time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("TAILOR_PSEUDONYM_KEY", "bench")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

CANDIDATES = {
    "ranking.popular_candidates": 20,
    "ranking.category_candidates": 10,
    "ranking.top_categories": 2,
    "ranking.similar_candidates": 15,
    "ranking.new_candidates": 5,
}
OUTPUT_STAGES = ("score", "segments", "variants", "write", "upload")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(timings: dict[str, float], memory: dict[str, float], name: str, action: Any) -> Any:
    started = time.perf_counter()
    result = action()
    timings[name] = round(time.perf_counter() - started, 1)
    memory[name] = round(peak_rss_mb())
    print(f"  {name:<10} {timings[name]:>8.1f} s   peak RSS so far {memory[name]:>7,.0f} MB", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--out", type=Path, default=Path("var/bench/outputs"))
    parser.add_argument(
        "--outputs-only",
        action="store_true",
        help="after a full run: redo score to upload in a fresh process, for the output stages' own peak memory",
    )
    args = parser.parse_args()
    if args.outputs_only:
        return outputs_only(args.out)

    from tailor.config import load_settings
    from tailor.generate import generate
    from tailor.warehouse import run_context
    from tasks.experiments import analyse_experiments
    from tasks.extract import extract_sources
    from tasks.fairness import audit_fairness
    from tasks.features import build_features
    from tasks.privacy import erase_deleted_users
    from tasks.publish import upload_run, write_datasets
    from tasks.report import write_report
    from tasks.score import score_users
    from tasks.segments import build_segments
    from tasks.train import train_models
    from tasks.validate import combine, validate_features, validate_sources
    from tasks.variants import assign_variants

    end = date(2026, 11, 20)
    timings: dict[str, float] = {}
    memory: dict[str, float] = {}
    if not (args.out / "tailor.yaml").exists():
        timed(timings, memory, "generate",
              lambda: generate(args.out, args.users, args.items, args.days, end, seed=42, fmt="parquet"))  # fmt: skip
    settings = load_settings(
        args.out / "tailor.yaml",
        {**CANDIDATES, "item_audiences.categories": ["books", "electronics"], "warehouse.threads": 2},
    )
    ctx = run_context(settings, end + timedelta(days=1))
    loads = timed(timings, memory, "extract", lambda: extract_sources.fn(settings, ctx))
    timed(timings, memory, "erase", lambda: erase_deleted_users.fn(settings, ctx))
    source_quality = timed(timings, memory, "validate", lambda: validate_sources.fn(settings, ctx, loads))
    timed(timings, memory, "features", lambda: build_features.fn(settings, ctx))
    quality = combine(source_quality, validate_features.fn(settings, ctx))
    models = timed(timings, memory, "train", lambda: train_models.fn(settings, ctx))
    timed(timings, memory, "experiments", lambda: analyse_experiments.fn(settings, ctx, models))
    scored = timed(timings, memory, "score", lambda: score_users(settings, ctx, models))
    segments = timed(timings, memory, "segments", lambda: build_segments.fn(settings, ctx, models))
    campaigns = timed(timings, memory, "variants", lambda: assign_variants(settings, ctx, models))
    timed(timings, memory, "fairness", lambda: audit_fairness.fn(settings, ctx))
    timed(timings, memory, "report", lambda: write_report.fn(settings, ctx))
    local = timed(timings, memory, "write",
                  lambda: write_datasets.fn(settings, ctx, models, quality, {"segments": segments, "campaigns": campaigns}))  # fmt: skip
    target = "file://" + str((args.out / "published").resolve())
    timed(timings, memory, "upload", lambda: upload_run.fn(settings, ctx, local, target))
    manifest = json.loads((local / "manifest.json").read_text())
    result = {
        "users": args.users,
        "items": args.items,
        "days": args.days,
        "rows_loaded": {name: load.rows_loaded for name, load in loads.items()},
        "scored": scored,
        "published_rows": {name: d["rows"] for name, d in manifest["datasets"].items()},
        "published_bytes": sum(f["bytes"] for d in manifest["datasets"].values() for f in d["files"]),
        "stage_seconds": timings,
        "outputs_seconds": round(sum(timings[s] for s in OUTPUT_STAGES), 1),
        "peak_rss_mb_after_stage": memory,
        "peak_rss_mb": round(peak_rss_mb()),
        "machine": {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    (args.out / "outputs.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def outputs_only(out: Path) -> int:
    """Score to upload again on the warehouse a full run left, with tonight's models from the registry."""
    from tailor.config import load_settings
    from tailor.warehouse import connect, run_context
    from tasks.fairness import audit_fairness
    from tasks.publish import upload_run, write_datasets
    from tasks.report import write_report
    from tasks.score import score_users
    from tasks.segments import build_segments
    from tasks.variants import assign_variants

    settings = load_settings(
        out / "tailor.yaml",
        {**CANDIDATES, "item_audiences.categories": ["books", "electronics"], "warehouse.threads": 2},
    )
    ctx = run_context(settings, date(2026, 11, 21))
    with connect(settings) as con:
        rows = con.execute(
            "select model_json, decision from meta.models where run_date = $d and is_promoted",
            {"d": ctx.run_date},
        ).fetchall()
    models = {}
    for model_json, decision in rows:
        model = json.loads(model_json)
        models[model["name"]] = model | {"decision": decision}
    timings: dict[str, float] = {}
    memory: dict[str, float] = {"before": round(peak_rss_mb())}
    quality = {"success": True}
    timed(timings, memory, "score", lambda: score_users(settings, ctx, models))
    segments = timed(timings, memory, "segments", lambda: build_segments.fn(settings, ctx, models))
    campaigns = timed(timings, memory, "variants", lambda: assign_variants(settings, ctx, models))
    timed(timings, memory, "fairness", lambda: audit_fairness.fn(settings, ctx))
    timed(timings, memory, "report", lambda: write_report.fn(settings, ctx))
    local = timed(timings, memory, "write",
                  lambda: write_datasets.fn(settings, ctx, models, quality, {"segments": segments, "campaigns": campaigns}))  # fmt: skip
    target = "file://" + str((out / "published").resolve())
    timed(timings, memory, "upload", lambda: upload_run.fn(settings, ctx, local, target))
    result = {
        "stage_seconds": timings,
        "outputs_seconds": round(sum(timings.values()), 1),
        "peak_rss_mb_after_stage": memory,
        "peak_rss_mb": round(peak_rss_mb()),
    }
    (out / "outputs_only.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
