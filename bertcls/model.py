"""BertForTextClassification: a pretrained encoder, a pooling choice, dropout and a classification head.

It is a plain ``nn.Module`` that *holds* a transformers backbone rather than a ``PreTrainedModel`` subclass: in
transformers v5, ``post_init``/``from_pretrained`` re-initialize custom modules of a subclass (transformers issues
46620, 42418), which would silently replace the head initializer the user chose. Here the head is initialized by
bertcls alone, after the backbone is loaded, and never touched by transformers.

This module is the model and its ways in and out: the head's parts (pooling registry, ``HeadSpec``, the head
module) live in ``bertcls.heads``, the files in ``bertcls.serialization`` (``save_pretrained``, ``from_pretrained`` and
``load_checkpoint`` here hand over to it, passing the class: serialization never imports the model), the CPU speed
tricks in ``bertcls.speed`` (``load_checkpoint`` applies them), model cards in ``bertcls.card``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from bertcls import serialization, speed
from bertcls.errors import BertclsError
from bertcls.explain import explain as explain_texts
from bertcls.heads import (  # noqa: F401 (POOLINGS, register_pooling, HeadSpec... re-exported: their old home)
    FIRST_TOKEN_POOLINGS,
    POOLINGS,
    ClassificationHead,
    HeadSpec,
    check_choice,
    find_encoder_layers,
    register_pooling,
)
from bertcls.init import InitContext, apply_init
from bertcls.long_texts import TRUNCATIONS
from bertcls.multilabel import DEFAULT_DELIMITER, check_thresholds
from bertcls.tasks import get_task


def max_positions(config) -> int | None:
    """Tokens a backbone reads at most: its position embeddings (RoBERTa-style models reserve the first two)."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    return n - 2 if config.model_type in ("roberta", "xlm-roberta", "camembert") else n


# ---------------------------------------------------------------- model


def backbone_fully_frozen(freeze_backbone: bool, unfreeze_top_k: int) -> bool:
    """No backbone weight trains: what the feature cache (``bertcls.cache``) and a forward without gradients need.
    The one definition, for a model (its property) and for a run's config before the model exists."""
    return bool(freeze_backbone) and unfreeze_top_k == 0


