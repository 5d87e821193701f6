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
    p = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(len(y_true)), y_true], 1e-12, 1.0)
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
    return _prf(*decision_counts(true, pred, axis))[2]


def decision_counts(true: np.ndarray, pred: np.ndarray, axis: int | None = 0) -> tuple[np.ndarray, ...]:
    """(tp, fp, fn) of boolean decision arrays, summed along ``axis``."""
    return (true & pred).sum(axis), (~true & pred).sum(axis), (true & ~pred).sum(axis)


def binary_log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy over examples and labels (the multi-label training loss without pos_weight);
    probabilities clipped to [1e-12, 1 - 1e-12] so one confident mistake stays finite.

    In float64: evaluation's probabilities are float32, where 1 - 1e-12 is 1.0, so a confident right answer would
    give 0 * log(0) = nan and a confident wrong one inf."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(y_true, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


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
    return ece_of(calibration_bins(y_true, probs, n_bins))


def calibration_bins(y_true: Sequence[int], probs: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Per confidence bin (see ``expected_calibration_error``): (examples, sum of confidences, number correct), a
    (3, n_bins) array that adds up over chunks of examples."""
    y_true = np.asarray(y_true)
    conf = probs.max(-1).astype(np.float64)
    correct = (probs.argmax(-1) == y_true).astype(np.float64)
    # Bin b holds (b/n, (b+1)/n]; ceil(c*n)-1 does that, and a confidence of exactly 0 (impossible for a top class
    # of a softmax, but cheap to guard) joins the first bin.
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return np.stack([np.bincount(bins, weights=w, minlength=n_bins) for w in (np.ones_like(conf), conf, correct)])


def ece_of(bins: np.ndarray) -> float:
    """ECE from ``calibration_bins``: sum over bins of |correct - confidence sums| / n (the formula above, with
    each bin's share and means multiplied out)."""
    n = bins[0].sum()
    return float(np.abs(bins[2] - bins[1]).sum() / n) if n else 0.0


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (sklearn's ``zero_division=0``)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 from counts (elementwise), 0 where undefined."""
    return _divide(tp, tp + fp), _divide(tp, tp + fn), _divide(2 * tp, 2 * tp + fp + fn)


def _averages(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, dict[str, float]]:
    """``macro`` (mean of per-label scores), ``micro`` (scores of pooled counts) and ``weighted`` (per-label scores
    weighted by support) precision / recall / F1, as sklearn's ``precision_recall_fscore_support`` averages them."""
    per_label = _prf(tp, fp, fn)
    support = tp + fn
    out = {"macro": [float(v.mean()) for v in per_label]}
    out["micro"] = [float(v) for v in _prf(tp.sum(), fp.sum(), fn.sum())]
    w = support / support.sum() if support.sum() else np.zeros_like(support, dtype=np.float64)
    out["weighted"] = [float((v * w).sum()) for v in per_label]
    return {k: dict(zip(("precision", "recall", "f1"), v)) for k, v in out.items()}


def _per_class(labels: Sequence[str], tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, dict[str, Any]]:
    p, r, f = _prf(tp, fp, fn)
    return {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(tp[i] + fn[i])}
        for i, name in enumerate(labels)
    }


class ReportTally:
    """``classification_report`` accumulated chunk by chunk (``add``), so evaluating a file of any size keeps
    counts, not rows: the confusion matrix, the summed log loss and the calibration bins. Two labels also keep one
    float32 score and one gold byte per row, which ROC-AUC and average precision need."""

    def __init__(self, num_labels: int):
        self.confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
        self.loss_sum = 0.0
        self.bins = np.zeros((3, ECE_BINS))
        self.scores: list[np.ndarray] = []
        self.golds: list[np.ndarray] = []

    def add(self, y_true: Sequence[int], probs: np.ndarray) -> None:
        y_true = np.asarray(y_true, dtype=np.int64)
        if not len(y_true):
            return
        k = len(self.confusion)
        self.confusion += np.bincount(y_true * k + probs.argmax(-1), minlength=k * k).reshape(k, k)
        self.loss_sum += log_loss(y_true, probs) * len(y_true)
        self.bins += calibration_bins(y_true, probs)
        if k == 2:
            self.scores.append(probs[:, 1].astype(np.float32))
            self.golds.append(y_true.astype(np.int8))

    def report(self, labels: Sequence[str]) -> dict[str, Any]:
        """What ``classification_report`` documents, from the counts so far."""
        c = self.confusion
        n = int(c.sum())
        tp = np.diag(c)
        fp, fn = c.sum(0) - tp, c.sum(1) - tp
        report: dict[str, Any] = {"num_examples": n, "accuracy": float(tp.sum() / n) if n else 0.0}
        report["loss"] = self.loss_sum / n if n else 0.0
        report["ece"] = ece_of(self.bins)
        # Per confidence bin: examples, summed confidence, correct (the reliability diagram's data).
        report["calibration_bins"] = self.bins.tolist()
        report.update(_averages(tp, fp, fn))
        report["macro_f1"] = report["macro"]["f1"]
        report["per_class"] = _per_class(labels, tp, fp, fn)
        report["confusion_matrix"] = c.tolist()
        if len(labels) == 2:
            report.update(_ranking_scores(np.concatenate(self.golds or [np.zeros(0, np.int8)]), self.scores))
            report["positive_label"] = labels[1]
        return report


def _ranking_scores(gold: np.ndarray, scores: list[np.ndarray]) -> dict[str, float | None]:
    """ROC-AUC and average precision of the positive class; None when the data holds only one class."""
    from sklearn import metrics as skm

    if len(np.unique(gold)) < 2:
        return {"roc_auc": None, "average_precision": None}
    score = np.concatenate(scores)
    return {
        "roc_auc": float(skm.roc_auc_score(gold, score)),
        "average_precision": float(skm.average_precision_score(gold == 1, score)),
    }


def classification_report(y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Every metric ``bertcls.evaluate`` reports, from gold label indices and class probabilities (in one go; the
    evaluation itself adds chunks to a ``ReportTally``).

    Returns a JSON-ready dict: ``num_examples``, ``accuracy``, ``loss`` (log loss), ``ece``, ``precision`` /
    ``recall`` / ``f1`` for ``macro``, ``micro`` and ``weighted`` averages, ``macro_f1`` (as training reports it),
    ``per_class`` (precision, recall, f1, support per label name), ``confusion_matrix`` (nested list, rows = gold,
    columns = predicted, in ``labels`` order), and for two labels ``roc_auc`` and ``average_precision`` with
    ``labels[1]`` as the positive class (None when the data holds only one class, where they are undefined).
    Averages follow sklearn's ``precision_recall_fscore_support`` with ``zero_division=0`` (tests hold them equal).
    """
    tally = ReportTally(len(labels))
    tally.add(y_true, probs)
    return tally.report(labels)


class MultiLabelTally:
    """``multilabel_report`` accumulated chunk by chunk: per-label decision counts, the summed binary cross-entropy,
    whole-set hits and the per-row (``samples``) precision / recall / F1 sums."""

    def __init__(self, thresholds: Sequence[float]):
        k = len(thresholds)
        self.thresholds = list(thresholds)
        self.tp, self.fp, self.fn, self.tn = (np.zeros(k, dtype=np.int64) for _ in range(4))
        self.n, self.bce_sum, self.subset_hits = 0, 0.0, 0
        self.samples = np.zeros(3)

    def add(self, y_true: np.ndarray, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> None:
        """Count rows decided at ``thresholds`` (default: the tally's; cross-validation's folds each have theirs)."""
        from bertcls.multilabel import decide

        true = np.asarray(y_true).astype(bool)
        if not len(true):
            return
        pred = np.asarray(decide(probs, self.thresholds if thresholds is None else thresholds)).astype(bool)
        tp, fp, fn = decision_counts(true, pred, 0)
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += len(true) - tp - fp - fn
        self.n += len(true)
        self.bce_sum += binary_log_loss(true, probs) * true.size
        self.subset_hits += int((true == pred).all(1).sum())
        p, r, f = _prf(*decision_counts(true, pred, 1))
        self.samples += [p.sum(), r.sum(), f.sum()]

    def report(self, labels: Sequence[str]) -> dict[str, Any]:
        """What ``multilabel_report`` documents, from the counts so far."""
        n, k = self.n, len(labels)
        tp, fp, fn = self.tp, self.fp, self.fn
        report: dict[str, Any] = {"num_examples": n, "loss": self.bce_sum / (n * k) if n else 0.0}
        report["micro_f1"] = float(_prf(tp.sum(), fp.sum(), fn.sum())[2])
        report["macro_f1"] = float(_prf(tp, fp, fn)[2].mean())
        report["subset_accuracy"] = self.subset_hits / n if n else 0.0
        report["hamming_loss"] = float((fp + fn).sum() / (n * k)) if n else 0.0
        report.update(_averages(tp, fp, fn))
        means = self.samples / n if n else self.samples
        report["samples"] = dict(zip(("precision", "recall", "f1"), map(float, means)))
        report["per_class"] = _per_class(labels, tp, fp, fn)
        for i, name in enumerate(labels):
            report["per_class"][name]["threshold"] = float(self.thresholds[i])
        matrices = np.stack([self.tn, self.fp, self.fn, self.tp], -1).reshape(k, 2, 2)
        report["confusion_matrices"] = {name: matrices[i].tolist() for i, name in enumerate(labels)}
        return report


def multilabel_report(
    y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], thresholds: Sequence[float]
) -> dict[str, Any]:
    """Every metric ``bertcls.evaluate`` reports for a multi-label checkpoint, from multi-hot gold rows, sigmoid
    probabilities and per-label thresholds (in one go; the evaluation adds chunks to a ``MultiLabelTally``).

    Returns a JSON-ready dict: ``num_examples``, ``subset_accuracy``, ``hamming_loss``, ``loss`` (mean BCE),
    ``micro_f1``, ``macro_f1``, precision / recall / f1 for ``micro``, ``macro``, ``weighted`` and ``samples``
    averages, ``per_class`` (precision, recall, f1, support, threshold per label name) and ``confusion_matrices``
    (per label ``[[tn, fp], [fn, tp]]``, as sklearn's ``multilabel_confusion_matrix``).
    """
    tally = MultiLabelTally(thresholds)
    tally.add(y_true, probs)
    return tally.report(labels)


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


# ---------------------------------------------------------------- intervals of count-based scores


def group_scores(counts: np.ndarray, gold: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of rows grouped by their (gold, predicted) decision, for R sets of group counts at once.

    ``counts``: (R, G) rows per group; ``gold`` and ``pred``: (G, L) 0/1, each group's gold and predicted labels
    (single-label: one-hot, so a group is a confusion-matrix cell). Returns arrays of R: ``accuracy`` (the whole label
    set right: subset accuracy for multi-label), ``macro_f1``, ``micro_f1`` and ``hamming_loss``, as
    ``classification_report`` and ``multilabel_report`` compute them from the same rows.
    """
    counts = np.atleast_2d(np.asarray(counts, np.float64))
    gold, pred = np.asarray(gold, np.float64), np.asarray(pred, np.float64)
    n = np.maximum(counts.sum(1), 1)
    tp, fp, fn = counts @ (gold * pred), counts @ ((1 - gold) * pred), counts @ (gold * (1 - pred))
    return {
        "accuracy": counts @ (gold == pred).all(1) / n,
        "macro_f1": _prf(tp, fp, fn)[2].mean(1),
        "micro_f1": _prf(tp.sum(1), fp.sum(1), fn.sum(1))[2],
        "hamming_loss": counts @ (gold != pred).sum(1) / (n * gold.shape[1]),
    }


def bootstrap_groups(
    counts: np.ndarray, gold: np.ndarray, pred: np.ndarray, n_resamples: int = 1000, seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Percentile bootstrap intervals of ``group_scores`` (rows grouped as there, ``counts``: (G,) rows per group).

    Drawing n rows with replacement only changes how many rows fall in each group, and those counts follow a
    multinomial with the observed shares: so each resample is drawn as group counts, at a cost in the number of
    groups instead of rows, with the same distribution as resampling the rows themselves.
    """
    counts = np.asarray(counts, np.int64)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("bootstrap_groups needs at least one row")
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=n_resamples)
    alpha = (1 - confidence) / 2
    out = {}
    for key, values in group_scores(draws, gold, pred).items():
        low, high = np.quantile(values, [alpha, 1 - alpha])
        out[key] = {"low": float(low), "high": float(high), "confidence": confidence}
    return out
