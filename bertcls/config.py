"""Typed run configuration: nested dataclasses, YAML files in ``configs/``, ``key.sub=value`` overrides.

The dataclass defaults *are* the offline default run (``configs/default.yaml`` spells the same values out), so
``python -m bertcls.train`` with no arguments works after a plain ``pip install 'bertcls[demo]'``.
Loading and merging is OmegaConf's structured-config machinery; validation lives in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bertcls.errors import BertclsError
from bertcls.long_texts import TRUNCATIONS
from bertcls.multilabel import TASKS
from bertcls.precision import PRECISIONS

MIXED_PRECISION = PRECISIONS
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
METRICS = ("accuracy", "macro_f1", "loss")
MULTI_LABEL_METRICS = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "loss")
SAMPLERS = ("random", "balanced")
HEAD_SOLVERS = ("auto", "lbfgs", "adamw")
NAN_POLICIES = ("stop", "skip")
EMPTY_TEXTS = ("skip", "error")


def doc(default: Any = dataclasses.MISSING, help: str = "", factory: Any = None) -> Any:  # noqa: A002
    """A dataclass field with a help text, shown by ``--help``."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


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
    name_or_path: str = doc(
        "packaged:all-MiniLM-L6-v2", "backbone: local folder, hub name, or packaged:all-MiniLM-L6-v2"
    )
    head_init: Any = doc("xavier_uniform", "head weight initializer: a name or {name: ..., param: ...}")
    bias_init: Any = doc("zeros", "head bias initializer")
    pooling: str = doc("cls", "cls | pooler | mean")
    dropout: float = doc(0.1, "dropout before each head layer")
    hidden_sizes: list[int] = doc(help="hidden layer widths of an MLP head ([] = one linear layer)", factory=list)
    activation: str = doc("gelu", "activation between head layers")
    freeze_backbone: bool = doc(False, "train the head only (backbone frozen, in eval mode)")
    unfreeze_top_k: int = doc(0, "with freeze_backbone: also train the top k encoder layers")
    reinit_top_k: int = doc(0, "re-initialize the top k encoder layers (and pooler) before fine-tuning")

    def __post_init__(self) -> None:
        _positive("model", "unfreeze_top_k", self.unfreeze_top_k, allow_zero=True)
        _positive("model", "reinit_top_k", self.reinit_top_k, allow_zero=True)


