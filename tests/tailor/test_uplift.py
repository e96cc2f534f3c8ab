from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from tailor import uplift


def _brute_force_qini(scores: np.ndarray, treated: np.ndarray, converted: np.ndarray) -> list[float]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable, like the code
    out, y_t, y_c, n_t, n_c = [0.0], 0.0, 0.0, 0, 0
    for i in order:
        if treated[i]:
            y_t, n_t = y_t + converted[i], n_t + 1
        else:
            y_c, n_c = y_c + converted[i], n_c + 1
        out.append((y_t - (y_c * n_t / n_c if n_c else 0.0)) / len(scores))
    return out


def test_qini_curve_matches_a_direct_count() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=300).round(1)  # rounding makes ties
    treated = rng.random(300) < 0.6
    converted = (rng.random(300) < 0.2).astype(float)
    curve = uplift.qini_curve(scores, treated, converted)
    assert curve.incremental.tolist() == pytest.approx(
        _brute_force_qini(scores, treated, converted), abs=1e-12
    )


def test_uplift_at_matches_a_direct_count() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    treated = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0], bool)
    converted = np.array([1, 0, 1, 0, 1, 0, 0, 0, 1, 1], float)
    # top 50%: treated rows 0, 2, 3 (2 of 3 convert), control rows 1, 4 (1 of 2)
    assert uplift.uplift_at(scores, treated, converted, 0.5) == pytest.approx(2 / 3 - 1 / 2)


def test_a_model_that_knows_the_effect_has_a_positive_qini_and_noise_does_not() -> None:
    rng = np.random.default_rng(1)
    n = 40_000
    effect = rng.uniform(-0.05, 0.15, n)
    treated = rng.random(n) < 0.5
    converted = rng.random(n) < 0.1 + effect * treated
    informed = uplift.qini_curve(effect, treated, converted)
    noise = uplift.qini_curve(rng.random(n), treated, converted)
    # theory: half the units treated, effect 0.15 - 0.2 s at rank share s, so the gap over random
    # targeting is 0.5 * (0.1 s - 0.1 s^2) and its area 0.5 * 0.1 * (1/2 - 1/3) = 1/120
    assert informed.coefficient == pytest.approx(1 / 120, rel=0.1)
    assert abs(noise.coefficient) < informed.coefficient / 4
    assert uplift.uplift_at(effect, treated, converted, 0.1) > uplift.uplift_at(
        effect, treated, converted, 0.3
    )
    small = uplift.downsample(informed)
    assert small.share[0] == 0 and small.share[-1] == 1 and small.share.size == uplift.CURVE_POINTS


# ---- uplift@k per group, AUUC, intervals ---------------------------------------------------------------------


def test_uplift_at_k_ranks_each_arm_on_its_own() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    treated = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0], bool)
    converted = np.array([1, 0, 1, 0, 1, 0, 0, 0, 1, 1], float)
    # treated by score: rows 0, 2, 3, 6, 8 -> y 1, 1, 0, 0, 1; top 40% = ceil(2.0) = 2 rows: rate 1
    # control by score: rows 1, 4, 5, 7, 9 -> y 0, 1, 0, 0, 1; top 2 rows: rate 1/2
    assert uplift.uplift_at_k(scores, treated, converted, 0.4) == pytest.approx(1 - 1 / 2)
    # top 50%: ceil(2.5) = 3 rows each: treated 2/3, control 1/3
    assert uplift.uplift_at_k(scores, treated, converted, 0.5) == pytest.approx(2 / 3 - 1 / 3)
    # everyone: the average effect, random targeting's value at every share
    assert uplift.uplift_at_k(scores, treated, converted, 1.0) == pytest.approx(3 / 5 - 2 / 5)
    assert uplift.average_effect(treated, converted) == pytest.approx(3 / 5 - 2 / 5)
    assert np.isnan(uplift.uplift_at_k(scores, np.ones(10, bool), converted, 0.3))


def test_auuc_of_four_units_by_hand() -> None:
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    treated = np.array([True, False, True, False])
    converted = np.array([1.0, 0.0, 0.0, 0.0])
    # top 1: one arm only, 0; top 2: (1 - 0) * 2/4 = 0.5; top 3: (1/2 - 0) * 3/4 = 0.375; all: (1/2 - 0) * 1
    # = 0.5, whose random line is 0.5 * share; gaps at shares 0, 1/4, 1/2, 3/4, 1: 0, -0.125, 0.25, 0, 0
    # trapezoids: (0 - 0.125) / 8 + (-0.125 + 0.25) / 8 + (0.25 + 0) / 8 + 0 = 0.25 / 8
    assert uplift.auuc(scores, treated, converted) == pytest.approx(0.25 / 8)
    # the reverse order puts the converter last: below random
    assert uplift.auuc(-scores, treated, converted) < 0


