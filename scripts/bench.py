"""bertcls against the Hugging Face Trainer, side by side on the same model, data and hyperparameters.

    python scripts/bench.py                     # the full comparison on this machine (about 45 min on 2 CPU cores)
    python scripts/bench.py --quick             # a smoke run of every part on small slices (a few minutes)
    python scripts/bench.py --device cuda --model random:bert-base   # on a GPU, bert-base-sized random weights

Every measurement runs in its own fresh Python process (so peak resident memory is that run's alone), and the tools
alternate within one invocation (bertcls, Trainer, Trainer, bertcls, ...) so drift of the machine hits both alike.
The parts:

- full fine-tuning, for each precision (fp32 and, where the hardware has it, bf16) and each seed: bertcls with its
  defaults against the *tuned* Trainer (``train_sampling_strategy="group_by_length"``, same precision); training
  samples/s, real tokens/s, padding ratio, evaluation samples/s, peak RSS, test accuracy of the last model;
- the *default* Trainer (random batches) and the classic loop that pads every text to max_length (the floor),
  for a fixed number of steps: throughput only;
- frozen backbone, 3 epochs at the head's learning rate: bertcls (feature cache, cold) against the tuned Trainer
  with the backbone's ``requires_grad`` off: wall time of training plus evaluation;
- scaling: bertcls on 1x, 2x and 4x a slice of the training data: time per example and peak memory;
- unpadded (``--parts unpadded``, not in the default set): bertcls with ``train.unpadded=true`` against its padded
  default, one seed per precision (the option is meant for GPUs);
- a matmul peak measured here, to turn throughput into model FLOPs utilization (MFU, on real tokens).

Hyperparameters shared by every run: batch 32, max length 128, lr 1e-4 (bertcls's separate head rate is switched
off so both tools train with one rate), linear schedule, 6% warmup, weight decay 0.01, clipping at 1.0, 1.5 epochs.
Results: a table on stdout and every number in ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bertcls.speed import allocator  # no torch: the parent stays light

HERE = Path(__file__).resolve()
MINILM = "packaged:all-MiniLM-L6-v2"
DATA = Path(__file__).resolve().parents[1] / "bertcls" / "resources" / "rotten_tomatoes"
SHARED = {"batch_size": 32, "max_length": 128, "lr": 1e-4, "warmup": 0.06, "weight_decay": 0.01, "epochs": 1.5}
FROZEN_LR, FROZEN_EPOCHS = 3e-3, 3.0


# ------------------------------------------------------------------ shared helpers (run inside the workers)


def peak_gpu_mb() -> float | None:
    """The most GPU memory torch's allocator held at once in this process (None without CUDA)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the high-water mark of this process alone.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_folder(name: str) -> str:
    from bertcls.resources import is_packaged, packaged_model_dir

    return str(packaged_model_dir(name)) if is_packaged(name) else name


def read_split(path: str) -> tuple[list[str], list[str]]:
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def flops_per_token(folder: str, mean_len: float) -> float:
    """Forward FLOPs per real token: 2 per weight of every matmul, plus attention scores and their use of values
    (4 * hidden * sequence length per layer). Embedding lookups do no multiply-adds and are left out."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(folder)
    h, i, n = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    per_layer = 2 * (4 * h * h + 2 * h * i) + 4 * h * mean_len
    return n * per_layer


def padding_stats(batches) -> dict[str, float]:
    real = padded = 0
    for b in batches:
        mask = b["attention_mask"]
        real += int(mask.sum())
        padded += mask.numel()
    return {"real_tokens": real, "padding_ratio": 1 - real / padded}


# ------------------------------------------------------------------ workers


def work_peak(job: dict[str, Any]) -> dict[str, Any]:
    """The best matmul rate this machine reaches (FLOP/s) in fp32 and bf16 at a size large enough to be bound by
    arithmetic, with torch's default threads."""
    import torch

    device = torch.device(job["device"])
    out = {}
    n = 4096 if device.type == "cuda" else 1536
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best = float("inf")
        for _ in range(6):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(3 if device.type == "cpu" else 20):
                a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t) / (3 if device.type == "cpu" else 20))
        out[name] = 2 * n**3 / best
    out["threads"] = torch.get_num_threads()
    return out


