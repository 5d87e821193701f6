"""Cross-validation (bertcls.cv): folds, out-of-fold predictions, the label-issue audit, its files and errors."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest

import bertcls.cache
from bertcls import BertclsError, BertForTextClassification
from bertcls.config import load_config
from bertcls.cv import cross_validate, fold_rows
from bertcls.data import Split
from bertcls.label_issues import confident_joint, find_label_issues, ranked_precision_recall

from .conftest import assert_one_line_error, make_rows, run_cli, write_csv
from .test_train import tiny_overrides


def noisy_probs(n: int, k: int, flip: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities of a decent model of the true labels, the given labels with a share flipped, and which."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), true] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    flipped = rng.choice(n, size=int(flip * n), replace=False)
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, k, size=len(flipped))) % k
    return probs, given, np.sort(flipped)


def test_confident_learning_finds_flipped_labels():
    probs, given, flipped = noisy_probs(2000, 3, 0.1, seed=0)
    issues = find_label_issues(given, probs)
    assert abs(issues.estimated - len(flipped)) < 0.3 * len(flipped)
    at_n = ranked_precision_recall(issues.rows, flipped)
    assert at_n["at"] == 200 and at_n["precision"] > 0.8 and at_n["recall"] > 0.6, at_n
    # never a row whose most probable label is its given one; most suspicious first; suggestion = the model's pick
    assert not np.any(probs[issues.rows].argmax(1) == given[issues.rows])
    assert np.all(np.diff(issues.scores) <= 0)
    np.testing.assert_array_equal(issues.suggested, probs[issues.rows].argmax(1))


def test_confident_joint_by_hand():
    given = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    joint, thresholds = confident_joint(given, probs)
    # thresholds: mean p(0) of rows labelled 0 = (0.9+0.8+0.2)/3; mean p(1) of rows labelled 1 = 0.8
    np.testing.assert_allclose(thresholds, [1.9 / 3, 0.8])
    # row 2 (labelled 0) is confidently 1; row 3 reaches neither threshold and is left out, then row 1 is recounted
    np.testing.assert_allclose(joint, [[2, 1], [0, 2]])
    assert find_label_issues(given, probs).rows.tolist() == [2]


def test_folds_are_stratified_disjoint_and_seeded():
    labels = ["a"] * 50 + ["b"] * 25 + ["c"] * 3  # c is rarer than the folds: pooled
    pool = Split(texts=[str(i) for i in range(78)], labels=labels)
    folds = fold_rows(pool, 5, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(78))
    for held in folds:
        counts = Counter(labels[i] for i in held)
        assert counts["a"] + counts["c"] in (10, 11) and counts["b"] == 5  # c joined the largest stratum, a
    assert [f.tolist() for f in folds] == [f.tolist() for f in fold_rows(pool, 5, seed=1)]
    assert [f.tolist() for f in folds] != [f.tolist() for f in fold_rows(pool, 5, seed=2)]
    multi = Split(texts=["x"] * 20, labels=[["a"], ["a", "b"]] * 10)
    assert all(Counter(str(multi.labels[i]) for i in held)["['a']"] == 2 for held in fold_rows(multi, 5, 0))
    with pytest.raises(BertclsError, match="cv.folds=5 needs at least one row per fold"):
        fold_rows(Split(texts=["x"] * 3, labels=["a", "b", "a"]), 5, 0)


@pytest.fixture(scope="module")
def cv_run(tiny_bert, tiny_data, tmp_path_factory):
    """A 3-fold frozen cross-validation on the tiny data, fold checkpoints kept, backbone passes counted."""
    out = tmp_path_factory.mktemp("cv") / "run"
    overrides = tiny_overrides(tiny_bert, tiny_data, out, "model.freeze_backbone=true", "cv.folds=3")
    overrides += ["cv.save_models=true", f"train.cache_dir={out.parent / 'cache'}"]
    calls = []
    original = bertcls.cache.compute_features
    bertcls.cache.compute_features = lambda model, split, *a, **k: (
        calls.append(len(split)) or original(model, split, *a, **k)
    )
    try:
        summary = cross_validate(load_config(None, overrides))
    finally:
        bertcls.cache.compute_features = original
    return out, summary, calls


def test_cv_writes_out_of_fold_predictions_for_every_row(cv_run, tiny_data):
    out, summary, _ = cv_run
    with (out / "oof_predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with tiny_data["train"].open(newline="") as f:
        source = list(csv.DictReader(f))
    assert list(rows[0]) == ["row", "text", "label", "fold", "predicted", "prob_negative", "prob_positive"]
    assert [int(r["row"]) for r in rows] == list(range(96))
    assert [(r["text"], r["label"]) for r in rows] == [(r["text"], r["label"]) for r in source]
    assert sorted(Counter(r["fold"] for r in rows).values()) == [32, 32, 32]
    # Each row's probabilities are its fold's best checkpoint's, which never saw the row.
    for k in (1, 2, 3):
        held = [r for r in rows if r["fold"] == str(k)]
        model = BertForTextClassification.from_pretrained(out / "folds" / f"fold-{k}" / "best")
        expected = model.predict_proba([r["text"] for r in held])  # full precision, as the tiny runs train
        got = np.array([[float(r["prob_negative"]), float(r["prob_positive"])] for r in held])
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
        assert [r["predicted"] for r in held] == [model.labels[i] for i in got.argmax(1)]


def test_cv_metrics_plot_and_one_backbone_pass(cv_run):
    out, summary, calls = cv_run
    assert json.loads((out / "metrics.json").read_text()) == summary
    assert [f["fold"] for f in summary["folds"]] == [1, 2, 3]
    assert all(f["held_out_rows"] == 32 and f["train_rows"] == 64 for f in summary["folds"])
    accs = [f["metrics"]["accuracy"] for f in summary["folds"]]
    assert summary["mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert summary["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert summary["out_of_fold"]["num_examples"] == 96
    assert sum(map(sum, summary["out_of_fold"]["confusion_matrix"])) == 96
    assert (out / "folds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The frozen backbone ran once over the training file and once over the validation file, not once per fold.
    assert sorted(calls) == [40, 96]
    issues = summary["label_issues"]
    assert issues["estimated"] >= 0 and issues["method"].startswith("confident learning")
    with (out / "label_issues.csv").open(newline="") as f:
        assert f.readline().strip() == "row,text,label,suggested,score"
        listed = list(csv.DictReader(f, fieldnames=["row", "text", "label", "suggested", "score"]))
    assert len(listed) == issues["listed"]
    for r in listed:
        assert r["label"] != r["suggested"] and 0 <= float(r["score"]) <= 1


def test_cv_keeps_earlier_results_and_checks_options(cv_run, tiny_bert, tiny_data, tmp_path):
    out, _, _ = cv_run
    before = (out / "metrics.json").read_text()
    with pytest.raises(BertclsError, match="already holds cross-validation results"):
        cross_validate(load_config(None, tiny_overrides(tiny_bert, tiny_data, out, "cv.folds=3")))
    assert (out / "metrics.json").read_text() == before and (out / "folds" / "fold-1" / "best").is_dir()
    with pytest.raises(BertclsError, match="cv.folds must be an integer of at least 2"):
        load_config(None, ["cv.folds=1"])
    few = write_csv(tmp_path / "few.csv", make_rows(4, 0))
    proc = run_cli("bertcls.cv", *tiny_overrides(tiny_bert, tiny_data, tmp_path / "x"), f"data.train={few}")
    assert_one_line_error(proc, "cv.folds=5 needs at least one row per fold")


def test_fold_checkpoints_predict_as_an_ensemble(cv_run, tiny_bert, capsys):
    from bertcls.predict import main as predict_main

    out, _, _ = cv_run
    folds = [out / "folds" / f"fold-{k}" / "best" for k in (1, 2, 3)]
    texts = ["a gripping film", "dull and slow"]
    members = [BertForTextClassification.from_pretrained(f) for f in folds]
    mean = np.mean([m.predict_proba(texts).numpy() for m in members], axis=0)
    repeated = [arg for f in folds for arg in ("--checkpoint", str(f))]
    capsys.readouterr()
    predict_main([*repeated, "--json", "--precision", "no", *texts])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = np.array([[p["probabilities"]["negative"], p["probabilities"]["positive"]] for p in printed])
    np.testing.assert_allclose(got, mean, atol=1e-6)
    other = BertForTextClassification.from_pretrained(tiny_bert, labels=["x", "y"], seed=0)
    other_dir = other.save_pretrained(out.parent / "other")
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--checkpoint", str(folds[0]), "--checkpoint", str(other_dir), "fine"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "an ensemble needs the same task and labels" in err


def test_multilabel_cv_with_lp_ft_runs_every_fold(tiny_bert, tmp_path):
    """Multi-label folds (stratified by label set, thresholds tuned per fold) through the two-phase lp_ft schedule:
    out-of-fold label sets for every row, no confident-learning audit (it is for one label per row)."""
    from .test_multilabel import make_rows as ml_rows
    from .test_multilabel import write_jsonl

    train = write_jsonl(tmp_path / "train.jsonl", ml_rows(36, 1))
    overrides = [
        f"model.name_or_path={tiny_bert}", f"data.train={train}", "data.validation_fraction=0.2",
        "data.task=multi_label", "eval.threshold=tune", "train.schedule=lp_ft", "train.lp_epochs=1",
        "train.collapse_retries=0",
        "train.epochs=1", "train.batch_size=8", "train.mixed_precision=no", "data.max_length=32", "cv.folds=3",
        f"output.dir={tmp_path / 'cv'}", f"train.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    summary = cross_validate(load_config(None, overrides))
    assert summary["label_issues"] is None and summary["task"] == "multi_label"
    assert summary["out_of_fold"]["num_examples"] == 36 and len(summary["folds"]) == 3
    assert all(f["validation_rows"] > 0 for f in summary["folds"])  # cut from each fold's training rows
    with (tmp_path / "cv" / "oof_predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and not (tmp_path / "cv" / "label_issues.csv").exists()
    fold = tmp_path / "cv" / "folds" / "fold-1"
    assert not (fold / "best").exists() and not (fold / "linear_probe").exists()  # cv.save_models=false
    assert (fold / "metrics.json").is_file() and (fold / "train.log").is_file()
