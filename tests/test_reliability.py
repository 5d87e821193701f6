"""Resume after a kill, SIGTERM, non-finite losses, bad input, pickles that must never run, and determinism."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertcls import BertclsError, BertForTextClassification
from bertcls.checkpoint import CHECKPOINTS, TrainingStopped, list_checkpoints, prune, resolve_resume
from bertcls.config import load_config
from bertcls.train import load_data, train

from .conftest import assert_one_line_error, make_rows, run_cli, write_csv
from .test_train import ROOT, tiny_cfg, tiny_overrides

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
TIMING = ("train_examples_per_s", "train_time_s", "eval_time_s", "eval_examples_per_s", "fit_time_s", "total_time_s")


def cli_args(tiny_bert, tiny_data, out: Path, *extra: str) -> list[str]:
    run = ("train.epochs=3", "eval.batch_size=40", "eval.every_steps=6", "checkpoint.every_steps=4")
    return [sys.executable, "-m", "bertcls.train", *tiny_overrides(tiny_bert, tiny_data, out, *run, *extra)]


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, after: int = 0, timeout: float = 240) -> int:
    """Block until ``out`` holds a complete checkpoint newer than step ``after``; returns its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list_checkpoints(out)
        step = int(found[-1].name.split("-")[1]) if found else 0
        if step > after:
            return step
        assert proc.poll() is None, f"the run ended before a checkpoint: {proc.stderr.read()[-2000:]}"
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def numbers(metrics_path: Path) -> dict:
    """A run's results without its timings and without how many splits it found in the caches (which depends on
    what ran before it in the same cache, not on the run)."""
    metrics = json.loads(metrics_path.read_text())
    for cache in ("token_cache", "feature_cache"):
        metrics.get(cache, {}).pop("splits_reused", None)
    return {k: v for k, v in metrics.items() if k not in TIMING}