@dataclass
class DataConfig:
    train: str = doc("packaged:rotten_tomatoes/train", "train split: file (csv/tsv/json/jsonl/parquet) or hub name")
    validation: str | None = doc(
        "auto",
        "validation split (null: cut from train; auto: the packaged validation split when train is a packaged one, "
        "else cut from train)",
    )
    test: str | None = doc(
        "auto", "test split, evaluated once at the end (null: none; auto: the packaged test split when train is one)"
    )
    text_column: str = doc("text", "column with the text")
    text_pair_column: str | None = doc(None, "column with the second text of a sentence pair")
    label_column: str = doc("label", "column with the label")
    labels: list[str] | None = doc(None, "label set and order (default: sorted labels found in train)")
    task: str = doc("single_label", "single_label (one label per text) | multi_label (a set of labels per text)")
    label_delimiter: str = doc("|", "multi_label: separator of the labels in a string cell, e.g. news|sport")
    max_length: int = doc(128, "tokens per text after truncation")
    validation_fraction: float = doc(0.1, "share of train held out when no validation split is given")
    truncation: str = doc("head", "which tokens a long text keeps: head | tail | head+tail (first 1/4, last 3/4)")
    window_stride: int = doc(0, "evaluate/predict long texts as windows this many tokens apart, averaged (0: off)")
    train_windows: bool = doc(False, "with window_stride: also train on every window (each with the text's label)")
    empty_texts: str = doc("skip", "empty or whitespace-only texts: skip (counted in the log) | error")

    def __post_init__(self) -> None:
        _positive("data", "max_length", self.max_length)
        _choice("data", "truncation", self.truncation, TRUNCATIONS)
        _choice("data", "empty_texts", self.empty_texts, EMPTY_TEXTS)
        _choice("data", "task", self.task, TASKS)
        if not self.label_delimiter:
            raise BertclsError("data.label_delimiter must not be empty (e.g. '|')")
        _positive("data", "window_stride", self.window_stride, allow_zero=True)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise BertclsError(f"data.validation_fraction must be in [0, 1), got {self.validation_fraction}")


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
    epochs: float = doc(1.5, "passes over the train split")
    max_steps: int = doc(-1, "optimizer steps to run; > 0 overrides epochs")
    batch_size: int = doc(32, "examples per step per process")
    lr: float = doc(1e-4, "peak learning rate of the backbone (and of the head unless head_lr is set)")
    head_lr: float | None = doc(None, "learning rate of the head (null: the same as lr)")
    head_solver: str = doc(
        "auto",
        "head-only training on cached features: lbfgs (a linear head fitted to convergence, its L2 strength chosen on "
        "validation, as a tuned scikit-learn probe) | adamw (epochs of batches at head_lr) | auto (lbfgs for a linear "
        "head unless train.sampler=balanced, else adamw)",
    )
    weight_decay: float = doc(0.01, "AdamW weight decay (never on biases and LayerNorm)")
    scheduler: str = doc("linear", "transformers.get_scheduler name")
    warmup_ratio: float = doc(0.06, "share of steps spent warming up")
    grad_accum_steps: int = doc(1, "gradient accumulation steps")
    max_grad_norm: float = doc(1.0, "gradient clipping norm (0: off)")
    seed: int = doc(42, "seed for head init, dropout, data order and splitting")
    data_seed: int | None = doc(None, "seed for data order and the validation split alone (null: train.seed)")
    sampler: str = doc("random", "random | balanced (batches drawn with replacement, classes equally likely)")
    early_stopping_patience: int = doc(0, "stop after this many evaluations without improvement (0: off)")
    early_stopping_min_delta: float = doc(0.0, "improvement of eval.metric smaller than this counts as none")
    layer_lr_decay: float = doc(1.0, "each encoder layer below the top gets lr times this once more (1: off)")
    gradual_unfreeze: bool = doc(False, "epoch 0 trains the head only; each epoch unfreezes one more top layer")
    mixed_precision: str = doc("auto", "auto | no | bf16 | fp16 (auto: bf16 where the hardware has it)")
    group_by_length: bool = doc(True, "batch texts of similar length together (less padding, same randomness)")
    num_workers: int = doc(0, "DataLoader worker processes")
    schedule: str = doc("standard", "standard | lp_ft: a head-only phase (train.lp_epochs), then full fine-tuning")
    lp_epochs: float = doc(3.0, "lp_ft: epochs of the head-only phase (at head_lr, on cached features)")
    cache: bool = doc(True, "frozen backbone: run it once per split and train the head on stored features")
    cache_dir: str | None = doc(None, "feature cache folder (null: $BERTCLS_CACHE or ~/.cache/bertcls/features)")
    resume_from: str | None = doc(None, "null | latest (newest checkpoint in output.dir/checkpoints) | a step-N folder")
    nan_policy: str = doc("stop", "non-finite loss: stop (one-line error) | skip (no optimizer step for that batch)")
    dist_timeout: float = doc(600.0, "several processes: seconds one waits for the others before failing")

    def __post_init__(self) -> None:
        _positive("train", "epochs", self.epochs)
        _positive("train", "batch_size", self.batch_size)
        _positive("train", "lr", self.lr)
        _positive("train", "grad_accum_steps", self.grad_accum_steps)
        _positive("train", "max_grad_norm", self.max_grad_norm, allow_zero=True)
        _choice("train", "scheduler", self.scheduler, SCHEDULERS)
        _choice("train", "schedule", self.schedule, ("standard", "lp_ft"))
        _positive("train", "lp_epochs", self.lp_epochs)
        _positive("train", "dist_timeout", self.dist_timeout)
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
    class_weights: Any = doc(None, "null | balanced (sklearn, from train labels) | {label name: weight}")
    label_smoothing: float = doc(0.0, "cross-entropy label smoothing (0: off)")
    pos_weight: Any = doc(None, "multi_label: null | balanced (negatives/positives per label) | {label name: weight}")

    def __post_init__(self) -> None:
        self.class_weights = _weights_by_name("loss", "class_weights", self.class_weights)
        self.pos_weight = _weights_by_name("loss", "pos_weight", self.pos_weight)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise BertclsError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class EvalConfig:
    batch_size: int = doc(64, "examples per evaluation batch (length-sorted; 64 was fastest here)")
    every_steps: int = doc(0, "also evaluate every N optimizer steps (0: once per epoch)")
    metric: str = doc(
        "auto",
        "validation metric that picks the best checkpoint (auto: accuracy, or micro_f1 for multi_label): "
        "accuracy | macro_f1 | loss; multi_label: micro_f1 | macro_f1 | subset_accuracy | hamming_loss | loss",
    )
    threshold: Any = doc(0.5, "multi_label: a label is predicted at probability >= this, or tune (per label)")

    def __post_init__(self) -> None:
        _positive("eval", "batch_size", self.batch_size)
        _positive("eval", "every_steps", self.every_steps, allow_zero=True)
        _choice("eval", "metric", self.metric, ("auto", *dict.fromkeys(METRICS + MULTI_LABEL_METRICS)))
        t = self.threshold
        if isinstance(t, str):
            if t != "tune":
                raise BertclsError(f"eval.threshold: '{t}' is not a number in (0, 1) or tune")
        elif isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
            raise BertclsError(f"eval.threshold must be a number in (0, 1) or tune, got {t!r}")


