"""Thompson sampling over Beta posteriors of converting: context-free (one posterior per variant) and
contextual (one per context and variant, shrunk to the pooled posterior so a small context behaves like the
whole audience until its own evidence says otherwise).

The allocation (tasks/variants.py) serves these shares and the policy evaluation (tasks/ope.py) weighs the
logged sends by them, so both read the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

THOMPSON_DRAWS = 20_000
# a variant that never wins a sample still keeps a sliver of traffic, so evidence can change its fate
MIN_SHARE = 1e-3

Posterior = tuple[float, float]  # Beta(alpha, beta)


def chance_best(alphas: Sequence[float], betas: Sequence[float], seed: int) -> np.ndarray:
    """Each arm's posterior probability of having the highest rate (Monte Carlo over THOMPSON_DRAWS draws)."""
    rng = np.random.default_rng(seed)
    samples = rng.beta(np.asarray(alphas), np.asarray(betas), size=(THOMPSON_DRAWS, len(alphas)))
    return np.bincount(samples.argmax(axis=1), minlength=len(alphas)) / THOMPSON_DRAWS


def shares_from(p_best: np.ndarray) -> np.ndarray:
    """Thompson sampling's traffic shares (summing to 1): the chance of being best, floored at MIN_SHARE."""
    floored = np.maximum(p_best, MIN_SHARE)
    return floored / floored.sum()


def context_posteriors(
    evidence: pl.DataFrame, pooled: Mapping[str, Posterior], variant_ids: Sequence[str], prior_sends: float
) -> dict[str, dict[str, Posterior]]:
    """Per context, each variant's Beta posterior: a prior worth `prior_sends` sends at the pooled posterior's
    mean, plus the context's own sends and conversions. `evidence`: columns context, variant_id, sends,
    conversions (a context x variant without sends keeps the prior)."""
    posteriors: dict[str, dict[str, Posterior]] = {}
    counts = {
        (context, variant): (int(sends), int(conversions))
        for context, variant, sends, conversions in evidence.select(
            "context", "variant_id", "sends", "conversions"
        ).iter_rows()
    }
    for context in sorted({str(context) for context, _ in counts}):
        posteriors[context] = {}
        for variant in variant_ids:
            alpha, beta = pooled[variant]
            mean = alpha / (alpha + beta)
            sends, conversions = counts.get((context, variant), (0, 0))
            posteriors[context][variant] = (
                prior_sends * mean + conversions,
                prior_sends * (1 - mean) + sends - conversions,
            )
    return posteriors


def contextual_shares(
    posteriors: Mapping[str, Mapping[str, Posterior]], variant_ids: Sequence[str], seed: int
) -> dict[str, np.ndarray]:
    """Per context, Thompson sampling's shares of the variants (in `variant_ids` order)."""
    shares = {}
    for context, by_variant in posteriors.items():
        alphas = [by_variant[variant][0] for variant in variant_ids]
        betas = [by_variant[variant][1] for variant in variant_ids]
        shares[context] = shares_from(chance_best(alphas, betas, seed))
    return shares