@pytest.mark.integration
def test_sigterm_then_sigkill_then_resume_matches_an_uninterrupted_run(tiny_bert, tiny_data, tmp_path):
    # 12 steps per epoch, 36 in all: a checkpoint every 4 steps, an evaluation every 6 and at each epoch's end.
    ref = tmp_path / "ref"
    done = subprocess.run(cli_args(tiny_bert, tiny_data, ref), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "run"
    # 1. SIGTERM: a checkpoint at the step it arrived, and a one-line message with the command that resumes.
    proc = subprocess.Popen(cli_args(tiny_bert, tiny_data, out), env=ENV, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by signal") and "resume with: python -m bertcls.train" in last
    assert last.endswith("train.resume_from=latest") and f"output.dir={out}" in last
    assert "Traceback" not in err and not (out / "metrics.json").exists()
    stopped_at = int(list_checkpoints(out)[-1].name.split("-")[1])

    # 2. resume, then SIGKILL once it has written a newer checkpoint: no chance to clean up.
    resume = cli_args(tiny_bert, tiny_data, out, "train.resume_from=latest")
    proc = subprocess.Popen(resume, env=ENV, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(proc, out, after=stopped_at)
    proc.kill()
    proc.wait(timeout=60)
    assert not (out / "metrics.json").exists(), "the run finished before it was killed"
    # A half-written checkpoint is a hidden temporary folder, never a step-N one that `latest` would pick.
    assert all((p / "state.json").is_file() for p in (out / CHECKPOINTS).glob("step-*"))
    assert len(list_checkpoints(out)) <= 2 + 1  # keep_last=2, plus possibly the best one

    # 3. resume to the end: the same numbers as the run that was never interrupted.
    done = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_numbers(numbers(out / "metrics.json"), numbers(ref / "metrics.json"))


def assert_same_numbers(got: dict, want: dict) -> None:
    """A resumed run's metrics.json against an uninterrupted run's (timings left out): equal, floats within 1e-5."""
    assert got.keys() == want.keys()
    close = {"history", "test", "train_loss_curve", "best", "linear_probe"}  # float results, within float tolerance
    assert {k: v for k, v in got.items() if k not in close} == {k: v for k, v in want.items() if k not in close}
    assert got["best"]["step"] == want["best"]["step"]
    assert got["best"]["value"] == pytest.approx(want["best"]["value"], rel=1e-5)
    assert [h["step"] for h in got["history"]] == [h["step"] for h in want["history"]]
    for a, b in zip(got["history"], want["history"], strict=True):
        assert a["validation"] == pytest.approx(b["validation"], rel=1e-5, abs=1e-6)
    assert got["test"] == pytest.approx(want["test"], rel=1e-5, abs=1e-6)
    assert [s for s, _ in got["train_loss_curve"]] == [s for s, _ in want["train_loss_curve"]]
    assert [x for _, x in got["train_loss_curve"]] == pytest.approx([x for _, x in want["train_loss_curve"]], rel=1e-5)
    if "linear_probe" in want:  # lp_ft: the probe phase, rerun on resume, must come out the same
        a, b = got["linear_probe"], want["linear_probe"]
        assert (a["best"]["metric"], a["best"]["step"]) == (b["best"]["metric"], b["best"]["step"])
        assert a["best"]["value"] == pytest.approx(b["best"]["value"], rel=1e-5)
        assert a["test"] == pytest.approx(b["test"], rel=1e-5, abs=1e-6)
        assert len(a["history"]) == len(b["history"])
        for x, y in zip(a["history"], b["history"], strict=True):
            assert x["step"] == y["step"] and x["validation"] == pytest.approx(y["validation"], rel=1e-5, abs=1e-6)


class Killed(Exception):
    """What SIGKILL leaves of a run: it ends right after a checkpoint, with nothing cleaned up."""


def kill_and_resume_matches(tiny_bert, tiny_data, tmp_path, monkeypatch, *extra: str) -> dict:
    """The test above for a variant of the run, in this process (each run a subprocess would cost 4 starts of torch):
    SIGTERM sent to this process right after checkpoint 8 (handled as the command handles it), the run cut short
    right after checkpoint 20 (all that SIGKILL leaves), resumed to the end: the numbers of the run that was never
    interrupted (36 steps; a checkpoint every 4, an evaluation every 6 and at each epoch's end). The checkpoints come
    too quickly to catch from outside (a cached head-only step takes about a millisecond)."""
    import bertcls.run as recipe  # the one-run recipe, whose checkpoint writes this test interrupts

    extra = (*extra, f"train.cache_dir={tmp_path / 'cache'}")
    ref, out = tmp_path / "ref", tmp_path / "run"

    def cfg(where: Path, *more: str):
        return load_config(None, cli_args(tiny_bert, tiny_data, where, *extra, *more)[3:])

    train(cfg(ref))
    save = recipe.save_checkpoint

    def interrupting(accelerator, where, state, *args, **kwargs):
        path = save(accelerator, where, state, *args, **kwargs)
        if Path(where) == out and state["step"] == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        if Path(where) == out and state["step"] == 20:
            raise Killed
        return path

    monkeypatch.setattr(recipe, "save_checkpoint", interrupting)
    with pytest.raises(TrainingStopped, match=r"^stopped by signal 15 at step 8; .*train\.resume_from=latest$"):
        train(cfg(out))
    assert [p.name for p in list_checkpoints(out)] == ["step-4", "step-8"]
    assert not (out / "metrics.json").exists()
    with pytest.raises(Killed):
        train(cfg(out, "train.resume_from=latest"))
    assert "resumed at step 8" in (out / "train.log").read_text()
    assert list_checkpoints(out)[-1].name == "step-20" and not (out / "metrics.json").exists()
    train(cfg(out, "train.resume_from=latest"))
    assert "resumed at step 20" in (out / "train.log").read_text()
    got, want = numbers(out / "metrics.json"), numbers(ref / "metrics.json")
    assert_same_numbers(got, want)
    return got


@pytest.mark.integration
def test_kill_and_resume_of_a_cached_head_only_run_matches_an_uninterrupted_run(
    tiny_bert, tiny_data, tmp_path, monkeypatch
):
    # The head trains in epochs on cached features (AdamW: an L-BFGS fit has no steps to resume); its dropout draws
    # from the restored RNG (a high rate and lr, so that other masks show), and the best head so far travels in the
    # checkpoint.
    head_only = ("model.freeze_backbone=true", "train.head_solver=adamw", "train.lr=1e-2", "model.dropout=0.5")
    got = kill_and_resume_matches(tiny_bert, tiny_data, tmp_path, monkeypatch, *head_only)
    assert got["feature_cache"]["used"]


@pytest.mark.integration
def test_kill_and_resume_of_an_lp_ft_run_matches_an_uninterrupted_run(tiny_bert, tiny_data, tmp_path, monkeypatch):
    # The probe phase is rerun on resume (it writes no checkpoints); the fine-tuning phase resumes.
    lp_ft = ("train.schedule=lp_ft", "train.lp_epochs=1")
    got = kill_and_resume_matches(tiny_bert, tiny_data, tmp_path, monkeypatch, *lp_ft)
    assert got["schedule"] == "lp_ft" and got["linear_probe"]["best"]["step"] is not None


def test_checkpoints_are_pruned_but_never_the_best(tmp_path):
    root = tmp_path / CHECKPOINTS
    for step in (2, 4, 6, 8):
        (root / f"step-{step}").mkdir(parents=True)
        (root / f"step-{step}" / "state.json").write_text("{}")
    (root / ".tmp-step-10").mkdir()  # a write cut short: never counted, never picked
    (root / "step-12").mkdir()  # no state.json: incomplete
    prune(tmp_path, keep_last=2, protect_step=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2", "step-6", "step-8"]
    assert resolve_resume("latest", tmp_path).name == "step-8"
    with pytest.raises(BertclsError, match="not a complete checkpoint"):
        resolve_resume(str(root / "step-12"), tmp_path)
    with pytest.raises(BertclsError, match="no complete checkpoint"):
        resolve_resume("latest", tmp_path / "elsewhere")


def test_output_dir_with_checkpoints_is_kept_unless_resumed(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    (out / CHECKPOINTS / "step-4").mkdir(parents=True)
    (out / CHECKPOINTS / "step-4" / "state.json").write_text("{}")
    with pytest.raises(BertclsError, match="train.resume_from=latest"):
        train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=1"))
    assert (out / CHECKPOINTS / "step-4" / "state.json").exists()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(BertclsError, match="finished run"):
        train(tiny_cfg(tiny_bert, tiny_data, out, "train.resume_from=latest"))


def test_nan_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.lr=1e30", "train.head_lr=1e30", "checkpoint.every_steps=1")
    with pytest.raises(TrainingStopped, match=r"loss became (nan|inf) at step \d+ .*lower train\.lr") as e:
        train(cfg)  # (warmup: step 1 runs at lr 0, a later one blows the weights up)
    assert "\n" not in str(e.value) and "mixed_precision=no" in str(e.value)
    bad_step = int(str(e.value).split(" at step ")[1].split()[0])
    kept = [int(p.name.split("-")[1]) for p in list_checkpoints(out)]
    assert kept and max(kept) == bad_step - 1  # written before the bad step, not overwritten by it
    assert not (out / "best").exists() and not (out / "metrics.json").exists()


def test_nan_policy_skip_skips_and_counts(tiny_bert, tiny_data, tmp_path, monkeypatch):
    import bertcls.losses as losses_module

    real = losses_module.build_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss_fn = real(*args, **kwargs)

        def wrapped(logits, labels):
            calls["n"] += 1
            loss = loss_fn(logits, labels)
            return loss * float("nan") if calls["n"] in (3, 7) else loss

        return wrapped

    monkeypatch.setattr(losses_module, "build_loss", poisoned)
    out = tmp_path / "run"
    result = train(tiny_cfg(tiny_bert, tiny_data, out, "train.epochs=1", "train.nan_policy=skip"))
    assert result["nan_skipped_steps"] == 2
    assert json.loads((out / "metrics.json").read_text())["nan_skipped_steps"] == 2
    assert all(math.isfinite(loss) for _, loss in result["train_loss_curve"])
    best = BertForTextClassification.from_pretrained(out / "best")
    assert all(torch.isfinite(p).all() for p in best.parameters())


def test_bad_training_data_gives_one_line_errors(tiny_bert, tiny_data, tmp_path):
    good = make_rows(8, 1)
    cases = {
        "mixed.jsonl": ('{"text": "a b", "label": 1}\n{"text": "c d", "label": "positive"}\n', "mix|type"),
        "single.csv": ("text,label\na b,positive\nc d,positive\n", "same label"),
        "blank.csv": ("text,label\n   ,positive\n,negative\nfine,positive\n", "empty or whitespace"),
        "nolabel.csv": ("text,label\na,positive\nb,\n", "no label"),
        "spelled.csv": ("texts,label\na,positive\nb,negative\n", r"did you mean 'texts'"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        extra = ["data.empty_texts=error"] if name == "blank.csv" else []
        cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "out", f"data.train={path}", "data.validation=null", *extra)
        with pytest.raises(BertclsError, match=match) as e:
            load_data(cfg)
        assert "\n" not in str(e.value), name
    # non-UTF-8 bytes: an error naming the file, or read with replacement characters, never a crash
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text,label\ncaf\xe9 good,positive\nbad,negative\n")
    try:
        data = load_data(tiny_cfg(tiny_bert, tiny_data, tmp_path / "out", f"data.train={latin}", "data.test=null"))
        assert len(data.train.texts) == 2
    except BertclsError as e:
        assert "latin.csv" in str(e) and "\n" not in str(e)
    # empty texts are skipped (and counted) by default
    blank = write_csv(tmp_path / "b.csv", [*good, {"text": "  ", "label": "positive", "other": ""}])
    logged: list[str] = []
    data = load_data(tiny_cfg(tiny_bert, tiny_data, tmp_path / "out", f"data.train={blank}"), logged.append)
    assert len(data.train) == 8 and "1 of 9 text(s) are empty" in logged[0]
    assert not (tmp_path / "out").exists()


def test_output_folder_that_cannot_be_written(tiny_bert, tiny_data, tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(BertclsError, match="cannot write to output.dir|is a file"):
        train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "afile" / "run", "train.max_steps=1"))
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_megabyte_text_is_truncated_not_a_crash(tiny_model):
    out = tiny_model.predict(["good " * 200_000, ""])
    assert len(out) == 2 and all(0.0 <= o["score"] <= 1.0 for o in out)


# ---------------------------------------------------------------- security


class Evil:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_pickles_never_run(tiny_bert, tiny_data, tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=3", "checkpoint.every_steps=2"))
    # next to valid safetensors, a pickle is ignored
    torch.save(Evil(marker), out / "best" / "pytorch_model.bin")
    BertForTextClassification.from_pretrained(out / "best").predict(["good film"])
    # as the only weights of a folder, it is refused
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "config.json").write_text((tiny_bert / "config.json").read_text())
    torch.save(Evil(marker), lone / "pytorch_model.bin")
    with pytest.raises(BertclsError):
        BertForTextClassification.from_pretrained(lone, labels=["a", "b"])
    # inside a resumable checkpoint: the optimizer state, and a pickled model next to the safetensors one
    ck = out / CHECKPOINTS / "step-2"
    torch.save(Evil(marker), ck / "pytorch_model.bin")
    torch.save(Evil(marker), ck / "optimizer.bin")
    (out / "metrics.json").unlink()
    with pytest.raises(BertclsError, match="cannot resume"):
        train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=3", "train.resume_from=latest"))
    assert not marker.exists()


@pytest.fixture(scope="module")
def resumable(tiny_bert, tiny_data, tmp_path_factory) -> Path:
    """An interrupted run's folder: checkpoints at steps 2 and 4, no metrics.json (copy it before damaging it)."""
    out = tmp_path_factory.mktemp("resumable") / "run"
    train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=5", "checkpoint.every_steps=2"))
    (out / "metrics.json").unlink()
    return out


def damaged_copy(resumable: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(resumable, out)
    return out, out / CHECKPOINTS / "step-4" / "random_states_0.pkl"


@pytest.mark.integration
def test_a_missing_rng_state_is_a_one_line_error(tiny_bert, tiny_data, resumable, tmp_path):
    # accelerate's load_state logs "Could not load random states" at info level and goes on: the resumed run
    # would draw other dropout masks than the run it continues, silently.
    out, rng = damaged_copy(resumable, tmp_path)
    rng.unlink()
    proc = run_cli(
        "bertcls.train", *tiny_overrides(tiny_bert, tiny_data, out, "train.max_steps=5"), "train.resume_from=latest"
    )
    assert_one_line_error(proc, f"cannot resume from {out / CHECKPOINTS / 'step-4'}: random_states_0.pkl")
    assert "is missing" in proc.stderr and "train.resume_from=<folder>" in proc.stderr
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_keys", "wrong_size", "pickle"])
def test_a_damaged_rng_state_is_an_error_naming_the_file(tiny_bert, tiny_data, resumable, tmp_path, damage):
    out, rng = damaged_copy(resumable, tmp_path)
    marker = tmp_path / "pwned"
    if damage == "truncated":
        rng.write_bytes(rng.read_bytes()[:100])
    elif damage == "garbage":
        rng.write_bytes(b"not a torch file")
    elif damage == "other_keys":
        torch.save({"step": 0, "torch_manual_seed": torch.get_rng_state()}, rng)
    elif damage == "wrong_size":  # reads fine, but torch.set_rng_state refuses it (inside load_state, swallowed)
        states = torch.load(rng, weights_only=False)
        torch.save({**states, "torch_manual_seed": torch.zeros(7, dtype=torch.uint8)}, rng)
    else:
        torch.save(Evil(marker), rng)
    with pytest.raises(BertclsError, match=r"cannot resume from .*step-4: .*random_states_0\.pkl") as e:
        train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=5", "train.resume_from=latest"))
    assert "\n" not in str(e.value) and "train.resume_from" in str(e.value)
    assert not marker.exists() and not (out / "metrics.json").exists()


def test_an_intact_checkpoint_restores_every_rng(resumable):
    import random

    import numpy as np
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from bertcls.checkpoint import load_checkpoint, read_rng_state

    ck = resumable / CHECKPOINTS / "step-4"
    saved = read_rng_state(ck, 0)
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(BertForTextClassification.from_pretrained(resumable / "last"))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # states other than the saved ones
    state, _ = load_checkpoint(accelerator, ck)
    assert state["step"] == 4
    assert random.getstate() == saved["random_state"]
    assert torch.equal(torch.get_rng_state(), saved["torch_manual_seed"])
    assert np.array_equal(np.random.get_state()[1], saved["numpy_random_seed"][1])


def test_no_trust_remote_code_anywhere():
    needle = "trust_remote_code" + "=True"
    hits = [
        str(p)
        for folder in ("bertcls", "scripts", "examples", "configs")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and p.suffix in (".py", ".yaml", ".ipynb", ".md") and "trust_remote_code" in p.read_text()
    ]
    assert hits == [], hits
    assert all(needle not in p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


# ---------------------------------------------------------------- determinism


def test_same_config_and_seed_write_identical_metrics(tiny_bert, tiny_data, tmp_path):
    for name in ("a", "b"):
        train(tiny_cfg(tiny_bert, tiny_data, tmp_path / name, "train.max_steps=6", "eval.every_steps=3"))
    assert numbers(tmp_path / "a" / "metrics.json") == numbers(tmp_path / "b" / "metrics.json")
