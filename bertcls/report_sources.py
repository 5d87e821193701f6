"""What the report pages read besides evaluation's own numbers: the learning curves of the run that wrote a
checkpoint, the label issues of a ``bertcls.cv`` folder, and the rows grouped by decision for bootstrap intervals.

Presentation only, like ``bertcls.report_page``: it reads files other commands wrote and changes none of them.
"""

from __future__ import annotations

import base64
import csv
import itertools
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bertcls.errors import BertclsError
from bertcls.metrics import bootstrap_groups

# A headline key's interval comes from this score of ``bertcls.metrics.group_scores``.
INTERVAL_OF = {
    "accuracy": "accuracy",
    "subset_accuracy": "accuracy",
    "macro_f1": "macro_f1",
    "micro_f1": "micro_f1",
    "hamming_loss": "hamming_loss",
}


def png_uri(path: Path) -> str | None:
    """A PNG file as a data URI (inline in the page), or None when there is no such file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() if path.is_file() else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_curves(checkpoint: str | Path) -> str | None:
    """The learning curves of the training run that wrote ``checkpoint``, as a PNG data URI, or None.

    A run writes ``best/`` and ``last/`` into its ``output.dir`` beside ``metrics.json`` (with ``history``) and
    ``curves.png``; so a checkpoint's parent folder holding such a ``metrics.json`` is its run. Its ``curves.png`` is
    used as drawn; missing, it is drawn again from ``metrics.json``. Any other checkpoint has no curves.
    """
    run = Path(checkpoint).expanduser().parent
    metrics = _read_json(run / "metrics.json")
    if not isinstance(metrics, dict) or "history" not in metrics:
        return None
    if (run / "curves.png").is_file():
        return png_uri(run / "curves.png")
    if not (metrics["history"] or metrics.get("train_loss_curve")):
        return None
    from bertcls.plots import plot_curves  # matplotlib: only when a page needs the figure

    with tempfile.TemporaryDirectory() as tmp:
        return png_uri(plot_curves(metrics, Path(tmp) / "curves.png", title=f"learning curves: {run}"))


def read_label_issues(folder: str | Path, limit: int, text_chars: int) -> dict[str, Any]:
    """The audit of a ``bertcls.cv`` output folder: its ``metrics.json`` summary and the first ``limit`` rows of
    ``label_issues.csv`` (most suspicious first, texts cut at ``text_chars``).

    Raises:
        BertclsError: the folder is not the output of a finished single-label cv run.
    """
    folder = Path(folder).expanduser()
    summary = _read_json(folder / "metrics.json")
    if not isinstance(summary, dict) or "folds" not in summary or "label_issues" not in summary:
        raise BertclsError(
            f"--label-issues {folder}: not a bertcls.cv output folder (no metrics.json of a finished cv run there); "
            "give the output.dir of python -m bertcls.cv"
        )
    audit = summary["label_issues"]
    if audit is None or not (folder / "label_issues.csv").is_file():
        why = "was multi-label (cv audits single-label data only)" if audit is None else "has no label_issues.csv"
        raise BertclsError(f"--label-issues {folder}: that cross-validation {why}; give a single-label cv folder")
    with (folder / "label_issues.csv").open(newline="") as f:
        rows = [_issue_row(r, text_chars) for r in itertools.islice(csv.DictReader(f), limit)]
    keep = ("estimated", "listed", "method", "warning", "out_of_fold_accuracy")
    return {"folder": str(folder), **{k: audit.get(k) for k in keep}, "rows": rows}


def _issue_row(row: dict[str, str], text_chars: int) -> dict[str, Any]:
    cut = lambda t: t if len(t) <= text_chars else t[: text_chars - 1] + "…"  # noqa: E731
    out = {"row": row["row"], "text": cut(row["text"]), "label": row["label"], "suggested": row["suggested"]}
    if "text_pair" in row:
        out["text_pair"] = cut(row["text_pair"])
    out["score"] = float(row["score"])
    return out


def decision_groups(result, predictions: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scored rows grouped by (gold, predicted) decision: rows per group and each group's 0/1 gold and predicted
    labels (``bertcls.metrics.group_scores``). Single-label: the confusion matrix's cells, from ``metrics.json``;
    multi-label: each distinct pair of label sets, read from ``predictions.csv`` (decided at the checkpoint's
    thresholds, as evaluation decided them)."""
    m = result.metrics
    if "confusion_matrix" in m:
        matrix = np.asarray(m["confusion_matrix"], np.int64)
        eye = np.eye(len(matrix), dtype=np.int64)
        return matrix.reshape(-1), np.repeat(eye, len(matrix), axis=0), np.tile(eye, (len(matrix), 1))
    task, known, groups = result.task, result.known, Counter()
    with predictions.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if known[i]:
                probs = np.array([float(row[f"prob_{label}"]) for label in result.labels])
                groups[(tuple(result.gold[i].tolist()), tuple(task.decide(probs, result.thresholds).tolist()))] += 1
    keys = list(groups)
    return np.array([groups[k] for k in keys]), np.array([g for g, _ in keys]), np.array([p for _, p in keys])


def headline(result, groups: tuple, n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """The task's headline numbers from ``metrics.json``; each score that depends only on the decisions (accuracy,
    F1, Hamming loss) with a percentile bootstrap interval over the scored rows (``bertcls.metrics.bootstrap_groups``).
    Loss and ECE have none: they depend on the probabilities, which the groups do not keep."""
    intervals = bootstrap_groups(*groups, n_resamples=n_resamples, seed=seed)
    out = []
    for key in result.task.summary:
        if result.metrics.get(key) is None:
            continue
        item = {"key": key, "value": result.metrics[key]}
        if key in INTERVAL_OF:
            i = intervals[INTERVAL_OF[key]]
            item.update(low=i["low"], high=i["high"], confidence=i["confidence"])
        out.append(item)
    return out
