"""``python -m bertcls.train``: fine-tune a classifier with an accelerate-driven loop.

``train(cfg)`` does the work and is what notebooks call; ``main()`` only parses the command line. The loop follows
the accelerate examples: one ``prepare``, ``accumulate``/``backward``, clipping on sync steps, and
``gather_for_metrics`` in evaluation, so the same code runs on CPU, one GPU, or many under ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from bertcls import allocator
from bertcls.cache import DEFAULT_CACHE_DIR, FeatureDataset, load_or_compute
from bertcls.checkpoint import (
    CHECKPOINTS,
    StopSignals,
    TrainingStopped,
    load_checkpoint,
    resolve_resume,
    resume_command,
    save_checkpoint,
)
from bertcls.config import Config, load_config, options_help, resolve_split, to_yaml
from bertcls.data import (
    BalancedBatchSampler,
    LengthGroupedBatchSampler,
    ShuffledBatchSampler,
    Split,
    TextClassificationDataset,
    build_labels,
    drop_empty_texts,
    label_targets,
    length_sorted_batches,
    load_split,
    split_validation,
)
from bertcls.errors import BertclsError, cli_errors
from bertcls.long_texts import mean_of_windows
from bertcls.losses import build_loss, build_loss_weight, build_multilabel_loss, class_weights, pos_weights
from bertcls.metrics import core_metrics, is_better, multilabel_metrics
from bertcls.model import BertForTextClassification, probabilities
from bertcls.multilabel import DEFAULT_THRESHOLD, tune_thresholds
from bertcls.precision import resolve as resolve_mixed_precision  # scripts/ import it from here too
from bertcls.probe import C_GRID, fit_linear
from bertcls.tracking import check_trackers, flat_config

# What a run writes into output.dir; only these are removed by output.overwrite=true.
RUN_FILES = ("best", "last", "metrics.json", "config.yaml", "train.log", "curves.png", "tracking", CHECKPOINTS)
RUN_RESULTS = ("best", "last", "metrics.json", CHECKPOINTS)  # a folder with any of these holds a run worth keeping


# ---------------------------------------------------------------- setup helpers


def max_positions(config) -> int | None:
    """Tokens a backbone reads at most: its position embeddings (RoBERTa-style models reserve the first two)."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    return n - 2 if config.model_type in ("roberta", "xlm-roberta", "camembert") else n


def has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


@dataclass
class RunData:
    labels: list[str]
    train: Split
    validation: Split | None
    test: Split | None


def load_data(cfg: Config, log=print) -> RunData:
    """Read the splits, fix the label set, cut a validation split if none is given, and check labels agree."""
    d = cfg.data
    multi = d.task == "multi_label"

    def read(src: str) -> Split:
        split = load_split(
            src, d.text_column, d.label_column, d.text_pair_column, task=d.task, label_delimiter=d.label_delimiter
        )
        return drop_empty_texts(split, d.empty_texts, log)

    train = read(d.train)
    validation_source, test_source = resolve_split(d, "validation"), resolve_split(d, "test")
    validation = read(validation_source) if validation_source else None
    test = read(test_source) if test_source else None
    if validation is None and d.validation_fraction > 0:
        train, validation = split_validation(train, d.validation_fraction, data_seed(cfg))
        log(f"validation: {len(validation.texts)} rows ({d.validation_fraction:g}) held out of {d.train}")
    if test is None:
        log("test: none (set data.test to evaluate the best checkpoint on a test split)")
    # A multi-label example holds a set of labels; the label set is every label of every example.
    found = [v for s in train.labels for v in s] if multi else train.labels
    labels = list(d.labels) if d.labels else build_labels(found)
    if multi and len(labels) < 2:
        raise BertclsError(
            f"{d.train}: the training examples use {len(labels)} label(s) {labels}; a multi-label classifier needs two "
            "or more (for one yes/no label use data.task=single_label)"
        )
    if not multi and len(set(map(str, train.labels))) < 2:
        raise BertclsError(f"{d.train}: every training example has the same label; a classifier needs two or more")
    label_targets(train.labels, labels, d.task, f"train data {d.train}")
    for name, split in (("validation", validation), ("test", test)):
        if split is not None:
            label_targets(split.labels, labels, d.task, f"{name} data {split.source or d.train}")
    return RunData(labels, train, validation, test)


def check_output_dir(cfg: Config) -> list[Path]:
    """bertcls's files already in ``output.dir``; an error if they hold a run and ``output.overwrite`` is off."""
    out = Path(cfg.output.dir)
    if out.exists() and not out.is_dir():
        raise BertclsError(f"output.dir {out} is a file, not a folder")
    existing = [p for p in (out.iterdir() if out.exists() else []) if p.name in RUN_FILES]
    if cfg.train.resume_from:
        # Resuming continues the interrupted run in place: nothing is removed, but a finished run stays finished.
        if (out / "metrics.json").exists() and not cfg.output.overwrite:
            raise BertclsError(f"output.dir {out} holds a finished run (metrics.json); there is nothing to resume")
        return []
    if any(p.name in RUN_RESULTS for p in existing) and not cfg.output.overwrite:
        # A finished run (metrics.json) has nothing left to resume; an interrupted one can be continued.
        finished = (out / "metrics.json").exists()
        raise BertclsError(
            f"output.dir {out} already holds a {'finished ' if finished else ''}run "
            f"({', '.join(sorted(p.name for p in existing))}); choose another output.dir, set output.overwrite=true"
            + ("" if finished else ", or continue it with train.resume_from=latest")
        )
    return existing


