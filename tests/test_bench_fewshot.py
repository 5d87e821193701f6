"""scripts/bench_fewshot.py and scripts/make_fewshot_data.py: the k-shot draw, the table, and a resumable bertcls run
on the tiny encoder (SetFit is not installed by the dev extra: its worker runs only in the bench itself)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import make_rows, write_csv

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_fewshot.py"


def import_scripts():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_fewshot
        import make_fewshot_data
    finally:
        sys.path.pop(0)
    return bench_fewshot, make_fewshot_data


def labels_of(path: Path) -> list[str]:
    return [r["label"] for r in csv.DictReader(path.open())]


def test_kshot_draws_k_per_label_seeded_and_refuses_a_short_class(tmp_path):
    _, data = import_scripts()
    folder = tmp_path / "toy"
    folder.mkdir()
    rows = [{"text": f"text {i}", "label": "a" if i % 3 else "b"} for i in range(60)]  # a: 40, b: 20
    write_csv(folder / "train.csv", rows)
    first = data.kshot(folder, 8, 0)
    assert Counter(labels_of(first)) == {"a": 8, "b": 8}
    again = first.read_text()
    first.unlink()
    assert data.kshot(folder, 8, 0).read_text() == again  # the same seed draws the same rows
    assert data.kshot(folder, 8, 1).read_text() != again
    with pytest.raises(ValueError, match="fewer than k=32"):
        data.kshot(folder, 32, 0)


def test_table_gives_mean_and_std_per_tool():
    bench, _ = import_scripts()
    runs = {
        f"rt|k8|seed{s}|{t}": {"dataset": "rt", "k": 8, "seed": s, "tool": t, "accuracy": a, "fit_s": f}
        for s, t, a, f in [(0, "bertcls", 0.6, 10), (1, "bertcls", 0.8, 20), (0, "setfit-20", 0.5, 30)]
    }
    text = bench.table({"runs": runs})
    assert "| rt | 8 | 0.700 ± 0.141 / 15 ± 7 (n=2) | 0.500 ± 0.000 / 30 ± 0 (n=1) |" in text
    assert "SetFit, num_iterations=20" in text


@pytest.mark.integration
def test_bertcls_variant_runs_records_and_resumes(tiny_bert, tmp_path):
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    write_csv(folder / "train.csv", make_rows(40, 0))
    write_csv(folder / "test.csv", make_rows(16, 1))
    results = tmp_path / "results.json"
    variant = f"tiny=model.name_or_path={tiny_bert} train.epochs=1"
    cmd = [sys.executable, str(SCRIPT), "--datasets", "toy", "--k", "4", "--seeds", "0", "--tools", "bertcls:tiny"]
    cmd += ["--bertcls-variant", variant, "--data", str(tmp_path / "data"), "--results", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(results.read_text())["runs"]["toy|k4|seed0|bertcls:tiny"]
    assert 0 <= run["accuracy"] <= 1 and run["fit_s"] > 0 and run["process_s"] >= run["fit_s"]
    assert Counter(labels_of(folder / "k4-seed0.csv")) == {"negative": 4, "positive": 4}
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "accuracy" not in again.stdout.split("| data set")[0]  # nothing ran again: the recorded run was kept
    assert json.loads(results.read_text())["runs"]["toy|k4|seed0|bertcls:tiny"] == run
    assert "| toy | 4 |" in again.stdout
