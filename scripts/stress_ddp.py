"""Run many 2-process training runs under torchrun and report the ones that hang or fail.

    python scripts/stress_ddp.py --runs 50                      # the packaged MiniLM on 300/51/201 RT rows
    python scripts/stress_ddp.py --runs 20 --model PATH --timeout 60

Each run is ``torchrun --nproc_per_node 2 -m bertcls.train ... train.max_steps=8 checkpoint.every_steps=3`` with a
new ``train.seed``. A run still alive after ``--timeout`` seconds counts as a hang: every process of it is dumped
with ``py-spy dump --native`` (when installed) into ``<out>/hang-<i>.txt`` before it and its workers are killed, so the
report says where each process waited. Exits 1 if any run hung or failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RT = ROOT / "bertcls" / "resources" / "rotten_tomatoes"


def write_rows(src: Path, dst: Path, n: int) -> Path:
    with gzip.open(src, "rt", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    with dst.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dst


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it: torchrun starts its workers in sessions of their own, so killing the
    agent's process group would leave them running."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(k) for k in kids]
    return found


def dump_stacks(pids: list[int]) -> str:
    """py-spy stacks (Python and native frames) of each process, when py-spy is installed."""
    spy, parts = shutil.which("py-spy"), []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200].decode(errors="replace")
        except OSError:
            continue
        parts.append(f"==== pid {pid}: {cmdline}")
        if spy:
            r = subprocess.run([spy, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
            parts.append(r.stdout + r.stderr)
    return "\n".join(parts)


def kill_tree(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_tree(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int | None, str, str, str]:
    """Run ``cmd`` (a launcher and its workers) from the project root with one thread per process. Returns (exit
    code, stdout, stderr, stacks); past ``timeout`` the exit code is None, the stacks are every process's (taken
    before the whole tree is killed), else they are empty."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err, ""
    except subprocess.TimeoutExpired:
        pids = descendants(proc.pid)
        stacks = dump_stacks(pids)
        kill_tree(pids)
        out, err = proc.communicate()
        return None, out, err, stacks


def run_once(i: int, data: Path, args, out: Path) -> tuple[str, float, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "bertcls.train", f"data.train={data / 'tr.csv'}", f"data.validation={data / 'va.csv'}"]
    cmd += [f"data.test={data / 'te.csv'}", "train.max_steps=8", "train.batch_size=8", "checkpoint.every_steps=3"]
    cmd += [f"train.seed={args.seed0 + i}", f"output.dir={out / f'run-{i}'}", f"model.name_or_path={args.model}"]
    start = time.perf_counter()
    code, stdout, stderr, stacks = run_tree(cmd, args.timeout)
    elapsed = time.perf_counter() - start
    status = "hang" if code is None else "ok" if code == 0 else f"failed (exit {code})"
    log = stdout + stderr
    if code is None:
        (out / f"hang-{i}.txt").write_text(stacks)
    if status != "ok":
        (out / f"log-{i}.txt").write_text(log)
    shutil.rmtree(out / f"run-{i}", ignore_errors=True)
    return status, elapsed, log


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--timeout", type=float, default=120, help="seconds before a run counts as hung")
    p.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    p.add_argument("--seed0", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for hang dumps and failed logs (default: a temporary one)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="stress_ddp-"))
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    data.mkdir(exist_ok=True)
    for name, src, n in (("tr", "train", 300), ("va", "validation", 51), ("te", "test", 201)):
        write_rows(RT / f"{src}.csv.gz", data / f"{name}.csv", n)
    counts: dict[str, int] = {}
    times = []
    for i in range(args.runs):
        status, elapsed, _ = run_once(i, data, args, out)
        counts[status] = counts.get(status, 0) + 1
        times.append(elapsed)
        print(f"run {i + 1}/{args.runs}: {status} in {elapsed:.1f}s", flush=True)
    bad = args.runs - counts.get("ok", 0)
    print(
        f"{args.runs} runs: {counts.get('ok', 0)} ok, {counts.get('hang', 0)} hung, "
        f"{bad - counts.get('hang', 0)} failed; median {sorted(times)[len(times) // 2]:.1f}s, max {max(times):.1f}s;"
        f" dumps and logs in {out}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
