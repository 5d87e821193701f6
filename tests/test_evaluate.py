"""bertcls.evaluate, the metrics behind it and the plots: checked against scikit-learn and by hand on tiny models."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from bertcls import BertclsError, BertForTextClassification  # noqa: E402
from bertcls.data import load_split  # noqa: E402
from bertcls.evaluate import evaluate, evaluate_checkpoint, main  # noqa: E402
from bertcls.metrics import expected_calibration_error, paired_bootstrap  # noqa: E402
from bertcls.plots import plot_confusion_matrix, plot_curves  # noqa: E402

from .conftest import assert_one_line_error, linear_output_dtypes, make_rows, run_cli, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def checkpoints(tiny_bert, tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny checkpoints whose heads differ (seeds 0 and 1), so their predictions differ."""
    d = tmp_path_factory.mktemp("ckpts")
    a = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, seed=0).save_pretrained(d / "a" / "best")
    b = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, seed=1).save_pretrained(d / "b" / "best")
    return a, b


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # not a blank canvas


# ---------------------------------------------------------------- metrics


def test_report_metrics_agree_with_sklearn_and_rows_align(checkpoints, tiny_data, tmp_path):
    out = tmp_path / "report"
    # batch size 7: several length-sorted batches, so input order has to be restored
    m = evaluate(checkpoints[0], str(tiny_data["test"]), output=out, batch_size=7, precision="no", verbose=False)
    assert json.loads((out / "metrics.json").read_text()) == m and m["precision"] == "no"
    test = load_split(str(tiny_data["test"]))
    rows = read_predictions(out / "predictions.csv")
    assert list(rows[0]) == ["text", "gold", "predicted", "prob_negative", "prob_positive"]
    assert [r["text"] for r in rows] == test.texts and [r["gold"] for r in rows] == test.labels
    probs = np.array([[float(r["prob_negative"]), float(r["prob_positive"])] for r in rows])
    model = BertForTextClassification.from_pretrained(checkpoints[0])
    np.testing.assert_allclose(probs, model.predict_proba(test.texts).numpy(), rtol=1e-5, atol=1e-6)
    assert [r["predicted"] for r in rows] == [LABELS[i] for i in probs.argmax(1)]

    y = np.array([LABELS.index(v) for v in test.labels])
    pred = probs.argmax(1)
    assert m["num_examples"] == 40 and m["unknown_labels"] == {"count": 0, "labels": {}}
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert [m[avg]["precision"], m[avg]["recall"], m[avg]["f1"]] == pytest.approx([p, r, f])
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    for i, label in enumerate(LABELS):
        assert m["per_class"][label] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, probs[:, 1]))
    assert m["loss"] == pytest.approx(skm.log_loss(y, probs / probs.sum(1, keepdims=True)), rel=1e-4)
    assert m["ece"] == pytest.approx(expected_calibration_error(y, probs))
    assert_png(out / "confusion_matrix.png")


def test_expected_calibration_error_by_hand():
    # Bin (0.8, 0.867]: two examples at 0.85 confidence, one right -> |0.5 - 0.85| = 0.35, weight 2/4.
    # Bin (0.6, 0.667]: two at 0.65, both right -> |1 - 0.65| = 0.35, weight 2/4. ECE = 0.35.
    probs = np.array([[0.85, 0.15], [0.85, 0.15], [0.35, 0.65], [0.65, 0.35]])
    y = np.array([0, 1, 1, 0])
    assert expected_calibration_error(y, probs) == pytest.approx(0.35)
    # Perfect confidence on right answers is perfectly calibrated.
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_report_in_chunks_equals_one_chunk(checkpoints, tiny_data, tmp_path, monkeypatch):
    """A report made 3 rows at a time (metrics counted, predictions.csv written as it goes, unknown labels skipped
    on the way) is the report made in one chunk."""
    from bertcls import evaluate as evaluate_module

    rows = make_rows(20, 0)
    rows.insert(7, {"text": "odd one", "label": "neutral"})
    data = str(write_csv(tmp_path / "d.csv", rows))
    reports = {}
    for chunk in (3, 10**6):
        monkeypatch.setattr(evaluate_module, "CHUNK_ROWS", chunk)
        out = tmp_path / f"chunk{chunk}"
        m = evaluate(checkpoints[0], data, output=out, unknown_labels="skip", precision="no", verbose=False)
        reports[chunk] = m, read_predictions(out / "predictions.csv")
    (small, small_rows), (whole, whole_rows) = reports[3], reports[10**6]
    assert small["unknown_labels"]["count"] == 1 and small["num_examples"] == 20
    assert [r["text"] for r in small_rows] == [r["text"] for r in whole_rows] == [r["text"] for r in rows]
    np.testing.assert_allclose(
        [float(r["prob_positive"]) for r in small_rows], [float(r["prob_positive"]) for r in whole_rows], atol=1e-6
    )
    assert small["confusion_matrix"] == whole["confusion_matrix"]
    for key in ("accuracy", "loss", "ece", "roc_auc", "average_precision"):
        assert small[key] == pytest.approx(whole[key], abs=1e-6), key


