"""``python -m bertcls.cv``: k-fold cross-validation of ``data.train``, with out-of-fold predictions for every row
and an audit of the labels that look wrong.

Each fold trains a model as ``python -m bertcls.train`` would with the same config (full fine-tuning, a frozen
backbone on the feature cache, lp_ft: anything), on the other folds, and predicts its own rows with its best
checkpoint. A frozen backbone's features are computed once for the whole file and shared by every fold
(``Split.base``). ``output.dir`` gets ``oof_predictions.csv``, ``label_issues.csv`` (single-label: confident learning,
``bertcls.label_issues``), ``metrics.json``, ``folds.png`` and ``folds/fold-K/`` (each fold's log, metrics and curves;
its checkpoints with ``cv.save_models=true``).
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bertcls import jsonio
from bertcls.atomic import atomic_file, remove
from bertcls.config import Config, resolve_split, to_yaml
from bertcls.data import Split, split_validation, stratum
from bertcls.errors import BertclsError, cli_errors, some
from bertcls.label_issues import LabelIssues, find_label_issues
from bertcls.report import view
from bertcls.run_data import RunData, data_seed, load_data, split_sources
from bertcls.tasks import Task, get_task

CV_HELP = (
    "K-fold cross-validation of data.train: out-of-fold predictions and an audit of likely wrong labels "
    "(see docs/cv.md)."
)
CV_FILES = ("oof_predictions.csv", "label_issues.csv", "metrics.json", "folds.png", "config.yaml", "cv.log", "folds")
CV_RESULTS = ("oof_predictions.csv", "label_issues.csv", "metrics.json", "folds")  # worth keeping: never replaced
# unless output.overwrite=true


def cross_validate(cfg: Config) -> dict[str, Any]:
    """Run ``cfg.cv.folds``-fold cross-validation of ``cfg.data.train``; returns what ``metrics.json`` holds.

    Raises:
        BertclsError: bad data or options, or an ``output.dir`` that holds results and no ``output.overwrite``.
    """
    check_cv_options(cfg)
    check_cv_dir(Path(cfg.output.dir), cfg.output.overwrite)
    task = get_task(cfg.data.task)
    # The pool is data.train as read; data.test is not used (each fold's held-out rows are its test).
    pool_cfg = replace(cfg, data=replace(cfg.data, test=None, validation_fraction=0.0))
    data = load_data(pool_cfg)
    pool, labels = data.train, data.labels
    folds = fold_rows(pool, cfg.cv.folds, data_seed(cfg))
    probs = np.zeros((len(pool), len(labels)))
    fold_of = np.zeros(len(pool), dtype=np.int64)
    records, thresholds = [], []
    made = not Path(cfg.output.dir).exists()
    out = prepare_cv_dir(Path(cfg.output.dir), cfg.output.overwrite)
    try:
        for k, held in enumerate(folds, 1):
            print(f"fold {k} of {len(folds)}: training on {len(pool) - len(held)} rows, holding out {len(held)}")
            record, fold_probs, fold_thresholds = run_fold(cfg, data, held, out / "folds" / f"fold-{k}", k)
            probs[held], fold_of[held] = fold_probs, k
            records.append(record)
            thresholds.append(fold_thresholds)
    except BertclsError:
        # A fold refused its options or data before writing anything (train checks first): leave no empty folders.
        remove_empty([out / "folds" / f"fold-{k}", out / "folds", *([out] if made else [])])
        raise
    gold = np.asarray(task.targets(pool.labels, labels))
    summary = summarize(task, records, gold, probs, fold_of, thresholds, labels)
    issues = audit(task, gold, probs, summary)
    write_outputs(cfg, out, pool, labels, task, probs, fold_of, thresholds, issues, summary)
    print(format_summary(summary, issues, pool, labels, out))
    return summary


def check_cv_options(cfg: Config) -> None:
    import os

    if cfg.data.streaming:
        raise BertclsError("cross-validation needs every training row up front; set data.streaming=false")
    if cfg.train.resume_from:
        raise BertclsError("cross-validation does not resume; drop train.resume_from (folds rerun from the start)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BertclsError("python -m bertcls.cv runs its folds one after another in one process; run it without "
                           "accelerate launch or torchrun")  # fmt: skip


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` that is empty, in order (a folder with anything in it stays)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def check_cv_dir(out: Path, overwrite: bool) -> None:
    """Earlier results in ``out`` are kept unless ``overwrite``: an error, before anything is read or written."""
    if out.exists() and not out.is_dir():
        raise BertclsError(f"output.dir {out} is a file, not a folder")
    held = sorted(p.name for p in out.iterdir() if p.name in CV_RESULTS) if out.is_dir() else []
    if held and not overwrite:
        raise BertclsError(
            f"output.dir {out} already holds cross-validation results ({some(held)}); choose another output.dir or "
            "set output.overwrite=true"
        )


def prepare_cv_dir(out: Path, overwrite: bool) -> Path:
    """The output folder, checked (``check_cv_dir``) and cleared of cv's own files."""
    check_cv_dir(out, overwrite)
    remove(out / name for name in CV_FILES)
    out.mkdir(parents=True, exist_ok=True)
    return out