def prepare_output_dir(cfg: Config) -> Path:
    """Remove only bertcls's own files from an earlier run (when allowed) and check the folder is writable."""
    out = Path(cfg.output.dir)
    for p in check_output_dir(cfg):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write_test").touch()
        (out / ".write_test").unlink()
    except OSError as e:
        raise BertclsError(f"cannot write to output.dir {out}: {e.strerror}") from e
    return out


def layer_lr_scales(model: BertForTextClassification, decay: float) -> dict[int, float]:
    """Learning-rate multiplier per backbone parameter (by ``id``) for layer-wise decay (Sun et al. 2019, arXiv
    1905.05583): the top layer and the pooler get 1, each layer below one more factor of ``decay``, and the
    embeddings (everything below the first layer) ``decay ** num_layers``."""
    layers = model.encoder_layers()
    n = len(layers)
    scales = {id(p): decay**n for p in model.backbone.parameters()}
    for i, layer in enumerate(layers):
        scales |= {id(p): decay ** (n - 1 - i) for p in layer.parameters()}
    pooler = getattr(model.backbone, "pooler", None)
    if pooler is not None:
        scales |= {id(p): 1.0 for p in pooler.parameters()}
    return scales


def build_optimizer(model: BertForTextClassification, cfg: Config) -> torch.optim.Optimizer:
    """torch AdamW with no decay on biases and LayerNorm weights, the head on its own learning rate, and (with
    ``train.layer_lr_decay`` < 1) lower rates for lower backbone layers."""
    t = cfg.train
    scales = layer_lr_scales(model, t.layer_lr_decay) if t.layer_lr_decay != 1.0 else {}
    groups: dict[tuple[bool, bool, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("head.")
        no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((is_head, no_decay, scales.get(id(p), 1.0)), []).append(p)
    head_lr = t.head_lr if t.head_lr is not None else t.lr
    param_groups = [
        {
            "params": ps,
            "lr": head_lr if is_head else t.lr * scale,
            "weight_decay": 0.0 if no_decay else t.weight_decay,
        }
        for (is_head, no_decay, scale), ps in groups.items()
    ]
    # The fused kernel is the fastest AdamW on CUDA and on CPU alike (on a 2-core CPU it made MiniLM training steps
    # about 11% faster than the default foreach implementation); the Trainer uses it too.
    return torch.optim.AdamW(param_groups, lr=t.lr, fused=True)


def use_lbfgs(cfg: Config, cached: bool) -> bool:
    """Whether the head is fitted by L-BFGS (bertcls.probe) instead of the epoch loop."""
    t, linear = cfg.train, not cfg.model.hidden_sizes
    if t.head_solver == "lbfgs" and not (cached and linear):
        raise BertclsError(
            "train.head_solver=lbfgs fits a linear head on cached features: it needs model.freeze_backbone=true "
            "(no unfrozen layers), train.cache=true and model.hidden_sizes=[]; or set train.head_solver=adamw"
        )
    return cached and linear and (t.head_solver == "lbfgs" or (t.head_solver == "auto" and t.sampler != "balanced"))


def lbfgs_grid(has_validation: bool) -> tuple[float, ...]:
    """The C values fitted: the grid when validation can choose, else scikit-learn's default C=1."""
    return C_GRID if has_validation else (1.0,)


def data_seed(cfg: Config) -> int:
    """The seed of data order and the validation split: ``train.data_seed``, or ``train.seed`` when unset."""
    return cfg.train.data_seed if cfg.train.data_seed is not None else cfg.train.seed


def unfreeze_for_epoch(model: BertForTextClassification, epoch: int, log=print) -> None:
    """Gradual unfreezing (Howard & Ruder 2018, ULMFiT): epoch 0 trains the head alone, epoch k also the top k
    layers, and once every layer is trainable the embeddings join. The optimizer holds every parameter from the
    start; frozen ones get no gradient, so AdamW leaves them (and their weight decay) alone."""
    n = len(model.encoder_layers())
    if epoch > n:
        model.set_trainable(False)
    else:
        model.set_trainable(True, epoch)
    what = "everything" if epoch > n else (f"head + top {epoch} layer(s)" if epoch else "head only")
    log(f"gradual unfreezing, epoch {epoch}: training {what}")


def make_train_loader(ds, cfg: Config, pin: bool) -> DataLoader:
    t = cfg.train
    seed = data_seed(cfg)
    if t.sampler == "balanced":
        labels = ds.labels.tolist() if isinstance(ds, FeatureDataset) else ds.label_ids
        sampler = BalancedBatchSampler(labels, t.batch_size, seed=seed)
    # Cached features have no length, so length grouping only applies to token batches.
    elif t.group_by_length and not isinstance(ds, FeatureDataset):
        sampler = LengthGroupedBatchSampler(ds.lengths, t.batch_size, seed=seed)
    else:
        sampler = ShuffledBatchSampler(len(ds), t.batch_size, seed=seed)
    # Its own generator: each pass over a DataLoader draws a base seed, which would otherwise come from the global
    # RNG that dropout uses, and a resumed run (one more pass: the skipping loader) would see other dropout masks.
    return DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=ds.collate,
        num_workers=t.num_workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
    )


def make_eval_loader(ds, batch_size: int, pin: bool) -> DataLoader:
    # Length-sorted batches; every item carries its index so predictions are put back in input order.
    return DataLoader(
        ds,
        batch_sampler=length_sorted_batches(ds.lengths, batch_size),
        collate_fn=ds.collate,
        pin_memory=pin,
        generator=torch.Generator(),  # leaves the global RNG (dropout's) alone, as in make_train_loader
    )


def forward_tokens(module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the whole model on a tokenized batch."""
    return module(**batch).logits


def forward_features(module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the head alone on a batch of cached backbone features."""
    return module(batch["features"])


@torch.inference_mode()
def predict_loader(
    model, loader: DataLoader, accelerator: Accelerator, n: int, forward=None, task: str = "single_label"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Probabilities and gold labels (indices, or multi-hot rows for a multi-label task) for all ``n`` examples in
    input order, gathered across processes.

    Length-sorted batches differ in size between processes, and accelerate repeats a few examples so every process
    gets the same number of batches. So each batch is padded to a common size (index -1), gathered, and rows are
    kept by their example index: every example counts exactly once. Results go to CPU at once, so accelerator
    memory does not grow with the dataset. Also returns how many distinct examples were seen.
    """
    model.eval()
    probs: np.ndarray | None = None
    gold: np.ndarray | None = None
    seen = np.zeros(n, dtype=bool)
    for batch in loader:
        index = batch.pop("index")
        labels = batch.pop("labels", None)
        logits = (forward or forward_tokens)(model, batch).float()
        if labels is None:
            labels = torch.full_like(index, -1)
        if accelerator.num_processes > 1:
            padded = accelerator.pad_across_processes((logits, labels, index), dim=0, pad_index=-1)
            logits, labels, index = accelerator.gather(padded)
        index = index.cpu().numpy()
        keep = index >= 0
        index = index[keep]
        if probs is None:
            probs = np.zeros((n, logits.shape[-1]), dtype=np.float32)
            gold = np.full((n, *labels.shape[1:]), -1, dtype=np.int64)
        probs[index] = probabilities(logits, task).cpu().numpy()[keep]
        gold[index] = labels.cpu().numpy()[keep]
        seen[index] = True
    assert probs is not None and gold is not None, "evaluation loader yielded no batches"
    return probs, gold, int(seen.sum())


def split_predictions(
    model, loader, accelerator, ds, forward=None, task: str = "single_label"
) -> tuple[np.ndarray, np.ndarray, int]:
    """``predict_loader`` per text: the windows of a long text are averaged into one row."""
    probs, gold, gathered = predict_loader(model, loader, accelerator, len(ds), forward, task)
    doc_ids = getattr(ds, "doc_ids", None)
    if doc_ids is not None:  # windows of long texts: a text's probabilities are the mean over its windows
        probs = mean_of_windows(probs, doc_ids, ds.num_docs)
        gold = np.asarray(ds.doc_label_ids)
        gathered = ds.num_docs if gathered == len(ds) else gathered
    return probs, gold, gathered


def split_metrics(
    probs: np.ndarray, gold: np.ndarray, gathered: int, thresholds: list[float] | None = None
) -> dict[str, float]:
    """core_metrics (single-label), or multilabel_metrics at ``thresholds`` when ``thresholds`` are given."""
    result = multilabel_metrics(gold, probs, thresholds) if thresholds is not None else core_metrics(gold, probs)
    result["num_examples"] = gathered
    return result


def evaluate_split(model, loader, accelerator, ds, forward=None, thresholds=None) -> dict[str, float]:
    """Metrics of one split; multi-label when ``thresholds`` (one per label) are given."""
    task = "single_label" if thresholds is None else "multi_label"
    probs, gold, gathered = split_predictions(model, loader, accelerator, ds, forward, task)
    return split_metrics(probs, gold, gathered, thresholds)


def describe_metrics(v: dict[str, float]) -> str:
    """The headline numbers of a metrics dict, for the log."""
    keys = ("loss", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
    keys = keys if "micro_f1" in v else ("loss", "accuracy", "macro_f1")
    return " ".join(f"{k} {v[k]:.4f}" for k in keys)


def micro_batch_groups(loader, k: int):
    """The loader's batches in lists of ``k`` (the last list may be shorter): one list per optimizer step."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def backward_group(accelerator: Accelerator, module, group: list[dict], forward, loss_fn, loss_weight) -> list:
    """Forward and backward over one update's micro-batches; returns their (detached) mean losses.

    Each example weighs the same in the update, however many micro-batches and processes it spans: a micro-batch's
    mean loss is scaled by its share of the group's total ``loss_weight`` (over every process), so the gradient is
    the one of a single batch of all the group's examples, a short last group included.
    """
    weights = [loss_weight(b["labels"]) for b in group]
    total = sum(weights)
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, "sum") / accelerator.num_processes  # DDP averages the gradients
    losses = []
    for i, (batch, weight) in enumerate(zip(group, weights, strict=True)):
        labels = batch.pop("labels")
        batch.pop("index", None)
        # Gradients are all-reduced across processes only on the group's last micro-batch.
        with accelerator.no_sync(module) if i < len(group) - 1 else contextlib.nullcontext():
            loss = loss_fn(forward(module, batch), labels)
            accelerator.backward(loss * (weight / total))
        losses.append(loss.detach())
    return losses


def nonfinite_loss(accelerator: Accelerator, count: torch.Tensor) -> bool:
    """Whether any process saw a non-finite loss since the last optimizer step (all processes must agree, or one
    would step while another skips). One host sync per optimizer step."""
    if accelerator.num_processes > 1:
        count = accelerator.reduce(count.clone(), "sum")
    return bool(count.item())


def nan_message(losses: list[torch.Tensor], step: int, lr: float, out: Path) -> str:
    """The error of ``nan_policy=stop``, naming this process's first non-finite micro-batch loss of the step."""
    loss = next((x for x in losses if not torch.isfinite(x)), losses[-1])
    return (
        f"the training loss became {loss.item()} at step {step} (learning rate {lr:.3g}); stopped without updating "
        f"the model, so {out}/best and {out}/{CHECKPOINTS} keep the last good state. Try a lower train.lr, "
        "train.mixed_precision=no (fp32), gradient clipping (train.max_grad_norm=1.0), or train.nan_policy=skip"
    )


def stop_requested(accelerator: Accelerator, signals: StopSignals) -> bool:
    """Whether any process got SIGTERM/SIGINT; checked after each optimizer step so all processes stop together."""
    if accelerator.num_processes == 1:
        return signals.received is not None
    flag = torch.tensor(int(signals.received is not None), device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item())


# ---------------------------------------------------------------- the run


class RunLog:
    """Prints (above the progress bar) and appends to train.log, on the main process only."""

    def __init__(self, path: Path | None, enabled: bool):
        self.path, self.enabled = path, enabled

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        tqdm.write(msg)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(msg + "\n")


def train(cfg: Config) -> dict[str, Any]:
    """Train a classifier as ``cfg`` says; returns the metrics written to ``output.dir/metrics.json``.

    Raises:
        BertclsError: bad data, labels, options or output folder (one-line messages).
    """
    allocator.cap_primitive_cache()  # before the first bf16 matmul: memory that does not grow with new batch lengths
    threads = torch.get_num_threads()
    try:
        return train_lp_ft(cfg) if cfg.train.schedule == "lp_ft" else _run(cfg)
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        raise BertclsError(
            f"process {rank} of {world}: another process stopped answering ({str(e).splitlines()[0][-120:]}); it "
            f"died or hangs, see its own output (waited at most train.dist_timeout={cfg.train.dist_timeout:g}s)"
        ) from e
    finally:
        torch.set_num_threads(threads)  # the cached path runs on one thread; a notebook gets its setting back


def lost_peer(e: RuntimeError) -> bool:
    """Whether a collective failed because another process died or stopped answering (gloo raises plain
    RuntimeErrors for both; NCCL a DistBackendError)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    import torch.distributed as dist

    text = str(e)
    signs = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer", "Broken pipe")
    return isinstance(e, dist.DistError) or any(s in text for s in signs)


def _run(cfg: Config) -> dict[str, Any]:
    start = time.perf_counter()
    precision = resolve_mixed_precision(cfg.train.mixed_precision)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps its state per process and refuses a second Accelerator with another precision; a
        # notebook or a sweep calls train() many times, so start each single-process run from a clean state.
        AcceleratorState._reset_state()
    will_cache = cfg.train.cache and cfg.model.freeze_backbone and cfg.model.unfreeze_top_k == 0
    trackers = check_trackers(cfg.output.tracking)
    accelerator = Accelerator(
        # Trackers write under output.dir/tracking (TensorBoard: an event file per run).
        log_with=trackers or None,
        project_dir=cfg.output.dir if trackers else None,
        # On cached features only the tiny head trains: autocast would only add casts (2x slower per step on CPU).
        # The backbone still runs under `precision` when the features are computed.
        mixed_precision="no" if will_cache else precision,
        # No gradient_accumulation_steps: the loop accumulates itself (micro_batch_groups, no_sync), because accelerate
        # divides every micro-batch's loss by k, which under-weighs a last partial group.
        # accelerate only sets up several CPU processes (gloo) when told it is on CPU.
        cpu=not has_accelerator(),
        # On a GPU, batches come from pinned memory (make_train_loader) and are copied without waiting.
        dataloader_config=DataLoaderConfiguration(non_blocking=has_accelerator()),
        # A process that died or hangs makes the others fail at their next collective after this long, not 30 min.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.train.dist_timeout))],
    )
    main = accelerator.is_main_process
    set_seed(cfg.train.seed)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Output folder, data and model are checked before anything is written, so a typo costs nothing there.
    check_output_dir(cfg)
    resume_dir = resolve_resume(cfg.train.resume_from, Path(cfg.output.dir))
    data = load_data(cfg, print if main else lambda _msg: None)
    if cfg.train.early_stopping_patience and data.validation is None:
        raise BertclsError("train.early_stopping_patience needs a validation split (data.validation or a fraction)")
    multi = cfg.data.task == "multi_label"
    tune = multi and cfg.eval.threshold == "tune"
    if tune and data.validation is None:
        raise BertclsError("eval.threshold=tune needs a validation split (data.validation or a fraction)")
    m = cfg.model
    model = BertForTextClassification.from_pretrained(
        m.name_or_path,
        labels=data.labels,
        head_init=m.head_init,
        bias_init=m.bias_init,
        pooling=m.pooling,
        dropout=m.dropout,
        hidden_sizes=m.hidden_sizes,
        activation=m.activation,
        freeze_backbone=m.freeze_backbone,
        unfreeze_top_k=m.unfreeze_top_k,
        max_length=cfg.data.max_length,
        seed=cfg.train.seed,
        task=cfg.data.task,
    )
    if multi:
        # Tuned thresholds replace 0.5 at each evaluation; best/ and last/ keep the ones tuned for their weights.
        model.thresholds = DEFAULT_THRESHOLD if tune else cfg.eval.threshold
        model.label_delimiter = cfg.data.label_delimiter
    if m.reinit_top_k:
        model.reinit_top_layers(m.reinit_top_k, torch.Generator().manual_seed(cfg.train.seed))
    if cfg.train.gradual_unfreeze and (m.freeze_backbone or accelerator.num_processes > 1):
        # Under DDP the frozen layers would be unused parameters in the reducer; one process keeps it simple.
        raise BertclsError("train.gradual_unfreeze needs model.freeze_backbone=false and a single process")
    # Set after loading, so a checkpoint given as name_or_path (lp_ft's second phase) reads texts as configured too.
    model.truncation, model.window_stride = cfg.data.truncation, cfg.data.window_stride
    positions = max_positions(model.backbone.config)
    if positions is not None and cfg.data.max_length > positions:
        # Texts longer than the position embeddings would fail deep in the first forward pass; read at most what
        # the backbone can (the run's config.yaml records the value used).
        if main:
            print(f"data.max_length={cfg.data.max_length} is more than {m.name_or_path} reads; using {positions}")
        # A copy: the caller's config (a notebook's, a sweep's) is never changed by a run.
        cfg = replace(cfg, data=replace(cfg.data, max_length=positions))
        model.max_length = positions
    out = prepare_output_dir(cfg) if main else Path(cfg.output.dir)
    accelerator.wait_for_everyone()
    log = RunLog(out / "train.log", main)
    if main:
        (out / "config.yaml").write_text(to_yaml(cfg))
        if resume_dir is not None:
            log(f"resuming from {resume_dir}")
    if trackers:
        accelerator.init_trackers("tracking", config=flat_config(cfg))

    cached = cfg.train.cache and model.backbone_fully_frozen
    if cached and cfg.data.window_stride:
        raise BertclsError("data.window_stride does not work with the feature cache; set train.cache=false")
    lbfgs = use_lbfgs(cfg, cached)
    if cached:
        # Head-only epochs on stored backbone features: the backbone runs once per split, or never on a warm cache.
        model.to(accelerator.device)
        cache_dir = Path(cfg.train.cache_dir).expanduser() if cfg.train.cache_dir else DEFAULT_CACHE_DIR

        def make_ds(split: Split, _with_index: bool) -> FeatureDataset:
            feats, hit = load_or_compute(
                model, split, cfg.data.max_length, precision, accelerator, cache_dir, log, cfg.eval.batch_size
            )
            cache_hits.append(hit)
            return FeatureDataset(feats, label_targets(split.labels, data.labels, cfg.data.task))

        module, forward = model.head, forward_features
    else:

        def make_ds(split: Split, with_index: bool) -> TextClassificationDataset:
            return TextClassificationDataset(
                split.texts,
                split.labels,
                model.tokenizer,
                cfg.data.max_length,
                split.text_pairs,
                data.labels,
                with_index=with_index,
                truncation=cfg.data.truncation,
                # evaluation always reads whole texts as windows when they are on; training only if asked
                window_stride=cfg.data.window_stride if (with_index or cfg.data.train_windows) else 0,
                task=cfg.data.task,
            )

        module, forward = model, forward_tokens
    cache_hits: list[bool] = []
    train_ds = make_ds(data.train, False)
    val_ds = make_ds(data.validation, True) if data.validation is not None else None
    test_ds = make_ds(data.test, True) if data.test is not None else None
    if cached:
        log(f"feature cache {cache_dir}: {sum(cache_hits)} of {len(cache_hits)} split(s) reused")
        # Head steps are far too small to split across threads: one thread avoids waiting on the others (which
        # costs more than the work itself when the cores are shared, e.g. 30 ms instead of 1 ms per step).
        torch.set_num_threads(1)

    pin = accelerator.device.type == "cuda"
    train_loader = make_train_loader(train_ds, cfg, pin)
    train_sampler = train_loader.batch_sampler
    eval_loaders = [make_eval_loader(ds, cfg.eval.batch_size, pin) for ds in (val_ds, test_ds) if ds is not None]
    optimizer = build_optimizer(model, cfg)
    if multi:
        rows = label_targets(data.train.labels, data.labels, "multi_label")
        weights = pos_weights(cfg.loss.pos_weight, data.labels, rows)
        if weights is not None:
            log(f"pos_weight: {dict(zip(data.labels, [round(w, 4) for w in weights.tolist()], strict=True))}")
        loss_fn, loss_weight = build_multilabel_loss(weights), build_loss_weight(None, multi_label=True)
    else:
        weights = class_weights(cfg.loss.class_weights, data.labels, label_targets(data.train.labels, data.labels))
        if weights is not None:
            log(f"class weights: {dict(zip(data.labels, [round(w, 4) for w in weights.tolist()], strict=True))}")
        loss_fn, loss_weight = build_loss(weights, cfg.loss.label_smoothing), build_loss_weight(weights)

    module, optimizer, train_loader, *eval_loaders = accelerator.prepare(module, optimizer, train_loader, *eval_loaders)
    val_loader = eval_loaders.pop(0) if val_ds is not None else None
    test_loader = eval_loaders.pop(0) if test_ds is not None else None

    t = cfg.train
    updates_per_epoch = math.ceil(len(train_loader) / t.grad_accum_steps)
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.epochs * updates_per_epoch)
    if lbfgs:
        total_steps = len(lbfgs_grid(val_ds is not None))
        log(
            f"head fitted by L-BFGS on cached features (train.head_solver={t.head_solver}), {total_steps} L2 "
            "strength(s) tried on validation: train.lr, head_lr, epochs and max_steps do not apply "
            "(train.head_solver=adamw trains with them)"
        )
    num_epochs = math.ceil(total_steps / updates_per_epoch)
    # The prepared scheduler steps once per process each update, hence the factor (accelerate's examples do this).
    scheduler = get_scheduler(
        t.scheduler,
        optimizer,
        num_warmup_steps=int(t.warmup_ratio * total_steps) * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    scheduler = accelerator.prepare(scheduler)

    unwrapped = model  # the plain module: what is saved, whatever was wrapped for training
    n_train = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
    mode = (
        "head only"
        if unwrapped.backbone_fully_frozen
        else (f"head + top {unwrapped.unfreeze_top_k} layers" if unwrapped.freeze_backbone else "full fine-tuning")
    )
    log(
        f"bertcls: {m.name_or_path} | {len(data.labels)} labels {data.labels} | {mode}, {n_train:,} trainable params"
        f" | train {len(train_ds)}, validation {len(val_ds) if val_ds else 0}, test {len(test_ds) if test_ds else 0}"
        f" | {total_steps} steps x {t.batch_size * accelerator.num_processes * t.grad_accum_steps} examples"
        f" | {accelerator.device}, {accelerator.num_processes} process(es), precision {precision}"
        + ("" if accelerator.device.type != "cpu" else f", allocator {allocator.name()}")
    )

    history: list[dict[str, Any]] = []
    loss_curve: list[list[float]] = []
    # The L2 strength of an L-BFGS head is chosen by validation loss: smoother than accuracy on a few thousand rows.
    select = "loss" if lbfgs else cfg.eval.metric
    best: dict[str, Any] = {"metric": select, "value": None, "step": None}
    # Early stopping counts evaluations since the last improvement of more than min_delta (best/ still follows
    # every improvement, however small).
    stopping: dict[str, Any] = {"patience": t.early_stopping_patience, "min_delta": t.early_stopping_min_delta}
    stopping.update(stopped=False, step=None, reference=None, evals_without_improvement=0)
    step, examples, nan_skipped = 0, 0, 0
    running, running_n = torch.zeros((), device=accelerator.device), 0
    start_epoch, skip_batches = 0, 0

    eval_time = 0.0
    # Prediction alone (no metrics, no checkpoint writing): the evaluation speed reported in metrics.json.
    predict_time, predicted = 0.0, 0
    best_head: dict[str, torch.Tensor] = {}

    def run_eval(epoch: float) -> None:
        nonlocal eval_time, predict_time, predicted
        eval_start = time.perf_counter()
        record: dict[str, Any] = {"step": step, "epoch": round(epoch, 3), "lr": scheduler.get_last_lr()[0]}
        if loss_curve:
            record["train_loss"] = loss_curve[-1][1]
        if val_loader is not None:
            probs, gold, n = split_predictions(module, val_loader, accelerator, val_ds, forward, cfg.data.task)
            predict_time, predicted = predict_time + time.perf_counter() - eval_start, predicted + len(gold)
            if tune:
                # Every process tunes on the same gathered predictions, so all hold the same thresholds.
                unwrapped.thresholds = tune_thresholds(gold, probs).tolist()
            record["validation"] = split_metrics(probs, gold, n, unwrapped.thresholds)
            value = record["validation"][select]
            v = record["validation"]
            accelerator.log({f"validation/{k}": x for k, x in v.items() if k != "num_examples"}, step=step)
            log(f"step {step} epoch {epoch:.2f}: validation {describe_metrics(v)}")
            # A model that has gone non-finite never becomes best/, whatever its accuracy looks like.
            if math.isfinite(v["loss"]) and is_better(select, value, best["value"]):
                best.update(value=value, step=step)
                if multi:
                    best["thresholds"] = dict(zip(data.labels, unwrapped.thresholds, strict=True))
                if cached:
                    # Only the head changes: keep its best weights in memory and write best/ once, at the end,
                    # instead of a 90+ MB checkpoint at every improvement of a seconds-long run.
                    best_head.update({k: v.detach().clone() for k, v in unwrapped.head.state_dict().items()})
                elif main:
                    unwrapped.save_pretrained(out / "best")
            if is_better(select, value, stopping["reference"], t.early_stopping_min_delta):
                stopping.update(reference=value, evals_without_improvement=0)
            else:
                stopping["evals_without_improvement"] += 1
            if t.early_stopping_patience and stopping["evals_without_improvement"] >= t.early_stopping_patience:
                stopping.update(stopped=True, step=step)
                log(
                    f"early stopping at step {step}: no {cfg.eval.metric} gain > {t.early_stopping_min_delta} in "
                    f"{t.early_stopping_patience} evaluation(s); best step {best['step']}"
                )
        history.append(record)
        module.train()
        eval_time += time.perf_counter() - eval_start

    def snapshot(epoch: int, batch_in_epoch: int) -> dict[str, Any]:
        """What the loop has done so far, for state.json (every process calls it: the loss is reduced)."""
        return {
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "examples": examples,
            "nan_skipped_steps": nan_skipped,
            "running_loss": accelerator.reduce(running.clone(), "mean").item(),
            "running_n": running_n,
            "history": history,
            "train_loss_curve": loss_curve,
            "best": best,
            "early_stopping": stopping,
        }

    def checkpoint(epoch: int, batch_in_epoch: int) -> Path:
        head = best_head if cached and best_head else None
        path = save_checkpoint(accelerator, out, snapshot(epoch, batch_in_epoch), cfg.checkpoint.keep_last, head)
        log(f"checkpoint {path}")
        return path

    if resume_dir is not None:
        saved, saved_head = load_checkpoint(accelerator, resume_dir)
        step, examples, nan_skipped = saved["step"], saved["examples"], saved["nan_skipped_steps"]
        running.fill_(saved["running_loss"])
        running_n = saved["running_n"]
        history[:], loss_curve[:] = saved["history"], saved["train_loss_curve"]
        best.update(saved["best"])
        stopping.update(saved["early_stopping"])
        best_head.update(saved_head or {})
        start_epoch, skip_batches = saved["epoch"], saved["batch_in_epoch"]
        log(f"resumed at step {step} (epoch {start_epoch}, batch {skip_batches})")

    signals = StopSignals()
    progress = tqdm(total=total_steps, initial=step, disable=not main, desc="training", unit="step", dynamic_ncols=True)
    tick = time.perf_counter()
    module.train()
    with signals:
        if lbfgs:
            # Each fit of the L2 grid is one step, evaluated like an epoch; best/ is the one validation prefers.
            linear = unwrapped.head.layers[-1]
            x = train_ds.features.to(accelerator.device).float().clone()  # features made in inference mode
            y = train_ds.labels.to(accelerator.device)
            for c in lbfgs_grid(val_ds is not None):
                loss, iterations = fit_linear(linear, x, y, loss_fn, c)
                step, examples = step + 1, examples + len(x)
                loss_curve.append([step, loss])
                log(f"L-BFGS fit {step}: C={c:g} ({iterations} iterations), train loss {loss:.4f}")
                progress.update(1)
                run_eval(step)
                history[-1]["C"] = c
        else:
            for epoch in range(start_epoch, num_epochs):
                # accelerate's sharded batch sampler does not pass set_epoch on to ours, so set it directly.
                train_sampler.set_epoch(epoch)
                if t.gradual_unfreeze:
                    unfreeze_for_epoch(unwrapped, epoch, log)
                # On resume, the batches of this epoch seen before the checkpoint are skipped (same epoch seed, same
                # order).
                skip = skip_batches if epoch == start_epoch else 0
                loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
                # accelerate's loader re-sets its epoch counter on the sampler at each pass; a resumed run's (and the
                # skipping loader's) counter starts at 0, so it is told the true epoch too.
                loader.set_epoch(epoch)
                nonfinite = torch.zeros((), dtype=torch.long, device=accelerator.device)
                batch_in_epoch = skip
                for group in micro_batch_groups(loader, t.grad_accum_steps):
                    examples += sum(len(b["labels"]) for b in group)
                    losses = backward_group(accelerator, module, group, forward, loss_fn, loss_weight)
                    for loss in losses:
                        nonfinite += (~torch.isfinite(loss)).long()
                        # Summed on the device: reading the loss every step would force a host sync each step.
                        running += torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
                    running_n += len(losses)
                    batch_in_epoch += len(group)
                    if t.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(module.parameters(), t.max_grad_norm)
                    bad = nonfinite_loss(accelerator, nonfinite)
                    if bad and t.nan_policy == "stop":
                        progress.close()  # so the error is the last line on the terminal
                        raise TrainingStopped(nan_message(losses, step + 1, scheduler.get_last_lr()[0], out))
                    if not bad:
                        optimizer.step()
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if bad:  # nan_policy=skip: no update was made, and the non-finite losses stay out of the curve
                        nan_skipped += 1
                        running_n -= int(nonfinite.item())
                        log(f"non-finite loss at step {step + 1}: skipped the optimizer step ({nan_skipped} so far)")
                    nonfinite.zero_()
                    step += 1
                    progress.update(1)
                    if step % 10 == 0 or step == total_steps:
                        mean_loss = accelerator.reduce(running, "mean").item() / running_n
                        loss_curve.append([step, mean_loss])
                        accelerator.log({"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0]}, step=step)
                        running.zero_()
                        running_n = 0
                        rate = examples * accelerator.num_processes / (time.perf_counter() - tick - eval_time)
                        progress.set_postfix(loss=f"{mean_loss:.4f}", ex_s=f"{rate:.0f}")
                    if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < total_steps:
                        run_eval(step / updates_per_epoch)
                    every = cfg.checkpoint.every_steps
                    saved_now = bool(every and step % every == 0 and step < total_steps and not stopping["stopped"])
                    if saved_now:
                        checkpoint(epoch, batch_in_epoch)
                    if stop_requested(accelerator, signals):
                        path = (
                            checkpoint(epoch, batch_in_epoch) if not saved_now else out / CHECKPOINTS / f"step-{step}"
                        )
                        progress.close()
                        raise TrainingStopped(
                            f"stopped by signal {signals.received} at step {step}; checkpoint {path}; resume with: "
                            f"{resume_command(sys.argv[1:])}",
                            exit_code=128 + (signals.received or 15),
                        )
                    if step >= total_steps or stopping["stopped"]:
                        break
                if step >= total_steps or epoch == num_epochs - 1 or stopping["stopped"]:
                    break
                run_eval(epoch + 1)
                if stopping["stopped"]:
                    break
    if not stopping["stopped"] and not lbfgs:  # a stopped run (or each L-BFGS fit) was evaluated already
        run_eval(step / updates_per_epoch)
    progress.close()
    train_time = time.perf_counter() - tick - eval_time

    accelerator.wait_for_everyone()
    last_thresholds = unwrapped.thresholds
    if main:
        unwrapped.save_pretrained(out / "last")
        if best["step"] is None:  # no validation split: the last model is the one we keep
            unwrapped.save_pretrained(out / "best")
    if best_head:
        unwrapped.head.load_state_dict(best_head)
        if multi:
            unwrapped.thresholds = list(best["thresholds"].values())
        if main:
            unwrapped.save_pretrained(out / "best")
    accelerator.wait_for_everyone()

    result: dict[str, Any] = {
        "labels": data.labels,
        "history": history,
        "train_loss_curve": loss_curve,
        "best": best,
        "train_examples_per_s": examples * accelerator.num_processes / train_time,
        "train_time_s": train_time,
        "eval_time_s": eval_time,
        "eval_examples_per_s": predicted / predict_time if predict_time else None,
        "mixed_precision": precision,
        "num_processes": accelerator.num_processes,
        "feature_cache": {"used": cached, "splits_reused": sum(cache_hits), "splits": len(cache_hits)},
        "early_stopping": {k: v for k, v in stopping.items() if k != "reference"},
        "nan_skipped_steps": nan_skipped,
    }
    restore = best["step"] is not None and best["step"] != step and (test_loader is not None or stopping["stopped"])
    if restore and not best_head:  # (a cached run already holds its best head, loaded above)
        from safetensors.torch import load_file

        # The model left in memory (and tested) is the best one, as after early stopping in other tools.
        unwrapped.load_state_dict(load_file(out / "best" / "model.safetensors"))
        if multi:
            unwrapped.thresholds = list(best["thresholds"].values())
        log(f"restored the best checkpoint (step {best['step']}, validation {select} {best['value']:.4f})")
    if test_loader is not None:
        result["test"] = evaluate_split(module, test_loader, accelerator, test_ds, forward, unwrapped.thresholds)
        tst = result["test"]
        accelerator.log({f"test/{k}": x for k, x in tst.items() if k != "num_examples"}, step=step)
        log(f"test (best checkpoint, step {best['step'] or step}): {describe_metrics(tst)}")
    result["total_time_s"] = time.perf_counter() - start
    result["finished"] = True
    if main:
        from bertcls.card import run_card_info, write_model_card

        # The cards of best/ and last/ were written when they were saved; only now are the final metrics known.
        for name in ("best", "last"):
            info = run_card_info(cfg, result, name)
            if multi:  # each folder's own thresholds, whichever model is in memory now
                best_thresholds = list(best["thresholds"].values()) if "thresholds" in best else last_thresholds
                info["thresholds"] = last_thresholds if name == "last" else best_thresholds
            write_model_card(out / name, unwrapped, info)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        from bertcls.plots import plot_curves  # here, not at the top: matplotlib loads only when a run is done

        plot_curves(result, out / "curves.png", title=f"learning curves: {out}")
        log(
            f"done in {result['total_time_s']:.0f}s; checkpoints in {out}/best and {out}/last, metrics in "
            f"{out}/metrics.json"
        )
    # No process tears down the process group while another still writes its last files.
    accelerator.wait_for_everyone()
    finish_run(accelerator)
    return result


def finish_run(accelerator: Accelerator) -> None:
    """Close the trackers and drop accelerate's references to the wrapped model, leaving the process group alive.

    Not ``accelerator.end_training()``: it destroys the process group while the DDP wrapper still holds it, so the
    wrapper's reducer, freed later with the GIL held, runs gloo's destructor, which waits for gloo's worker thread;
    that thread may still be releasing the last barrier's tensors, which needs the GIL: a deadlock (1 run in ~12 on
    this CPU, pytorch issue 56297). The group is destroyed by ``close_distributed`` once nothing else holds it.
    """
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.free_memory()


def close_distributed() -> None:
    """Destroy the process group (if any) after the run's DDP wrappers are gone, so that its last reference is
    the registry's, whose release lets go of the GIL before gloo's destructor joins its threads."""
    import gc

    import torch.distributed as dist

    gc.collect()  # a wrapper kept alive by a reference cycle would otherwise be freed later, with the GIL held
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def train_lp_ft(cfg: Config) -> dict[str, Any]:
    """Linear probing, then fine-tuning (Kumar et al. 2022, arXiv 2202.10054), as one run.

    Phase 1 trains the head alone on the frozen backbone (on cached features) into ``output.dir/linear_probe``;
    phase 2 fine-tunes everything starting from that head, into ``output.dir``. A fine-tuned head that starts out
    good distorts the pretrained features less than a random one.
    """
    check_output_dir(cfg)
    probe_dir = Path(cfg.output.dir) / "linear_probe"
    t = cfg.train
    head_lr = t.head_lr if t.head_lr is not None else t.lr
    probe = replace(
        cfg,
        model=replace(cfg.model, freeze_backbone=True, unfreeze_top_k=0),
        train=replace(
            t,
            schedule="standard",
            epochs=t.lp_epochs,
            max_steps=-1,
            lr=head_lr,
            warmup_ratio=0.0,
            gradual_unfreeze=False,
            # Resuming an lp_ft run reruns the probe (seconds on the cache); only phase 2 resumes.
            resume_from=None,
        ),
        output=replace(cfg.output, dir=str(probe_dir), overwrite=True),
    )
    probe_result = train(probe)
    full = replace(
        cfg,
        # reinit_top_k already happened in the probe phase, whose features the head was fitted on.
        model=replace(
            cfg.model, name_or_path=str(probe_dir / "best"), freeze_backbone=False, unfreeze_top_k=0, reinit_top_k=0
        ),
        train=replace(t, schedule="standard"),
    )
    result = train(full)
    result["schedule"] = "lp_ft"
    result["linear_probe"] = {k: probe_result.get(k) for k in ("best", "history", "test", "train_time_s")}
    if PartialState().is_main_process:
        (Path(cfg.output.dir) / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> tuple[str | None, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m bertcls.train",
        description="Fine-tune a BERT-family classifier. With no arguments: the offline demo (configs/default.yaml).",
        epilog="overrides: key.sub=value, e.g. data.train=my.csv train.epochs=2 output.dir=runs/a\n\n" + options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with config values (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value pairs; they win over the config file")
    args = parser.parse_args(argv)
    return args.config, args.overrides


@cli_errors
def main(argv: list[str] | None = None) -> None:
    if argv is None:  # the command line (not a call from Python): use jemalloc when the machine has it
        allocator.rerun_under_jemalloc()
    config, overrides = parse_args(argv)
    cfg = load_config(config, overrides)
    transformers.logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise in a run log
    train(cfg)
    # Only after a run that returned: an exception's traceback still holds the DDP wrapper (see finish_run).
    close_distributed()


if __name__ == "__main__":
    sys.exit(main())
