"""Temperature scaling: fitted on validation, folded into the head, carried into checkpoints, reports and exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bertcls import BertclsError, BertForTextClassification
from bertcls.calibration import calibrated, fit_temperature, fold_temperature, uncalibrated
from bertcls.data import load_split
from bertcls.evaluate import evaluate, evaluate_checkpoint
from bertcls.export import export_onnx
from bertcls.metrics import expected_calibration_error
from bertcls.onnx_predict import OnnxClassifier
from bertcls.train import train

from .test_train import tiny_cfg

TEXTS = ["fun", "a gripping beautiful film", "the plot was boring and the ending flat", "dull", "a lovely story"]


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_fit_recovers_the_temperature_of_overconfident_probabilities():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 3)) * 3
    # Labels drawn from softmax(z / 2): a model that outputs softmax(z) is overconfident by a temperature of 2.
    gold = np.array([rng.choice(3, p=p) for p in softmax(z / 2)])
    t = fit_temperature(softmax(z), gold, multi_label=False)
    assert t == pytest.approx(2.0, rel=0.05)
    after = calibrated(softmax(z), t, False)
    np.testing.assert_array_equal(after.argmax(1), z.argmax(1))  # the top label never moves
    assert expected_calibration_error(gold, after) < expected_calibration_error(gold, softmax(z)) / 3
    np.testing.assert_allclose(uncalibrated(after, t, False), softmax(z), atol=1e-9)


def test_multilabel_fit_is_per_label_and_skips_one_class_labels():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20000, 3)) * 3
    gold = (rng.random((20000, 3)) < 1 / (1 + np.exp(-z / np.array([0.5, 2.0, 1.0])))).astype(int)
    gold[:, 2] = 0  # one class only: no temperature to fit
    temps = fit_temperature(1 / (1 + np.exp(-z)), gold, multi_label=True)
    assert temps[0] == pytest.approx(0.5, rel=0.05) and temps[1] == pytest.approx(2.0, rel=0.05) and temps[2] == 1.0


def test_a_validation_split_with_every_decision_right_keeps_t_at_1():
    """The NLL of separable predictions falls forever as T shrinks: the fit would sit at its bound (T 0.018 made
    every test probability 0 or 1 in a user's run) instead of saying there is nothing to fit."""
    z = np.array([[2.0, 0.0, -1.0], [0.0, 1.5, 0.0], [-1.0, 0.0, 0.5], [3.0, 1.0, 0.0]])
    gold = z.argmax(1)
    assert fit_temperature(softmax(z), gold, multi_label=False) == 1.0
    gold[0] = 1  # one decision wrong: a finite optimum again
    assert 0.1 < fit_temperature(softmax(z), gold, multi_label=False) < 50
    multi = (z > 0).astype(int)  # each label's sigmoid decision right in every row
    assert fit_temperature(1 / (1 + np.exp(-z)), multi, multi_label=True) == [1.0, 1.0, 1.0]


def test_folding_divides_the_logits_and_survives_save_and_load(tiny_bert, tmp_path):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["a", "b", "c"], seed=0).eval()
    before = model.predict_proba(TEXTS).numpy()
    fold_temperature(model, 2.5)
    fold_temperature(model, 0.8)  # a second calibration multiplies into the first
    assert model.temperature == pytest.approx(2.0)
    np.testing.assert_allclose(model.predict_proba(TEXTS).numpy(), calibrated(before, 2.0, False), atol=1e-5)
    again = BertForTextClassification.from_pretrained(model.save_pretrained(tmp_path / "c"))
    assert again.temperature == pytest.approx(2.0)
    config = json.loads((tmp_path / "c" / "bertcls_config.json").read_text())
    config["temperature"] = -1
    (tmp_path / "c" / "bertcls_config.json").write_text(json.dumps(config))
    with pytest.raises(BertclsError, match="bad temperature"):
        BertForTextClassification.from_pretrained(tmp_path / "c")


@pytest.fixture(scope="module")
def runs(tiny_bert, tiny_data, tmp_path_factory):
    """The same tiny run with and without calibration."""
    d = tmp_path_factory.mktemp("cal")
    plain = train(tiny_cfg(tiny_bert, tiny_data, d / "plain", "eval.calibration=none"))
    cal = train(tiny_cfg(tiny_bert, tiny_data, d / "cal"))
    return d, plain, cal


