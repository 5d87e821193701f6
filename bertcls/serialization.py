"""Models on disk: saving and loading bertcls checkpoints, loading pretrained backbones, refusing pickles.

A checkpoint folder holds ``model.safetensors`` (every weight, backbone and head), ``bertcls_config.json`` (the
head's spec, the backbone's config and how texts are read), the tokenizer's files and a ``README.md`` model card.
Weights are read from safetensors only: bertcls never unpickles a file, because unpickling can run code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from bertcls.atomic import atomic_dir
from bertcls.errors import BertclsError, first_line
from bertcls.init import InitSpec, label_texts
from bertcls.model import POOLINGS, BertForTextClassification, HeadSpec
from bertcls.multilabel import DEFAULT_DELIMITER
from bertcls.resources import is_packaged, packaged_model_dir
from bertcls.tasks import get_task

CONFIG_NAME = "bertcls_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


# ---------------------------------------------------------------- saving


def save_pretrained(
    model: BertForTextClassification, directory: str | os.PathLike, card_info: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as a checkpoint folder (safetensors weights, ``bertcls_config.json``, the tokenizer and a
    ``README.md`` model card; ``card_info``: what a training run adds to the card, see ``bertcls.card.model_card``).
    The folder appears whole or not at all (``bertcls.atomic.atomic_dir``). Returns its path."""
    from bertcls.card import write_model_card

    target = Path(directory)
    with atomic_dir(target) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt", "bertcls_format": str(FORMAT_VERSION)})
        model.tokenizer.save_pretrained(tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(checkpoint_config(model), indent=2, default=str))
        write_model_card(tmp, model, card_info)
    return target


def checkpoint_config(model: BertForTextClassification) -> dict[str, Any]:
    """What ``bertcls_config.json`` records: enough to rebuild the model around its saved weights."""
    config = {
        "format_version": FORMAT_VERSION,
        "head": asdict(model.spec),
        "max_length": model.max_length,
        "truncation": model.truncation,
        "window_stride": model.window_stride,
        "freeze_backbone": model.freeze_backbone,
        "unfreeze_top_k": model.unfreeze_top_k,
        "backbone_config": model.backbone.config.to_dict(),
    }
    config.update(get_task(model.task).saved_decision(model))
    if model.temperature is not None:
        config["temperature"] = model.temperature
    return config


# ---------------------------------------------------------------- loading


def from_pretrained(
    name_or_path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    *,
    head_init: InitSpec = "xavier_uniform",
    bias_init: InitSpec = "zeros",
    pooling: str = "cls",
    dropout: float = 0.1,
    hidden_sizes: Sequence[int] = (),
    activation: str = "gelu",
    freeze_backbone: bool | None = None,
    unfreeze_top_k: int = 0,
    max_length: int | None = None,
    seed: int | None = None,
    attn_implementation: str | None = "sdpa",
    task: str | None = None,
    label_descriptions: str | Mapping[str, str] | None = None,
) -> BertForTextClassification:
    """Load a saved bertcls checkpoint, or a pretrained backbone (folder, hub name or ``packaged:...``) with a new
    head for ``labels``; ``task`` is ``single_label`` (the default for a new head) or ``multi_label`` (for a
    checkpoint: checked against the one it was trained for). ``label_descriptions`` (a template with ``{}`` or a
    {label: text} map) gives each label's text to initializers that read one (``label_embeddings``).
    ``BertForTextClassification.from_pretrained`` is this.

    Raises:
        BertclsError: missing folder, pickle-only weights, corrupt checkpoint, missing labels, bad options.
    """
    name = str(name_or_path)
    if is_packaged(name):
        name = str(packaged_model_dir(name))
    path = Path(name).expanduser()
    if (path / CONFIG_NAME).is_file():
        model = _load_checkpoint(path)
        if labels is not None and list(map(str, labels)) != model.labels:
            raise BertclsError(
                f"checkpoint {path} was trained for labels {model.labels}, not {list(labels)}; "
                "load it without labels, or start from its backbone"
            )
        if task is not None and task != model.task:
            raise BertclsError(
                f"checkpoint {path} is a {model.task} classifier, not {task}; start from its backbone instead"
            )
        if freeze_backbone is not None:
            model.set_trainable(freeze_backbone, unfreeze_top_k)
        return model
    if labels is None:
        raise BertclsError(f"'{name}' is a backbone, not a bertcls checkpoint: pass labels=[...] for the new head")
    spec = HeadSpec(
        labels=list(labels),
        pooling=pooling,
        dropout=dropout,
        hidden_sizes=list(hidden_sizes),
        activation=activation,
        head_init=head_init,
        bias_init=bias_init,
        task=task or "single_label",
    )
    spec.check_inits()  # before the backbone loads: a typo costs nothing
    texts = label_texts(spec.labels, label_descriptions)
    backbone, tokenizer = load_backbone(name, attn_implementation)
    return BertForTextClassification(
        backbone, tokenizer, spec, bool(freeze_backbone), unfreeze_top_k, max_length, seed, label_texts=texts
    )


