from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from tailor.config import load_settings
from tailor.generate import WEEKDAY_FACTOR, generate, window_conversion_probability

END = date(2026, 3, 31)


def digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted((folder / "sources").rglob("*")):
        if path.is_file():
            sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    generate(tmp_path / "a", 300, 60, 14, END, seed=1)
    generate(tmp_path / "b", 300, 60, 14, END, seed=1)
    generate(tmp_path / "c", 300, 60, 14, END, seed=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_daily_files_config_and_truth(small_company: Path) -> None:
    interactions = sorted((small_company / "sources" / "interactions").glob("*.csv"))
    assert len(interactions) == 35 and interactions[-1].name == "2026-11-20.csv"
    for table in ("users", "consents", "items", "campaign_exposures"):
        assert list((small_company / "sources" / table).glob("*.csv")), table
    settings = load_settings(small_company / "tailor.yaml")
    assert set(settings.sources) == {"users", "consents", "items", "interactions", "campaign_exposures",
                                     "deletion_requests"}  # fmt: skip
    # one user in a thousand asks to be erased, at least one, in the last week of the window
    requests = pl.read_csv(next((small_company / "sources" / "deletion_requests").glob("*.csv")))
    assert requests.columns == ["user_id", "requested_at"] and requests.height >= 1
    truth = pl.read_parquet(small_company / "truth" / "users.parquet")
    assert truth.height == 800 and truth["daily_purchase_prob"].is_between(0, 1).all()


def test_structure_the_models_can_learn(tmp_path: Path) -> None:
    generate(tmp_path, 3000, 400, 28, END, seed=3, fmt="parquet")
    events = pl.read_parquet(tmp_path / "sources" / "interactions" / "*.parquet")
    # long tail: the top 10% of items draw far more than 10% of views
    views = (
        events.filter(pl.col("event_type") == "view").group_by("item_id").len().sort("len", descending=True)
    )
    top_share = views.head(len(views) // 10)["len"].sum() / views["len"].sum()
    assert top_share > 0.35
    # weekly seasonality: weekend days carry more events than midweek days
    per_weekday = events.group_by(pl.col("occurred_at").dt.weekday().alias("weekday")).len().sort("weekday")
    counts = dict(zip(per_weekday["weekday"], per_weekday["len"], strict=True))
    assert counts[6] > counts[2] * 1.15  # Saturday vs Tuesday, simulated 1.2 vs 0.85
    # campaign outcomes depend on the user: the best variant differs between users
    variants = pl.read_parquet(tmp_path / "truth" / "campaign_variants.parquet")
    best = variants.filter(pl.col("is_best_variant") & (pl.col("campaign_id") == "weekly_digest"))
    shares = best.group_by("variant_id").len()["len"].to_numpy() / best.height
    assert len(shares) == 3 and shares.min() > 0.05
    # purchases follow the true daily propensity: top-decile users buy more than bottom-decile users
    truth = pl.read_parquet(tmp_path / "truth" / "users.parquet")
    buyers = events.filter(pl.col("event_type") == "purchase").group_by("user_id").len()
    joined = truth.join(buyers, on="user_id", how="left").with_columns(pl.col("len").fill_null(0))
    decile = joined.with_columns(
        pl.col("daily_purchase_prob").qcut(10, labels=[str(i) for i in range(10)]).alias("d")
    )
    means = decile.group_by("d").agg(pl.col("len").mean()).sort("d")["len"].to_numpy()
    assert means[-1] > 3 * means[0]


def test_window_probability_uses_weekday_factors() -> None:
    p = np.array([0.0, 0.1])
    result = window_conversion_probability(p, date(2026, 11, 23), 2)  # a Monday and a Tuesday
    expected = 1 - (1 - 0.1 * WEEKDAY_FACTOR[0]) * (1 - 0.1 * WEEKDAY_FACTOR[1])
    assert result[0] == 0.0 and result[1] == np.float64(expected)


def test_a_generated_config_publishes_pseudonyms_not_the_raw_ids(small_company: Path) -> None:
    # a copy of the generated file pointed at real data must not publish real ids
    settings = load_settings(small_company / "tailor.yaml")
    assert settings.publish.published_user_id == "pseudonymous"
    assert settings.pseudonym_key() is not None