def test_paired_bootstrap_bounds_and_seed():
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.6
    same = paired_bootstrap(a, a)
    assert (same["accuracy_difference"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    better = paired_bootstrap(np.zeros(50, bool), np.ones(50, bool))
    assert (better["ci_low"], better["ci_high"]) == (1.0, 1.0)
    b = a.copy()
    b[:30] = ~b[:30]  # a noisy change: the interval must contain the observed difference
    r1, r2 = paired_bootstrap(a, b, seed=3), paired_bootstrap(a, b, seed=3)
    assert r1 == r2
    assert r1["ci_low"] <= r1["accuracy_difference"] <= r1["ci_high"] and r1["ci_low"] < r1["ci_high"]


def test_multiclass_report_has_no_binary_scores(tiny_bert, tmp_path):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["a", "b", "c"], seed=0)
    data = load_split(str(write_csv(tmp_path / "d.csv", [{"text": "good film", "label": x} for x in "abcab"])))
    result = evaluate_checkpoint(model, data, batch_size=2)
    assert "roc_auc" not in result.metrics and sum(map(sum, result.metrics["confusion_matrix"])) == 5
    assert result.metrics["per_class"]["c"]["support"] == 1


# ---------------------------------------------------------------- several checkpoints


def test_two_checkpoints_get_a_comparison_and_bootstrap(checkpoints, tiny_data, tmp_path):
    a, b = checkpoints
    out = tmp_path / "cmp"
    summary = evaluate([a, b], str(tiny_data["test"]), output=out, n_resamples=200, verbose=False)
    assert [c["report"] for c in summary["checkpoints"]] == ["a-best", "b-best"]
    for name in ("a-best", "b-best"):
        for f in ("metrics.json", "predictions.csv", "confusion_matrix.png"):
            assert (out / name / f).is_file()
    ca = json.loads((out / "a-best" / "metrics.json").read_text())
    cb = json.loads((out / "b-best" / "metrics.json").read_text())
    (cmp,) = summary["comparisons"]
    assert cmp["accuracy_difference"] == pytest.approx(cb["accuracy"] - ca["accuracy"])
    assert cmp["ci_low"] <= cmp["accuracy_difference"] <= cmp["ci_high"]
    assert cmp["n_resamples"] == 200 and cmp["num_examples"] == 40
    assert json.loads((out / "metrics.json").read_text()) == summary

    itself = evaluate([a, a], str(tiny_data["test"]), output=tmp_path / "self", verbose=False)
    (cmp,) = itself["comparisons"]
    assert [cmp["ci_low"], cmp["ci_high"]] == [0.0, 0.0]
    assert [c["report"] for c in itself["checkpoints"]] == ["1-best", "2-best"]


def test_default_output_folder_and_no_silent_overwrite(checkpoints, tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    BertForTextClassification.from_pretrained(checkpoints[0]).save_pretrained(ckpt)
    evaluate(ckpt, str(tiny_data["test"]), verbose=False)
    assert (ckpt / "eval-test" / "metrics.json").is_file()
    with pytest.raises(BertclsError, match="already holds a report"):
        evaluate(ckpt, str(tiny_data["test"]), verbose=False)
    (ckpt / "eval-test" / "metrics.json").write_text("{}")
    evaluate(ckpt, str(tiny_data["test"]), overwrite=True, verbose=False)
    assert json.loads((ckpt / "eval-test" / "metrics.json").read_text())["num_examples"] == 40
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(BertclsError, match=r"holds other files \('notes.txt'\); .* --overwrite"):
        evaluate(ckpt, str(tiny_data["test"]), output=mine, verbose=False)


def test_unknown_labels_error_or_skip(checkpoints, tmp_path):
    rows = make_rows(10, 5) + [{"text": "meh", "label": "neutral", "other": "a"}] * 3
    data = load_split(str(write_csv(tmp_path / "d.csv", rows)))
    with pytest.raises(BertclsError, match="3 row\\(s\\) with label\\(s\\) 'neutral'.*--unknown-labels skip"):
        evaluate_checkpoint(checkpoints[0], data)
    result = evaluate_checkpoint(checkpoints[0], data, unknown_labels="skip")
    assert result.metrics["num_examples"] == 10 and result.metrics["num_rows"] == 13
    assert result.metrics["unknown_labels"] == {"count": 3, "labels": {"neutral": 3}}
    assert sum(map(sum, result.metrics["confusion_matrix"])) == 10


# ---------------------------------------------------------------- command line


@pytest.mark.integration
def test_cli_report_and_skip_count(checkpoints, tmp_path):
    rows = make_rows(12, 5) + [{"text": "meh", "label": "neutral", "other": "a"}] * 2
    data = write_csv(tmp_path / "d.csv", rows)
    out = tmp_path / "r"
    proc = run_cli(
        "bertcls.evaluate", "--checkpoint", str(checkpoints[0]), "--data", str(data), "--output", str(out),
        "--unknown-labels", "skip",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 rows skipped" in proc.stdout and "'neutral' x2" in proc.stdout
    assert "confusion matrix" in proc.stdout and "macro avg" in proc.stdout
    assert json.loads((out / "metrics.json").read_text())["unknown_labels"]["count"] == 2
    assert len(read_predictions(out / "predictions.csv")) == 14  # every input row, the skipped ones too


@pytest.mark.integration
def test_cli_errors_are_one_line(checkpoints, tiny_data, tmp_path, capsys):
    good = checkpoints[0]
    no_weights = tmp_path / "no_weights"
    BertForTextClassification.from_pretrained(good).save_pretrained(no_weights)
    (no_weights / "model.safetensors").unlink()
    corrupt = tmp_path / "corrupt"
    BertForTextClassification.from_pretrained(good).save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes((corrupt / "model.safetensors").read_bytes()[:200])
    bad_labels = write_csv(tmp_path / "bad.csv", make_rows(4, 9) + [{"text": "meh", "label": "neutral", "other": "a"}])
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "metrics.json").write_text("{}")
    data = str(tiny_data["test"])
    # One case runs for real (a subprocess, as a user meets it); the rest call main() in-process, which prints and
    # exits the same way (cli_errors) without another interpreter and torch import per case.
    real = ["--checkpoint", str(good), "--data", data, "--text-column", "txt", "--output", str(tmp_path / "out")]
    assert_one_line_error(run_cli("bertcls.evaluate", *real), "no column 'txt' (did you mean 'text'?)")
    in_process = {
        "has no model weights": ["--checkpoint", str(no_weights), "--data", data],
        "model.safetensors is corrupt": ["--checkpoint", str(corrupt), "--data", data],
        "1 row(s) with label(s) 'neutral'": ["--checkpoint", str(good), "--data", str(bad_labels)],
        "set --label-column": ["--checkpoint", str(good), "--data", data, "--label-column", "gold"],
        "already holds a report": ["--checkpoint", str(good), "--data", data, "--output", str(existing)],
        "does not exist": ["--checkpoint", str(good), "--data", str(tmp_path / "missing.csv")],
        "not a bertcls checkpoint": ["--checkpoint", str(tmp_path), "--data", data],
    }
    for expected, args in in_process.items():
        out = [] if "--output" in args else ["--output", str(tmp_path / "out")]
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *out])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert expected in err, err
    assert not (tmp_path / "out").exists()  # nothing written on an error


