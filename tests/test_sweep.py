"""python -m bertcls.sweep: Optuna trials over config keys, the best trial's checkpoint, resuming, failures."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("optuna")

from bertcls import BertclsError, BertForTextClassification  # noqa: E402
from bertcls.sweep import flat_space, run_sweep  # noqa: E402

from .conftest import assert_one_line_error, run_cli  # noqa: E402
from .test_train import tiny_overrides  # noqa: E402


def sweep_overrides(tiny_bert, tiny_data, out, *extra):
    frozen = ["model.freeze_backbone=true", "train.head_solver=adamw", "train.epochs=2", "eval.every_steps=4"]
    space = ["sweep.space.train.lr={low: 1e-4, high: 1e-1, log: true}", "sweep.space.model.head_init=[zeros,normal]"]
    return tiny_overrides(tiny_bert, tiny_data, out, *frozen, *space, f"train.cache_dir={out.parent / 'cache'}", *extra)


@pytest.fixture(scope="module")
def swept(tiny_bert, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    return out, run_sweep(None, sweep_overrides(tiny_bert, tiny_data, out), trials=5)


def test_sweep_writes_trials_and_the_winners_own_checkpoint(swept):
    out, summary = swept
    with (out / "trials.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and list(rows[0]) == ["trial", "state", "value", "duration_s", "train.lr", "model.head_init"]
    finished = [r for r in rows if r["state"] == "complete"]
    best = max(finished, key=lambda r: float(r["value"]))
    assert summary["best"]["trial"] == int(best["trial"])
    assert summary["best"]["value"] == pytest.approx(float(best["value"]))
    # best/ is that trial's best checkpoint, not the last trial's: its validation accuracy is the winning value.
    trial_metrics = json.loads((out / "trials" / f"trial-{best['trial']}" / "metrics.json").read_text())
    assert trial_metrics["best"]["value"] == pytest.approx(summary["best"]["value"])
    saved = BertForTextClassification.from_pretrained(out / "best")
    assert saved.spec.head_init == best["model.head_init"]
    assert json.loads((out / "sweep.json").read_text())["best"]["trial"] == summary["best"]["trial"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Only the winner keeps checkpoints; the frozen trials shared one feature pass (the cache).
    kept = [p.parent.name for p in (out / "trials").glob("trial-*/best")]
    assert kept == [f"trial-{best['trial']}"]
    metrics = [json.loads(p.read_text()) for p in (out / "trials").glob("*/metrics.json")]
    reused = [m["feature_cache"]["splits_reused"] for m in metrics]
    assert sorted(reused)[1:] == [3] * (len(reused) - 1)


def test_a_second_call_resumes_the_study(swept, tiny_bert, tiny_data):
    out, _ = swept
    summary = run_sweep(None, sweep_overrides(tiny_bert, tiny_data, out), trials=6)  # one more trial, not six
    assert sum(summary["trials"].values()) == 6


def test_bad_values_fail_the_trial_not_the_sweep(tiny_bert, tiny_data, tmp_path):
    # A dropout of 1.5 is refused by the config for that trial; the sweep records it as failed and goes on.
    out = tmp_path / "run"
    extra = ["sweep.space.model.dropout=[1.5]", "sweep.pruner=none"]
    summary = run_sweep(None, sweep_overrides(tiny_bert, tiny_data, out, *extra), trials=2)
    assert summary["trials"] == {"fail": 2} and summary["best"] is None
    with (out / "trials.csv").open(newline="") as f:
        assert [r["state"] for r in csv.DictReader(f)] == ["fail", "fail"]


def test_space_errors_are_one_line(tiny_bert, tiny_data, tmp_path):
    assert flat_space({"train": {"lr": {"low": 1, "high": 2}}, "model.pooling": ["cls"]}) == {
        "train.lr": {"low": 1, "high": 2}, "model.pooling": ["cls"]}  # fmt: skip
    with pytest.raises(BertclsError, match="sweep.space is empty"):
        run_sweep(None, tiny_overrides(tiny_bert, tiny_data, tmp_path / "a"))
    with pytest.raises(BertclsError, match="is not a range"):
        run_sweep(None, tiny_overrides(tiny_bert, tiny_data, tmp_path / "b", "sweep.space.train.lr={low: 1, high: 0}"))
    bad_key = tiny_overrides(tiny_bert, tiny_data, tmp_path / "c", "sweep.space.train.nope=[1,2]")
    proc = run_cli("bertcls.sweep", *bad_key)
    assert_one_line_error(proc, "unknown config key 'train.nope'")
