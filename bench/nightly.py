"""Benchmark: the nightly flow end to end, and each stage beside the fastest thing that could do its work.

    python bench/nightly.py --users 100000 --night first    # the first load into an empty warehouse
    python bench/nightly.py --users 100000 --night steady   # the next night: one more day of sources

Generates a company (Parquet sources: USERS users, 20,000 items, 91 days, about 76 interactions per user),
starts a real SeaweedFS S3 server on a free loopback port, and runs the real nightly flow (Prefect, in this
process) publishing to it. `first` loads the first 90 days into an empty warehouse (run date 2026-11-21) and
keeps a copy of the warehouse it leaves; `steady` starts from that copy and runs the next night (2026-11-22),
which loads the 91st day, as a company's every night does. Each night runs in a process of its own, so its
peak memory is its own. A sampler thread reads this process's resident memory and CPU time every 50 ms;
each stage's wall time, CPU time and peak memory come from the samples inside its task run's window (start
and end from the Prefect API). Then, on the same data in the same process, the limits:

- extract:  DuckDB reading the same source files (the night's) straight into a table (rows/s);
- validate: one scan of the same columns of the rows the night loaded, into Arrow (seconds);
- scoring:  raw `Booster.predict` of the ranker on a feature matrix of the same candidates (rows/s);
- publish:  one boto3 `upload_file` of as many bytes as the run published, to the same server (MB/s).

Prints a table and writes `nightly-<night>.json` under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TAILOR_PSEUDONYM_KEY", "bench")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tailor")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

# the company's data ends on 2026-11-21; the first load sees the days before its run date, the steady
# night then the last day
END = date(2026, 11, 21)
RUN_DATES = {"first": date(2026, 11, 21), "steady": date(2026, 11, 22)}
BUCKET = "bench"
PAGE = os.sysconf("SC_PAGE_SIZE")
PREDICT_SAMPLE_ROWS = 2_000_000
# the stages that turn candidates into scores (a local run streams them; shards run them per shard)
SCORING_STAGES = ("prepare-scoring", "tailor-score-shards", "score-candidates")
# The candidate profile for a large company, the same at every size: about 60 candidates per user instead
# of about 125, and co-occurrence from 10 recent items x 20 neighbours instead of 20 x 30. Candidate count
# is the lever on scoring, examples and similarity (see docs/performance.md).
LEAN_RANKING = {
    "popular_candidates": 20,
    "category_candidates": 10,
    "top_categories": 2,
    "similar_candidates": 15,
    "new_candidates": 5,
    "recent_items": 10,
    "neighbours": 20,
}


RETRAIN_EVERY_DAYS = 7


class Sampler(threading.Thread):
    """(wall time, RSS bytes, process CPU seconds) every `interval` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.running = interval, [], True

    def run(self) -> None:
        with open("/proc/self/statm") as statm:
            while self.running:
                statm.seek(0)
                rss = int(statm.read().split()[1]) * PAGE
                self.samples.append((time.time(), rss, time.process_time()))
                time.sleep(self.interval)

    def window(self, start: float, end: float) -> dict[str, float]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            inside = [min(self.samples, key=lambda s: abs(s[0] - end))]
        return {
            "cpu_s": round(inside[-1][2] - inside[0][2], 1),
            "peak_rss_mb": round(max(s[1] for s in inside) / 2**20),
        }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_config(company: Path, endpoint: str, prefix: str, memory_limit: str) -> Path:
    import yaml

    config = yaml.safe_load((company / "tailor.yaml").read_text())
    config["storage"] = {"endpoint_url": endpoint}
    config["publish"]["target"] = f"s3://{BUCKET}/{prefix}"
    config["warehouse"] |= {"threads": 2, "memory_limit": memory_limit}
    config["ranking"] = config.get("ranking", {}) | LEAN_RANKING
    # a large company trains weekly and scores every night (docs/performance.md)
    config["registry"] = config.get("registry", {}) | {"retrain_every_days": RETRAIN_EVERY_DAYS}
    path = company / "bench.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stage_windows(flow_run_id: Any) -> list[tuple[str, float, float]]:
    """(name, start, end) of every task run and subflow of the nightly flow run, in start order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    finished = sorted((r for r in runs if r.start_time and r.end_time), key=lambda r: r.start_time)
    return [(r.name.rsplit("-", 1)[0], r.start_time.timestamp(), r.end_time.timestamp()) for r in finished]


def night_files(folder: Path, run_date: date, night: str) -> list[str]:
    """The source files a night loads: every file dated before the first run date, then one day's."""
    first = RUN_DATES["first"]
    wanted = (lambda d: d < first) if night == "first" else (lambda d: first <= d < run_date)
    return sorted(str(f) for f in folder.glob("*.parquet") if wanted(date.fromisoformat(f.stem)))