def test_training_calibrates_best_on_validation(runs, tiny_data):
    d, plain, cal = runs
    c = cal["calibration"]
    assert "calibration" not in plain and c["split"] == "validation" and c["temperature"] > 0
    assert c["after"]["loss"] <= c["before"]["loss"] + 1e-9  # NLL on the split it was fitted on can only fall
    raw = BertForTextClassification.from_pretrained(d / "plain" / "best")
    best = BertForTextClassification.from_pretrained(d / "cal" / "best")
    assert raw.temperature is None and best.temperature == pytest.approx(c["temperature"])
    texts = load_split(str(tiny_data["test"])).texts
    expected = calibrated(raw.predict_proba(texts).numpy(), c["temperature"], False)
    np.testing.assert_allclose(best.predict_proba(texts).numpy(), expected, atol=1e-5)
    assert cal["test"]["accuracy"] == plain["test"]["accuracy"]  # a temperature never changes the top label
    assert BertForTextClassification.from_pretrained(d / "cal" / "last").temperature is None  # the raw end state


def test_evaluate_reports_before_and_after_with_a_reliability_diagram(runs, tiny_data):
    d, _, cal = runs
    m = evaluate(d / "cal" / "best", str(tiny_data["test"]), output=d / "ev", precision="no", verbose=False)
    raw = evaluate(d / "plain" / "best", str(tiny_data["test"]), output=d / "ev0", precision="no", verbose=False)
    assert m["calibration"]["temperature"] == pytest.approx(cal["calibration"]["temperature"])
    assert m["calibration"]["before"]["ece"] == pytest.approx(raw["ece"], abs=1e-6)
    assert m["calibration"]["before"]["loss"] == pytest.approx(raw["loss"], abs=1e-6)
    assert m["accuracy"] == raw["accuracy"] and "calibration" not in raw
    for folder in ("ev", "ev0"):
        assert (d / folder / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_onnx_export_of_a_calibrated_checkpoint_gives_calibrated_probabilities(runs):
    d, _, _ = runs
    best = BertForTextClassification.from_pretrained(d / "cal" / "best").eval()
    export_onnx(d / "cal" / "best", d / "onnx", verbose=False)
    onnx = OnnxClassifier.from_folder(d / "onnx")
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), best.predict_proba(TEXTS).numpy(), atol=1e-5)


def test_multilabel_thresholds_are_retuned_on_calibrated_probabilities(tiny_bert, tmp_path):
    from .test_multilabel import make_rows as ml_rows
    from .test_multilabel import ml_cfg, write_delimited_csv, write_jsonl

    data = {
        "train": write_jsonl(tmp_path / "train.jsonl", ml_rows(96, 1)),
        "validation": write_delimited_csv(tmp_path / "validation.csv", ml_rows(40, 2)),
        "test": write_jsonl(tmp_path / "test.jsonl", ml_rows(40, 3)),
    }
    result = train(ml_cfg(tiny_bert, data, tmp_path / "run", "eval.threshold=tune"))
    temps = result["calibration"]["temperature"]
    assert isinstance(temps, list) and len(temps) == 3
    best = BertForTextClassification.from_pretrained(tmp_path / "run" / "best")
    assert best.temperature == pytest.approx(temps)
    assert best.thresholds == pytest.approx(list(result["best"]["thresholds"].values()))
    assert torch.is_tensor(best.predict_proba(TEXTS))


# ---------------------------------------------------------------- texts read as windows


def windowed_loss(z, gold, doc_ids, t, multi_label=False):
    """The reference: the NLL of the mean over each text's windows of softmax(z / t) (sigmoid per label)."""
    from bertcls.long_texts import mean_of_windows

    with np.errstate(over="ignore", divide="ignore"):  # (a tiny t saturates: its loss is inf, never the minimum)
        p = 1 / (1 + np.exp(-z / t)) if multi_label else softmax(z / t)
        doc = mean_of_windows(p, doc_ids, len(gold))
        if multi_label:
            return float(-np.where(gold == 1, np.log(doc), np.log1p(-doc)).mean())
        return float(-np.log(doc[np.arange(len(gold)), gold]).mean())


def brute_force_t(z, gold, doc_ids, multi_label=False):
    grid = np.exp(np.linspace(-4, 4, 4001))
    losses = [windowed_loss(z, gold, doc_ids, t, multi_label) for t in grid]
    return grid[int(np.argmin(losses))], min(losses)


def windows(seed: int, docs: int = 400, classes: int = 3):
    rng = np.random.default_rng(seed)
    doc_ids = np.repeat(np.arange(docs), rng.integers(1, 5, docs))  # 1 to 4 windows a text
    z = rng.normal(size=(len(doc_ids), classes)) * 3
    return rng, doc_ids, z


