"""Unpadded batches (``train.unpadded``): a batch's texts end to end in one row, each attending only to itself.

A padded batch computes every layer for its padding too. Length grouping already removes most of it; this removes the
rest, the way flash-attn's variable-length kernels, ModernBERT's unpadding and transformers' padding-free collator do:
the collate function (on the CPU, where it costs nothing to look at the mask) packs the texts into one row and
records where each starts (``cu_seqlens``) and its position ids (counted from 0 in each text). Attention then runs
on nested (jagged) tensors: torch's SDPA over each text's own keys. On a GPU that dispatches to torch's flash or
memory-efficient kernels with the texts' lengths; on a CPU it is the same Python path, so the tests compare it with
the padded model there. The pooled features are the same function as the padded model's; only rounding differs.

Scope: BERT backbones (``model_type`` bert: absolute positions counted from 0) with ``cls``, ``pooler`` or ``mean``
pooling, for the training batches of a run that trains the backbone. Evaluation batches stay padded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator

import torch
from torch.nn import functional as F  # noqa: N812

from bertcls.errors import BertclsError

ATTENTION = "bertcls_varlen"
POOLINGS = ("cls", "pooler", "mean")


def check_supported(backbone, pooling: str) -> None:
    """Raise BertclsError unless an unpadded batch computes what a padded one does for this backbone and pooling."""
    model_type = getattr(backbone.config, "model_type", "?")
    if model_type != "bert":
        # RoBERTa-style models count positions from the padding index, DistilBERT takes no position ids.
        raise BertclsError(f"train.unpadded supports BERT backbones (model_type bert), not {model_type}")
    if pooling not in POOLINGS:
        raise BertclsError(f"train.unpadded supports pooling {', '.join(POOLINGS)}, not {pooling}")


def pack(batch: dict[str, torch.Tensor]) -> dict:
    """A right-padded batch (``input_ids``, ``attention_mask``, maybe ``token_type_ids``, ``labels``, ``index``) as
    one row: ``input_ids``, ``token_type_ids`` and ``position_ids`` of shape ``(1, tokens)``, ``cu_seqlens`` (each
    text's start, then the total), ``max_seqlen`` (an int) and the other keys unchanged."""
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1)
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    packed = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
    for key in ("input_ids", "token_type_ids"):
        if key in batch:
            packed[key] = batch[key][mask].unsqueeze(0)
    packed["position_ids"] = positions[mask].unsqueeze(0)
    packed["cu_seqlens"] = F.pad(lengths.cumsum(0), (1, 0))
    packed["max_seqlen"] = int(lengths.max())
    return packed


def _collate_then_pack(collate, features):
    return pack(collate(features))


def packed_collate(collate):
    """``collate`` (a list of examples to a padded batch) followed by ``pack``; picklable for loader workers."""
    return functools.partial(_collate_then_pack, collate)


def _jagged(x: torch.Tensor, offsets: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """``(1, heads, tokens, head_dim)`` as a nested tensor ``(texts, heads, j, head_dim)`` cut at ``offsets``."""
    values = x[0].transpose(0, 1)  # (tokens, heads, head_dim)
    # Both bounds given: torch would otherwise compute them from the offsets, reading the GPU (min 1: no text is
    # empty, which is all torch asks of it, before its fused kernels).
    nested = torch.nested.nested_tensor_from_jagged(values, offsets=offsets, min_seqlen=1, max_seqlen=max_seqlen)
    return nested.transpose(1, 2)


def varlen_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, *,
    cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, **kwargs,
):  # fmt: skip
    """A transformers attention function over packed rows: query, key and value ``(1, heads, tokens, head_dim)``,
    text i's queries ``cu_seq_lens_q[i]:cu_seq_lens_q[i+1]`` attend to its keys ``cu_seq_lens_k[i]:...[i+1]``
    (transformers' names for flash-attn's varlen arguments). Returns ``(1, tokens, heads, head_dim)``."""
    q = _jagged(query, cu_seq_lens_q, max_length_q)
    k = _jagged(key, cu_seq_lens_k, max_length_k)
    v = _jagged(value, cu_seq_lens_k, max_length_k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).values().unsqueeze(0), None


@functools.cache  # once per process: it also changes warning filters and a logger
def register() -> None:
    """Make ``ATTENTION`` known to transformers (registering again is a no-op). Its mask is none: the offsets are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(ATTENTION, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, lambda *args, **kwargs: None)
    # torch 2.13 says both of these on the first nested-tensor attention, to library authors, not to our users.
    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype", category=UserWarning)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # "is_fx_tracing will return true ..."


@contextlib.contextmanager
def varlen(backbone) -> Iterator[None]:
    """While inside, ``backbone``'s attention layers (which share its config) run ``varlen_attention``."""
    register()
    config = backbone.config
    before = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def varlen_kwargs(cu_seqlens: torch.Tensor, max_seqlen: int) -> dict:
    """The backbone's keyword arguments that reach every attention call: the texts' offsets and longest length."""
    return {
        "cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": max_seqlen, "max_length_k": max_seqlen
    }  # fmt: skip


def pool(backbone, pooling: str, outputs, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``(texts, hidden)``: the packed top layer's output ``(1, tokens, hidden)`` pooled per text. With the first-token
    top layer (``bertcls.speed.toplayer``) it is ``(1, texts, hidden)`` already: the first tokens."""
    hidden = outputs.last_hidden_state[0]
    n = cu_seqlens.shape[0] - 1
    if pooling == "mean":
        lengths = cu_seqlens.diff()
        # output_size: the total is known, so repeat_interleave need not read it from the device
        text_of = torch.repeat_interleave(torch.arange(n, device=hidden.device), lengths, output_size=hidden.shape[0])
        sums = torch.zeros(n, hidden.shape[1], dtype=hidden.dtype, device=hidden.device).index_add_(0, text_of, hidden)
        return sums / lengths.unsqueeze(1).to(hidden.dtype)
    # (when every text is one token long the two shapes agree, and so do the rows)
    first = hidden if hidden.shape[0] == n else hidden.index_select(0, cu_seqlens[:-1])
    return backbone.pooler(first.unsqueeze(1)) if pooling == "pooler" else first
