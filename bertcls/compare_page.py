"""The comparison page of several checkpoints: ``report.html`` beside the top-level ``metrics.json`` of
``bertcls.evaluate --checkpoint A B ...``.

At the top, the paired bootstrap of each checkpoint against the first (from that ``metrics.json``); then the headline
numbers side by side, each with its own bootstrap interval, and the per-class F1 side by side; then a link to each
checkpoint's own ``report.html`` (in its subfolder) for its mistakes, slices and curves. One self-contained file, as
the per-checkpoint page: nothing in it is fetched when opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bertcls.report_page import PAGE_NAME, PageLimits, render
from bertcls.report_sources import decision_groups, headline


def side_by_side(results: Sequence, n_resamples: int, seed: int, folders: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per headline key: the key and, per checkpoint, its headline item (value and interval, if any)."""
    columns = [
        {h["key"]: h for h in headline(r, decision_groups(r, f / "predictions.csv"), n_resamples, seed)}
        for r, f in zip(results, folders)
    ]
    keys = [h for h in results[0].task.summary if any(h in c for c in columns)]
    return [{"key": k, "cells": [c.get(k) for c in columns]} for k in keys]


def per_class_f1(results: Sequence) -> list[dict[str, Any]]:
    """Per label of the first checkpoint: each checkpoint's F1 on it (None where it has no such label)."""
    return [
        {"label": label, "f1": [r.metrics.get("per_class", {}).get(label, {}).get("f1") for r in results]}
        for label in results[0].labels
    ]


def write_compare_page(
    summary: dict[str, Any],
    results: Sequence,
    folders: Sequence[Path],
    out: Path,
    limits: PageLimits | None = None,
    seed: int = 0,
    label_issues: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/report.html`` comparing ``results`` (``CheckpointResult``s scored into ``folders``, subfolders of
    ``out``) from ``summary``, what ``bertcls.evaluate.compare`` returned."""
    limits = limits or PageLimits()
    page = render(
        "compare.html.j2",
        summary=summary,
        names=[f.name for f in folders],
        pages=[f"{f.name}/{PAGE_NAME}" if (f / PAGE_NAME).is_file() else None for f in folders],
        rows=side_by_side(results, limits.n_resamples, seed, folders),
        per_class=per_class_f1(results) if "per_class" in results[0].metrics else [],
        issues=label_issues,
    )
    path = out / PAGE_NAME
    path.write_text(page, encoding="utf-8")
    return path
