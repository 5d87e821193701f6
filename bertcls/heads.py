"""The head and how it reads the backbone: the pooling registry, the head's spec and the head module.

Plain torch and transformers' activations: no files, no tasks' metrics, no config. ``bertcls.model`` builds
``BertForTextClassification`` from these; ``bertcls.serialization`` reads a saved ``HeadSpec`` and checks its pooling
without importing the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from bertcls.errors import BertclsError
from bertcls.init import InitContext, InitSpec, init_tensor, parse_init, warn_if_symmetric
from bertcls.multilabel import check_task
from bertcls.registry import Registry

# ---------------------------------------------------------------- pooling registry

PoolFn = Callable[[Any, torch.Tensor], torch.Tensor]
POOLINGS: Registry[PoolFn] = Registry("pooling")


def register_pooling(name: str) -> Callable[[PoolFn], PoolFn]:
    """Decorator: ``fn(backbone_outputs, attention_mask) -> (batch, hidden)`` becomes pooling ``name``."""
    return POOLINGS.register(name)


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


# Poolings that read the top layer at position 0 only (bertcls.speed.toplayer then computes only that position).
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

    def reset_parameters(
        self,
        spec: HeadSpec,
        initializer_range: float,
        generator: torch.Generator | None,
        context: InitContext | None = None,
    ) -> None:
        spec.check_inits()
        linears = [m for m in self.layers if isinstance(m, nn.Linear)]
        if len(linears) > 1:
            warn_if_symmetric(spec.head_init, "head_init on a head with hidden layers")
        for lin in linears:
            # 'bert' and other std-taking initializers default to the backbone's initializer_range.
            init_tensor(lin.weight, spec.head_init, generator, context, std=initializer_range)
            init_tensor(lin.bias, spec.bias_init, generator, context, std=initializer_range)


# ---------------------------------------------------------------- backbone layers


def find_encoder_layers(backbone: nn.Module) -> nn.ModuleList | None:
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        obj: Any = backbone
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    return None
