"""The top encoder layer computed for the first token only, when the classifier reads nothing else.

With ``cls`` or ``pooler`` pooling the head sees one vector per text: the top layer's output at position 0. Every
other position of the top layer is computed and thrown away: its query projection, attention output projection and
feed-forward block, which are about 83% of that layer's matrix multiplies (the keys and values are still needed for
every position, since the first token attends to all of them). For a 6-layer MiniLM that is about 14% of the
backbone's multiply-adds, in training (forward and backward) and in prediction alike.

The result for position 0 is the same computation as the full layer's (the same modules, the same attention function,
the same mask row), so the model's maths is unchanged; only floating-point rounding can differ, as it does between
batch sizes. It is switched on only while ``BertForTextClassification`` runs its backbone, so ``model.backbone`` used
directly still returns every position.

It applies to layers shaped like transformers' ``BertLayer`` (BERT, RoBERTa, ELECTRA and their copies: self-attention
with ``query``/``key``/``value``, ``attention.output``, ``feed_forward_chunk``); any other backbone runs unchanged.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

FLAG = "_bertcls_first_token_only"


def supports_first_token_only(layer: nn.Module) -> bool:
    attention = getattr(layer, "attention", None)
    self_attention = getattr(attention, "self", None)
    needed = [
        *(getattr(self_attention, n, None) for n in ("query", "key", "value", "scaling", "attention_head_size")),
        getattr(attention, "output", None),
        getattr(layer, "feed_forward_chunk", None),
    ]
    config = getattr(self_attention, "config", None)
    return (
        all(x is not None for x in needed)
        and config is not None
        and not getattr(config, "is_decoder", False)
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not hasattr(layer, "crossattention")
        and hasattr(sys.modules[type(self_attention).__module__], "eager_attention_forward")
    )


def _first_token_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs):
    if not getattr(layer, FLAG, False):
        return type(layer).forward(layer, hidden_states, attention_mask, *args, **kwargs)
    sa = layer.attention.self
    batch = hidden_states.shape[0]
    first = hidden_states[:, :1]

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, x.shape[1], -1, sa.attention_head_size).transpose(1, 2)

    query, key, value = heads(sa.query(first)), heads(sa.key(hidden_states)), heads(sa.value(hidden_states))
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # the first query's row of the (batch, 1, query, key) mask
    # The attention function the layer itself would call ("eager" is not registered: the model file's own).
    eager = getattr(sys.modules[type(sa).__module__], "eager_attention_forward", None)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(sa.config._attn_implementation, eager)
    context, _ = attend(
        sa, query, key, value, attention_mask, dropout=sa.dropout.p if sa.training else 0.0, scaling=sa.scaling
    )
    attended = layer.attention.output(context.reshape(batch, 1, -1), first)
    return layer.feed_forward_chunk(attended)


def install(layers: list[nn.Module] | None) -> bool:
    """Give the top layer the first-token-only path (off until ``first_token_only`` switches it on); returns
    whether this backbone's top layer supports it."""
    if not layers or not supports_first_token_only(layers[-1]):
        return False
    top = layers[-1]
    top.forward = types.MethodType(_first_token_forward, top)
    setattr(top, FLAG, False)
    return True


@contextlib.contextmanager
def first_token_only(layers: list[nn.Module] | None, enabled: bool) -> Iterator[None]:
    """While inside, the top layer (if installed) returns only position 0: ``(batch, 1, hidden)``."""
    top = layers[-1] if layers and enabled and hasattr(layers[-1], FLAG) else None
    if top is None:
        yield
        return
    setattr(top, FLAG, True)
    try:
        yield
    finally:
        setattr(top, FLAG, False)
