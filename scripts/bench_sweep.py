"""A frozen-backbone sweep against the same trials run one by one: ``python -m bertcls.sweep`` with N trials, then
N separate ``python -m bertcls.train`` commands with the values the sweep chose, each side from an empty feature
cache of its own.

    python scripts/bench_sweep.py --trials 20 --work /tmp/bench-sweep

Prints and writes ``bench_sweep.json`` in ``--work``: both wall times, the sweep's trial counts (finished, pruned)
and best validation accuracy, and the best of the separate runs. docs/sweep.md holds the measured numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--config", "configs/frozen.yaml", "train.head_solver=adamw", "train.epochs=3"]
SPACE = ["sweep.space.train.lr={low: 1e-4, high: 3e-2, log: true}", "sweep.space.model.dropout=[0.0,0.1,0.3]"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-sweep"))
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sweep_out = work / "sweep"
    cmd = [sys.executable, "-m", "bertcls.sweep", *COMMON[:2], "--trials", str(args.trials), *COMMON[2:], *SPACE]
    cmd += [f"output.dir={sweep_out}", "output.overwrite=true", f"train.cache_dir={work / 'cache-sweep'}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    sweep_wall = time.perf_counter() - start
    summary = json.loads((sweep_out / "sweep.json").read_text())
    with (sweep_out / "trials.csv").open(newline="") as f:
        trials = list(csv.DictReader(f))

    start, best = time.perf_counter(), None
    for t in trials:
        out = work / "runs" / f"trial-{t['trial']}"
        values = [f"train.lr={t['train.lr']}", f"model.dropout={t['model.dropout']}"]
        run = [sys.executable, "-m", "bertcls.train", *COMMON, *values, f"output.dir={out}", "output.overwrite=true"]
        subprocess.run([*run, f"train.cache_dir={work / 'cache-runs'}"], check=True, cwd=ROOT, capture_output=True)
        value = json.loads((out / "metrics.json").read_text())["best"]["value"]
        best = value if best is None else max(best, value)
    runs_wall = time.perf_counter() - start
    result = {
        "trials": args.trials,
        "sweep_wall_s": round(sweep_wall, 1),
        "separate_runs_wall_s": round(runs_wall, 1),
        "speedup": round(runs_wall / sweep_wall, 2),
        "sweep_trial_states": summary["trials"],
        "sweep_best_validation_accuracy": summary["best"]["value"],
        "separate_runs_best_validation_accuracy": best,
        "command": " ".join(cmd[1:]),
    }
    (work / "bench_sweep.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
