"""Models on disk: saving and loading bertcls checkpoints, loading pretrained backbones, refusing pickles.

A checkpoint folder holds ``model.safetensors`` (every weight, backbone and head), ``bertcls_config.json`` (the
head's spec, the backbone's config and how texts are read), the tokenizer's files and a ``README.md`` model card.
Weights are read from safetensors only: bertcls never unpickles a file, because unpickling can run code.
``bertcls.model`` calls these with its class (``model_class``): this module builds models without importing them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.initialization import no_init_weights

from bertcls.atomic import atomic_dir
from bertcls.errors import BertclsError, first_line
from bertcls.heads import POOLINGS, HeadSpec
from bertcls.init import InitSpec, label_texts
from bertcls.multilabel import DEFAULT_DELIMITER
from bertcls.resources import is_packaged, packaged_model_dir
from bertcls.tasks import get_task

if TYPE_CHECKING:  # the model imports this module, never the other way round
    from bertcls.model import BertForTextClassification

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


# What defines a trained head and so cannot change under it; a new head (new_head) takes any of them.
HEAD_FIXED = ("pooling", "hidden_sizes", "activation", "head_init", "bias_init")


class HeadChanged(BertclsError):
    """A continued checkpoint was asked for a head other than the one it trained (``HEAD_FIXED``)."""

    def __init__(self, path: Path, changes: dict[str, tuple[Any, Any]]):
        self.path, self.changes = path, changes
        super().__init__(self.describe())

    def describe(self, prefix: str = "", new_head: str = "new_head=True") -> str:
        """The one-line error, naming the options as the caller knows them (``model.`` in a config)."""
        saved = ", ".join(f"{prefix}{k}={_shown(old)}" for k, (old, _) in self.changes.items())
        asked = ", ".join(f"{prefix}{k}={_shown(new)}" for k, (_, new) in self.changes.items())
        return (
            f"checkpoint {self.path} has a trained head with {saved}, not {asked}: a trained head keeps its "
            f"pooling, hidden sizes, activation and initializers; set {saved} to continue it, or {new_head} to "
            "train a new head on its backbone"
        )


def _shown(value: Any) -> str:
    """An option's value as it is written on the command line."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return f"[{', '.join(map(str, value))}]" if isinstance(value, (list, tuple)) else str(value)


def _init_key(spec: Any) -> tuple[Any, dict[str, Any]]:
    """An initializer as (name, params): `xavier_uniform` and `{name: xavier_uniform}` are one initializer."""
    if isinstance(spec, str):
        return spec, {}
    return spec.get("name"), {k: v for k, v in spec.items() if k != "name"}


def _same(key: str, saved: Any, asked: Any) -> bool:
    if key in ("head_init", "bias_init"):
        return _init_key(saved) == _init_key(asked)
    if key == "hidden_sizes":
        return list(map(int, saved)) == list(map(int, asked))
    return saved == asked


def from_pretrained(
    name_or_path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    *,
    head_init: InitSpec | None = None,
    bias_init: InitSpec | None = None,
    pooling: str | None = None,
    dropout: float | None = None,
    hidden_sizes: Sequence[int] | None = None,
    activation: str | None = None,
    freeze_backbone: bool | None = None,
    unfreeze_top_k: int = 0,
    max_length: int | None = None,
    truncation: str | None = None,
    window_stride: int | None = None,
    seed: int | None = None,
    attn_implementation: str | None = "sdpa",
    task: str | None = None,
    model_class: type[BertForTextClassification],
    new_head: bool = False,
    label_descriptions: str | Mapping[str, str] | None = None,
) -> BertForTextClassification:
    """Load a saved bertcls checkpoint, or a pretrained backbone (folder, hub name or ``packaged:...``) with a new
    head for ``labels``; ``task`` is ``single_label`` (the default for a new head) or ``multi_label`` (for a
    checkpoint: checked against the one it was trained for). ``BertForTextClassification.from_pretrained`` calls this
    with its class as ``model_class``. ``label_descriptions`` (a template with ``{}`` or a {label: text} map) gives
    each label of a new head its text for initializers that read one (``label_embeddings``).

    Options left ``None`` take the head's defaults (``HeadSpec``) for a new head and the saved values for a
    checkpoint. A checkpoint takes new reading options (``max_length``, ``truncation``, ``window_stride``),
    ``dropout`` and trainability; its head's ``HEAD_FIXED`` options must match, unless ``new_head=True``, which keeps
    its (fine-tuned) backbone and builds a new head (labels and task default to the checkpoint's).

    Raises:
        BertclsError: missing folder, pickle-only weights, corrupt checkpoint, missing labels, bad options;
        HeadChanged (a BertclsError): a checkpoint's head asked to change what it cannot.
    """
    name = str(name_or_path)
    if is_packaged(name):
        name = str(packaged_model_dir(name))
    path = Path(name).expanduser()
    given = {"pooling": pooling, "hidden_sizes": hidden_sizes, "activation": activation}
    given |= {"head_init": head_init, "bias_init": bias_init, "dropout": dropout}
    given = {k: v for k, v in given.items() if v is not None}
    reading = {"max_length": max_length, "truncation": truncation, "window_stride": window_stride}
    if (path / CONFIG_NAME).is_file():
        model = _load_checkpoint(path, model_class)
        if new_head:
            spec = _new_spec(labels or model.labels, task or model.task, given)
            model = model_class(
                model.backbone, model.tokenizer, spec, model.freeze_backbone, model.unfreeze_top_k,
                model.max_length, seed, model.truncation, model.window_stride,
                label_texts=label_texts(spec.labels, label_descriptions),
            )  # fmt: skip
        else:
            _check_continued(path, model, labels, task, given)
        model.set_reading(**reading)
        if freeze_backbone is not None:
            model.set_trainable(freeze_backbone, unfreeze_top_k)
        return model
    if labels is None:
        raise BertclsError(f"'{name}' is a backbone, not a bertcls checkpoint: pass labels=[...] for the new head")
    spec = _new_spec(labels, task or "single_label", given)
    texts = label_texts(spec.labels, label_descriptions)
    backbone, tokenizer = load_backbone(name, attn_implementation)
    return model_class(
        backbone, tokenizer, spec, bool(freeze_backbone), unfreeze_top_k, max_length, seed,
        truncation or "head", window_stride or 0, label_texts=texts,
    )  # fmt: skip


