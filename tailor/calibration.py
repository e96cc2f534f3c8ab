"""Probability calibration (Platt scaling) and the calibration table that shows whether it worked."""

from __future__ import annotations

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fit_platt(raw_scores: np.ndarray, labels: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """(a, b) such that sigmoid(a * raw_score + b) is calibrated on these labels (Newton's method on the
    log loss, with a tiny ridge so a separable sample cannot diverge)."""
    s = np.asarray(raw_scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = _sigmoid(a * s + b)
        w = p * (1 - p)
        gradient = np.array([np.sum((p - y) * s) + 1e-6 * a, np.sum(p - y)])
        hessian = np.array([[np.sum(w * s * s) + 1e-6, np.sum(w * s)], [np.sum(w * s), np.sum(w) + 1e-9]])
        step = np.linalg.solve(hessian, gradient)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def apply_platt(raw_scores: np.ndarray, calibration: dict[str, float]) -> np.ndarray:
    return _sigmoid(calibration["a"] * np.asarray(raw_scores, dtype=np.float64) + calibration["b"])


def calibration_table(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> list[dict[str, float]]:
    """Per decile of predicted probability: users, mean predicted probability, observed rate."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.size == 0:
        return []
    order = np.argsort(p, kind="stable")
    rows = []
    for number, part in enumerate(np.array_split(order, bins), start=1):
        if part.size:
            rows.append(
                {"bin": number, "users": int(part.size), "mean_predicted": float(p[part].mean()),
                 "observed_rate": float(y[part].mean())}
            )  # fmt: skip
    return rows
