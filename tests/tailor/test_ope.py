"""Off-policy estimators (tailor/ope.py) on simulated logs with a known answer, and on the Open Bandit sample:
BTS's click rate estimated from the uniform-random policy's logs, and the reverse."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tailor import ope
from tests.conftest import REPO

OPEN_BANDIT = REPO.parent / "shared" / "data" / "open-bandit-sample"


def simulated_logs(seed: int, n: int = 20_000) -> dict[str, np.ndarray]:
    """Three actions with click rates 0.02, 0.05, 0.10, logged uniformly; the target shows action 2 with
    probability 0.8 and the others 0.1 each, so its value is 0.1*0.02 + 0.1*0.05 + 0.8*0.10 = 0.087."""
    rng = np.random.default_rng(seed)
    rates = np.array([0.02, 0.05, 0.10])
    target = np.array([0.1, 0.1, 0.8])
    action = rng.integers(0, 3, n)
    reward = (rng.random(n) < rates[action]).astype(float)
    return {"reward": reward, "target": target[action], "logging": np.full(n, 1 / 3),
            "q_logged": rates[action], "q_target": np.full(n, float(target @ rates))}  # fmt: skip


TRUE_VALUE = 0.087


@pytest.mark.parametrize("seed", range(5))
def test_each_estimator_covers_the_true_value(seed: int) -> None:
    logs = simulated_logs(seed)
    estimates = [
        ope.ipw(logs["reward"], logs["target"], logs["logging"]),
        ope.snipw(logs["reward"], logs["target"], logs["logging"]),
        ope.doubly_robust(logs["reward"], logs["target"], logs["logging"], logs["q_logged"], logs["q_target"]),
    ]
    for estimate in estimates:
        assert estimate.ci_low <= TRUE_VALUE <= estimate.ci_high, estimate
    ipw, _, dr = estimates
    assert dr.se < ipw.se  # a right reward model leaves only the noise of the rewards
    assert 0 < ipw.effective_sample_size < logs["reward"].size


def test_a_row_without_a_propensity_is_refused() -> None:
    with pytest.raises(ope.OffPolicyError, match=r"propensity must be in \(0, 1\]"):
        ope.ipw(np.array([1.0, 0.0]), np.array([0.5, 0.5]), np.array([0.5, 0.0]))
    with pytest.raises(ope.OffPolicyError, match="differ in shape"):
        ope.ipw(np.array([1.0]), np.array([0.5, 0.5]), np.array([0.5, 0.5]))


def read(policy: str, campaign: str) -> pl.DataFrame:
    return pl.read_csv(OPEN_BANDIT / policy / campaign / f"{campaign}.csv.gz")


def shares_by_slot(logs: pl.DataFrame) -> pl.DataFrame:
    """A policy as the share of its impressions each item got in each slot over the week (context-free)."""
    return logs.group_by("position", "item_id").len().select(
        "position", "item_id", (pl.col("len") / pl.col("len").sum().over("position")).alias("target")
    )


@pytest.mark.skipif(not OPEN_BANDIT.exists(), reason="needs ../shared/data/open-bandit-sample (not in CI)")
@pytest.mark.parametrize("campaign", ["all", "men", "women"])
def test_bts_click_rate_estimated_from_the_random_logs_is_covered(campaign: str) -> None:
    random_logs, bts_logs = read("random", campaign), read("bts", campaign)
    logged = random_logs.join(shares_by_slot(bts_logs), on=["position", "item_id"], how="left").with_columns(
        pl.col("target").fill_null(0.0)
    )
    on_policy = bts_logs["click"].mean()
    for estimator in (ope.ipw, ope.snipw):
        estimate = estimator(logged["click"].to_numpy(), logged["target"].to_numpy(),
                             logged["propensity_score"].to_numpy())  # fmt: skip
        assert estimate.ci_low <= on_policy <= estimate.ci_high, (campaign, estimate, on_policy)
