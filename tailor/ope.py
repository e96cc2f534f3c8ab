"""Off-policy evaluation: how a new policy would have done, estimated from the logs of the policy that ran.

Each logged impression carries the action shown, its reward and the logging policy's probability of showing
it (`logging_prob`, the propensity); the target policy gives its own probability of that action in that
context (`target_prob`). Three estimators:
- IPW (inverse propensity weighting, Horvitz & Thompson 1952): the mean of reward x target/logging; unbiased
  when every action the target takes had a non-zero logging probability, with a variance that grows with
  the weights.
- SNIPW (self-normalised IPW, Swaminathan & Joachims 2015): the same weights divided by their mean; slightly
  biased, far less variable.
- DR (doubly robust, Dudik, Langford & Li 2011): a reward model's prediction under the target policy,
  corrected by IPW on the model's error; unbiased if either the propensities or the reward model are right.

Each estimate has two intervals: a normal approximation (the delta method for SNIPW) and a seeded bootstrap
percentile interval that resamples the logged rows (the reward model is not refitted per resample). Too few
rows, or a row without a positive propensity, gives an Estimate whose `reason` says "not enough data"
rather than an exception. Reference: Saito et al., "Open Bandit Dataset and Pipeline" (arXiv:2008.07146).
docs/ope.md says what the estimates assume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats as scipy_stats

ESTIMATORS = ("ipw", "snipw", "dr")
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_CELLS = 10_000_000  # resamples x distinct rows drawn at once: bounds the memory of the counts
# past this many distinct rows (and this many rows) a resample draws blocks of rows (see resampled_sums)
MULTINOMIAL_MAX_DISTINCT = 256
BOOTSTRAP_BLOCKS = 2_000


class OffPolicyError(ValueError):
    """Arrays that do not describe one set of logs (mismatched lengths): a caller's mistake, not the data's."""


@dataclass(frozen=True)
class Estimate:
    estimator: str
    value: float
    se: float
    ci_low: float  # normal approximation
    ci_high: float
    effective_sample_size: float  # (sum w)^2 / sum w^2: how many logged rows the estimate is worth
    logged_rows: int
    boot_low: float = math.nan  # bootstrap percentile interval over resampled logged rows
    boot_high: float = math.nan
    reason: str | None = None  # why there is no estimate ("not enough data: ..."); None when there is one

    @property
    def is_estimated(self) -> bool:
        return self.reason is None


def not_enough_data(estimator: str, logged_rows: int, why: str) -> Estimate:
    nan = math.nan
    return Estimate(estimator, nan, nan, nan, nan, 0.0, logged_rows, reason=f"not enough data: {why}")


def _arrays(*arrays: np.ndarray) -> list[np.ndarray]:
    converted = [np.asarray(a, dtype=np.float64) for a in arrays]
    if len({a.shape for a in converted}) != 1 or converted[0].ndim != 1:
        raise OffPolicyError(f"the arrays differ in shape: {[a.shape for a in converted]}")
    return converted


def refusal(target: np.ndarray, logging: np.ndarray) -> str | None:
    """Why these logs cannot support an estimate, or None when they can."""
    n = logging.size
    if n < 2:
        return f"{n} logged row{'s' if n != 1 else ''}; an interval needs at least 2"
    invalid = int(np.sum(~np.isfinite(logging) | (logging <= 0) | (logging > 1)))
    if invalid:
        return f"{invalid} of {n} logged rows have no propensity in (0, 1], so they cannot be weighted"
    if np.any(~np.isfinite(target) | (target < 0) | (target > 1)):
        return "target probabilities must be in [0, 1]"
    return None


def importance_weights(target_prob: np.ndarray, logging_prob: np.ndarray) -> np.ndarray:
    """target / logging per row; call only on logs `refusal` accepted (every propensity positive)."""
    target, logging = _arrays(target_prob, logging_prob)
    return target / logging


def resampled_sums(columns: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """(samples x columns) column sums over `samples` resamples of the rows with replacement, from `seed`.

    Logged rows repeat a few distinct values (one weight per arm and context, a 0/1 reward), so a resample is
    drawn as multinomial counts of the distinct rows: the same distribution as drawing n rows, in time that
    grows with the distinct rows rather than with n. Rows with many distinct values (a doubly robust term
    has as many as rows) are first summed, centred on their mean, into BOOTSTRAP_BLOCKS blocks of randomly
    assigned rows, and blocks are drawn: a centred block sum has the variance of as many rows whatever the
    block's size, so the resampled sums spread as the rows' would, in time that does not grow with the rows."""
    rng = np.random.default_rng(seed)
    n = columns.shape[0]
    units, counts = distinct_rows(columns)
    if units.shape[0] <= MULTINOMIAL_MAX_DISTINCT or n <= BOOTSTRAP_BLOCKS:
        chunk = max(1, min(samples, BOOTSTRAP_CELLS // units.shape[0]))
        sums = []
        for start in range(0, samples, chunk):
            draws = rng.multinomial(n, counts / n, size=min(chunk, samples - start))
            sums.append(draws @ units)
        return np.vstack(sums)
    mean = columns.mean(axis=0)
    block = rng.integers(0, BOOTSTRAP_BLOCKS, n)
    blocks = np.column_stack(
        [np.bincount(block, weights=column - centre, minlength=BOOTSTRAP_BLOCKS)
         for column, centre in zip(columns.T, mean, strict=True)]
    )  # fmt: skip
    chunk = max(1, min(samples, BOOTSTRAP_CELLS // BOOTSTRAP_BLOCKS))
    sums = []
    for start in range(0, samples, chunk):
        drawn = rng.integers(0, BOOTSTRAP_BLOCKS, (min(chunk, samples - start), BOOTSTRAP_BLOCKS))
        sums.append(blocks[drawn].sum(axis=1) + n * mean)
    return np.vstack(sums)


def distinct_rows(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows in sorted order and how often each occurs (hashed, not sorted row by row as
    numpy's unique along an axis does, which cost seconds on large logs)."""
    frame = pl.from_numpy(np.ascontiguousarray(columns))
    grouped = frame.group_by(frame.columns).len(name="_count").sort(frame.columns)
    return grouped.drop("_count").to_numpy(), grouped["_count"].to_numpy().astype(np.int64)


def percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_interval(
    numerator: np.ndarray, denominator: np.ndarray | None, alpha: float, samples: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of sum(numerator) / sum(denominator) (the mean when denominator is None) over
    `samples` resamples of the rows. A resample where the denominator sums to zero (the target takes no
    logged action) has no self-normalised value and is skipped."""
    if denominator is None:
        return percentile_interval(
            resampled_sums(numerator[:, np.newaxis], samples, seed)[:, 0] / numerator.size, alpha
        )
    sums = resampled_sums(np.column_stack([numerator, denominator]), samples, seed)
    below = sums[:, 1]
    return percentile_interval(np.where(below > 0, sums[:, 0] / np.where(below > 0, below, 1), np.nan), alpha)


def _estimate(
    name: str,
    terms: np.ndarray,
    value: float,
    weights: np.ndarray,
    alpha: float,
    boot: tuple[float, float],
) -> Estimate:
    n = terms.size
    se = float(terms.std(ddof=1) / math.sqrt(n))
    z = float(scipy_stats.norm.ppf(1 - alpha / 2))
    ess = float(weights.sum() ** 2 / np.square(weights).sum()) if np.any(weights) else 0.0
    return Estimate(name, float(value), se, float(value - z * se), float(value + z * se), ess, n, *boot)


def ipw(
    rewards: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    alpha: float = 0.05,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Estimate:
    reward, target, logging = _arrays(rewards, target_prob, logging_prob)
    if (why := refusal(target, logging)) is not None:
        return not_enough_data("ipw", reward.size, why)
    weights = target / logging
    terms = reward * weights
    boot = bootstrap_interval(terms, None, alpha, bootstrap_samples, seed)
    return _estimate("ipw", terms, terms.mean(), weights, alpha, boot)


def snipw(
    rewards: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    alpha: float = 0.05,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Estimate:
    reward, target, logging = _arrays(rewards, target_prob, logging_prob)
    if (why := refusal(target, logging)) is not None:
        return not_enough_data("snipw", reward.size, why)
    weights = target / logging
    mean_weight = weights.mean()
    if mean_weight == 0:
        return not_enough_data("snipw", reward.size, "the target policy never takes a logged action")
    value = float((reward * weights).sum() / weights.sum())
    # delta method: the influence of each row on the ratio estimator
    terms = weights * (reward - value) / mean_weight + value
    boot = bootstrap_interval(reward * weights, weights, alpha, bootstrap_samples, seed)
    return _estimate("snipw", terms, value, weights, alpha, boot)


def doubly_robust(
    rewards: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    predicted_logged: np.ndarray,
    predicted_under_target: np.ndarray,
    alpha: float = 0.05,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Estimate:
    """`predicted_logged`: the reward model's prediction for the logged action; `predicted_under_target`:
    its expected reward under the target policy in the row's context (sum over actions of target x model)."""
    reward, target, logging, q_logged, q_target = _arrays(
        rewards, target_prob, logging_prob, predicted_logged, predicted_under_target
    )
    if (why := refusal(target, logging)) is not None:
        return not_enough_data("dr", reward.size, why)
    weights = target / logging
    terms = q_target + weights * (reward - q_logged)
    boot = bootstrap_interval(terms, None, alpha, bootstrap_samples, seed)
    return _estimate("dr", terms, terms.mean(), weights, alpha, boot)


def mean_reward_model(
    reward: np.ndarray, action: np.ndarray, context: np.ndarray, actions: int
) -> np.ndarray:
    """The simplest reward model for DR: the mean reward of each (context, action) seen in the logs, falling
    back to the action's mean over all contexts, then to the overall mean. Returns a (rows x actions) matrix
    of predictions for every row's context. Fitted on the rows it predicts (no cross-fitting)."""
    reward = np.asarray(reward, dtype=np.float64)
    action = np.asarray(action, dtype=np.int64)
    contexts, context_index = np.unique(np.asarray(context), return_inverse=True)
    overall = float(reward.mean()) if reward.size else 0.0
    sums = np.zeros((contexts.size, actions))
    counts = np.zeros((contexts.size, actions))
    np.add.at(sums, (context_index, action), reward)
    np.add.at(counts, (context_index, action), 1.0)
    action_sums, action_counts = sums.sum(axis=0), counts.sum(axis=0)
    by_action = np.where(action_counts > 0, action_sums / np.maximum(action_counts, 1), overall)
    by_cell = np.where(counts > 0, sums / np.maximum(counts, 1), by_action[np.newaxis, :])
    return by_cell[context_index]


def evaluate(
    reward: np.ndarray,
    action: np.ndarray,
    logging_prob: np.ndarray,
    target: np.ndarray,
    predicted: np.ndarray,
    alpha: float = 0.05,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> list[Estimate]:
    """IPW, SNIPW and DR of one target policy. `action`: the logged action's index per row; `target`: the
    (rows x actions) matrix of the target policy's probabilities in each row's context; `predicted`: the
    reward model's (rows x actions) predictions."""
    action = np.asarray(action, dtype=np.int64)
    rows = np.arange(action.size)
    if action.size == 0:
        return [
            not_enough_data(name, 0, "0 logged rows; an interval needs at least 2") for name in ESTIMATORS
        ]
    target_prob = target[rows, action]
    q_logged, q_target = predicted[rows, action], (target * predicted).sum(axis=1)
    common: dict[str, float | int] = {"alpha": alpha, "bootstrap_samples": bootstrap_samples, "seed": seed}
    estimators: list[Callable[..., Estimate]] = [ipw, snipw]
    return [estimator(reward, target_prob, logging_prob, **common) for estimator in estimators] + [
        doubly_robust(reward, target_prob, logging_prob, q_logged, q_target, **common)
    ]


def snipw_difference(
    rewards: np.ndarray,
    target_a: np.ndarray,
    target_b: np.ndarray,
    logging_prob: np.ndarray,
    alpha: float = 0.05,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Estimate:
    """SNIPW of policy a minus SNIPW of policy b on the same logged rows, with a paired bootstrap (each
    resample of rows values both policies) and the delta method: the comparison a decision between two
    policies needs, as their separate intervals overlap even when one is reliably better. The effective
    sample size is policy a's."""
    reward, prob_a, prob_b, logging = _arrays(rewards, target_a, target_b, logging_prob)
    for target in (prob_a, prob_b):
        if (why := refusal(target, logging)) is not None:
            return not_enough_data("snipw_difference", reward.size, why)
    w_a, w_b = prob_a / logging, prob_b / logging
    if w_a.sum() == 0 or w_b.sum() == 0:
        return not_enough_data("snipw_difference", reward.size, "a policy never takes a logged action")
    value_a, value_b = (reward * w_a).sum() / w_a.sum(), (reward * w_b).sum() / w_b.sum()
    terms = (
        w_a * (reward - value_a) / w_a.mean() - w_b * (reward - value_b) / w_b.mean() + (value_a - value_b)
    )
    sums = resampled_sums(np.column_stack([reward * w_a, w_a, reward * w_b, w_b]), bootstrap_samples, seed)
    valued = (sums[:, 1] > 0) & (sums[:, 3] > 0)
    safe = np.where(valued[:, np.newaxis], sums, 1.0)
    differences = np.where(valued, safe[:, 0] / safe[:, 1] - safe[:, 2] / safe[:, 3], np.nan)
    low, high = percentile_interval(differences, alpha)
    return _estimate("snipw_difference", terms, value_a - value_b, w_a, alpha, (low, high))
