"""bertcls: fine-tune BERT-family encoders for text classification."""

from bertcls.data import LengthGroupedBatchSampler, TextClassificationDataset, load_split, pad_batch
from bertcls.errors import BertclsError
from bertcls.init import INITIALIZERS, apply_init, describe_init, register_initializer
from bertcls.model import POOLINGS, BertForTextClassification, register_pooling

__version__ = "0.1.0"

__all__ = [
    "INITIALIZERS",
    "POOLINGS",
    "BertForTextClassification",
    "BertclsError",
    "LengthGroupedBatchSampler",
    "TextClassificationDataset",
    "apply_init",
    "describe_init",
    "load_split",
    "pad_batch",
    "register_initializer",
    "register_pooling",
]
