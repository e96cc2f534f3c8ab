"""Experiment statistics, from per-arm summaries: the methods of GrowthBook's open engine, written out.

Every function takes the control arm first. Means are per unit (one unit = one user's first send of the
campaign in the analysis window); `diff` is treatment minus control.

- Frequentist: Welch's t-test for means, the two-proportion z-test for rates (pooled variance for the
  p-value, Wald interval for the difference), relative lift with a delta-method interval, and Holm or
  Benjamini-Hochberg adjustment across a campaign's variants.
- CUPED: each unit's metric minus theta times its centred pre-exposure covariate, theta pooled over both
  arms; the adjusted metric is compared with Welch's test.
- Bayesian: with a flat prior the effect's posterior is Normal(diff, se^2): the chance to beat control is
  Phi(diff / se) and the expected loss of shipping the treatment is E[max(-effect, 0)].
- Sequential: a normal-mixture sequential probability ratio test (Johari et al. 2017; the asymptotic
  confidence sequence of Howard et al. 2021 that GrowthBook uses). Its interval and p-value stay valid
  however often they are looked at; the mixture is tuned to be tightest at `tuning_units` units.
- Sample-ratio mismatch: a chi-squared goodness-of-fit test of the arms' unit counts against their shares.
- Power (normal approximation, two-sided, fixed horizon): the minimum detectable effect at today's sizes, the
  power to detect a given effect, and the units and days a decision on it needs. One per-unit standard
  deviation serves both arms (the control's: a rate's is sqrt(p (1 - p))), as in GrowthBook's power calculator.

Not enough data is a result, never an error or a warning: an arm of 0 or 1 units has no variance, so every
estimator then returns NaN figures and says why in `reason` (`not_enough_units`), which the caller reports as
the comparison's `untested_reason`; the power functions return NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

# An arm needs two units for a sample variance, and so for any interval or test.
MIN_ARM_UNITS = 2


def not_enough_units(control_n: int, treatment_n: int, minimum: int = MIN_ARM_UNITS) -> str | None:
    """Why two arms cannot be compared (an arm with fewer than `minimum` units), or None when they can."""
    if min(control_n, treatment_n) >= minimum:
        return None
    return (
        f"not enough data: {control_n} units in the control and {treatment_n} in the treatment "
        f"(each arm needs {minimum})"
    )


@dataclass(frozen=True)
class Sample:
    """One arm's summary for one metric: units, mean and sample variance (ddof = 1)."""

    n: int
    mean: float
    var: float

    @classmethod
    def of(cls, values: np.ndarray) -> Sample:
        values = np.asarray(values, dtype=float)
        n = values.size
        return cls(
            n, float(values.mean()) if n else math.nan, float(values.var(ddof=1)) if n > 1 else math.nan
        )

    @classmethod
    def of_counts(cls, successes: int, n: int) -> Sample:
        """A rate from counts; the variance is that of the 0/1 values (ddof = 1)."""
        p = successes / n if n else math.nan
        return cls(n, p, p * (1 - p) * n / (n - 1) if n > 1 else math.nan)


@dataclass(frozen=True)
class Comparison:
    diff: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    lift: float  # relative: diff / control mean (NaN when the control mean is 0)
    lift_ci_low: float
    lift_ci_high: float
    reason: str | None = None  # why the statistics are NaN (not enough data); None when they are computed


def _relative(control: Sample, treatment: Sample, alpha: float) -> tuple[float, float, float]:
    """Relative lift and its delta-method interval."""
    if not control.mean:
        return math.nan, math.nan, math.nan
    lift = treatment.mean / control.mean - 1
    var = treatment.var / (treatment.n * control.mean**2) + (
        treatment.mean**2 * control.var / (control.n * control.mean**4)
    )
    half = sps.norm.ppf(1 - alpha / 2) * math.sqrt(var)
    return lift, lift - half, lift + half


def _untested(control: Sample, treatment: Sample, reason: str) -> Comparison:
    """The difference and lift without statistics (NaN where an arm is empty): an arm too small to have a
    variance."""
    diff = treatment.mean - control.mean if min(control.n, treatment.n) > 0 else math.nan
    has_lift = math.isfinite(diff) and control.mean != 0
    lift = treatment.mean / control.mean - 1 if has_lift else math.nan
    return Comparison(diff, math.nan, math.nan, math.nan, math.nan, lift, math.nan, math.nan, reason)


def welch(control: Sample, treatment: Sample, alpha: float = 0.05) -> Comparison:
    """Welch's unequal-variance t-test and its interval for the difference of means; NaN statistics and a
    reason when an arm has fewer than two units (no variance, no degrees of freedom)."""
    reason = not_enough_units(control.n, treatment.n)
    if reason:
        return _untested(control, treatment, reason)
    a, b = control.var / control.n, treatment.var / treatment.n
    se = math.sqrt(a + b)
    diff = treatment.mean - control.mean
    if se == 0:
        return Comparison(
            diff, 0.0, diff, diff, 1.0 if diff == 0 else 0.0, *_relative(control, treatment, alpha)
        )
    df = (a + b) ** 2 / (a**2 / (control.n - 1) + b**2 / (treatment.n - 1))
    t = diff / se
    p = float(2 * sps.t.sf(abs(t), df))
    half = float(sps.t.ppf(1 - alpha / 2, df)) * se
    return Comparison(diff, se, diff - half, diff + half, p, *_relative(control, treatment, alpha))


