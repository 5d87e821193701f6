"""bertcls.speed: the CPU tricks behind one switch. With them on or off the model computes the same thing, so the
equality checks of the other test files (save/load, exact accumulation, reproducible and resumable runs) run here
both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from bertcls import BertForTextClassification, speed
from bertcls.model import load_checkpoint
from bertcls.speed import toplayer
from bertcls.speed.dropout import ATTENTION, FastDropout
from bertcls.train import train

from . import test_accumulation
from .test_reliability import kill_and_resume_matches, numbers
from .test_train import tiny_cfg

LABELS = ["negative", "positive"]
SWITCH = pytest.mark.parametrize("speedups", [True, False], ids=["speedups", "no-speedups"])


def built(tiny_bert, speedups: bool, **options) -> BertForTextClassification:
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, seed=0, **options)
    if speedups:
        speed.apply(model)
    return model


def test_apply_installs_the_model_tricks_and_building_a_model_installs_none(tiny_bert):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {nn.Dropout}
    assert model.backbone.config._attn_implementation == "sdpa"
    assert not hasattr(model.encoder_layers()[-1], toplayer.FLAG)
    dropouts = len([m for m in model.modules() if isinstance(m, nn.Dropout)])
    applied = speed.apply(model)
    assert applied == {"fast_dropouts": dropouts, "first_token_top_layer": True}
    assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {FastDropout}
    assert model.backbone.config._attn_implementation == ATTENTION
    assert hasattr(model.encoder_layers()[-1], toplayer.FLAG)
    assert not speed.apply(built(tiny_bert, False, pooling="mean"))["first_token_top_layer"]
    evaluating = built(tiny_bert, False).eval()
    speed.apply(evaluating)  # a model in eval mode keeps its dropout off
    assert not any(m.training for m in evaluating.modules() if isinstance(m, nn.Dropout))


def test_importing_bertcls_registers_nothing_in_transformers():
    code = (
        "import bertcls.train, bertcls.serialization, bertcls.speed.dropout, bertcls.speed.toplayer\n"
        "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS\n"
        f"assert {ATTENTION!r} not in ALL_ATTENTION_FUNCTIONS\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_deep_copy_of_a_fast_model_runs_its_own_layers(tiny_bert):
    import copy

    model = built(tiny_bert, True).eval()
    twin = copy.deepcopy(model)
    batch = model.tokenizer(["a good film", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        twin.head.layers[-1].bias.add_(1.0)  # only the copy changes
        assert torch.allclose(twin(**batch).logits, model(**batch).logits + 1.0, atol=1e-6)


@SWITCH
def test_save_and_load_checkpoint_give_bitwise_identical_logits(tiny_bert, tmp_path, speedups):
    model = built(tiny_bert, speedups).eval()
    model.save_pretrained(tmp_path / "ckpt")
    again = load_checkpoint(tmp_path / "ckpt", speedups=speedups).eval()
    batch = model.tokenizer(
        ["a good film", "the plot was very dull and weak", "bad"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    assert (again.backbone.config._attn_implementation == ATTENTION) == speedups


@SWITCH
@pytest.mark.parametrize(
    "task,weights,sizes",
    [
        ("single_label", torch.tensor([1.0, 3.0, 0.5]), [4, 4, 2]),
        ("multi_label", torch.tensor([2.0, 0.5, 1.0]), [3, 1]),
    ],
)
def test_accumulated_gradient_equals_one_big_batch(tiny_bert, monkeypatch, speedups, task, weights, sizes):
    original = test_accumulation.model_and_batches

    def model_and_batches(*args):
        model, group, whole = original(*args)
        if speedups:
            speed.apply(model)
        return model, group, whole

    monkeypatch.setattr(test_accumulation, "model_and_batches", model_and_batches)
    test_accumulation.test_accumulated_gradient_equals_one_big_batch(tiny_bert, task, weights, sizes)


@SWITCH
def test_a_run_applies_the_switch_and_is_reproducible(tiny_bert, tiny_data, tmp_path, monkeypatch, speedups):
    applied = []
    apply = speed.apply

    def recording_apply(model):
        applied.append(apply(model))

    monkeypatch.setattr(speed, "apply", recording_apply)
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    switch = f"train.speedups={str(speedups).lower()}"
    for name in ("a", "b"):
        train(tiny_cfg(tiny_bert, tiny_data, tmp_path / name, "train.max_steps=6", "eval.every_steps=3", switch))
    assert numbers(tmp_path / "a" / "metrics.json") == numbers(tmp_path / "b" / "metrics.json")
    assert len(applied) == (2 if speedups else 0)
    assert ("ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ) == speedups
    config = json.loads((tmp_path / "a" / "best" / "bertcls_config.json").read_text())
    assert config["head"]["labels"] == LABELS  # the saved checkpoint does not depend on the switch


@pytest.mark.integration
def test_kill_and_resume_without_speedups_matches_an_uninterrupted_run(tiny_bert, tiny_data, tmp_path, monkeypatch):
    # With speedups (the default) this is test_reliability's run; torch's own dropout must resume exactly too.
    assert kill_and_resume_matches(tiny_bert, tiny_data, tmp_path, monkeypatch, "train.speedups=false")
