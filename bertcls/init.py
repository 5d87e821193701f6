"""Weight initializers: one registry, usable on the classification head and on any ``nn.Module``.

An initializer is a function ``fn(tensor, *, generator=None, **params)`` that fills ``tensor`` in place; one that
also takes a ``context`` keyword reads an ``InitContext`` (the head's labels and the encoder), which the model
passes to it: ``label_embeddings`` makes each class's row from the encoder's embedding of the label's text.
A *spec* names one: ``"xavier_uniform"`` or ``{"name": "kaiming_normal", "mode": "fan_out",
"nonlinearity": "relu"}``. This module imports torch only, so it is usable outside bertcls too.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bertcls.config import check_label_descriptions
from bertcls.errors import BertclsError, first_line
from bertcls.registry import Registry
from bertcls.tasks import get_task

InitFn = Callable[..., torch.Tensor]
InitSpec = str | Mapping[str, Any]

INITIALIZERS: Registry[InitFn] = Registry("initializer")
# Keywords an initializer gets from the caller, never from a spec.
_PASSED = ("t", "generator", "context")


@dataclass
class InitContext:
    """What a data-aware initializer (one with a ``context`` keyword) may read besides the tensor it fills."""

    labels: list[str]
    """The head's labels, in output order."""
    texts: list[str] | None = None
    """One text per label that describes it (``label_texts``); None: the label names."""
    encode: Callable[[list[str]], torch.Tensor] | None = None
    """Texts -> the pooled features the head reads, (len(texts), hidden); None where no encoder is at hand."""


def label_texts(labels: list[str], descriptions: str | Mapping[str, str] | None) -> list[str]:
    """One text per label: the label itself (``None``), a template with ``{}`` for the label (``"a {} movie
    review"``), or a {label: text} map (labels left out stay themselves). Raises BertclsError on a bad one."""
    check_label_descriptions(descriptions)
    if descriptions is None:
        return list(labels)
    if isinstance(descriptions, str):
        return [descriptions.replace("{}", label) for label in labels]
    unknown = sorted(set(map(str, descriptions)) - set(labels))
    if unknown:
        raise BertclsError(f"data.label_descriptions names unknown label(s) {unknown}; labels: {labels}")
    texts = {str(k): str(v) for k, v in descriptions.items()}
    return [texts.get(label, label) for label in labels]


# Parameters with a fixed set of values, checked by parse_init before a model is built (torch would only raise a
# ValueError deep inside the first init). The nonlinearities are those ``torch.nn.init.calculate_gain`` knows.
PARAM_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("fan_in", "fan_out"),
    "nonlinearity": (
        "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
        "sigmoid", "tanh", "relu", "leaky_relu", "selu",
    ),
}  # fmt: skip


def register_initializer(name: str) -> Callable[[InitFn], InitFn]:
    """Decorator that adds ``fn(tensor, *, generator=None, **params)`` to the registry under ``name``."""
    return INITIALIZERS.register(name)


@register_initializer("xavier_uniform")
def xavier_uniform(t: torch.Tensor, *, gain: float = 1.0, generator=None) -> torch.Tensor:
    return nn.init.xavier_uniform_(t, gain=gain, generator=generator)


@register_initializer("xavier_normal")
def xavier_normal(t: torch.Tensor, *, gain: float = 1.0, generator=None) -> torch.Tensor:
    return nn.init.xavier_normal_(t, gain=gain, generator=generator)


# Default nonlinearity is relu (He et al. 2015), not torch's leaky_relu(a=0) which is the same gain but reads oddly.
@register_initializer("kaiming_uniform")
def kaiming_uniform(
    t: torch.Tensor, *, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "relu", generator=None
) -> torch.Tensor:
    return nn.init.kaiming_uniform_(t, a=a, mode=mode, nonlinearity=nonlinearity, generator=generator)


