"""Measure the frozen-backbone feature cache against its targets (issue: cached frozen features).

    python scripts/bench_cache.py [--epochs 3] [extra key=value overrides ...]

1. Baseline: one forward pass of the backbone over the train and validation splits (tokenization included,
   length-sorted batches of 128, eval mode, the same mixed precision the run uses).
2. A frozen run of --epochs epochs on a cold (empty) cache: the backbone runs once per split, then head epochs.
3. The same run on the warm cache with another head initializer and seed: the backbone does not run.
Target: (2) <= 1.3 x (1), and (2) / (3) >= 10. Runs use no test split, so (1) and (2) cover the same texts.
Times are wall-clock of train(cfg) in this process (model loading included, interpreter start-up not).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from accelerate import Accelerator

from bertcls import BertForTextClassification, speed
from bertcls.cache import compute_features
from bertcls.config import load_config
from bertcls.train import load_data, resolve_mixed_precision, train


def forward_pass_seconds(cfg) -> float:
    precision = resolve_mixed_precision(cfg.train.mixed_precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    data = load_data(cfg)
    start = time.perf_counter()
    model = BertForTextClassification.from_pretrained(cfg.model.name_or_path, labels=data.labels)
    speed.apply(model)  # as a training run computes its features
    model.to(accelerator.device)
    for split in (data.train, data.validation):
        compute_features(model, split, cfg.data.max_length, accelerator, precision)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = [
            "model.freeze_backbone=true",
            "data.test=null",
            f"train.epochs={args.epochs}",
            "train.head_solver=adamw",  # epochs of head steps, as this benchmark has always timed
            "train.lr=3e-3",
            f"train.cache_dir={tmp}/cache",
            "output.overwrite=true",
            *args.overrides,
        ]
        cfg = load_config("configs/frozen.yaml", [*base, f"output.dir={tmp}/cold"])
        fwd = forward_pass_seconds(cfg)
        start = time.perf_counter()
        cold = train(cfg)
        t_cold = time.perf_counter() - start
        warm_cfg = load_config(
            "configs/frozen.yaml",
            [*base, f"output.dir={tmp}/warm", "model.head_init=kaiming_normal", "train.seed=7"],
        )
        start = time.perf_counter()
        warm = train(warm_cfg)
        t_warm = time.perf_counter() - start
    acc = lambda r: r["history"][-1]["validation"]["accuracy"]  # noqa: E731
    print(f"\nforward pass over train+validation : {fwd:7.1f} s")
    print(
        f"frozen {args.epochs:g}-epoch run, cold cache  : {t_cold:7.1f} s  ({t_cold / fwd:.2f}x the forward pass; "
        f"target <= 1.3x)  validation accuracy {acc(cold):.4f}"
    )
    print(
        f"same run, warm cache (new init/seed): {t_warm:7.1f} s  ({t_cold / t_warm:.1f}x faster than cold; "
        f"target >= 10x)  validation accuracy {acc(warm):.4f}  splits reused {warm['feature_cache']['splits_reused']}"
    )


if __name__ == "__main__":
    main()
