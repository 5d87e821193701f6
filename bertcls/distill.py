"""``python -m bertcls.distill --teacher DIR --data FILE``: a smaller student trained on a teacher's soft labels.

The teachers' probabilities over ``--data`` are computed once, up front, through the one inference path
(``model.predict_proba``; several teachers: their mean, ``bertcls.ensemble``) and stored per row as the training
split's targets: a float matrix of the probabilities at ``distill.temperature`` and the true label (-1 where the row
has none). ``train(cfg, data)`` then trains the student as any run, with the distillation loss
(``losses.build_distill_loss``) that such targets select; validation and test are scored on hard labels. No teacher
runs inside the loop, and ``train`` never calls back here.

The default student is the first teacher's own backbone with fewer encoder layers (``student_backbone``), as
DistilBERT was initialized from BERT; it is written to ``output.dir/student-init`` and named as the run's
``model.name_or_path``, so ``train.resume_from`` finds it again.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bertcls.atomic import atomic_dir
from bertcls.config import Config, load_config, options_help, resolve_split
from bertcls.data import Split, drop_empty_texts, load_split, split_validation
from bertcls.ensemble import Ensemble
from bertcls.errors import BertclsError, cli_errors, quiet_loading
from bertcls.heads import find_encoder_layers
from bertcls.model import BertForTextClassification, load_checkpoint
from bertcls.outputs import check_output_dir
from bertcls.run_data import RunData, check_labels, data_seed
from bertcls.tasks import get_task
from bertcls.train import train, uses_cache

STUDENT_INIT = "student-init"


def kept_layers(total: int, keep: int) -> list[int]:
    """Which of ``total`` encoder layers a student of ``keep`` layers starts from: spread evenly from the first to
    the last, rounded, which gives DistilBERT's choice from BERT-base (6 of 12: 0, 2, 4, 7, 9, 11)."""
    if not 0 < keep <= total:
        raise BertclsError(f"distill.layers={keep}: the teacher has {total} encoder layers; keep 1 to {total}")
    if keep == 1:
        return [total - 1]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def student_backbone(backbone, keep: int):
    """A copy of ``backbone`` (a transformers encoder) holding only ``kept_layers`` of its encoder layers, with the
    teacher's weights (embeddings and pooler included); its config says the new depth."""
    layers = find_encoder_layers(backbone)
    if layers is None:
        raise BertclsError(f"cannot find the encoder layers of a {backbone.config.model_type} backbone to drop some")
    chosen = kept_layers(len(layers), keep)
    student = copy.deepcopy(backbone)
    kept = type(layers)([copy.deepcopy(layers[i]) for i in chosen])
    parent = student
    path = next(p for p in ("encoder.layer", "transformer.layer", "encoder.layers", "layers") if _has(student, p))
    *head, last = path.split(".")
    for part in head:
        parent = getattr(parent, part)
    setattr(parent, last, kept)
    student.config.num_hidden_layers = keep
    return student


def _has(module, path: str) -> bool:
    for part in path.split("."):
        module = getattr(module, part, None)
    return module is not None


def soft_targets(probs: np.ndarray, hard: np.ndarray, temperature: float) -> np.ndarray:
    """The training split's targets: per row the teacher's probabilities at ``temperature`` and the true label index
    (-1: none), as float32 columns. softmax(z / T) is p^(1/T) renormalised, so probabilities (what the inference path
    gives, ensembles included) are enough: no logits needed."""
    logp = np.log(np.clip(probs.astype(np.float64), 1e-45, None)) / temperature
    logp -= logp.max(-1, keepdims=True)
    p = np.exp(logp)
    p /= p.sum(-1, keepdims=True)
    return np.concatenate([p, hard.reshape(-1, 1)], axis=1).astype(np.float32)


def check_options(cfg: Config) -> None:
    """Refuse what a distillation run cannot do, before anything is written."""
    t, loss = cfg.train, cfg.loss
    refused = {
        "data.task=multi_label": cfg.data.task != "single_label",
        "data.streaming": cfg.data.streaming,
        "loss.class_weights": loss.class_weights is not None,
        "loss.label_smoothing": loss.label_smoothing > 0,
        "train.sampler=balanced": t.sampler == "balanced",
        "train.schedule=lp_ft": t.schedule == "lp_ft",
        "a frozen backbone with the feature cache": uses_cache(cfg),
    }
    for key, used in refused.items():
        if used:
            raise BertclsError(f"bertcls.distill does not support {key}; the student trains on soft labels")


def read_pool(cfg: Config, source: str, log=print) -> Split:
    """``--data``: texts, with labels where the file has a label column."""
    d = cfg.data
    pool = load_split(
        source, d.text_column, d.label_column, d.text_pair_column, require_labels=False, task=d.task,
        label_delimiter=d.label_delimiter,
    )  # fmt: skip
    return drop_empty_texts(pool, d.empty_texts, log)


def load_teachers(paths: list[str]) -> Ensemble:
    teachers = Ensemble([load_checkpoint(p) for p in paths], names=paths)
    if teachers.task != "single_label":
        raise BertclsError(f"teacher {paths[0]} is {teachers.task}; bertcls.distill distils single_label teachers")
    return teachers