def test_windowed_temperature_minimises_the_loss_of_what_the_folded_model_computes():
    """With windows the folded model gives mean_w softmax(z_w / T): T minimises that NLL (a grid over T in numpy
    agrees), not the NLL of log(mean of the window probabilities) scaled by 1/T."""
    rng, doc_ids, z = windows(0)
    gold = np.array([rng.choice(3, p=p) for p in softmax(z[np.unique(doc_ids, return_index=True)[1]] / 2)])
    t = fit_temperature(softmax(z), gold, False, doc_ids)
    best_t, best_loss = brute_force_t(z, gold, doc_ids)
    assert t == pytest.approx(best_t, rel=0.01)
    assert windowed_loss(z, gold, doc_ids, t) <= best_loss + 1e-6
    after = calibrated(softmax(z), t, False, doc_ids)  # per text, as the folded model predicts
    expected = windowed_loss(z, gold, doc_ids, t)
    assert float(-np.log(after[np.arange(len(gold)), gold]).mean()) == pytest.approx(expected, rel=1e-9)


def test_windowed_multilabel_temperatures_are_per_label_on_the_mean_of_windows():
    rng, doc_ids, z = windows(1, classes=2)
    first = np.unique(doc_ids, return_index=True)[1]
    gold = (rng.random((len(first), 2)) < 1 / (1 + np.exp(-z[first] / np.array([0.5, 2.0])))).astype(int)
    temps = fit_temperature(1 / (1 + np.exp(-z)), gold, True, doc_ids)
    for j in range(2):
        best_t, _ = brute_force_t(z[:, [j]], gold[:, [j]], doc_ids, multi_label=True)
        assert temps[j] == pytest.approx(best_t, rel=0.01)


def window_logits(model, texts):
    """The model's logits per window of each text (and each window's text), as its forward gives them."""
    from bertcls.data import tokenize_texts
    from bertcls.inference import predict_rows, torch_runner

    rows, _ = tokenize_texts(
        model.tokenizer, texts, None, model.max_length, model.truncation, model.window_stride, progress=False
    )
    run = torch_runner(lambda b: model(**b).logits, torch.device("cpu"))
    return predict_rows(rows, 16, model.tokenizer.pad_token_id or 0, run, model.num_labels), np.asarray(rows.doc_ids)


def test_a_windowed_run_saves_the_model_whose_loss_it_reports(tiny_bert, tiny_data, tmp_path):
    """best/ scores on validation the loss the run reports after calibration; its T minimises that loss (a grid
    over T of the windows' logits in numpy); evaluate's 'before' is the uncalibrated model's loss."""
    extra = ("data.max_length=12", "data.window_stride=4", "train.epochs=3", "train.lr=0.001")
    result = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", *extra))
    c = result["calibration"]
    best = BertForTextClassification.from_pretrained(tmp_path / "run" / "best").eval()
    data = load_split(str(tiny_data["validation"]))
    m = evaluate_checkpoint(best, data, precision="no").metrics
    assert m["loss"] == pytest.approx(c["after"]["loss"], abs=1e-5)
    assert m["calibration"]["before"]["loss"] == pytest.approx(c["before"]["loss"], abs=1e-5)
    assert m["calibration"].keys() == c.keys() and m["calibration"]["after"]["loss"] == m["loss"]  # one shape
    with torch.no_grad():
        z, doc_ids = window_logits(best, data.texts)
    raw = z.astype(np.float64) * c["temperature"]  # the logits before the fold
    gold = np.array([best.labels.index(label) for label in data.labels])
    best_t, best_loss = brute_force_t(raw, gold, doc_ids)
    assert c["temperature"] == pytest.approx(best_t, rel=0.01)
    assert c["after"]["loss"] <= best_loss + 1e-5


# ---------------------------------------------------------------- training again: LP-FT, a calibrated checkpoint


