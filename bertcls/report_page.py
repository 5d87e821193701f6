"""``report.html``: one self-contained page beside ``metrics.json`` that a person opens instead of reading JSON.

Presentation only: it reads what evaluation wrote (``metrics.json``'s numbers, ``predictions.csv`` row by row,
``reliability.png``) and never changes a result. What the page holds stays bounded however big the evaluated file:
aggregates (metrics, the confusion matrix, slices) plus at most ``PageLimits`` examples, chosen as
``docs/evaluation.md`` describes: the most confident examples of each confusion-matrix cell, the most confident
mistakes, a seeded random sample of correct predictions, and the words those last two leaned on (``bertcls.explain``).
What it reads from other folders (a run's learning curves, a cv folder's label issues) and the headline intervals
come from ``bertcls.report_sources``; the page comparing several checkpoints is ``bertcls.compare_page``.
Everything (styles, script, images, data) is inline: the page makes no network request when opened.
"""

from __future__ import annotations

import csv
import heapq
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertcls.errors import BertclsError
from bertcls.report_sources import decision_groups, headline, png_uri

PAGE_NAME = "report.html"
TEMPLATES = Path(__file__).parent / "templates"
# Upper edges (in words) of the text-length buckets; the last bucket is everything longer.
LENGTH_EDGES = (5, 10, 20, 40, 80, 160)


@dataclass(frozen=True)
class PageLimits:
    """How many examples the page holds at most: it stays small on a file of any size."""

    per_cell: int = 8  # examples listed per confusion-matrix cell (its most confident)
    mistakes: int = 25  # most confident mistakes, with attributions
    correct: int = 15  # random sample of correct predictions, with attributions
    slices: int = 40  # values of --slice-column shown (worst first); the rest are counted
    text_chars: int = 600  # a longer text is cut (with an ellipsis) in the page
    n_resamples: int = 1000  # bootstrap resamples for the headline intervals
    label_issues: int = 50  # suspected wrong labels listed from a bertcls.cv folder (most suspicious first)


def slice_values(source: str, split: str, column: str, rows: np.ndarray | None, n: int) -> list[str]:
    """The ``column`` of the evaluated file, one value (as text) per evaluated row (``rows``: each row's index in
    the source, when reading dropped some).

    Raises:
        BertclsError: the file has no such column.
    """
    from bertcls.tables import read_checked

    values = read_checked(source, split, {column: "--slice-column"})[column]
    picked = [values[int(i)] for i in rows] if rows is not None else list(values[:n])
    return ["" if v is None else str(v) for v in picked]


def _bucket(words: int) -> str:
    low = 1
    for edge in LENGTH_EDGES:
        if words <= edge:
            return f"{low}-{edge} words"
        low = edge + 1
    return f"{low}+ words"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Collector:
    """One pass over ``predictions.csv``: slice counts and the bounded example lists."""

    def __init__(self, labels: Sequence[str], limits: PageLimits, seed: int):
        self.labels, self.limits = list(labels), limits
        self.cells: dict[tuple[str, str], list] = defaultdict(list)  # min-heaps of (confidence, row, example)
        self.mistakes: list = []
        self.correct: list = []  # reservoir sample
        self.seen_correct = 0
        self.rng = random.Random(seed)
        self.lengths: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.slices: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, i: int, row: dict[str, str], right: bool, slice_value: str | None) -> None:
        probs = [float(row[f"prob_{label}"]) for label in self.labels]
        confidence = max(probs)
        example = {
            "row": i + 1,
            "text": _short(row["text"], self.limits.text_chars),
            "gold": row["gold"],
            "predicted": row["predicted"],
            "confidence": round(confidence, 4),
        }
        if "text_pair" in row:
            example["text_pair"] = _short(row["text_pair"], self.limits.text_chars)
        for key, tally in ((_bucket(len(row["text"].split())), self.lengths), (slice_value, self.slices)):
            if key is not None:
                tally[key][0] += 1
                tally[key][1] += int(right)
        _push(self.cells[(row["gold"], row["predicted"])], (confidence, -i, example), self.limits.per_cell)
        if not right:
            _push(self.mistakes, (confidence, -i, example), self.limits.mistakes)
        else:
            self.seen_correct += 1
            if len(self.correct) < self.limits.correct:
                self.correct.append(example)
            elif (j := self.rng.randrange(self.seen_correct)) < self.limits.correct:
                self.correct[j] = example


