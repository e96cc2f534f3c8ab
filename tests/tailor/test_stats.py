"""Every statistic against an independent computation (scipy, statsmodels, numerical integration), and
simulations of the error rates the methods promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from tailor import stats


def test_welch_matches_scipy_and_statsmodels() -> None:
    rng = np.random.default_rng(1)
    control, treatment = rng.lognormal(3, 1, 400), rng.lognormal(3.1, 1.2, 650)
    result = stats.welch(stats.Sample.of(control), stats.Sample.of(treatment), alpha=0.05)
    reference = sps.ttest_ind(treatment, control, equal_var=False)
    low, high = CompareMeans(DescrStatsW(treatment), DescrStatsW(control)).tconfint_diff(
        alpha=0.05, usevar="unequal"
    )
    assert result.p_value == pytest.approx(reference.pvalue, abs=1e-9)
    assert result.diff == pytest.approx(treatment.mean() - control.mean(), abs=1e-9)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))


def test_two_proportions_matches_statsmodels() -> None:
    control, treatment = stats.Sample.of_counts(130, 1500), stats.Sample.of_counts(181, 1480)
    result = stats.two_proportions(control, treatment, alpha=0.1)
    _z, p = proportions_ztest([181, 130], [1480, 1500])
    low, high = confint_proportions_2indep(181, 1480, 130, 1500, method="wald", compare="diff", alpha=0.1)
    assert result.p_value == pytest.approx(p, abs=1e-9)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))


def test_rates_from_counts_equal_rates_from_values() -> None:
    values = np.r_[np.ones(37), np.zeros(263)]
    assert stats.Sample.of_counts(37, 300).var == pytest.approx(stats.Sample.of(values).var, abs=1e-12)


@pytest.mark.parametrize(("method", "reference"), [("holm", "holm"), ("bh", "fdr_bh")])
def test_corrections_match_statsmodels(method: str, reference: str) -> None:
    p_values = [0.01, 0.04, 0.03, 0.2, 0.001, 0.04]
    expected = multipletests(p_values, method=reference)[1]
    assert stats.adjust_p_values(p_values, method) == pytest.approx(expected.tolist(), abs=1e-12)


def test_bayesian_matches_numerical_integration() -> None:
    diff, se = 0.012, 0.008
    posterior = stats.bayesian(diff, se)
    density = sps.norm(diff, se).pdf
    chance, _ = integrate.quad(density, 0, np.inf, epsabs=1e-13)
    loss, _ = integrate.quad(lambda x: -x * density(x), -np.inf, 0, epsabs=1e-13)
    gain, _ = integrate.quad(lambda x: x * density(x), 0, np.inf, epsabs=1e-13)
    assert posterior.chance_to_beat_control == pytest.approx(chance, abs=1e-9)
    assert posterior.expected_loss == pytest.approx(loss, abs=1e-9)
    assert posterior.control_loss == pytest.approx(gain, abs=1e-9)


def test_cuped_is_welch_on_the_adjusted_metric_and_agrees_with_regression() -> None:
    import statsmodels.api as sm

    rng = np.random.default_rng(2)
    n = 4000
    before = rng.gamma(2, 2, n)
    treated = rng.random(n) < 0.5
    after = 0.8 * before + 0.5 * treated + rng.normal(0, 1, n)
    theta = stats.cuped_theta(before, after)
    adjusted = stats.cuped_adjust(before, after, theta, before.mean())
    result = stats.welch(stats.Sample.of(adjusted[~treated]), stats.Sample.of(adjusted[treated]))
    raw = stats.welch(stats.Sample.of(after[~treated]), stats.Sample.of(after[treated]))
    assert theta == pytest.approx(np.polyfit(before, after, 1)[0], abs=1e-9)
    reference = sps.ttest_ind(adjusted[treated], adjusted[~treated], equal_var=False)
    assert result.p_value == pytest.approx(reference.pvalue, abs=1e-9)
    # the regression adjustment with the same covariate estimates the same effect (different theta per fit)
    ols = sm.OLS(after, sm.add_constant(np.column_stack([treated, before - before.mean()]))).fit()
    assert result.diff == pytest.approx(ols.params[1], abs=0.01)
    # the covariate explains most of the variance, so the interval is much narrower
    assert (result.ci_high - result.ci_low) < 0.5 * (raw.ci_high - raw.ci_low)


def test_sample_ratio_matches_scipy_chisquare() -> None:
    observed = {"holdout": 480, "a": 2300, "b": 2220}
    shares = {"holdout": 0.1, "a": 0.45, "b": 0.45}
    reference = sps.chisquare([2300, 2220, 480], [2250, 2250, 500]).pvalue
    assert stats.sample_ratio(observed, shares).p_value == pytest.approx(reference, abs=1e-12)


def test_sequential_interval_agrees_with_its_p_value_and_is_wider_than_fixed() -> None:
    for diff in (0.0, 0.004, 0.01, 0.02, -0.03):
        result = stats.sequential(diff, 0.005, units=20_000, alpha=0.05)
        excludes_zero = result.ci_low > 0 or result.ci_high < 0
        assert excludes_zero == (result.p_value < 0.05)
        assert result.ci_high - result.ci_low > 2 * 1.96 * 0.005


# Simulations. Sampling error bands are 4 standard errors of the simulated rate: a false alarm in CI is
# about 1 in 15,000 runs, and each seed is fixed, so a run is reproducible.


def _band(rate: float, runs: int) -> float:
    return 4 * math.sqrt(rate * (1 - rate) / runs)


def test_false_positive_rate_is_alpha_without_effect() -> None:
    rng = np.random.default_rng(3)
    runs, n, alpha = 4000, 3000, 0.05
    x_c, x_t = rng.binomial(n, 0.08, runs), rng.binomial(n, 0.08, runs)
    rejected = np.array(
        [
            stats.two_proportions(stats.Sample.of_counts(c, n), stats.Sample.of_counts(t, n)).p_value < alpha
            for c, t in zip(x_c, x_t, strict=True)
        ]
    )
    assert abs(rejected.mean() - alpha) < _band(alpha, runs)


def test_welch_false_positive_rate_on_skewed_revenue() -> None:
    rng = np.random.default_rng(4)
    runs, alpha = 2000, 0.05
    rejected = []
    for _ in range(runs):
        control, treatment = rng.lognormal(5, 0.8, 800), rng.lognormal(5, 0.8, 900)
        rejected.append(stats.welch(stats.Sample.of(control), stats.Sample.of(treatment)).p_value < alpha)
    assert abs(np.mean(rejected) - alpha) < _band(alpha, runs)


def test_intervals_cover_a_known_effect_at_their_stated_rate() -> None:
    rng = np.random.default_rng(5)
    runs, n, alpha = 3000, 2500, 0.1
    truth = 0.12 - 0.09
    x_c, x_t = rng.binomial(n, 0.09, runs), rng.binomial(n, 0.12, runs)
    covered = [
        (r := stats.two_proportions(stats.Sample.of_counts(c, n), stats.Sample.of_counts(t, n), alpha)).ci_low
        <= truth
        <= r.ci_high
        for c, t in zip(x_c, x_t, strict=True)
    ]
    assert abs(np.mean(covered) - (1 - alpha)) < _band(1 - alpha, runs)


def test_cuped_interval_covers_a_known_effect() -> None:
    rng = np.random.default_rng(6)
    runs, n, covered, narrower = 1000, 1000, 0, 0
    for _ in range(runs):
        before = rng.poisson(2, 2 * n).astype(float)
        treated = np.arange(2 * n) >= n
        after = 0.5 * before + 0.3 * treated + rng.normal(0, 1, 2 * n)
        theta = stats.cuped_theta(before, after)
        adjusted = stats.cuped_adjust(before, after, theta, before.mean())
        result = stats.welch(stats.Sample.of(adjusted[:n]), stats.Sample.of(adjusted[n:]))
        raw = stats.welch(stats.Sample.of(after[:n]), stats.Sample.of(after[n:]))
        covered += result.ci_low <= 0.3 <= result.ci_high
        narrower += result.se < raw.se
    assert abs(covered / runs - 0.95) < _band(0.95, runs)
    assert narrower == runs


def test_sequential_test_keeps_alpha_when_looked_at_every_night_and_peeking_does_not() -> None:
    rng = np.random.default_rng(7)
    runs, nights, per_night, alpha = 1000, 30, 200, 0.05
    sequential_alarms = peeking_alarms = 0
    for _ in range(runs):
        c = np.cumsum(rng.binomial(per_night, 0.1, nights))
        t = np.cumsum(rng.binomial(per_night, 0.1, nights))
        seq = peek = False
        for night in range(nights):
            n = per_night * (night + 1)
            fixed = stats.two_proportions(
                stats.Sample.of_counts(c[night], n), stats.Sample.of_counts(t[night], n)
            )
            seq |= stats.sequential(fixed.diff, fixed.se, 2 * n, alpha).p_value < alpha
            peek |= fixed.p_value < alpha
        sequential_alarms += seq
        peeking_alarms += peek
    assert sequential_alarms / runs <= alpha + _band(alpha, runs)
    assert peeking_alarms / runs > 2 * alpha  # why the sequential option exists


def test_sample_ratio_check_flags_a_ten_percent_imbalance_and_rarely_a_fair_split() -> None:
    rng = np.random.default_rng(8)
    shares = {"holdout": 0.1, "a": 0.45, "b": 0.45}
    runs, n, threshold = 500, 20_000, 0.001
    fair = rng.multinomial(n, [0.45, 0.45, 0.1], runs)
    # variant a gets 10% more than its share, at b's expense
    skewed = rng.multinomial(n, [0.495, 0.405, 0.1], runs)
    fair_flags = [stats.sample_ratio(dict(zip(["a", "b", "holdout"], row, strict=True)), shares).p_value < threshold
                  for row in fair]  # fmt: skip
    skew_flags = [stats.sample_ratio(dict(zip(["a", "b", "holdout"], row, strict=True)), shares).p_value < threshold
                  for row in skewed]  # fmt: skip
    assert np.mean(skew_flags) == 1.0
    assert np.mean(fair_flags) < threshold + _band(threshold, runs)


def test_relative_lift_interval_covers_the_true_lift() -> None:
    rng = np.random.default_rng(9)
    runs, n = 3000, 4000
    true_lift = 0.11 / 0.08 - 1
    x_c, x_t = rng.binomial(n, 0.08, runs), rng.binomial(n, 0.11, runs)
    covered = [
        (r := stats.two_proportions(stats.Sample.of_counts(c, n), stats.Sample.of_counts(t, n))).lift_ci_low
        <= true_lift
        <= r.lift_ci_high
        for c, t in zip(x_c, x_t, strict=True)
    ]
    # the delta method is an approximation: within a point of 95% at these sizes
    assert abs(np.mean(covered) - 0.95) < 0.01 + _band(0.95, runs)
