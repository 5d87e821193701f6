"""Figures: the confusion matrix of an evaluation, the learning curves of a training run, cross-validation folds.

Figures are built on ``matplotlib.figure.Figure`` directly, not ``pyplot``: no global figure state and no GUI
backend, so plotting works the same in a training process, a headless server or a notebook.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bertcls.tasks import Task, task_of_metrics

# What a learning-curve plot's score panel shows per task: its title, and (metric, line style, colour, legend) each.
CURVES: dict[str, tuple[str, list[tuple[str, str, str, str]]]] = {
    "single_label": (
        "accuracy and macro F1",
        [
            ("accuracy", "o-", "tab:green", "validation accuracy"),
            ("macro_f1", "s--", "tab:purple", "validation macro F1"),
        ],
    ),
    "multi_label": (
        "micro / macro F1 and subset accuracy",
        [
            ("micro_f1", "o-", "tab:green", "validation micro F1"),
            ("subset_accuracy", "^:", "tab:olive", "validation subset accuracy"),
            ("macro_f1", "s--", "tab:purple", "validation macro F1"),
        ],
    ),
}


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw a confusion matrix (rows = gold, columns = predicted) with counts in the cells; save it as ``path``.

    ``title`` goes above the accuracy line (e.g. which checkpoint on which data).

    Cell colour is the share of the gold row (recall per class), so classes of very different sizes read alike;
    the text gives the count and that share.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = min(max(4.5, 0.7 * n + 2.5), 20)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of gold row")
    ax.set_xticks(range(n), labels=list(labels), rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted", fontsize=12)
    ax.set_ylabel("gold", fontsize=12)
    total = int(counts.sum())
    correct = int(np.trace(counts))
    accuracy = correct / total if total else 0.0
    headline = f"{correct}/{total} correct ({accuracy:.1%})"
    ax.set_title(f"{title}\n{headline}" if title else f"confusion matrix: {headline}", fontsize=12)
    if n <= 30:  # beyond that the numbers no longer fit in the cells
        fontsize = 12 if n <= 6 else 8
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.5 else "black"
                text = f"{counts[i, j]}\n{share[i, j]:.0%}"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)
    fig.tight_layout()
    return _save(fig, path)


def plot_multilabel_confusion(
    matrices: dict[str, Sequence[Sequence[int]]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw one 2x2 confusion matrix per label of a multi-label evaluation (``{label: [[tn, fp], [fn, tp]]}``, rows =
    gold no/yes, columns = predicted no/yes) in a grid; save it as ``path``. Cell colour is the share of the gold row.
    """
    labels = list(matrices)
    cols = min(len(labels), 4)
    rows = -(-len(labels) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows + 0.8))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, label in zip(axes, labels):
        counts = np.asarray(matrices[label], dtype=np.int64)
        totals = counts.sum(1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
        ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks([0, 1], labels=["no", "yes"])
        ax.set_yticks([0, 1], labels=["no", "yes"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(label, fontsize=11)
        for i in range(2):
            for j in range(2):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", color=colour)
    for ax in axes[len(labels) :]:
        ax.axis("off")
    fig.suptitle(f"{title}\nper label" if title else "confusion matrix per label", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(task: Task, m: dict[str, Any], labels: Sequence[str], path: str | os.PathLike, title: str) -> Path:
    """The confusion matrix of an evaluation's metrics: one matrix, or for a per-label task one 2x2 per label."""
    if task.per_label:
        return plot_multilabel_confusion(m["confusion_matrices"], path, title=title)
    return plot_confusion_matrix(m["confusion_matrix"], labels, path, title=title)


def plot_curves(metrics: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw learning curves from a run's ``metrics.json`` content and save them as ``path``.

    Left: training loss (``metrics["train_loss_curve"]``, ``[step, loss]`` pairs) and validation loss over steps.
    Right: validation accuracy and macro F1 (from ``metrics["history"]`` records with ``step`` and ``validation``);
    for a multi-label run micro F1, macro F1 and subset accuracy.
    The best checkpoint's step (``metrics["best"]["step"]``) is marked on both panels.
    """
    fig = Figure(figsize=(12, 4.5))
    ax_loss, ax_score = fig.subplots(1, 2)
    train_curve = np.asarray(metrics.get("train_loss_curve") or [], dtype=float).reshape(-1, 2)
    records = [h for h in metrics.get("history") or [] if h.get("validation")]
    steps = [h["step"] for h in records]
    val = lambda key: [h["validation"].get(key, np.nan) for h in records]  # noqa: E731
    curve_title, curves = CURVES[task_of_metrics(records[0]["validation"] if records else {}).name]

    if len(train_curve):
        ax_loss.plot(train_curve[:, 0], train_curve[:, 1], color="tab:blue", label="training loss")
    if records:
        ax_loss.plot(steps, val("loss"), "o-", color="tab:orange", label="validation loss")
        for key, style, colour, legend in curves:
            ax_score.plot(steps, val(key), style, color=colour, label=legend)
    else:
        ax_score.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax_score.transAxes)

    best = (metrics.get("best") or {}).get("step")
    if best is not None and records:
        for ax in (ax_loss, ax_score):
            ax.axvline(best, color="grey", linestyle=":", label=f"best checkpoint (step {best})")
    ax_loss.set(xlabel="optimizer step", ylabel="cross-entropy loss", title="loss")
    ax_score.set(xlabel="optimizer step", ylabel="score", title=f"validation {curve_title}")
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
    fig.suptitle(title or "learning curves", fontsize=13)
    fig.tight_layout()
    return _save(fig, path)


def plot_folds(summary: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Cross-validation's ``metrics.json`` content: a panel per metric with each fold's held-out score as a bar
    (``summary["folds"][k]["metrics"]``), the mean over folds as a line and the out-of-fold score over all rows as
    a marker. Each panel's scale is zoomed to its values, so differences between folds show."""
    keys, folds = list(summary["mean"]), summary["folds"]
    fig = Figure(figsize=(4.2 * len(keys), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    x = np.arange(1, len(folds) + 1)
    for ax, key in zip(axes, keys):
        values = np.array([f["metrics"][key] for f in folds])
        oof = summary["out_of_fold"].get(key)
        ax.bar(x, values, color="tab:blue", alpha=0.75, label="fold (held-out rows)")
        ax.axhline(summary["mean"][key], color="black", label="mean of folds")
        if oof is not None:
            ax.axhline(oof, color="tab:red", linestyle="--", label="out-of-fold, all rows")
        low, high = min(values.min(), oof if oof is not None else np.inf), max(values.max(), oof or -np.inf)
        pad = max((high - low) * 0.6, 0.005)
        ax.set_ylim(max(low - pad, 0.0), high + pad)
        for xi, v in zip(x, values):
            ax.text(xi, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set(xticks=x, xlabel="fold", title=f"{key}: {summary['mean'][key]:.4f} ± {summary['std'][key]:.4f}")
        ax.grid(alpha=0.3, axis="y")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=9)
    fig.suptitle(title or f"{len(folds)}-fold cross-validation", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)


def plot_reliability(
    bins: Sequence[Sequence[float]],
    path: str | os.PathLike,
    before: Sequence[Sequence[float]] | None = None,
    title: str | None = None,
) -> Path:
    """A reliability diagram: per confidence bin (``bertcls.metrics.calibration_bins``: examples, summed
    confidence, correct), the accuracy against the mean confidence; the diagonal is perfect calibration. ``before``:
    the same bins before temperature scaling, drawn as a second curve. Below, how many examples each bin holds."""
    from bertcls.metrics import ece_of

    fig = Figure(figsize=(6, 6.5))
    ax, ax_n = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    edges = np.linspace(0, 1, len(bins[0]) + 1)
    for data, colour, name in ((before, "tab:orange", "before calibration"), (bins, "tab:blue", "as predicted")):
        if data is None:
            continue
        n, conf, right = (np.asarray(row, dtype=float) for row in data)
        used = n > 0
        label = f"{name} (ECE {ece_of(np.asarray(data, dtype=float)):.4f})"
        ax.plot(conf[used] / n[used], right[used] / n[used], "o-", color=colour, label=label)
        ax_n.bar(edges[:-1], n, width=np.diff(edges), align="edge", alpha=0.5, color=colour)
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title or "reliability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax_n.set(xlabel="confidence (top-label probability)", ylabel="examples")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(trials: Sequence[dict[str, Any]], params: Sequence[str], metric: str, path: str | os.PathLike) -> Path:
    """A sweep's trials (``trials.csv`` rows): the validation metric per trial with the best so far, then one panel
    per parameter with the metric against the parameter's value (log scale for ranges over a decade). Pruned trials
    are crosses at their last reported value's place (none: left out); failed ones are left out."""
    lower = metric in ("loss", "hamming_loss")
    fig = Figure(figsize=(4.5 * (1 + len(params)), 4.2))
    axes = np.atleast_1d(fig.subplots(1, 1 + len(params)))
    done = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    ax = axes[0]
    if done:
        x = [t["trial"] for t in done]
        y = [t["value"] for t in done]
        ax.plot(x, y, "o", color="tab:blue", label="finished trial")
        best = np.minimum.accumulate(y) if lower else np.maximum.accumulate(y)
        ax.step(x, best, where="post", color="black", label="best so far")
    pruned = [t["trial"] for t in trials if t["state"] == "pruned"]
    for p in pruned:
        ax.axvline(p, color="tab:red", alpha=0.25, linewidth=3, label="pruned" if p == pruned[0] else None)
    ax.set(xlabel="trial", ylabel=f"validation {metric}", title="trials")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # (a sweep whose every trial failed draws nothing)
        ax.legend(loc="best", fontsize=8)
    for ax, name in zip(axes[1:], params):
        values = [t[name] for t in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and values:
            ax.plot(values, [t["value"] for t in done], "o", color="tab:blue")
            if min(values) > 0 and max(values) / min(values) > 10:
                ax.set_xscale("log")
        elif values:
            choices = sorted({str(v) for v in values})
            ax.plot([choices.index(str(v)) for v in values], [t["value"] for t in done], "o", color="tab:blue")
            ax.set_xticks(range(len(choices)), labels=choices)
        ax.set(xlabel=name, title=name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_selftrain(rounds: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Self-training's rounds (``bertcls.selftrain``): the scores each round reached (test, validation or
    cross-validated accuracy, pseudo-label accuracy) on the left, the pseudo-labelled rows it trained on per class
    on the right."""
    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    x = np.array([r["round"] for r in rounds])
    series = {
        "test accuracy": [r.get("test", {}).get("accuracy") for r in rounds],
        "validation": [r.get("validation", {}).get("value") for r in rounds],
        "cross-validated accuracy": [r.get("cv", {}).get("accuracy") for r in rounds],
        "pseudo-label accuracy": [r.get("pseudo_label_accuracy") for r in rounds],
    }
    for name, values in series.items():
        if any(v is not None for v in values):
            ys = np.array([np.nan if v is None else v for v in values], dtype=float)
            left.plot(x, ys, marker="o", label=name)
    left.set(xticks=x, xlabel="round", title="scores by round")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    bottom = np.zeros(len(rounds))
    for label in rounds[0]["added"]:
        counts = np.array([r["added"][label] for r in rounds])
        right.bar(x, counts, bottom=bottom, label=label)
        bottom += counts
    right.set(xticks=x, xlabel="round", title="pseudo-labelled rows trained on, per class")
    right.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