@register_initializer("kaiming_normal")
def kaiming_normal(
    t: torch.Tensor, *, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "relu", generator=None
) -> torch.Tensor:
    return nn.init.kaiming_normal_(t, a=a, mode=mode, nonlinearity=nonlinearity, generator=generator)


@register_initializer("orthogonal")
def orthogonal(t: torch.Tensor, *, gain: float = 1.0, generator=None) -> torch.Tensor:
    return nn.init.orthogonal_(t, gain=gain, generator=generator)


@register_initializer("normal")
def normal(t: torch.Tensor, *, mean: float = 0.0, std: float = 0.02, generator=None) -> torch.Tensor:
    return nn.init.normal_(t, mean=mean, std=std, generator=generator)


@register_initializer("trunc_normal")
def trunc_normal(t: torch.Tensor, *, mean: float = 0.0, std: float = 0.02, generator=None) -> torch.Tensor:
    # Cut at two standard deviations, as in timm/ViT; torch's own default cuts at +-2 absolute.
    return nn.init.trunc_normal_(t, mean=mean, std=std, a=mean - 2 * std, b=mean + 2 * std, generator=generator)


@register_initializer("uniform")
def uniform(t: torch.Tensor, *, a: float = -0.05, b: float = 0.05, generator=None) -> torch.Tensor:
    return nn.init.uniform_(t, a=a, b=b, generator=generator)


@register_initializer("zeros")
def zeros(t: torch.Tensor, *, generator=None) -> torch.Tensor:
    return nn.init.zeros_(t)


@register_initializer("ones")
def ones(t: torch.Tensor, *, generator=None) -> torch.Tensor:
    return nn.init.ones_(t)


@register_initializer("constant")
def constant(t: torch.Tensor, *, value: float = 0.0, generator=None) -> torch.Tensor:
    return nn.init.constant_(t, value)


@register_initializer("sparse")
def sparse(t: torch.Tensor, *, sparsity: float = 0.1, std: float = 0.01, generator=None) -> torch.Tensor:
    """Martens (2010): in each column, ceil(sparsity * rows) entries are zero, the rest N(0, std^2)."""
    if t.ndim != 2:
        raise BertclsError(f"initializer 'sparse' needs a 2-D weight, got shape {tuple(t.shape)}")
    # Written out because torch's sparse_ picks the zero positions without the generator (not reproducible).
    rows, cols = t.shape
    num_zeros = math.ceil(sparsity * rows)
    with torch.no_grad():
        t.normal_(0.0, std, generator=generator)
        for col in range(cols):
            t[torch.randperm(rows, generator=generator)[:num_zeros], col] = 0.0
    return t


@register_initializer("bert")
def bert(t: torch.Tensor, *, std: float = 0.02, generator=None) -> torch.Tensor:
    """BERT's own scheme: N(0, initializer_range^2). The model passes the backbone's initializer_range as std."""
    return nn.init.normal_(t, mean=0.0, std=std, generator=generator)


@register_initializer("label_embeddings")
def label_embeddings(
    t: torch.Tensor, *, scale: float = 10.0, context: InitContext | None = None, generator=None
) -> torch.Tensor:
    """Each class's row is ``scale`` times the unit-length pooled embedding of its text (its name or description):
    the head then scores a text by its cosine to each label's text, times the text's feature norm and ``scale``, a
    zero-shot classifier before any training step (as in CLIP's or SetFit's zero-shot heads)."""
    if context is None or context.encode is None:
        raise BertclsError("initializer 'label_embeddings' needs the encoder: use it as a bertcls model's head_init")
    if t.ndim != 2 or t.shape[0] != len(context.labels):
        raise BertclsError(
            f"initializer 'label_embeddings' fills the output layer (one row per label), not a tensor of shape "
            f"{tuple(t.shape)}: use it with model.hidden_sizes=[] and as head_init, not bias_init"
        )
    texts = context.texts if context.texts is not None else context.labels
    with torch.no_grad():
        emb = context.encode(list(texts)).float()
        if emb.shape != t.shape:
            raise BertclsError(f"label_embeddings: encoder output {tuple(emb.shape)}, head weight {tuple(t.shape)}")
        t.copy_(scale * nn.functional.normalize(emb, dim=1))
    return t


