"""What a new user meets on the command line (issue 28, section 3): one-line errors that say what to do, nothing
written for a run that fails on bad input, labels cleaned one way, finite metrics, and messages that point the
right way. Each runs the command's ``main`` in-process, as the user's command line would."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bertcls.cv import audit, format_summary
from bertcls.cv import main as cv_main
from bertcls.data import Split, load_split, split_validation
from bertcls.evaluate import main as evaluate_main
from bertcls.export import main as export_main
from bertcls.jsonio import dumps
from bertcls.metrics import binary_log_loss, log_loss, multilabel_metrics
from bertcls.multilabel import sigmoid
from bertcls.predict import main as predict_main
from bertcls.tasks import get_task
from bertcls.train import main as train_main

from .conftest import make_rows, write_csv
from .test_train import tiny_overrides


def run(main, args: list[str], capsys) -> tuple[int, str, str]:
    """``main(args)`` as the command line runs it: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and expected in err, err


def own_data(tmp_path: Path, rows: list[dict], name: str = "mine.csv") -> Path:
    """A user's file with other columns: ``review`` and ``tag``."""
    renamed = [{"review": r["text"], "tag": r["label"], "id": i} for i, r in enumerate(rows)]
    return write_csv(tmp_path / name, renamed)


def own_args(tiny_bert, data: Path, out: Path, *extra: str) -> list[str]:
    base = [f"model.name_or_path={tiny_bert}", f"data.train={data}", "data.text_column=review"]
    base += ["data.label_column=tag", "train.max_steps=2", "train.batch_size=8", "data.max_length=32"]
    # data.min_validation_rows=1: these files are small, and these tests are about the validation cut of one
    base += ["data.min_validation_rows=1"]
    return [*base, "train.mixed_precision=no", "train.collapse_retries=0", f"output.dir={out}", *extra]


@pytest.fixture(scope="module")
def run_dir(tiny_bert, tmp_path_factory) -> Path:
    """A 4-step run on a user's CSV (validation cut from it, one empty text), a checkpoint every 2 steps."""
    d = tmp_path_factory.mktemp("user")
    rows = make_rows(60, 5)
    rows[3]["text"] = "   "
    data = own_data(d, rows)
    out = d / "run"
    code = train_main(own_args(tiny_bert, data, out, "train.max_steps=4", "checkpoint.every_steps=2"))
    assert code is None
    return out


# ---------------------------------------------------------------- labels


def test_label_lists_without_multi_label_say_to_set_the_task(tiny_bert, tmp_path, capsys):
    data = tmp_path / "tags.jsonl"
    data.write_text("".join(json.dumps({"review": r["text"], "tag": [r["label"]]}) + "\n" for r in make_rows(20, 1)))
    code, _, err = run(train_main, own_args(tiny_bert, data, tmp_path / "out"), capsys)
    one_line_error(code, err, "set data.task=multi_label")
    assert not (tmp_path / "out").exists()


def test_labels_are_stripped_and_blank_ones_refused(tmp_path):
    rows = [{"text": "good", "label": " positive "}, {"text": "bad", "label": "negative"}]
    assert load_split(str(write_csv(tmp_path / "a.csv", rows)), "text", "label").labels == ["positive", "negative"]
    multi = load_split(str(write_csv(tmp_path / "m.csv", [{"text": "x", "label": " a | b "}])), "text", "label",
                       task="multi_label")  # fmt: skip
    assert multi.labels == [["a", "b"]]
    rows.append({"text": "meh", "label": " "})
    with pytest.raises(Exception, match=r"1 row\(s\) have no label or a blank one \(file lines 4"):
        load_split(str(write_csv(tmp_path / "b.csv", rows)), "text", "label")


def test_labels_differing_only_by_case_are_refused_by_name(tiny_bert, tmp_path, capsys):
    rows = make_rows(30, 2)
    rows[0]["label"] = "POSITIVE"
    code, _, err = run(train_main, own_args(tiny_bert, own_data(tmp_path, rows), tmp_path / "out"), capsys)
    one_line_error(code, err, "labels differ only by case: 'POSITIVE' (1 rows) and 'positive' (14 rows)")
    assert not (tmp_path / "out").exists()


