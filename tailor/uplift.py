"""Uplift evaluation: how well a model's predicted effect ranks units by their real effect.

Units are sends of a variant (treated) and holdout sends (control), scored by the predicted uplift
P(convert | variant) - P(convert | no contact). Sorted by that score, best first:

- the Qini curve at the top k units is Q(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k), the incremental
  conversions among them (Radcliffe 2007), here divided by the number of units N so it reads as
  incremental conversions per unit;
- the Qini coefficient is the area between that curve and the straight line of random targeting, over the
  share of units targeted: positive when the model targets better than chance;
- uplift at 10% is the treated minus the control conversion rate among the top 10% of units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CURVE_POINTS = 101


@dataclass(frozen=True)
class QiniCurve:
    share: np.ndarray  # share of units targeted, 0..1
    incremental: np.ndarray  # incremental conversions per unit among them

    @property
    def random(self) -> np.ndarray:
        return self.incremental[-1] * self.share

    @property
    def coefficient(self) -> float:
        gap = self.incremental - self.random
        return float(np.sum((gap[1:] + gap[:-1]) * np.diff(self.share)) / 2)


def _ranked(scores: np.ndarray, treated: np.ndarray, converted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # stable sort on the negated score: ties keep their input order, so the curve is reproducible
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    return np.asarray(treated, dtype=bool)[order], np.asarray(converted, dtype=float)[order]


def qini_curve(scores: np.ndarray, treated: np.ndarray, converted: np.ndarray) -> QiniCurve:
    is_treated, y = _ranked(scores, treated, converted)
    n = y.size
    n_t = np.concatenate([[0], np.cumsum(is_treated)])
    n_c = np.concatenate([[0], np.cumsum(~is_treated)])
    y_t = np.concatenate([[0.0], np.cumsum(y * is_treated)])
    y_c = np.concatenate([[0.0], np.cumsum(y * ~is_treated)])
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled_control = np.where(n_c > 0, y_c * n_t / np.maximum(n_c, 1), 0.0)
    return QiniCurve(np.arange(n + 1) / max(n, 1), (y_t - scaled_control) / max(n, 1))


def uplift_at(scores: np.ndarray, treated: np.ndarray, converted: np.ndarray, share: float) -> float:
    """Treated minus control conversion rate among the top `share` of units by score."""
    is_treated, y = _ranked(scores, treated, converted)
    top = max(1, math.ceil(share * y.size))
    is_treated, y = is_treated[:top], y[:top]
    if is_treated.all() or not is_treated.any():
        return math.nan
    return float(y[is_treated].mean() - y[~is_treated].mean())


def downsample(curve: QiniCurve, points: int = CURVE_POINTS) -> QiniCurve:
    """The curve at evenly spaced shares, for plots and the published table."""
    index = np.unique(np.round(np.linspace(0, curve.share.size - 1, points)).astype(int))
    return QiniCurve(curve.share[index], curve.incremental[index])
