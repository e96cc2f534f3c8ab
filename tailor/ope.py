"""Off-policy evaluation: how a new policy would have done, estimated from the logs of the policy that ran.

Each logged impression carries the action shown, its reward and the logging policy's probability of showing
it (`logging_prob`, the propensity); the target policy gives its own probability of that action in that
context (`target_prob`). Three estimators, each with a normal-approximation interval:
- IPW (inverse propensity weighting): the mean of reward x target/logging; unbiased when every action the
  target takes had a non-zero logging probability, with a variance that grows with the weights.
- SNIPW (self-normalised IPW): the same weights divided by their mean; slightly biased, far less variable.
- DR (doubly robust): a reward model's prediction under the target policy, corrected by IPW on the model's
  error; unbiased if either the propensities or the reward model are right.
Reference: Saito et al., "Open Bandit Dataset and Pipeline" (arXiv:2008.07146), section 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


class OffPolicyError(ValueError):
    """The logs cannot support the estimate (a zero or missing propensity, mismatched lengths)."""


@dataclass(frozen=True)
class Estimate:
    estimator: str
    value: float
    se: float
    ci_low: float
    ci_high: float
    effective_sample_size: float  # (sum w)^2 / sum w^2: how many logged rows the estimate is worth


def _arrays(*arrays: np.ndarray) -> list[np.ndarray]:
    converted = [np.asarray(a, dtype=np.float64) for a in arrays]
    if len({a.shape for a in converted}) != 1 or converted[0].ndim != 1:
        raise OffPolicyError(f"the arrays differ in shape: {[a.shape for a in converted]}")
    if converted[0].size == 0:
        raise OffPolicyError("no logged rows to estimate from")
    return converted


def importance_weights(target_prob: np.ndarray, logging_prob: np.ndarray) -> np.ndarray:
    target, logging = _arrays(target_prob, logging_prob)
    if not np.all(np.isfinite(logging)) or np.any(logging <= 0) or np.any(logging > 1):
        raise OffPolicyError("every logged propensity must be in (0, 1]: the logs cannot weight a row without one")
    if np.any(target < 0) or np.any(target > 1):
        raise OffPolicyError("target probabilities must be in [0, 1]")
    return target / logging


def _estimate(name: str, terms: np.ndarray, value: float, weights: np.ndarray, alpha: float) -> Estimate:
    n = terms.size
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    z = float(scipy_stats.norm.ppf(1 - alpha / 2))
    ess = float(weights.sum() ** 2 / np.square(weights).sum()) if np.any(weights) else 0.0
    return Estimate(name, float(value), se, float(value - z * se), float(value + z * se), ess)


def ipw(rewards: np.ndarray, target_prob: np.ndarray, logging_prob: np.ndarray, alpha: float = 0.05) -> Estimate:
    reward, target, logging = _arrays(rewards, target_prob, logging_prob)
    weights = importance_weights(target, logging)
    terms = reward * weights
    return _estimate("ipw", terms, terms.mean(), weights, alpha)


def snipw(
    rewards: np.ndarray, target_prob: np.ndarray, logging_prob: np.ndarray, alpha: float = 0.05
) -> Estimate:
    reward, target, logging = _arrays(rewards, target_prob, logging_prob)
    weights = importance_weights(target, logging)
    mean_weight = weights.mean()
    if mean_weight == 0:
        raise OffPolicyError("the target policy never takes a logged action: nothing to weight")
    value = float((reward * weights).sum() / weights.sum())
    # delta method: the influence of each row on the ratio estimator
    terms = weights * (reward - value) / mean_weight + value
    return _estimate("snipw", terms, value, weights, alpha)


def doubly_robust(
    rewards: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    predicted_logged: np.ndarray,
    predicted_under_target: np.ndarray,
    alpha: float = 0.05,
) -> Estimate:
    """`predicted_logged`: the reward model's prediction for the logged action; `predicted_under_target`:
    its expected reward under the target policy in the row's context (sum over actions of target x model)."""
    reward, target, logging, q_logged, q_target = _arrays(
        rewards, target_prob, logging_prob, predicted_logged, predicted_under_target
    )
    weights = importance_weights(target, logging)
    terms = q_target + weights * (reward - q_logged)
    return _estimate("dr", terms, terms.mean(), weights, alpha)
