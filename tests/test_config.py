"""The config's one source of truth: defaults and docstrings in the dataclasses, configs/*.yaml as differences,
the reference table in docs/configuration.md generated from them."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bertcls import BertclsError
from bertcls.config import (
    TABLE_BEGIN,
    TABLE_END,
    Config,
    field_docs,
    load_config,
    main,
    markdown_table,
    options_help,
    write_markdown,
)

ROOT = Path(__file__).resolve().parents[1]

# What each shipped config resolves to, as keys that differ from Config(): pinned when the files were cut down to
# their differences, so that no shipped setup changed on the way (or changes silently later).
SHIPPED = {
    "default.yaml": {},
    "advanced.yaml": {
        "data.truncation": "head+tail",
        "train.epochs": 3.0,
        "train.early_stopping_patience": 3,
        "train.early_stopping_min_delta": 0.001,
        "train.layer_lr_decay": 0.9,
        "loss.class_weights": "balanced",
        "loss.label_smoothing": 0.05,
        "eval.every_steps": 50,
        "eval.metric": "macro_f1",
        "output.dir": "runs/advanced",
        "output.tracking": ["tensorboard"],
    },
    "bert-base.yaml": {
        "model.name_or_path": "bert-base-uncased",
        "model.head_init": "bert",
        "model.pooling": "pooler",
        "train.epochs": 3.0,
        "train.lr": 2e-05,
        "train.warmup_ratio": 0.1,
        "output.dir": "runs/bert-base",
    },
    "frozen.yaml": {
        "model.pooling": "mean",
        "model.freeze_backbone": True,
        "output.dir": "runs/frozen",
    },
    "multilabel.yaml": {
        "data.train": "data/train.jsonl",
        "data.validation": "data/validation.csv",
        "data.test": "data/test.jsonl",
        "data.task": "multi_label",
        "loss.pos_weight": "balanced",
        "eval.metric": "micro_f1",
        "eval.threshold": "tune",
        "output.dir": "runs/multilabel",
    },
}


def flat(d: dict) -> dict:
    return {f"{section}.{key}": value for section, values in d.items() for key, value in values.items()}


def test_every_shipped_config_is_pinned():
    assert sorted(p.name for p in (ROOT / "configs").glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_resolves_as_pinned(name):
    defaults = flat(dataclasses.asdict(load_config(None)))
    resolved = flat(dataclasses.asdict(load_config(ROOT / "configs" / name)))
    assert {k: v for k, v in resolved.items() if defaults[k] != v} == SHIPPED[name]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_holds_only_differences(name):
    raw = flat(OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / name)) or {})
    defaults = flat(OmegaConf.to_container(OmegaConf.structured(Config)))
    assert [k for k, v in raw.items() if defaults[k] == v] == []


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_no_shipped_config_mixes_shipped_data_into_a_users_run(name):
    """With a user's data.train, a shipped config's validation and test are the user's own or none, never a packaged
    split (which would pick checkpoints, penalty and temperature and report a test score on movie reviews)."""
    from bertcls.config import resolve_split
    from bertcls.run_data import split_sources

    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / name)) or {}
    cfg = load_config(ROOT / "configs" / name, ["data.train=my.csv"])
    for split in ("validation", "test"):
        resolved = resolve_split(cfg.data, split)
        assert resolved is None or not resolved.startswith("packaged:"), (split, resolved)
        assert resolved == (raw.get("data") or {}).get(split)  # only what the file names for itself
    sources = split_sources(cfg)
    assert "packaged:" not in sources["validation"] + sources["test"]
    if resolve_split(cfg.data, "validation") is None:
        assert sources["validation"] == "10% cut from train (seed 42)"
    # The shipped run itself (its packaged train) keeps the packaged validation and test splits.
    shipped = load_config(ROOT / "configs" / name)
    if shipped.data.train.startswith("packaged:"):
        assert resolve_split(shipped.data, "validation") == "packaged:rotten_tomatoes/validation"
        assert resolve_split(shipped.data, "test") == "packaged:rotten_tomatoes/test"


def test_split_sources_say_where_each_split_comes_from():
    from bertcls.run_data import split_sources

    default = split_sources(load_config(None, []))
    assert default == {
        "train": "packaged:rotten_tomatoes/train",
        "validation": "packaged:rotten_tomatoes/validation (data.validation=auto: the packaged train's own "
        "validation split)",
        "test": "packaged:rotten_tomatoes/test (data.test=auto: the packaged train's own test split)",
    }
    own = split_sources(load_config(None, ["data.train=my.csv", "train.seed=7"]))
    assert own["validation"] == "10% cut from train (seed 7)"
    assert own["test"].startswith("none (data.test=auto and train is not a packaged split; set data.test=FILE")
    # Shipped splits beside a user's own train: allowed only as the user wrote them, and said so.
    mixed = split_sources(load_config(None, ["data.train=my.csv", "data.test=packaged:rotten_tomatoes/test"]))
    assert mixed["test"] == "packaged:rotten_tomatoes/test (data.test as set, shipped data beside your own train)"
    given = split_sources(load_config(None, ["data.train=my.csv", "data.validation=v.csv", "data.test=null"]))
    assert given["validation"] == "v.csv (data.validation as set)"
    assert given["test"].startswith("none (data.test=null;")
    assert split_sources(load_config(None, ["data.validation_fraction=0", "data.train=a.csv"]))["validation"] == (
        "none (data.validation_fraction=0)"
    )


def test_default_yaml_sets_nothing():
    assert OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "default.yaml")) == {}


def test_every_field_has_a_docstring():
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        docs = field_docs(cls)
        assert [f.name for f in dataclasses.fields(cls)] == list(docs), cls.__name__
        assert all(len(text) > 10 for text in docs.values()), cls.__name__
        assert cls.__doc__, cls.__name__


def test_help_and_docs_read_the_docstrings():
    help_text, table = options_help(), markdown_table()
    # "Gradient clipping norm (0: off)." is train.max_grad_norm's docstring, and nowhere else.
    assert "train.max_grad_norm = 1.0\n      Gradient clipping norm (0: off)." in help_text
    assert "| `train.max_grad_norm` | `1.0` | Gradient clipping norm (0: off). |" in table
    assert "| `data.label_delimiter` | `\\|` |" in table  # a | inside a cell is escaped
    assert "`" not in help_text


def test_committed_config_reference_is_generated(tmp_path):
    doc = tmp_path / "configuration.md"
    shutil.copy(ROOT / "docs" / "configuration.md", doc)
    changed = write_markdown(doc)
    assert not changed, "docs/configuration.md is stale: run python -m bertcls.config --markdown docs/configuration.md"
    assert markdown_table() in doc.read_text()


def test_write_markdown_replaces_only_its_region(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\n<!-- config-table: old -->\n")
    with pytest.raises(BertclsError, match="no generated region"):
        write_markdown(doc)
    doc.write_text(f"# Title\n\nbefore\n{TABLE_BEGIN}\nstale table\n{TABLE_END}\nafter\n")
    main(["--markdown", str(doc)])
    assert capsys.readouterr().out.endswith("updated\n")
    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{TABLE_END}\nafter\n")
    assert "stale table" not in text and markdown_table() in text
    main(["--markdown", str(doc)])
    assert capsys.readouterr().out.endswith("up to date\n")
