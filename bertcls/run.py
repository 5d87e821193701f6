"""One training run, the recipe: ``run_once(cfg)`` reads top to bottom like accelerate's examples: ``setup``
(accelerator, data, model, output folder, datasets, loss, optimizer and scheduler, one ``prepare``, resume), then
``fit`` (``train_epoch`` per epoch, evaluation between epochs; ``fit_lbfgs`` for a linear head on cached features),
then ``finalize`` (best/ and last/, calibration, the test split, metrics.json). Where the loop stands lives in one
``RunState``, which checkpoints save and resume restores. The same code runs on CPU, one GPU, or many processes
under ``accelerate launch`` / torchrun.

The drivers that run it more than once (``bertcls.drivers``: collapse retries, LP-FT's two phases; ``bertcls.seeds``,
``bertcls.cv``, ``bertcls.sweep``, ``bertcls.selftrain``) call it; it calls none of them.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from bertcls import jsonio, packing, speed
from bertcls.cache import DEFAULT_CACHE_DIR, FeatureDataset, load_or_compute
from bertcls.calibration import unfold_temperature
from bertcls.checkpoint import (
    CHECKPOINTS,
    StopSignals,
    TrainingStopped,
    check_resume_labels,
    load_checkpoint,
    resolve_resume,
    resume_command,
    save_checkpoint,
)
from bertcls.collapse import Collapsed, collapse_reason
from bertcls.config import Config, to_yaml
from bertcls.data import (
    Split,
    TextClassificationDataset,
)
from bertcls.errors import BertclsError
from bertcls.inference import (
    forward_features,
    forward_tokens,
    make_eval_loader,
    split_metrics,
    split_predictions,
    window_predictions,
)
from bertcls.init import label_texts
from bertcls.losses import build_distill_loss, row_weight
from bertcls.metrics import is_better
from bertcls.model import BertForTextClassification, backbone_fully_frozen
from bertcls.multilabel import tune_thresholds
from bertcls.optim import (
    NonFiniteLosses,
    backward_group,
    build_optimizer,
    micro_batch_groups,
    nan_message,
    step_unless,
    stop_requested,
    unfreeze_for_epoch,
)
from bertcls.outputs import check_output_dir, prepare_output_dir
from bertcls.precision import resolve as resolve_mixed_precision  # scripts/ import it from here too
from bertcls.probe import C_GRID, cross_validate_c, fit_linear
from bertcls.run_data import RunData, data_seed, load_data, make_train_loader
from bertcls.run_state import RunLog, RunState, StopRun, Timer
from bertcls.serialization import HeadChanged
from bertcls.small_data import calibration_skip_reason, majority_rate, near_chance_line, per_class_min, scaled_steps
from bertcls.speed import allocator
from bertcls.streaming import StreamedBatches, StreamLoader, row_reader
from bertcls.tasks import Task, get_task, is_soft
from bertcls.token_store import DEFAULT_TOKEN_CACHE
from bertcls.tracking import check_trackers, flat_config

# What scripts and tests import from here, wherever it lives.

# ---------------------------------------------------------------- run state


@dataclass
class Run:
    """What ``setup`` builds, in the order it builds it; the loop reads it and moves ``state`` on."""

    cfg: Config  # the resolved config (how texts are read: the model's, setup_model): never the caller's
    accelerator: Accelerator
    precision: str
    task: Task
    data: RunData
    model: BertForTextClassification  # the plain module: what is saved, whatever was wrapped for training
    out: Path
    log: RunLog
    cached: bool  # head-only training on stored backbone features
    lbfgs: bool  # the head is fitted by L-BFGS instead of the epoch loop
    module: Any = None  # what trains, prepared by accelerate: the model, or its head on cached features
    forward: Callable = forward_tokens
    train_ds: Any = None
    val_ds: Any = None
    test_ds: Any = None
    train_loader: Any = None
    train_sampler: Any = None  # ours, under accelerate's wrapper: set_epoch is not passed on to it
    val_loader: Any = None
    test_loader: Any = None
    cache_hits: list[bool] = field(default_factory=list)
    features: dict[int, Any] = field(default_factory=dict)  # id of a whole split -> its features (feature_dataset)
    token_hits: list[bool] = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    loss_fn: Callable | None = None
    loss_weight: Callable | None = None
    total_steps: int = 0
    updates_per_epoch: int = 1
    state: RunState = field(default_factory=RunState)
    running: torch.Tensor | None = None  # the summed train loss since the last curve point, on the device
    nonfinite: NonFiniteLosses | None = None  # non-finite losses counted on the device, read by check_nonfinite
    best_head: dict[str, torch.Tensor] = field(default_factory=dict)  # cached runs keep the best head in memory
    progress: Any = None
    timer: Timer = field(default_factory=Timer)
    on_validation: Callable | None = None  # train()'s hook, called after each validation
    zero_shot: dict[str, Any] = field(default_factory=dict)  # the label_embeddings head's scores before training
    centroids: float | None = None  # contrastive runs: the share of the head taken from the class centroids
    centroid_evidence: dict | None = None  # train.contrastive_centroids=auto: the counts and p it chose by
    # What a small training file changed (bertcls.small_data): the plan's lines, and metrics.json's "small_data".
    small: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


SPLITS = ("train", "validation", "test")
LOG_EVERY = 10  # steps between points of the loss curve: where the loop reads the device (loss, non-finite counts)

# ---------------------------------------------------------------- setup helpers


def has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


def use_lbfgs(cfg: Config, cached: bool) -> bool:
    """Whether the head is fitted by L-BFGS (bertcls.probe) instead of the epoch loop."""
    t, linear = cfg.train, not cfg.model.hidden_sizes
    if t.head_solver == "lbfgs" and not (cached and linear):
        raise BertclsError(
            "train.head_solver=lbfgs fits a linear head on cached features: it needs model.freeze_backbone=true "
            "(no unfrozen layers), train.cache=true and model.hidden_sizes=[]; or set train.head_solver=adamw"
        )
    return cached and linear and (t.head_solver == "lbfgs" or (t.head_solver == "auto" and t.sampler != "balanced"))


def uses_cache(cfg: Config) -> bool:
    """Whether the head trains on stored backbone features: the backbone is wholly frozen and the cache is on (and
    the training split is not streamed: a stream is never whole to store)."""
    m = cfg.model
    return cfg.train.cache and backbone_fully_frozen(m.freeze_backbone, m.unfreeze_top_k) and not cfg.data.streaming


# With the label_embeddings prior, a weaker penalty than C=1 only lets a few rows pull the head off the prior: on
# Rotten Tomatoes at 8-64 examples a class, C in 0.01-1 scored alike and 3-100 worse (docs/fewshot.md), and a
# validation cut of a few rows would pick from the weak end by chance.
PRIOR_C_MAX = 1.0


# train.contrastive_centroids=auto: the p-value below which the centroids replace the label texts as the head's start
# (chosen on the few-shot bench's three data sets: docs/fewshot.md, "Which head").
CENTROIDS_P = 0.1
CENTROID_ROWS = 1024


def lbfgs_grid(has_validation: bool, prior: bool = False) -> tuple[float, ...]:
    """The C values fitted: the grid when validation can choose (up to PRIOR_C_MAX with the label prior), else
    scikit-learn's default C=1."""
    if not has_validation:
        return (1.0,)
    return tuple(c for c in C_GRID if c <= PRIOR_C_MAX) if prior else C_GRID


