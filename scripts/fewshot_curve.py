"""Learning curve of each train.recipe: test accuracy against k examples per class (docs/fewshot.md).

For each k and seed, k rows per class are drawn (seeded) from a training CSV into a k-shot file; each recipe then
trains on it in a fresh process with the README's plain command plus ``train.recipe=R``
(``python -m bertcls.train data.train=k.csv data.test=test.csv train.recipe=R``) and is scored on the test CSV.
Writes one JSON line per run to ``--out`` as runs finish (a rerun skips the runs already there) and prints a table
of mean +- std per recipe and k.

    python scripts/fewshot_curve.py --k 8 16 64 --seeds 0 1 2 --recipes frozen contrastive finetune
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

DATA = Path("/work/shared/data/rotten_tomatoes")


def kshot(train_csv: Path, k: int, seed: int, out: Path) -> Path:
    """k rows per label, drawn with ``random.Random(seed)`` from the rows of each label in file order."""
    with train_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    rng = random.Random(seed)
    picked = [r for label in sorted(by_label) for r in rng.sample(by_label[label], k)]
    rng.shuffle(picked)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(picked)
    return out


def run_one(train_csv: Path, test_csv: Path, recipe: str, out_dir: Path, extra: list[str]) -> dict:
    cmd = [
        sys.executable, "-m", "bertcls.train", f"data.train={train_csv}", f"data.test={test_csv}",
        f"train.recipe={recipe}", f"output.dir={out_dir}", "output.overwrite=true", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "wall_s": wall}
    m = json.loads((out_dir / "metrics.json").read_text())
    return {
        "test_accuracy": m["test"]["accuracy"],
        "zero_shot_test_accuracy": m.get("zero_shot", {}).get("test", {}).get("accuracy"),
        "train_time_s": m["train_time_s"],
        "total_time_s": m["total_time_s"],
        "wall_s": wall,
        "recipe": m.get("recipe"),
    }


def table(results: list[dict]) -> str:
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in results:
        if "test_accuracy" in r:
            cells[(r["recipe_asked"], r["k"])].append(r["test_accuracy"])
    ks = sorted({k for _, k in cells})
    lines = ["| recipe | " + " | ".join(f"k={k}" for k in ks) + " |", "| --- |" + " --- |" * len(ks)]
    for recipe in dict.fromkeys(r for r, _ in cells):
        row = []
        for k in ks:
            v = cells.get((recipe, k), [])
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            row.append(f"{statistics.mean(v):.3f} ± {sd:.3f} (n={len(v)})" if v else "")
        lines.append(f"| {recipe} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, default=DATA / "train.csv")
    p.add_argument("--test", type=Path, default=DATA / "test.csv")
    p.add_argument("--k", type=int, nargs="+", default=[8, 16, 64])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=["frozen", "contrastive", "finetune"])
    p.add_argument("--out", type=Path, default=Path("results/fewshot_curve.jsonl"))
    p.add_argument("--extra", nargs="*", default=[], help="key=value overrides for every run")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    seen = {(r["recipe_asked"], r["k"], r["seed"]) for r in done if "test_accuracy" in r}
    work = Path(tempfile.mkdtemp(prefix="fewshot-curve-"))
    for k in args.k:
        for seed in args.seeds:
            shots = kshot(args.train, k, seed, work / f"k{k}-seed{seed}.csv")
            for recipe in args.recipes:
                if (recipe, k, seed) in seen:
                    continue
                r = {"recipe_asked": recipe, "k": k, "seed": seed}
                r |= run_one(shots, args.test, recipe, work / f"run-{recipe}-k{k}-s{seed}", args.extra)
                print(json.dumps(r), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                done.append(r)
    print(table(done))


if __name__ == "__main__":
    main()