def test_checkpoint_tensors_are_checked(checkpoints, tmp_path):
    # A checkpoint whose head no longer matches its label set is refused, not silently evaluated.
    ckpt = BertForTextClassification.from_pretrained(checkpoints[0]).save_pretrained(tmp_path / "c")
    state = load_file(ckpt / "model.safetensors")
    state["head.layers.1.weight"] = state["head.layers.1.weight"][:1].contiguous()
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(BertclsError, match="do not match"):
        evaluate_checkpoint(ckpt, load_split(str(write_csv(tmp_path / "d.csv", make_rows(4, 1)))))


# ---------------------------------------------------------------- plots


def test_plots_are_valid_pngs(tmp_path):
    labels = ["sports", "politics", "tech", "entertainment", "science"]
    matrix = np.arange(25).reshape(5, 5).tolist()
    assert_png(plot_confusion_matrix(matrix, labels, tmp_path / "cm.png"))
    metrics = {
        "train_loss_curve": [[10, 0.7], [20, 0.5], [30, 0.4]],
        "history": [
            {"step": 15, "validation": {"loss": 0.6, "accuracy": 0.7, "macro_f1": 0.68}},
            {"step": 30, "validation": {"loss": 0.45, "accuracy": 0.8, "macro_f1": 0.79}},
        ],
        "best": {"step": 30},
    }
    assert_png(plot_curves(metrics, tmp_path / "curves.png"))
    assert_png(plot_curves({"train_loss_curve": [[1, 0.7]], "history": [{"step": 1}]}, tmp_path / "noval.png"))