def load_checkpoint(path: str | os.PathLike, speedups: bool = True) -> BertForTextClassification:
    """A saved bertcls checkpoint, for the tools that only use one (evaluate, predict, export): a plain backbone
    folder is an error here rather than a request for a new head. ``speedups``: apply ``bertcls.speed`` (same
    predictions, faster on CPU).

    Raises:
        BertclsError: the folder is missing, is not a bertcls checkpoint, or is corrupt.
    """
    folder = Path(path).expanduser()
    if folder.is_file():
        raise BertclsError(f"checkpoint {folder} is a file; give the folder that holds it ({folder.parent})")
    if not folder.is_dir():
        raise BertclsError(f"checkpoint folder {folder} does not exist")
    if not (folder / CONFIG_NAME).is_file():
        raise BertclsError(
            f"{folder} is not a bertcls checkpoint (no {CONFIG_NAME}); give a folder written by bertcls.train "
            "(e.g. runs/default/best) or by model.save_pretrained"
        )
    model = from_pretrained(folder)
    if speedups:
        from bertcls import speed

        speed.apply(model)
    return model


def checkpoint_task(path: str | os.PathLike) -> tuple[str, str]:
    """(task, label delimiter) of a saved checkpoint, read from its config without loading weights; a folder that
    is not a readable checkpoint gives the single-label defaults (loading it later says what is wrong)."""
    try:
        config = json.loads((Path(path).expanduser() / CONFIG_NAME).read_text())
        return str(config["head"].get("task", "single_label")), str(config.get("label_delimiter", DEFAULT_DELIMITER))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return "single_label", DEFAULT_DELIMITER


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(os.sep) or os.sep * 2 in name or name.count("/") > 1


def refuse_pickle_only(path: Path) -> None:
    """Refuse a folder whose weights exist only as pickle files: loading them could run arbitrary code."""
    files = [p.name for p in path.iterdir() if p.is_file()]
    if not any(f.endswith(".safetensors") for f in files):
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise BertclsError(
                f"{path} holds only pickle weights ({', '.join(sorted(pickles))}); bertcls never unpickles files "
                "because that can run code: convert them to safetensors first"
            )
        raise BertclsError(f"{path} has no model weights (*.safetensors)")


def load_backbone(name: str, attn_implementation: str | None = "sdpa") -> tuple[PreTrainedModel, Any]:
    """A transformers encoder and its tokenizer, from a local folder or a hub name; safetensors only."""
    path = Path(name).expanduser()
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if path.exists():
        if not path.is_dir():
            raise BertclsError(f"model path {path} is a file; give the folder that holds config.json and the weights")
        if not (path / "config.json").is_file():
            raise BertclsError(f"{path} has no config.json: not a Hugging Face model folder or bertcls checkpoint")
        refuse_pickle_only(path)
        name = str(path)
    elif _looks_like_path(name):
        raise BertclsError(f"model folder {name} does not exist")
    try:
        backbone = AutoModel.from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        where = "folder" if path.exists() else "hub model (needs internet; set HF_HUB_OFFLINE=0)"
        first = first_line(e)
        raise BertclsError(f"could not load {where} '{name}': {first}") from e
    return backbone, tokenizer


