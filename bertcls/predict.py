"""``python -m bertcls.predict``: label texts from the command line or a CSV/JSONL file with a saved checkpoint.

Every prediction goes through ``model.predict`` (length-grouped batches, input order kept), so what the command
line prints and writes is exactly what a notebook gets from the same model.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from bertcls.atomic import atomic_file
from bertcls.ensemble import Ensemble
from bertcls.errors import BertclsError, check_parent, cli_errors, quiet_loading
from bertcls.explain import METHODS
from bertcls.multilabel import DEFAULT_DELIMITER, join_labels
from bertcls.onnx_predict import OnnxClassifier, is_onnx_export
from bertcls.precision import PRECISIONS, check_precision
from bertcls.report import view
from bertcls.tables import texts_of
from bertcls.tasks import Task, get_task

if TYPE_CHECKING:
    from bertcls.model import BertForTextClassification

# Anything with ``labels`` and ``predict(texts, text_pairs, batch_size)``: a PyTorch checkpoint or an ONNX export.
# The model module (and with it torch) is imported only for PyTorch checkpoints.
Classifier = Union["BertForTextClassification", OnnxClassifier]

OUTPUT_FORMATS = (".csv", ".jsonl")


def predict_texts(
    model: Classifier,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    batch_size: int = 64,
    top_k: int | None = None,
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """``model.predict`` with ``probabilities`` ordered from most to least probable, cut to ``top_k`` labels.

    Returns ``[{"label": ..., "score": ..., "probabilities": {label: p, ...}}, ...]`` in input order; for a
    multi-label model ``[{"labels": [...], "scores": [...], "probabilities": {...}}, ...]`` (every label at or above
    its threshold). ``precision``: ``auto`` (bf16 where the hardware has it, as training's default), ``no`` (full),
    ``bf16``, ``fp16``; an ONNX export always runs in full precision.
    """
    check_sizes(batch_size, top_k)
    check_precision(precision)
    pairs = list(text_pairs) if text_pairs is not None else None
    if isinstance(model, OnnxClassifier):
        if precision not in ("auto", "no"):
            raise BertclsError(f"an ONNX export runs in full precision; drop --precision {precision}")
        out = model.predict(list(texts), pairs, batch_size)
    else:
        out = model.predict(list(texts), pairs, batch_size, precision)
    for p in out:
        p["probabilities"] = dict(sorted(p["probabilities"].items(), key=lambda kv: -kv[1]))
    return [_cut(p, top_k) for p in out]


def predict_nonempty(
    model: Classifier, texts: Sequence[str], pairs: Sequence[str] | None, batch_size: int, precision: str
) -> list[dict[str, Any] | None]:
    """``predict_texts`` for the texts that are not empty or whitespace only; None in the place of each that is.

    The command lines treat an empty text as training does (``data.empty_texts=skip``): it gets no prediction, and
    they say so, instead of answering for a text that holds nothing to classify."""
    keep = [i for i, t in enumerate(texts) if t.strip()]
    kept_pairs = [pairs[i] for i in keep] if pairs is not None else None
    preds = predict_texts(model, [texts[i] for i in keep], kept_pairs, batch_size, precision=precision) if keep else []
    out: list[dict[str, Any] | None] = [None] * len(texts)
    for i, p in zip(keep, preds):
        out[i] = p
    return out


EMPTY_NOTE = "empty text: no prediction (training skips empty texts too)"

# Rows read, predicted and written at a time by predict_file: memory stays flat in the input's size.
CHUNK_ROWS = 4096


def predict_file(
    model: Classifier, input_path: str | os.PathLike, output_path: str | os.PathLike, **options: Any
) -> list[dict[str, Any]]:
    """Predict every row of a data file and write ``output_path`` (``.csv`` or ``.jsonl``); returns the predictions
    (``write_predictions`` writes the same file and keeps none of them: for files too big to hold). ``options`` are
    ``write_predictions``'s: ``text_column``, ``text_pair_column``, ``batch_size``, ``top_k``, ``overwrite``,
    ``precision``, ``chunk_rows``.

    The output keeps the input's columns, in input order, and adds ``predicted`` and ``score``; a CSV adds a
    ``prob_<label>`` column for every label (a CSV needs the same columns in every row, so ``top_k`` does not cut
    them), a JSONL file adds a ``probabilities`` object with the ``top_k`` most probable labels. For a multi-label
    model ``predicted`` is the label set (in a CSV joined by the model's ``label_delimiter``, in JSONL a list, with
    their probabilities in ``scores``). An input cell that holds a list (a JSONL label set) is written to a CSV
    joined by that delimiter too. A row whose text is empty gets no prediction, as training skips it: empty cells in
    a CSV, ``"predicted": null`` and ``"skipped": "empty text"`` in JSONL (the returned list holds None for it).

    Raises:
        BertclsError: missing input file or column, unknown output type, an existing output without ``overwrite``.
    """
    kept: list[dict[str, Any]] = []
    write_predictions(model, input_path, output_path, **options, on_chunk=kept.extend)
    return kept


def write_predictions(
    model: Classifier,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    text_column: str = "text",
    text_pair_column: str | None = None,
    batch_size: int = 64,
    top_k: int | None = None,
    overwrite: bool = False,
    precision: str = "auto",
    chunk_rows: int = CHUNK_ROWS,
    on_chunk: Callable[[list[dict[str, Any]]], Any] | None = None,
    explain: dict[str, Any] | None = None,
) -> int:
    """``predict_file``'s output, written ``chunk_rows`` rows at a time (read, predicted, written) with a progress bar;
    returns the number of rows. ``on_chunk`` gets each chunk's predictions (cut to ``top_k``). ``explain``: options
    of ``model.explain`` (``method``, ``target``, ``n_steps``): each JSONL record gets its ``explanation``."""
    from tqdm.auto import tqdm

    out = Path(output_path)
    check_sizes(batch_size, top_k)
    if chunk_rows < 1:
        raise BertclsError(f"chunk_rows must be at least 1, got {chunk_rows}")
    check_output_file(out, overwrite)
    if explain is not None:
        check_explainable(model, out)
    table = open_input(str(input_path), text_column, text_pair_column)
    task, delimiter = get_task(model.task), getattr(model, "label_delimiter", DEFAULT_DELIMITER)
    csv_out = out.suffix.lower() == ".csv"
    # Written beside the target and renamed into place: an interrupted run leaves no half-written output.
    fields = view(task).output_fields(_EXAMPLE[task.name], delimiter)  # the columns a prediction adds
    empty = 0
    with atomic_file(out) as tmp, tmp.open("w", newline="") as f:
        bar = tqdm(total=len(table), desc="predict", unit="row", disable=None)
        writer = _csv_writer(f, table.column_names, model.labels, fields) if csv_out else None
        for batch in table.iter(batch_size=chunk_rows):
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            texts, pairs = texts_of(rows, text_column, text_pair_column)
            preds = predict_nonempty(model, texts, pairs, batch_size, precision)
            empty += preds.count(None)
            explained = explain_nonempty(model, texts, pairs, preds, explain) if explain is not None else None
            if writer is not None:
                _write_csv_rows(writer, rows, preds, model.labels, task, delimiter)
            else:
                for i, (row, p) in enumerate(zip(rows, preds)):
                    if p is None:
                        record = {**row, "predicted": None, "skipped": "empty text"}
                    else:
                        record = {
                            **row,
                            **view(task).output_fields(p),
                            "probabilities": _cut(p, top_k)["probabilities"],
                        }
                        if explained is not None:
                            record["explanation"] = explained[i]
                    f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            if on_chunk is not None:
                on_chunk([_cut(p, top_k) if p is not None else None for p in preds])
            bar.update(len(rows))
        bar.close()
    if empty:
        print(f"{input_path}: {empty} of {len(table)} row(s) have an empty text; they get no prediction (empty cells)")
    return len(table)


def check_explainable(model: Classifier | Ensemble, out: Path | None = None) -> None:
    """Attributions need one PyTorch model (gradients), and an output that holds a list of words per row."""
    if not hasattr(model, "explain"):
        raise BertclsError("--explain needs one PyTorch checkpoint (gradients): not an ONNX export or an ensemble")
    if out is not None and out.suffix.lower() != ".jsonl":
        raise BertclsError(f"--explain writes a list of words per row: give an --output ending in .jsonl, not {out}")


def explain_nonempty(
    model, texts: Sequence[str], pairs: Sequence[str] | None, preds: list[dict[str, Any] | None], options: dict
) -> list[dict[str, Any] | None]:
    """``model.explain`` for the texts that got a prediction (None for the others)."""
    keep = [i for i, p in enumerate(preds) if p is not None]
    kept_pairs = [pairs[i] for i in keep] if pairs is not None else None
    got = model.explain([texts[i] for i in keep], kept_pairs, progress=False, **options) if keep else []
    out: list[dict[str, Any] | None] = [None] * len(texts)
    for i, e in zip(keep, got):
        out[i] = e
    return out


def format_explanation(e: dict[str, Any]) -> str:
    """One line of words with their scores for ``e["label"]``."""
    words = " ".join(f"{w['word']}({w['score']:+.3f})" for w in e["words"] + e.get("pair_words", []))
    return f"    words for {e['label']}: {words}"


# A prediction of each task's shape: what decides the columns of a CSV output before any row is predicted.
_EXAMPLE = {
    "single_label": {"label": "", "score": 0.0, "probabilities": {}},
    "multi_label": {"labels": [], "scores": [], "probabilities": {}},
}


def load_predictor(path: str | os.PathLike) -> Classifier:
    """A checkpoint folder as a predictor: an ONNX export runs on ONNX Runtime (no PyTorch), anything else loads as
    a bertcls checkpoint.

    Raises:
        BertclsError: the folder is neither, or is corrupt.
    """
    if is_onnx_export(path):
        return OnnxClassifier.from_folder(path)
    from bertcls.model import load_checkpoint

    quiet_loading()
    return load_checkpoint(path)


def load_predictors(paths: Sequence[str | os.PathLike]) -> Classifier | Ensemble:
    """One checkpoint as ``load_predictor`` loads it, or several as an ``Ensemble`` (same task and labels)."""
    if len(paths) == 1:
        return load_predictor(paths[0])
    return Ensemble([load_predictor(p) for p in paths], [str(p) for p in paths])


def _cut(p: dict[str, Any], top_k: int | None) -> dict[str, Any]:
    return {**p, "probabilities": dict(list(p["probabilities"].items())[:top_k])} if top_k else p


def _csv_writer(f, input_columns: list[str], labels: list[str], fields: dict[str, Any]) -> csv.DictWriter:
    """A CSV writer of the input's columns plus the prediction's ``fields`` and a ``prob_<label>`` per label."""
    added = [*fields, *(f"prob_{label}" for label in labels)]
    writer = csv.DictWriter(f, fieldnames=[c for c in input_columns if c not in added] + added)
    writer.writeheader()
    return writer


def _write_csv_rows(
    writer: csv.DictWriter, rows: list[dict[str, Any]], preds: list[dict[str, Any]], labels: list[str], task, delimiter
) -> None:
    for row, p in zip(rows, preds):
        # A list cell of the input (a JSONL label set) as one CSV cell the way data.label_delimiter reads it back,
        # not Python's "['acting']".
        cells = {k: join_labels(v, delimiter) if isinstance(v, list) else v for k, v in row.items()}
        if p is None:  # an empty text: no prediction, empty cells
            writer.writerow(cells)
            continue
        probs = {f"prob_{label}": p["probabilities"][label] for label in labels}
        writer.writerow({**cells, **view(task).output_fields(p, delimiter), **probs})


def check_sizes(batch_size: int, top_k: int | None) -> None:
    if top_k is not None and top_k < 1:
        raise BertclsError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise BertclsError(f"--batch-size must be at least 1, got {batch_size}")


def check_output_file(out: Path, overwrite: bool) -> None:
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise BertclsError(f"--output {out}: unknown file type; use one of {', '.join(OUTPUT_FORMATS)}")
    if out.is_dir():
        raise BertclsError(f"--output {out} is a folder; give a file name ending in .csv or .jsonl")
    if out.exists() and not overwrite:
        raise BertclsError(f"--output {out} already exists; choose another file or pass --overwrite")
    check_parent(out, "--output")


def open_input(source: str, text_column: str, text_pair_column: str | None):
    """The input table (Arrow-backed, read lazily), checked for its text columns and at least one row."""
    from bertcls.tables import read_checked

    columns = {text_column: "--text-column", **({text_pair_column: "--text-pair-column"} if text_pair_column else {})}
    return read_checked(source, "train", columns)


def read_input(
    source: str, text_column: str, text_pair_column: str | None
) -> tuple[list[dict[str, Any]], list[str], list[str] | None]:
    """The input rows (every column, for the output) and the texts to classify, all in memory."""
    rows = open_input(source, text_column, text_pair_column).to_list()
    return rows, *texts_of(rows, text_column, text_pair_column)


def format_prediction(
    text: str, p: dict[str, Any], number: int, task: Task, thresholds: dict[str, float] | None = None
) -> str:
    """One text's block of the printed table; multi-label marks every predicted label and shows ``thresholds``."""
    w = max(len(label) for label in p["probabilities"])
    lines = [f"[{number}] {text}"]
    chosen = set(task.chosen_labels(p))
    for label, prob in p["probabilities"].items():
        line = f"    {label:<{w}}  {prob:.4f}"
        if thresholds:
            line += f"  (threshold {thresholds[label]:.4f})"
        lines.append(line + ("  <- predicted" if label in chosen else ""))
    if not chosen:
        lines.append("    (no label reaches its threshold)")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bertcls.predict",
        description="Classify texts with a bertcls checkpoint: texts given on the command line, or a CSV/JSONL file.",
        epilog='examples:\n  python -m bertcls.predict --checkpoint runs/default/best "a gripping film" "dull"\n'
        "  python -m bertcls.predict --checkpoint runs/default/best --input new.csv --output labelled.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        metavar="DIR",
        help="a saved bertcls checkpoint or ONNX export folder; repeated (--checkpoint A --checkpoint B): an "
        "ensemble, their mean probabilities",
    )
    parser.add_argument("texts", nargs="*", help="texts to classify (or use --input)")
    parser.add_argument("--input", help="a CSV/TSV/JSON/JSONL/Parquet file with a text column")
    parser.add_argument("--output", help="where to write the predictions for --input: a .csv or .jsonl file")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--text-pair-column", default=None)
    parser.add_argument("--top-k", type=int, default=None, help="show only the K most probable labels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text instead of a table")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 where the hardware has it, as training's default; no: full precision (an ONNX export "
        "always runs in full precision)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="add each text's words with attribution scores for the predicted class (with --output: a .jsonl file)",
    )
    parser.add_argument(
        "--explain-method",
        choices=METHODS,
        default="ig",
        help="ig: integrated gradients (default); grad_x_input: gradient x input, one backward pass (faster)",
    )
    parser.add_argument("--explain-target", default=None, metavar="LABEL", help="explain this label, not the predicted")
    parser.add_argument("--explain-steps", type=int, default=32, metavar="N", help="integrated gradients' steps")
    # Intermixed: texts may stand before and after options.
    return parser.parse_intermixed_args(argv)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if bool(args.texts) == bool(args.input):
        raise BertclsError("give texts on the command line or --input FILE (one of the two)")
    if args.output and not args.input:
        raise BertclsError("--output is for --input files; texts on the command line are printed")
    # Options are checked before the model loads: a typo costs nothing.
    check_sizes(args.batch_size, args.top_k)
    if args.output:
        check_output_file(Path(args.output), args.overwrite)
    explain = None
    if args.explain:
        explain = {"method": args.explain_method, "target": args.explain_target, "n_steps": args.explain_steps}
        if args.output and Path(args.output).suffix.lower() != ".jsonl":
            check_explainable(None, Path(args.output))  # before the model loads
    model = load_predictors(args.checkpoint)
    if explain is not None:
        check_explainable(model)
    if args.output:
        # Chunk by chunk, keeping no predictions: memory stays flat however big the input file is.
        columns = (args.text_column, args.text_pair_column)
        options = (args.batch_size, args.top_k, args.overwrite, args.precision)
        n = write_predictions(model, args.input, args.output, *columns, *options, explain=explain)
        print(f"{n} rows written to {args.output}")
        return
    if args.input:
        _, texts, pairs = read_input(args.input, args.text_column, args.text_pair_column)
    else:
        texts, pairs = args.texts, None
    check_sizes(args.batch_size, args.top_k)
    preds = [
        _cut(p, args.top_k) if p is not None else None
        for p in predict_nonempty(model, texts, pairs, args.batch_size, args.precision)
    ]
    thresholds = dict(zip(model.labels, model.thresholds)) if model.thresholds is not None else None
    explained = explain_nonempty(model, texts, pairs, preds, explain) if explain else [None] * len(texts)
    for i, (text, p, e) in enumerate(zip(texts, preds, explained)):
        if p is None:
            skipped = json.dumps({"text": text, "skipped": "empty text"})
            print(skipped if args.json else f"[{i + 1}] {text!r}: {EMPTY_NOTE}")
        elif args.json:
            print(json.dumps({"text": text, **p, **({"explanation": e} if e else {})}, ensure_ascii=False))
        else:
            print(format_prediction(text, p, i + 1, get_task(model.task), thresholds))
            if e is not None:
                print(format_explanation(e))


if __name__ == "__main__":
    sys.exit(main())
