from __future__ import annotations

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