def parse_init(spec: InitSpec) -> tuple[str, dict[str, Any]]:
    """Split a spec into (name, params) and check both against the registry; raises BertclsError."""
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping) and "name" in spec:
        params = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
    else:
        raise BertclsError(f"initializer spec must be a name or a mapping with 'name', got {spec!r}")
    if name not in INITIALIZERS:
        raise BertclsError(f"unknown initializer '{name}'; valid: {', '.join(sorted(INITIALIZERS))}")
    allowed = [p for p in inspect.signature(INITIALIZERS[name]).parameters if p not in _PASSED]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BertclsError(
            f"initializer '{name}' has no parameter {', '.join(unknown)}; valid: {', '.join(allowed) or '(none)'}"
        )
    for key, value in params.items():
        if key in PARAM_CHOICES and value not in PARAM_CHOICES[key]:
            raise BertclsError(f"initializer '{name}': {key} {value!r} is not one of {', '.join(PARAM_CHOICES[key])}")
    return name, params


def init_tensor(
    t: torch.Tensor,
    spec: InitSpec,
    generator: torch.Generator | None = None,
    context: InitContext | None = None,
    **defaults,
) -> None:
    """Fill ``t`` in place by ``spec``. ``defaults`` fill parameters the spec leaves out (e.g. bert's std);
    ``context`` goes to the initializers that take one (and only to them)."""
    name, params = parse_init(spec)
    fn = INITIALIZERS[name]
    accepted = inspect.signature(fn).parameters
    merged = {k: v for k, v in defaults.items() if k in accepted} | params
    if "context" in accepted:
        merged["context"] = context
    try:
        with torch.no_grad():
            fn(t, generator=generator, **merged)
    except (ValueError, TypeError) as e:  # a value of the right name but the wrong kind (gain: "big")
        raise BertclsError(f"initializer '{name}' with {params}: {first_line(e)}") from e


def is_symmetric_init(spec: InitSpec) -> bool:
    """True for initializers that give every unit of a layer the same weights (zeros, ones, constant)."""
    return parse_init(spec)[0] in ("zeros", "ones", "constant")


RuleKey = type | str


@dataclass
class _Rule:
    weight: InitSpec | None
    bias: InitSpec | None


def _rule(value: InitSpec | Mapping[str, InitSpec]) -> _Rule:
    if isinstance(value, Mapping) and ("weight" in value or "bias" in value):
        unknown = set(value) - {"weight", "bias"}
        if unknown:
            raise BertclsError(f"init rule keys must be 'weight' and 'bias', got {sorted(unknown)}")
        return _Rule(value.get("weight"), value.get("bias", "zeros"))
    return _Rule(value, "zeros")


def apply_init(
    module: nn.Module,
    rules: Mapping[RuleKey, InitSpec | Mapping[str, InitSpec]],
    generator: torch.Generator | None = None,
) -> int:
    """Initialize every submodule of ``module`` that matches a rule; returns how many were initialized.

    ``rules`` maps a module type (or its class name) to a weight spec, or to ``{"weight": spec, "bias": spec}``
    (bias defaults to zeros; ``None`` leaves a tensor as it is). The first matching rule wins. Example, the classic
    CNN recipe::

        apply_init(net, {nn.Conv2d: {"weight": {"name": "kaiming_normal", "mode": "fan_out"}, "bias": "zeros"},
                         nn.BatchNorm2d: {"weight": "ones", "bias": "zeros"},
                         nn.Linear: "xavier_uniform"})
    """
    parsed = [(key, _rule(value)) for key, value in rules.items()]
    for _, rule in parsed:  # fail before touching any weight
        for spec in (rule.weight, rule.bias):
            if spec is not None:
                parse_init(spec)
    count = 0
    for sub in module.modules():
        for key, rule in parsed:
            if (isinstance(key, str) and type(sub).__name__ == key) or (isinstance(key, type) and isinstance(sub, key)):
                for attr in ("weight", "bias"):
                    spec, tensor = getattr(rule, attr), getattr(sub, attr, None)
                    if spec is not None and isinstance(tensor, torch.Tensor):
                        init_tensor(tensor, spec, generator)
                count += 1
                break
    return count