def two_proportions(control: Sample, treatment: Sample, alpha: float = 0.05) -> Comparison:
    """The two-proportion z-test (pooled variance under the null) with a Wald interval for the difference;
    NaN statistics and a reason when an arm has fewer than two units (one unit's rate is 0 or 1, its
    binomial variance 0: the interval would be a point and the test certain)."""
    reason = not_enough_units(control.n, treatment.n)
    if reason:
        return _untested(control, treatment, reason)
    p_c, p_t, n_c, n_t = control.mean, treatment.mean, control.n, treatment.n
    diff = p_t - p_c
    pooled = (p_c * n_c + p_t * n_t) / (n_c + n_t)
    se_null = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
    p = float(2 * sps.norm.sf(abs(diff / se_null))) if se_null > 0 else (1.0 if diff == 0 else 0.0)
    se = math.sqrt(p_c * (1 - p_c) / n_c + p_t * (1 - p_t) / n_t)
    half = float(sps.norm.ppf(1 - alpha / 2)) * se
    # the rate's own variance (ddof = 0) for the relative interval, as the Wald interval uses
    rel = _relative(Sample(n_c, p_c, p_c * (1 - p_c)), Sample(n_t, p_t, p_t * (1 - p_t)), alpha)
    return Comparison(diff, se, diff - half, diff + half, p, *rel)


def cuped_theta(covariate: np.ndarray, metric: np.ndarray) -> float:
    """The regression slope of the metric on its pre-exposure covariate, over both arms together: NaN with
    fewer than two units (no slope to estimate), 0 when the covariate does not vary (it explains nothing)."""
    covariate, metric = np.asarray(covariate, float), np.asarray(metric, float)
    if covariate.size < MIN_ARM_UNITS:
        return math.nan
    var = covariate.var(ddof=1)
    return float(np.cov(covariate, metric, ddof=1)[0, 1] / var) if var > 0 else 0.0


def cuped_adjust(
    covariate: np.ndarray, metric: np.ndarray, theta: float, covariate_mean: float
) -> np.ndarray:
    return np.asarray(metric, float) - theta * (np.asarray(covariate, float) - covariate_mean)


def adjust_p_values(p_values: list[float], method: str) -> list[float]:
    """Holm's step-down (family-wise error) or Benjamini-Hochberg's step-up (false discovery rate)."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adjusted = np.minimum.accumulate(m / np.arange(m, 0, -1) * ranked[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}: use holm or bh")
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


@dataclass(frozen=True)
class Posterior:
    chance_to_beat_control: float
    expected_loss: float  # of shipping the treatment: E[max(control - treatment, 0)]
    control_loss: float  # of keeping the control: E[max(treatment - control, 0)]
    reason: str | None = None  # why the figures are NaN (no standard error: not enough data)


def bayesian(diff: float, se: float) -> Posterior:
    """Normal(diff, se^2) posterior of the effect under a flat prior; NaN and a reason when the difference
    or its standard error is unknown (an arm too small to have a variance)."""
    if not (math.isfinite(diff) and math.isfinite(se)):
        return Posterior(
            math.nan, math.nan, math.nan, "not enough data: the difference has no standard error"
        )
    if se <= 0:
        return Posterior(float(diff > 0), max(-diff, 0.0), max(diff, 0.0))
    z = diff / se
    density = float(sps.norm.pdf(z))
    return Posterior(
        float(sps.norm.cdf(z)),
        se * density - diff * float(sps.norm.cdf(-z)),
        se * density + diff * float(sps.norm.cdf(z)),
    )


@dataclass(frozen=True)
class Sequential:
    ci_low: float
    ci_high: float
    p_value: float
    reason: str | None = None  # why the figures are NaN (not enough data)


def sequential(
    diff: float, se: float, units: int, alpha: float = 0.05, tuning_units: int = 5000
) -> Sequential:
    """Always-valid interval and p-value from a normal-mixture SPRT with mixing variance tau^2.

    tau^2 = s^2 rho^2 with s^2 = se^2 * units (the per-unit variance) and rho chosen so the confidence
    sequence is narrowest at `tuning_units` units (eq. 161 of Howard et al.). NaN and a reason when the
    difference or its standard error is unknown or fewer than two units were seen."""
    if not (math.isfinite(diff) and math.isfinite(se)) or units < MIN_ARM_UNITS:
        return Sequential(
            math.nan,
            math.nan,
            math.nan,
            f"not enough data: {units} units and no standard error of the difference",
        )
    if se <= 0:
        return Sequential(diff, diff, 1.0 if diff == 0 else 0.0)
    v = se**2
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning_units
    tau2 = v * units * rho2
    half = math.sqrt(2 * v * (v + tau2) / tau2 * (math.log(1 / alpha) + 0.5 * math.log((v + tau2) / v)))
    log_lr = 0.5 * math.log(v / (v + tau2)) + tau2 * diff**2 / (2 * v * (v + tau2))
    p = 1.0 if log_lr <= 0 else math.exp(-log_lr)
    return Sequential(diff - half, diff + half, min(1.0, p))


@dataclass(frozen=True)
class SampleRatio:
    p_value: float
    observed: dict[str, int]
    expected_share: dict[str, float]
    reason: str | None = None  # why there is no test (p_value NaN): one arm, or fewer than two units


def sample_ratio(observed: dict[str, int], shares: dict[str, float]) -> SampleRatio:
    """Chi-squared test of the arms' unit counts against their intended shares (normalised). An arm with
    0 or 1 units is tested like any other (an arm the allocation starved is exactly what the test finds);
    with a single arm, or fewer than two units in all, there is nothing to test: NaN and a reason."""
    arms = sorted(shares)
    counts = np.asarray([observed.get(arm, 0) for arm in arms], dtype=float)
    total_share = sum(shares.values())
    expected_share = {arm: shares[arm] / total_share for arm in arms}
    counted = {arm: int(c) for arm, c in zip(arms, counts, strict=True)}
    if len(arms) < 2:
        return SampleRatio(math.nan, counted, expected_share, "a single arm: no split to check")
    if counts.sum() < MIN_ARM_UNITS:
        return SampleRatio(
            math.nan, counted, expected_share, f"not enough data: {int(counts.sum())} units in all arms"
        )
    expected = np.asarray([expected_share[arm] for arm in arms]) * counts.sum()
    return SampleRatio(float(sps.chisquare(counts, expected).pvalue), counted, expected_share)


# Power. The test is two-sided at level alpha; the far tail (rejecting in the wrong direction) adds under
# 1e-4 to the power at the effects these functions solve for (alpha up to 0.1), so the closed forms leave
# it out; power_at keeps it, as statsmodels does.

DEFAULT_POWER = 0.8


def _diff_se(sd: float, n_control: float, n_treatment: float) -> float:
    """Standard error of the difference of two means when both arms have per-unit deviation `sd`."""
    if min(n_control, n_treatment) <= 0 or not sd > 0:
        return math.nan
    return sd * math.sqrt(1 / n_control + 1 / n_treatment)


def rate_sd(rate: float) -> float:
    """A rate's per-unit standard deviation, sqrt(p (1 - p)) (the binomial variance of one unit)."""
    return math.sqrt(rate * (1 - rate)) if 0 <= rate <= 1 else math.nan