def _new_spec(labels: Sequence[str], task: str, given: dict[str, Any]) -> HeadSpec:
    """A new head's spec, its initializers checked before any weights load (a typo costs nothing)."""
    spec = HeadSpec(labels=list(labels), task=task, **given)
    spec.check_inits()
    return spec


def _check_continued(
    path: Path, model: BertForTextClassification, labels: Sequence[str] | None, task: str | None, given: dict
) -> None:
    """A checkpoint's head continues as it was trained: same labels, task and ``HEAD_FIXED`` options; the dropout it
    may change (applied here)."""
    if labels is not None and list(map(str, labels)) != model.labels:
        raise BertclsError(
            f"checkpoint {path} was trained for labels {model.labels}, not {list(labels)}; load it without labels, "
            "or train a new head on its backbone (new_head=True; model.new_head=true in a config)"
        )
    if task is not None and task != model.task:
        raise BertclsError(
            f"checkpoint {path} is a {model.task} classifier, not {task}; train a new head on its backbone "
            "(new_head=True; model.new_head=true in a config)"
        )
    saved = asdict(model.spec)
    changes = {k: (saved[k], v) for k, v in given.items() if k in HEAD_FIXED and not _same(k, saved[k], v)}
    if changes:
        raise HeadChanged(path, changes)
    if "dropout" in given:
        model.set_dropout(given["dropout"])


def checkpoint_folder(path: str | os.PathLike) -> Path:
    """``path`` as a checkpoint folder, for the tools that only use one (``bertcls.model.load_checkpoint``): a plain
    backbone folder is an error here rather than a request for a new head.

    Raises:
        BertclsError: the folder is missing or is not a bertcls checkpoint.
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
    return folder


def checkpoint_task(path: str | os.PathLike) -> tuple[str, str]:
    """(task, label delimiter) of a saved checkpoint, read from its config without loading weights; a folder that
    is not a readable checkpoint gives the single-label defaults (loading it later says what is wrong)."""
    try:
        config = json.loads((Path(path).expanduser() / CONFIG_NAME).read_text())
        return str(config["head"].get("task", "single_label")), str(config.get("label_delimiter", DEFAULT_DELIMITER))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return "single_label", DEFAULT_DELIMITER


def saved_head_options(path: str | os.PathLike) -> dict[str, Any]:
    """The ``HEAD_FIXED`` options of a saved checkpoint's head, read from its config: what continuing it must ask.

    Raises:
        BertclsError: the folder holds no readable bertcls config.
    """
    folder = checkpoint_folder(path)
    try:
        head = json.loads((folder / CONFIG_NAME).read_text())["head"]
        return {key: head[key] for key in HEAD_FIXED}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise BertclsError(
            f"{folder / CONFIG_NAME} is not a readable bertcls config ({e}); save the model again"
        ) from None


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
    """An encoder with the saved config and uninitialized weights (the checkpoint's weights are loaded next)."""
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


def _load_checkpoint(path: Path, model_class: type[BertForTextClassification]) -> BertForTextClassification:
    config, spec, state, tokenizer = _read_checkpoint(path)
    # Built without running any initializer (as transformers' own from_pretrained does): every weight is replaced by
    # the saved one below, strictly, and random draws for ~22M of them were a third of a MiniLM checkpoint's load.
    with no_init_weights():
        model = model_class(
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
    # The loaded tensors become the weights (assign) rather than being copied into the empty ones: no second copy of
    # every weight to write. Cast to the built model's dtypes first, as a copy would.
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    state = {k: v.to(dtypes[k]) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        line = next((s.strip() for s in str(e).splitlines() if "size mismatch" in s), str(e).splitlines()[0])
        raise BertclsError(f"checkpoint {path}: weights do not match its config ({line})") from e
    return model
