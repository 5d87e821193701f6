"""BertForTextClassification: a pretrained encoder, a pooling choice, dropout and a classification head.

It is a plain ``nn.Module`` that *holds* a transformers backbone rather than a ``PreTrainedModel`` subclass: in
transformers v5, ``post_init``/``from_pretrained`` re-initialize custom modules of a subclass (transformers issues
46620, 42418), which would silently replace the head initializer the user chose. Here the head is initialized by
bertcls alone, after the backbone is loaded, and never touched by transformers.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.activations import ACT2FN
from transformers.modeling_outputs import SequenceClassifierOutput

from bertcls import toplayer
from bertcls.card import write_model_card
from bertcls.dropout import use_fast_dropout
from bertcls.errors import BertclsError, first_line
from bertcls.init import InitSpec, apply_init, init_tensor, parse_init, warn_if_symmetric
from bertcls.multilabel import (
    DEFAULT_DELIMITER,
    DEFAULT_THRESHOLD,
    check_task,
    check_thresholds,
    prediction_dicts,
)
from bertcls.resources import is_packaged, packaged_model_dir

CONFIG_NAME = "bertcls_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

# ---------------------------------------------------------------- pooling registry

PoolFn = Callable[[Any, torch.Tensor], torch.Tensor]
POOLINGS: dict[str, PoolFn] = {}


def register_pooling(name: str) -> Callable[[PoolFn], PoolFn]:
    """Decorator: ``fn(backbone_outputs, attention_mask) -> (batch, hidden)`` becomes pooling ``name``."""

    def add(fn: PoolFn) -> PoolFn:
        POOLINGS[name] = fn
        return fn

    return add


@register_pooling("cls")
def pool_cls(outputs, attention_mask: torch.Tensor) -> torch.Tensor:
    return outputs.last_hidden_state[:, 0]


@register_pooling("pooler")
def pool_pooler(outputs, attention_mask: torch.Tensor) -> torch.Tensor:
    # BERT's pooler (dense + tanh over [CLS]), what transformers' BertForSequenceClassification classifies.
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None:
        raise BertclsError("pooling 'pooler' needs a backbone with a pooler layer (BERT); use 'cls' or 'mean'")
    return pooled


# Poolings that read the top layer at position 0 only (the top layer then computes only that position).
FIRST_TOKEN_POOLINGS = ("cls", "pooler")


@register_pooling("mean")
def pool_mean(outputs, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(outputs.last_hidden_state.dtype)
    return (outputs.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def check_choice(kind: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise BertclsError(f"unknown {kind} '{value}'; valid: {', '.join(sorted(valid))}")


# ---------------------------------------------------------------- head


@dataclass
class HeadSpec:
    """Everything that defines the head; saved in the checkpoint's JSON so the model can be rebuilt."""

    labels: list[str]
    pooling: str = "cls"
    dropout: float = 0.1
    hidden_sizes: list[int] = field(default_factory=list)
    activation: str = "gelu"
    head_init: InitSpec = "xavier_uniform"
    bias_init: InitSpec = "zeros"
    # single_label: softmax over the labels, one label per text; multi_label: a sigmoid per label, a set per text.
    task: str = "single_label"

    def __post_init__(self) -> None:
        check_task(self.task)
        if len(self.labels) < 2:
            raise BertclsError(f"a classifier needs at least 2 labels, got {self.labels!r}")
        if len(set(self.labels)) != len(self.labels):
            raise BertclsError(f"labels must be unique, got {self.labels!r}")
        check_choice("pooling", self.pooling, list(POOLINGS))
        check_choice("activation", self.activation, list(ACT2FN))
        if not 0.0 <= self.dropout < 1.0:
            raise BertclsError(f"dropout must be in [0, 1), got {self.dropout}")
        # The initializers are not checked here: a saved head is loaded, never re-initialized, so a checkpoint made
        # with a user's own initializer loads where that initializer is not registered (check_inits: new heads).
        self.labels = [str(label) for label in self.labels]
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]
        if isinstance(self.head_init, dict) or hasattr(self.head_init, "items"):
            self.head_init = dict(self.head_init)

    def check_inits(self) -> None:
        """Raise BertclsError if head_init or bias_init is not a registered initializer with valid parameters."""
        parse_init(self.head_init)
        parse_init(self.bias_init)


