"""python -m bertcls.sweep: Optuna trials over config keys, the best trial's checkpoint, resuming, failures."""

from __future__ import annotations

import csv
import json
from unittest import mock

import pytest

pytest.importorskip("optuna")

from bertcls import BertclsError, BertForTextClassification  # noqa: E402
from bertcls.sweep import flat_space, main, run_sweep  # noqa: E402

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
    head = ["trial", "state", "value", "duration_s", "train.lr", "model.head_init", "error"]
    assert len(rows) == 5 and list(rows[0]) == head
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


def test_a_refused_value_is_one_line_before_any_trial(tiny_bert, tiny_data, tmp_path, capsys):
    # pooling max does not exist: said before the first trial, which never runs (no output folder).
    out = tmp_path / "run"
    args = sweep_overrides(tiny_bert, tiny_data, out, "sweep.space.model.pooling=[cls,max]")
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "sweep.space.model.pooling: the value 'max' is refused: unknown pooling 'max'" in err
    assert not out.exists()


def test_failed_trials_are_one_line_each_and_the_sweep_exits_non_zero(tiny_bert, tiny_data, tmp_path, capsys):
    def fail(cfg, on_validation=None):
        raise BertclsError("the trial's data was bad")

    out = tmp_path / "run"
    args = sweep_overrides(tiny_bert, tiny_data, out, "sweep.pruner=none", "--trials", "2")
    with mock.patch("bertcls.train.train", fail), pytest.raises(SystemExit) as stop:
        main(args)
    printed = capsys.readouterr()
    assert stop.value.code == 2 and "Traceback" not in printed.out + printed.err
    assert printed.out.count("failed: BertclsError: the trial's data was bad") == 2
    assert printed.err.strip() == (
        f"error: 2 of 2 trials failed (their errors are in {out / 'trials.csv'} and each trial's train.log); the "
        "results of the others are written"
    )
    with (out / "trials.csv").open(newline="") as f:
        assert [(r["state"], r["error"]) for r in csv.DictReader(f)] == [
            ("fail", "BertclsError: the trial's data was bad")
        ] * 2


def test_a_value_set_is_never_trained_twice(tiny_bert, tiny_data, tmp_path, capsys):
    trained = []

    def fake(cfg, on_validation=None):
        trained.append(cfg.model.head_init)
        return {"best": {"value": 0.5}}

    out = tmp_path / "run"
    space = ["sweep.space.model.head_init=[zeros,normal]", "sweep.pruner=none"]
    with mock.patch("bertcls.train.train", fake):
        summary = run_sweep(None, tiny_overrides(tiny_bert, tiny_data, out, *space), trials=6)
    # Two value sets: both trained once, and the study stops there instead of drawing them again.
    assert sorted(trained) == ["normal", "zeros"] and sum(summary["trials"].values()) == 2


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