def fold_rows(pool: Split, folds: int, seed: int) -> list[np.ndarray]:
    """Each fold's held-out row positions (sorted), stratified by label (multi-label: by label set). Strata with
    fewer rows than folds are pooled, and joined to the largest stratum if even the pool is that small, so every
    fold gets a share of every common label without sklearn refusing rare ones."""
    from sklearn.model_selection import StratifiedKFold

    if len(pool) < folds:
        raise BertclsError(f"data.train has {len(pool)} rows; cv.folds={folds} needs at least one row per fold")
    strata = [stratum(v) for v in pool.labels]
    counts = Counter(strata)
    rare = {s for s, c in counts.items() if c < folds}
    if rare:
        pooled = "\0rare" if sum(counts[s] for s in rare) >= folds else counts.most_common(1)[0][0]
        strata = [pooled if s in rare else s for s in strata]
    if len(set(strata)) == 1:  # one stratum: plain shuffled folds
        strata = [0] * len(pool)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(held) for _, held in splitter.split(np.zeros(len(pool)), strata)]


def run_fold(cfg: Config, data: RunData, held: np.ndarray, fold_dir: Path, k: int) -> tuple[dict, np.ndarray, Any]:
    """Train on the pool without ``held``, validated as the config says (its validation split, or a cut of this
    fold's training rows); returns the fold's record, its held-out probabilities and its decision thresholds."""
    from bertcls.model import load_checkpoint
    from bertcls.train import train

    pool = data.train
    rest = np.setdiff1d(np.arange(len(pool)), held)
    train_part, validation = pool.subset(rest), data.validation
    fraction = cfg.data.validation_fraction
    if validation is None and resolve_split(cfg.data, "validation") is None and fraction > 0:
        train_part, validation = split_validation(train_part, fraction, data_seed(cfg))
    held_split = pool.subset(held)
    fold_cfg = replace(cfg, output=replace(cfg.output, dir=str(fold_dir), overwrite=True))
    sources = split_sources(cfg) | {
        "train": f"{cfg.data.train} less fold {k}",
        "test": f"fold {k}'s held-out rows (cv does not use data.test)",
    }
    result = train(fold_cfg, RunData(data.labels, train_part, validation, held_split, sources))
    model = load_checkpoint(fold_dir / "best")
    # The fold's best checkpoint as `predict` would load it: the out-of-fold rows are what users will get.
    probs = model.predict_proba(
        held_split.texts, held_split.text_pairs, cfg.eval.batch_size, result["mixed_precision"]
    ).numpy().astype(np.float64)  # fmt: skip
    if not cfg.cv.save_models:
        for name in ("best", "last", "checkpoints", "linear_probe"):
            shutil.rmtree(fold_dir / name, ignore_errors=True)
    record = {
        "fold": k,
        "train_rows": len(train_part),
        "validation_rows": len(validation) if validation is not None else 0,
        "held_out_rows": len(held),
        "best": result["best"],
        "metrics": {m: v for m, v in result["test"].items() if m != "num_examples"},
    }
    return record, probs, model.thresholds


