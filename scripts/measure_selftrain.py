"""Self-training at k labelled examples per class on Rotten Tomatoes (docs/fewshot.md, "Self-training").

For each seed: k rows per class drawn (seeded) from the training split, the whole training split's texts as
data.unlabeled (its labels are only used to report pseudo-label accuracy), the test split scored after every round.
By default the frozen MiniLM head (mean pooling, L-BFGS) trains each round; the features are cached, so after the
first pass over the unlabelled texts a seed takes seconds.

    python scripts/measure_selftrain.py --k 16 --seeds 0 1 2 3 4 --out /tmp/selftrain
    python scripts/measure_selftrain.py --plain --k 16 --out /tmp/selftrain-plain selftrain.rounds=2

``--plain`` runs the README's plain command's config instead of configs/frozen.yaml: ``train.recipe=auto``, which
picks contrastive tuning at these sizes, chosen once by the labelled rows and kept in every round.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from bertcls.config import load_config
from bertcls.selftrain import selftrain

DATA = Path("/work/shared/data/rotten_tomatoes")


def kshot_file(k: int, seed: int, out: Path) -> Path:
    """``k`` rows per label drawn without replacement from the training split, seeded, in a shuffled order."""
    with open(DATA / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    picked = []
    for label in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == label]
        picked += [mine[i] for i in rng.choice(len(mine), k, replace=False)]
    picked = [picked[i] for i in rng.permutation(len(picked))]
    path = out / f"k{k}-seed{seed}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(picked[0]))
        w.writeheader()
        w.writerows(picked)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="/tmp/selftrain")
    p.add_argument("--plain", action="store_true", help="the plain command config, not frozen.yaml")
    p.add_argument("overrides", nargs="*", help="more key=value config overrides (e.g. selftrain.rounds=4)")
    a = p.parse_args()
    out, table = Path(a.out), []
    for seed in a.seeds:
        train = kshot_file(a.k, seed, out)
        cfg = load_config(
            None if a.plain else "configs/frozen.yaml",
            [
                f"data.train={train}",
                "data.validation=null",
                f"data.test={DATA / 'test.csv'}",
                f"data.unlabeled={DATA / 'train.csv'}",
                f"output.dir={out / f'k{a.k}-seed{seed}'}",
                "output.overwrite=true",
                *a.overrides,
            ],
        )
        summary = selftrain(cfg)
        tests = [r["test"]["accuracy"] for r in summary["rounds"]]
        table.append(tests)
        print(f"k={a.k} seed {seed}: test accuracy by round {' '.join(f'{t:.4f}' for t in tests)}")
    acc = np.array(table)
    print(json.dumps({"k": a.k, "seeds": a.seeds, "test_by_round": table}))
    for r in range(acc.shape[1]):
        print(f"round {r}: test accuracy mean {acc[:, r].mean():.4f} +- {acc[:, r].std():.4f}")


if __name__ == "__main__":
    main()
