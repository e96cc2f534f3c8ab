"""Off-policy estimators (tailor/ope.py) on simulated logs with a known answer, and on the Open Bandit sample:
BTS's click rate estimated from the uniform-random policy's logs, and the reverse."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pytest

from tailor import bandit, ope
from tests.conftest import REPO

OPEN_BANDIT = REPO.parent / "shared" / "data" / "open-bandit-sample"
SEED = 7


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
        ope.doubly_robust(
            logs["reward"], logs["target"], logs["logging"], logs["q_logged"], logs["q_target"]
        ),
    ]
    for estimate in estimates:
        assert estimate.ci_low <= TRUE_VALUE <= estimate.ci_high, estimate
        assert estimate.boot_low <= TRUE_VALUE <= estimate.boot_high, estimate
        # the percentile interval agrees with the normal one on 20,000 rows (within a tenth of its width)
        width = estimate.ci_high - estimate.ci_low
        assert abs(estimate.boot_low - estimate.ci_low) < 0.1 * width, estimate
        assert abs(estimate.boot_high - estimate.ci_high) < 0.1 * width, estimate
    ipw, _, dr = estimates
    assert dr.se < ipw.se  # a right reward model leaves only the noise of the rewards
    assert 0 < ipw.effective_sample_size < logs["reward"].size


def test_the_bootstrap_is_seeded() -> None:
    logs = simulated_logs(0, n=2_000)
    first, again, other = (
        ope.snipw(logs["reward"], logs["target"], logs["logging"], seed=seed) for seed in (1, 1, 2)
    )
    assert (first.boot_low, first.boot_high) == (again.boot_low, again.boot_high)
    assert (first.boot_low, first.boot_high) != (other.boot_low, other.boot_high)


@pytest.mark.parametrize(
    ("reward", "target", "logging", "why"),
    [
        ([], [], [], "0 logged rows"),
        ([1.0], [0.5], [0.5], "1 logged row;"),
        ([1.0, 0.0], [0.5, 0.5], [0.5, 0.0], r"1 of 2 logged rows have no propensity in \(0, 1\]"),
        ([1.0, 0.0], [0.5, 0.5], [0.5, np.nan], "1 of 2 logged rows have no propensity"),
    ],
)
def test_too_little_data_is_a_stated_result_not_an_error(
    reward: list[float], target: list[float], logging: list[float], why: str
) -> None:
    arrays = [np.asarray(values, dtype=float) for values in (reward, target, logging)]
    estimates = [ope.ipw(*arrays), ope.snipw(*arrays), ope.doubly_robust(*arrays, arrays[0], arrays[0])]
    for estimate in estimates:
        assert not estimate.is_estimated
        assert estimate.reason is not None and estimate.reason.startswith("not enough data")
        assert re.search(why, estimate.reason), estimate.reason
        assert math.isnan(estimate.value) and estimate.logged_rows == len(reward)


def test_a_target_that_never_takes_a_logged_action_has_no_self_normalised_value() -> None:
    estimate = ope.snipw(np.array([1.0, 0.0]), np.array([0.0, 0.0]), np.array([0.5, 0.5]))
    assert estimate.reason == "not enough data: the target policy never takes a logged action"
    assert ope.ipw(np.array([1.0, 0.0]), np.array([0.0, 0.0]), np.array([0.5, 0.5])).value == 0.0


def test_mismatched_arrays_are_a_callers_mistake() -> None:
    with pytest.raises(ope.OffPolicyError, match="differ in shape"):
        ope.ipw(np.array([1.0]), np.array([0.5, 0.5]), np.array([0.5, 0.5]))


def test_mean_reward_model_falls_back_from_cell_to_action_to_overall() -> None:
    # context "a": action 0 twice (1, 0); context "b": action 0 once (1), action 1 once (0); action 2 unseen
    predicted = ope.mean_reward_model(
        np.array([1.0, 0.0, 1.0, 0.0]), np.array([0, 0, 0, 1]), np.array(["a", "a", "b", "b"]), 3
    )
    assert predicted[0].tolist() == [0.5, 0.0, 0.5]  # "a" never saw action 1: its mean over contexts, 0
    assert predicted[2].tolist() == [1.0, 0.0, 0.5]  # action 2 never logged: the overall mean


def test_evaluate_returns_the_three_estimators_of_one_policy() -> None:
    logs = simulated_logs(3)
    rng_action = np.searchsorted(np.array([0.02, 0.05, 0.10]), logs["q_logged"])  # back to action indices
    target = np.tile([0.1, 0.1, 0.8], (logs["reward"].size, 1))
    predicted = ope.mean_reward_model(logs["reward"], rng_action, np.zeros(rng_action.size), 3)
    estimates = ope.evaluate(
        logs["reward"], rng_action, logs["logging"], target, predicted, bootstrap_samples=200
    )
    assert [e.estimator for e in estimates] == list(ope.ESTIMATORS)
    for estimate in estimates:
        assert estimate.boot_low <= TRUE_VALUE <= estimate.boot_high, estimate


def read(policy: str, campaign: str) -> pl.DataFrame:
    return pl.read_csv(OPEN_BANDIT / policy / campaign / f"{campaign}.csv.gz")


def shares_by_slot(logs: pl.DataFrame) -> pl.DataFrame:
    """A policy as the share of its impressions each item got in each slot over the week (context-free)."""
    return (
        logs.group_by("position", "item_id")
        .len()
        .select("position", "item_id", (pl.col("len") / pl.col("len").sum().over("position")).alias("target"))
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
                             logged["propensity_score"].to_numpy(), seed=SEED)  # fmt: skip
        print(f"open bandit {campaign}: BTS observed {on_policy:.5f}, {estimate.estimator} {estimate.value:.5f} "
              f"normal [{estimate.ci_low:.5f}, {estimate.ci_high:.5f}] bootstrap [{estimate.boot_low:.5f}, "
              f"{estimate.boot_high:.5f}] ESS {estimate.effective_sample_size:,.0f} of {estimate.logged_rows:,}")  # fmt: skip
        assert estimate.ci_low <= on_policy <= estimate.ci_high, (campaign, estimate, on_policy)
        assert estimate.boot_low <= on_policy <= estimate.boot_high, (campaign, estimate, on_policy)


def test_the_paired_difference_is_tighter_than_the_two_intervals_apart() -> None:
    logs = simulated_logs(4)
    action = np.searchsorted(np.array([0.02, 0.05, 0.10]), logs["q_logged"])
    best, middle = (action == 2).astype(float), (action == 1).astype(float)  # always action 2 / always 1
    difference = ope.snipw_difference(logs["reward"], best, middle, logs["logging"], seed=SEED)
    assert difference.boot_low <= 0.10 - 0.05 <= difference.boot_high, difference
    assert difference.ci_low <= 0.10 - 0.05 <= difference.ci_high, difference
    a = ope.snipw(logs["reward"], best, logs["logging"], seed=SEED)
    b = ope.snipw(logs["reward"], middle, logs["logging"], seed=SEED)
    assert difference.value == pytest.approx(a.value - b.value)
    # the same policy against itself: exactly no difference, in every resample
    same = ope.snipw_difference(logs["reward"], best, best, logs["logging"], seed=SEED)
    assert (same.value, same.boot_low, same.boot_high) == (0.0, 0.0, 0.0)


def position_policies(train: pl.DataFrame, items: list[int], seed: int) -> dict[str, dict]:
    """Policies learned from `train` only, per slot: the context-free bandit (Thompson shares of each item's
    Beta(1 + clicks, 1 + non-clicks) posterior), the best arm (the highest posterior mean), and the
    contextual bandit per user_feature_0 (per-context posteriors worth 100 impressions at the pooled mean)."""
    learned: dict[str, dict] = {"bandit": {}, "best_arm": {}, "contextual": {}}
    names = [str(item) for item in items]
    for position in sorted(train["position"].unique().to_list()):
        slot = train.filter(pl.col("position") == position).with_columns(
            pl.col("user_feature_0").alias("context"), pl.col("item_id").cast(pl.Utf8).alias("variant_id")
        )
        evidence = slot.group_by("context", "variant_id").agg(
            pl.len().alias("sends"), pl.col("click").sum().alias("conversions")
        )
        totals = evidence.group_by("variant_id").agg(pl.col("sends", "conversions").sum())
        counts = {item: (sends, clicks) for item, sends, clicks in totals.iter_rows()}
        pooled = {}
        for name in names:
            sends, clicks = counts.get(name, (0, 0))
            pooled[name] = (1.0 + clicks, 1.0 + sends - clicks)
        alphas, betas = [pooled[n][0] for n in names], [pooled[n][1] for n in names]
        learned["bandit"][position] = bandit.shares_from(bandit.chance_best(alphas, betas, seed))
        means = np.array(alphas) / (np.array(alphas) + np.array(betas))
        learned["best_arm"][position] = (means == means.max()) / (means == means.max()).sum()
        posteriors = bandit.context_posteriors(evidence, pooled, names, prior_sends=100.0)
        by_context = bandit.contextual_shares(posteriors, names, seed)
        learned["contextual"][position] = (by_context, learned["bandit"][position])
    return learned


def target_matrix(rows: pl.DataFrame, policy: str, learned: dict, items: list[int]) -> np.ndarray:
    n, k = rows.height, len(items)
    if policy == "uniform":
        return np.full((n, k), 1 / k)
    matrix = np.zeros((n, k))
    for index, (position, context) in enumerate(rows.select("position", "user_feature_0").iter_rows()):
        if policy == "contextual":
            by_context, pooled = learned["contextual"][position]
            matrix[index] = by_context.get(context, pooled)
        else:
            matrix[index] = learned[policy][position]
    return matrix


@pytest.mark.skipif(not OPEN_BANDIT.exists(), reason="needs ../shared/data/open-bandit-sample (not in CI)")
@pytest.mark.parametrize("campaign", ["all", "men", "women"])
def test_a_contextual_policy_learned_on_half_the_random_logs_is_valued_on_the_other_half(
    campaign: str,
) -> None:
    logs = read("random", campaign).with_row_index("row")
    items = sorted(logs["item_id"].unique().to_list())
    is_train = np.random.default_rng(SEED).random(logs.height) < 0.5
    train, held_out = logs.filter(pl.Series(is_train)), logs.filter(pl.Series(~is_train))
    assert not set(train["row"]) & set(held_out["row"])  # the policy never sees a row it is valued on
    learned = position_policies(train.drop("row"), items, SEED)
    action = np.searchsorted(np.asarray(items), held_out["item_id"].to_numpy())
    reward = held_out["click"].cast(pl.Float64).to_numpy()
    logging = held_out["propensity_score"].to_numpy()
    contexts = held_out["user_feature_0"].to_numpy()
    predicted = ope.mean_reward_model(reward, action, contexts, len(items))
    for policy in ("contextual", "bandit", "best_arm", "uniform"):
        target = target_matrix(held_out, policy, learned, items)
        estimates = ope.evaluate(reward, action, logging, target, predicted, seed=SEED)
        for estimate in estimates:
            print(f"open bandit {campaign} held-out: {policy} {estimate.estimator} {estimate.value:.5f} "
                  f"[{estimate.boot_low:.5f}, {estimate.boot_high:.5f}] ESS {estimate.effective_sample_size:,.0f}")  # fmt: skip
            assert estimate.is_estimated and estimate.logged_rows == held_out.height
            values = (estimate.boot_low, estimate.value, estimate.boot_high)
            assert all(np.isfinite(values)) and estimate.boot_low <= estimate.boot_high
            assert 0 < estimate.effective_sample_size <= held_out.height
        if policy == "uniform":  # the logging policy itself: every weight is 1
            assert estimates[1].value == pytest.approx(reward.mean())


def test_resampling_distinct_rows_spreads_like_resampling_rows() -> None:
    # 0/1 rewards: two distinct rows; the bootstrap deviation of the mean is the binomial one, sqrt(p(1-p)/n)
    values = (np.random.default_rng(0).random(5_000) < 0.1).astype(float)
    sums = ope.resampled_sums(values[:, np.newaxis], 4_000, seed=SEED)[:, 0]
    assert sums.shape == (4_000,)
    p = values.mean()
    assert (sums / values.size).std() == pytest.approx(np.sqrt(p * (1 - p) / values.size), rel=0.05)
    assert (sums / values.size).mean() == pytest.approx(p, abs=0.001)


def test_resampling_blocks_of_many_rows_spreads_like_resampling_rows() -> None:
    # more rows than blocks, every value distinct: the spread of the mean is still the rows' sd / sqrt(n)
    values = np.random.default_rng(1).exponential(2.0, ope.BOOTSTRAP_BLOCKS * 5)
    sums = ope.resampled_sums(values[:, np.newaxis], 2_000, seed=SEED)[:, 0]
    means = sums / values.size
    assert means.std() == pytest.approx(values.std() / np.sqrt(values.size), rel=0.08)
    assert means.mean() == pytest.approx(values.mean(), rel=0.002)
