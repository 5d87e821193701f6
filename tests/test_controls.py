"""Training controls (issue #6): class weights, balanced sampling, label smoothing, data seed, early stopping,
learning rates by depth, re-initialization, gradual unfreezing."""

from __future__ import annotations

import json

import pytest
import torch

from bertcls import BertclsError, BertForTextClassification
from bertcls.data import BalancedBatchSampler, TextClassificationDataset, load_split
from bertcls.losses import build_loss, class_weights
from bertcls.train import build_optimizer, load_data, make_train_loader, train, unfreeze_for_epoch

from .test_train import tiny_cfg

LABELS = ["negative", "positive"]


def first_batch(tiny_bert, tiny_data, cfg):
    """Logits and labels of the first training batch of ``cfg``'s run, computed outside the loop (eval mode)."""
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, seed=cfg.train.seed, dropout=0).eval()
    split = load_split(str(tiny_data["train"]))
    ds = TextClassificationDataset(split.texts, split.labels, model.tokenizer, cfg.data.max_length, label_names=LABELS)
    sampler = make_train_loader(ds, cfg, False).batch_sampler
    sampler.set_epoch(0)
    batch = ds.collate([ds[i] for i in next(iter(sampler))])
    labels = batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits.float(), labels


def first_step_loss(tiny_bert, tiny_data, tmp_path, *extra):
    # A frozen backbone (eval mode) and a head without dropout make the first step deterministic.
    frozen = ("model.freeze_backbone=true", "train.cache=false", "model.dropout=0", "train.max_steps=1")
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", *frozen, *extra)
    result = train(cfg)
    logits, labels = first_batch(tiny_bert, tiny_data, cfg)
    return result["train_loss_curve"][0][1], logits, labels


def test_class_weights_balanced_and_by_name():
    w = class_weights("balanced", ["a", "b"], [0, 0, 0, 1])
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert class_weights({"b": 2.5}, ["a", "b"], [0, 1]).tolist() == [1.0, 2.5]
    assert class_weights(None, ["a", "b"], [0, 1]) is None
    with pytest.raises(BertclsError, match="unknown label"):
        class_weights({"c": 2.0}, ["a", "b"], [0, 1])
    with pytest.raises(BertclsError, match="no training example"):
        class_weights("balanced", ["a", "b", "c"], [0, 1])


def test_class_weights_change_the_training_loss_exactly(tiny_bert, tiny_data, tmp_path):
    loss, logits, labels = first_step_loss(tiny_bert, tiny_data, tmp_path, "loss.class_weights={negative: 3.0}")
    nll = -logits.log_softmax(-1)[torch.arange(len(labels)), labels]
    w = torch.tensor([3.0, 1.0])[labels]
    assert loss == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-5)
    assert loss != pytest.approx(float(nll.mean()), rel=1e-3)  # the batch holds both classes
    assert build_loss(None)(logits, labels).item() == pytest.approx(float(nll.mean()), rel=1e-6)


def test_label_smoothing_matches_the_formula(tiny_bert, tiny_data, tmp_path):
    eps = 0.2
    loss, logits, labels = first_step_loss(tiny_bert, tiny_data, tmp_path, f"loss.label_smoothing={eps}")
    logp = logits.log_softmax(-1)
    nll = -logp[torch.arange(len(labels)), labels]
    uniform = -logp.mean(-1)  # cross-entropy against the uniform distribution over classes
    expected = ((1 - eps) * nll + eps * uniform).mean()
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert loss != pytest.approx(float(nll.mean()), rel=1e-3)


def test_balanced_sampler_evens_out_classes_in_full_batches():
    labels = [0] * 90 + [1] * 10
    sampler = BalancedBatchSampler(labels, batch_size=16, seed=0)
    drawn = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert [len(b) for b in batches] == [16] * 6 + [4]  # only the last batch is short
        drawn += [i for b in batches for i in b]
    share = sum(labels[i] for i in drawn) / len(drawn)
    assert 0.4 < share < 0.6  # 10% of the data, about half of what is drawn


def test_train_sampler_option_selects_the_balanced_sampler(tiny_bert, tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path, "train.sampler=balanced")
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    split = load_split(str(tiny_data["train"]))
    ds = TextClassificationDataset(split.texts, split.labels, model.tokenizer, 32, label_names=LABELS)
    assert isinstance(make_train_loader(ds, cfg, False).batch_sampler, BalancedBatchSampler)
    result = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "train.sampler=balanced", "train.max_steps=3"))
    assert result["history"][-1]["step"] == 3


def test_data_seed_changes_data_order_and_split_alone(tiny_bert, tiny_data, tmp_path):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    split = load_split(str(tiny_data["train"]))
    ds = TextClassificationDataset(split.texts, split.labels, model.tokenizer, 32, label_names=LABELS)

    def order(*extra: str) -> list[list[int]]:
        cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path, *extra)
        return list(make_train_loader(ds, cfg, False).batch_sampler)

    assert order("train.data_seed=1") == order("train.data_seed=1", "train.seed=7")
    assert order("train.data_seed=1") != order("train.data_seed=2")
    assert order() == order("train.data_seed=42")  # null means train.seed

    def val(*extra: str) -> list[str]:
        return load_data(tiny_cfg(tiny_bert, tiny_data, tmp_path, "data.validation=null", *extra)).validation.texts

    assert val("train.data_seed=1") != val("train.data_seed=2")
    assert val("train.data_seed=1") == val("train.data_seed=1", "train.seed=3")


