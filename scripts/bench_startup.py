"""Start-up of a one-text prediction, as whole processes: bertcls against the transformers pipeline (issue 28, 6).

    python scripts/bench_startup.py --checkpoint runs/x/best [--pairs 3] [--text "a gripping film"] [--baseline DIR]

From one bertcls checkpoint (a ``pooler`` head, which a plain Hugging Face export carries), the script writes its
``--format hf`` and ``--format onnx`` exports into a temporary folder, then times, in alternating rounds so that a
busy machine slows every tool alike:
  1. ``python -m bertcls.predict --checkpoint CKPT TEXT``
  2. ``python -c '...pipeline("text-classification", model=HF_EXPORT)(TEXT)'``: what a user would otherwise run
  3. ``python -m bertcls.predict --checkpoint ONNX_EXPORT TEXT``: the ONNX predictor (no PyTorch)
  4. with ``--baseline DIR``: (1) importing bertcls from DIR (another commit's tree), for a before/after
Each time is the wall clock of a fresh process, start to exit (interpreter start-up and imports included), with its
CPU time (user + system, threads included) beside it. Prints medians and bertcls / pipeline; target <= 1.0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = (
    "import sys\n"
    "from transformers import pipeline\n"
    "print(pipeline('text-classification', model=sys.argv[1])(sys.argv[2]))\n"
)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process run to its end; a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def export(checkpoint: str, fmt: str, out: Path, env: dict[str, str]) -> Path:
    cmd = [sys.executable, "-m", "bertcls.export", "--checkpoint", checkpoint, "--format", fmt, "--output", str(out)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a bertcls checkpoint with pooling 'pooler'")
    parser.add_argument("--pairs", type=int, default=3, help="alternating rounds (the median is reported)")
    parser.add_argument("--text", default="a gripping film")
    parser.add_argument("--baseline", help="another bertcls source tree (e.g. an older commit's) to time alongside")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as tmp:
        hf = export(args.checkpoint, "hf", Path(tmp) / "hf", env)
        onnx = export(args.checkpoint, "onnx", Path(tmp) / "onnx", env)
        tools = {
            "bertcls predict": [sys.executable, "-m", "bertcls.predict", "--checkpoint", args.checkpoint, args.text],
            "transformers pipeline (hf export)": [sys.executable, "-c", PIPELINE, str(hf), args.text],
            "bertcls predict (onnx export)": [
                sys.executable,
                "-m",
                "bertcls.predict",
                "--checkpoint",
                str(onnx),
                args.text,
            ],  # fmt: skip
        }
        if args.baseline:  # the same command on the other tree: its own PYTHONPATH, set by ``run`` below
            tools["bertcls predict (baseline)"] = tools["bertcls predict"]
        baseline_env = {**env, "PYTHONPATH": str(Path(args.baseline or ROOT).resolve())}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
        for i in range(args.pairs):
            for name, cmd in tools.items():
                times[name].append(timed(cmd, baseline_env if name.endswith("(baseline)") else env))
                print(f"round {i + 1} {name}: {times[name][-1][0]:.2f} s wall, {times[name][-1][1]:.2f} s CPU")
    median = {n: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for n, t in times.items()}
    print(f"\nmedian of {args.pairs} alternating rounds ({os.cpu_count()} cores):")
    print("| process | wall s | CPU s |")
    print("|---|---|---|")
    for name, (wall, cpu) in median.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    ours, peer = median["bertcls predict"], median["transformers pipeline (hf export)"]
    print(f"\nbertcls / pipeline: {ours[0] / peer[0]:.2f}x wall, {ours[1] / peer[1]:.2f}x CPU (target <= 1.0x)")


if __name__ == "__main__":
    main()