# ---------------------------------------------------------------- one run


def run_once(cfg: Config, data: RunData | None = None, collapsed=None, on_validation=None) -> dict[str, Any]:
    start = time.perf_counter()
    run = setup(cfg, data)
    run.on_validation = on_validation
    if collapsed:
        run.state.collapse = {"collapsed": list(collapsed), "seed": cfg.train.seed}
    for c in collapsed or []:
        run.log(f"seed {c['seed']} collapsed at step {c['step']} ({c['reason']}); this run uses seed {cfg.train.seed}")
    run.progress = tqdm(
        total=run.total_steps, initial=run.state.step, disable=not run.main, desc="training", unit="step",
        dynamic_ncols=True,
    )  # fmt: skip
    if not run.lbfgs and uses_label_prior(run):  # (fit_lbfgs scores it itself, then fits toward it)
        run.zero_shot = zero_shot_metrics(run)
    run.timer.tick = time.perf_counter()
    run.module.train()
    try:
        with StopSignals() as signals:
            fit_lbfgs(run) if run.lbfgs else fit(run, signals)
    except StopRun:
        run.progress.close()
        finish_run(run.accelerator)
        raise
    run.progress.close()
    run.timer.fitted = time.perf_counter()
    return finalize(run, start)


# -- setup: each step fits on a screen; everything is checked before anything is written


def setup(cfg: Config, data: RunData | None = None) -> Run:
    precision = resolve_mixed_precision(cfg.train.mixed_precision)
    cached = uses_cache(cfg)
    accelerator, trackers = setup_accelerator(cfg, precision, cached)
    # Output folder, data, options, model, loss and the checkpoint to resume from are all checked before anything is
    # written, so a typo costs nothing there (and an earlier run's files are never removed for a run that fails).
    # The log holds its lines until train.log exists (setup_output), which then starts with them.
    check_output_dir(cfg)
    resume_dir = resolve_resume(cfg.train.resume_from, Path(cfg.output.dir))
    log = RunLog(None, accelerator.is_main_process)
    if data is None:
        data = load_data(cfg, log)
    else:
        log.held.extend(data.said)  # said (and printed) when the data was read for this run
    check_run_options(cfg, data, accelerator, cached)
    task = get_task(cfg.data.task)
    model, cfg = setup_model(cfg, data.labels, task, accelerator, log)
    # A calibrated checkpoint trained again starts from its head before calibration: the T folded into it does not
    # describe the weights training makes, so no checkpoint of this run records it (last/ is never calibrated).
    unfold_temperature(model)
    run = Run(cfg, accelerator, precision, task, data, model, Path(cfg.output.dir), log, cached, use_lbfgs(cfg, cached))
    if cfg.train.recipe == "contrastive" and resume_dir is None:
        tune_contrastive(run)
    setup_datasets(run)
    setup_training(run)
    select = "loss" if run.lbfgs else cfg.eval.metric  # an L-BFGS head's L2 strength: smoother than accuracy
    run.state = RunState.start(select, cfg.train.early_stopping_patience, cfg.train.early_stopping_min_delta)
    run.running = torch.zeros((), device=accelerator.device)
    run.nonfinite = NonFiniteLosses(accelerator.device)
    if resume_dir is not None:
        resume(run, resume_dir)
    run.out = setup_output(cfg, accelerator, resume_dir, trackers, log)
    log_plan(run)
    return run


def setup_accelerator(cfg: Config, precision: str, cached: bool) -> tuple[Accelerator, list[str]]:
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps its state per process and refuses a second Accelerator with another precision; a
        # notebook or a sweep calls train() many times, so start each single-process run from a clean state.
        AcceleratorState._reset_state()
    trackers = check_trackers(cfg.output.tracking)
    accelerator = Accelerator(
        # Trackers write under output.dir/tracking (TensorBoard: an event file per run).
        log_with=trackers or None,
        project_dir=cfg.output.dir if trackers else None,
        # On cached features only the tiny head trains: autocast would only add casts (docs/benchmarks.md, "Levers").
        # The backbone still runs under `precision` when the features are computed.
        mixed_precision="no" if cached else precision,
        # No gradient_accumulation_steps: the loop accumulates itself (micro_batch_groups, no_sync), because accelerate
        # divides every micro-batch's loss by k, which under-weighs a last partial group.
        # accelerate only sets up several CPU processes (gloo) when told it is on CPU.
        cpu=not has_accelerator(),
        # On a GPU, batches come from pinned memory (make_train_loader) and are copied without waiting.
        dataloader_config=DataLoaderConfiguration(non_blocking=has_accelerator()),
        # A process that died or hangs makes the others fail at their next collective after this long, not 30 min.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.train.dist_timeout))],
    )
    if accelerator.mixed_precision == "fp16" and accelerator.scaler is None and not cached:
        use_fp16_without_accelerator(accelerator)
    set_seed(cfg.train.seed)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator, trackers


def use_fp16_without_accelerator(accelerator: Accelerator) -> None:
    """fp16 on a CPU the way accelerate runs it on a GPU: autocast to float16 and a dynamic loss scaler.

    accelerate 1.15 gives fp16 its GradScaler and autocast only on accelerators; on a CPU it would silently train in
    fp32 while the run says fp16. torch runs both on a CPU, so the CPU takes the GPU's code path (and the tests can
    check loss scaling, skipped overflow steps and the scaler's resume there). ``prepare`` wraps the model's forward
    in autocast because ``native_amp`` is set; backward, clipping, the optimizer step and ``save_state`` use the
    scaler as they would on a GPU."""
    accelerator.scaler = torch.amp.GradScaler(accelerator.device.type)
    accelerator.native_amp = True


def check_run_options(cfg: Config, data: RunData, accelerator: Accelerator, cached: bool) -> None:
    """Options that only the data, the processes or the backbone's freezing can rule out."""
    t = cfg.train
    if t.early_stopping_patience and data.validation is None:
        raise BertclsError("train.early_stopping_patience needs a validation split (data.validation or a fraction)")
    if cfg.eval.threshold == "tune" and data.validation is None:
        raise BertclsError("eval.threshold=tune needs a validation split (data.validation or a fraction)")
    if t.gradual_unfreeze and (cfg.model.freeze_backbone or accelerator.num_processes > 1):
        # Under DDP the frozen layers would be unused parameters in the reducer; one process keeps it simple.
        raise BertclsError("train.gradual_unfreeze needs model.freeze_backbone=false and a single process")
    if cached and cfg.data.window_stride:
        raise BertclsError("data.window_stride does not work with the feature cache; set train.cache=false")
    if t.unpadded and (cached or cfg.data.streaming):
        # cached: the head trains on stored features, there are no token batches to unpad
        raise BertclsError("train.unpadded packs token batches: it does not work with the feature cache or streaming")
    if cfg.data.streaming:
        check_streaming(cfg)


