"""Model cards: written by every save_pretrained, completed with data, config and metrics by a training run."""

from __future__ import annotations

import json

from bertcls import BertForTextClassification
from bertcls.card import model_card
from bertcls.train import train

from .test_train import tiny_cfg


def test_save_pretrained_writes_a_card_from_what_the_model_knows(tiny_bert, tmp_path):
    model = BertForTextClassification.from_pretrained(
        tiny_bert,
        labels=["negative", "neutral", "positive"],
        head_init={"name": "kaiming_normal", "mode": "fan_out"},
        pooling="mean",
        dropout=0.25,
        hidden_sizes=[16],
        freeze_backbone=True,
        seed=0,
    )
    card = (model.save_pretrained(tmp_path / "ckpt") / "README.md").read_text()
    for words in ("`negative`, `neutral`, `positive`", "kaiming_normal(mode=fan_out)", "`mean`", "0.25", "[16]"):
        assert words in card, words
    assert "frozen" in card and "bert" in card
    assert "Intended use and limits" in card
    assert "Results" not in card  # no metrics without a training run
    # A reloaded checkpoint gives the same card, and saving it again keeps it.
    again = BertForTextClassification.from_pretrained(tmp_path / "ckpt")
    assert model_card(again) == model_card(model)


def test_training_run_cards_hold_data_config_and_metrics(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = train(
        tiny_cfg(
            tiny_bert,
            tiny_data,
            out,
            "train.epochs=1",
            "model.unfreeze_top_k=1",
            "model.freeze_backbone=true",
            "model.head_init=orthogonal",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("best", "last"):
        card = (out / name / "README.md").read_text()
        assert "`negative`, `positive`" in card
        assert "`orthogonal`" in card
        assert "top 1 encoder layers" in card
        assert str(tiny_data["train"]) in card and str(tiny_data["test"]) in card
        assert f"Test accuracy: {result['test']['accuracy']:.4f}" in card
        assert f"| validation | {metrics['history'][-1]['validation']['accuracy']:.4f}" in card
        assert "```yaml" in card and "head_init: orthogonal" in card
        assert f"the {name} checkpoint" in card
