"""Frozen-backbone feature cache: same results as the plain path, reuse across runs, never stale."""

from __future__ import annotations

import pytest
import torch

import bertcls.cache
from bertcls import BertForTextClassification
from bertcls.cache import cache_key
from bertcls.data import load_split
from bertcls.train import train

from .conftest import make_rows, write_csv
from .test_train import tiny_cfg


def frozen_cfg(tiny_bert, tiny_data, out, cache_dir, *extra):
    return tiny_cfg(
        tiny_bert,
        tiny_data,
        out,
        "model.freeze_backbone=true",
        f"train.cache_dir={cache_dir}",
        "train.epochs=1",
        *extra,
    )


def test_cached_and_uncached_training_give_the_same_head(tiny_bert, tiny_data, tmp_path):
    # The same epochs of AdamW steps on both paths (the cache's default L-BFGS fit has no uncached counterpart).
    common = ("model.dropout=0", "train.group_by_length=false", "model.head_init=orthogonal", "train.head_solver=adamw")
    a = train(frozen_cfg(tiny_bert, tiny_data, tmp_path / "a", tmp_path / "cache", "train.cache=true", *common))
    b = train(frozen_cfg(tiny_bert, tiny_data, tmp_path / "b", tmp_path / "cache", "train.cache=false", *common))
    assert a["feature_cache"]["used"] and not b["feature_cache"]["used"]
    head_a = BertForTextClassification.from_pretrained(tmp_path / "a" / "last").head.state_dict()
    head_b = BertForTextClassification.from_pretrained(tmp_path / "b" / "last").head.state_dict()
    start = BertForTextClassification.from_pretrained(
        tiny_bert, labels=["negative", "positive"], head_init="orthogonal", seed=42
    ).head.state_dict()
    for k in head_a:
        assert not torch.equal(head_a[k], start[k]), k  # training moved it...
        assert torch.allclose(head_a[k], head_b[k], atol=1e-5), k  # ...the same way with and without the cache
    assert a["test"]["accuracy"] == pytest.approx(b["test"]["accuracy"])