def check_streaming(cfg: Config) -> None:
    """What a streamed training split rules out: it has no length and is never seen whole."""
    t, why = cfg.train, "data.streaming=true"
    if t.max_steps <= 0:
        raise BertclsError(f"{why} needs train.max_steps (a stream has no length to count epochs by)")
    if t.sampler == "balanced":
        raise BertclsError(f"{why} batches by length in a rolling buffer; train.sampler=balanced needs the whole split")
    if "balanced" in (cfg.loss.class_weights, cfg.loss.pos_weight):
        raise BertclsError(f"{why}: balanced loss weights need counts over the whole split; give weights by label name")
    if cfg.data.train_windows or t.schedule == "lp_ft":
        raise BertclsError(f"{why} does not work with data.train_windows or train.schedule=lp_ft")


def setup_model(
    cfg: Config, labels: list[str], task: Task, accelerator: Accelerator, log=print
) -> tuple[BertForTextClassification, Config]:
    """The model, and the run's config: a copy that says what the model does. The model owns how texts are read
    (``data.max_length``, capped to what its backbone reads; ``truncation``, ``window_stride``): the datasets take
    those from it, and they are written back here, so config.yaml, best/ and its card agree. A checkpoint given as
    ``model.name_or_path`` takes this run's reading options, dropout and trainability, keeps its head as trained
    (anything else there is a one-line error) unless ``model.new_head``."""
    m, d = cfg.model, cfg.data
    head = ("head_init", "bias_init", "pooling", "dropout", "hidden_sizes", "activation", "freeze_backbone")
    try:
        model = BertForTextClassification.from_pretrained(
            m.name_or_path,
            labels=labels,
            **{key: getattr(m, key) for key in (*head, "unfreeze_top_k", "new_head")},
            max_length=d.max_length,
            truncation=d.truncation,
            window_stride=d.window_stride,
            seed=cfg.train.seed,
            task=d.task,
            label_descriptions=d.label_descriptions,
        )
    except HeadChanged as e:
        raise BertclsError(e.describe("model.", "model.new_head=true")) from None
    task.configure(model, cfg.eval.threshold == "tune", cfg.eval.threshold, cfg.data.label_delimiter)
    if m.reinit_top_k:
        model.reinit_top_layers(m.reinit_top_k, torch.Generator().manual_seed(cfg.train.seed))
    if cfg.train.unpadded:
        packing.check_supported(model.backbone, model.spec.pooling)
    if cfg.train.speedups:
        speed.apply(model)
    if model.max_length < d.max_length and accelerator.is_main_process:
        log(f"data.max_length={d.max_length} is more than {m.name_or_path} reads; using {model.max_length}")
    # A copy: the caller's config (a notebook's, a sweep's) is never changed by a run.
    return model, replace(cfg, data=replace(d, **model.reading))


def tune_contrastive(run: Run) -> None:
    """``train.recipe=contrastive``: tune the backbone on the training texts by the supervised contrastive loss
    (``bertcls.contrastive``), the label texts among them, then initialize the head again on the tuned encoder."""
    from bertcls.contrastive import contrastive_tune, step_count
    from bertcls.init import InitContext

    cfg, model, t = run.cfg, run.model, run.cfg.train
    if run.accelerator.num_processes > 1 or run.task.per_label:
        raise BertclsError("train.recipe=contrastive is for single-label runs in one process; use train.recipe=frozen")
    names = label_texts(run.data.labels, cfg.data.label_descriptions)
    texts = [*run.data.train.texts, *names]
    y = torch.tensor([*run.task.targets(run.data.train.labels, run.data.labels), *range(len(names))])
    model.to(run.accelerator.device)
    run.centroids = centroid_share(run, names, y[: len(run.data.train)])
    start = time.perf_counter()
    steps = step_count(len(run.data.train), t.contrastive_steps, t.contrastive_batch_size, t.contrastive_max_steps)
    losses = contrastive_tune(
        model, texts, y, steps=steps, batch_size=t.contrastive_batch_size, lr=t.contrastive_lr,
        temperature=t.contrastive_temperature, seed=t.seed, log=run.log,
    )  # fmt: skip
    run.log(
        f"contrastive tuning: {steps} steps of {t.contrastive_batch_size} texts, loss {losses[0]:.4f} -> "
        f"{losses[-1]:.4f} in {time.perf_counter() - start:.1f}s"
    )
    generator = torch.Generator().manual_seed(t.seed)
    init_range = getattr(model.backbone.config, "initializer_range", 0.02)
    model.head.reset_parameters(model.spec, init_range, generator, InitContext(run.data.labels, names, model.embed))
    if run.centroids:
        start_head_at_centroids(run, y[: len(run.data.train)])


def centroid_share(run: Run, names: list[str], targets: torch.Tensor) -> float:
    """``train.contrastive_centroids``, with ``auto`` decided on the untuned body (``contrastive.centroid_evidence``);
    0 where the head does not start from the label texts."""
    from bertcls.contrastive import centroid_evidence

    share = run.cfg.train.contrastive_centroids
    if not uses_label_prior(run):
        return 0.0
    if share != "auto":
        return float(share)
    texts, targets = centroid_rows(run, targets)
    e = centroid_evidence(run.model.embed(texts), run.model.embed(names), targets)
    run.centroid_evidence = e
    share = 1.0 if e["p"] < CENTROIDS_P else 0.0
    verdict = "the class centroids" if share else "the label texts"
    run.log(
        f"train.contrastive_centroids=auto chose {verdict} for the head: on the untuned body {e['centroids']} training "
        f"rows are right by their class's centroid alone and {e['texts']} by the label texts alone "
        f"(p={e['p']:.3f}; centroids from p < {CENTROIDS_P})"
    )
    return share


