"""Time the offline default run end to end and report its test accuracy (issue: default under 5 min, >= 0.82).

    python scripts/measure_default.py [--runs 1] [extra key=value overrides ...]

Runs `python -m bertcls.train` in a subprocess exactly as a user would (start-up, data loading, training, validation,
final test evaluation all counted), into a temporary output folder, and prints wall time and test metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            cmd = [sys.executable, "-m", "bertcls.train", f"output.dir={out}", *args.overrides]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"run failed:\n{proc.stderr[-2000:]}")
            m = json.loads((out / "metrics.json").read_text())
            rows.append((wall, m))
            t = m["test"]
            print(
                f"run {i + 1}: wall {wall:.1f}s (train {m['train_time_s']:.1f}s, eval {m['eval_time_s']:.1f}s, "
                f"{m['train_examples_per_s']:.1f} train ex/s, precision {m['mixed_precision']}) | "
                f"test accuracy {t['accuracy']:.4f} macro_f1 {t['macro_f1']:.4f} | best step {m['best']['step']}"
            )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; command: "
        f"python -m bertcls.train {' '.join(args.overrides)}"
    )


if __name__ == "__main__":
    main()