@dataclass
class CheckpointConfig:
    every_steps: int = doc(0, "write a resumable checkpoint every N optimizer steps to output.dir/checkpoints (0: off)")
    keep_last: int = doc(2, "resumable checkpoints kept (older ones are removed, never the one at the best step)")

    def __post_init__(self) -> None:
        _positive("checkpoint", "every_steps", self.every_steps, allow_zero=True)
        _positive("checkpoint", "keep_last", self.keep_last)


@dataclass
class OutputConfig:
    dir: str = doc("runs/default", "output folder: best/, last/, metrics.json, config.yaml, train.log")
    overwrite: bool = doc(False, "replace a finished run already in output.dir")
    tracking: list[str] = doc(help="experiment trackers for accelerate's log_with, e.g. [tensorboard]", factory=list)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        # Options that only mean something for one of the two tasks: refused for the other, never silently ignored.
        multi = self.data.task == "multi_label"
        if multi:
            single_only = {
                "loss.class_weights": self.loss.class_weights is not None,
                "loss.label_smoothing": self.loss.label_smoothing > 0,
                "train.sampler=balanced": self.train.sampler == "balanced",
            }
            for key, used in single_only.items():
                if used:
                    raise BertclsError(
                        f"{key} is for data.task=single_label (one label per text); with multi_label, weigh rare "
                        "labels with loss.pos_weight instead"
                    )
        else:
            if self.loss.pos_weight is not None:
                raise BertclsError("loss.pos_weight is for data.task=multi_label; single_label uses loss.class_weights")
            if self.eval.threshold != 0.5:
                raise BertclsError(
                    "eval.threshold is for data.task=multi_label; single_label predicts the most probable label"
                )
        valid = MULTI_LABEL_METRICS if multi else METRICS
        if self.eval.metric == "auto":
            self.eval.metric = "micro_f1" if multi else "accuracy"
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


def options_help() -> str:
    """Every config key with its default and help text, for ``--help``."""
    lines = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {section.name}.{f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
