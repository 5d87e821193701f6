"""Rows whose given label is likely wrong, from out-of-fold probabilities: confident learning (Northcutt, Jiang and
Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 70).

numpy only. The steps, for K classes and out-of-fold probabilities ``p`` (rows x K) with given labels ``y``:

1. Per-class thresholds: ``t_j`` = the mean of ``p_ij`` over rows labelled ``j`` (how confident the models are, on
   average, in rows that carry label j).
2. The confident joint ``C[i][j]``: rows labelled ``i`` whose most probable class among those at or above their
   threshold is ``j``. Calibrated so each row ``i`` sums to the number of rows labelled ``i``.
3. Its off-diagonal sum estimates how many labels are wrong.
4. Prune by noise rate: for each off-diagonal cell ``(i, j)``, the ``round(C[i][j])`` rows labelled ``i`` with the
   largest margin ``p_ij - p_ii`` are flagged; a row whose most probable class is its given label is never flagged.

``cleanlab`` implements the same method (its ``filter_by="prune_by_noise_rate"``); this module keeps bertcls free of
its dependencies, and docs/cv.md measures what it finds on labels flipped on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelIssues:
    rows: np.ndarray  # flagged row indices, most suspicious first
    suggested: np.ndarray  # per flagged row: the label index the models prefer
    scores: np.ndarray  # per flagged row: 1 - the probability of its given label (higher: more suspicious)
    estimated: int  # the calibrated confident joint's off-diagonal sum
    thresholds: np.ndarray  # per class


def confident_joint(given: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The calibrated confident joint (K x K, rows: given label, columns: confident label) and the per-class
    thresholds (steps 1 and 2 above). A class no row carries gets threshold 1 and an empty row."""
    k = probs.shape[1]
    counts = np.bincount(given, minlength=k)
    sums = np.zeros(k)
    np.add.at(sums, given, probs[np.arange(len(given)), given])
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    above = probs >= thresholds
    confident = np.where(above, probs, -1.0).argmax(1)
    has = above.any(1)
    joint = np.zeros((k, k))
    np.add.at(joint, (given[has], confident[has]), 1)
    row_sums = joint.sum(1, keepdims=True)
    calibrated = np.where(row_sums > 0, joint / np.maximum(row_sums, 1) * counts[:, None], 0.0)
    return calibrated, thresholds


def find_label_issues(given: np.ndarray, probs: np.ndarray) -> LabelIssues:
    """Flag rows whose given label (indices ``given``) is likely wrong, from out-of-fold probabilities ``probs``."""
    given = np.asarray(given, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    joint, thresholds = confident_joint(given, probs)
    k = probs.shape[1]
    off_diagonal = joint * (1 - np.eye(k))
    predicted = probs.argmax(1)
    flagged = np.zeros(len(given), dtype=bool)
    for i, j in zip(*np.nonzero(np.round(off_diagonal))):
        rows = np.flatnonzero(given == i)
        margin = probs[rows, j] - probs[rows, i]
        flagged[rows[np.argsort(-margin, kind="stable")[: int(round(off_diagonal[i, j]))]]] = True
    flagged &= predicted != given
    rows = np.flatnonzero(flagged)
    scores = 1 - probs[rows, given[rows]]
    order = np.argsort(-scores, kind="stable")
    rows, scores = rows[order], scores[order]
    return LabelIssues(rows, predicted[rows], scores, int(round(off_diagonal.sum())), thresholds)


def ranked_precision_recall(flagged: np.ndarray, truly_wrong: np.ndarray, at: int | None = None) -> dict[str, float]:
    """Precision and recall of the ``at`` first flagged rows (default: as many as are truly wrong) against the set of
    rows whose label is known to be wrong (a measurement on labels flipped on purpose)."""
    truth = set(np.asarray(truly_wrong).tolist())
    at = len(truth) if at is None else at
    top = np.asarray(flagged)[:at].tolist()
    hits = sum(r in truth for r in top)
    return {
        "at": at,
        "precision": hits / len(top) if top else 0.0,
        "recall": hits / len(truth) if truth else 0.0,
    }
