"""bertcls.export: ONNX graphs that match PyTorch, torch-free ONNX prediction, int8, and Hugging Face folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bertcls import BertclsError, BertForTextClassification  # noqa: E402
from bertcls.export import export_hf, export_onnx, main  # noqa: E402
from bertcls.onnx_predict import OnnxClassifier  # noqa: E402
from bertcls.predict import load_predictor, predict_file, predict_texts  # noqa: E402

from .conftest import make_rows, run_main, write_csv, write_tiny_encoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Mixed lengths: every batch of these is padded.
TEXTS = [
    "fun",
    "a gripping beautiful film",
    "the plot was very boring and the ending flat, and the actor was weak",
    "dull",
    "a lovely story",
]


@pytest.fixture(scope="module")
def checkpoint(tiny_bert, tmp_path_factory) -> Path:
    model = BertForTextClassification.from_pretrained(
        tiny_bert, labels=["bad", "good", "meh"], pooling="pooler", dropout=0.2, seed=0
    )
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "best")


@pytest.fixture(scope="module")
def model(checkpoint) -> BertForTextClassification:
    return BertForTextClassification.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def onnx_dir(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "new" / "onnx"  # missing parent folders are made, as mkdir -p would
    export_onnx(checkpoint, out, verbose=False)
    return out


def test_onnx_logits_match_pytorch_on_a_padded_batch(onnx_dir, model):
    import onnxruntime as ort

    enc = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # padding present
    with torch.inference_mode():
        expected = model(**enc).logits.numpy()
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    (got,) = session.run(["logits"], {k: v.numpy() for k, v in enc.items()})
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # Dynamic axes: another batch size and sequence length than the export's example batch.
    enc1 = model.tokenizer(TEXTS[2:3], return_tensors="pt")
    with torch.inference_mode():
        np.testing.assert_allclose(
            session.run(["logits"], {k: v.numpy() for k, v in enc1.items()})[0], model(**enc1).logits.numpy(), atol=1e-4
        )


def test_onnx_folder_holds_tokenizer_and_labels(onnx_dir, model):
    config = json.loads((onnx_dir / "bertcls_onnx.json").read_text())
    assert config["labels"] == ["bad", "good", "meh"]
    assert config["max_length"] == model.max_length
    assert config["pooling"] == "pooler"
    assert (onnx_dir / "tokenizer.json").is_file()
    assert (onnx_dir / "README.md").is_file()  # the checkpoint's model card travels with it


def test_onnx_predictions_equal_pytorch(onnx_dir, model):
    onnx = load_predictor(onnx_dir)
    assert isinstance(onnx, OnnxClassifier)
    got = predict_texts(onnx, TEXTS, batch_size=2)
    expected = predict_texts(model, TEXTS, batch_size=2, precision="no")  # ONNX runs in full precision
    for g, e in zip(got, expected):
        assert g["label"] == e["label"]
        assert list(g["probabilities"]) == list(e["probabilities"])
        assert g["score"] == pytest.approx(e["score"], abs=1e-4)
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-4)
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), model.predict_proba(TEXTS).numpy(), atol=1e-4)


def test_a_calibrated_export_records_its_temperature_and_keeps_its_probabilities(checkpoint, tmp_path):
    from bertcls.calibration import fold_temperature
    from bertcls.serve import model_info

    model = BertForTextClassification.from_pretrained(checkpoint).eval()
    raw = model.predict_proba(TEXTS).numpy()
    fold_temperature(model, 2.5)
    calibrated = model.save_pretrained(tmp_path / "calibrated")
    export_onnx(calibrated, tmp_path / "onnx", verbose=False)
    onnx = OnnxClassifier.from_folder(tmp_path / "onnx")
    assert json.loads((tmp_path / "onnx" / "bertcls_onnx.json").read_text())["temperature"] == 2.5
    assert model_info(onnx, tmp_path / "onnx")["temperature"] == 2.5
    torch_probs = load_predictor(calibrated).predict_proba(TEXTS).numpy()
    assert np.abs(torch_probs - raw).max() > 1e-3  # the temperature changed the probabilities...
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), torch_probs, atol=1e-5)  # ...and ONNX applies it too


def test_onnx_predicts_text_pairs_like_pytorch(onnx_dir, model):
    pairs = ["good", "bad", "flat", "fun", "the film"]
    np.testing.assert_allclose(
        load_predictor(onnx_dir).predict_proba(TEXTS, pairs), model.predict_proba(TEXTS, pairs).numpy(), atol=1e-4
    )


@pytest.mark.integration
def test_predict_cli_on_onnx_export_does_not_import_torch(onnx_dir, model, tmp_path):
    data = write_csv(tmp_path / "in.csv", [{"text": t} for t in TEXTS])
    code = (
        "import json, sys\n"
        "from bertcls.predict import main\n"
        f"main(['--checkpoint', {str(onnx_dir)!r}, '--json', *{TEXTS!r}])\n"
        f"main(['--checkpoint', {str(onnx_dir)!r}, '--input', {str(data)!r}, "
        f"'--output', {str(tmp_path / 'o.jsonl')!r}])\n"
        "print(json.dumps({'torch_imported': 'torch' in sys.modules}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines[-1] == {"torch_imported": False}
    expected = model.predict(TEXTS)
    for g, e in zip(lines[: len(TEXTS)], expected):
        assert g["label"] == e["label"]
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-4)
    written = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [w["predicted"] for w in written] == [e["label"] for e in expected]


def test_predict_file_with_onnx(onnx_dir, model, tmp_path):
    data = write_csv(tmp_path / "in.csv", [{"text": t, "id": str(i)} for i, t in enumerate(TEXTS)])
    got = predict_file(load_predictor(onnx_dir), data, tmp_path / "out.csv")
    assert [p["label"] for p in got] == [p["label"] for p in model.predict(TEXTS)]


def test_onnx_predicts_in_full_precision_only(onnx_dir):
    onnx = load_predictor(onnx_dir)
    assert predict_texts(onnx, TEXTS, precision="no") == predict_texts(onnx, TEXTS)  # auto: full precision here
    with pytest.raises(BertclsError, match="ONNX export runs in full precision"):
        predict_texts(onnx, TEXTS, precision="bf16")


def test_truncated_onnx_model_is_a_clear_error(onnx_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(BertclsError, match="model.onnx cannot be loaded .*export the checkpoint again"):
        load_predictor(broken)


def test_int8_quantization_reports_accuracy_change(checkpoint, tmp_path, capsys):
    data = write_csv(
        tmp_path / "test.csv", [{**r, "label": "good" if r["label"] == "positive" else "bad"} for r in make_rows(24, 5)]
    )
    main(
        [
            "--checkpoint",
            str(checkpoint),
            "--format",
            "onnx",
            "--quantize",
            "int8",
            "--data",
            str(data),
            "--output",
            str(tmp_path / "q"),
        ]
    )
    printed = capsys.readouterr().out
    assert "int8 quantization" in printed and "accuracy" in printed
    report = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert report["num_examples"] == 24
    assert report["accuracy_change"] == pytest.approx(report["accuracy_int8"] - report["accuracy_fp32"])
    assert 0.0 <= report["agreement"] <= 1.0
    config = json.loads((tmp_path / "q" / "bertcls_onnx.json").read_text())
    assert config["quantization"] == "int8"
    assert sorted(p.name for p in (tmp_path / "q").glob("*.onnx")) == ["model.onnx"]
    probs = OnnxClassifier.from_folder(tmp_path / "q").predict_proba(TEXTS)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_hf_export_pipeline_matches_bertcls(checkpoint, model, tmp_path):
    from transformers import pipeline

    out = export_hf(checkpoint, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "bad", "1": "good", "2": "meh"}
    assert config["label2id"] == {"bad": 0, "good": 1, "meh": 2}
    assert (out / "model.safetensors").is_file()
    pipe = pipeline("text-classification", model=str(out), top_k=None)
    got = pipe(TEXTS)
    for g, e in zip(got, model.predict(TEXTS)):
        assert {d["label"]: d["score"] for d in g} == pytest.approx(e["probabilities"], abs=1e-5)
        assert g[0]["label"] == e["label"]


@pytest.mark.parametrize(
    ("kind", "options", "reason"),
    [
        ("bert", {"pooling": "cls"}, "pools with 'cls'"),
        ("bert", {"pooling": "pooler", "hidden_sizes": [8]}, "hidden layers"),
        ("distilbert", {"pooling": "mean"}, "backbone is distilbert"),
    ],
)
def test_hf_export_refuses_heads_it_cannot_express(kind, options, reason, tmp_path):
    encoder = write_tiny_encoder(tmp_path / kind, kind)
    ckpt = BertForTextClassification.from_pretrained(encoder, labels=["a", "b"], seed=0, **options)
    with pytest.raises(BertclsError, match=reason) as e:
        export_hf(ckpt.save_pretrained(tmp_path / "ckpt"), tmp_path / "hf")
    assert "--format onnx" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "hf").exists()


def test_onnx_export_of_distilbert_has_no_token_type_input(tmp_path):
    encoder = write_tiny_encoder(tmp_path / "distilbert", "distilbert")
    model = BertForTextClassification.from_pretrained(encoder, labels=["a", "b"], pooling="mean", seed=0)
    config = export_onnx(model, tmp_path / "onnx", verbose=False)
    assert config["inputs"] == ["input_ids", "attention_mask"]
    np.testing.assert_allclose(
        OnnxClassifier.from_folder(tmp_path / "onnx").predict_proba(TEXTS),
        model.predict_proba(TEXTS).numpy(),
        atol=1e-4,
    )


@pytest.mark.integration
def test_cli_errors_are_one_line(checkpoint, onnx_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "bertcls.export", *a], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    existing = run("--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(onnx_dir))
    # in-process (the same main()): one real process per command is enough
    no_ckpt = run_main(
        "bertcls.export", "--checkpoint", str(tmp_path / "nope"), "--format", "hf", "--output", str(tmp_path / "x")
    )
    for proc, words in ((existing, "already exists"), (no_ckpt, "does not exist")):
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and words in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
