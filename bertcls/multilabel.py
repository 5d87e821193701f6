"""Multi-label classification without torch: label sets, decision thresholds, and predictions from probabilities.

Shared by training, evaluation, ``model.predict`` and the torch-free ONNX predictor, so all of them read label sets
and apply thresholds the same way. A label is predicted when its sigmoid probability is at least its threshold.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertcls.errors import BertclsError, label_set, some

TASKS = ("single_label", "multi_label")
DEFAULT_THRESHOLD = 0.5
DEFAULT_DELIMITER = "|"


def check_task(task: str) -> str:
    if task not in TASKS:
        raise BertclsError(f"unknown task '{task}'; valid: {', '.join(TASKS)}")
    return task


# ---------------------------------------------------------------- label sets


def clean_label(value: Any) -> Any:
    """One label as read from a file, cleaned the one way every reader cleans it (single labels, label sets,
    evaluation's gold labels): surrounding whitespace stripped (``" acting"`` is ``acting``; a cell of spaces is
    blank), and 1.0 read from a float column is the label 1, not "1.0"."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def parse_label_set(value: Any, delimiter: str = DEFAULT_DELIMITER) -> list[Any]:
    """One example's labels as a list without repeats, in the order given.

    ``value`` is a list (JSON/JSONL/Parquet), a string of labels joined by ``delimiter`` (``"news|sport"``), a
    string that looks like a Python/JSON list (``"['news', 'sport']"``, as pandas writes list columns to CSV), or a
    single number. An empty cell (None/NaN), an empty string and ``[]`` are the empty set: no label applies.

    Raises:
        BertclsError: a list-like string that is not a list literal, or a value of another type.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                value = ast.literal_eval(text)  # literals only: never runs code
            except (ValueError, SyntaxError) as e:
                raise BertclsError(f"label {value!r} looks like a list but is not a list literal") from e
            if not isinstance(value, (list, tuple)):
                raise BertclsError(f"label {text!r} looks like a list but is not one")
        else:
            value = [part.strip() for part in text.split(delimiter)] if delimiter else [text]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    out: list[Any] = []
    for v in value:
        v = clean_label(v)
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise BertclsError(f"label set {value!r}: labels must be strings or numbers, got {v!r}")
        if (isinstance(v, str) and not v) or v in out:
            continue
        out.append(v)
    return out


def multi_hot(label_sets: Sequence[Sequence[Any]], labels: Sequence[str], source: str = "data") -> list[list[int]]:
    """Rows of 0/1, one column per label of ``labels``; a label outside ``labels`` is an error naming it."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({str(v) for s in label_sets for v in s} - set(index))
    if unknown:
        raise BertclsError(f"{source} has label(s) {some(unknown)} that are not in the label set {label_set(labels)}")
    rows = []
    for s in label_sets:
        row = [0] * len(labels)
        for v in s:
            row[index[str(v)]] = 1
        rows.append(row)
    return rows


# ---------------------------------------------------------------- thresholds


def check_thresholds(thresholds: Sequence[float], labels: Sequence[str]) -> list[float]:
    """Per-label thresholds as floats in (0, 1), one per label."""
    out = [float(t) for t in thresholds]
    if len(out) != len(labels):
        raise BertclsError(f"{len(out)} thresholds for {len(labels)} labels {list(labels)}")
    bad = [t for t in out if not 0.0 < t < 1.0]
    if bad:
        raise BertclsError(f"thresholds must be in (0, 1), got {bad[0]}")
    return out


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-class thresholds that maximize each class's F1 on (validation) data.

    Candidates are ``default`` and the midpoints between consecutive distinct probabilities of the class (and 0 and
    1 at the ends), so a chosen threshold never sits exactly on an example's probability, where float noise between
    two computations could flip it. Among equally good candidates the one nearest ``default`` wins; a class with no
    positive example keeps ``default`` (its F1 cannot be improved).

    With P positives, a threshold that marks PP examples positive, TP of them correctly, has F1 = 2 TP / (PP + P).
    """
    y = np.asarray(y_true).astype(bool)
    probs = np.asarray(probs, dtype=np.float64)
    out = np.full(probs.shape[1], default, dtype=np.float64)
    for c in range(probs.shape[1]):
        p, pos = probs[:, c], y[:, c]
        n_pos = int(pos.sum())
        if n_pos == 0:
            continue
        edges = np.unique(p)
        candidates = np.concatenate([[default], (np.r_[0.0, edges] + np.r_[edges, 1.0]) / 2])
        # Marked positive: p >= candidate; counted with sorted arrays instead of one pass per candidate.
        marked = len(p) - np.searchsorted(np.sort(p), candidates, side="left")
        hits = n_pos - np.searchsorted(np.sort(p[pos]), candidates, side="left")
        f1 = 2 * hits / (marked + n_pos)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out[c] = candidates[best[np.argmin(np.abs(candidates[best] - default))]]
    # A midpoint next to 0 or 1 can be 0 or 1 itself; thresholds live in (0, 1).
    return np.clip(out, 1e-6, 1 - 1e-6)


def decide(probs: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """0/1 predictions: each label whose probability is at least its threshold."""
    return (np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    # exp of a large positive logit overflows; this form never exponentiates a positive number.
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1 / (1 + e), e / (1 + e))


def prediction_dicts(
    rows: Sequence[Sequence[float]], labels: Sequence[str], thresholds: Sequence[float]
) -> list[dict[str, Any]]:
    """``[{"labels": [...], "scores": [...], "probabilities": {label: p}}, ...]``: every label at or above its
    threshold, most probable first, with its probability; ``probabilities`` holds every label in label order."""
    out = []
    for row in rows:
        chosen = sorted((i for i, p in enumerate(row) if p >= thresholds[i]), key=lambda i: -row[i])
        out.append(
            {
                "labels": [labels[i] for i in chosen],
                "scores": [row[i] for i in chosen],
                "probabilities": dict(zip(labels, row, strict=True)),
            }
        )
    return out


def join_labels(values: Sequence[Any], delimiter: str = DEFAULT_DELIMITER) -> str:
    """A label set as one CSV cell, the way ``parse_label_set`` reads it back."""
    return delimiter.join(str(v) for v in values)
