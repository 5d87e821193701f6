"""Sentence pairs end to end: train with data.text_pair_column, then evaluate and predict (CLIs and model.predict)."""

from __future__ import annotations

import csv
import json

import pytest

from bertcls import BertForTextClassification
from bertcls.data import load_split
from bertcls.evaluate import main as evaluate_main
from bertcls.predict import main as predict_main
from bertcls.train import train

from .conftest import make_rows, write_csv
from .test_train import tiny_cfg


def pair_rows(n: int, seed: int) -> list[dict[str, str]]:
    # The label word sits in the second text, so a model that ignored pairs could not learn the task.
    return [{"premise": r["other"], "hypothesis": r["text"], "label": r["label"]} for r in make_rows(n, seed)]


def test_sentence_pairs_train_evaluate_and_predict(tiny_bert, tmp_path):
    data = {
        name: write_csv(tmp_path / f"{name}.csv", pair_rows(n, s)) for name, n, s in (("train", 64, 1), ("test", 24, 3))
    }
    out = tmp_path / "run"
    cols = ("data.text_column=premise", "data.text_pair_column=hypothesis", "data.validation=null")
    result = train(tiny_cfg(tiny_bert, {**data, "validation": None}, out, *cols, "train.max_steps=3"))
    model = BertForTextClassification.from_pretrained(out / "best")
    test = load_split(str(data["test"]), "premise", "label", "hypothesis")
    with_pairs = model.predict_proba(test.texts, test.text_pairs)
    assert not (with_pairs - model.predict_proba(test.texts)).abs().max() < 1e-6  # the pair reaches the model
    acc = (with_pairs.argmax(-1).numpy() == [model.labels.index(y) for y in test.labels]).mean()
    assert acc == pytest.approx(result["test"]["accuracy"])

    report = tmp_path / "report"
    evaluate_main(
        ["--checkpoint", str(out / "best"), "--data", str(data["test"]), "--text-column", "premise"]
        + ["--text-pair-column", "hypothesis", "--output", str(report)]
    )
    assert json.loads((report / "metrics.json").read_text())["accuracy"] == pytest.approx(acc)

    labelled = tmp_path / "labelled.csv"
    predict_main(
        ["--checkpoint", str(out / "best"), "--input", str(data["test"]), "--output", str(labelled)]
        + ["--text-column", "premise", "--text-pair-column", "hypothesis"]
    )
    with labelled.open() as f:
        predicted = [row["predicted"] for row in csv.DictReader(f)]
    assert predicted == [p["label"] for p in model.predict(test.texts, test.text_pairs, precision="auto")]