class ClassificationHead(nn.Module):
    """dropout -> [Linear -> activation -> dropout] * len(hidden_sizes) -> Linear(num_labels)."""

    def __init__(self, in_features: int, spec: HeadSpec):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(spec.dropout)]
        width = in_features
        for h in spec.hidden_sizes:
            layers += [nn.Linear(width, h), ACT2FN[spec.activation], nn.Dropout(spec.dropout)]
            width = h
        layers.append(nn.Linear(width, len(spec.labels)))
        self.layers = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layers(pooled)

    def reset_parameters(self, spec: HeadSpec, initializer_range: float, generator: torch.Generator | None) -> None:
        spec.check_inits()
        linears = [m for m in self.layers if isinstance(m, nn.Linear)]
        if len(linears) > 1:
            warn_if_symmetric(spec.head_init, "head_init on a head with hidden layers")
        for lin in linears:
            # 'bert' and other std-taking initializers default to the backbone's initializer_range.
            init_tensor(lin.weight, spec.head_init, generator, std=initializer_range)
            init_tensor(lin.bias, spec.bias_init, generator, std=initializer_range)


# ---------------------------------------------------------------- model


def _encoder_layers(backbone: nn.Module) -> nn.ModuleList | None:
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        obj: Any = backbone
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    return None


