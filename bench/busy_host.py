"""`tailor run` on a busy host: as many spinning processes as cores, a fresh PREFECT_HOME, no Prefect settings.

    python bench/busy_host.py --runs 5 [--users 800] [--out var/bench/busy]

Generates a small company, then runs `tailor run --quiet` RUNS times in a row (each a new night on the same
warehouse: the first a first load, the rest reruns of the night) while the spinners run, and prints per run
its exit code, wall time, the temporary server's start-up time (from the run's log file) and the load average.
Afterwards it checks that no Prefect server is left. Exit code 0 only if every run succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

RUN_DATE = date(2026, 11, 21)
SPIN = "while True: pass"


def clean_env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        AWS_ACCESS_KEY_ID=env.get("AWS_ACCESS_KEY_ID", "bench"),
        AWS_SECRET_ACCESS_KEY=env.get("AWS_SECRET_ACCESS_KEY", "bench-secret"),
        TAILOR_PSEUDONYM_KEY=env.get("TAILOR_PSEUDONYM_KEY", "bench-pseudonym-key"),
    )
    return env


def server_seconds(log_file: Path) -> float | None:
    """The temporary server's start-up time, as the run logged it."""
    ready = re.search(r"temporary server on \S+ \(pid \d+, ready in ([\d.]+)s", log_file.read_text())
    return float(ready.group(1)) if ready else None


def leftover_servers() -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"tailor.prefect_api" in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--users", type=int, default=800)
    parser.add_argument("--spinners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=Path("var/bench/busy"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    company = args.out / "company"
    subprocess.run(
        [sys.executable, "-m", "tailor.cli", "generate", "--users", str(args.users), "--items", "200",
         "--days", "35", "--end", "2026-11-20", "--seed", "7", "--out", str(company)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = clean_env((args.out / "prefect-home").resolve())
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.spinners)]
    results = []
    try:
        time.sleep(5)  # let the load average climb
        for number in range(1, args.runs + 1):
            started = time.monotonic()
            run = subprocess.run(
                [sys.executable, "-m", "tailor.cli", "run", "--config", str(company / "tailor.yaml"),
                 "--run-date", RUN_DATE.isoformat(), "--quiet"],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            logs = sorted((company / "var" / "runs" / "logs").glob("*-run-*.log"))
            result = {
                "run": number,
                "exit_code": run.returncode,
                "wall_seconds": round(time.monotonic() - started, 1),
                "server_start_seconds": server_seconds(logs[-1]) if logs else None,
                "load_average_1m": round(os.getloadavg()[0], 2),
                "stderr": run.stderr.strip()[-300:],
            }
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    time.sleep(2)
    left = leftover_servers()
    print(json.dumps({"succeeded": sum(r["exit_code"] == 0 for r in results), "runs": len(results),
                      "spinners": args.spinners, "leftover_servers": left}))  # fmt: skip
    return 0 if all(r["exit_code"] == 0 for r in results) and not left else 1


if __name__ == "__main__":
    sys.exit(main())
