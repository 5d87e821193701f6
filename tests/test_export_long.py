"""Exports read texts longer than max_length as the model does: head / tail / head+tail truncation and sliding
windows in the ONNX predictor; head or tail in a Hugging Face pipeline, and a clear refusal where a pipeline cannot."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bertcls import BertclsError, BertForTextClassification  # noqa: E402
from bertcls.export import export_hf, export_onnx  # noqa: E402
from bertcls.onnx_predict import OnnxClassifier  # noqa: E402

from .conftest import FILLER, NEGATIVE, POSITIVE, assert_one_line_error, run_main  # noqa: E402

MAX_LENGTH = 16
_rng = random.Random(0)
_WORDS = POSITIVE + NEGATIVE + FILLER
# Word counts around and far above the 14 tokens of room (one token per word); the short ones need no cutting.
TEXTS = [" ".join(_rng.choice(_WORDS) for _ in range(n)) for n in (3, 13, 14, 15, 17, 25, 40, 61)]
# Second texts: some long enough to be cut too (shared budget), short enough to leave room for windows.
PAIRS = [" ".join(_rng.choice(_WORDS) for _ in range(n)) for n in (2, 9, 1, 4, 11, 3, 12, 8)]
WINDOW_PAIRS = [p.split()[0] for p in PAIRS]  # windows need room for the first text beside the second
# (truncation, window_stride)
WINDOWS = ("head", 5)
READINGS = [("head", 0), ("tail", 0), ("head+tail", 0), WINDOWS]
ids = lambda r: f"{r[0]}-windows{r[1]}" if r[1] else r[0]  # noqa: E731


def reading_model(encoder: Path, truncation: str, window_stride: int, task: str = "single_label"):
    model = BertForTextClassification.from_pretrained(
        encoder, labels=["bad", "good", "meh"], pooling="pooler", max_length=MAX_LENGTH, seed=0, task=task
    ).eval()
    with torch.no_grad():  # a sharper random head, so that which tokens are read shows in the probabilities
        model.head.layers[-1].weight.mul_(30)
    model.truncation, model.window_stride = truncation, window_stride
    return model


def assert_reading_matters(model: BertForTextClassification, texts=TEXTS) -> None:
    """The model's reading changes its probabilities on these texts by far more than the parity tolerance (1e-4): a
    predictor that read the head only would fail."""
    if (model.truncation, model.window_stride) == ("head", 0):
        return
    reading = model.truncation, model.window_stride
    model.truncation, model.window_stride = "head", 0
    head_only = model.predict_proba(texts).numpy()
    model.truncation, model.window_stride = reading
    assert np.abs(model.predict_proba(texts).numpy() - head_only).max() > 5e-4


@pytest.fixture(scope="module", params=READINGS, ids=ids)
def exported(request, tiny_bert, tmp_path_factory) -> tuple[BertForTextClassification, Path]:
    truncation, stride = request.param
    model = reading_model(tiny_bert, truncation, stride)
    out = tmp_path_factory.mktemp("onnx") / ids(request.param)
    export_onnx(model.save_pretrained(out.parent / "ckpt"), out, verbose=False)
    return BertForTextClassification.from_pretrained(out.parent / "ckpt").eval(), out


def max_diff(onnx: OnnxClassifier, model: BertForTextClassification, texts, pairs=None) -> float:
    got = onnx.predict_proba(texts, pairs, batch_size=3)
    expected = model.predict_proba(texts, pairs, batch_size=3).numpy()
    assert got.shape == expected.shape == (len(texts), model.num_labels)
    return float(np.abs(got - expected).max())


def test_onnx_export_records_how_long_texts_are_read(exported):
    model, out = exported
    config = json.loads((out / "bertcls_onnx.json").read_text())
    assert (config["truncation"], config["window_stride"]) == (model.truncation, model.window_stride)
    assert config["max_length"] == MAX_LENGTH and config["format_version"] == 2
    onnx = OnnxClassifier.from_folder(out)
    assert (onnx.truncation, onnx.window_stride) == (model.truncation, model.window_stride)


def test_onnx_reads_long_texts_as_the_model_does(exported):
    model, out = exported
    assert_reading_matters(model)
    assert max_diff(OnnxClassifier.from_folder(out), model, TEXTS) < 1e-4


def test_onnx_reads_long_text_pairs_as_the_model_does(exported):
    model, out = exported
    pairs = WINDOW_PAIRS if model.window_stride else PAIRS
    assert max_diff(OnnxClassifier.from_folder(out), model, TEXTS, pairs) < 1e-4


@pytest.mark.parametrize("reading", [("tail", 0), ("head+tail", 0), ("head", 5)], ids=ids)
def test_multilabel_onnx_reads_long_texts_as_the_model_does(reading, tiny_bert, tmp_path):
    model = reading_model(tiny_bert, *reading, task="multi_label")
    model.thresholds = [0.3, 0.5, 0.7]
    assert_reading_matters(model)
    export_onnx(model, tmp_path / "onnx", verbose=False)
    onnx = OnnxClassifier.from_folder(tmp_path / "onnx")
    assert max_diff(onnx, model, TEXTS) < 1e-4
    assert [p["labels"] for p in onnx.predict(TEXTS)] == [p["labels"] for p in model.predict(TEXTS)]


@pytest.mark.parametrize("exported", [WINDOWS], ids=ids, indirect=True)
def test_onnx_window_stride_too_wide_is_the_models_error(exported):
    model, out = exported
    long_pairs = [" ".join(["film"] * 12)] * len(TEXTS)  # leaves 1 token of room: stride 5 does not fit
    with pytest.raises(BertclsError, match="window_stride must be between 1 and 1"):
        model.predict_proba(TEXTS, long_pairs)
    with pytest.raises(BertclsError, match="window_stride must be between 1 and 1"):
        OnnxClassifier.from_folder(out).predict_proba(TEXTS, long_pairs)


@pytest.mark.parametrize("exported", [("tail", 0)], ids=ids, indirect=True)
def test_onnx_export_without_reading_settings_reads_the_head(exported, tmp_path):
    """An export made before truncation and window_stride were saved (format 1) reads the head, as it always did."""
    _, out = exported
    old = tmp_path / "old"
    shutil.copytree(out, old)
    config = json.loads((old / "bertcls_onnx.json").read_text())
    del config["truncation"], config["window_stride"]
    config["format_version"] = 1
    (old / "bertcls_onnx.json").write_text(json.dumps(config))
    onnx = OnnxClassifier.from_folder(old)
    assert (onnx.truncation, onnx.window_stride) == ("head", 0)
    head = BertForTextClassification.from_pretrained(out.parent / "ckpt").eval()
    head.truncation, head.window_stride = "head", 0
    assert max_diff(onnx, head, TEXTS) < 1e-4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"truncation": "middle"}, "bertcls_onnx.json is corrupt"),
        ({"window_stride": -1}, "bertcls_onnx.json is corrupt"),
        ({"format_version": 99}, "format version 99, newer than this bertcls reads"),
    ],
)
@pytest.mark.parametrize("exported", [("tail", 0)], ids=ids, indirect=True)
def test_onnx_export_with_unknown_reading_is_refused(exported, tmp_path, change, message):
    _, out = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    config = json.loads((bad / "bertcls_onnx.json").read_text())
    (bad / "bertcls_onnx.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(BertclsError, match=message):
        OnnxClassifier.from_folder(bad)


@pytest.mark.integration
@pytest.mark.parametrize("exported", [WINDOWS], ids=ids, indirect=True)
def test_predict_cli_on_windowed_onnx_export(exported):
    model, out = exported
    proc = run_main("bertcls.predict", "--checkpoint", str(out), "--json", *TEXTS)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for got, expected in zip(rows, model.predict(TEXTS), strict=True):
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)


# ---------------------------------------------------------------- Hugging Face


@pytest.mark.parametrize("truncation", ["head", "tail"])
def test_hf_pipeline_truncates_long_texts_as_the_model_does(truncation, tiny_bert, tmp_path):
    from transformers import pipeline

    model = reading_model(tiny_bert, truncation, 0)
    assert_reading_matters(model)
    out = export_hf(model, tmp_path / "hf")
    side = json.loads((out / "tokenizer_config.json").read_text())["truncation_side"]
    assert side == ("left" if truncation == "tail" else "right")
    pipe = pipeline("text-classification", model=str(out), top_k=None, truncation=True)
    expected = model.predict_proba(TEXTS).numpy()
    got = np.array([[{d["label"]: d["score"] for d in row}[label] for label in model.labels] for row in pipe(TEXTS)])
    assert np.abs(got - expected).max() < 1e-5
    # a second text shares the room as bertcls shares it
    rows = pipe([{"text": t, "text_pair": p} for t, p in zip(TEXTS, PAIRS)])
    got = np.array([[{d["label"]: d["score"] for d in row}[label] for label in model.labels] for row in rows])
    assert np.abs(got - model.predict_proba(TEXTS, PAIRS).numpy()).max() < 1e-5


@pytest.mark.parametrize(
    ("reading", "why"),
    [(("head+tail", 0), "reads long texts as 'head+tail'"), (("tail", 5), "reads long texts as windows")],
    ids=["head+tail", "windows"],
)
def test_hf_export_refuses_readings_a_pipeline_cannot_do(reading, why, tiny_bert, tmp_path):
    model = reading_model(tiny_bert, *reading)
    with pytest.raises(BertclsError, match=re.escape(why)) as e:
        export_hf(model, tmp_path / "hf")
    message = str(e.value)
    assert "pipeline cannot" in message and "--format onnx" in message and "bertcls.predict" in message
    assert "\n" not in message
    assert not (tmp_path / "hf").exists()


@pytest.mark.integration
def test_hf_export_cli_refuses_windows_in_one_line(tiny_bert, tmp_path):
    checkpoint = reading_model(tiny_bert, "head", 5).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "hf"
    proc = run_main("bertcls.export", "--checkpoint", str(checkpoint), "--format", "hf", "--output", str(out))
    assert_one_line_error(proc, "reads long texts as windows (window_stride=5)")
    assert "--format onnx" in proc.stderr
    assert not out.exists()