class BertForTextClassification(nn.Module):
    """A BERT-family encoder with a classification head.

    Build one with :meth:`from_pretrained` (a backbone folder or hub name plus ``labels``, or a saved bertcls
    checkpoint). ``model(**batch)`` returns a ``SequenceClassifierOutput`` with ``logits`` (and ``loss`` when
    ``labels`` are given); ``model.predict(texts)`` returns label names with probabilities. A multi-label model
    (``task="multi_label"``) has a sigmoid per label and predicts every label whose probability reaches its threshold
    (``model.thresholds``, saved with the model).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        spec: HeadSpec,
        freeze_backbone: bool = False,
        unfreeze_top_k: int = 0,
        max_length: int | None = None,
        seed: int | None = None,
        truncation: str = "head",
        window_stride: int = 0,
        init_head: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.spec = spec
        self.head = ClassificationHead(backbone.config.hidden_size, spec)
        if init_head:  # False when saved weights are loaded next: their initializer is history, not needed
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            self.head.reset_parameters(spec, getattr(backbone.config, "initializer_range", 0.02), generator)
        self._takes_token_types = "token_type_ids" in inspect.signature(backbone.forward).parameters
        model_max = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
        self.max_length = int(max_length or model_max)
        # How texts longer than max_length are read; saved with the model so predict reads them as training did.
        self.truncation = truncation
        self.window_stride = int(window_stride)
        # Multi-label only: how a label set is written in one text cell (read by evaluate, written by predict).
        self.label_delimiter = DEFAULT_DELIMITER
        self._thresholds = [DEFAULT_THRESHOLD] * len(spec.labels) if self.multi_label else None
        self.set_trainable(freeze_backbone, unfreeze_top_k)
        # Same dropout, cheaper random masks on CPU (bertcls.dropout): about 5% faster training steps.
        use_fast_dropout(self)
        # cls/pooler pooling reads only position 0 of the top layer: compute only that (bertcls.toplayer).
        self._top_first_token = toplayer.install(_encoder_layers(backbone))

    # -- labels and trainability

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def num_labels(self) -> int:
        return len(self.spec.labels)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def multi_label(self) -> bool:
        return self.spec.task == "multi_label"

    @property
    def thresholds(self) -> list[float] | None:
        """Multi-label: the probability at which each label is predicted, in label order (None for single-label).
        Set a list (one per label) or one number for all labels; saved by ``save_pretrained``."""
        return None if self._thresholds is None else list(self._thresholds)

    @thresholds.setter
    def thresholds(self, value: float | Sequence[float]) -> None:
        if not self.multi_label:
            raise BertclsError("thresholds are for multi-label models; a single-label model predicts the top label")
        values = [value] * self.num_labels if isinstance(value, (int, float)) else list(value)
        self._thresholds = check_thresholds(values, self.labels)

    def set_trainable(self, freeze_backbone: bool, unfreeze_top_k: int = 0) -> None:
        """Freeze the backbone (head-only training), optionally leaving its top ``unfreeze_top_k`` layers trainable."""
        layers = _encoder_layers(self.backbone)
        if unfreeze_top_k < 0 or (layers is not None and unfreeze_top_k > len(layers)):
            n = "?" if layers is None else len(layers)
            raise BertclsError(f"unfreeze_top_k must be between 0 and the number of layers ({n}), got {unfreeze_top_k}")
        if unfreeze_top_k and layers is None:
            raise BertclsError("unfreeze_top_k: cannot find the encoder layers of this backbone; use freeze_backbone")
        self.freeze_backbone = bool(freeze_backbone)
        self.unfreeze_top_k = int(unfreeze_top_k) if freeze_backbone else 0
        self.backbone.requires_grad_(not self.freeze_backbone)
        self._frozen: list[nn.Module] = []
        if self.freeze_backbone:
            if self.unfreeze_top_k:
                top = list(layers)[-self.unfreeze_top_k :]
                for layer in top:
                    layer.requires_grad_(True)
                # The pooler sits above the top layer, so it trains with it.
                pooler = getattr(self.backbone, "pooler", None)
                keep = {id(m) for layer in top for m in layer.modules()}
                if pooler is not None:
                    pooler.requires_grad_(True)
                    keep |= {id(m) for m in pooler.modules()}
                # Every module with no trainable part inside it: embeddings, lower layers (not their containers).
                self._frozen = [m for m in self.backbone.modules() if not any(id(d) in keep for d in m.modules())]
            else:
                self._frozen = [self.backbone]
        pooler = getattr(self.backbone, "pooler", None)
        if pooler is not None and self.spec.pooling != "pooler":
            # An unused pooler that wants gradients trips DDP's unused-parameter check under several processes.
            pooler.requires_grad_(False)
        self.train(self.training)

    def encoder_layers(self) -> list[nn.Module]:
        """The backbone's transformer layers, bottom to top.

        Raises:
            BertclsError: the layer list of this backbone cannot be found.
        """
        layers = _encoder_layers(self.backbone)
        if layers is None:
            raise BertclsError(f"cannot find the encoder layers of {type(self.backbone).__name__}")
        return list(layers)

    def reinit_top_layers(self, k: int, generator: torch.Generator | None = None) -> None:
        """Re-initialize the top ``k`` encoder layers and the pooler the way BERT initializes new weights: Linear
        weights N(0, initializer_range²), biases 0, LayerNorm weight 1 and bias 0 (Zhang et al. 2020, "Revisiting
        Few-sample BERT Fine-tuning", arXiv 2006.05987: the top layers are specific to pretraining and fine-tune
        better from scratch).

        Raises:
            BertclsError: ``k`` is negative or more than the number of layers.
        """
        layers = self.encoder_layers()
        if not 0 <= k <= len(layers):
            raise BertclsError(f"reinit_top_k must be between 0 and the number of layers ({len(layers)}), got {k}")
        std = getattr(self.backbone.config, "initializer_range", 0.02)
        rules = {
            nn.Linear: {"weight": {"name": "normal", "std": std}, "bias": "zeros"},
            nn.LayerNorm: {"weight": "ones", "bias": "zeros"},
        }
        pooler = getattr(self.backbone, "pooler", None)
        for module in [*layers[len(layers) - k :], *([pooler] if k and pooler is not None else [])]:
            apply_init(module, rules, generator)

    @property
    def backbone_fully_frozen(self) -> bool:
        return self.freeze_backbone and self.unfreeze_top_k == 0

    def train(self, mode: bool = True) -> BertForTextClassification:
        # Frozen parts stay in eval mode: dropout in a frozen encoder only adds noise to fixed features.
        super().train(mode)
        for m in getattr(self, "_frozen", []):
            m.eval()
        return self

    # -- forward

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The pooled backbone output that the head classifies: (batch, hidden)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        # A fully frozen backbone needs no autograd graph: saves its activations' memory and time.
        first_only = self._top_first_token and self.spec.pooling in FIRST_TOKEN_POOLINGS
        with (
            torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_fully_frozen),
            toplayer.first_token_only(_encoder_layers(self.backbone), first_only),
        ):
            outputs = self.backbone(**kwargs)
            return POOLINGS[self.spec.pooling](outputs, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        logits = self.head(self.features(input_ids, attention_mask, token_type_ids))
        loss = None
        if labels is not None and self.multi_label:
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        elif labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits to probabilities in float32: softmax over labels, or a sigmoid per label for multi-label."""
        return probabilities(logits, self.spec.task)

    # -- prediction

    @torch.inference_mode()
    def predict_proba(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 64,
        precision: str = "no",
    ) -> torch.Tensor:
        """Class probabilities (multi-label: one sigmoid per label), (len(texts), num_labels), in input order. Batches
        are grouped by length; long texts are truncated (or read as windows) as the model was trained
        (``model.truncation``, ``model.window_stride``). ``precision``: ``no`` (full), ``bf16``, ``fp16``, or
        ``auto`` (bf16 where the model's device has it, as training's ``mixed_precision: auto``)."""
        from bertcls.data import encode, encode_windows, iter_length_sorted_batches
        from bertcls.long_texts import mean_of_windows
        from bertcls.precision import autocast, check_precision, resolve

        check_precision(precision)

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        precision = resolve(precision, device.type)
        doc_ids = None
        if self.window_stride:
            encoded, doc_ids = encode_windows(self.tokenizer, texts, text_pairs, self.max_length, self.window_stride)
        else:
            encoded = encode(self.tokenizer, texts, text_pairs, self.max_length, self.truncation)
        probs = torch.empty(len(encoded["input_ids"]), self.num_labels)
        for idx, batch in iter_length_sorted_batches(encoded, batch_size, self.tokenizer.pad_token_id or 0):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device.type, precision):
                logits = self(**batch).logits
            probs[idx] = self.probabilities(logits).cpu()
        self.train(was_training)
        # A long text read as windows gets the mean of its windows' probabilities.
        return probs if doc_ids is None else torch.from_numpy(mean_of_windows(probs.numpy(), doc_ids, len(texts)))

    def predict(
        self,
        texts: str | Sequence[str],
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 64,
        precision: str = "no",
    ) -> list[dict[str, Any]]:
        """Label names with probabilities: ``[{"label": "positive", "score": 0.97, "probabilities": {...}}, ...]``
        (``precision`` as in ``predict_proba``).

        A multi-label model gives every label at or above its threshold, most probable first:
        ``[{"labels": ["news", "sport"], "scores": [0.91, 0.62], "probabilities": {...}}, ...]`` (``labels`` may be
        empty).
        """
        if isinstance(texts, str):
            texts = [texts]
        probs = self.predict_proba(list(texts), text_pairs, batch_size, precision)
        if self.multi_label:
            return prediction_dicts(probs.tolist(), self.labels, self._thresholds)
        out = []
        for row in probs.tolist():
            top = max(range(len(row)), key=row.__getitem__)
            out.append(
                {
                    "label": self.labels[top],
                    "score": row[top],
                    "probabilities": dict(zip(self.labels, row, strict=True)),
                }
            )
        return out

    # -- saving and loading

    def save_pretrained(self, directory: str | os.PathLike, card_info: dict[str, Any] | None = None) -> Path:
        """Write safetensors weights, ``bertcls_config.json``, the tokenizer and a ``README.md`` model card into
        ``directory`` (``card_info``: what a training run adds to the card, see ``bertcls.card.model_card``).

        The folder is written in a temporary sibling and renamed into place, so a crash never leaves a half-written
        checkpoint that looks complete.
        """
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt", "bertcls_format": str(FORMAT_VERSION)})
            self.tokenizer.save_pretrained(tmp)
            config = {
                "format_version": FORMAT_VERSION,
                "head": asdict(self.spec),
                "max_length": self.max_length,
                "truncation": self.truncation,
                "window_stride": self.window_stride,
                "freeze_backbone": self.freeze_backbone,
                "unfreeze_top_k": self.unfreeze_top_k,
                "backbone_config": self.backbone.config.to_dict(),
            }
            if self.multi_label:
                config["thresholds"] = self._thresholds
                config["label_delimiter"] = self.label_delimiter
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str))
            write_model_card(tmp, self, card_info)
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def from_pretrained(
        cls,
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
    ) -> BertForTextClassification:
        """Load a saved bertcls checkpoint, or a pretrained backbone (folder, hub name or ``packaged:...``) with a
        new head for ``labels``; ``task`` is ``single_label`` (the default for a new head) or ``multi_label`` (for a
        checkpoint: checked against the one it was trained for).

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
        backbone, tokenizer = load_backbone(name, attn_implementation)
        return cls(backbone, tokenizer, spec, bool(freeze_backbone), unfreeze_top_k, max_length, seed)


def probabilities(logits: torch.Tensor, task: str = "single_label") -> torch.Tensor:
    """Logits to float32 probabilities: softmax over the labels, or for ``multi_label`` a sigmoid per label."""
    return logits.float().sigmoid() if task == "multi_label" else logits.float().softmax(-1)


def checkpoint_task(path: str | os.PathLike) -> tuple[str, str]:
    """(task, label delimiter) of a saved checkpoint, read from its config without loading weights; a folder that
    is not a readable checkpoint gives the single-label defaults (loading it later says what is wrong)."""
    try:
        config = json.loads((Path(path).expanduser() / CONFIG_NAME).read_text())
        return str(config["head"].get("task", "single_label")), str(config.get("label_delimiter", DEFAULT_DELIMITER))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return "single_label", DEFAULT_DELIMITER


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``; an older ``target`` is moved aside first and removed only once the new one is in."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


def _load_checkpoint(path: Path) -> BertForTextClassification:
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
        check_saved_pooling(path, config["head"].get("pooling", "cls"))
        spec = HeadSpec(**config["head"])
        backbone_config = dict(config["backbone_config"])
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
    model_type = backbone_config.pop("model_type", None)
    if model_type is None:
        raise BertclsError(f"checkpoint {path}: {CONFIG_NAME} does not say the backbone's model_type")
    backbone_config.pop("transformers_version", None)
    bb_config = AutoConfig.for_model(model_type, **backbone_config)
    bb_config._attn_implementation = "sdpa"
    backbone = AutoModel.from_config(bb_config)
    model = BertForTextClassification(
        backbone,
        tokenizer,
        spec,
        freeze_backbone=config.get("freeze_backbone", False),
        unfreeze_top_k=config.get("unfreeze_top_k", 0),
        max_length=config.get("max_length"),
        truncation=config.get("truncation", "head"),
        window_stride=config.get("window_stride", 0),
        init_head=False,
    )
    if model.multi_label:
        try:
            model.thresholds = config.get("thresholds") or DEFAULT_THRESHOLD
            model.label_delimiter = str(config.get("label_delimiter") or DEFAULT_DELIMITER)
        except (BertclsError, TypeError, ValueError) as e:
            raise BertclsError(f"checkpoint {path}: {CONFIG_NAME} has bad thresholds ({e})") from e
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


def load_checkpoint(path: str | os.PathLike) -> BertForTextClassification:
    """A saved bertcls checkpoint, for the tools that only use one (evaluate, predict): a plain backbone folder is
    an error here rather than a request for a new head.

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
    return BertForTextClassification.from_pretrained(folder)
