"""Predict with an ONNX export (``python -m bertcls.export --format onnx``) through ONNX Runtime, without PyTorch.

Tokenization uses the ``tokenizers`` library on the exported ``tokenizer.json`` (what transformers' fast tokenizers
run underneath), so this module and everything it imports stay free of torch: a deployment installs
``onnxruntime``, ``tokenizers`` and ``numpy`` only. The output format is ``BertForTextClassification.predict``'s, and
long texts are read as the model read them (its ``truncation`` or ``window_stride``, saved in the export), with
``bertcls.long_texts``, the code ``model.predict`` uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertcls.errors import BertclsError
from bertcls.inference import Rows, predict_texts, select_tokens
from bertcls.long_texts import check_truncation
from bertcls.multilabel import DEFAULT_DELIMITER, check_task
from bertcls.tasks import get_task

ONNX_CONFIG_NAME = "bertcls_onnx.json"
ONNX_MODEL_NAME = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# bertcls_onnx.json: 2 adds truncation and window_stride (an export without them reads the head, as version 1 did).
ONNX_FORMAT_VERSION = 2


def is_onnx_export(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by ``bertcls.export --format onnx``."""
    return (Path(path).expanduser() / ONNX_CONFIG_NAME).is_file()


class OnnxClassifier:
    """An exported classifier: ``predict``/``predict_proba`` like ``BertForTextClassification``'s, on ONNX Runtime.

    Build one with :meth:`from_folder`.
    """

    def __init__(self, folder: Path, config: dict[str, Any], session: Any, tokenizer: Any):
        self.folder = folder
        self.config = config
        self.session = session
        self.tokenizer = tokenizer
        self.max_length = int(config["max_length"])
        self.truncation = str(config.get("truncation", "head"))
        self.window_stride = int(config.get("window_stride", 0))
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.input_names = [i.name for i in session.get_inputs()]

    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, model_file: str | None = None, threads: int | None = None
    ) -> OnnxClassifier:
        """Load an ONNX export folder (``model_file`` picks another ``.onnx`` file in it; ``threads`` caps ONNX
        Runtime's threads, default: its own choice, one per core).

        Raises:
            BertclsError: not an export folder, a corrupt config, missing model or tokenizer, no onnxruntime.
        """
        folder = Path(path).expanduser()
        if not is_onnx_export(folder):
            raise BertclsError(f"{folder} is not a bertcls ONNX export (no {ONNX_CONFIG_NAME})")
        try:
            config = json.loads((folder / ONNX_CONFIG_NAME).read_text())
            labels, max_length = list(config["labels"]), int(config["max_length"])
            # Exports from before multi-label support have no task: they are single-label.
            config["task"] = check_task(config.get("task", "single_label"))
            get_task(config["task"]).check_saved_decision(config, labels)
            config["truncation"] = check_truncation(config.get("truncation", "head"))
            config["window_stride"] = int(config.get("window_stride", 0))
            if config["window_stride"] < 0:
                raise ValueError("window_stride")
            version = int(config.get("format_version", 1))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, BertclsError) as e:
            raise BertclsError(f"ONNX export {folder}: {ONNX_CONFIG_NAME} is corrupt ({type(e).__name__})") from e
        if version > ONNX_FORMAT_VERSION:
            raise BertclsError(
                f"ONNX export {folder} has format version {version}, newer than this bertcls reads "
                f"({ONNX_FORMAT_VERSION}); upgrade bertcls"
            )
        model = folder / (model_file or config.get("model_file", ONNX_MODEL_NAME))
        if not model.is_file():
            raise BertclsError(f"ONNX export {folder} has no {model.name}; export the checkpoint again")
        if not (folder / TOKENIZER_FILE).is_file():
            raise BertclsError(f"ONNX export {folder} has no {TOKENIZER_FILE}; export the checkpoint again")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BertclsError("predicting with an ONNX export needs onnxruntime: pip install 'bertcls[export]'") from e
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        # As bertcls.data.encode: head truncation is the tokenizer's own; tail, head+tail and windows pick positions
        # of the whole encoding (_encode). Padding is per batch, done here, not by tokenizers.
        if config["truncation"] == "head" and not config["window_stride"]:
            tokenizer.enable_truncation(max_length)
        else:
            tokenizer.no_truncation()
        tokenizer.no_padding()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise to a user
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for a damaged file
            raise BertclsError(
                f"ONNX export {folder}: {model.name} cannot be loaded ({type(e).__name__}); export the checkpoint again"
            ) from e
        config["labels"] = labels
        return cls(folder, config, session, tokenizer)

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    @property
    def num_labels(self) -> int:
        return len(self.config["labels"])

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def multi_label(self) -> bool:
        return self.config["task"] == "multi_label"

    @property
    def thresholds(self) -> list[float] | None:
        """Multi-label: each label's threshold, as saved in the checkpoint it was exported from (else None)."""
        return list(self.config["thresholds"]) if "thresholds" in self.config else None

    @property
    def temperature(self) -> float | list[float] | None:
        """The calibration temperature folded into the exported weights, as the checkpoint recorded it (None:
        uncalibrated, or an export from before it was recorded)."""
        return self.config.get("temperature")

    @property
    def label_delimiter(self) -> str:
        return str(self.config.get("label_delimiter") or DEFAULT_DELIMITER)

    def _encode(self, texts: Sequence[str], text_pairs: Sequence[str] | None) -> tuple[Rows, list[int] | None]:
        """The rows ``model.predict`` reads (``bertcls.inference.select_tokens``): one per text, or with windows one
        per window, plus each window's text index (None without windows)."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise BertclsError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        inputs = list(texts) if text_pairs is None else list(zip(texts, text_pairs))
        encodings = self.tokenizer.encode_batch(inputs)
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        if self.truncation == "head" and not self.window_stride:  # truncated by the tokenizer already
            return columns, None
        return select_tokens(
            columns, lambda i: encodings[i].sequence_ids, self.max_length, self.truncation, self.window_stride or None
        )

    def predict_proba(
        self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """Class probabilities (multi-label: a sigmoid per label), (len(texts), num_labels) as float32, in input order.
        Batches are grouped by length; long texts are truncated, or read as windows whose probabilities are averaged,
        as the exported model was trained to read them."""
        rows, doc_ids = self._encode(texts, text_pairs)
        task = get_task(self.task)

        def run_batch(batch: dict[str, np.ndarray]) -> np.ndarray:
            (logits,) = self.session.run(["logits"], {k: batch[k] for k in self.input_names})
            return task.numpy_probabilities(logits.astype(np.float32))

        return predict_texts(rows, doc_ids, len(texts), batch_size, self.pad_id, run_batch, self.num_labels)

    def predict(
        self, texts: str | Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 64
    ) -> list[dict[str, Any]]:
        """Label names with probabilities: ``[{"label": ..., "score": ..., "probabilities": {...}}, ...]``; for a
        multi-label export every label at or above its threshold: ``[{"labels": [...], "scores": [...], ...}]``."""
        if isinstance(texts, str):
            texts = [texts]
        rows = self.predict_proba(list(texts), text_pairs, batch_size).tolist()
        return get_task(self.task).prediction_dicts(rows, self.labels, self.thresholds)
