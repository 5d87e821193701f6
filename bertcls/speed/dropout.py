"""Dropout with a cheaper random mask on CPU (applied by ``bertcls.speed.apply``).

torch's CPU dropout draws one random number per element (``bernoulli_``), and on small batches of short texts that
draw is a visible part of a training step (docs/benchmarks.md, "Levers"). Here one 64-bit draw over the full int64
range (``random_()`` with no range would leave the top bit clear) feeds four 16-bit lanes, so the mask costs a quarter
of the draws, and the lanes are the mask's elements in memory order, with no copy. The keep probability is ``1 - p``
rounded to 1/65536 (for p = 0.1: 0.899994 instead of 0.9); the kept values are scaled by exactly ``1 / (1 - p)``, as
``nn.Dropout`` does.

On CUDA (and any non-CPU device) this is plain ``nn.functional.dropout``: GPU dropout is already cheap.

Attention-probability dropout lives inside the attention function. With dropout on, torch's CPU SDPA leaves its fused
kernel for the unfused "math" path and draws a ``bernoulli_`` mask per attention weight; ``ATTENTION`` (registered
with transformers' AttentionInterface) is SDPA everywhere except there, where it does the same unfused maths with the
cheaper mask (docs/benchmarks.md, "Levers"). Its mask function skips a per-forward host sync
(``sdpa_mask_without_sync``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

LANES = 4  # 16-bit lanes of one int64


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        n = x.numel()
        bits = torch.empty((n + LANES - 1) // LANES * LANES, dtype=torch.int16)
        # from = int64's minimum and no upper bound: torch's full 64-bit range, so every lane is a uniform 16 bits
        bits.view(torch.int64).random_(-(2**63), None)
        threshold = round(p * 65536) - 32768  # int16 values below it are dropped: P(drop) = round(p * 2**16) / 2**16
        keep = bits[:n].view(x.shape) >= threshold
        ctx.save_for_backward(keep)  # one byte per element, as torch's own dropout keeps
        ctx.scale = 1.0 / (1.0 - p)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    return _CpuDropout.apply(x, p)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the cheaper CPU mask; a drop-in replacement (same ``p``, same state dict: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def sdpa_with_fast_dropout(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """A transformers attention function: SDPA, or on CPU with attention dropout the same maths unfused with the
    cheaper dropout mask (SDPA would run unfused there too, with ``bernoulli_``)."""
    if dropout == 0.0 or query.device.type != "cpu" or query.shape[1] != key.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # sdpa_mask: True where attention goes
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:  # an additive float mask
        scores = scores + attention_mask
    weights = _CpuDropout.apply(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def sdpa_mask_without_sync(*args, **kwargs):
    """transformers' SDPA mask without its check whether a padding mask is all ones: that check (to pass no mask when
    nothing is padded) reads the mask on the host at every forward, and on a GPU the host then waits for the queued
    kernels at every step. A batch without padding gets a mask of all True instead: the same result. One code path
    on every device, so the CPU tests see that a step reads nothing (tests/test_amp.py)."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_bidirectional_skip": False})


ATTENTION = "bertcls_sdpa"


def use_fast_dropout(module: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` inside ``module`` by a ``FastDropout`` with the same ``p``, and switch
    transformers models inside it from SDPA to ``ATTENTION``; returns how many dropout modules were replaced."""
    # Registered here, not at import: importing bertcls changes nothing in transformers (registering again is a no-op).
    AttentionInterface.register(ATTENTION, sdpa_with_fast_dropout)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask_without_sync)
    replaced = 0
    for parent in module.modules():
        if getattr(getattr(parent, "config", None), "_attn_implementation", None) == "sdpa" and hasattr(
            parent, "set_attn_implementation"
        ):
            parent.set_attn_implementation(ATTENTION)
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                # in the mode of the one it replaces: applied to a model in eval mode, dropout stays off
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
                replaced += 1
    return replaced
