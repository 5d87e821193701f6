"""bertcls: fine-tune BERT-family encoders for text classification.

The public names are imported on first use (PEP 562), so ``import bertcls.predict`` on an ONNX export does not
load PyTorch: a deployment that only predicts with ONNX Runtime needs no torch installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bertcls.errors import BertclsError

__version__ = "0.1.0"

_LAZY = {
    "LengthGroupedBatchSampler": "bertcls.data",
    "TextClassificationDataset": "bertcls.data",
    "load_split": "bertcls.data",
    "pad_batch": "bertcls.data",
    "INITIALIZERS": "bertcls.init",
    "apply_init": "bertcls.init",
    "describe_init": "bertcls.init",
    "register_initializer": "bertcls.init",
    "POOLINGS": "bertcls.model",
    "BertForTextClassification": "bertcls.model",
    "register_pooling": "bertcls.model",
    "load_checkpoint": "bertcls.model",
}

__all__ = [
    "BertForTextClassification",
    "BertclsError",
    "INITIALIZERS",
    "LengthGroupedBatchSampler",
    "POOLINGS",
    "TextClassificationDataset",
    "apply_init",
    "describe_init",
    "load_checkpoint",
    "load_split",
    "pad_batch",
    "register_initializer",
    "register_pooling",
]

if TYPE_CHECKING:
    from bertcls.data import LengthGroupedBatchSampler, TextClassificationDataset, load_split, pad_batch
    from bertcls.init import INITIALIZERS, apply_init, describe_init, register_initializer
    from bertcls.model import POOLINGS, BertForTextClassification, load_checkpoint, register_pooling


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'bertcls' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
