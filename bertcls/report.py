"""How a task's results are shown: report text, the cells of prediction files, comparison titles, a card's words.

``bertcls.tasks`` decides (targets, loss, probabilities, decisions, metrics); this module only presents what it
decided, one ``TaskView`` per task, looked up by the task (``view(task)``), so callers never branch on its name. The
figures are in ``bertcls.plots``. No torch, no scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bertcls.multilabel import join_labels, parse_label_set
from bertcls.tasks import Task, get_task, task_of_metrics


def format_score(value: float | None, width: int = 9) -> str:
    """A score right-aligned in ``width`` characters with four decimals; ``n/a`` for None or NaN."""
    if value is None or math.isnan(value):
        return f"{'n/a':>{width}}"
    return f"{value:>{width}.4f}"


def _precision_note(m: Mapping[str, Any]) -> str:
    precision = m.get("precision")
    return "" if precision is None else f", precision {'full (fp32)' if precision == 'no' else precision}"


def _report_title(m: Mapping[str, Any], tag: str = "") -> str:
    """The first line of a printed report: checkpoint, data, examples, precision and the rows left out."""
    line = f"{m['checkpoint']} on {m['data']}: {m['num_examples']} examples{tag}{_precision_note(m)}"
    if m["unknown_labels"]["count"]:
        skipped = ", ".join(f"'{k}' x{n}" for k, n in m["unknown_labels"]["labels"].items())
        line += f" ({m['unknown_labels']['count']} rows skipped, labels unknown to the checkpoint: {skipped})"
    return line


class TaskView:
    """What single- and multi-label presentation share; the two subclasses fill in the differences."""

    summary_names: tuple[str, ...]  # the titles of the task's `summary` keys in the printed comparison
    compared_name: str  # the task's `compared` score in words

    def kind(self, num_labels: int) -> str:
        """What the model is, for its card."""
        raise NotImplementedError

    def format_report(self, m: Mapping[str, Any]) -> str:
        """The printed report of one checkpoint's ``metrics.json``."""
        raise NotImplementedError

    def csv_cells(self, value: Any, predicted, labels: Sequence[str], delimiter: str) -> tuple[Any, str]:
        """The ``gold`` and ``predicted`` cells of a predictions row."""
        raise NotImplementedError

    def output_fields(self, prediction: Mapping[str, Any], delimiter: str | None = None) -> dict[str, Any]:
        """A prediction's fields in an output file: ``predicted`` and its score(s); with ``delimiter`` (a CSV cell)
        a label set is one string."""
        return {"predicted": prediction["label"], "score": prediction["score"]}