@pytest.mark.integration
def test_training_writes_curves_and_the_script_redraws_them(tiny_bert, tiny_data, tmp_path):
    from bertcls.train import train

    from .test_train import tiny_cfg

    out = tmp_path / "run"
    train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=10", "eval.every_steps=5"))
    assert_png(out / "curves.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "scripts/plot_curves.py", str(out), "-o", str(tmp_path / "again.png")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_png(tmp_path / "again.png")


def test_precision_auto_is_trainings_and_is_recorded(checkpoints, tiny_data, tmp_path):
    from bertcls.precision import resolve

    test = load_split(str(tiny_data["test"]))
    with linear_output_dtypes() as auto_dtypes:
        auto = evaluate_checkpoint(checkpoints[0], test)  # the default: auto, as training's mixed_precision
    with linear_output_dtypes() as full_dtypes:
        full = evaluate_checkpoint(checkpoints[0], test, precision="no")
    assert auto.metrics["precision"] == resolve("auto", "cpu") and full.metrics["precision"] == "no"
    np.testing.assert_allclose(auto.probs, full.probs, atol=0.02)  # bf16 rounding, where it applies
    with linear_output_dtypes() as bf16_dtypes:
        bf16 = evaluate_checkpoint(checkpoints[0], test, precision="bf16")
    assert bf16.metrics["precision"] == "bf16" and not np.array_equal(bf16.probs, full.probs)
    # the matmuls inside the forward passes ran at the precision recorded
    dtype = {"no": torch.float32, "bf16": torch.bfloat16}
    assert {d for _, d in auto_dtypes} == {dtype[auto.metrics["precision"]]}
    assert {d for _, d in full_dtypes} == {torch.float32} and {d for _, d in bf16_dtypes} == {torch.bfloat16}
    with pytest.raises(BertclsError, match="unknown precision 'fp8'"):
        evaluate(checkpoints[0], str(tiny_data["test"]), output=tmp_path / "x", precision="fp8", verbose=False)
    assert not (tmp_path / "x").exists()