def build_data(cfg: Config, teachers: Ensemble, source: str, log=print) -> RunData:
    """The run's splits: ``--data`` with the teachers' soft labels, and hard-labelled validation and test (named,
    or a validation cut from ``--data``'s labelled rows)."""
    d, task, labels = cfg.data, get_task("single_label"), teachers.labels
    pool = read_pool(cfg, source, log)
    read = lambda s: drop_empty_texts(load_split(s, d.text_column, d.label_column, d.text_pair_column), "skip", log)  # noqa: E731
    validation_source, test_source = resolve_split(d, "validation"), resolve_split(d, "test")
    validation = read(validation_source) if validation_source else None
    test = read(test_source) if test_source else None
    sources = {"validation": validation_source or "none", "test": test_source or "none"}
    if validation is None and pool.labels is not None and d.validation_fraction > 0:
        pool, validation = split_validation(pool, d.validation_fraction, data_seed(cfg))
        sources["validation"] = f"{d.validation_fraction * 100:g}% cut from {source}"
    for name, split in (("data", pool), ("validation", validation), ("test", test)):
        if split is not None and split.labels is not None:
            check_labels(task, split, labels, f"{name} {split.source}")
    log(f"distill: teacher probabilities over {len(pool)} rows of {source} ({len(teachers.members)} teacher(s))")
    probs = teachers.predict_proba(pool.texts, pool.text_pairs, cfg.eval.batch_size)
    hard = np.full(len(pool), -1) if pool.labels is None else np.asarray(task.targets(pool.labels, labels))
    train_split = replace(pool, labels=soft_targets(probs, hard, cfg.distill.temperature))
    sources["train"] = f"{source} (soft labels of {', '.join(cfg.distill.teachers)})"
    return RunData(labels, train_split, validation, test, sources)


def student_layers(cfg: Config, teacher) -> int:
    """How many layers the student keeps (``distill.layers``, or half the teacher's), checked against the teacher."""
    total = len(find_encoder_layers(teacher.backbone) or [])
    keep = cfg.distill.layers or -(-total // 2)
    kept_layers(total, keep)
    return keep


def write_student(cfg: Config, teacher_path: str) -> str:
    """The layer-dropped student backbone, written as a Hugging Face folder into ``output.dir/student-init``."""
    teacher = BertForTextClassification.from_pretrained(teacher_path)  # without bertcls.speed: plain modules
    student = student_backbone(teacher.backbone, student_layers(cfg, teacher))
    target = Path(cfg.output.dir) / STUDENT_INIT
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as tmp:
        student.save_pretrained(tmp)
        teacher.tokenizer.save_pretrained(tmp)
    return str(target)


def distill(cfg: Config, teachers: list[str], data: str) -> dict[str, Any]:
    """Distil ``teachers`` (checkpoint folders) into a student over the texts of ``data``; returns the run's metrics
    (``train``'s). The student is ``cfg.model.name_or_path`` when ``distill.layers=0``, else the first teacher's
    backbone with ``distill.layers`` layers.

    Raises:
        BertclsError: a teacher missing or not single_label, teachers that disagree, bad data or options.
    """
    if not teachers:
        raise BertclsError("give at least one --teacher checkpoint folder")
    cfg = replace(cfg, data=replace(cfg.data, train=data), distill=replace(cfg.distill, teachers=list(teachers)))
    if cfg.train.recipe == "auto":  # the student trains as configured: auto counts hard labels, soft targets have none
        cfg = replace(cfg, train=replace(cfg.train, recipe="finetune"))
    check_options(cfg)
    check_output_dir(cfg)
    ensemble = load_teachers(list(teachers))
    if cfg.distill.layers != 0:
        student_layers(cfg, ensemble.members[0])  # a bad distill.layers fails before the teachers' long pass
    run_data = build_data(cfg, ensemble, data)
    if cfg.distill.layers != 0:
        cfg = replace(cfg, model=replace(cfg.model, name_or_path=write_student(cfg, teachers[0])))
    return train(cfg, run_data)


DISTILL_HELP = (
    "Train a smaller student on a teacher's (or an ensemble's) probabilities over texts with or without labels."
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertcls.distill",
        description=DISTILL_HELP,
        epilog="overrides: key.sub=value, e.g. distill.layers=3 distill.temperature=2 output.dir=runs/student\n\n"
        + options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher", action="append", required=True, help="teacher checkpoint folder (repeatable)")
    parser.add_argument("--data", required=True, help="texts to distil on (CSV, JSONL, ...; a label column optional)")
    parser.add_argument("--config", help="YAML file with config values (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value pairs; they win over the config file")
    args = parser.parse_intermixed_args(argv)
    _run_main(args)


@cli_errors
def _run_main(args) -> None:
    from bertcls.train import close_distributed

    cfg = load_config(args.config, args.overrides)
    quiet_loading()
    distill(cfg, args.teacher, args.data)
    close_distributed()


if __name__ == "__main__":
    sys.exit(main())