def minimum_detectable_effect(
    sd: float, n_control: int, n_treatment: int, alpha: float = 0.05, power: float = DEFAULT_POWER
) -> float:
    """The smallest absolute difference a two-sided test at `alpha` detects with probability `power` at
    these arm sizes: (z_{1-alpha/2} + z_{power}) * sd * sqrt(1/n_c + 1/n_t). NaN when sd is 0 or unknown."""
    se = _diff_se(sd, n_control, n_treatment)
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * se)


def power_at(effect: float, sd: float, n_control: int, n_treatment: int, alpha: float = 0.05) -> float:
    """The chance a two-sided test at `alpha` rejects when the true difference is `effect` (both tails, as
    statsmodels' NormalIndPower). NaN when sd is 0 or unknown or the effect is undefined."""
    se = _diff_se(sd, n_control, n_treatment)
    if not math.isfinite(se) or not math.isfinite(effect):
        return math.nan
    z_alpha, shift = sps.norm.ppf(1 - alpha / 2), abs(effect) / se
    return float(sps.norm.sf(z_alpha - shift) + sps.norm.cdf(-z_alpha - shift))


def units_needed(
    effect: float, sd: float, control_share: float, alpha: float = 0.05, power: float = DEFAULT_POWER
) -> float:
    """Units of both arms together that detect `effect` with probability `power`, the control holding
    `control_share` of them: n = (z_{1-alpha/2} + z_{power})^2 sd^2 / (effect^2 s (1 - s)). NaN when the
    effect is 0 or undefined (no sample detects it) or sd is 0 or unknown."""
    if not (math.isfinite(effect) and effect != 0 and sd > 0 and 0 < control_share < 1):
        return math.nan
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return float(z**2 * sd**2 / (effect**2 * control_share * (1 - control_share)))


def days_to_decision(
    effect: float,
    sd: float,
    n_control: int,
    n_treatment: int,
    elapsed_days: float,
    alpha: float = 0.05,
    power: float = DEFAULT_POWER,
) -> float:
    """Whole days until the two arms together reach the units that detect `effect` with `power`, enrolling
    at today's rate (their units over `elapsed_days`) in today's proportions: 0 when they already have
    them, NaN when the effect is 0 or undefined or no time has passed."""
    current = n_control + n_treatment
    if current <= 0 or not elapsed_days > 0:
        return math.nan
    needed = units_needed(effect, sd, n_control / current, alpha, power)
    if not math.isfinite(needed):
        return math.nan
    # rounded before the ceiling, so float noise (30.000000001) does not add a day
    return float(max(0, math.ceil(round(elapsed_days * (needed / current - 1), 6))))