def centroid_rows(run: Run, targets: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """The training texts (and their targets) the centroids are made of: all of a few-shot file, a seeded sample of
    at most CENTROID_ROWS of a large one (one pass of the encoder over them, not over every row)."""
    n = len(targets)
    rows = torch.arange(n)
    if n > CENTROID_ROWS:
        generator = torch.Generator().manual_seed(run.cfg.train.seed)
        rows = torch.randperm(n, generator=generator)[:CENTROID_ROWS].sort().values
    return [run.data.train.texts[i] for i in rows.tolist()], targets[rows]


def start_head_at_centroids(run: Run, targets: torch.Tensor) -> None:
    """Turn the label-text head ``run.centroids`` of the way toward the classes' tuned centroids."""
    from bertcls.contrastive import blend_centroids

    share, out = run.centroids, run.model.head.layers[-1]
    texts, targets = centroid_rows(run, targets)
    with torch.no_grad():
        out.weight.copy_(blend_centroids(out.weight, run.model.embed(texts), targets, share))
    if share == 1:
        run.log("head: each class's row from the centroid of its tuned training rows")
    else:
        run.log(f"head: each class's row {share:.0%} from the centroid of its tuned training rows, {1 - share:.0%} "
                "from its label text")  # fmt: skip


def setup_output(
    cfg: Config, accelerator: Accelerator, resume_dir: Path | None, trackers: list[str], log: RunLog
) -> Path:
    """The output folder, written only now that everything is checked: config.yaml, and train.log with the lines
    the log held so far."""
    main = accelerator.is_main_process
    out = prepare_output_dir(cfg) if main else Path(cfg.output.dir)
    accelerator.wait_for_everyone()
    log.open(out / "train.log")
    if main:
        (out / "config.yaml").write_text(to_yaml(cfg))
    if trackers:
        accelerator.init_trackers("tracking", config=flat_config(cfg))
    return out


def setup_datasets(run: Run) -> None:
    """Tokenized splits; or, for head-only training on the cache, the backbone's stored features of each split
    (the backbone runs once per split, or never on a warm cache)."""
    d = run.data
    if run.cached:
        run.model.to(run.accelerator.device)
        run.module, run.forward = run.model.head, forward_features
    else:
        run.module, run.forward = run.model, forward_tokens
    make = feature_dataset if run.cached else token_dataset
    run.train_ds = make(run, d.train, False) if d.train is not None else streamed_batches(run)
    run.val_ds = make(run, d.validation, True) if d.validation is not None else None
    run.test_ds = make(run, d.test, True) if d.test is not None else None
    if run.token_hits and run.cfg.data.cache:
        hits = sum(run.token_hits)
        run.log(f"token cache {token_cache_dir(run.cfg)}: {hits} of {len(run.token_hits)} split(s) reused")
    if run.cached:
        run.log(f"feature cache {cache_dir(run.cfg)}: {sum(run.cache_hits)} of {len(run.cache_hits)} split(s) reused")
        # Head steps are far too small to split across threads: one thread avoids waiting on the others, which
        # costs more than the work itself when the cores are shared (docs/benchmarks.md, "Levers").
        torch.set_num_threads(1)


def cache_dir(cfg: Config) -> Path:
    return Path(cfg.train.cache_dir).expanduser() if cfg.train.cache_dir else DEFAULT_CACHE_DIR


def token_cache_dir(cfg: Config) -> Path | None:
    if not cfg.data.cache:
        return None
    return Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else DEFAULT_TOKEN_CACHE


def feature_dataset(run: Run, split: Split, _with_index: bool) -> FeatureDataset:
    """The split's features: a subset (validation cut, a cross-validation fold) reads its rows from the features of
    the whole split it was cut from, computed once per run and cached once for every way of cutting it."""
    cfg, whole = run.cfg, split.base if split.base is not None else split
    if id(whole) not in run.features:
        feats, hit = load_or_compute(
            run.model, whole, run.model.max_length, run.precision, run.accelerator, cache_dir(cfg), run.log,
            cfg.eval.batch_size,
        )  # fmt: skip
        run.cache_hits.append(hit)
        run.features[id(whole)] = feats
    return FeatureDataset(run.features[id(whole)], run.task.targets(split.labels, run.data.labels), split.base_rows)


def token_dataset(run: Run, split: Split, with_index: bool) -> TextClassificationDataset:
    d, accelerator, model = run.cfg.data, run.accelerator, run.model  # how texts are read: the model's
    # The main process tokenizes and writes the cache entry first; the others then read it instead of tokenizing.
    with accelerator.main_process_first():
        ds = TextClassificationDataset(
            split.texts,
            split.labels,
            model.tokenizer,
            model.max_length,
            split.text_pairs,
            run.data.labels,
            with_index=with_index,
            truncation=model.truncation,
            # evaluation always reads whole texts as windows when they are on; training only if asked
            window_stride=model.window_stride if (with_index or d.train_windows) else 0,
            task=d.task,
            cache_dir=token_cache_dir(run.cfg),
            log=run.log,
            progress=accelerator.is_main_process,
        )
    run.token_hits.append(ds.cache_hit)
    return ds


def streamed_batches(run: Run) -> StreamedBatches:
    cfg, accelerator = run.cfg, run.accelerator
    d = cfg.data
    return StreamedBatches(
        d.train, row_reader(d, run.data.labels, run.task), run.model.tokenizer, run.model.max_length,
        run.model.truncation,
        cfg.train.batch_size, data_seed(cfg), accelerator.process_index, accelerator.num_processes,
    )  # fmt: skip


def setup_training(run: Run) -> None:
    """Loaders, loss, optimizer and scheduler, prepared by accelerate."""
    cfg, accelerator, t = run.cfg, run.accelerator, run.cfg.train
    pin = accelerator.device.type == "cuda"
    streamed = isinstance(run.train_ds, StreamedBatches)
    # A streamed split is batched and shared between processes by itself (streaming.StreamLoader), not by accelerate.
    train_loader = None if streamed else make_train_loader(run.train_ds, cfg, pin)
    evals = [make_eval_loader(ds, cfg.eval.batch_size, pin) for ds in (run.val_ds, run.test_ds) if ds is not None]
    optimizer = build_optimizer(run.model, cfg)
    targets = [] if streamed else run.task.targets(run.data.train.labels, run.data.labels)
    run.loss_fn, run.loss_weight = run.task.build_loss(cfg.loss, run.data.labels, targets, run.log)
    if is_soft(targets):  # a distillation run's soft targets (bertcls.distill): its loss, averaged over rows
        run.loss_fn, run.loss_weight = build_distill_loss(cfg.distill.temperature, cfg.distill.alpha), row_weight
    loaders = evals if streamed else [train_loader, *evals]
    run.module, run.optimizer, *loaders = accelerator.prepare(run.module, optimizer, *loaders)
    if streamed:
        run.train_loader = run.train_sampler = StreamLoader(run.train_ds, accelerator.device)
    else:
        run.train_sampler, run.train_loader = train_loader.batch_sampler, loaders.pop(0)
    run.val_loader = loaders.pop(0) if run.val_ds is not None else None
    run.test_loader = loaders.pop(0) if run.test_ds is not None else None

    # A stream is one run-long pass of train.max_steps updates (it restarts by itself when it ends).
    run.updates_per_epoch = t.max_steps if streamed else math.ceil(len(run.train_loader) / t.grad_accum_steps)
    run.total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.epochs * run.updates_per_epoch)
    if run.lbfgs:
        run.total_steps = len(lbfgs_grid(run.val_ds is not None, uses_label_prior(run)))
    elif not streamed:
        run.total_steps, why = scaled_steps(cfg, run.total_steps, run.updates_per_epoch)
        if why:
            run.small["steps"] = why
    # The prepared scheduler steps once per process each update, hence the factor (accelerate's examples do this).
    scheduler = get_scheduler(
        t.scheduler,
        run.optimizer,
        num_warmup_steps=int(t.warmup_ratio * run.total_steps) * accelerator.num_processes,
        num_training_steps=run.total_steps * accelerator.num_processes,
    )
    run.scheduler = accelerator.prepare(scheduler)


