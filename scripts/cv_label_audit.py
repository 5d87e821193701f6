"""How well ``python -m bertcls.cv`` finds wrong labels: flip a share of a real training set's labels (seeded), run
cross-validation on the flipped file, and score ``label_issues.csv`` against the rows that were flipped.

    python scripts/cv_label_audit.py --config configs/frozen.yaml                  # frozen MiniLM, L-BFGS head
    python scripts/cv_label_audit.py --work /tmp/audit-full train.epochs=1.5       # full fine-tuning per fold

Prints and writes ``audit.json`` in ``--work``: the flipped count, cv's estimate, precision and recall of the first
N listed rows (N = the number flipped) and of the whole list, the out-of-fold accuracy against the given (flipped)
and the original labels, and the wall time. docs/cv.md holds the measured numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bertcls.label_issues import ranked_precision_recall

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN = ROOT.parent / "shared" / "data" / "rotten_tomatoes" / "train.csv"


def flip_labels(source: Path, target: Path, share: float, seed: int) -> tuple[list[int], list[str]]:
    """Write ``source`` with ``share`` of its labels changed to another label (seeded); returns the flipped rows
    (0-based) and the original labels."""
    with source.open(newline="") as f:
        rows = list(csv.DictReader(f))
    labels = sorted({r["label"] for r in rows})
    rng = np.random.default_rng(seed)
    flipped = sorted(rng.choice(len(rows), size=round(share * len(rows)), replace=False).tolist())
    original = [r["label"] for r in rows]
    for i in flipped:
        others = [label for label in labels if label != rows[i]["label"]]
        rows[i]["label"] = others[rng.integers(len(others))]
    with target.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return flipped, original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=DEFAULT_TRAIN)
    ap.add_argument("--share", type=float, default=0.1, help="share of labels flipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bertcls-cv-audit"))
    ap.add_argument("--config", default=None)
    ap.add_argument("overrides", nargs="*", help="key=value overrides for python -m bertcls.cv")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    noisy = args.work / "train_flipped.csv"
    flipped, original = flip_labels(args.train, noisy, args.share, args.seed)
    out = args.work / "cv"
    cmd = [sys.executable, "-m", "bertcls.cv", *(["--config", args.config] if args.config else [])]
    cmd += [f"data.train={noisy}", f"output.dir={out}", "output.overwrite=true", *args.overrides]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    with (out / "label_issues.csv").open(newline="") as f:
        listed = [int(r["row"]) for r in csv.DictReader(f)]
    with (out / "oof_predictions.csv").open(newline="") as f:
        oof = list(csv.DictReader(f))
    at_n = ranked_precision_recall(listed, flipped)
    everything = ranked_precision_recall(listed, flipped, at=len(listed))
    metrics = json.loads((out / "metrics.json").read_text())
    result = {
        "rows": len(original),
        "flipped": len(flipped),
        "estimated": metrics["label_issues"]["estimated"],
        "listed": len(listed),
        "precision_at_n": at_n["precision"],
        "recall_at_n": at_n["recall"],
        "precision_all_listed": everything["precision"],
        "recall_all_listed": everything["recall"],
        "oof_accuracy_given_labels": float(np.mean([r["predicted"] == r["label"] for r in oof])),
        "oof_accuracy_original_labels": float(np.mean([r["predicted"] == original[int(r["row"])] for r in oof])),
        "fold_mean": metrics["mean"],
        "wall_s": round(wall, 1),
        "command": " ".join(cmd[1:]),
    }
    (args.work / "audit.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