def test_second_run_reuses_the_cache_without_the_backbone(tiny_bert, tiny_data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = train(frozen_cfg(tiny_bert, tiny_data, tmp_path / "a", cache))
    assert first["feature_cache"] == {"used": True, "splits_reused": 0, "splits": 3}
    assert len(list(cache.glob("*.safetensors"))) == 3

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although every split was cached")

    monkeypatch.setattr(bertcls.cache, "compute_features", no_backbone)
    second = train(
        frozen_cfg(
            tiny_bert, tiny_data, tmp_path / "b", cache, "model.head_init=zeros", "train.lr=3e-3", "train.seed=7"
        )
    )
    assert second["feature_cache"]["splits_reused"] == 3


def test_cache_key_covers_what_changes_features(tiny_bert, tiny_data, tmp_path):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"])
    split = load_split(str(tiny_data["train"]))
    base = cache_key(model, split, 32, "no")
    assert cache_key(model, split, 32, "no") == base
    assert cache_key(model, split, 16, "no") != base  # max length
    assert cache_key(model, split, 32, "bf16") != base  # precision
    changed = load_split(str(tiny_data["train"]))
    changed.texts = list(changed.texts)
    changed.texts[5] = changed.texts[5] + " film"
    assert cache_key(model, changed, 32, "no") != base  # content, not path
    paired = load_split(str(tiny_data["train"]), text_pair_column="other")
    assert cache_key(model, paired, 32, "no") != base  # second text column
    mean = BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"], pooling="mean")
    assert cache_key(mean, split, 32, "no") != base  # pooling
    with torch.no_grad():
        model.backbone.encoder.layer[0].output.dense.weight[0, 0] += 1.0
    assert cache_key(model, split, 32, "no") != base  # backbone weights
    model.tokenizer.truncation_side = "left"
    other = BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"])
    other.tokenizer.truncation_side = "left"
    assert cache_key(other, split, 32, "no") != cache_key(
        BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"]), split, 32, "no"
    )  # tokenizer truncation


def test_same_path_new_content_is_not_served_stale(tiny_bert, tiny_data, tmp_path):
    cache = tmp_path / "cache"
    data = dict(tiny_data)
    data["train"] = write_csv(tmp_path / "train.csv", make_rows(96, 1))
    first = train(frozen_cfg(tiny_bert, data, tmp_path / "a", cache))
    write_csv(tmp_path / "train.csv", make_rows(96, 5))  # same file name, other texts
    second = train(frozen_cfg(tiny_bert, data, tmp_path / "b", cache))
    assert first["feature_cache"]["splits_reused"] == 0
    assert second["feature_cache"]["splits_reused"] == 2  # validation and test only


def test_damaged_cache_entry_is_recomputed(tiny_bert, tiny_data, tmp_path):
    cache = tmp_path / "cache"
    train(frozen_cfg(tiny_bert, tiny_data, tmp_path / "a", cache))
    for entry in cache.glob("*.safetensors"):
        entry.write_bytes(b"garbage")
    again = train(frozen_cfg(tiny_bert, tiny_data, tmp_path / "b", cache))
    assert again["feature_cache"]["splits_reused"] == 0
    assert again["test"]["num_examples"] == 40


def test_entries_are_read_memory_mapped_and_a_truncated_one_is_recomputed(tiny_bert, tiny_data, tmp_path, monkeypatch):
    import numpy as np
    from accelerate import Accelerator

    from bertcls.cache import load_or_compute, open_features

    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"])
    split, accelerator = load_split(str(tiny_data["train"])), Accelerator(cpu=True)
    computed, hit = load_or_compute(model, split, 32, "no", accelerator, tmp_path)
    assert not hit
    # The returned tensor maps the entry (bertcls only ever replaces entries whole, by rename, which leaves a mapping
    # intact); this test rewrites the file in place below, so it keeps a copy.
    computed = computed.clone()
    (entry,) = tmp_path.glob("*.safetensors")
    mapped = []
    real_memmap = np.memmap
    monkeypatch.setattr(np, "memmap", lambda *a, **k: mapped.append(a[0]) or real_memmap(*a, **k))
    stored, hit = load_or_compute(model, split, 32, "no", accelerator, tmp_path)
    assert hit and mapped == [entry]
    assert stored.shape == (len(split), 32) and torch.equal(stored, computed)
    entry.write_bytes(entry.read_bytes()[:-8])  # the last row cut short
    with pytest.raises(ValueError, match="not a complete"):
        open_features(entry)
    again, hit = load_or_compute(model, split, 32, "no", accelerator, tmp_path)
    assert not hit and torch.equal(again, computed)


def test_cache_off_or_unfrozen_layers_use_the_backbone(tiny_bert, tiny_data, tmp_path):
    off = train(frozen_cfg(tiny_bert, tiny_data, tmp_path / "a", tmp_path / "c", "train.cache=false"))
    assert not off["feature_cache"]["used"]
    top = train(frozen_cfg(tiny_bert, tiny_data, tmp_path / "b", tmp_path / "c", "model.unfreeze_top_k=1"))
    assert not top["feature_cache"]["used"]
    assert not (tmp_path / "c").exists()


def test_lp_ft_probes_on_the_cache_then_fine_tunes_everything(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(
        tiny_bert,
        tiny_data,
        out,
        "train.schedule=lp_ft",
        "train.lp_epochs=2",
        "train.head_solver=adamw",  # phase 1 in epochs (its default, an L-BFGS fit, is tested below)
        "train.epochs=1",
        f"train.cache_dir={tmp_path / 'cache'}",
    )
    result = train(cfg)
    assert result["schedule"] == "lp_ft"
    assert [h["step"] for h in result["linear_probe"]["history"]] == [12, 24]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3  # phase 1 ran on cached features
    start = BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"], seed=42)
    probe = BertForTextClassification.from_pretrained(out / "linear_probe" / "best")
    final = BertForTextClassification.from_pretrained(out / "best")
    for k, v in start.backbone.state_dict().items():
        assert torch.equal(probe.backbone.state_dict()[k], v), k  # phase 1 left the backbone alone
    w = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(final.backbone.state_dict()[w], start.backbone.state_dict()[w])  # phase 2 did not
    assert not torch.equal(probe.head.layers[-1].weight, start.head.layers[-1].weight)
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert metrics["linear_probe"]["test"]["num_examples"] == 40


def test_lp_ft_probe_is_an_lbfgs_fit_by_default(tiny_bert, tiny_data, tmp_path):
    from bertcls.probe import C_GRID

    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "train.schedule=lp_ft", "train.max_steps=2")
    result = train(cfg)
    assert [h["C"] for h in result["linear_probe"]["history"]] == list(C_GRID)
    assert result["linear_probe"]["best"]["metric"] == "loss"