def extract_limit(company: Path, scratch: Path, run_date: date, night: str) -> dict[str, float]:
    """DuckDB loading the night's source files straight into a table, no checks, no lineage."""
    import duckdb

    path = scratch / "limit.duckdb"
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path), config={"threads": 2})
    started, rows = time.perf_counter(), 0
    for folder in sorted((company / "sources").iterdir()):
        files = night_files(folder, run_date, night)
        if files:
            con.execute(f"create table {folder.name} as select * from read_parquet($files)", {"files": files})
            rows += con.execute(f"select count(*) from {folder.name}").fetchall()[0][0]
    seconds = time.perf_counter() - started
    con.close()
    path.unlink(missing_ok=True)
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds)}


def validate_limit(settings: Any, run_date: date) -> dict[str, float]:
    """One scan of the columns of the rows the night loaded, into Arrow: what any check of every value must
    at least read."""
    from tailor.schema import SOURCE_FILE, TABLES
    from tailor.warehouse import connect

    started, rows = time.perf_counter(), 0
    with connect(settings) as con:
        for name, table in TABLES.items():
            columns = ", ".join(f'"{c.name}"' for c in table.columns)
            rows += con.sql(
                f"select {columns} from raw.{name} where {SOURCE_FILE} in (select file_uri from "
                "meta.loaded_files where source = $source and loaded_run_date = $run_date)",
                params={"source": name, "run_date": run_date},
            ).to_arrow_table().num_rows
    return {"rows": rows, "seconds": round(time.perf_counter() - started, 1)}


def predict_limit(settings: Any, models: dict[str, Any], run_date: date) -> dict[str, float]:
    """Raw Booster.predict on a prebuilt matrix of the same candidates' features."""
    import lightgbm as lgb

    from tailor.tasks.train import RANKING_FEATURES, feature_matrix
    from tailor.warehouse import connect, run_context

    ctx = run_context(settings, run_date)
    with connect(settings) as con:
        frame = con.sql(
            "select * from features.ranking_examples where cutoff = $cutoff limit $n",
            params={"cutoff": ctx.cutoff, "n": PREDICT_SAMPLE_ROWS},
        ).pl()
    matrix = feature_matrix(frame, RANKING_FEATURES, {})
    booster = lgb.Booster(model_file=models["ranking"]["path"])
    started = time.perf_counter()
    booster.predict(matrix)
    seconds = time.perf_counter() - started
    return {"rows": len(matrix), "seconds": round(seconds, 2), "rows_per_s": round(len(matrix) / seconds)}


