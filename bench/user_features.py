"""Measure: does what a company knows about its customers beyond Tailor's 90-day features make the
propensity model better, on real data?

    python bench/user_features.py --config examples/online-retail/tailor.yaml --run-date 2011-11-26

Extracts the sources, builds the features (with the config's user_features), then trains the propensity
model twice on the same examples and holdout: with Tailor's features alone, and with the company's
declared attributes and SQL features too. Prints both beside the recency and frequency baselines and
writes `user_features.json` next to the warehouse.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import date
from pathlib import Path

os.environ.setdefault("TAILOR_PSEUDONYM_KEY", "bench")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--run-date", type=date.fromisoformat, required=True)
    args = parser.parse_args()

    import lightgbm as lgb
    import numpy as np

    from tailor import metrics
    from tailor.config import UserFeaturesConfig, load_settings
    from tailor.sql import read_partition
    from tailor.tasks.extract import extract_sources
    from tailor.tasks.features import build_features, cutoffs_for
    from tailor.tasks.train import feature_matrix, predict_propensity, train_propensity
    from tailor.warehouse import connect, run_context

    settings = load_settings(args.config)
    ctx = run_context(settings, args.run_date)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    extract_sources.fn(settings, ctx)
    build_features.fn(settings, ctx)
    cuts = cutoffs_for(settings, ctx)
    without = settings.model_copy(update={"user_features": UserFeaturesConfig()})
    rows: dict[str, dict] = {}
    predictions = {}
    with connect(settings) as con:
        holdout = read_partition(con, "features/propensity_examples", cuts.propensity_holdout, ("user_id",)).pl()
        for label, chosen in (("tailor features", without), ("with the company's features", settings)):
            model = train_propensity(con, chosen, ctx, cuts)
            rows[label] = {key: model.metrics[key] for key in ("roc_auc", "pr_auc", "log_loss", "brier")} | {
                "features": len(model.features)
            }
            matrix = feature_matrix(holdout, tuple(model.features), model.categories)
            booster = lgb.Booster(model_file=model.path)
            predictions[label] = predict_propensity(booster, matrix, model.params["calibration"])
        for name, baseline in model.metrics["baselines"].items():
            rows[f"baseline {name}"] = {"roc_auc": baseline["roc_auc"], "log_loss": baseline["log_loss"]}
        # a paired bootstrap over holdout users: is the gain larger than the holdout's own noise?
        labels = holdout["is_converted"].to_numpy()
        rng = np.random.default_rng(settings.seed)
        gains = []
        for _ in range(500):
            pick = rng.integers(0, labels.size, labels.size)
            gains.append(
                metrics.roc_auc(labels[pick], predictions["with the company's features"][pick])
                - metrics.roc_auc(labels[pick], predictions["tailor features"][pick])
            )
        low, high = np.percentile(gains, [2.5, 97.5])
        rows["roc_auc gain"] = {"estimate": float(np.mean(gains)), "ci_low": float(low), "ci_high": float(high)}
        rows["holdout"] = {
            "users": model.metrics["holdout_users"],
            "positive_rate": model.metrics["holdout_positive_rate"],
        }
    for label, row in rows.items():
        print(f"{label:32s} " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    out = Path(settings.resolve(settings.warehouse.path)).parent / "user_features.json"
    out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