def test_a_class_too_small_for_the_validation_cut_is_named(tiny_bert, tmp_path, capsys):
    rows = make_rows(30, 2)
    rows[0]["label"] = "neutral"  # one row: stratification cannot hold, and it may land in validation only
    data = own_data(tmp_path, rows)
    split = load_split(str(data), "review", "tag")
    # A seed whose (random) cut puts the lone row into validation: then no training row has the label.
    seed = next(s for s in range(100) if "neutral" in split_validation(split, 0.1, s)[1].labels)
    code, out, err = run(train_main, own_args(tiny_bert, data, tmp_path / "out", f"train.seed={seed}"), capsys)
    assert "warning: " in out and "label(s) 'neutral' have a single row" in out
    one_line_error(code, err, "every row of label(s) 'neutral' went into the validation split")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- options and initializers


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{name: kaiming_normal, mode: fan_avg}", "mode 'fan_avg' is not one of fan_in, fan_out"),
        ("{name: kaiming_uniform, nonlinearity: swish}", "nonlinearity 'swish' is not one of linear,"),
    ],
)
def test_bad_initializer_values_list_the_valid_ones(tiny_bert, tiny_data, tmp_path, capsys, spec, expected):
    args = own_args(tiny_bert, tiny_data["train"], tmp_path / "out", "data.text_column=text", "data.label_column=label")
    code, _, err = run(train_main, [*args, f"model.head_init={spec}"], capsys)
    one_line_error(code, err, expected)


def test_overrides_stand_on_both_sides_of_options(tiny_bert, tiny_data, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name_or_path: {tiny_bert}\n")
    # Read as overrides (the missing file is the error), not refused by argparse as unrecognized arguments.
    code, _, err = run(train_main, ["train.max_steps=1", "--config", config, f"data.train={tmp_path}/none.csv"], capsys)
    one_line_error(code, err, "none.csv")
    code, _, err = run(cv_main, ["cv.folds=2", "--config", config, f"data.train={tmp_path}/none.csv"], capsys)
    one_line_error(code, err, "none.csv")


# ---------------------------------------------------------------- nothing left behind


def test_resuming_with_other_labels_is_one_line_and_writes_nothing(run_dir, tiny_bert, tmp_path, capsys):
    rows = make_rows(30, 3)
    for i, r in enumerate(rows):
        r["label"] = "abc"[i % 3]
    step = sorted((run_dir / "checkpoints").glob("step-*"))[0]
    args = own_args(tiny_bert, own_data(tmp_path, rows), tmp_path / "new", f"train.resume_from={step}")
    code, _, err = run(train_main, args, capsys)
    one_line_error(code, err, "it was trained on labels ['negative', 'positive'], this run's data has ['a', 'b', 'c']")
    assert not (tmp_path / "new").exists()


def test_a_pos_weight_error_writes_nothing(tiny_bert, tmp_path, capsys):
    data = tmp_path / "tags.jsonl"
    data.write_text("".join(json.dumps({"review": r["text"], "tag": [r["label"]]}) + "\n" for r in make_rows(20, 1)))
    args = own_args(tiny_bert, data, tmp_path / "out", "data.task=multi_label", "loss.pos_weight={nope: 2}")
    code, _, err = run(train_main, args, capsys)
    one_line_error(code, err, "loss.pos_weight: unknown label(s) ['nope']")
    assert not (tmp_path / "out").exists()
    code, _, err = run(cv_main, [*args, "cv.folds=2"], capsys)  # cv: no empty output.dir or folds/ either
    one_line_error(code, err, "loss.pos_weight")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- finite numbers


def test_binary_log_loss_of_saturated_float32_probabilities_matches_torch():
    logits = np.array([[25.0, -3.0], [2.0, -30.0]], dtype=np.float32)
    gold = np.array([[1, 0], [0, 0]])
    probs = sigmoid(logits).astype(np.float32)  # evaluation's probabilities: 25 saturates to 1.0 in float32
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(gold, dtype=torch.float64)
    ).item()
    assert binary_log_loss(gold, probs) == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(binary_log_loss([[0, 1]], np.array([[1.0, 0.0]], dtype=np.float32)))  # confidently wrong
    assert math.isfinite(multilabel_metrics(gold, probs, [0.5, 0.5])["loss"])  # what keep_best compares
    assert math.isfinite(log_loss(np.array([1]), np.array([[1.0, 0.0]], dtype=np.float32)))


def test_json_we_write_has_no_nan_or_infinity():
    text = dumps({"loss": float("nan"), "accuracy": 0.5, "curve": [[1, float("inf")]], "nested": {"x": -math.inf}})

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    assert json.loads(text, parse_constant=refuse) == {"accuracy": 0.5, "curve": [[1, None]], "nested": {}}


# ---------------------------------------------------------------- cross-validation's audit


