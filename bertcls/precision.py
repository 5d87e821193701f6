"""Mixed precision: what ``auto`` means on this machine, and the autocast context that runs a model at a precision.

One place for the choice, so that training, the feature cache, ``evaluate`` and ``predict`` agree: a checkpoint
evaluated with ``auto`` on the machine it was trained on gets the precision its run evaluated in. torch is imported
only where it is used: ``bertcls.predict`` on an ONNX export runs without it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from bertcls.errors import BertclsError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "no", "bf16", "fp16")


def check_precision(choice: str) -> None:
    if choice not in PRECISIONS:
        raise BertclsError(f"unknown precision '{choice}'; valid: {', '.join(PRECISIONS)}")


@functools.cache  # the CPU does not change; prediction resolves "auto" on every call
def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 or AMX): without them bf16 on CPU is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve(choice: str, device_type: str | None = None) -> str:
    """``auto`` -> bf16 on GPUs (fp16 where a GPU lacks bf16) and on CPUs with native bf16, else ``no`` (full
    precision); any other choice as given. ``device_type``: where the model runs (default: a GPU if there is one)."""
    if choice != "auto":
        return choice
    import torch

    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_type == "cpu":
        return "bf16" if cpu_has_bf16() else "no"
    return "no"


def autocast(device_type: str, precision: str) -> torch.autocast:
    """``torch.autocast`` at ``precision`` (``no``: switched off)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)
