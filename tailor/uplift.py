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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from tailor.progress import boosting_rounds

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
    return _ranked_qini(*_ranked(scores, treated, converted))


def _ranked_qini(is_treated: np.ndarray, y: np.ndarray) -> QiniCurve:
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


# ---- learners --------------------------------------------------------------------------------------------
#
# Each learner takes a float32 feature matrix x (NaN = missing; categorical columns hold the index of the value
# in their vocabulary and are named by position), a boolean `treated` and an outcome y (0/1 or continuous), and
# returns a FittedLearner whose predict(x) is the estimated effect of treatment for each row.

TWO_MODEL, X_LEARNER, TRANSFORMED_OUTCOME = "two_model", "x_learner", "transformed_outcome"
LEARNERS = (TWO_MODEL, X_LEARNER, TRANSFORMED_OUTCOME)
# the boosters each learner keeps, by role: mu = the outcome under an arm, tau = the effect
ROLES = {
    TWO_MODEL: ("mu0", "mu1"),
    X_LEARNER: ("mu0", "mu1", "tau0", "tau1"),
    TRANSFORMED_OUTCOME: ("tau",),
}


@dataclass(frozen=True)
class Boosting:
    """How every booster of a learner is fitted: the house parameters (tasks/train.py lightgbm_params, whose
    objective each booster overrides), an upper bound on rounds, and early stopping on a seeded share of its
    training rows."""

    params: dict[str, Any]
    rounds: int = 600
    stopping_rounds: int = 30
    stop_share: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class FittedLearner:
    kind: str  # one of LEARNERS
    boosters: dict[str, lgb.Booster]  # role -> booster (ROLES[kind])
    propensity: float  # the treated share e of the training rows (the X-learner's weight, z's scale)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The estimated effect of treatment, per row of x."""
        b = {role: booster.predict(x) for role, booster in self.boosters.items()}
        if self.kind == TWO_MODEL:
            return b["mu1"] - b["mu0"]
        if self.kind == X_LEARNER:
            # Kuenzel et al. weight the control-side estimate by e: where treated units are many, tau0 (fitted
            # on the scarcer controls' imputed effects) gains, as each arm's outcome model is surer there
            return self.propensity * b["tau0"] + (1 - self.propensity) * b["tau1"]
        return b["tau"]

    def save(self, folder: Path, stem: str) -> dict[str, str]:
        """Each booster as a LightGBM text file `<stem>-<role>.txt` under folder: role -> path."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for role, booster in self.boosters.items():
            path = folder / f"{stem}-{role}.txt"
            path.write_text(booster.model_to_string())
            paths[role] = str(path)
        return paths


def load_learner(kind: str, paths: dict[str, str], propensity: float) -> FittedLearner:
    """A learner saved by FittedLearner.save, read back from its files."""
    if kind not in ROLES or set(paths) != set(ROLES[kind]):
        raise ValueError(f"uplift learner {kind!r} needs the boosters {ROLES.get(kind)}, got {sorted(paths)}")
    return FittedLearner(
        kind, {role: lgb.Booster(model_file=paths[role]) for role in ROLES[kind]}, propensity
    )


def _is_binary(y: np.ndarray) -> bool:
    values = np.unique(y)
    return values.size == 2 and set(values.tolist()) == {0.0, 1.0}


def fit_booster(
    x: np.ndarray, y: np.ndarray, categorical: list[int], boosting: Boosting, role: str, binary: bool
) -> lgb.Booster:
    """One LightGBM model, early-stopped on a seeded share of its rows (seeded per role, so the boosters of a
    learner do not all hold out the same positions)."""
    objective = "binary" if binary else "regression"
    params = boosting.params | {"objective": objective, "metric": "binary_logloss" if binary else "l2"}
    rng = np.random.default_rng([boosting.seed, *role.encode()])
    stop = rng.random(y.size) < boosting.stop_share
    if stop.all() or not stop.any() or (binary and not _is_binary(y[~stop])):
        stop = np.zeros(y.size, bool)  # too few rows to hold any out: the full bound of rounds, no stopping
    fit = lgb.Dataset(x[~stop], y[~stop], categorical_feature=categorical, free_raw_data=False)
    with boosting_rounds(f"uplift booster {role}", boosting.rounds) as advance:
        if not stop.any():
            return lgb.train(params, fit, num_boost_round=boosting.rounds, callbacks=[advance])
        valid = lgb.Dataset(x[stop], y[stop], reference=fit)
        return lgb.train(
            params,
            fit,
            num_boost_round=boosting.rounds,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(boosting.stopping_rounds, verbose=False), advance],
        )


def _arms(treated: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    is_treated = np.asarray(treated, dtype=bool)
    if is_treated.all() or not is_treated.any():
        raise ValueError("an uplift learner needs treated and control units")
    return is_treated, np.asarray(y, dtype=np.float64), float(is_treated.mean())


def _outcome_models(
    x: np.ndarray, is_treated: np.ndarray, y: np.ndarray, categorical: list[int], boosting: Boosting
) -> dict[str, lgb.Booster]:
    binary = _is_binary(y)
    return {
        "mu0": fit_booster(x[~is_treated], y[~is_treated], categorical, boosting, "mu0", binary),
        "mu1": fit_booster(x[is_treated], y[is_treated], categorical, boosting, "mu1", binary),
    }


def two_model(
    x: np.ndarray, treated: np.ndarray, y: np.ndarray, categorical: list[int], boosting: Boosting
) -> FittedLearner:
    """One outcome model per arm; the effect is mu1(x) - mu0(x) (the T-learner)."""
    is_treated, y, e = _arms(treated, y)
    return FittedLearner(TWO_MODEL, _outcome_models(x, is_treated, y, categorical, boosting), e)


def x_learner(
    x: np.ndarray, treated: np.ndarray, y: np.ndarray, categorical: list[int], boosting: Boosting
) -> FittedLearner:
    """Kuenzel, Sekhon, Bickel & Yu (2019): outcome models per arm, each unit's effect imputed with the other
    arm's model (D1 = y1 - mu0(x1) for the treated, D0 = mu1(x0) - y0 for the controls), one regressor per
    arm on those, combined as e * tau0 + (1 - e) * tau1 with e the treated share."""
    is_treated, y, e = _arms(treated, y)
    boosters = _outcome_models(x, is_treated, y, categorical, boosting)
    x1, x0 = x[is_treated], x[~is_treated]
    d1 = y[is_treated] - boosters["mu0"].predict(x1)
    d0 = boosters["mu1"].predict(x0) - y[~is_treated]
    boosters["tau1"] = fit_booster(x1, d1, categorical, boosting, "tau1", binary=False)
    boosters["tau0"] = fit_booster(x0, d0, categorical, boosting, "tau0", binary=False)
    return FittedLearner(X_LEARNER, boosters, e)


def transformed_outcome(
    x: np.ndarray, treated: np.ndarray, y: np.ndarray, categorical: list[int], boosting: Boosting
) -> FittedLearner:
    """Athey & Imbens (2015): z = y (T - e) / (e (1 - e)) has E[z | x] = the effect when treatment is random
    with probability e, so one regressor on z estimates it."""
    is_treated, y, e = _arms(treated, y)
    z = y * (is_treated - e) / (e * (1 - e))
    return FittedLearner(
        TRANSFORMED_OUTCOME, {"tau": fit_booster(x, z, categorical, boosting, "tau", binary=False)}, e
    )


FIT = {TWO_MODEL: two_model, X_LEARNER: x_learner, TRANSFORMED_OUTCOME: transformed_outcome}


# ---- splits ----------------------------------------------------------------------------------------------

TRAIN, VALIDATION, TEST = "train", "validation", "test"


def random_split(users: np.ndarray, shares: tuple[float, float, float], seed: int) -> np.ndarray:
    """Each row's part (train, validation, test), drawn per user with the seed: a user's rows stay together."""
    unique, inverse = np.unique(np.asarray(users, dtype=str), return_inverse=True)
    draws = np.random.default_rng(seed).random(unique.size)
    train, validation, _ = (s / sum(shares) for s in shares)
    part = np.where(draws < train, TRAIN, np.where(draws < train + validation, VALIDATION, TEST))
    return part[inverse]


def time_split(sent_at: np.ndarray, end: datetime, test_days: int, validation_days: int) -> np.ndarray:
    """Each row's part by its send: the last test_days before `end` are the test, the validation_days before
    them the validation, everything earlier the training."""
    sent = np.asarray(sent_at, dtype="datetime64[us]")
    test_from = np.datetime64(end - timedelta(days=test_days), "us")
    validation_from = np.datetime64(end - timedelta(days=test_days + validation_days), "us")
    return np.where(sent >= test_from, TEST, np.where(sent >= validation_from, VALIDATION, TRAIN))


# ---- evaluation ------------------------------------------------------------------------------------------


def auuc(scores: np.ndarray, treated: np.ndarray, converted: np.ndarray) -> float:
    """Area between the uplift curve and random targeting, over the share targeted. The uplift curve
    (Rzepakowski & Jaroszewicz 2012) at the top k units is (treated rate - control rate among them) * k, here
    divided by N like the Qini curve; unlike Qini it compares rates, so it does not lean on the arms' balance
    among the top units. A top share holding only one arm adds nothing (its rate difference is undefined)."""
    return _ranked_auuc(*_ranked(scores, treated, converted))


def _ranked_auuc(is_treated: np.ndarray, y: np.ndarray) -> float:
    n = y.size
    n_t, n_c = np.cumsum(is_treated), np.cumsum(~is_treated)
    y_t, y_c = np.cumsum(y * is_treated), np.cumsum(y * ~is_treated)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.where((n_t > 0) & (n_c > 0), y_t / np.maximum(n_t, 1) - y_c / np.maximum(n_c, 1), 0.0)
    curve = np.concatenate([[0.0], diff * np.arange(1, n + 1) / max(n, 1)])
    share = np.arange(n + 1) / max(n, 1)
    gap = curve - curve[-1] * share
    return float(np.sum((gap[1:] + gap[:-1]) * np.diff(share)) / 2)


def uplift_at_k(scores: np.ndarray, treated: np.ndarray, converted: np.ndarray, share: float) -> float:
    """Uplift at k per group (Gutierrez & Gerardy 2017; scikit-uplift's uplift_at_k(strategy="by_group")):
    treated and control units each ranked by score, the treated rate among the top `share` of the treated
    minus the control rate among the top `share` of the controls."""
    scores = np.asarray(scores, dtype=float)
    is_treated = np.asarray(treated, dtype=bool)
    y = np.asarray(converted, dtype=float)
    rates = []
    for arm in (is_treated, ~is_treated):
        if not arm.any():
            return math.nan
        arm_scores, arm_y = scores[arm], y[arm]
        top = max(1, math.ceil(share * arm_y.size))
        rates.append(arm_y[np.argsort(-arm_scores, kind="stable")[:top]].mean())
    return float(rates[0] - rates[1])


def average_effect(treated: np.ndarray, converted: np.ndarray) -> float:
    """Treated minus control mean outcome: what targeting at random gains at any share (uplift@k's random)."""
    is_treated = np.asarray(treated, dtype=bool)
    y = np.asarray(converted, dtype=float)
    if is_treated.all() or not is_treated.any():
        return math.nan
    return float(y[is_treated].mean() - y[~is_treated].mean())


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # bootstrap percentile interval
    high: float

    @property
    def clears_zero(self) -> bool:
        return math.isfinite(self.low) and self.low > 0


@dataclass(frozen=True)
class UpliftScores:
    """A scored test set's evaluation, each figure with its bootstrap interval."""

    qini: Estimate  # random targeting: 0
    auuc: Estimate  # random targeting: 0
    uplift_at: dict[float, Estimate]  # share -> uplift@k per group
    random: Estimate  # the average effect: uplift@k of random targeting
    margin: dict[float, Estimate]  # share -> uplift@k minus the average effect
    treated_units: int
    control_units: int


def _figures(scores: np.ndarray, treated: np.ndarray, y: np.ndarray, shares: tuple[float, ...]) -> np.ndarray:
    ate = average_effect(treated, y)
    at = [uplift_at_k(scores, treated, y, share) for share in shares]
    return np.array(
        [
            qini_curve(scores, treated, y).coefficient,
            auuc(scores, treated, y),
            ate,
            *at,
            *(u - ate for u in at),
        ]
    )


def _sorted_figures(is_treated: np.ndarray, y: np.ndarray, shares: tuple[float, ...]) -> np.ndarray:
    """_figures of units already in ranked order (score descending): the same figures with no sort, as a
    bootstrap resample of ranked units is itself ranked."""
    ate = average_effect(is_treated, y)
    at = []
    for share in shares:
        rates = []
        for arm in (is_treated, ~is_treated):
            if not arm.any():
                rates = [math.nan, math.nan]
                break
            arm_y = y[arm]
            rates.append(arm_y[: max(1, math.ceil(share * arm_y.size))].mean())
        at.append(float(rates[0] - rates[1]))
    return np.array(
        [
            _ranked_qini(is_treated, y).coefficient,
            _ranked_auuc(is_treated, y),
            ate,
            *at,
            *(u - ate for u in at),
        ]
    )


def evaluate(
    scores: np.ndarray,
    treated: np.ndarray,
    converted: np.ndarray,
    shares: tuple[float, ...] = (0.1, 0.2, 0.3),
    samples: int = 200,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> UpliftScores:
    """Qini, AUUC, uplift@k per group, random targeting's value and the margin over it, with percentile
    intervals from `samples` bootstrap resamples that draw treated and control units separately (each arm
    keeps its size, as the experiment fixed it). With `groups` (a user per unit, when a user has several
    sends) whole users are drawn instead, so a user's correlated sends never count as independent evidence."""
    scores = np.asarray(scores, dtype=float)
    is_treated = np.asarray(treated, dtype=bool)
    y = np.asarray(converted, dtype=float)
    point = _figures(scores, is_treated, y, shares)
    rng = np.random.default_rng(seed)
    t_index, c_index = np.flatnonzero(is_treated), np.flatnonzero(~is_treated)
    draws = np.empty((samples, point.size))
    codes = np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None else None
    # ranked once: a resample is each unit repeated as often as it was drawn, laid out in this order, so no
    # resample needs a sort of its own (units tied on score keep their input order)
    order = np.argsort(-scores, kind="stable")
    for b in range(samples):
        if codes is not None:
            # each unit repeated as often as its user was drawn
            drawn = np.bincount(rng.integers(0, codes.max() + 1, codes.max() + 1), minlength=codes.max() + 1)
            copies = drawn[codes]
        else:
            index = np.concatenate([rng.choice(t_index, t_index.size), rng.choice(c_index, c_index.size)])
            copies = np.bincount(index, minlength=y.size)
        ranked = np.repeat(order, copies[order])
        draws[b] = _sorted_figures(is_treated[ranked], y[ranked], shares)
    tail = (1 - level) / 2 * 100
    with np.errstate(invalid="ignore"):
        low, high = (
            np.nanpercentile(draws, [tail, 100 - tail], axis=0)
            if samples and t_index.size and c_index.size
            else (np.full(point.size, np.nan),) * 2
        )
    estimates = [Estimate(float(v), float(lo), float(hi)) for v, lo, hi in zip(point, low, high, strict=True)]
    k = len(shares)
    return UpliftScores(
        qini=estimates[0],
        auuc=estimates[1],
        random=estimates[2],
        uplift_at=dict(zip(shares, estimates[3 : 3 + k], strict=True)),
        margin=dict(zip(shares, estimates[3 + k :], strict=True)),
        treated_units=int(t_index.size),
        control_units=int(c_index.size),
    )