@dataclass
class LayerStats:
    name: str
    shape: tuple[int, ...]
    fan_in: int
    fan_out: int
    weight_mean: float
    weight_std: float


@dataclass
class InitReport:
    """What ``describe_init`` found: per-layer weight statistics and, given a batch, the std of the logits; given
    labels too, the loss at initialization against ``expected_loss``, the loss of uniform predictions: ln(num_labels)
    for softmax over the labels, ln 2 for a sigmoid per label (multi-label). An initial loss well above it means
    confidently wrong logits at step 0 (a head initialized too large)."""

    layers: list[LayerStats] = field(default_factory=list)
    logits_std: float | None = None
    initial_loss: float | None = None
    expected_loss: float | None = None

    def __str__(self) -> str:
        lines = [f"{'layer':<24}{'shape':<14}{'fan_in':>8}{'fan_out':>8}{'mean':>11}{'std':>10}"]
        for s in self.layers:
            lines.append(
                f"{s.name:<24}{'x'.join(map(str, s.shape)):<14}{s.fan_in:>8}{s.fan_out:>8}"
                f"{s.weight_mean:>11.2e}{s.weight_std:>10.4f}"
            )
        if self.logits_std is not None:
            lines.append(f"std of logits on the batch: {self.logits_std:.4f}")
        if self.initial_loss is not None and self.expected_loss is not None:
            lines.append(
                f"initial loss on the batch: {self.initial_loss:.4f} (uniform predictions: {self.expected_loss:.4f})"
            )
        return "\n".join(lines)


def describe_init(model: nn.Module, batch: Mapping[str, torch.Tensor] | None = None) -> InitReport:
    """Report the head's layers (or every Linear of a plain module) and, with a batch, the std of the logits.

    For a ``BertForTextClassification`` only the head is described; the backbone's weights are pretrained. The
    model is called as ``model(**batch)`` without the batch's ``labels``; when the batch has them, the report also
    holds the loss on the batch (cross-entropy; binary cross-entropy for a multi-label model) and what uniform
    predictions would score (ln(num_labels); ln 2 for multi-label).
    """
    target = getattr(model, "head", model)
    report = InitReport()
    for name, sub in target.named_modules():
        if isinstance(sub, nn.Linear):
            w = sub.weight.detach().float()
            report.layers.append(
                LayerStats(name or "linear", tuple(w.shape), w.shape[1], w.shape[0], w.mean().item(), w.std().item())
            )
    if batch is not None:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            out = model(**inputs)
        model.train(was_training)
        logits = (out.logits if hasattr(out, "logits") else out).float()
        report.logits_std = logits.std().item()
        labels = batch.get("labels")
        if labels is not None:
            labels = labels.to(logits.device)
            task = get_task(getattr(model, "task", "single_label"))  # a plain module: softmax over its outputs
            report.initial_loss = task.plain_loss(logits, labels).item()
            report.expected_loss = task.uniform_loss(logits.shape[-1])
    return report


def warn_if_symmetric(spec: InitSpec, where: str) -> None:
    if is_symmetric_init(spec):
        warnings.warn(
            f"{where}: initializer '{parse_init(spec)[0]}' gives every hidden unit the same weights, so they get the "
            "same gradients and stay identical (symmetry is never broken); use a random initializer",
            stacklevel=3,
        )
