"""Profile of build-features: seconds per SQL model, summed over cutoffs and buckets.

    python bench/profile_features.py var/bench/nightly-100000/company/bench.yaml

Run after bench/nightly.py has loaded the company (the warehouse holds its raw tables). Rebuilds the
night's features as the nightly flow does, with every materialization timed, and writes
`features_profile.json` beside the config.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TAILOR_PSEUDONYM_KEY", "bench")

RUN_DATE = date(2026, 11, 21)


def main() -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("tailor").setLevel(logging.INFO)
    import tailor.tasks.features as features
    from tailor.config import load_settings
    from tailor.warehouse import run_context

    config = Path(sys.argv[1])
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timed(function: Any) -> Any:
        def wrapper(con: Any, model: str, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(con, model, *args, **kwargs)
            finally:
                seconds[model] += time.perf_counter() - started
                calls[model] += 1

        return wrapper

    features.materialize = timed(features.materialize)
    features.materialize_partition = timed(features.materialize_partition)
    settings = load_settings(config)
    started = time.perf_counter()
    features.build_features.fn(settings, run_context(settings, RUN_DATE))
    total = time.perf_counter() - started
    profile = {
        "total_s": round(total, 1),
        "models": {
            m: {"seconds": round(s, 1), "calls": calls[m]}
            for m, s in sorted(seconds.items(), key=lambda x: -x[1])
        },
    }
    (config.parent / "features_profile.json").write_text(json.dumps(profile, indent=2) + "\n")
    print(f"build-features: {total:.1f} s")
    for model, entry in profile["models"].items():
        print(f"  {model:<40} {entry['seconds']:>8.1f} s  {entry['calls']:>3} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
