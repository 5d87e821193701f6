"""The top encoder layer computed for the first token only, when the classifier reads nothing else.

With ``cls`` or ``pooler`` pooling the head sees one vector per text: the top layer's output at position 0. Every
other position of the top layer is computed and thrown away: its query projection, attention output projection and
feed-forward block, which are most of that layer's matrix multiplies (the keys and values are still needed for
every position, since the first token attends to all of them). Skipping them saves the same share of the backbone's
work in training (forward and backward) and in prediction alike (docs/benchmarks.md, "Levers").

The result for position 0 is the same computation as the full layer's (the same modules, the same attention function,
the same mask row), so the model's maths is unchanged; only floating-point rounding can differ, as it does between
batch sizes. ``install(model)`` gives the model's top layer the short path and wraps ``model.features`` to switch it
on while the model runs its backbone, so ``model.backbone`` used directly still returns every position.

It applies to the two layer layouts in ``LAYOUTS``: transformers' ``BertLayer`` (BERT, RoBERTa, ELECTRA and their
copies: self-attention with ``query``/``key``/``value``, ``attention.output``, ``feed_forward_chunk``) and
DistilBERT's ``TransformerBlock`` (``q_lin``/``k_lin``/``v_lin``/``out_lin``, ``sa_layer_norm``, ``ffn``,
``output_layer_norm``). Any other backbone runs unchanged.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from bertcls.heads import FIRST_TOKEN_POOLINGS, find_encoder_layers

if TYPE_CHECKING:  # the model imports bertcls.speed, never the other way round
    from bertcls.model import BertForTextClassification

FLAG = "_bertcls_first_token_only"


def _has(obj, *names: str) -> bool:
    return obj is not None and all(getattr(obj, n, None) is not None for n in names)


def _own_eager_attention(attention: nn.Module):
    """The eager attention function of the attention module's model file (transformers registers no "eager")."""
    return getattr(sys.modules[type(attention).__module__], "eager_attention_forward", None)


def _encoder_config_ok(config) -> bool:
    return not getattr(config, "is_decoder", False) and (
        getattr(config, "position_embedding_type", "absolute") == "absolute"
    )


def _first_positions(hidden_states: torch.Tensor, varlen: dict) -> torch.Tensor:
    """Each text's first position: ``(batch, 1, hidden)``, or for an unpadded batch (``bertcls.packing``, one row of
    texts end to end) ``(1, texts, hidden)``."""
    starts = varlen.get("cu_seq_lens_k")
    return hidden_states[:, :1] if starts is None else hidden_states.index_select(1, starts[:-1])


def _attend_first(attention: nn.Module, hidden_states, first, projections, attention_mask, varlen) -> torch.Tensor:
    """The first positions' attention context, shaped like ``first``: their queries against every position's key and
    value (``projections``: the layer's query, key and value linears), through the attention function the layer would
    call. An unpadded batch's first tokens attend to their own text's keys (one query per text)."""

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], -1, attention.attention_head_size).transpose(1, 2)

    to_query, to_key, to_value = projections
    query, key, value = heads(to_query(first)), heads(to_key(hidden_states)), heads(to_value(hidden_states))
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # the first query's row of the (batch, 1, query, key) mask
    if varlen.get("cu_seq_lens_k") is not None:
        n = first.shape[1]
        varlen = {**varlen, "cu_seq_lens_q": torch.arange(n + 1, device=first.device), "max_length_q": 1}
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(
        attention.config._attn_implementation, _own_eager_attention(attention)
    )
    dropout = attention.dropout.p if attention.training else 0.0
    context, _ = attend(
        attention, query, key, value, attention_mask, dropout=dropout, scaling=attention.scaling, **varlen
    )
    return context.reshape(*first.shape[:2], -1)


def _varlen(kwargs: dict) -> dict:
    """The variable-length attention arguments among a layer's keyword arguments (none for a padded batch)."""
    keys = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    return {k: kwargs[k] for k in keys if kwargs.get(k) is not None}


