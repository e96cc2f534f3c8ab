"""Markdown tables from the nightly benchmark's JSON files, for docs/performance.md.

python bench/tables.py var/bench/nightly-100000 var/bench/nightly-300000 var/bench/nightly-1000000
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load(folders: list[str]) -> list[dict[str, Any]]:
    return [json.loads((Path(folder) / "nightly.json").read_text()) for folder in folders]


def headline(results: list[dict[str, Any]]) -> str:
    lines = [
        "| users | interactions (per user) | generate s | flow wall s | flow CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['users']:,} | {r['rows_loaded']['interactions']:,} ({r['interactions_per_user']}) | "
            f"{r.get('generate_s', '-')} | {r['flow_wall_s']:,} | {r['flow_cpu_s']:,} | {r['flow_peak_rss_mb']:,} |"
        )
    return "\n".join(lines)


def stages(results: list[dict[str, Any]]) -> str:
    names = [s["stage"] for s in results[-1]["stages"]]
    header = "| stage | " + " | ".join(f"{r['users'] // 1000}k wall / CPU / peak MB" for r in results) + " |"
    lines = [header, "|---|" + "---|" * len(results)]
    for name in names:
        cells = []
        for r in results:
            found = next((s for s in r["stages"] if s["stage"] == name), None)
            cells.append(f"{found['wall_s']} / {found['cpu_s']} / {found['peak_rss_mb']:,}" if found else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def limits(results: list[dict[str, Any]]) -> str:
    lines = ["| users | stage | Tailor | limit | ratio |", "|---|---|---|---|---|"]
    for r in results:
        lim = r["limits"]
        lines += [
            f"| {r['users']:,} | extract | {lim['extract']['tailor_rows_per_s']:,} rows/s | "
            f"{lim['extract']['limit']['rows_per_s']:,} rows/s | {lim['extract']['ratio']} |",
            f"| | validate | {lim['validate']['tailor_s']} s | {lim['validate']['limit']['seconds']} s (one scan) | "
            f"{lim['validate']['ratio']} |",
            f"| | scoring | {lim['scoring']['tailor_rows_per_s']:,} rows/s | "
            f"{lim['scoring']['limit']['rows_per_s']:,} rows/s | {lim['scoring']['ratio']} |",
            f"| | publish | {lim['publish']['tailor_mb_per_s']} MB/s | {lim['publish']['limit']['mb_per_s']} MB/s | "
            f"{lim['publish']['ratio']} |",
        ]
    return "\n".join(lines)


def main() -> int:
    results = sorted(load(sys.argv[1:]), key=lambda r: r["users"])
    print(headline(results), stages(results), limits(results), sep="\n\n")
    print("\nmachine:", json.dumps(results[-1]["machine"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