def log_plan(run: Run) -> None:
    """One line that says what this run will do."""
    cfg, model, accelerator, t = run.cfg, run.model, run.accelerator, run.cfg.train
    cpu = accelerator.device.type == "cpu"
    if run.lbfgs:
        where = "tried on validation" if run.val_ds is not None else "fitted (no validation split)"
        if run.data.no_cut:
            where = "chosen by cross-validation on the training rows"
        run.log(
            f"head fitted by L-BFGS on cached features (train.head_solver={t.head_solver}), "
            f"{run.total_steps} L2 strength(s) {where}: train.lr, head_lr, epochs and "
            "max_steps do not apply (train.head_solver=adamw trains with them)"
        )
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if model.backbone_fully_frozen:
        mode = "head only"
    else:
        mode = f"head + top {model.unfreeze_top_k} layers" if model.freeze_backbone else "full fine-tuning"
    sizes = (len(ds) if ds else 0 for ds in (run.val_ds, run.test_ds))
    sources = run.data.sources
    run.log("data: " + " | ".join(f"{name} {sources.get(name, 'given by the caller')}" for name in SPLITS))
    n_rows = "streamed" if isinstance(run.train_ds, StreamedBatches) else len(run.train_ds)
    run.log(
        f"bertcls: {cfg.model.name_or_path} | {len(run.data.labels)} labels {run.data.labels} | {mode}, "
        f"{n_train:,} trainable params | train {n_rows}, validation {next(sizes)}, test {next(sizes)}"
        f" | {run.total_steps} steps x {t.batch_size * accelerator.num_processes * t.grad_accum_steps} examples"
        f" | {accelerator.device}, {accelerator.num_processes} process(es), precision {run.precision}"
        + (", unpadded batches" if t.unpadded else "")
        # A CPU has no fast fp16 matmuls (no AMX-FP16 here): fp16 there is for trying the GPU's code path.
        + (" (slow on a CPU: bf16 or no train faster)" if run.precision == "fp16" and cpu else "")
        + (f", allocator {allocator.name()}" if cpu else "")
    )
    if run.data.no_cut:
        run.small["validation"] = run.data.no_cut
        if run.lbfgs:
            run.small["choice"] = (
                "L2 strength: chosen by cross-validation on the training rows (no validation split to choose it on)"
            )
    for line in run.small.values():
        run.log(f"small file: {line}")


def resume(run: Run, path: Path) -> None:
    check_resume_labels(path, run.data.labels)
    saved, saved_head = load_checkpoint(run.accelerator, path)
    s = run.state
    s.load_state_dict(saved)
    run.running.fill_(s.running_loss)
    run.best_head.update(saved_head or {})
    run.log(f"resumed at step {s.step} (epoch {s.epoch}, batch {s.batch_in_epoch}) from {path}")


# -- the loop


def fit(run: Run, signals: StopSignals) -> None:
    """Train epoch after epoch, evaluating after each, until the steps are done or early stopping says stop."""
    s = run.state
    num_epochs = math.ceil(run.total_steps / run.updates_per_epoch)
    start_epoch, skip = s.epoch, s.batch_in_epoch
    for epoch in range(start_epoch, num_epochs):
        # On resume, the batches of this epoch seen before the checkpoint are skipped (same epoch seed, same order).
        train_epoch(run, epoch, skip if epoch == start_epoch else 0, signals)
        if s.step >= run.total_steps or epoch == num_epochs - 1 or s.stopped:
            break
        if not evaluated_at_this_step(run):  # eval.every_steps may have landed on the epoch's last step
            evaluate_validation(run, epoch + 1)
        if s.stopped:
            break
    if not s.stopped and not evaluated_at_this_step(run):  # a stopped run was evaluated already
        evaluate_validation(run, s.step / run.updates_per_epoch)
    check_nonfinite(run)
    if run.data.no_cut and run.data.train is not None:
        check_collapse_on_train(run)


def check_collapse_on_train(run: Run) -> None:
    """A small file has no validation split for the collapse check: the trained model's decisions on its own
    training rows are checked instead (one answer for every row while the labels differ is collapse there too)."""
    ds = feature_dataset(run, run.data.train, True) if run.cached else token_dataset(run, run.data.train, True)
    loader = run.accelerator.prepare(make_eval_loader(ds, run.cfg.eval.batch_size, False))
    probs, gold, _ = split_predictions(run.module, loader, run.accelerator, ds, run.forward, run.task)
    run.module.train()
    check_collapse(run, probs, gold, "training")


def evaluated_at_this_step(run: Run) -> bool:
    """Whether the last evaluation was at the current step: evaluating twice at one step would count it twice for
    early stopping (and for a sweep's pruner)."""
    history = run.state.history
    return bool(history) and history[-1]["step"] == run.state.step


def train_epoch(run: Run, epoch: int, skip: int, signals: StopSignals) -> None:
    s, t = run.state, run.cfg.train
    # accelerate's sharded batch sampler does not pass set_epoch on to ours, so set it directly.
    run.train_sampler.set_epoch(epoch)
    if t.gradual_unfreeze:
        unfreeze_for_epoch(run.model, epoch, run.log)
    loader = run.train_loader
    if skip:
        streamed = isinstance(loader, StreamLoader)
        loader = loader.skipping(skip) if streamed else run.accelerator.skip_first_batches(loader, skip)
    # accelerate's loader re-sets its epoch counter on the sampler at each pass; a resumed run's (and the skipping
    # loader's) counter starts at 0, so it is told the true epoch too.
    loader.set_epoch(epoch)
    s.epoch, s.batch_in_epoch = epoch, skip
    for group in micro_batch_groups(loader, t.grad_accum_steps):
        optimizer_step(run, group)
        s.batch_in_epoch += len(group)
        if after_step(run, signals):
            break


