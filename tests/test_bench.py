"""scripts/bench.py runs end to end (on the tiny encoder, a small slice, fp32): both tools, the table, the JSON.
Its numbers are not checked here: speed is measured by running the script, never asserted in tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_bench_quick_runs_both_tools(tiny_bert, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--model", str(tiny_bert)]
    cmd += ["--precisions", "fp32", "--parts", "full,frozen", "--train-limit", "96", "--max-length", "64"]
    cmd += ["--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| bertcls  | fp32 | 1 |" in proc.stdout and "| trainer tuned | fp32 | 1 |" in proc.stdout
    assert "bertcls training" in proc.stdout and "frozen backbone" in proc.stdout
    result = json.loads(out.read_text())
    assert result["peak"]["fp32"] > 0 and result["flops_per_token"] > 0
    kinds = sorted((r["job"]["kind"], bool(r["job"].get("frozen"))) for r in result["runs"])
    assert kinds == [("bertcls", False), ("bertcls", True), ("trainer", False), ("trainer", True)]
    for r in result["runs"]:
        assert r["train_samples_per_s"] > 0 and r["peak_rss_mb"] > 0 and 0 <= r["test_accuracy"] <= 1
    full = [r for r in result["runs"] if not r["job"].get("frozen")]
    # the same training texts, so the same real tokens per pass; bertcls's padding is measured on its own batches
    assert full[0]["real_tokens"] == full[1]["real_tokens"] > 0
    assert all(0 <= r["padding_ratio"] < 1 for r in full)


def _run(kind, variant, precision, samples_per_s):
    job = {"kind": kind, "precision": precision, **({"variant": variant} if variant else {})}
    return {"job": job, "train_samples_per_s": samples_per_s}


def test_ratio_lines_put_each_tool_at_its_own_defaults():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    runs = [
        _run("bertcls", "", "fp32", 80.0),
        _run("bertcls", "", "bf16", 120.0),
        _run("trainer", "default", "fp32", 40.0),
        _run("trainer", "default", "bf16", 60.0),
    ]
    lines = bench.ratio_lines(runs, "bf16")
    # same precision: fp32 against fp32, bf16 against bf16
    assert "- fp32: bertcls training 2.00x the trainer default" in lines
    assert "- bf16: bertcls training 2.00x the trainer default" in lines
    # each at its defaults: bertcls's auto precision (bf16 here) against the Trainer's fp32
    assert "- defaults against defaults: bertcls (bf16) training 3.00x the trainer default (fp32)" in lines
    assert "- defaults against defaults: bertcls (fp32) training 2.00x the trainer default (fp32)" in bench.ratio_lines(
        runs, "fp32"
    )
    # nothing to compare when the default Trainer did not run
    assert not any("defaults against defaults" in x for x in bench.ratio_lines(runs[:2], "bf16"))


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for minutes")
def test_gpu_check_says_no_cuda_and_exits_3():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and proc.stdout.strip() == "no CUDA device", proc.stderr
