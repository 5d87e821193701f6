"""The initializer study: head initializers x {frozen, full fine-tuning} x seeds, through the normal train(cfg).

    python scripts/compare_inits.py --out results/inits                       # the default grid
    python scripts/compare_inits.py --modes frozen --seeds 5 --heads linear mlp
    python scripts/compare_inits.py --full-max-steps 200 data.train=my.csv data.test=my_test.csv

Frozen runs go through the feature cache (the backbone runs once per split for the whole grid); full fine-tuning
runs get a budget of --full-max-steps optimizer steps. For each initializer, mode and head it reports test accuracy
and macro F1 (mean +- std over seeds), the validation loss at step 0 against ln(number of classes), the std of the
initial logits on the validation split, the steps needed to reach 95% of the final validation accuracy, and wall
time. Writes results.csv (one row per run), summary.csv, summary.md and curves.png into --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bertcls import BertForTextClassification, speed
from bertcls.cache import load_or_compute
from bertcls.config import load_config
from bertcls.data import label_ids
from bertcls.train import load_data, resolve_mixed_precision, train

DEFAULT_INITS = {
    "xavier_uniform": "xavier_uniform",
    "xavier_normal": "xavier_normal",
    "kaiming_normal": {"name": "kaiming_normal", "nonlinearity": "relu"},
    "orthogonal": "orthogonal",
    "normal(0.02)": {"name": "normal", "std": 0.02},
    "zeros": "zeros",
    "sparse(0.1)": {"name": "sparse", "sparsity": 0.1, "std": 0.01},
}
HEADS = {"linear": [], "mlp": [256]}  # mlp: one hidden layer, where symmetry (zeros) and ReLU gains matter


def initial_stats(cfg, spec, seed: int, hidden: list[int]) -> tuple[float, float]:
    """Validation loss and logit std of the freshly initialized head (the same for frozen and full: step 0)."""
    from accelerate import Accelerator

    precision = resolve_mixed_precision(cfg.train.mixed_precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # precision goes to the cache explicitly
    data = load_data(cfg)
    model = BertForTextClassification.from_pretrained(
        cfg.model.name_or_path,
        labels=data.labels,
        head_init=spec,
        seed=seed,
        hidden_sizes=hidden,
        activation="relu" if hidden else "gelu",
        pooling=cfg.model.pooling,
        max_length=cfg.data.max_length,
    )
    speed.apply(model)  # the features as a training run computes them
    cache_dir = Path(cfg.train.cache_dir)
    feats, _ = load_or_compute(model, data.validation, cfg.data.max_length, precision, accelerator, cache_dir)
    y = torch.tensor(label_ids(data.validation.labels, data.labels))
    with torch.no_grad():
        logits = model.head.eval()(feats)
    return torch.nn.functional.cross_entropy(logits, y).item(), logits.std().item()


def steps_to_95(history: list[dict]) -> int | None:
    final = history[-1]["validation"]["accuracy"]
    for h in history:
        if h["validation"]["accuracy"] >= 0.95 * final:
            return h["step"]
    return None


def mean_std(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def plot(rows: list[dict], histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = sorted({(r["mode"], r["head"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (mode, head) in zip(axes[0], panels):
        for init in dict.fromkeys(r["init"] for r in rows):
            runs = [histories[k] for k in histories if k[:3] == (mode, head, init)]
            if not runs:
                continue
            steps = [h["step"] for h in runs[0]]
            accs = np.array([[h["validation"]["accuracy"] for h in run][: len(steps)] for run in runs])
            mean, sd = accs.mean(0), accs.std(0)
            (line,) = ax.plot(steps, mean, label=init, linewidth=1.6)
            ax.fill_between(steps, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
        what = "frozen backbone" if mode == "frozen" else "full fine-tuning"
        ax.set_title(f"{what}, {head} head (mean ± std over seeds)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/inits", help="folder for results.csv, summary.md, curves.png")
    parser.add_argument("--inits", nargs="*", default=list(DEFAULT_INITS), help=f"from {list(DEFAULT_INITS)}")
    parser.add_argument("--modes", nargs="*", default=["frozen", "full"], choices=["frozen", "full"])
    parser.add_argument("--heads", nargs="*", default=["linear", "mlp"], choices=list(HEADS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--full-seeds", type=int, default=None, help="seeds for full fine-tuning (default --seeds)")
    parser.add_argument("--full-heads", nargs="*", default=["linear"], choices=list(HEADS))
    parser.add_argument("--frozen-epochs", type=float, default=3)
    parser.add_argument("--full-max-steps", type=int, default=150, help="the full fine-tuning budget, in steps")
    parser.add_argument("--frozen-eval-every", type=int, default=25)
    parser.add_argument("--full-eval-every", type=int, default=25)
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: a folder inside --out)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. data.train=my.csv")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or str(out / ".feature_cache")
    rows: list[dict] = []
    histories: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            heads = args.heads if mode == "frozen" else args.full_heads
            seeds = args.seeds if mode == "frozen" or args.full_seeds is None else args.full_seeds
            for head in heads:
                for init in args.inits:
                    for seed in range(seeds):
                        spec = DEFAULT_INITS[init]
                        run_overrides = [
                            f"model.head_init={json.dumps(spec)}",
                            f"model.hidden_sizes={json.dumps(HEADS[head])}",
                            f"model.activation={'relu' if HEADS[head] else 'gelu'}",
                            f"train.seed={seed}",
                            f"train.cache_dir={cache_dir}",
                            f"output.dir={tmp}/{mode}-{head}-{init}-{seed}",
                            *args.overrides,
                        ]
                        if mode == "frozen":
                            run_overrides += [
                                # epochs of AdamW from each initializer (L-BFGS would reach the same optimum from any)
                                "train.head_solver=adamw",
                                "train.lr=3e-3",
                                f"train.epochs={args.frozen_epochs}",
                                f"eval.every_steps={args.frozen_eval_every}",
                            ]
                            cfg = load_config("configs/frozen.yaml", run_overrides)
                        else:
                            run_overrides += [
                                f"train.max_steps={args.full_max_steps}",
                                f"eval.every_steps={args.full_eval_every}",
                            ]
                            cfg = load_config("configs/default.yaml", run_overrides)
                        loss0, std0 = initial_stats(cfg, spec, seed, HEADS[head])
                        start = time.perf_counter()
                        result = train(cfg)
                        wall = time.perf_counter() - start
                        histories[(mode, head, init, seed)] = result["history"]
                        row = {
                            "mode": mode,
                            "head": head,
                            "init": init,
                            "seed": seed,
                            "test_accuracy": result["test"]["accuracy"],
                            "test_macro_f1": result["test"]["macro_f1"],
                            "val_accuracy": result["history"][-1]["validation"]["accuracy"],
                            "loss_step0": loss0,
                            "logits_std_step0": std0,
                            "steps_to_95pct": steps_to_95(result["history"]),
                            "wall_s": wall,
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    num_classes = len(result["labels"])
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = []
    for key in dict.fromkeys((r["mode"], r["head"], r["init"]) for r in rows):
        group = [r for r in rows if (r["mode"], r["head"], r["init"]) == key]
        summary.append(
            {
                "mode": key[0],
                "head": key[1],
                "init": key[2],
                "seeds": len(group),
                "test_accuracy": mean_std([r["test_accuracy"] for r in group]),
                "test_macro_f1": mean_std([r["test_macro_f1"] for r in group]),
                "loss_step0": mean_std([r["loss_step0"] for r in group]),
                "logits_std_step0": mean_std([r["logits_std_step0"] for r in group]),
                "steps_to_95pct": mean_std([r["steps_to_95pct"] for r in group], 0),
                "wall_s": mean_std([r["wall_s"] for r in group], 1),
            }
        )
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    lines = [
        f"ln(number of classes) = ln({num_classes}) = {math.log(num_classes):.4f}: the loss a head that knows "
        "nothing should start at.\n",
        "| " + " | ".join(summary[0]) + " |",
        "|" + "---|" * len(summary[0]),
    ]
    lines += ["| " + " | ".join(str(v) for v in s.values()) + " |" for s in summary]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(rows, histories, out / "curves.png")
    print("\n".join(lines))
    print(f"\nwrote {out}/results.csv, summary.csv, summary.md, curves.png")


if __name__ == "__main__":
    main()