def test_the_label_audit_warns_when_its_models_are_near_chance():
    rng = np.random.default_rng(0)
    gold = (rng.random(300) < 0.6).astype(np.int64)  # majority rate about 0.6
    near_chance = np.column_stack([np.full(300, 0.45), np.full(300, 0.55)]) + rng.normal(0, 0.05, (300, 1)) * [1, -1]
    task = get_task("single_label")
    summary = {"out_of_fold": {"accuracy": float((near_chance.argmax(1) == gold).mean())}}
    issues = audit(task, gold, near_chance, summary)
    warning = summary["label_issues"]["warning"]
    assert (
        warning
        and "only as good as the models" in warning
        and f"majority rate {max(gold.mean(), 1 - gold.mean()):.3f}" in warning
    )
    pool = Split(texts=[str(i) for i in range(300)], labels=["ab"[g] for g in gold])
    summary.update(folds=[], mean={}, std={})
    assert warning in format_summary(summary, issues, pool, ["a", "b"], Path("out"))  # the console and cv.log
    good = np.eye(2)[gold] * 0.9 + 0.05
    summary["out_of_fold"]["accuracy"] = 1.0
    audit(task, gold, good, summary)
    assert summary["label_issues"]["warning"] is None


# ---------------------------------------------------------------- messages and logs


def test_train_log_holds_the_lines_the_console_showed(run_dir):
    log = (run_dir / "train.log").read_text()
    assert "data: train " in log and "| validation 10% cut from train" in log  # the plan line
    assert "1 of 60 text(s) are empty or whitespace only; skipped them" in log


def test_predict_says_an_empty_text_gets_no_prediction(run_dir, tmp_path, capsys):
    code, out, _ = run(predict_main, ["--checkpoint", run_dir / "best", "", "a good film", "--precision", "no"], capsys)
    assert code == 0
    assert "[1] '': empty text: no prediction" in out and "[2] a good film" in out
    source = tmp_path / "in.jsonl"
    lines = [{"text": "", "tags": ["acting"]}, {"text": "fun", "tags": ["a", "b"]}]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["--checkpoint", run_dir / "best", "--input", source, "--output", tmp_path / "o.csv"]
    code, out, _ = run(predict_main, args, capsys)
    assert code == 0 and "1 of 2 row(s) have an empty text" in out
    with (tmp_path / "o.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["tags"] for r in rows] == ["acting", "a|b"]  # not "['acting']"
    assert rows[0]["predicted"] == "" and rows[1]["predicted"] in ("negative", "positive")


def test_evaluate_names_the_checkpoint_path_and_refuses_an_onnx_folder(run_dir, tmp_path, capsys):
    data = write_csv(tmp_path / "t.csv", [{"text": "fine", "label": "neutral"}, {"text": "bad", "label": "negative"}])
    code, _, err = run(evaluate_main, ["--checkpoint", run_dir / "best", "--data", data, "--output", tmp_path / "r"],
                       capsys)  # fmt: skip
    one_line_error(code, err, f"'neutral' that checkpoint {run_dir / 'best'} does not know")
    onnx = tmp_path / "int8"
    onnx.mkdir()
    (onnx / "bertcls_onnx.json").write_text(json.dumps({"exported_from": "runs/a/best"}))
    code, _, err = run(evaluate_main, ["--checkpoint", onnx, "--data", data], capsys)
    one_line_error(code, err, "is an ONNX export: evaluate the checkpoint it was exported from (runs/a/best)")


def test_export_data_with_a_missing_column_names_the_option_before_exporting(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    data = write_csv(tmp_path / "t.csv", [{"review": "fine", "label": "positive"}])
    out = tmp_path / "int8"
    args = ["--checkpoint", run_dir / "best", "--format", "onnx", "--quantize", "int8", "--data", data, "--output", out]
    code, _, err = run(export_main, args, capsys)
    one_line_error(code, err, "--text-column")
    assert "data.text_column" not in err and not out.exists()


def test_cv_says_its_test_is_the_held_out_rows(tiny_bert, tiny_data, tmp_path, capsys):
    args = tiny_overrides(tiny_bert, tiny_data, tmp_path / "cv", "cv.folds=2", "loss.class_weights={x: 1}")
    code, out, err = run(cv_main, args, capsys)  # refused after the data is read: its lines are printed
    # Each fold's plan line says its test is the fold's held-out rows (cv.run_fold's sources); nothing before the
    # refusal points to data.test, which cv does not use.
    assert code == 2 and "set data.test" not in out
    assert not (tmp_path / "cv").exists()
