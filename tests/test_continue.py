"""Training on from a checkpoint (``model.name_or_path=runs/a/best``): the model owns how texts are read, a continued
run applies what can change (reading options, dropout) and refuses what cannot (the trained head's pooling, hidden
sizes, activation, initializers) unless ``model.new_head``; config.yaml, best/ and its model card agree."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from bertcls import BertclsError, BertForTextClassification
from bertcls.config import load_config
from bertcls.serialization import HeadChanged
from bertcls.train import main, setup, train

from .conftest import run_cli

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def trained(tiny_bert, tiny_data, tmp_path_factory):
    """A finished tiny run (cls pooling, dropout 0.1, max_length 32, head truncation): its best/ is the checkpoint
    the tests continue from."""
    out = tmp_path_factory.mktemp("first") / "run"
    train(load_config(None, run_args(tiny_bert, tiny_data, out)))
    return out / "best"


def run_args(name_or_path, tiny_data, out, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={name_or_path}",
        f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}",
        "data.test=null",
        "data.max_length=32",
        "train.max_steps=2",
        "train.batch_size=16",
        "train.mixed_precision=no",
        "train.collapse_retries=0",
        "train.recipe=finetune",  # a subprocess: the tiny file would get the few-label recipe (conftest)
        "eval.calibration=none",
        f"output.dir={out}",
        *extra,
    ]


def saved(folder) -> dict:
    return json.loads((folder / "bertcls_config.json").read_text())


# ---------------------------------------------------------------- the Python API


def test_a_checkpoint_takes_new_reading_options_and_dropout(trained, tmp_path):
    model = BertForTextClassification.from_pretrained(
        trained, max_length=16, truncation="tail", window_stride=4, dropout=0.3
    )
    assert model.reading == {"max_length": 16, "truncation": "tail", "window_stride": 4}
    assert model.spec.dropout == 0.3
    assert {m.p for m in model.head.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    model.save_pretrained(tmp_path / "again")
    config = saved(tmp_path / "again")
    assert (config["max_length"], config["truncation"], config["window_stride"]) == (16, "tail", 4)
    assert config["head"]["dropout"] == 0.3
    # Options not given keep the checkpoint's, and so does its head.
    plain = BertForTextClassification.from_pretrained(trained)
    assert plain.reading == {"max_length": 32, "truncation": "head", "window_stride": 0}
    assert plain.spec.dropout == 0.1


def test_a_checkpoint_refuses_to_change_its_trained_head(trained):
    with pytest.raises(HeadChanged, match=r"pooling=cls, not pooling=mean.*new_head=True"):
        BertForTextClassification.from_pretrained(trained, pooling="mean")
    with pytest.raises(BertclsError, match="hidden_sizes=\\[\\], not hidden_sizes=\\[8\\]"):
        BertForTextClassification.from_pretrained(trained, hidden_sizes=[8])
    with pytest.raises(BertclsError, match="head_init=xavier_uniform, not head_init=orthogonal"):
        BertForTextClassification.from_pretrained(trained, head_init="orthogonal")
    with pytest.raises(BertclsError, match="bias_init=zeros, not bias_init=normal"):
        BertForTextClassification.from_pretrained(trained, bias_init="normal")
    # The same head, however it is written, continues.
    same = BertForTextClassification.from_pretrained(
        trained, labels=LABELS, pooling="cls", hidden_sizes=(), head_init={"name": "xavier_uniform"}
    )
    assert same.spec.pooling == "cls"


def test_new_head_keeps_the_fine_tuned_backbone(trained):
    old = BertForTextClassification.from_pretrained(trained)
    new = BertForTextClassification.from_pretrained(
        trained, labels=["a", "b", "c"], pooling="mean", hidden_sizes=[8], new_head=True, seed=0
    )
    assert (new.labels, new.spec.pooling, new.spec.hidden_sizes) == (["a", "b", "c"], "mean", [8])
    assert new.temperature is None
    backbone = old.backbone.state_dict()
    assert all(torch.equal(v, backbone[k]) for k, v in new.backbone.state_dict().items())
    assert new.reading == old.reading  # the checkpoint's reading options, none given
    with pytest.raises(BertclsError, match="new_head=True"):
        BertForTextClassification.from_pretrained(trained, labels=["a", "b", "c"])


def test_max_length_is_capped_by_the_model(tiny_bert):
    # The tiny encoder has 72 positions; the cap lives in the model, for a new head and a later change alike.
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, max_length=500)
    assert model.max_length == 72
    model.set_reading(max_length=1000)
    assert model.max_length == 72
    with pytest.raises(BertclsError, match="truncation"):
        model.set_reading(truncation="middle")


# ---------------------------------------------------------------- a run continued from a checkpoint


def test_continued_run_reads_texts_as_configured_and_records_it(trained, tiny_data, tmp_path):
    """The issue's case: data.max_length=64-style options on a checkpoint trained at another length used to train at
    the new length while best/ recorded the old one (and predict then read at the old one)."""
    out = tmp_path / "run"
    options = ("data.max_length=16", "data.truncation=tail", "model.dropout=0.5")
    cfg = load_config(None, run_args(trained, tiny_data, out, *options))
    run = setup(cfg)  # the datasets read texts as the model does
    assert run.model.reading == {"max_length": 16, "truncation": "tail", "window_stride": 0}
    assert max(run.train_ds.lengths) <= 16 and max(run.val_ds.lengths) <= 16
    run.accelerator.free_memory()

    main(run_args(trained, tiny_data, out, *options, "output.overwrite=true"))
    config_yaml = yaml.safe_load((out / "config.yaml").read_text())
    best = saved(out / "best")
    card = (out / "best" / "README.md").read_text()
    assert config_yaml["data"]["max_length"] == best["max_length"] == 16
    assert config_yaml["data"]["truncation"] == best["truncation"] == "tail"
    assert config_yaml["model"]["dropout"] == best["head"]["dropout"] == 0.5
    assert config_yaml["model"]["pooling"] == best["head"]["pooling"] == "cls"
    assert "**Max length:** 16 tokens (longer texts: truncation `tail`)" in card
    assert "**Dropout:** 0.5" in card
    reloaded = BertForTextClassification.from_pretrained(out / "best")
    assert reloaded.reading["max_length"] == 16 and reloaded.spec.dropout == 0.5


def test_continued_run_refuses_a_head_change_in_one_line(trained, tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("bertcls.train", *run_args(trained, tiny_data, out, "model.pooling=mean"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "model.pooling=cls, not model.pooling=mean" in proc.stderr
    assert "set model.pooling=cls to continue it, or model.new_head=true" in proc.stderr
    assert not out.exists()  # refused before anything was written


def test_new_head_run_trains_another_head_on_the_checkpoint(trained, tiny_data, tmp_path):
    out = tmp_path / "run"
    main(run_args(trained, tiny_data, out, "model.pooling=mean", "model.new_head=true"))
    assert saved(out / "best")["head"]["pooling"] == "mean"
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["new_head"] is True