def upload_limit(endpoint: str, scratch: Path, size: int) -> dict[str, float]:
    """One boto3 upload_file of `size` bytes to the same server."""
    import boto3

    blob = scratch / "upload-limit.bin"
    with open(blob, "wb") as out:
        chunk = os.urandom(8 * 2**20)
        for written in range(0, size, len(chunk)):
            out.write(chunk[: min(len(chunk), size - written)])
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    started = time.perf_counter()
    client.upload_file(str(blob), BUCKET, "limit/upload-limit.bin")
    seconds = time.perf_counter() - started
    blob.unlink()
    return {"bytes": size, "seconds": round(seconds, 2), "mb_per_s": round(size / 2**20 / seconds, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    for name in ("tailor", "tasks", "flows"):
        logging.getLogger(name).setLevel(logging.INFO)
    from tailor.generate import generate
    from tailor.s3server import SeaweedServer, free_port

    timings: dict[str, Any] = {}
    company = args.out / "company"
    warehouse, first_copy = company / "var", args.out / "after-first-load"
    if args.night == "first":
        if not (company / "tailor.yaml").exists():
            shutil.rmtree(company, ignore_errors=True)
            started = time.perf_counter()
            generate(company, args.users, args.items, args.days + 1, END, seed=42, fmt="parquet")
            timings["generate_s"] = round(time.perf_counter() - started, 1)
        shutil.rmtree(warehouse, ignore_errors=True)  # the first load starts from an empty warehouse
        shutil.rmtree(args.out / "scratch" / "s3", ignore_errors=True)
    else:
        if not first_copy.exists():
            raise SystemExit(f"no first load under {args.out}: run --night first before --night steady")
        shutil.rmtree(warehouse, ignore_errors=True)  # every steady night starts from the first load's state
        shutil.copytree(first_copy, warehouse)
    scratch = args.out / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    server = SeaweedServer(data_dir=scratch / "s3", s3_port=free_port(), buckets=(BUCKET,)).start()
    try:
        result = measure(args, company, scratch, server.endpoint_url, timings)
    finally:
        server.stop()
    if args.night == "first":
        shutil.rmtree(first_copy, ignore_errors=True)
        shutil.copytree(warehouse, first_copy)
    return result


def measure(
    args: argparse.Namespace, company: Path, scratch: Path, endpoint: str, timings: dict[str, Any]
) -> dict[str, Any]:
    from tailor.config import load_settings
    from tailor.flows.nightly import nightly
    from tailor.prefect_api import prefect_api
    from tailor.tasks.train import serving_models
    from tailor.warehouse import run_context

    run_date = RUN_DATES[args.night]
    config_path = bench_config(company, endpoint, f"nightly-{args.users}", args.memory_limit)
    sampler = Sampler()
    sampler.start()
    started = time.time()
    with prefect_api():  # the server Tailor supervises, as `tailor run` does
        state = nightly(config_path=str(config_path.resolve()), run_date=run_date, return_state=True)
    ended = time.time()
    sampler.running = False
    summary = state.result()
    flow_seconds = ended - started
    stages = []
    for name, start, end in stage_windows(state.state_details.flow_run_id):
        stages.append({"stage": name, "wall_s": round(end - start, 1), **sampler.window(start, end)})
    whole = sampler.window(started, ended)
    settings = load_settings(config_path)
    by_stage = {s["stage"]: s["wall_s"] for s in stages}
    rows_loaded = sum(summary["extracted"].values())
    extract = extract_limit(company, scratch, run_date, args.night)
    validate = validate_limit(settings, run_date)
    predict = predict_limit(settings, serving_models.fn(settings, run_context(settings, run_date)), run_date)
    manifest_bytes = published_size(settings, run_date)
    upload = upload_limit(endpoint, scratch, manifest_bytes)
    scoring_seconds = sum(by_stage.get(s, 0.0) for s in SCORING_STAGES)
    candidates = summary["scored"]["scored_candidates"]
    limits = {
        "extract": {"tailor_rows_per_s": round(rows_loaded / by_stage["extract"]), "limit": extract},
        "validate": {"tailor_s": by_stage["validate-sources"], "limit": validate},
        "scoring": {
            "tailor_rows_per_s": round(candidates / scoring_seconds),
            "tailor_stage_rows_per_s": round(candidates / (scoring_seconds + by_stage.get("score", 0.0))),
            "limit": predict,
        },
        "publish": {
            "tailor_mb_per_s": round(manifest_bytes / 2**20 / by_stage["upload"], 1),
            "limit": upload,
        },
    }
    limits["extract"]["ratio"] = round(limits["extract"]["tailor_rows_per_s"] / extract["rows_per_s"], 2)
    limits["validate"]["ratio"] = round(validate["seconds"] / limits["validate"]["tailor_s"], 3)
    limits["scoring"]["ratio"] = round(limits["scoring"]["tailor_rows_per_s"] / predict["rows_per_s"], 2)
    limits["publish"]["ratio"] = round(limits["publish"]["tailor_mb_per_s"] / upload["mb_per_s"], 2)
    return {
        "users": args.users,
        "night": args.night,
        "run_date": run_date.isoformat(),
        "items": args.items,
        "days": args.days,
        "memory_limit": args.memory_limit,
        **timings,
        "rows_loaded": summary["extracted"],
        "interactions_per_user": round(summary["extracted"]["interactions"] / args.users, 1),
        "trained": sorted(name for name, m in summary["models"].items() if m.get("trained", True)),
        "scored": summary["scored"],
        "published_bytes": manifest_bytes,
        "flow_wall_s": round(flow_seconds, 1),
        "flow_cpu_s": whole["cpu_s"],
        "flow_peak_rss_mb": whole["peak_rss_mb"],
        "process_peak_rss_mb": round(peak_rss_mb()),
        "stages": stages,
        "limits": limits,
        "machine": {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30),
        },
    }


def published_size(settings: Any, run_date: date) -> int:
    """Bytes of every file the run uploaded: its local copy under the run folder."""
    from tailor.warehouse import run_context

    folder = run_context(settings, run_date).run_dir / "publish"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['night']} night, {result['users']:,} users, {result['days']} days: {result['flow_wall_s']} s wall, "
          f"{result['flow_cpu_s']} s CPU, peak {result['flow_peak_rss_mb']:,} MB")  # fmt: skip
    print(f"{'stage':<28} {'wall s':>8} {'CPU s':>8} {'peak MB':>9}")
    for stage in result["stages"]:
        print(
            f"{stage['stage']:<28} {stage['wall_s']:>8.1f} {stage['cpu_s']:>8.1f} {stage['peak_rss_mb']:>9,}"
        )
    print(f"\n{'limit':<10} {'tailor':>14} {'limit':>14} {'ratio':>7}")
    limits = result["limits"]
    print(f"{'extract':<10} {limits['extract']['tailor_rows_per_s']:>10,} r/s {limits['extract']['limit']['rows_per_s']:>10,} r/s {limits['extract']['ratio']:>7}")  # fmt: skip
    print(f"{'validate':<10} {limits['validate']['tailor_s']:>12} s {limits['validate']['limit']['seconds']:>12} s {limits['validate']['ratio']:>7}")  # fmt: skip
    print(f"{'scoring':<10} {limits['scoring']['tailor_rows_per_s']:>10,} r/s {limits['scoring']['limit']['rows_per_s']:>10,} r/s {limits['scoring']['ratio']:>7}")  # fmt: skip
    print(f"{'publish':<10} {limits['publish']['tailor_mb_per_s']:>9} MB/s {limits['publish']['limit']['mb_per_s']:>9} MB/s {limits['publish']['ratio']:>7}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90, help="days of history the first load sees")
    parser.add_argument("--night", choices=("first", "steady"), default="first")
    parser.add_argument("--memory-limit", default="4GB", help="DuckDB's memory limit for the run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or Path(f"var/bench/nightly-{args.users}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    (args.out / f"nightly-{args.night}.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