def _informed(seed: int, n: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half the units gain 0.2 from treatment, the other half nothing; the score is the true effect."""
    rng = np.random.default_rng(seed)
    effect = np.where(rng.random(n) < 0.5, 0.2, 0.0)
    treated = rng.random(n) < 0.5
    converted = (rng.random(n) < 0.1 + effect * treated).astype(float)
    return effect, treated, converted


def test_the_intervals_contain_the_truth_in_a_simple_case() -> None:
    scores, treated, converted = _informed(2)
    result = uplift.evaluate(scores, treated, converted, shares=(0.3,), samples=200, seed=5)
    # the top 30% of each arm all gain 0.2; random targeting gains the average, 0.1; the margin is 0.1
    for estimate, truth in ((result.uplift_at[0.3], 0.2), (result.random, 0.1), (result.margin[0.3], 0.1)):
        assert estimate.low < truth < estimate.high, (estimate, truth)
        assert estimate.low < estimate.value < estimate.high
    assert result.qini.clears_zero and result.auuc.clears_zero and result.margin[0.3].clears_zero
    assert (result.treated_units, result.control_units) == (int(treated.sum()), int((~treated).sum()))


def test_a_score_unrelated_to_the_effect_does_not_clear_random() -> None:
    _, treated, converted = _informed(3)
    noise = np.random.default_rng(4).random(treated.size)
    result = uplift.evaluate(noise, treated, converted, shares=(0.3,), samples=200, seed=5)
    assert result.margin[0.3].low < 0 < result.margin[0.3].high
    assert result.qini.low < 0 < result.qini.high


def test_the_bootstrap_is_reproducible_for_a_seed() -> None:
    scores, treated, converted = _informed(6, n=4000)
    first = uplift.evaluate(scores, treated, converted, samples=50, seed=11)
    again = uplift.evaluate(scores, treated, converted, samples=50, seed=11)
    other = uplift.evaluate(scores, treated, converted, samples=50, seed=12)
    assert first == again
    assert first.qini.value == other.qini.value and first.qini.low != other.qini.low


def test_a_ranked_resample_gives_the_figures_of_the_resample_itself() -> None:
    # the bootstrap lays each resample out in the ranking computed once; with distinct scores that is
    # exactly the resample ranked on its own
    scores, treated, converted = _informed(7, n=3000)
    scores = scores + np.random.default_rng(8).random(scores.size) * 1e-6  # no ties
    index = np.random.default_rng(9).integers(0, scores.size, scores.size)
    order = np.argsort(-scores, kind="stable")
    ranked = np.repeat(order, np.bincount(index, minlength=scores.size)[order])
    direct = uplift._figures(scores[index], treated[index], converted[index], (0.1, 0.3))
    assert uplift._sorted_figures(treated[ranked], converted[ranked], (0.1, 0.3)) == pytest.approx(direct)


# ---- splits ---------------------------------------------------------------------------------------------------


def test_the_random_split_keeps_a_users_rows_together_at_the_configured_shares() -> None:
    users = np.array([f"u{i % 5000}" for i in range(10_000)])
    part = uplift.random_split(users, (0.6, 0.2, 0.2), seed=1)
    assert part.tolist() == uplift.random_split(users, (0.6, 0.2, 0.2), seed=1).tolist()
    assert (part[:5000] == part[5000:]).all()  # the same user, rows i and i + 5000
    for name, share in ((uplift.TRAIN, 0.6), (uplift.VALIDATION, 0.2), (uplift.TEST, 0.2)):
        assert (part == name).mean() == pytest.approx(share, abs=0.02)


def test_the_time_split_takes_the_last_days_as_test_and_the_days_before_as_validation() -> None:
    end = datetime(2026, 3, 2)
    sent = np.array(
        [end - timedelta(days=d) for d in (0.5, 6.9, 7.1, 10, 13.9, 14.1, 40)], dtype="datetime64[us]"
    )
    part = uplift.time_split(sent, end, test_days=7, validation_days=7)
    assert part.tolist() == ["test", "test", "validation", "validation", "validation", "train", "train"]


# ---- learners -------------------------------------------------------------------------------------------------

BOOSTING = uplift.Boosting(
    {"seed": 0, "deterministic": True, "force_row_wise": True, "num_threads": 1, "verbosity": -1,
     "learning_rate": 0.05, "num_leaves": 7, "min_data_in_leaf": 100},
    rounds=300, stopping_rounds=20, stop_share=0.2, seed=0,
)  # fmt: skip


def simulated(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Units whose gain from treatment is 0.12 when feature 0 is above 0.6 and -0.02 otherwise; feature 1
    moves the base rate only, feature 2 is noise and feature 3 a categorical (0..3) that matters not."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.random(n), rng.random(n), rng.random(n), rng.integers(0, 4, n)]).astype(
        np.float32
    )
    x[rng.random(n) < 0.05, 2] = np.nan  # missing values are allowed
    effect = np.where(x[:, 0] > 0.6, 0.12, -0.02)
    treated = rng.random(n) < 0.6
    converted = (rng.random(n) < 0.05 + 0.1 * x[:, 1] + effect * treated).astype(float)
    return x, treated, converted, effect


@pytest.fixture(scope="module")
def fitted() -> dict[str, tuple[uplift.UpliftScores, uplift.UpliftScores]]:
    """Every learner on the same simulated training set, evaluated on a test set: with the feature that drives
    the effect, and without it."""
    x, treated, y, _ = simulated(10, 12_000)
    x_test, t_test, y_test, _ = simulated(11, 12_000)
    out = {}
    for kind, fit in uplift.FIT.items():
        scores = []
        for columns in ([0, 1, 2, 3], [1, 2, 3]):
            learner = fit(x[:, columns], treated, y, [columns.index(3)], BOOSTING)
            scores.append(
                uplift.evaluate(
                    learner.predict(x_test[:, columns]), t_test, y_test, (0.3,), samples=100, seed=1
                )
            )
        out[kind] = (scores[0], scores[1])
    return out


@pytest.mark.parametrize("kind", uplift.LEARNERS)
def test_every_learner_beats_random_targeting_with_an_interval_that_clears_it(fitted, kind) -> None:
    informed, _ = fitted[kind]
    # the top 30% of each arm is mostly units with feature 0 above 0.6 (40% of all), which gain 0.12 against
    # an average effect of 0.4 * 0.12 - 0.6 * 0.02 = 0.036
    assert informed.margin[0.3].clears_zero and informed.qini.clears_zero, informed
    assert informed.uplift_at[0.3].value > 0.08 and informed.random.value == pytest.approx(0.036, abs=0.015)


@pytest.mark.parametrize("kind", uplift.LEARNERS)
def test_without_the_feature_that_drives_the_effect_qini_and_uplift_at_30_fall(fitted, kind) -> None:
    informed, blind = fitted[kind]
    assert blind.qini.value < informed.qini.low and blind.uplift_at[0.3].value < informed.uplift_at[0.3].low
    assert not blind.margin[0.3].clears_zero


def test_a_learner_saved_and_loaded_predicts_the_same(tmp_path) -> None:
    x, treated, y, _ = simulated(12, 3000)
    for kind, fit in uplift.FIT.items():
        learner = fit(x, treated, y, [3], BOOSTING)
        paths = learner.save(tmp_path / kind, "c__v")
        assert set(paths) == set(uplift.ROLES[kind])
        loaded = uplift.load_learner(kind, paths, learner.propensity)
        assert np.array_equal(loaded.predict(x), learner.predict(x))


def test_the_x_learner_combines_its_arms_by_the_treated_share() -> None:
    x, treated, y, _ = simulated(13, 3000)
    learner = uplift.x_learner(x, treated, y, [3], BOOSTING)
    e = treated.mean()
    tau0, tau1 = learner.boosters["tau0"].predict(x), learner.boosters["tau1"].predict(x)
    assert learner.propensity == pytest.approx(e)
    assert learner.predict(x) == pytest.approx(e * tau0 + (1 - e) * tau1)


def test_a_learner_needs_both_arms() -> None:
    x, _, y, _ = simulated(14, 500)
    with pytest.raises(ValueError, match="treated and control"):
        uplift.two_model(x, np.ones(500, bool), y, [3], BOOSTING)
