"""Classification metrics from scikit-learn, shared by training (validation) and ``bertcls.evaluate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# scikit-learn (with scipy) holds a lot of resident memory (docs/benchmarks.md, "Levers"): the metrics a training run
# tracks are computed here with numpy alone (tests hold them equal to sklearn's), and sklearn is imported only for the
# full evaluation report.


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of the true class; probabilities clipped so one confident mistake stays finite."""
    p = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)
    return float(-np.log(p).mean())


def core_metrics(y_true: Sequence[int], probs: np.ndarray) -> dict[str, float]:
    """loss, accuracy and macro F1: what training tracks on the validation split."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(-1)
    classes = np.arange(probs.shape[1])
    # one-vs-rest decisions per class: (examples, classes) booleans
    true, pred = y_true[:, None] == classes, y_pred[:, None] == classes
    return {
        "loss": log_loss(y_true, probs),
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(f1_scores(true, pred).mean()),
    }


def f1_scores(true: np.ndarray, pred: np.ndarray, axis: int | None = 0) -> np.ndarray:
    """F1 = 2 tp / (2 tp + fp + fn) of boolean decision arrays, per column (``axis=0``) or pooled (``axis=None``);
    0 where a column has neither a true nor a predicted positive (sklearn's ``zero_division=0``)."""
    tp = (true & pred).sum(axis)
    wrong = (true ^ pred).sum(axis)
    denom = 2 * tp + wrong
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def binary_log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy over examples and labels (the multi-label training loss without pos_weight);
    probabilities clipped so one confident mistake stays finite."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    y = np.asarray(y_true, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, thresholds: Sequence[float]) -> dict[str, float]:
    """What training tracks on the validation split of a multi-label task, from multi-hot gold rows, sigmoid
    probabilities and per-label thresholds: loss (mean BCE), micro and macro F1 over labels, subset accuracy (the
    whole label set right) and Hamming loss (the share of wrong label decisions)."""
    from bertcls.multilabel import decide

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = decide(probs, thresholds)
    true, pred = y_true.astype(bool), np.asarray(y_pred).astype(bool)
    return {
        "loss": binary_log_loss(y_true, probs),
        "micro_f1": float(f1_scores(true, pred, axis=None)),
        "macro_f1": float(f1_scores(true, pred).mean()),
        "subset_accuracy": float((true == pred).all(1).mean()),
        "hamming_loss": float((true != pred).mean()),
    }


LOWER_IS_BETTER = ("loss", "hamming_loss")


def is_better(metric: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """True if ``value`` beats ``best`` by more than ``min_delta`` (lower is better for loss and Hamming loss,
    higher otherwise)."""
    if best is None:
        return True
    return value < best - min_delta if metric in LOWER_IS_BETTER else value > best + min_delta


# ---------------------------------------------------------------- full evaluation report

ECE_BINS = 15


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class probability (Guo et al. 2017, "On Calibration of Modern NNs").

    With confidence ``c_i = max_k p_ik`` and ``correct_i = [argmax_k p_ik == y_i]``, examples go into ``n_bins``
    equal-width bins ``B_b = {i : b/n_bins < c_i <= (b+1)/n_bins}`` and

        ECE = sum_b |B_b| / n * | mean(correct_i, i in B_b) - mean(c_i, i in B_b) |

    i.e. the gap between accuracy and confidence, averaged over bins by their share of examples (0 = calibrated).
    """
    y_true = np.asarray(y_true)
    conf = probs.max(-1).astype(np.float64)
    correct = (probs.argmax(-1) == y_true).astype(np.float64)
    # Bin b holds (b/n, (b+1)/n]; ceil(c*n)-1 does that, and a confidence of exactly 0 (impossible for a top class
    # of a softmax, but cheap to guard) joins the first bin.
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def classification_report(y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Every metric ``bertcls.evaluate`` reports, from gold label indices and class probabilities.

    Returns a JSON-ready dict: ``num_examples``, ``accuracy``, ``loss`` (log loss), ``ece``, ``precision`` /
    ``recall`` / ``f1`` for ``macro``, ``micro`` and ``weighted`` averages, ``macro_f1`` (as training reports it),
    ``per_class`` (precision, recall, f1, support per label name), ``confusion_matrix`` (nested list, rows = gold,
    columns = predicted, in ``labels`` order), and for two labels ``roc_auc`` and ``average_precision`` with
    ``labels[1]`` as the positive class (None when the data holds only one class, where they are undefined).
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(-1)
    ids = list(range(len(labels)))
    report: dict[str, Any] = {"num_examples": len(y_true), "accuracy": float(skm.accuracy_score(y_true, y_pred))}
    report["loss"] = log_loss(y_true, probs)
    report["ece"] = expected_calibration_error(y_true, probs)
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, average=average, zero_division=0)
        report[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    report["macro_f1"] = report["macro"]["f1"]
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)
    report["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(labels)
    }
    report["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=ids).tolist()
    if len(labels) == 2:
        both = len(np.unique(y_true)) == 2
        report["positive_label"] = labels[1]
        report["roc_auc"] = float(skm.roc_auc_score(y_true, probs[:, 1])) if both else None
        report["average_precision"] = float(skm.average_precision_score(y_true == 1, probs[:, 1])) if both else None
    return report


def multilabel_report(
    y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], thresholds: Sequence[float]
) -> dict[str, Any]:
    """Every metric ``bertcls.evaluate`` reports for a multi-label checkpoint, from multi-hot gold rows, sigmoid
    probabilities and per-label thresholds.

    Returns a JSON-ready dict: ``num_examples``, ``subset_accuracy``, ``hamming_loss``, ``loss`` (mean BCE),
    ``micro_f1``, ``macro_f1``, precision / recall / f1 for ``micro``, ``macro``, ``weighted`` and ``samples``
    averages, ``per_class`` (precision, recall, f1, support, threshold per label name) and ``confusion_matrices``
    (per label ``[[tn, fp], [fn, tp]]``, sklearn's ``multilabel_confusion_matrix``).
    """
    from sklearn import metrics as skm

    from bertcls.multilabel import decide

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = decide(probs, thresholds)
    report: dict[str, Any] = {"num_examples": len(y_true)}
    report.update(multilabel_metrics(y_true, probs, thresholds))
    for average in ("micro", "macro", "weighted", "samples"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        report[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    report["per_class"] = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
            "threshold": float(thresholds[i]),
        }
        for i, name in enumerate(labels)
    }
    matrices = skm.multilabel_confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    report["confusion_matrices"] = {name: matrices[i].tolist() for i, name in enumerate(labels)}
    return report


def paired_bootstrap(
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap confidence interval for ``accuracy(b) - accuracy(a)`` on the same examples.

    Each resample draws n example indices with replacement and takes the accuracy difference on exactly those
    examples for both models, so the shared difficulty of the examples cancels out (Efron & Tibshirani 1993; the
    usual test for NLP systems, Berg-Kirkpatrick et al. 2012). The interval is the percentile interval of the
    resampled differences. An interval that excludes 0 suggests a real difference, not noise in the test set.
    """
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length, non-empty 1-d arrays, got {a.shape}, {b.shape}")
    diff = b - a
    rng = np.random.default_rng(seed)
    # Resamples in chunks so the index matrix stays small (~16M entries) on large test sets.
    chunk = max(1, 16_000_000 // len(diff))
    means = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, len(diff), size=(min(chunk, n_resamples - start), len(diff)))
        means.append(diff[idx].mean(1))
    resampled = np.concatenate(means)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(resampled, [alpha, 1 - alpha])
    return {
        "accuracy_difference": float(diff.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "n_resamples": n_resamples,
        "seed": seed,
        "num_examples": len(diff),
        # Share of resamples where b is not better: a rough one-sided p-value for "b beats a".
        "fraction_b_not_better": float((resampled <= 0).mean()),
    }