def check_saved_pooling(path: Path, pooling: Any) -> None:
    """A checkpoint's pooling runs at every prediction, so a user-registered one must be registered again."""
    if isinstance(pooling, str) and pooling not in POOLINGS:
        raise BertclsError(
            f"checkpoint {path} uses pooling '{pooling}', which is not registered in this process; register it "
            f"before loading (@bertcls.register_pooling('{pooling}') on the same function; built in: "
            f"{', '.join(POOLINGS)})"
        )


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], HeadSpec, dict[str, Any], Any]:
    """The checkpoint's config, head spec, weights and tokenizer, each checked with a one-line error."""
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
        check_saved_pooling(path, config["head"].get("pooling", "cls"))
        spec = HeadSpec(**config["head"])
        config["backbone_config"] = dict(config["backbone_config"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise BertclsError(f"checkpoint {path}: {CONFIG_NAME} is corrupt or truncated ({type(e).__name__})") from e
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        refuse_pickle_only(path)
        raise BertclsError(f"checkpoint {path} has no {WEIGHTS_NAME}")
    try:
        state = load_file(weights)
    except Exception as e:  # safetensors raises its own error types for every kind of corruption
        raise BertclsError(f"checkpoint {path}: {WEIGHTS_NAME} is corrupt ({str(e).splitlines()[0]})") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise BertclsError(f"checkpoint {path}: tokenizer files are missing or unreadable; re-save the model") from e
    return config, spec, state, tokenizer


def _backbone_from_config(path: Path, saved: dict[str, Any]) -> PreTrainedModel:
    """An encoder with the saved config and random weights (the checkpoint's weights are loaded next)."""
    backbone_config = dict(saved)  # a copy: the model_type is popped
    model_type = backbone_config.pop("model_type", None)
    if model_type is None:
        raise BertclsError(f"checkpoint {path}: {CONFIG_NAME} does not say the backbone's model_type")
    backbone_config.pop("transformers_version", None)
    bb_config = AutoConfig.for_model(model_type, **backbone_config)
    bb_config._attn_implementation = "sdpa"
    return AutoModel.from_config(bb_config)


def _saved_temperature(value: Any, num_labels: int, path: Path) -> float | list[float] | None:
    """The recorded temperature: None, a positive number, or one positive number per label."""
    values = value if isinstance(value, list) else [value]
    ok = value is None or (
        all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)
        and (not isinstance(value, list) or len(value) == num_labels)
    )
    if not ok:
        raise BertclsError(f"checkpoint {path}: {CONFIG_NAME} has a bad temperature ({value!r})")
    return value if value is None or isinstance(value, list) else float(value)


def _load_checkpoint(path: Path) -> BertForTextClassification:
    config, spec, state, tokenizer = _read_checkpoint(path)
    model = BertForTextClassification(
        _backbone_from_config(path, config["backbone_config"]),
        tokenizer,
        spec,
        freeze_backbone=config.get("freeze_backbone", False),
        unfreeze_top_k=config.get("unfreeze_top_k", 0),
        max_length=config.get("max_length"),
        truncation=config.get("truncation", "head"),
        window_stride=config.get("window_stride", 0),
        init_head=False,
    )
    try:
        get_task(model.task).load_saved_decision(model, config)
    except (BertclsError, TypeError, ValueError) as e:
        raise BertclsError(f"checkpoint {path}: {CONFIG_NAME} has bad thresholds ({e})") from e
    model.temperature = _saved_temperature(config.get("temperature"), model.num_labels, path)
    expected = set(model.state_dict())
    got = set(state)
    if expected != got:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise BertclsError(
            f"checkpoint {path}: weights do not match its config (missing {missing[:3]}, unexpected {extra[:3]}); "
            "was the label set or head changed by hand?"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        line = next((s.strip() for s in str(e).splitlines() if "size mismatch" in s), str(e).splitlines()[0])
        raise BertclsError(f"checkpoint {path}: weights do not match its config ({line})") from e
    return model