def optimizer_step(run: Run, group: list[dict]) -> None:
    """Forward and backward over one update's micro-batches, then step, unless a loss is not finite."""
    s, t, accelerator = run.state, run.cfg.train, run.accelerator
    s.examples += sum(len(b["labels"]) for b in group)
    losses = backward_group(accelerator, run.module, group, run.forward, run.loss_fn, run.loss_weight)
    found_inf = run.nonfinite.count(losses, s.step + 1, run.lr, accelerator)
    for loss in losses:
        # Summed on the device: reading the loss every step would force a host sync each step.
        run.running += torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
    s.running_n += len(losses)
    if t.max_grad_norm > 0:
        accelerator.clip_grad_norm_(run.module.parameters(), t.max_grad_norm)  # (unscales fp16 gradients first)
    elif accelerator.scaler is not None:
        accelerator.unscale_gradients()  # step_unless joins the scaler's flags, which unscaling makes
    # A non-finite loss is read later (check_nonfinite); its step's update is skipped on the device now. The
    # schedule moves on either way, as it does over a GradScaler's skipped fp16 steps.
    step_unless(run.optimizer, found_inf, accelerator.scaler)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    s.step += 1
    run.progress.update(1)


def after_step(run: Run, signals: StopSignals) -> bool:
    """The loss curve, evaluation and checkpoints every so many steps, and a requested stop; True: leave the loop."""
    s, cfg = run.state, run.cfg
    if s.step % LOG_EVERY == 0 or s.step == run.total_steps:
        log_train_loss(run)
    if cfg.eval.every_steps and s.step % cfg.eval.every_steps == 0 and s.step < run.total_steps:
        evaluate_validation(run, s.step / run.updates_per_epoch)
    every = cfg.checkpoint.every_steps
    saved_now = bool(every and s.step % every == 0 and s.step < run.total_steps and not s.stopped)
    if saved_now:
        save_state(run)
    if stop_requested(run.accelerator, signals, s.step, LOG_EVERY):
        path = save_state(run) if not saved_now else run.out / CHECKPOINTS / f"step-{s.step}"
        run.progress.close()
        raise TrainingStopped(
            f"stopped by signal {signals.received} at step {s.step}; checkpoint {path}; resume with: "
            f"{resume_command(sys.argv[1:])}",
            exit_code=128 + (signals.received or 15),
        )
    return s.step >= run.total_steps or s.stopped


def check_nonfinite(run: Run) -> None:
    """Read the non-finite losses counted on the device since the last read (optim.NonFiniteLosses): under
    ``nan_policy=stop`` stop the run (before anything after the bad step is logged, evaluated or saved), under
    ``skip`` count the skipped steps and keep their losses out of the curve."""
    losses, steps, first, loss, lr = run.nonfinite.read()
    if not steps:
        return
    s = run.state
    if run.cfg.train.nan_policy == "stop":
        run.progress.close()  # so the error is the last line on the terminal
        raise TrainingStopped(nan_message(loss, first, lr, run.out))
    s.nan_skipped_steps += steps
    s.running_n -= losses
    run.log(f"non-finite loss at step {first}: skipped {steps} optimizer step(s) ({s.nan_skipped_steps} so far)")


def log_train_loss(run: Run) -> None:
    check_nonfinite(run)
    s, accelerator = run.state, run.accelerator
    # The finite losses' sum and count over every process, in one collective that every process joins.
    count = torch.full((), float(s.running_n), device=run.running.device)
    total, n = accelerator.reduce(torch.stack([run.running, count]), "sum").tolist()
    if n <= 0:  # every loss since the last point was non-finite (nan_policy=skip): no point to draw
        run.running.zero_()
        s.running_n = 0
        return
    mean_loss = total / n
    s.train_loss_curve.append([s.step, mean_loss])
    accelerator.log({"train/loss": mean_loss, "train/lr": run.lr}, step=s.step)
    run.running.zero_()
    s.running_n = 0
    rate = s.examples * accelerator.num_processes / run.timer.train_time()
    run.progress.set_postfix(loss=f"{mean_loss:.4f}", ex_s=f"{rate:.0f}")


def fit_lbfgs(run: Run) -> None:
    """The linear head by L-BFGS on cached features: each L2 strength of the grid is one step, evaluated like an
    epoch; best/ is the one validation prefers."""
    s, device = run.state, run.accelerator.device
    linear = run.model.head.layers[-1]
    x = run.train_ds.matrix().to(device).float().clone()  # features made in inference mode
    y = run.train_ds.labels.to(device)
    weight_sum = float(run.loss_weight(y))  # what the loss's mean divides by: C then means scikit-learn's C
    prior = None
    if uses_label_prior(run):
        # The label_embeddings head is a zero-shot classifier: score it, then pull the fit toward it, not toward 0.
        prior = linear.weight.detach().clone()
        run.zero_shot = zero_shot_metrics(run)
    grid = lbfgs_grid(run.val_ds is not None, prior is not None)
    if run.val_ds is None and run.data.no_cut:  # too few rows to hold out: choose C on them as LogisticRegressionCV
        cv_grid = tuple(c for c in C_GRID if c <= PRIOR_C_MAX) if prior is not None else C_GRID
        cv = cross_validate_c(linear, x, y, run.loss_fn, cv_grid, data_seed(run.cfg), prior=prior)
        if cv is not None:
            grid, run.small["cv"] = (cv["C"],), cv
            run.log(
                f"L-BFGS C={cv['C']:g} chosen by {cv['folds']}-fold cross-validation on the training rows: held-out "
                f"loss {cv['loss']:.4f}, accuracy {cv['accuracy']:.4f}"
            )
    for c in grid:
        loss, iterations = fit_linear(linear, x, y, run.loss_fn, c, weight_sum=weight_sum, prior=prior)
        s.step, s.examples = s.step + 1, s.examples + len(x)
        s.train_loss_curve.append([s.step, loss])
        run.log(f"L-BFGS fit {s.step}: C={c:g} ({iterations} iterations), train loss {loss:.4f}")
        run.progress.update(1)
        evaluate_validation(run, s.step)
        s.history[-1]["C"] = c


def uses_label_prior(run: Run) -> bool:
    """Whether the head was initialized from the label texts in this run (not loaded, not resumed)."""
    head_init = run.model.spec.head_init
    name = head_init if isinstance(head_init, str) else head_init.get("name")
    return name == "label_embeddings" and not run.cfg.train.resume_from and not run.state.step


def zero_shot_metrics(run: Run) -> dict[str, Any]:
    """The untrained label_embeddings head scored on validation and test (a zero-shot classifier), logged."""
    found: dict[str, Any] = {}
    for name, loader, ds in (("validation", run.val_loader, run.val_ds), ("test", run.test_loader, run.test_ds)):
        if loader is None:
            continue
        probs, gold, n = split_predictions(run.module, loader, run.accelerator, ds, run.forward, run.task)
        found[name] = split_metrics(run.task, probs, gold, n, run.model.thresholds)
        run.log(f"zero-shot ({zero_shot_head(run)}): {name} {run.task.describe(found[name])}")
    run.module.train()
    return found


def zero_shot_head(run: Run) -> str:
    """What the "zero-shot" scores scored: after contrastive tuning, no longer an untrained model's."""
    if run.centroids == 1:
        return "tuned body, head from the class centroids, before its fit"
    texts = label_texts(run.data.labels, run.cfg.data.label_descriptions)
    said = ", ".join(repr(t) for t in texts[:3]) + (f" and {len(texts) - 3} more" if len(texts) > 3 else "")
    if run.centroids is None:
        return f"head from the label texts {said}, before training"
    if run.centroids > 0:
        return f"tuned body, head from the label texts {said} and the class centroids, before its fit"
    return f"tuned body, head from the label texts {said}, before its fit"