def test_early_stopping_stops_before_max_steps_and_restores_the_best(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    # accuracy can never rise by more than 1.0, so the second evaluation is the first without improvement
    extra = ("train.max_steps=20", "eval.every_steps=1", "train.early_stopping_patience=1")
    result = train(tiny_cfg(tiny_bert, tiny_data, out, *extra, "train.early_stopping_min_delta=1.0"))
    assert [h["step"] for h in result["history"]] == [1, 2]
    assert result["early_stopping"]["stopped"] and result["early_stopping"]["step"] == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["early_stopping"]["stopped"] and saved["best"]["step"] in (1, 2)
    assert "restored the best checkpoint" in (out / "train.log").read_text() or saved["best"]["step"] == 2
    full = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "full", "train.max_steps=4", "eval.every_steps=1"))
    assert [h["step"] for h in full["history"]] == [1, 2, 3, 4] and not full["early_stopping"]["stopped"]


def test_layer_lr_decay_gives_each_depth_its_rate(tiny_bert, tiny_data, tmp_path):
    lrs = ("train.lr=1e-3", "train.head_lr=1e-2")
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, pooling="pooler")
    opt = build_optimizer(model, tiny_cfg(tiny_bert, tiny_data, tmp_path, *lrs, "train.layer_lr_decay=0.5"))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    expected = {"head.": 1e-2, "backbone.pooler.": 1e-3, "backbone.encoder.layer.1.": 1e-3}
    expected |= {"backbone.encoder.layer.0.": 5e-4, "backbone.embeddings.": 2.5e-4}
    seen = set()
    for name, p in model.named_parameters():
        prefix = next(k for k in expected if name.startswith(k))
        assert lr_of[id(p)] == pytest.approx(expected[prefix]), name
        seen.add(prefix)
    assert seen == set(expected)
    flat = build_optimizer(model, tiny_cfg(tiny_bert, tiny_data, tmp_path, *lrs))
    assert {g["lr"] for g in flat.param_groups} == {1e-3, 1e-2}


def changed(a: BertForTextClassification, b: BertForTextClassification) -> set[str]:
    """Backbone parameter prefixes (up to the layer number) whose weights differ between two models."""
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    return {".".join(k.split(".")[:3]) for k in sa if not torch.equal(sa[k], sb[k])}


def test_reinit_top_k_changes_exactly_the_top_layers(tiny_bert, tiny_data, tmp_path):
    start = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    with torch.no_grad():  # make the LayerNorms and biases differ from their re-initialized values
        for name, p in model.backbone.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.5)
    start.load_state_dict(model.state_dict())
    model.reinit_top_layers(1, torch.Generator().manual_seed(0))
    assert changed(start, model) == {"encoder.layer.1", "pooler.dense.weight", "pooler.dense.bias"}
    top = model.backbone.encoder.layer[1]
    assert torch.equal(top.output.LayerNorm.weight, torch.ones(32)) and not top.output.dense.bias.any()
    std = model.backbone.config.initializer_range
    assert top.intermediate.dense.weight.std().item() == pytest.approx(std, rel=0.2)
    # through the config: a frozen backbone keeps whatever the run started from, so last/ shows the re-init
    out = tmp_path / "run"
    frozen = ("model.freeze_backbone=true", "train.cache=false", "train.max_steps=1", "model.reinit_top_k=1")
    train(tiny_cfg(tiny_bert, tiny_data, out, *frozen))
    plain = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    assert changed(plain, BertForTextClassification.from_pretrained(out / "last")) >= {"encoder.layer.1"}
    assert "encoder.layer.0" not in changed(plain, BertForTextClassification.from_pretrained(out / "last"))


def test_gradual_unfreezing_adds_one_layer_per_epoch(tiny_bert, tiny_data, tmp_path):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)

    def trainable() -> set[str]:
        return {".".join(n.split(".")[:4]) for n, p in model.named_parameters() if p.requires_grad}

    head = {"head.layers.1.weight", "head.layers.1.bias"}
    unfreeze_for_epoch(model, 0, log=lambda _: None)
    assert trainable() == head
    unfreeze_for_epoch(model, 1, log=lambda _: None)
    assert trainable() == head | {"backbone.encoder.layer.1"}
    unfreeze_for_epoch(model, 2, log=lambda _: None)
    assert trainable() == head | {"backbone.encoder.layer.1", "backbone.encoder.layer.0"}
    unfreeze_for_epoch(model, 3, log=lambda _: None)
    assert any(n.startswith("backbone.embeddings") for n in trainable())
    # a 2-epoch run: the top layer trained (epoch 1), the lower layer and embeddings never did
    out = tmp_path / "run"
    train(tiny_cfg(tiny_bert, tiny_data, out, "train.gradual_unfreeze=true", "train.epochs=2"))
    plain = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    assert changed(plain, BertForTextClassification.from_pretrained(out / "last")) == {"encoder.layer.1"}
    assert "epoch 1: training head + top 1 layer(s)" in (out / "train.log").read_text()
