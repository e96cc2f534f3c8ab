"""Markdown tables from the nightly benchmark's JSON files, for docs/performance.md.

python bench/tables.py var/bench/nightly-100000 var/bench/nightly-300000 var/bench/nightly-1000000

Each folder holds `nightly-first.json` and `nightly-steady.json` (bench/nightly.py --night first|steady);
a night that was not run is left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NIGHTS = ("first", "steady")


def load(folders: list[str]) -> list[dict[str, Any]]:
    results = []
    for folder in folders:
        for night in NIGHTS:
            path = Path(folder) / f"nightly-{night}.json"
            if path.exists():
                results.append(json.loads(path.read_text()))
    return sorted(results, key=lambda r: (NIGHTS.index(r["night"]), r["users"]))


def headline(results: list[dict[str, Any]]) -> str:
    lines = [
        "| night | users | rows loaded | models trained | flow wall s | flow CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        trained = len(r.get("trained", [])) or "-"
        lines.append(
            f"| {r['night']} | {r['users']:,} | {sum(r['rows_loaded'].values()):,} | {trained} | "
            f"{r['flow_wall_s']:,} | {r['flow_cpu_s']:,} | {r['flow_peak_rss_mb']:,} |"
        )
    return "\n".join(lines)


def stages(results: list[dict[str, Any]]) -> str:
    names: list[str] = []
    for r in results:
        names += [s["stage"] for s in r["stages"] if s["stage"] not in names]
    header = "| stage | " + " | ".join(f"{r['night']} {r['users'] // 1000}k" for r in results) + " |"
    lines = [header, "|---|" + "---|" * len(results)]
    for name in names:
        cells = []
        for r in results:
            found = next((s for s in r["stages"] if s["stage"] == name), None)
            cells.append(f"{found['wall_s']} / {found['cpu_s']} / {found['peak_rss_mb']:,}" if found else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def limits(results: list[dict[str, Any]]) -> str:
    lines = ["| night | users | stage | Tailor | limit | ratio |", "|---|---|---|---|---|---|"]
    for r in results:
        lim = r["limits"]
        lines += [
            f"| {r['night']} | {r['users']:,} | extract | {lim['extract']['tailor_rows_per_s']:,} rows/s | "
            f"{lim['extract']['limit']['rows_per_s']:,} rows/s | {lim['extract']['ratio']} |",
            f"| | | validate | {lim['validate']['tailor_s']} s | {lim['validate']['limit']['seconds']} s (one scan) | "
            f"{lim['validate']['ratio']} |",
            f"| | | scoring | {lim['scoring']['tailor_rows_per_s']:,} rows/s | "
            f"{lim['scoring']['limit']['rows_per_s']:,} rows/s | {lim['scoring']['ratio']} |",
            f"| | | publish | {lim['publish']['tailor_mb_per_s']} MB/s | {lim['publish']['limit']['mb_per_s']} MB/s | "
            f"{lim['publish']['ratio']} |",
        ]
    return "\n".join(lines)


def main() -> int:
    results = load(sys.argv[1:])
    print(headline(results), stages(results), limits(results), sep="\n\n")
    print("\nmachine:", json.dumps(results[-1]["machine"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