def evaluate_validation(run: Run, epoch: float) -> None:
    """Score the validation split, keep the best model, count evaluations for early stopping."""
    check_nonfinite(run)
    s, timer = run.state, run.timer
    eval_start = time.perf_counter()
    record: dict[str, Any] = {"step": s.step, "epoch": round(epoch, 3), "lr": run.lr}
    if s.train_loss_curve:
        record["train_loss"] = s.train_loss_curve[-1][1]
    if run.val_loader is not None:
        probs, gold, n = split_predictions(
            run.module, run.val_loader, run.accelerator, run.val_ds, run.forward, run.task
        )
        timer.predict_time, timer.predicted = (
            timer.predict_time + time.perf_counter() - eval_start,
            timer.predicted + len(gold),
        )
        if run.cfg.eval.threshold == "tune":
            # Every process tunes on the same gathered predictions, so all hold the same thresholds.
            run.model.thresholds = tune_thresholds(gold, probs).tolist()
        v = record["validation"] = split_metrics(run.task, probs, gold, n, run.model.thresholds)
        if not s.history and not run.lbfgs:  # the first evaluation (an L-BFGS grid starts strongly regularized)
            check_collapse(run, probs, gold)
        run.accelerator.log({f"validation/{k}": x for k, x in v.items() if k != "num_examples"}, step=s.step)
        # A stream's epochs are unknown (its runs are one pass of max_steps updates), so its log shows examples.
        seen = s.examples * run.accelerator.num_processes
        where = f"({seen:,} examples)" if run.cfg.data.streaming else f"epoch {epoch:.2f}"
        run.log(f"step {s.step} {where}: validation {run.task.describe(v)}")
        keep_best(run, v)
        count_for_early_stopping(run, v[s.best["metric"]])
        if run.on_validation is not None:
            run.on_validation(s.step, v)
    s.history.append(record)
    run.module.train()
    timer.eval_time += time.perf_counter() - eval_start


def check_collapse(run: Run, probs, gold, split: str = "validation") -> None:
    """Name a collapsed run at its first validation; raise ``Collapsed`` for a restart when retries are left."""
    s, seed = run.state, run.cfg.train.seed
    reason = collapse_reason(run.task, probs, gold, run.model.thresholds, run.data.labels, s.train_loss_curve)
    if reason is not None and split != "validation":
        reason = reason.replace("validation", split)
    if reason is None:
        return
    # A resumed run is never restarted: its checkpoints are the user's.
    if run.cfg.train.collapse_retries > 0 and not run.cfg.train.resume_from:
        run.log(f"collapse at step {s.step} with seed {seed}: {reason}; restarting with seed {seed + 1}")
        raise Collapsed(reason, s.step)
    run.log(f"warning: this run looks collapsed at step {s.step} (seed {seed}): {reason}; try another train.seed")
    s.collapse["warning"] = {"seed": seed, "step": s.step, "reason": reason}


def keep_best(run: Run, v: dict[str, float]) -> None:
    s, select = run.state, run.state.best["metric"]
    # A model that has gone non-finite never becomes best/, whatever its accuracy looks like; said, never silent.
    if not math.isfinite(v.get("loss", math.nan)):
        run.log(f"warning: validation loss is not finite at step {s.step}; best/ is not updated from this evaluation")
        return
    if not is_better(select, v[select], s.best["value"]):
        return
    s.best.update(value=v[select], step=s.step, **run.task.decision_state(run.model))
    if run.cached:
        # Only the head changes: keep its best weights in memory and write best/ once, at the end, instead of a
        # whole-model checkpoint at every improvement of a seconds-long run.
        run.best_head.update({k: x.detach().clone() for k, x in run.model.head.state_dict().items()})
    elif run.main:
        run.model.save_pretrained(run.out / "best")


def count_for_early_stopping(run: Run, value: float) -> None:
    s, t, stopping = run.state, run.cfg.train, run.state.early_stopping
    if is_better(s.best["metric"], value, stopping["reference"], t.early_stopping_min_delta):
        stopping.update(reference=value, evals_without_improvement=0)
    else:
        stopping["evals_without_improvement"] += 1
    if t.early_stopping_patience and stopping["evals_without_improvement"] >= t.early_stopping_patience:
        stopping.update(stopped=True, step=s.step)
        run.log(
            f"early stopping at step {s.step}: no {run.cfg.eval.metric} gain > {t.early_stopping_min_delta} in "
            f"{t.early_stopping_patience} evaluation(s); best step {s.best['step']}"
        )


def save_state(run: Run) -> Path:
    """A checkpoint of the run (every process calls this: the running loss is reduced)."""
    check_nonfinite(run)
    s = run.state
    s.running_loss = run.accelerator.reduce(run.running.clone(), "mean").item()
    head = run.best_head if run.cached and run.best_head else None
    # The labels travel with the checkpoint: a resume with other data is refused by name (check_resume_labels).
    state = {**s.state_dict(), "labels": run.data.labels}
    path = save_checkpoint(run.accelerator, run.out, state, run.cfg.checkpoint.keep_last, head)
    run.log(f"checkpoint {path}")
    return path


# -- finalize