class SingleLabelView(TaskView):
    summary_names = ("accuracy", "macro F1", "loss", "ECE")
    compared_name = "accuracy"

    def kind(self, num_labels: int) -> str:
        return f"{num_labels}-class text classifier"

    def csv_cells(self, value: Any, predicted, labels: Sequence[str], delimiter: str) -> tuple[Any, str]:
        """The gold as read, the predicted label's name."""
        return value, labels[predicted]

    def format_report(self, m: Mapping[str, Any]) -> str:
        """Headline numbers, per-class table, confusion matrix."""
        labels = list(m["labels"])
        lines = [_report_title(m)]
        head = (
            f"accuracy {m['accuracy']:.4f}   macro F1 {m['macro_f1']:.4f}   loss {m['loss']:.4f}   ECE {m['ece']:.4f}"
        )
        if "roc_auc" in m:
            auc, ap = format_score(m["roc_auc"], 0).strip(), format_score(m["average_precision"], 0).strip()
            head += f"   ROC-AUC {auc}   AP {ap} (positive: {m['positive_label']})"
        lines.append(head)
        if "calibration" in m:
            c = m["calibration"]
            lines.append(
                f"calibrated (temperature {c['temperature']:.3f}); before calibration: loss {c['before']['loss']:.4f}"
                f"   ECE {c['before']['ece']:.4f}"
            )
        lines.append("")
        w = max(12, *(len(label) for label in labels)) + 2
        lines.append(f"{'':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
        for label in labels:
            c = m["per_class"][label]
            lines.append(f"{label:<{w}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}")
        for avg in ("macro", "micro", "weighted"):
            a = m[avg]
            lines.append(f"{avg + ' avg':<{w}}{a['precision']:>10.4f}{a['recall']:>10.4f}{a['f1']:>10.4f}")
        lines += ["", "confusion matrix (rows = gold, columns = predicted):"]
        cw = max(8, *(len(label) + 1 for label in labels))
        lines.append(f"{'':<{w}}" + "".join(f"{label:>{cw}}" for label in labels))
        for label, row in zip(labels, m["confusion_matrix"]):
            lines.append(f"{label:<{w}}" + "".join(f"{n:>{cw}}" for n in row))
        return "\n".join(lines)


class MultiLabelView(TaskView):
    summary_names = ("subset acc", "micro F1", "macro F1", "Hamming", "loss")
    compared_name = "subset accuracy"

    def kind(self, num_labels: int) -> str:
        return f"multi-label text classifier over {num_labels} labels"

    def csv_cells(self, value: Any, predicted, labels: Sequence[str], delimiter: str) -> tuple[str, str]:
        """Label sets joined by ``delimiter``."""
        gold = join_labels(parse_label_set(value, delimiter), delimiter)
        return gold, join_labels([labels[j] for j in np.flatnonzero(predicted)], delimiter)

    def output_fields(self, prediction: Mapping[str, Any], delimiter: str | None = None) -> dict[str, Any]:
        if delimiter is not None:  # the label set in one cell, as data.label_delimiter reads it back
            return {"predicted": join_labels(prediction["labels"], delimiter)}
        return {"predicted": prediction["labels"], "scores": prediction["scores"]}

    def format_report(self, m: Mapping[str, Any]) -> str:
        """Headline numbers, per-label precision / recall / F1 / support / threshold, and per-label decision counts."""
        labels = list(m["labels"])
        lines = [_report_title(m, " (multi-label)")]
        lines.append(
            f"micro F1 {m['micro_f1']:.4f}   macro F1 {m['macro_f1']:.4f}   subset accuracy {m['subset_accuracy']:.4f}"
            f"   Hamming loss {m['hamming_loss']:.4f}   loss {m['loss']:.4f}"
        )
        lines.append("")
        w = max(12, *(len(label) for label in labels)) + 2
        lines.append(f"{'':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}{'threshold':>11}")
        for label in labels:
            c = m["per_class"][label]
            lines.append(
                f"{label:<{w}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}"
                f"{c['threshold']:>11.4f}"
            )
        for avg in ("micro", "macro", "weighted", "samples"):
            a = m[avg]
            lines.append(f"{avg + ' avg':<{w}}{a['precision']:>10.4f}{a['recall']:>10.4f}{a['f1']:>10.4f}")
        lines += ["", "per label (tp = predicted and gold, fp = predicted only, fn = gold only, tn = neither):"]
        lines.append(f"{'':<{w}}{'tp':>8}{'fp':>8}{'fn':>8}{'tn':>8}")
        for label in labels:
            (tn, fp), (fn, tp) = m["confusion_matrices"][label]
            lines.append(f"{label:<{w}}{tp:>8}{fp:>8}{fn:>8}{tn:>8}")
        return "\n".join(lines)


VIEWS: dict[str, TaskView] = {"single_label": SingleLabelView(), "multi_label": MultiLabelView()}


def view(task: Task) -> TaskView:
    """How ``task``'s results are shown."""
    return VIEWS[task.name]


def format_report(m: Mapping[str, Any]) -> str:
    """The printed report of one checkpoint's ``metrics.json`` (a single- or multi-label one, from its ``task``)."""
    return view(get_task(m.get("task", "single_label"))).format_report(m)


def format_comparison(summary: dict[str, Any]) -> str:
    """One row per checkpoint, and the accuracy (multi-label: subset accuracy) difference to the first with its
    bootstrap interval."""
    rows = summary["checkpoints"]
    w = max(10, *(len(r["checkpoint"]) for r in rows)) + 2
    lines = [f"{len(rows)} checkpoints on {summary['data']}:"]
    task = task_of_metrics(rows[0])
    keys, names, compared = task.summary, view(task).summary_names, view(task).compared_name
    width = max(9, *(len(n) + 1 for n in names))
    header = "".join(f"{n:>{width}}" for n in names)
    lines.append(f"{'checkpoint':<{w}}{header}   {compared} vs first [95% CI]")
    for i, r in enumerate(rows):
        line = f"{r['checkpoint']:<{w}}" + "".join(format_score(r[k], width) for k in keys)
        if i == 0:
            line += "   (baseline)"
        else:
            c = summary["comparisons"][i - 1]
            verdict = "likely real" if c["ci_low"] > 0 or c["ci_high"] < 0 else "within noise"
            line += f"   {c['accuracy_difference']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] {verdict}"
        lines.append(line)
    c0 = summary["comparisons"][0]
    lines.append(
        f"(paired bootstrap, {c0['n_resamples']} resamples, seed {c0['seed']}; an interval that excludes 0 suggests "
        "a real difference)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