def _bert_supports(layer: nn.Module) -> bool:
    attention = getattr(layer, "attention", None)
    sa = getattr(attention, "self", None)
    return (
        _has(sa, "query", "key", "value", "scaling", "attention_head_size", "config", "dropout")
        and _has(attention, "output")
        and _has(layer, "feed_forward_chunk")
        and _encoder_config_ok(sa.config)
        and not hasattr(layer, "crossattention")
        and _own_eager_attention(sa) is not None
    )


def _bert_first_token(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
    sa, varlen = layer.attention.self, _varlen(kwargs)
    first = _first_positions(hidden_states, varlen)
    context = _attend_first(sa, hidden_states, first, (sa.query, sa.key, sa.value), attention_mask, varlen)
    attended = layer.attention.output(context, first)
    return layer.feed_forward_chunk(attended)


def _distilbert_supports(layer: nn.Module) -> bool:
    sa = getattr(layer, "attention", None)
    return (
        _has(sa, "q_lin", "k_lin", "v_lin", "out_lin", "scaling", "attention_head_size", "config", "dropout")
        and _has(layer, "sa_layer_norm", "ffn", "output_layer_norm")
        and _encoder_config_ok(sa.config)
        and _own_eager_attention(sa) is not None
    )


def _distilbert_first_token(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
    sa, first = layer.attention, hidden_states[:, :1]  # (no unpadded batches: bertcls.packing is for BERT)
    context = _attend_first(sa, hidden_states, first, (sa.q_lin, sa.k_lin, sa.v_lin), attention_mask, {})
    attended = layer.sa_layer_norm(sa.out_lin(context) + first)
    return layer.output_layer_norm(layer.ffn(attended) + attended)


# (does this layer have the layout?, its forward for position 0 only)
LAYOUTS: list[tuple[Callable[[nn.Module], bool], Callable[..., torch.Tensor]]] = [
    (_bert_supports, _bert_first_token),
    (_distilbert_supports, _distilbert_first_token),
]


def first_token_forward(layer: nn.Module) -> Callable[..., torch.Tensor] | None:
    """The position-0 forward for this layer's layout, or None when no layout fits."""
    return next((forward for supports, forward in LAYOUTS if supports(layer)), None)


def _top_layer_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs):
    if not getattr(layer, FLAG, False):
        return type(layer).forward(layer, hidden_states, attention_mask, *args, **kwargs)
    return first_token_forward(layer)(layer, hidden_states, attention_mask, **kwargs)


def _first_token_features(model: BertForTextClassification, *args, **kwargs) -> torch.Tensor:
    with first_token_only(find_encoder_layers(model.backbone)):
        return type(model).features(model, *args, **kwargs)


def install(model: BertForTextClassification) -> bool:
    """Compute only position 0 of the top layer whenever ``model`` computes its pooled features; returns whether it
    applies (``cls``/``pooler`` pooling on a layer of a known layout). Installing twice changes nothing."""
    layers = find_encoder_layers(model.backbone)
    if model.spec.pooling not in FIRST_TOKEN_POOLINGS or not layers or first_token_forward(layers[-1]) is None:
        return False
    top = layers[-1]
    # Module-level functions bound to their objects, not closures: a deep copy of the model then refers to itself.
    top.forward = types.MethodType(_top_layer_forward, top)
    setattr(top, FLAG, False)
    model.features = types.MethodType(_first_token_features, model)
    return True


@contextlib.contextmanager
def first_token_only(layers: list[nn.Module] | None) -> Iterator[None]:
    """While inside, the top layer (if installed) returns only position 0: ``(batch, 1, hidden)``."""
    top = layers[-1] if layers and hasattr(layers[-1], FLAG) else None
    if top is None:
        yield
        return
    setattr(top, FLAG, True)
    try:
        yield
    finally:
        setattr(top, FLAG, False)