def summarize(
    task: Task, records: list[dict], gold: np.ndarray, probs: np.ndarray, fold_of: np.ndarray, thresholds, labels
) -> dict[str, Any]:
    """Per-fold metrics, their mean and standard deviation (ddof 1), and the full evaluation report of the
    out-of-fold predictions over all rows (each fold's rows decided at that fold's thresholds)."""
    keys = list(records[0]["metrics"])
    values = {m: [r["metrics"][m] for r in records] for m in keys}
    tally = task.tally_of(labels, thresholds[0])
    for k, t in enumerate(thresholds, 1):
        rows = fold_of == k
        tally.add(gold[rows], probs[rows], *([t] if t is not None else []))
    return {
        "folds": records,
        "mean": {m: float(np.mean(v)) for m, v in values.items()},
        "std": {m: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
        "out_of_fold": tally.report(labels),
        "task": task.name,
        "labels": list(labels),
        "num_rows": len(gold),
    }


def audit(task: Task, gold: np.ndarray, probs: np.ndarray, summary: dict[str, Any]) -> LabelIssues | None:
    """Confident learning on the out-of-fold probabilities (single-label); records what it found in ``summary``."""
    if task.per_label:
        summary["label_issues"] = None  # confident learning here is for one label per row
        return None
    issues = find_label_issues(gold, probs)
    accuracy = float(summary["out_of_fold"]["accuracy"])
    majority = float(np.bincount(gold, minlength=probs.shape[1]).max() / len(gold))
    summary["label_issues"] = {
        "estimated": issues.estimated,
        "listed": len(issues.rows),
        "method": "confident learning, prune by noise rate (Northcutt et al. 2021)",
        "per_class_thresholds": [float(t) for t in issues.thresholds],
        "out_of_fold_accuracy": accuracy,
        "majority_rate": majority,
        "warning": audit_warning(accuracy, majority),
    }
    return issues


# Models whose out-of-fold accuracy is less than this far above always answering the commonest label are near chance.
NEAR_CHANCE_MARGIN = 0.1


def audit_warning(accuracy: float, majority: float) -> str | None:
    """The audit flags rows the models disagree with: from models near chance that is mostly the models' own errors,
    not wrong labels. A warning when the out-of-fold accuracy is within ``NEAR_CHANCE_MARGIN`` of the majority rate."""
    if accuracy >= majority + NEAR_CHANCE_MARGIN:
        return None
    return (
        f"warning: the label audit is only as good as the models, and these are near chance (out-of-fold accuracy "
        f"{accuracy:.3f}, majority rate {majority:.3f}): most rows it lists are likely the models' errors, not wrong "
        "labels; train stronger models (more steps, another backbone) before trusting it"
    )


def write_outputs(cfg, out, pool, labels, task, probs, fold_of, thresholds, issues, summary) -> None:
    from bertcls.plots import plot_folds

    rows = pool.rows if pool.rows is not None else np.arange(len(pool))
    pairs = pool.text_pairs is not None
    head = ["row", "text", *(["text_pair"] if pairs else []), "label", "fold", "predicted"]
    decided = np.zeros((len(pool), len(labels)) if task.per_label else len(pool), dtype=np.int64)
    for k, t in enumerate(thresholds, 1):
        decided[fold_of == k] = task.decide(probs[fold_of == k], t)
    with atomic_file(out / "oof_predictions.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head + [f"prob_{label}" for label in labels])
        for i, text in enumerate(pool.texts):
            given, predicted = view(task).csv_cells(pool.labels[i], decided[i], labels, cfg.data.label_delimiter)
            cells = [int(rows[i]), text, *([pool.text_pairs[i]] if pairs else []), given, int(fold_of[i]), predicted]
            w.writerow(cells + [repr(float(p)) for p in probs[i]])
    if issues is not None:
        with atomic_file(out / "label_issues.csv") as tmp, tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "text", *(["text_pair"] if pairs else []), "label", "suggested", "score"])
            for i, suggested, score in zip(issues.rows, issues.suggested, issues.scores):
                pair = [pool.text_pairs[i]] if pairs else []
                w.writerow([int(rows[i]), pool.texts[i], *pair, pool.labels[i], labels[suggested], f"{score:.6f}"])
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "cv.log").write_text(format_summary(summary, issues, pool, labels, out) + "\n")
    plot_folds(summary, out / "folds.png", title=f"{len(summary['folds'])}-fold cross-validation of {cfg.data.train}")
    (out / "metrics.json").write_text(jsonio.dumps(summary, indent=2))  # last: its presence means cv finished


def format_summary(summary: dict[str, Any], issues: LabelIssues | None, pool: Split, labels, out: Path) -> str:
    keys, w = list(summary["mean"]), 18
    lines = [f"{len(summary['folds'])}-fold cross-validation, held-out scores:"]
    lines.append(f"{'fold':<14}" + "".join(f"{k:>{w}}" for k in keys))
    for r in summary["folds"]:
        lines.append(f"{r['fold']:<14}" + "".join(f"{r['metrics'][k]:>{w}.4f}" for k in keys))
    spread = (f"{summary['mean'][k]:.4f} ± {summary['std'][k]:.4f}" for k in keys)
    lines.append(f"{'mean ± std':<14}" + "".join(f"{s:>{w}}" for s in spread))
    oof = summary["out_of_fold"]
    lines.append(f"{'out-of-fold':<14}" + "".join(f"{oof[k]:>{w}.4f}" if k in oof else f"{'':>{w}}" for k in keys))
    if issues is not None:
        li = summary["label_issues"]
        if li.get("warning"):
            lines.append(li["warning"])
        lines.append(f"label issues: about {li['estimated']} rows look mislabelled; {li['listed']} listed in "
                     f"{out / 'label_issues.csv'}, most suspicious first:")  # fmt: skip
        rows = pool.rows if pool.rows is not None else np.arange(len(pool))
        for i, suggested, score in list(zip(issues.rows, issues.suggested, issues.scores))[:5]:
            text = pool.texts[i]
            text = text if len(text) <= 70 else text[:67] + "..."
            lines.append(f"  row {int(rows[i])}: {pool.labels[i]} -> {labels[suggested]} ({score:.2f}) {text!r}")
    lines.append(f"results in {out}: oof_predictions.csv, metrics.json, cv.log, folds.png, folds/")
    return "\n".join(lines)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    from bertcls.train import run_command

    run_command(argv, "python -m bertcls.cv", CV_HELP, cross_validate)


if __name__ == "__main__":
    sys.exit(main())