def test_lp_ft_calibrates_once_at_the_end(tiny_bert, tiny_data, tmp_path):
    """Phase 2 starts from the probe's head as fitted (not divided by a phase-1 T); best/ records the one T it was
    calibrated with; last/ records none, and evaluate does not call it calibrated; 'before' is the best model's
    own validation loss."""
    out = tmp_path / "run"
    result = train(tiny_cfg(tiny_bert, tiny_data, out, "train.schedule=lp_ft", "train.max_steps=3"))
    c = result["calibration"]
    assert BertForTextClassification.from_pretrained(out / "linear_probe" / "best").temperature is None
    assert BertForTextClassification.from_pretrained(out / "last").temperature is None
    best = BertForTextClassification.from_pretrained(out / "best")
    assert best.temperature == pytest.approx(c["temperature"])
    at_best = next(h for h in result["history"] if h["step"] == result["best"]["step"])
    assert c["before"]["loss"] == pytest.approx(at_best["validation"]["loss"], abs=1e-6)
    validation = load_split(str(tiny_data["validation"]))
    assert "calibration" not in evaluate_checkpoint(out / "last", validation, precision="no").metrics
    m = evaluate_checkpoint(best, validation, precision="no").metrics
    assert m["calibration"]["before"]["loss"] == pytest.approx(c["before"]["loss"], abs=1e-5)
    assert m["loss"] == pytest.approx(c["after"]["loss"], abs=1e-5)


def test_training_again_from_a_calibrated_checkpoint_starts_from_its_raw_head(runs, tiny_bert, tiny_data, tmp_path):
    from bertcls.calibration import unfold_temperature

    d, _, _ = runs
    model = BertForTextClassification.from_pretrained(d / "cal" / "best")
    unfold_temperature(model)
    raw = BertForTextClassification.from_pretrained(d / "plain" / "best")  # the same run, never calibrated
    assert model.temperature is None
    np.testing.assert_allclose(model.predict_proba(TEXTS).numpy(), raw.predict_proba(TEXTS).numpy(), atol=1e-5)
    again = f"model.name_or_path={d / 'cal' / 'best'}"
    train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "again", again, "train.max_steps=1", "eval.calibration=none"))
    for name in ("best", "last"):
        assert BertForTextClassification.from_pretrained(tmp_path / "again" / name).temperature is None


# ---------------------------------------------------------------- a fixed multi-label threshold


def test_scaled_thresholds_keep_every_sigmoid_decision():
    from bertcls.calibration import scaled_thresholds

    rng = np.random.default_rng(3)
    z, temps = rng.normal(size=(5000, 3)) * 4, [0.4, 1.0, 3.0]
    for t in (0.2, 0.5, 0.9):
        moved = scaled_thresholds([t] * 3, temps)
        before = 1 / (1 + np.exp(-z)) >= t
        after = calibrated(1 / (1 + np.exp(-z)), temps, True) >= np.asarray(moved)
        assert (before == after).mean() > 0.9999  # (a row exactly on the threshold may round either way)
        if t != 0.5:  # the threshold left where it was would move decisions
            assert (before != (calibrated(1 / (1 + np.exp(-z)), temps, True) >= t)).mean() > 0.01
    assert scaled_thresholds([0.5], [3.0]) == pytest.approx([0.5])


def test_a_fixed_multilabel_threshold_stays_where_the_user_put_it(tiny_bert, tmp_path):
    """eval.threshold=0.45: calibration changes the probabilities, not one decision (each label's threshold moves
    with its T); the record says so and the test scores equal the uncalibrated run's."""
    from .test_multilabel import make_rows as ml_rows
    from .test_multilabel import ml_cfg, write_jsonl

    data = {split: write_jsonl(tmp_path / f"{split}.jsonl", ml_rows(n, seed)) for split, n, seed in SPLITS}
    plain = train(ml_cfg(tiny_bert, data, tmp_path / "plain", "eval.threshold=0.45", "eval.calibration=none"))
    cal = train(ml_cfg(tiny_bert, data, tmp_path / "cal", "eval.threshold=0.45"))
    c, temps = cal["calibration"], np.asarray(cal["calibration"]["temperature"])
    assert np.abs(np.log(temps)).max() > 0.05  # a temperature that would move decisions at a fixed 0.45
    best = BertForTextClassification.from_pretrained(tmp_path / "cal" / "best")
    raw = BertForTextClassification.from_pretrained(tmp_path / "plain" / "best")
    texts = [
        text
        for split in ("train", "validation", "test")
        for text in load_split(str(data[split]), task="multi_label").texts
    ]
    ours = best.predict_proba(texts).numpy() >= np.asarray(best.thresholds)
    np.testing.assert_array_equal(ours, raw.predict_proba(texts).numpy() >= 0.45)
    assert cal["test"]["micro_f1"] == plain["test"]["micro_f1"]
    np.testing.assert_allclose(best.thresholds, 1 / (1 + np.exp(-np.log(0.45 / 0.55) / temps)), rtol=1e-9)
    assert c["decisions_changed"] == 0 and c["after"]["micro_f1"] == c["before"]["micro_f1"]


SPLITS = (("train", 96, 1), ("validation", 40, 2), ("test", 40, 3))