def finalize(run: Run, start: float) -> dict[str, Any]:
    """Write best/ and last/, put the best model in memory, score the test split, write metrics.json."""
    train_time = run.timer.train_time()
    decisions = save_models(run)
    s, accelerator = run.state, run.accelerator
    result: dict[str, Any] = {
        "labels": run.data.labels,
        "history": s.history,
        "train_loss_curve": s.train_loss_curve,
        "best": s.best,
        "train_examples_per_s": s.examples * accelerator.num_processes / train_time,
        "train_time_s": train_time,
        "eval_time_s": run.timer.eval_time,
        "eval_examples_per_s": run.timer.predicted / run.timer.predict_time if run.timer.predict_time else None,
        "mixed_precision": run.precision,
        "num_processes": accelerator.num_processes,
        "feature_cache": {"used": run.cached, "splits_reused": sum(run.cache_hits), "splits": len(run.cache_hits)},
        "token_cache": {
            "used": bool(run.cfg.data.cache),
            "splits_reused": sum(run.token_hits),
            "splits": len(run.token_hits),
        },
        "early_stopping": {k: v for k, v in s.early_stopping.items() if k != "reference"},
        "nan_skipped_steps": s.nan_skipped_steps,
    }
    if s.collapse:
        result["collapse"] = s.collapse
    if run.zero_shot:
        result["zero_shot"] = run.zero_shot
    if run.centroids is not None:
        result["contrastive_centroids"] = run.centroids
    if run.centroid_evidence is not None:
        result["contrastive_centroids_auto"] = {**run.centroid_evidence, "threshold_p": CENTROIDS_P}
    result["recipe"] = run.cfg.train.recipe
    calibrating = run.val_loader is not None and run.cfg.eval.calibration == "temperature"
    if calibrating and (skip := calibration_skip_reason(run.cfg, len(run.val_ds))):
        calibrating, result["calibration"] = False, {"method": "none", "skipped": skip}
        run.log(skip)
    elif run.data.no_cut and run.cfg.eval.calibration == "temperature":
        result["calibration"] = {"method": "none", "skipped": "no validation split (small file)"}
        run.log("calibration: skipped, no validation split to fit it on (a small file is not cut for one)")
    restore_best(run, force=calibrating)
    if calibrating:
        result["calibration"] = calibrate(run, decisions)
    if run.test_loader is not None:
        probs, gold, n = split_predictions(run.module, run.test_loader, accelerator, run.test_ds, run.forward, run.task)
        result["test"] = tst = split_metrics(run.task, probs, gold, n, run.model.thresholds)
        accelerator.log({f"test/{k}": x for k, x in tst.items() if k != "num_examples"}, step=s.step)
        run.log(f"test (best checkpoint, step {s.best['step'] or s.step}): {run.task.describe(tst)}")
        if not run.task.per_label:
            warn_near_chance(run, tst["accuracy"], majority_rate(gold), "test")
    if "cv" in run.small and "test" not in result:
        cv_gold = run.train_ds.labels.tolist()
        warn_near_chance(run, run.small["cv"]["accuracy"], majority_rate(cv_gold), "cross-validated")
    if run.small:
        result["small_data"] = run.small
    result["fit_time_s"] = run.timer.fitted - start
    result["total_time_s"] = time.perf_counter() - start
    result["finished"] = True
    if run.main:
        write_results(run, result, decisions)
    # No process tears down the process group while another still writes its last files.
    accelerator.wait_for_everyone()
    finish_run(accelerator)
    return result


def warn_near_chance(run: Run, accuracy: float, majority: float, what: str) -> None:
    """One line when the run's accuracy is near the majority-class rate (bertcls.small_data)."""
    train = run.data.train
    targets = run.task.targets(train.labels, run.data.labels) if train is not None else []
    if is_soft(targets):  # distillation: the true labels ride in the last column, -1 where a row has none
        targets = [int(t) for t in targets[:, -1] if t >= 0]
    per_class = per_class_min(targets)
    line = near_chance_line(run.cfg, accuracy, majority, what, per_class)
    if line:
        run.small["near_chance"] = line
        run.log(line)


def save_models(run: Run) -> dict[str, dict[str, Any]]:
    """Save last/ and best/ (the last model when nothing chose a best one); returns each folder's decision state
    (multi-label thresholds), whichever model stays in memory."""
    s, model = run.state, run.model
    run.accelerator.wait_for_everyone()
    last = run.task.decision_state(model)
    decisions = {"last": last, "best": {k: s.best[k] for k in last if k in s.best} or last}
    if run.main:
        model.save_pretrained(run.out / "last")
        if s.best["step"] is None:  # no validation split: the last model is the one we keep
            model.save_pretrained(run.out / "best")
    if run.best_head:
        model.head.load_state_dict(run.best_head)
        run.task.load_decision_state(model, decisions["best"])
        if run.main:
            model.save_pretrained(run.out / "best")
    run.accelerator.wait_for_everyone()
    return decisions


def restore_best(run: Run, force: bool = False) -> None:
    """The model left in memory (and tested, or calibrated when ``force``) is the best one, as after early stopping
    in other tools."""
    s = run.state
    wanted = run.test_loader is not None or s.stopped or force
    needed = s.best["step"] is not None and s.best["step"] != s.step and wanted
    if not needed or run.best_head:  # (a cached run already holds its best head, loaded by save_models)
        return
    from safetensors.torch import load_file

    run.model.load_state_dict(load_file(run.out / "best" / "model.safetensors"))
    run.task.load_decision_state(run.model, s.best)
    run.log(
        f"restored the best checkpoint (step {s.best['step']}, validation {s.best['metric']} {s.best['value']:.4f})"
    )


def calibrate(run: Run, decisions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Temperature scaling of the best model on the validation split (``bertcls.calibration``), folded into its
    last layer and saved again as ``best/``; the task moves its decision rule with it (``Task.calibrate_decisions``).
    Fitted on the windows' probabilities when texts are read as windows, so T minimises the loss of what the saved
    model computes. Returns what ``metrics.json`` records under ``calibration`` (``bertcls.calibration.record``)."""
    from bertcls.calibration import fold_temperature, record

    task, model, ds = run.task, run.model, run.val_ds
    # With windows, ``rows`` are the windows' probabilities and ``gold`` is per text.
    rows, gold, doc_ids = window_predictions(run.module, run.val_loader, run.accelerator, ds, run.forward, task)
    temperature = task.fit_temperature(rows, gold, doc_ids)
    before = task.calibrated(rows, 1.0, doc_ids)  # (per text, as the model predicts now)
    after = task.calibrated(rows, temperature, doc_ids)
    thresholds = model.thresholds
    task.calibrate_decisions(model, temperature, gold, after, run.cfg.eval.threshold == "tune")
    run.state.best.update(task.decision_state(model))
    decisions["best"] = task.decision_state(model)
    fold_temperature(model, temperature)
    changed = ~task.same(task.decide(before, thresholds), task.decide(after, model.thresholds))
    report = record(
        temperature,
        "validation",
        task.calibration_scores(run.data.labels, gold, before, thresholds),
        task.calibration_scores(run.data.labels, gold, after, model.thresholds),
        changed.sum(),
    )
    run.log(task.describe_calibration(report))
    run.accelerator.wait_for_everyone()
    if run.main:
        model.save_pretrained(run.out / "best")
    run.accelerator.wait_for_everyone()
    return report


def write_results(run: Run, result: dict[str, Any], decisions: dict[str, dict[str, Any]]) -> None:
    from bertcls.card import run_card_info, write_model_card
    from bertcls.plots import plot_curves  # here, not at the top: matplotlib loads only when a run is done

    out = run.out
    # The cards of best/ and last/ were written when they were saved; only now are the final metrics known.
    for name in ("best", "last"):
        info = run_card_info(run.cfg, result, name)
        # each folder's own decision state (thresholds as a list), whichever model is in memory now
        info |= {k: list(v.values()) for k, v in decisions[name].items()}
        write_model_card(out / name, run.model, info)
    (out / "metrics.json").write_text(jsonio.dumps(result, indent=2))
    plot_curves(result, out / "curves.png", title=f"learning curves: {out}")
    where = f"checkpoints in {out}/best and {out}/last, metrics in {out}/metrics.json"
    run.log(f"done in {result['total_time_s']:.0f}s; {where}")


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
