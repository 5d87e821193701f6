"""Classification metrics from scikit-learn, shared by training (validation) and ``bertcls.evaluate``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of the true class; probabilities clipped so one confident mistake stays finite."""
    p = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)
    return float(-np.log(p).mean())


def core_metrics(y_true: Sequence[int], probs: np.ndarray) -> dict[str, float]:
    """loss, accuracy and macro F1: what training tracks on the validation split."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(-1)
    labels = list(range(probs.shape[1]))
    return {
        "loss": log_loss(y_true, probs),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best
