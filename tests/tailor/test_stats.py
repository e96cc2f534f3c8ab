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


TINY_ARMS = [(0, 200), (1, 200), (200, 0), (200, 1), (0, 0), (1, 1), (0, 1)]


def _values(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(5, 1, n)


@pytest.fixture
def no_warnings():
    """Any warning (numpy's degrees-of-freedom or empty-mean RuntimeWarning) fails the test."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize(("n_c", "n_t"), TINY_ARMS)
def test_welch_and_two_proportions_with_an_arm_of_0_or_1_units_say_not_enough_data(
    n_c: int, n_t: int
) -> None:
    control, treatment = stats.Sample.of(_values(n_c, 1)), stats.Sample.of(_values(n_t, 2))
    rates = (stats.Sample.of_counts(min(n_c, 1), n_c), stats.Sample.of_counts(n_t // 3, n_t))
    for result, (c, t) in ((stats.welch(control, treatment), (control, treatment)),
                           (stats.two_proportions(*rates), rates)):  # fmt: skip
        assert result.reason is not None and result.reason.startswith("not enough data")
        assert f"{n_c} units in the control and {n_t} in the treatment" in result.reason
        for figure in (result.se, result.ci_low, result.ci_high, result.p_value, result.lift_ci_low):
            assert math.isnan(figure)
        if min(n_c, n_t) == 0:
            assert math.isnan(result.diff) and math.isnan(result.lift)
        else:  # both arms have a mean: the difference is still reported, only its statistics are not
            assert result.diff == pytest.approx(t.mean - c.mean)


@pytest.mark.usefixtures("no_warnings")
def test_two_units_per_arm_are_enough_and_carry_no_reason() -> None:
    result = stats.welch(stats.Sample.of(np.array([1.0, 2.0])), stats.Sample.of(np.array([3.0, 5.0])))
    reference = sps.ttest_ind([3.0, 5.0], [1.0, 2.0], equal_var=False)
    assert result.reason is None and result.p_value == pytest.approx(reference.pvalue, abs=1e-12)
    rates = stats.two_proportions(stats.Sample.of_counts(1, 2), stats.Sample.of_counts(2, 2))
    assert rates.reason is None and rates.diff == pytest.approx(0.5)


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize("n", [0, 1])
def test_cuped_theta_of_fewer_than_two_units_is_nan(n: int) -> None:
    assert math.isnan(stats.cuped_theta(np.arange(n, dtype=float), np.arange(n, dtype=float)))
    # two units are enough; a covariate that never varies explains nothing
    assert stats.cuped_theta(np.array([1.0, 3.0]), np.array([2.0, 6.0])) == pytest.approx(2.0)
    assert stats.cuped_theta(np.array([4.0, 4.0]), np.array([2.0, 6.0])) == 0.0


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize(("n_c", "n_t"), TINY_ARMS)
def test_sequential_and_bayesian_of_a_comparison_without_statistics_are_nan_with_a_reason(
    n_c: int, n_t: int
) -> None:
    comparison = stats.welch(stats.Sample.of(_values(n_c, 3)), stats.Sample.of(_values(n_t, 4)))
    seq = stats.sequential(comparison.diff, comparison.se, n_c + n_t)
    assert seq.reason is not None and seq.reason.startswith("not enough data")
    assert all(math.isnan(v) for v in (seq.ci_low, seq.ci_high, seq.p_value))
    posterior = stats.bayesian(comparison.diff, comparison.se)
    assert posterior.reason is not None and posterior.reason.startswith("not enough data")
    assert all(math.isnan(v) for v in (posterior.chance_to_beat_control, posterior.expected_loss))
    # a known difference and standard error over fewer than two units is no sequence either
    assert math.isnan(stats.sequential(0.1, 0.05, 1).p_value)
    assert stats.sequential(0.1, 0.05, 2).reason is None and stats.bayesian(0.1, 0.05).reason is None


@pytest.mark.usefixtures("no_warnings")
def test_sample_ratio_of_arms_with_0_or_1_units() -> None:
    shares = {"holdout": 0.1, "contacted": 0.9}
    for observed in ({}, {"holdout": 1}, {"contacted": 1}, {"holdout": 0, "contacted": 0}):
        result = stats.sample_ratio(observed, shares)
        assert math.isnan(result.p_value) and result.reason.startswith("not enough data"), observed
    single = stats.sample_ratio({"a": 500}, {"a": 1.0})
    assert math.isnan(single.p_value) and "single arm" in single.reason
    # a starved arm among many units is what the check exists for: tested, and flagged
    for starved in (0, 1):
        result = stats.sample_ratio({"holdout": starved, "contacted": 999}, shares)
        expected = sps.chisquare([starved, 999], [0.1 * (999 + starved), 0.9 * (999 + starved)]).pvalue
        assert result.reason is None and result.p_value == pytest.approx(expected, rel=1e-12)
        assert result.p_value < 1e-20
    # two units are tested (the chi-squared test of a fair 1:1)
    assert stats.sample_ratio({"a": 1, "b": 1}, {"a": 0.5, "b": 0.5}).p_value == pytest.approx(1.0)


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize(("n_c", "n_t"), TINY_ARMS)
def test_power_functions_with_an_arm_of_0_or_1_units(n_c: int, n_t: int) -> None:
    control = stats.Sample.of(_values(n_c, 5))
    sd = math.sqrt(control.var)  # NaN: fewer than two units have no deviation
    assert math.isnan(sd) == (n_c < 2)
    # either arm of 0 or 1 units: the control has no deviation, or the treatment none to compare
    if n_c < 2 or n_t == 0:
        assert math.isnan(stats.minimum_detectable_effect(sd, n_c, n_t))
        assert math.isnan(stats.power_at(0.5, sd, n_c, n_t))
        assert math.isnan(stats.days_to_decision(0.5, sd, n_c, n_t, 7.0))
    # a known deviation but an empty arm: no difference can be detected at any size
    if min(n_c, n_t) == 0:
        assert math.isnan(stats.minimum_detectable_effect(1.0, n_c, n_t))
        assert math.isnan(stats.power_at(0.5, 1.0, n_c, n_t))
        assert math.isnan(stats.days_to_decision(0.5, 1.0, n_c, n_t, 7.0))
    if n_c < 2:
        assert math.isnan(stats.units_needed(0.5, sd, 0.5))
    assert math.isnan(stats.rate_sd(stats.Sample.of_counts(0, 0).mean))


POWER_CASES = [
    # (per-unit sd, control units, treatment units, alpha)
    (1.0, 500, 500, 0.05),
    (stats.rate_sd(0.08), 1_000, 9_000, 0.05),
    (1090.0, 2_000, 4_500, 0.1),
    (stats.rate_sd(0.3), 250, 120, 0.01),
]


@pytest.mark.parametrize(("sd", "n_c", "n_t", "alpha"), POWER_CASES)
def test_minimum_detectable_effect_and_power_match_statsmodels(
    sd: float, n_c: int, n_t: int, alpha: float
) -> None:
    from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power

    ratio = n_c / n_t  # statsmodels: nobs2 = nobs1 * ratio
    standardized = zt_ind_solve_power(effect_size=None, nobs1=n_t, alpha=alpha, power=0.8, ratio=ratio)
    mde = stats.minimum_detectable_effect(sd, n_c, n_t, alpha)
    # the closed form leaves out the far tail, which statsmodels' solver keeps: under 1e-4 of power
    assert mde == pytest.approx(standardized * sd, rel=1e-4)
    assert stats.power_at(mde, sd, n_c, n_t, alpha) == pytest.approx(0.8, abs=1e-4)
    for effect in (0.0, 0.3 * mde, -mde, 2.5 * mde):
        expected = NormalIndPower().power(effect / sd, nobs1=n_t, alpha=alpha, ratio=ratio)
        assert stats.power_at(effect, sd, n_c, n_t, alpha) == pytest.approx(expected, abs=1e-12)
    # the units that detect half the mde in the same proportions: four times today's, as statsmodels solves
    nobs1 = zt_ind_solve_power(effect_size=0.5 * mde / sd, nobs1=None, alpha=alpha, power=0.8, ratio=ratio)
    needed = stats.units_needed(0.5 * mde, sd, n_c / (n_c + n_t), alpha)
    assert needed == pytest.approx(nobs1 * (1 + ratio), rel=1e-4)
    assert needed == pytest.approx(4 * (n_c + n_t), rel=1e-12)


def test_power_is_the_rejection_rate_of_welchs_test_at_the_minimum_detectable_effect() -> None:
    rng = np.random.default_rng(12)
    runs, n_c, n_t, alpha = 2000, 400, 600, 0.05
    mde = stats.minimum_detectable_effect(1.0, n_c, n_t, alpha)
    rejected = [
        stats.welch(stats.Sample.of(rng.normal(0, 1, n_c)), stats.Sample.of(rng.normal(mde, 1, n_t))).p_value
        < alpha
        for _ in range(runs)
    ]
    assert abs(np.mean(rejected) - 0.8) < _band(0.8, runs)


def test_days_to_decision_at_todays_enrollment() -> None:
    sd, n_c, n_t, elapsed = 1.0, 300, 700, 10.0
    mde = stats.minimum_detectable_effect(sd, n_c, n_t)
    # half the detectable effect needs four times the units: 30 more days at 100 units a day
    assert stats.days_to_decision(0.5 * mde, sd, n_c, n_t, elapsed) == 30
    assert stats.days_to_decision(-0.5 * mde, sd, n_c, n_t, elapsed) == 30
    # a third needs nine times: 80 more days; partial days round up
    assert stats.days_to_decision(mde / 3, sd, n_c, n_t, elapsed) == 80
    assert stats.days_to_decision(0.99 * mde, sd, n_c, n_t, elapsed) == 1
    # a difference today's sample already detects needs no more days
    assert stats.days_to_decision(2 * mde, sd, n_c, n_t, elapsed) == 0
    # no difference, an unknown one, no spread or no time: undefined
    for effect, deviation, days in (
        (0.0, sd, elapsed),
        (math.nan, sd, elapsed),
        (mde, 0.0, elapsed),
        (mde, sd, 0.0),
    ):
        assert math.isnan(stats.days_to_decision(effect, deviation, n_c, n_t, days))


def test_rate_sd_is_the_binomial_deviation() -> None:
    assert stats.rate_sd(0.2) == pytest.approx(0.4)
    assert stats.rate_sd(0.0) == 0.0 and math.isnan(stats.rate_sd(math.nan))
    assert math.isnan(stats.minimum_detectable_effect(stats.rate_sd(0.0), 100, 100))