def work_bertcls(job: dict[str, Any]) -> dict[str, Any]:
    """One bertcls run through its public entry point (the same ``train()`` the command line calls)."""
    import torch

    from bertcls.config import load_config
    from bertcls.data import TextClassificationDataset, load_split
    from bertcls.evaluate import evaluate_checkpoint
    from bertcls.train import make_train_loader, train

    tmp = Path(job["tmp"])
    overrides = [
        f"model.name_or_path={job['model']}",
        f"data.train={job['train']}",
        f"data.validation={job['validation']}",
        f"data.test={job['test']}",
        f"output.dir={tmp / 'run'}",
        f"train.mixed_precision={job['precision'].replace('fp32', 'no')}",
        f"train.seed={job['seed']}",
        f"train.batch_size={SHARED['batch_size']}",
        f"data.max_length={SHARED['max_length']}",
        f"train.lr={job.get('lr', SHARED['lr'])}",
        "train.head_lr=null",
        f"train.warmup_ratio={SHARED['warmup']}",
        f"train.weight_decay={SHARED['weight_decay']}",
        f"train.epochs={job['epochs']}",
        f"train.max_steps={job.get('max_steps', -1)}",
        f"train.cache_dir={tmp / 'cache'}",
        f"model.freeze_backbone={job.get('frozen', False)}",
        "train.head_solver=adamw",  # the same epochs of head steps as the Trainer runs (not an L-BFGS fit)
        f"train.unpadded={job.get('variant') == 'unpadded'}",
        *job.get("overrides", []),
    ]
    cfg = load_config(None, overrides)
    start = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - start
    rss = peak_rss_mb()  # before the extra work below, which is only bookkeeping for this table
    result = {
        "wall_s": wall,
        "train_time_s": metrics["train_time_s"],
        "train_samples_per_s": metrics["train_examples_per_s"],
        # The validation passes made during training, prediction alone (as the Trainer's predict() is timed).
        "eval_samples_per_s": metrics["eval_examples_per_s"],
        "peak_rss_mb": rss,
        "peak_gpu_mb": peak_gpu_mb(),
        "allocator": allocator.name(),
        "precision": metrics["mixed_precision"],
        "threads": torch.get_num_threads(),
    }
    if job.get("frozen"):
        result["test_accuracy"] = metrics["test"]["accuracy"]
        return result
    # The last model's test accuracy (the Trainer reports its last model too; bertcls's metrics.json has the best).
    test = load_split(job["test"], "text", "label")
    result["test_accuracy"] = evaluate_checkpoint(tmp / "run" / "last", test, device=job["device"]).metrics["accuracy"]
    # Padding and real tokens of one pass of the training loader, exactly as train() batches.
    data = load_split(job["train"], "text", "label")
    ds = TextClassificationDataset(data.texts, data.labels, cfg_tokenizer(tmp), SHARED["max_length"])
    # (an unpadded run's batches are the same texts: counted padded, then it computes none of that padding)
    stats = padding_stats(make_train_loader(ds, replace(cfg, train=replace(cfg.train, unpadded=False)), pin=False))
    result |= stats | ({"padding_ratio": 0.0} if cfg.train.unpadded else {})
    result["mean_len"] = stats["real_tokens"] / len(ds)
    result["tokens_per_s"] = result["train_samples_per_s"] * result["mean_len"]
    return result


def cfg_tokenizer(tmp: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tmp / "run" / "last")


