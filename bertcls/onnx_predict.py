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
from bertcls.long_texts import check_truncation, mean_of_windows, truncated_positions, window_positions
from bertcls.multilabel import DEFAULT_DELIMITER, check_task, check_thresholds, prediction_dicts, sigmoid

ONNX_CONFIG_NAME = "bertcls_onnx.json"
ONNX_MODEL_NAME = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# bertcls_onnx.json: 2 adds truncation and window_stride (an export without them reads the head, as version 1 did).
ONNX_FORMAT_VERSION = 2


def is_onnx_export(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by ``bertcls.export --format onnx``."""
    return (Path(path).expanduser() / ONNX_CONFIG_NAME).is_file()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


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
    def from_folder(cls, path: str | os.PathLike, model_file: str | None = None) -> OnnxClassifier:
        """Load an ONNX export folder (``model_file`` picks another ``.onnx`` file in it).

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
            if config["task"] == "multi_label":
                config["thresholds"] = check_thresholds(config["thresholds"], labels)
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
        return list(self.config["thresholds"]) if self.multi_label else None

    @property
    def label_delimiter(self) -> str:
        return str(self.config.get("label_delimiter") or DEFAULT_DELIMITER)

    def _encode(
        self, texts: Sequence[str], text_pairs: Sequence[str] | None
    ) -> tuple[list[tuple[list[int], list[int], list[int]]], list[int] | None]:
        """Rows of (ids, attention mask, token types) as ``model.predict`` builds them: one per text, or with windows
        one per window, plus each window's text index (None without windows)."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise BertclsError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        inputs = list(texts) if text_pairs is None else list(zip(texts, text_pairs))
        encodings = self.tokenizer.encode_batch(inputs)
        if self.truncation == "head" and not self.window_stride:  # truncated by the tokenizer already
            return [(e.ids, e.attention_mask, e.type_ids) for e in encodings], None
        rows, doc_ids = [], []
        for i, e in enumerate(encodings):
            if self.window_stride:
                kept = window_positions(e.sequence_ids, self.max_length, self.window_stride, i)
            else:
                kept = [truncated_positions(e.sequence_ids, self.max_length, self.truncation)]
            for keep in kept:
                rows.append(tuple([column[j] for j in keep] for column in (e.ids, e.attention_mask, e.type_ids)))
                doc_ids.append(i)
        return rows, doc_ids if self.window_stride else None

    def predict_proba(
        self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """Class probabilities (multi-label: a sigmoid per label), (len(texts), num_labels) as float32, in input order.
        Batches are grouped by length; long texts are truncated, or read as windows whose probabilities are averaged,
        as the exported model was trained to read them."""
        encodings, doc_ids = self._encode(texts, text_pairs)
        probs = np.empty((len(encodings), self.num_labels), dtype=np.float32)
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i][0]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encodings[i][0]) for i in idx)
            batch = {
                "input_ids": np.full((len(idx), width), self.pad_id, dtype=np.int64),
                "attention_mask": np.zeros((len(idx), width), dtype=np.int64),
                "token_type_ids": np.zeros((len(idx), width), dtype=np.int64),
            }
            for row, i in enumerate(idx):
                ids, mask, types = encodings[i]
                n = len(ids)
                batch["input_ids"][row, :n] = ids
                batch["attention_mask"][row, :n] = mask
                batch["token_type_ids"][row, :n] = types
            (logits,) = self.session.run(["logits"], {k: batch[k] for k in self.input_names})
            logits = logits.astype(np.float32)
            probs[idx] = sigmoid(logits) if self.multi_label else _softmax(logits)
        return probs if doc_ids is None else mean_of_windows(probs, doc_ids, len(texts))

    def predict(
        self, texts: str | Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 64
    ) -> list[dict[str, Any]]:
        """Label names with probabilities: ``[{"label": ..., "score": ..., "probabilities": {...}}, ...]``; for a
        multi-label export every label at or above its threshold: ``[{"labels": [...], "scores": [...], ...}]``."""
        if isinstance(texts, str):
            texts = [texts]
        labels = self.labels
        rows = self.predict_proba(list(texts), text_pairs, batch_size).tolist()
        if self.multi_label:
            return prediction_dicts(rows, labels, self.config["thresholds"])
        out = []
        for row in rows:
            top = max(range(len(row)), key=row.__getitem__)
            out.append({"label": labels[top], "score": row[top], "probabilities": dict(zip(labels, row, strict=True))})
        return out