class BertForTextClassification(nn.Module):
    """A BERT-family encoder with a classification head.

    Build one with :meth:`from_pretrained` (a backbone folder or hub name plus ``labels``, or a saved bertcls
    checkpoint). ``model(**batch)`` returns a ``SequenceClassifierOutput`` with ``logits`` (and ``loss`` when
    ``labels`` are given); ``model.predict(texts)`` returns label names with probabilities. A multi-label model
    (``task="multi_label"``) has a sigmoid per label and predicts every label whose probability reaches its threshold
    (``model.thresholds``, saved with the model).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        spec: HeadSpec,
        freeze_backbone: bool = False,
        unfreeze_top_k: int = 0,
        max_length: int | None = None,
        seed: int | None = None,
        truncation: str = "head",
        window_stride: int = 0,
        init_head: bool = True,
        label_texts: Sequence[str] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.spec = spec
        self.head = ClassificationHead(backbone.config.hidden_size, spec)
        self._takes_token_types = "token_type_ids" in inspect.signature(backbone.forward).parameters
        model_max = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
        # How texts are read (max_length, truncation, window_stride): the model owns it, saves it with its weights
        # and a training run's datasets take it from here (set_reading), so predict reads texts as training did.
        self.max_length, self.truncation, self.window_stride = model_max, "head", 0
        self.set_reading(max_length or model_max, truncation, window_stride)
        if init_head:  # False when saved weights are loaded next: their initializer is history, not needed
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            # label_texts: one per label, read by initializers such as label_embeddings through the encoder.
            context = InitContext(list(spec.labels), list(label_texts) if label_texts else None, self.embed)
            self.head.reset_parameters(spec, getattr(backbone.config, "initializer_range", 0.02), generator, context)
        # Multi-label only: how a label set is written in one text cell (read by evaluate, written by predict).
        self.label_delimiter = DEFAULT_DELIMITER
        self._thresholds = get_task(spec.task).initial_thresholds(len(spec.labels))
        # Temperature scaling already folded into the head's last layer (bertcls.calibration), recorded so reports
        # can show the probabilities from before it: None (never calibrated), a float, or one per label.
        self.temperature: float | list[float] | None = None
        self.set_trainable(freeze_backbone, unfreeze_top_k)

    # -- how texts are read, dropout

    def set_reading(
        self, max_length: int | None = None, truncation: str | None = None, window_stride: int | None = None
    ) -> None:
        """Set how texts are read (None keeps the current value). ``max_length`` is capped here, and only here, to
        what the backbone reads (its position embeddings): a longer text would fail deep in the first forward.

        Raises:
            BertclsError: a ``max_length`` or ``window_stride`` out of range, or an unknown ``truncation``.
        """
        if max_length is not None:
            if isinstance(max_length, bool) or int(max_length) < 1:
                raise BertclsError(f"max_length must be a positive number of tokens, got {max_length!r}")
            positions = max_positions(self.backbone.config)
            self.max_length = min(int(max_length), positions) if positions else int(max_length)
        if truncation is not None:
            check_choice("truncation", truncation, TRUNCATIONS)
            self.truncation = truncation
        if window_stride is not None:
            if int(window_stride) < 0:
                raise BertclsError(f"window_stride must be >= 0 (0: off), got {window_stride}")
            self.window_stride = int(window_stride)

    @property
    def reading(self) -> dict[str, Any]:
        """How texts are read: ``max_length``, ``truncation``, ``window_stride`` (as ``set_reading`` takes them)."""
        return {"max_length": self.max_length, "truncation": self.truncation, "window_stride": self.window_stride}

    def set_dropout(self, p: float) -> None:
        """The head's dropout, in its spec and its layers (what a continued run may change about a trained head)."""
        self.spec = dataclasses.replace(self.spec, dropout=p)  # checked by HeadSpec
        for m in self.head.modules():
            if isinstance(m, nn.Dropout):
                m.p = self.spec.dropout

    # -- labels and trainability

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def num_labels(self) -> int:
        return len(self.spec.labels)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def multi_label(self) -> bool:
        return self.spec.task == "multi_label"

    @property
    def thresholds(self) -> list[float] | None:
        """Multi-label: the probability at which each label is predicted, in label order (None for single-label).
        Set a list (one per label) or one number for all labels; saved by ``save_pretrained``."""
        return None if self._thresholds is None else list(self._thresholds)

    @thresholds.setter
    def thresholds(self, value: float | Sequence[float]) -> None:
        if not self.multi_label:
            raise BertclsError("thresholds are for multi-label models; a single-label model predicts the top label")
        values = [value] * self.num_labels if isinstance(value, (int, float)) else list(value)
        self._thresholds = check_thresholds(values, self.labels)

    def set_trainable(self, freeze_backbone: bool, unfreeze_top_k: int = 0) -> None:
        """Freeze the backbone (head-only training), optionally leaving its top ``unfreeze_top_k`` layers trainable."""
        layers = find_encoder_layers(self.backbone)
        if unfreeze_top_k and not freeze_backbone:
            raise BertclsError(
                f"unfreeze_top_k={unfreeze_top_k} picks the trained layers of a frozen backbone, and this one is not "
                "frozen (every layer trains): set freeze_backbone=true, or unfreeze_top_k=0"
            )
        if unfreeze_top_k < 0 or (layers is not None and unfreeze_top_k > len(layers)):
            n = "?" if layers is None else len(layers)
            raise BertclsError(f"unfreeze_top_k must be between 0 and the number of layers ({n}), got {unfreeze_top_k}")
        if unfreeze_top_k and layers is None:
            raise BertclsError("unfreeze_top_k: cannot find the encoder layers of this backbone; use freeze_backbone")
        self.freeze_backbone = bool(freeze_backbone)
        self.unfreeze_top_k = int(unfreeze_top_k)
        self.backbone.requires_grad_(not self.freeze_backbone)
        self._frozen: list[nn.Module] = []
        if self.freeze_backbone:
            if self.unfreeze_top_k:
                top = list(layers)[-self.unfreeze_top_k :]
                for layer in top:
                    layer.requires_grad_(True)
                # The pooler sits above the top layer, so it trains with it.
                pooler = getattr(self.backbone, "pooler", None)
                keep = {id(m) for layer in top for m in layer.modules()}
                if pooler is not None:
                    pooler.requires_grad_(True)
                    keep |= {id(m) for m in pooler.modules()}
                # Every module with no trainable part inside it: embeddings, lower layers (not their containers).
                self._frozen = [m for m in self.backbone.modules() if not any(id(d) in keep for d in m.modules())]
            else:
                self._frozen = [self.backbone]
        pooler = getattr(self.backbone, "pooler", None)
        if pooler is not None and self.spec.pooling != "pooler":
            # An unused pooler that wants gradients trips DDP's unused-parameter check under several processes.
            pooler.requires_grad_(False)
        self.train(self.training)

    def encoder_layers(self) -> list[nn.Module]:
        """The backbone's transformer layers, bottom to top.

        Raises:
            BertclsError: the layer list of this backbone cannot be found.
        """
        layers = find_encoder_layers(self.backbone)
        if layers is None:
            raise BertclsError(f"cannot find the encoder layers of {type(self.backbone).__name__}")
        return list(layers)

    def reinit_top_layers(self, k: int, generator: torch.Generator | None = None) -> None:
        """Re-initialize the top ``k`` encoder layers and the pooler the way BERT initializes new weights: Linear
        weights N(0, initializer_range²), biases 0, LayerNorm weight 1 and bias 0 (Zhang et al. 2020, "Revisiting
        Few-sample BERT Fine-tuning", arXiv 2006.05987: the top layers are specific to pretraining and fine-tune
        better from scratch).

        Raises:
            BertclsError: ``k`` is negative or more than the number of layers.
        """
        layers = self.encoder_layers()
        if not 0 <= k <= len(layers):
            raise BertclsError(f"reinit_top_k must be between 0 and the number of layers ({len(layers)}), got {k}")
        std = getattr(self.backbone.config, "initializer_range", 0.02)
        rules = {
            nn.Linear: {"weight": {"name": "normal", "std": std}, "bias": "zeros"},
            nn.LayerNorm: {"weight": "ones", "bias": "zeros"},
        }
        pooler = getattr(self.backbone, "pooler", None)
        for module in [*layers[len(layers) - k :], *([pooler] if k and pooler is not None else [])]:
            apply_init(module, rules, generator)

    @property
    def backbone_fully_frozen(self) -> bool:
        return backbone_fully_frozen(self.freeze_backbone, self.unfreeze_top_k)

    def train(self, mode: bool = True) -> BertForTextClassification:
        # Frozen parts stay in eval mode: dropout in a frozen encoder only adds noise to fixed features.
        super().train(mode)
        for m in getattr(self, "_frozen", []):
            m.eval()
        return self

    # -- forward

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> torch.Tensor:
        """The pooled backbone output that the head classifies: (batch, hidden). With ``cu_seqlens`` the batch is
        unpadded: its texts end to end in one row (``bertcls.packing.pack``)."""
        if attention_mask is None and cu_seqlens is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        # A fully frozen backbone needs no autograd graph: saves its activations' memory and time.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_fully_frozen):
            if cu_seqlens is not None:
                return self._packed_features(kwargs, position_ids, cu_seqlens, max_seqlen)
            outputs = self.backbone(**kwargs)
            return POOLINGS[self.spec.pooling](outputs, attention_mask)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """The pooled features the head reads for ``texts`` (eval mode, no gradients), (len(texts), hidden), float32
        on the model's device: a label's name for ``label_embeddings``, a text's embedding."""
        was_training = self.training
        self.eval()
        device = next(self.backbone.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            )  # fmt: skip
            keys = ("input_ids", "attention_mask", "token_type_ids")
            batch = {k: v.to(device) for k, v in batch.items() if k in keys}
            out.append(self.features(**batch).float())
        self.train(was_training)
        return torch.cat(out)

    def _packed_features(self, kwargs: dict, position_ids, cu_seqlens, max_seqlen) -> torch.Tensor:
        from bertcls import packing

        kwargs = {**kwargs, "position_ids": position_ids, **packing.varlen_kwargs(cu_seqlens, max_seqlen)}
        with packing.varlen(self.backbone):
            outputs = self.backbone(**kwargs)
        return packing.pool(self.backbone, self.spec.pooling, outputs, cu_seqlens)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unpadded: Any,
    ) -> SequenceClassifierOutput:
        """Logits (and with ``labels`` the loss); ``unpadded``: ``position_ids``, ``cu_seqlens`` and ``max_seqlen`` of
        a packed batch (``bertcls.packing``)."""
        logits = self.head(self.features(input_ids, attention_mask, token_type_ids, **unpadded))
        loss = None if labels is None else get_task(self.task).plain_loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits to probabilities in float32: softmax over labels, or a sigmoid per label for multi-label."""
        return get_task(self.task).probabilities(logits)

    # -- prediction

    def predict_proba(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 64,
        precision: str = "no",
    ) -> torch.Tensor:
        """Class probabilities (multi-label: one sigmoid per label), (len(texts), num_labels), in input order. Batches
        are grouped by length; long texts are truncated (or read as windows) as the model was trained
        (``model.truncation``, ``model.window_stride``). ``precision``: ``no`` (full), ``bf16``, ``fp16``, or
        ``auto`` (bf16 where the model's device has it, as training's ``mixed_precision: auto``)."""
        return torch.from_numpy(self._predict_proba(texts, text_pairs, batch_size, precision, (1.0,)))

    def predict_proba_before_calibration(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 64,
        precision: str = "no",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict_proba``'s probabilities and, from the same pass, those before the folded temperature
        (``self.temperature``; the logits times T, window by window, so a long text read as windows gets the mean of
        its windows' uncalibrated probabilities, what the model gave before calibration)."""
        factor = 1.0 if self.temperature is None else self.temperature
        both = self._predict_proba(texts, text_pairs, batch_size, precision, (1.0, factor))
        return torch.from_numpy(both[:, : self.num_labels]), torch.from_numpy(both[:, self.num_labels :])

    def _predict_proba(self, texts, text_pairs, batch_size: int, precision: str, factors):
        """Per text, ``probabilities(logits * f)`` for each ``f`` of ``factors``, side by side."""
        from bertcls.data import tokenize_texts
        from bertcls.inference import predict_texts, torch_runner
        from bertcls.precision import check_precision, resolve

        check_precision(precision)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        # Chunked into flat arrays: memory stays near four bytes a token however many texts come in.
        rows, _ = tokenize_texts(
            self.tokenizer, texts, text_pairs, self.max_length, self.truncation, self.window_stride,
            progress=False,
        )  # fmt: skip
        scales = [torch.as_tensor(f, dtype=torch.float32, device=device) for f in factors]

        def forward(batch):
            logits = self(**batch).logits.float()
            return torch.cat([self.probabilities(logits * f) for f in scales], -1)

        run_batch = torch_runner(forward, device, resolve(precision, device.type))
        pad_id = self.tokenizer.pad_token_id or 0
        width = self.num_labels * len(factors)
        probs = predict_texts(rows, rows.doc_ids, len(texts), batch_size, pad_id, run_batch, width)
        self.train(was_training)
        return probs

    def predict(
        self,
        texts: str | Sequence[str],
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 64,
        precision: str = "no",
    ) -> list[dict[str, Any]]:
        """Label names with probabilities: ``[{"label": "positive", "score": 0.97, "probabilities": {...}}, ...]``
        (``precision`` as in ``predict_proba``).

        A multi-label model gives every label at or above its threshold, most probable first:
        ``[{"labels": ["news", "sport"], "scores": [0.91, 0.62], "probabilities": {...}}, ...]`` (``labels`` may be
        empty).
        """
        if isinstance(texts, str):
            texts = [texts]
        probs = self.predict_proba(list(texts), text_pairs, batch_size, precision)
        return get_task(self.task).prediction_dicts(probs.tolist(), self.labels, self._thresholds)

    def explain(
        self,
        texts: str | Sequence[str],
        text_pairs: Sequence[str] | None = None,
        target: str | Sequence[str] | None = None,
        method: str = "ig",
        n_steps: int = 32,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Per text, its words with a score each for the predicted class (or ``target``): integrated gradients
        (``method="ig"``) or gradient x input (``"grad_x_input"``); see ``bertcls.explain.explain``. Needs Captum
        (the ``explain`` extra)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return explain_texts(self, texts, text_pairs, target, method, n_steps, batch_size, progress)

    # -- saving and loading (bertcls.serialization)

    def save_pretrained(self, directory: str | os.PathLike, card_info: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint folder: see ``bertcls.serialization.save_pretrained``."""
        return serialization.save_pretrained(self, directory, card_info)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, labels: Sequence[str] | None = None, **options: Any
    ) -> BertForTextClassification:
        """A saved bertcls checkpoint, or a pretrained backbone (folder, hub name or ``packaged:...``) with a new head
        for ``labels``: see ``bertcls.serialization.from_pretrained`` for the options (``head_init``, ``pooling``,
        ``dropout``, ``hidden_sizes``, ``freeze_backbone``, ``seed``, ``task``, ...).

        Raises:
            BertclsError: missing folder, pickle-only weights, corrupt checkpoint, missing labels, bad options.
        """
        return serialization.from_pretrained(name_or_path, labels, model_class=cls, **options)


def load_checkpoint(path: str | os.PathLike, speedups: bool = True) -> BertForTextClassification:
    """A saved bertcls checkpoint, for the tools that only use one (evaluate, predict, export): a plain backbone
    folder is an error here rather than a request for a new head. ``speedups``: apply ``bertcls.speed`` (same
    predictions, faster on CPU).

    Raises:
        BertclsError: the folder is missing, is not a bertcls checkpoint, or is corrupt.
    """
    model = BertForTextClassification.from_pretrained(serialization.checkpoint_folder(path))
    if speedups:
        speed.apply(model)
    return model
