"""``python -m bertcls.evaluate``: score one or more checkpoints on a labelled split, with reports and plots.

``evaluate(...)`` does the work and is what notebooks call (``evaluate_checkpoint`` scores one model without
writing anything); ``main()`` only parses the command line. Rows are predicted, counted and written in chunks, so
memory stays flat in the file's size; every ``predictions.csv`` is written under a temporary name and renamed only
when all checkpoints are scored, so a bad checkpoint or label found late leaves no half-written report behind.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertcls import jsonio
from bertcls.atomic import atomic_file
from bertcls.calibration import record
from bertcls.compare_page import write_compare_page
from bertcls.data import COMPRESSIONS, FORMATS, Split, load_split
from bertcls.errors import BertclsError, cli_errors, label_set, quiet_loading, some
from bertcls.explain import METHODS, check_method
from bertcls.explain import available as explain_available
from bertcls.metrics import paired_bootstrap
from bertcls.model import BertForTextClassification, load_checkpoint
from bertcls.onnx_predict import ONNX_CONFIG_NAME, is_onnx_export
from bertcls.precision import PRECISIONS, check_precision, resolve
from bertcls.report import format_comparison, format_report, view
from bertcls.report_page import PageLimits, check_slice_column, slice_values, write_page
from bertcls.report_sources import read_label_issues, run_curves
from bertcls.resources import is_packaged
from bertcls.serialization import checkpoint_task
from bertcls.tables import COLUMN_OPTIONS, add_column_options
from bertcls.tasks import Task, get_task

UNKNOWN_LABEL_CHOICES = ("error", "skip")
CLI_OPTIONS = COLUMN_OPTIONS  # the option a missing column's error names


@dataclass
class CheckpointResult:
    """One checkpoint scored on one split: its metrics, and per input row the gold label index (-1 where the
    checkpoint does not know the row's label; those rows are left out of ``metrics``) and whether the prediction was
    right. For a multi-label checkpoint ``gold`` holds multi-hot rows (all -1 for a row with an unknown label) and
    ``thresholds`` the checkpoint's per-label thresholds. ``probs`` (rows x labels) is kept unless the caller asked
    for counts only (``keep_probs=False``, as the report of a big file does)."""

    checkpoint: str
    labels: list[str]
    metrics: dict[str, Any]
    gold: np.ndarray
    correct: np.ndarray
    probs: np.ndarray | None = None
    thresholds: list[float] | None = None

    @property
    def task(self) -> Task:
        return get_task(self.metrics["task"])

    @property
    def known(self) -> np.ndarray:
        return self.task.known(self.gold)


# Rows predicted, tallied and written at a time: memory stays flat in the evaluated file's size.
CHUNK_ROWS = 4096
# One chunk's rows: the index of its first row, the probabilities and the decisions (label indices or multi-hot rows).
ChunkCallback = Callable[[int, np.ndarray, np.ndarray], Any]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | BertForTextClassification,
    data: Split,
    batch_size: int = 64,
    unknown_labels: str = "error",
    device: str | torch.device | None = None,
    precision: str = "auto",
    *,
    keep_probs: bool = True,
    on_chunk: ChunkCallback | None = None,
    chunk_rows: int | None = None,
    progress: bool = False,
    name: str | None = None,
) -> CheckpointResult:
    """Predict every row of ``data`` with a checkpoint (a folder or a loaded model) and compute the metrics.

    Rows whose gold label the checkpoint does not know are an error naming them, or with ``unknown_labels="skip"``
    are left out of the metrics and counted in ``metrics["unknown_labels"]``. For a multi-label checkpoint each gold
    label is a set (a list, or a string joined by the checkpoint's ``label_delimiter``), a row with any unknown
    label counts as unknown, and predictions use the checkpoint's thresholds. ``precision``: ``auto`` (bf16 where the
    device has it, as training evaluates with its default ``mixed_precision: auto``), ``no`` (full), ``bf16``,
    ``fp16``; the one used is ``metrics["precision"]``.

    Rows go ``chunk_rows`` (default ``CHUNK_ROWS``) at a time: each chunk is predicted, added to the metric counts
    (``Task.tally``) and handed to ``on_chunk``, and only its probabilities are kept (``keep_probs``), so memory
    need not grow with the data. ``progress`` shows a bar with rows/s. ``name``: what errors call a loaded model
    (its folder, when the caller loaded it from one).

    Raises:
        BertclsError: unreadable checkpoint, unknown labels, no labelled rows, bad options.
    """
    from tqdm.auto import tqdm

    _check_options(unknown_labels, batch_size, precision)
    if data.labels is None:
        raise BertclsError(f"{data.source}: evaluation needs gold labels, and this data has none")
    if isinstance(checkpoint, BertForTextClassification):
        model, name = checkpoint, f"checkpoint {name}" if name else "the model"
    else:
        model, name = load_checkpoint(checkpoint), f"checkpoint {checkpoint}"
    task = get_task(model.task)
    gold, unknown = task.gold_rows(data.labels, model.labels, model.label_delimiter)
    known = task.known(gold)
    _check_gold(unknown, known, unknown_labels, data.source, name, model.labels)

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    precision = resolve(precision, torch.device(device).type)
    tally, correct, kept = task.tally(model), np.zeros(len(data), dtype=bool), []
    calibrated = model.temperature is not None
    # The scores before calibration: the same pass's probabilities without the temperature, decided by the
    # thresholds they had then (a fixed multi-label threshold moved with T).
    before_thresholds = task.thresholds_before_calibration(model)
    before = task.tally_of(model.labels, before_thresholds) if calibrated else None
    changed = 0
    chunk_rows = max(1, chunk_rows or CHUNK_ROWS)
    bar = tqdm(total=len(data), desc="evaluate", unit="row", disable=None if progress else True)
    for start in range(0, len(data), chunk_rows):
        stop = min(start + chunk_rows, len(data))
        pairs = data.text_pairs[start:stop] if data.text_pairs is not None else None
        # predict_proba batches by length, moves each batch's output to the CPU and returns rows in input order.
        texts = data.texts[start:stop]
        if calibrated:
            pair = model.predict_proba_before_calibration(texts, pairs, batch_size, precision)
            probs, raw = (p.numpy().astype(np.float64) for p in pair)
        else:
            probs = model.predict_proba(texts, pairs, batch_size, precision).numpy().astype(np.float64)
        g, k = gold[start:stop], known[start:stop]
        tally.add(g[k], probs[k])
        predicted = task.decide(probs, model.thresholds)
        if calibrated:
            before.add(g[k], raw[k])
            changed += int((~task.same(predicted, task.decide(raw, before_thresholds)))[k].sum())
        correct[start:stop] = task.correct(predicted, g)
        if on_chunk is not None:
            on_chunk(start, probs, predicted)
        if keep_probs:
            kept.append(probs)
        bar.update(stop - start)
    bar.close()
    metrics = {"checkpoint": name, "data": data.source, "labels": model.labels, "num_rows": len(data)}
    metrics["task"], metrics["precision"] = model.task, precision
    metrics.update(task.report(model, tally))
    if calibrated:
        metrics["calibration"] = record(model.temperature, data.source, task.report(model, before), metrics, changed)
    metrics["unknown_labels"] = {"count": int((~known).sum()), "labels": dict(sorted(unknown.items()))}
    probs = np.concatenate(kept) if kept else None
    return CheckpointResult(name, model.labels, metrics, gold, correct, probs, model.thresholds)


def check_not_onnx(path: str | os.PathLike) -> None:
    """An ONNX export is refused with what to do instead: evaluate scores the PyTorch checkpoint it came from (its
    metrics are those of the export up to the export's checked tolerance; an int8 export's change is measured by
    ``bertcls.export --data``)."""
    if not is_onnx_export(path):
        return
    source = json.loads((Path(path).expanduser() / ONNX_CONFIG_NAME).read_text()).get("exported_from")
    origin = f"the checkpoint it was exported from ({source})" if source else "the checkpoint it was exported from"
    raise BertclsError(
        f"{path} is an ONNX export: evaluate {origin}; an int8 export's accuracy change is measured by "
        "bertcls.export --quantize int8 --data FILE, and bertcls.predict --checkpoint EXPORT --input FILE --output "
        "preds.csv writes its predictions"
    )


def _check_options(unknown_labels: str, batch_size: int, precision: str) -> None:
    if unknown_labels not in UNKNOWN_LABEL_CHOICES:
        raise BertclsError(f"unknown_labels must be one of {', '.join(UNKNOWN_LABEL_CHOICES)}, got '{unknown_labels}'")
    if batch_size < 1:
        raise BertclsError(f"batch size must be at least 1, got {batch_size}")
    check_precision(precision)


def _check_gold(
    unknown: Counter, known: np.ndarray, policy: str, source: str | None, name: str, labels: Sequence[str]
) -> None:
    """Labels the checkpoint does not know are an error unless ``policy`` is ``skip``; no known row at all is one."""
    if unknown and policy == "error":
        rows = sum(unknown.values())
        raise BertclsError(
            f"{source} has {rows} row(s) with label(s) {some(sorted(unknown))} that {name} does not "
            f"know (its labels: {label_set(labels)}); pass --unknown-labels skip to leave those rows out"
        )
    if not known.any():
        raise BertclsError(f"{source}: no row has a label that {name} knows ({label_set(labels)})")


def evaluate(
    checkpoints: str | os.PathLike | Sequence[str | os.PathLike],
    data: str | Split,
    *,
    split: str = "test",
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    label_delimiter: str | None = None,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    unknown_labels: str = "error",
    n_resamples: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    precision: str = "auto",
    verbose: bool = True,
    page: bool = True,
    slice_column: str | None = None,
    explain_method: str | None = "grad_x_input",
    label_issues: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate checkpoints on ``data`` (a file, ``packaged:NAME/SPLIT``, a hub dataset, or a loaded ``Split``).

    Writes ``metrics.json``, ``predictions.csv`` and ``confusion_matrix.png`` into ``output`` (default
    ``<first checkpoint>/eval-<data name>``); with several checkpoints each gets a subfolder, and ``output`` gets a
    ``metrics.json`` comparing them, with a paired bootstrap interval for each one's accuracy gain over the first.
    Prints readable tables when ``verbose``. Returns what the top-level ``metrics.json`` holds.

    Multi-label checkpoints read each gold label as a set (``label_delimiter``, default: the checkpoint's) and
    report subset accuracy, Hamming loss and F1 instead (see ``bertcls.metrics.multilabel_report``); the PNG holds
    one 2x2 confusion matrix per label. All checkpoints must be of the same task.

    With ``page`` each checkpoint's folder also gets ``report.html`` (``bertcls.report_page``): slices by text
    length and by ``slice_column`` of the data file, and the shown examples' words attributed by ``explain_method``
    (``grad_x_input``, ``ig``, or None for none; needs Captum), the learning curves of the run that wrote the
    checkpoint when its parent folder is that run's, and with ``label_issues`` (a ``bertcls.cv`` output folder) the
    training rows that cv found likely mislabelled. Several checkpoints also get ``output/report.html`` comparing them.

    Raises:
        BertclsError: missing files or columns, unreadable checkpoints, unknown labels, an existing report folder.
    """
    paths = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    if not paths:
        raise BertclsError("give at least one checkpoint")
    check_precision(precision)  # before any checkpoint or data loads: a typo costs nothing
    for p in paths:
        check_not_onnx(p)
    columns = (text_column, label_column, text_pair_column)
    check_slice_column(slice_column, data)
    if explain_method is not None and page:
        check_method(explain_method)
    limits = PageLimits(n_resamples=n_resamples)
    issues = read_label_issues(label_issues, limits.label_issues, limits.text_chars) if label_issues else None
    data, source = _read_data(paths, data, split, columns, label_delimiter)
    # Read before anything is written: a missing column fails first.
    slices = slice_values(source, split, slice_column, data.rows, len(data)) if slice_column else None
    out = Path(output) if output is not None else Path(paths[0]) / f"eval-{data_name(source, split)}"
    check_report_dir(out, overwrite)
    folders = [out] if len(paths) == 1 else [out / name for name in unique_names([str(p) for p in paths])]
    options = (batch_size, unknown_labels, device, precision)
    results = _score_all(paths, folders, out, data, options, verbose)
    for result, folder in zip(results, folders):
        write_report(result, folder)
        if page:
            _write_page(result, folder, (slices, slice_column), explain_method, limits, seed, issues)
    say = print if verbose else (lambda *_: None)
    if len(results) == 1:
        say(format_report(results[0].metrics))
        say(f"report written to {out}")
        return results[0].metrics
    summary = compare(results, [f.name for f in folders], source, len(data), n_resamples, seed)
    (out / "metrics.json").write_text(jsonio.dumps(summary, indent=2))
    if page:
        write_compare_page(summary, results, folders, out, limits, seed, issues)
    say(format_comparison(summary))
    say(f"reports written to {out} (one subfolder per checkpoint)")
    return summary


def _write_page(
    result: CheckpointResult,
    folder: Path,
    slicing: tuple[Sequence[str] | None, str | None],
    method: str | None,
    limits: PageLimits,
    seed: int,
    issues: dict[str, Any] | None,
) -> None:
    """One checkpoint's ``report.html`` (``slicing``: the slice values and their column)."""
    # Attributions are optional (Captum, the explain extra): without it the page has no shaded words.
    model = load_checkpoint(result.checkpoint) if method and explain_available() else None
    slices, column = slicing
    write_page(result, folder, slices, column, model, method or "grad_x_input", limits=limits, seed=seed,
               curves=run_curves(result.checkpoint), label_issues=issues)  # fmt: skip


def _read_data(
    paths: Sequence[str | os.PathLike],
    data: str | Split,
    split: str,
    columns: tuple[str, str, str | None],
    label_delimiter: str | None,
) -> tuple[Split, str]:
    """The labelled split and its name, read as the checkpoints' task reads labels (``columns``: text, label and
    text-pair column); checkpoints of different tasks are refused first."""
    tasks = {checkpoint_task(p) for p in paths}
    if len({task for task, _ in tasks}) > 1:
        raise BertclsError("the checkpoints mix single-label and multi-label classifiers; evaluate them separately")
    task, saved_delimiter = next(iter(tasks))
    if isinstance(data, Split):
        return data, data.source or "data"
    text_column, label_column, text_pair_column = columns
    loaded = load_split(
        str(data),
        text_column,
        label_column,
        text_pair_column,
        split=split,
        option_names=CLI_OPTIONS,
        task=task,
        label_delimiter=label_delimiter or saved_delimiter,
    )
    return loaded, str(data)


def _score_all(
    paths: Sequence[str | os.PathLike], folders: list[Path], out: Path, data: Split, options: tuple, verbose: bool
) -> list[CheckpointResult]:
    """Every checkpoint scored into its folder; on any failure the report folders this call made are removed."""
    new_folders = [f for f in (*folders, out) if not f.exists()]
    try:
        with contextlib.ExitStack() as renames:
            # Each predictions.csv is written as its rows are predicted, under a temporary name; all of them are
            # renamed into place only once every checkpoint has been scored, so a failure leaves no partial report.
            return [_score_into(renames, p, folder, data, options, verbose) for p, folder in zip(paths, folders)]
    except BaseException:
        for folder in new_folders:  # the report folders this call made, now empty again
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _score_into(
    renames: contextlib.ExitStack, path: str | os.PathLike, folder: Path, data: Split, options: tuple, progress: bool
) -> CheckpointResult:
    """Score one checkpoint, writing its ``predictions.csv`` chunk by chunk to a temporary file that ``renames``
    moves into ``folder`` when it closes. Keeps counts and one correct/wrong flag per row, not the probabilities."""
    model = load_checkpoint(path)
    tmp = renames.enter_context(atomic_file(folder / "predictions.csv"))
    with tmp.open("w", newline="") as f:
        rows = PredictionRows(f, data, model)
        result = evaluate_checkpoint(
            model, data, *options, keep_probs=False, on_chunk=rows, progress=progress, name=str(path)
        )
    result.checkpoint = result.metrics["checkpoint"] = str(path)
    return result


def compare(
    results: Sequence[CheckpointResult], names: Sequence[str], source: str, num_rows: int, n_resamples: int, seed: int
) -> dict[str, Any]:
    """What the top-level ``metrics.json`` of several checkpoints holds: a row of headline numbers per checkpoint
    (``names``: its report subfolder), and each one's difference to the first on the task's compared score."""
    task = results[0].task
    summary: dict[str, Any] = {"data": source, "num_rows": num_rows, "checkpoints": [], "comparisons": []}
    for name, result in zip(names, results):
        m = result.metrics
        row = {"checkpoint": result.checkpoint, "report": name, "num_examples": m["num_examples"]}
        row.update({k: m[k] for k in task.summary})
        row["unknown_labels"] = m["unknown_labels"]["count"]
        summary["checkpoints"].append(row)
    base = results[0]
    for result in results[1:]:
        # Paired: both models on the same rows, those whose label both checkpoints know.
        both = base.known & result.known
        ci = paired_bootstrap(base.correct[both], result.correct[both], n_resamples=n_resamples, seed=seed)
        summary["comparisons"].append(
            {"baseline": base.checkpoint, "checkpoint": result.checkpoint, "metric": task.compared, **ci}
        )
    return summary


# ---------------------------------------------------------------- output files


def data_name(source: str, split: str) -> str:
    """A short name for the evaluated data: the file's stem, or the split of a packaged or hub dataset."""
    if is_packaged(source):
        return source.rpartition("/")[2]
    path = Path(source)
    if path.is_file() or path.suffix.lower() in (*FORMATS, *COMPRESSIONS):
        name = path.name
        for suffixes in (COMPRESSIONS, FORMATS):
            for s in suffixes:
                if name.lower().endswith(s):
                    name = name[: -len(s)]
                    break
        return name or "data"
    return source.partition(":")[2] or split


def check_report_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BertclsError(f"output {out} is a file, not a folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        what = "a report" if {"metrics.json", "predictions.csv"} & set(held) else f"other files ({some(held)})"
        raise BertclsError(
            f"output folder {out} already holds {what}; choose another --output, or pass --overwrite to write the "
            "report's files there (other files stay)"
        )


def unique_names(paths: Sequence[str]) -> list[str]:
    """Subfolder names for checkpoints: the folder name, with parent folders added until they are distinct."""
    parts = [Path(p).resolve().parts[1:] or ("root",) for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["-".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    # The same folder given twice: number them.
    return [f"{i + 1}-{Path(p).resolve().name}" for i, p in enumerate(paths)]


class PredictionRows:
    """Writes ``predictions.csv`` rows chunk by chunk (an ``evaluate_checkpoint`` ``on_chunk``): one row per input
    row, in input order, with the text (and pair), gold, predicted and one ``prob_<label>`` column per label. For
    multi-label, ``gold`` and ``predicted`` are label sets joined by the checkpoint's delimiter."""

    def __init__(self, f, data: Split, model: BertForTextClassification):
        self.writer, self.data, self.model = csv.writer(f), data, model
        self.view, self.delimiter = view(get_task(model.task)), model.label_delimiter
        columns = ["text", *(["text_pair"] if data.text_pairs is not None else []), "gold", "predicted"]
        self.writer.writerow(columns + [f"prob_{label}" for label in model.labels])

    def __call__(self, start: int, probs: np.ndarray, predicted: np.ndarray) -> None:
        data, stop = self.data, start + len(probs)
        texts = data.texts[start:stop]
        pairs = data.text_pairs[start:stop] if data.text_pairs is not None else itertools.repeat(None)
        for i, (text, pair) in enumerate(zip(texts, pairs)):
            gold, guess = self.view.csv_cells(data.labels[start + i], predicted[i], self.model.labels, self.delimiter)
            cells = [text, *([pair] if data.text_pairs is not None else []), gold, guess]
            self.writer.writerow(cells + [repr(float(p)) for p in probs[i]])


def write_report(result: CheckpointResult, out: Path) -> None:
    """``metrics.json``, ``confusion_matrix.png`` (for multi-label, one 2x2 matrix per label) and, single-label,
    ``reliability.png`` (before and after calibration when the checkpoint has a temperature) beside the
    ``predictions.csv`` that scoring wrote."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(jsonio.dumps(result.metrics, indent=2))
    m = result.metrics
    title = f"{'/'.join(Path(result.checkpoint).parts[-2:])} on {m['data']}"
    from bertcls.plots import plot_confusion, plot_reliability  # matplotlib: only when a report is written

    plot_confusion(result.task, m, result.labels, out / "confusion_matrix.png", title)
    if "calibration_bins" in m:  # single-label: confidence against accuracy, before and after calibration
        before = m.get("calibration", {}).get("before", {}).get("calibration_bins")
        plot_reliability(m["calibration_bins"], out / "reliability.png", before, title)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bertcls.evaluate",
        description="Evaluate bertcls checkpoints on a labelled split: metrics, predictions, confusion matrix.",
    )
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="DIR", help="one or more checkpoints")
    parser.add_argument("--data", required=True, help="a CSV/TSV/JSON/JSONL/Parquet file, packaged:NAME/SPLIT, or hub")
    parser.add_argument("--split", default="test", help="split of a hub dataset (default: test)")
    add_column_options(parser)
    parser.add_argument(
        "--label-delimiter", default=None, help="multi-label: separator of labels in a cell (default: the checkpoint's)"
    )
    parser.add_argument("--output", help="report folder (default: <first checkpoint>/eval-<data name>)")
    parser.add_argument("--overwrite", action="store_true", help="write into an output folder that holds a report")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 where the hardware has it, as training's default; no: full precision",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--unknown-labels",
        choices=UNKNOWN_LABEL_CHOICES,
        default="error",
        help="labels the checkpoint does not know: stop with an error (default), or skip those rows and count them",
    )
    parser.add_argument(
        "--bootstrap-resamples", dest="n_resamples", type=int, default=1000, help="for comparing checkpoints"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--no-page", dest="page", action="store_false", help="do not write report.html")
    parser.add_argument(
        "--slice-column", default=None, metavar="COL", help="report.html: accuracy by each value of this column"
    )
    parser.add_argument(
        "--explain-method",
        choices=(*METHODS, "none"),
        default="grad_x_input",
        help="report.html: how the shown examples' words are attributed (none: not at all)",
    )
    parser.add_argument(
        "--label-issues",
        default=None,
        metavar="DIR",
        help="report.html: list the likely wrong labels of this bertcls.cv folder",
    )
    return parser.parse_args(argv)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    options = vars(parse_args(argv))  # every option is one of evaluate()'s keyword arguments
    options["explain_method"] = None if options["explain_method"] == "none" else options["explain_method"]
    quiet_loading()
    evaluate(options.pop("checkpoint"), options.pop("data"), **options)


if __name__ == "__main__":
    sys.exit(main())