def _push(heap: list, item: tuple, size: int) -> None:
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def _ranked(heap: list) -> list[dict[str, Any]]:
    return [e for _, _, e in sorted(heap, key=lambda t: t[:2], reverse=True)]


def _slice_rows(tally: dict[str, list[int]], limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Rows of a slice table sorted worst first (then by count), and how many values were left out."""
    rows = [{"name": k, "count": n, "accuracy": right / n} for k, (n, right) in tally.items()]
    rows.sort(key=lambda r: (r["accuracy"], -r["count"], r["name"]))
    return (rows[:limit], max(0, len(rows) - limit)) if limit else (rows, 0)


def collect(result, predictions: Path, slices: Sequence[str] | None, limits: PageLimits, seed: int = 0):
    """Read ``predictions.csv`` once into the page's bounded parts."""
    col = _Collector(result.labels, limits, seed)
    known, correct = result.known, result.correct
    with predictions.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if known[i]:
                col.add(i, row, bool(correct[i]), slices[i] if slices is not None else None)
    return col


def attach_words(examples: list[dict[str, Any]], model, method: str, n_steps: int) -> None:
    """Each example's words with their scores for its predicted class (single-label) or most probable label."""
    if not examples or model is None:
        return
    target = [e["predicted"] for e in examples] if not model.multi_label else None
    pairs = [e.get("text_pair", "") for e in examples] if "text_pair" in examples[0] else None
    explained = model.explain([e["text"] for e in examples], pairs, target, method, n_steps, progress=False)
    for e, x in zip(examples, explained):
        e["words"] = [[w["word"], w["start"], w["end"], round(w["score"], 5)] for w in x["words"]]


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no "</script>" or "<!--" can close or change it."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(template: str, **values: Any) -> str:
    """One of ``bertcls/templates`` with every value escaped unless marked safe (user text never becomes markup)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return env.get_template(template).render(**values)


def write_page(
    result,
    out: Path,
    slices: Sequence[str] | None = None,
    slice_column: str | None = None,
    model=None,
    method: str = "grad_x_input",
    n_steps: int = 8,
    limits: PageLimits | None = None,
    seed: int = 0,
    *,
    curves: str | None = None,
    label_issues: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/report.html`` from the report files in ``out`` and ``result`` (a ``CheckpointResult``).
    ``slices``: one value per evaluated row of ``slice_column``. ``model``: the checkpoint, to attribute the shown
    mistakes and correct predictions (None: no attributions). ``curves``: the run's learning curves as a PNG data
    URI (``report_sources.run_curves``); ``label_issues``: a cv folder's audit (``report_sources.read_label_issues``).
    """
    limits = limits or PageLimits()
    col = collect(result, out / "predictions.csv", slices, limits, seed)
    mistakes, correct = _ranked(col.mistakes), col.correct
    attach_words(mistakes + correct, model, method, n_steps)
    m = result.metrics
    single = "confusion_matrix" in m
    cells = {f"{g}\t{p}": _ranked(heap) for (g, p), heap in col.cells.items()}
    slice_rows, slices_left = _slice_rows(col.slices, limits.slices)
    data = {"cells": cells, "mistakes": mistakes, "correct": correct}
    page = render(
        "report.html.j2",
        title=f"{m['checkpoint']} on {m['data']}",
        metrics=m,
        headline=headline(result, decision_groups(result, out / "predictions.csv"), limits.n_resamples, seed),
        labels=result.labels,
        per_class=m.get("per_class", {}),
        matrix=m.get("confusion_matrix") if single else None,
        reliability=png_uri(out / "reliability.png"),
        curves=curves,
        lengths=_slice_rows(col.lengths)[0],
        slice_column=slice_column,
        slice_rows=slice_rows,
        slices_left=slices_left,
        attribution=f"{method}" + (f", {n_steps} steps" if method == "ig" else "") if model is not None else None,
        limits=limits,
        issues=label_issues,
        data_json=_script_json(data),
    )
    path = out / PAGE_NAME
    path.write_text(page, encoding="utf-8")
    return path


def check_slice_column(column: str | None, data) -> None:
    if column is not None and not isinstance(data, (str, Path)):
        raise BertclsError("--slice-column reads the evaluated file: give data as a file or packaged:NAME/SPLIT")