def work_trainer(job: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face Trainer with AutoModelForSequenceClassification, as its documentation sets it up."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    folder = model_folder(job["model"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    train_texts, train_labels = read_split(job["train"])
    names = sorted(set(train_labels))

    def dataset(path: str) -> Dataset:
        texts, labels = read_split(path)
        ds = Dataset.from_dict({"text": texts, "label": [names.index(x) for x in labels]})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=SHARED["max_length"]), batched=True)

    start = time.perf_counter()
    train_ds, val_ds, test_ds = dataset(job["train"]), dataset(job["validation"]), dataset(job["test"])
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(names))
    if job.get("frozen"):
        for p in model.base_model.parameters():
            p.requires_grad = False
    tuned = job["variant"] == "tuned"
    args = TrainingArguments(
        output_dir=str(Path(job["tmp"]) / "trainer"),
        per_device_train_batch_size=SHARED["batch_size"],
        per_device_eval_batch_size=job.get("eval_batch_size", 8),
        learning_rate=job.get("lr", SHARED["lr"]),
        weight_decay=SHARED["weight_decay"],
        warmup_steps=SHARED["warmup"],
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        num_train_epochs=job["epochs"],
        max_steps=job.get("max_steps", -1),
        seed=job["seed"],
        bf16=job["precision"] == "bf16",
        use_cpu=job["device"] == "cpu",
        train_sampling_strategy="group_by_length" if tuned else "random",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds.remove_columns("text"),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    t = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - t
    samples = trainer.state.global_step * SHARED["batch_size"]
    if job.get("max_steps", -1) < 0:  # whole epochs: the last batch of each pass is short
        samples = round(len(train_ds) * job["epochs"])
    evaluated = 0
    t = time.perf_counter()
    for ds in (val_ds, test_ds):
        out = trainer.predict(ds.remove_columns("text"))
        evaluated += len(ds)
    eval_time = time.perf_counter() - t
    # With group_by_length the Trainer also *evaluates* in a length-grouped random order (transformers 5.24,
    # Trainer._get_eval_sampler) and returns predictions in that order: put the labels in the same order.
    sampler = trainer._get_eval_sampler(test_ds.remove_columns("text"))
    order = list(sampler) if sampler is not None else list(range(len(test_ds)))
    gold = np.array(test_ds["label"])[order]
    accuracy = float((np.argmax(out.predictions, -1) == gold).mean())
    rss = peak_rss_mb()
    stats = padding_stats(trainer.get_train_dataloader())
    mean_len = float(np.mean([len(x) for x in train_ds["input_ids"]]))
    return {
        "wall_s": time.perf_counter() - start,
        "train_time_s": train_time,
        "train_samples_per_s": samples / train_time,
        "eval_samples_per_s": evaluated / eval_time,
        "peak_rss_mb": rss,
        "peak_gpu_mb": peak_gpu_mb(),
        "allocator": allocator.name(),
        "test_accuracy": accuracy,
        "optimizer": type(trainer.optimizer).__name__ + ("(fused)" if trainer.optimizer.defaults.get("fused") else ""),
        "threads": torch.get_num_threads(),
        **stats,
        "mean_len": mean_len,
        "tokens_per_s": samples / train_time * mean_len,
    }


def work_floor(job: dict[str, Any]) -> dict[str, Any]:
    """The classic loop of many tutorials: every text padded to max_length, random batches, torch AdamW."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(job["seed"])
    device = torch.device(job["device"])
    folder = model_folder(job["model"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts, labels = read_split(job["train"])
    names = sorted(set(labels))
    enc = tokenizer(texts, truncation=True, padding="max_length", max_length=SHARED["max_length"], return_tensors="pt")
    y = torch.tensor([names.index(x) for x in labels])
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(names)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=SHARED["lr"], weight_decay=SHARED["weight_decay"])
    steps = job["max_steps"]
    sched = get_linear_schedule_with_warmup(opt, int(SHARED["warmup"] * steps), steps)
    order = torch.randperm(len(y))
    bs = SHARED["batch_size"]
    model.train()
    real = 0
    t = time.perf_counter()
    for step in range(steps):
        idx = order[(step * bs) % len(y) :][:bs]
        batch = {k: v[idx].to(device) for k, v in enc.items()}
        real += int(batch["attention_mask"].sum())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=job["precision"] == "bf16"):
            loss = model(**batch, labels=y[idx].to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_time = time.perf_counter() - t
    return {
        "train_time_s": train_time,
        "train_samples_per_s": steps * bs / train_time,
        "tokens_per_s": real / train_time,
        "padding_ratio": 1 - real / (steps * bs * SHARED["max_length"]),
        "mean_len": real / (steps * bs),
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_mb(),
        "threads": torch.get_num_threads(),
    }


WORKERS = {"peak": work_peak, "bertcls": work_bertcls, "trainer": work_trainer, "floor": work_floor}


# ------------------------------------------------------------------ the orchestrating parent


def run_worker(job: dict[str, Any], log) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bertcls-bench-") as tmp:
        job = {**job, "tmp": tmp}
        out = Path(tmp) / "result.json"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if job["kind"] == "bertcls":  # as `python -m bertcls.train` runs: under jemalloc when the machine has it
            env = allocator.preload_env(env) or env
        cmd = [sys.executable, str(HERE), "--worker", json.dumps(job), "--worker-out", str(out)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"bench: the {job['kind']} run failed ({' '.join(cmd[-3:-2])}):\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - t
    shown = {k: job[k] for k in ("kind", "variant", "precision", "seed", "frozen", "scale") if k in job}
    log(f"  {shown}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return {"job": {k: v for k, v in job.items() if k != "tmp"}, **result}


def write_train_slice(src: Path, dest: Path, n: int | None, seed: int = 0) -> str:
    """The training split, or a random slice of ``n`` rows of it, as a plain CSV both tools read."""
    with gzip.open(src, "rt") as f:
        rows = list(csv.DictReader(f))
    if n is not None:
        rows = random.Random(seed).sample(rows, n)
    with dest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return str(dest)


def random_bert_base(dest: Path) -> str:
    """A randomly initialized bert-base-sized encoder (12 layers, 768 wide) with MiniLM's uncased vocabulary."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    AutoTokenizer.from_pretrained(model_folder(MINILM)).save_pretrained(dest)
    BertModel(BertConfig()).save_pretrained(dest)
    return str(dest)


def bf16_available(device: str) -> bool:
    from bertcls.train import resolve_mixed_precision

    return device == "cuda" or resolve_mixed_precision("auto") == "bf16"


def mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4g}"
    return f"{statistics.mean(xs):.4g} ± {statistics.stdev(xs):.2g}"


def summarize(runs: list[dict[str, Any]], peak: dict[str, float], fpt: float) -> str:
    """The markdown table: one row per (tool, setting, precision), means over seeds, and bertcls's ratios."""

    def key(r):
        j = r["job"]
        return (j["kind"], j.get("variant", ""), j["precision"], bool(j.get("frozen")), j.get("scale"))

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    lines = [
        "| run | precision | seeds | train samples/s | real tokens/s | padding | eval samples/s | peak RSS MB "
        "| peak GPU MB | test acc | MFU train |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (kind, variant, prec, frozen, scale), rs in groups.items():
        if frozen or scale:
            continue

        def col(name, fmt="{:.1f}", rs=rs):
            xs = [r[name] for r in rs if r.get(name) is not None]
            if not xs:
                return "-"
            return mean_std(xs) if len(xs) > 1 and name == "test_accuracy" else fmt.format(statistics.mean(xs))

        tps = statistics.mean(r["tokens_per_s"] for r in rs)
        # training does forward + backward: 3x the forward FLOPs
        mfu = 3 * fpt * tps / peak[prec]
        lines.append(
            f"| {kind} {variant} | {prec} | {len(rs)} | {col('train_samples_per_s')} | {col('tokens_per_s', '{:.0f}')}"
            f" | {col('padding_ratio', '{:.1%}')} | {col('eval_samples_per_s')} | {col('peak_rss_mb', '{:.0f}')}"
            f" | {col('peak_gpu_mb', '{:.0f}')} | {col('test_accuracy', '{:.4f}')} | {mfu:.1%} |"
        )
    return "\n".join(lines)


def ratio_lines(runs: list[dict[str, Any]], default_precision: str = "fp32") -> list[str]:
    """The ratios the issue's targets are stated in. ``default_precision``: what bertcls's ``mixed_precision: auto``
    picks on this machine, for the line that puts each tool at its own defaults."""

    def pick(kind, variant, prec, field, frozen=False):
        xs = [
            r[field]
            for r in runs
            if r["job"]["kind"] == kind
            and r["job"].get("variant", "") == variant
            and r["job"]["precision"] == prec
            and bool(r["job"].get("frozen")) == frozen
            and not r["job"].get("scale")
            and r.get(field) is not None
        ]
        return statistics.mean(xs) if xs else None

    out = []
    for prec in ("fp32", "bf16"):
        ours = pick("bertcls", "", prec, "train_samples_per_s")
        if ours is None:
            continue
        for other, variant in (("trainer", "tuned"), ("trainer", "default"), ("floor", "")):
            theirs = pick(other, variant, prec, "train_samples_per_s")
            if theirs:
                out.append(f"- {prec}: bertcls training {ours / theirs:.2f}x the {other} {variant}".rstrip())
        unpadded = pick("bertcls", "unpadded", prec, "train_samples_per_s")
        if unpadded:
            out.append(f"- {prec}: bertcls unpadded training {unpadded / ours:.2f}x bertcls padded (its default)")
        ev_ours = pick("bertcls", "", prec, "eval_samples_per_s")
        ev_theirs = pick("trainer", "tuned", prec, "eval_samples_per_s")
        if ev_ours and ev_theirs:
            out.append(f"- {prec}: bertcls evaluation {ev_ours / ev_theirs:.2f}x the tuned Trainer's predict")
        m_ours, m_theirs = pick("bertcls", "", prec, "peak_rss_mb"), pick("trainer", "tuned", prec, "peak_rss_mb")
        if m_ours and m_theirs:
            out.append(f"- {prec}: peak RSS bertcls {m_ours:.0f} MB vs tuned Trainer {m_theirs:.0f} MB")
    # What a user gets without touching a knob: bertcls's defaults (its precision `auto`) against the Trainer's
    # (random batches, fp32: bf16=False is its default).
    ours, theirs = (
        pick("bertcls", "", default_precision, "train_samples_per_s"),
        pick("trainer", "default", "fp32", "train_samples_per_s"),
    )
    if ours and theirs:
        out.append(
            f"- defaults against defaults: bertcls ({default_precision}) training {ours / theirs:.2f}x the trainer "
            "default (fp32)"
        )
    for prec in ("fp32", "bf16"):
        f_ours = pick("bertcls", "", prec, "wall_s", frozen=True)
        f_theirs = pick("trainer", "tuned", prec, "wall_s", frozen=True)
        if f_ours and f_theirs:
            out.append(
                f"- frozen backbone, {FROZEN_EPOCHS:g} epochs ({prec}): bertcls {f_ours:.1f}s, tuned Trainer "
                f"{f_theirs:.1f}s: {f_theirs / f_ours:.2f}x faster"
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MINILM, help="folder, hub name, packaged:..., or random:bert-base")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--precisions", default="auto", help="comma list of fp32,bf16 (auto: both where bf16 is native)")
    p.add_argument("--parts", default="full,baselines,frozen,scaling", help="comma list of the parts to run")
    p.add_argument("--baseline-steps", type=int, default=40, help="steps of the default Trainer and the floor loop")
    p.add_argument("--scale-base", type=int, default=1024, help="training examples of the 1x scaling run")
    p.add_argument("--train-limit", type=int, default=None, help="use a random slice of the training split")
    p.add_argument("--epochs", type=float, default=SHARED["epochs"])
    # The Trainer's own default is 8; 32 was its fastest here (bf16 predict on validation: 8: 213, 32: 231,
    # 64: 201, 128: 198 samples/s), as its batches are in data order and padded to their longest text.
    p.add_argument("--trainer-eval-batch", type=int, default=32, help="the tuned Trainer's eval batch size")
    p.add_argument("--max-length", type=int, default=SHARED["max_length"], help="tokens per text (both tools)")
    p.add_argument("--quick", action="store_true", help="small slices, one seed: checks that every part runs")
    p.add_argument("--out", default=None, help="write every number here as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        job = json.loads(args.worker)
        SHARED["max_length"] = job["max_length"]
        Path(args.worker_out).write_text(json.dumps(WORKERS[job["kind"]](job)))
        return

    if args.quick:
        args.seeds, args.train_limit, args.epochs = 1, args.train_limit or 256, min(args.epochs, 1.0)
        args.baseline_steps, args.scale_base = min(args.baseline_steps, 4), min(args.scale_base, 64)
    parts = set(args.parts.split(","))
    if args.precisions == "auto":
        precisions = ["fp32", "bf16"] if bf16_available(args.device) else ["fp32"]
    else:
        precisions = args.precisions.split(",")
    log = print
    runs: list[dict[str, Any]] = []
    peak: dict[str, Any] = {}

    def keep(result: dict[str, Any]) -> None:
        """Record a finished run, and write what is known so far to --out: a bench stopped by a time limit (as
        scripts/gpu_check.sh sets) keeps the runs it finished (MFU needs the end's flops_per_token)."""
        runs.append(result)
        if args.out:
            Path(args.out).write_text(json.dumps({"peak": peak, "flops_per_token": None, "runs": runs}, indent=2))

    with tempfile.TemporaryDirectory(prefix="bertcls-bench-data-") as tmp:
        tmp = Path(tmp)
        model = random_bert_base(tmp / "bert-base") if args.model == "random:bert-base" else args.model
        train = write_train_slice(DATA / "train.csv.gz", tmp / "train.csv", args.train_limit)
        val, test = str(DATA / "validation.csv.gz"), str(DATA / "test.csv.gz")
        common = {"model": model, "device": args.device, "train": train, "validation": val, "test": test}
        common["max_length"] = args.max_length
        log(f"bench: {model} on {args.device}, precisions {precisions}, {args.seeds} seed(s), parts {sorted(parts)}")
        peak.update(run_worker({**common, "kind": "peak", "precision": "fp32"}, log))

        if "full" in parts:
            log("full fine-tuning: bertcls defaults against the tuned Trainer, alternating")
            for seed in range(args.seeds):
                for i, prec in enumerate(precisions):
                    pair = [
                        {"kind": "bertcls"},
                        {"kind": "trainer", "variant": "tuned", "eval_batch_size": args.trainer_eval_batch},
                    ]
                    run = {"precision": prec, "seed": seed, "epochs": args.epochs}
                    for extra in pair if (seed + i) % 2 == 0 else pair[::-1]:
                        keep(run_worker({**common, **extra, **run}, log))
        if "unpadded" in parts:
            log("unpadded batches (train.unpadded=true) against bertcls's padded default (the full part's run)")
            for prec in precisions:
                run = {"precision": prec, "seed": 0, "epochs": args.epochs}
                keep(run_worker({**common, "kind": "bertcls", "variant": "unpadded", **run}, log))
                if "full" not in parts:
                    keep(run_worker({**common, "kind": "bertcls", **run}, log))
        if "baselines" in parts:
            log(f"baselines, {args.baseline_steps} steps: the default Trainer and the pad-to-max_length loop")
            for prec in precisions:
                steps = {"seed": 0, "epochs": args.epochs, "max_steps": args.baseline_steps, "precision": prec}
                keep(run_worker({**common, **steps, "kind": "trainer", "variant": "default"}, log))
                keep(run_worker({**common, **steps, "kind": "floor"}, log))
        if "frozen" in parts:
            prec = precisions[-1]
            log(f"frozen backbone, {FROZEN_EPOCHS:g} epochs at lr {FROZEN_LR:g} ({prec}), cold feature cache")
            frozen = {"frozen": True, "lr": FROZEN_LR, "epochs": FROZEN_EPOCHS, "seed": 0, "precision": prec}
            keep(run_worker({**common, **frozen, "kind": "bertcls"}, log))
            keep(
                run_worker(
                    {
                        **common,
                        **frozen,
                        "kind": "trainer",
                        "variant": "tuned",
                        "eval_batch_size": args.trainer_eval_batch,
                    },
                    log,
                )
            )
        if "scaling" in parts:
            prec = precisions[-1]
            log(f"scaling: bertcls on {args.scale_base}, 2x and 4x training examples, 1 epoch ({prec})")
            for scale in (1, 2, 4):
                sliced = write_train_slice(DATA / "train.csv.gz", tmp / f"train-{scale}x.csv", args.scale_base * scale)
                job = {**common, "train": sliced, "kind": "bertcls", "precision": prec, "seed": 0, "epochs": 1.0}
                keep(run_worker({**job, "scale": scale}, log))

        lens = [r["mean_len"] for r in runs if r.get("mean_len") and r["job"]["kind"] != "floor"]
        fpt = flops_per_token(model_folder(model), statistics.mean(lens) if lens else 25.0)

    log("")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {peak['threads']}"
    log(f"machine: {machine}; matmul peak fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
    log(summarize(runs, peak, fpt))
    for line in ratio_lines(runs, "bf16" if bf16_available(args.device) else "fp32"):
        log(line)
    scaled = [r for r in runs if r["job"].get("scale")]
    if scaled:
        base = scaled[0]
        for r in scaled:
            log(
                f"- scaling {r['job']['scale']}x: training {r['train_time_s']:.1f}s "
                f"({r['train_time_s'] / base['train_time_s'] / r['job']['scale']:.2f} of linear), "
                f"peak RSS {r['peak_rss_mb']:.0f} MB"
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"peak": peak, "flops_per_token": fpt, "runs": runs}, indent=2))
        log(f"every number: {args.out}")


if __name__ == "__main__":
    main()
