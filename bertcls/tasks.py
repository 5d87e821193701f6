"""The classification task, looked up once by name: what a label is and everything that follows from it.

A single-label task has one label per text (softmax, cross-entropy, accuracy, the top label); a multi-label task a
set of labels per text (a sigmoid per label, binary cross-entropy, micro-F1, every label at or above its threshold).
Callers hold a ``Task`` and never branch on its name. Importing this module imports neither torch nor scikit-learn
(``bertcls.config`` reads the metric names), so the heavy imports live inside the methods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class Task:
    """What single- and multi-label classification share; the two subclasses fill in the differences."""

    name: str
    metrics: tuple[str, ...]  # what eval.metric may select; the first is the default
    headline: tuple[str, ...]  # the numbers a log line shows
    summary: tuple[str, ...]  # the columns of `bertcls.evaluate`'s comparison table
    compared: str  # the score checkpoints are compared on, row by row (paired bootstrap)

    @property
    def default_metric(self) -> str:
        return self.metrics[0]

    def describe(self, metrics: dict[str, float]) -> str:
        """The headline numbers of a metrics dict, for the log."""
        return " ".join(f"{k} {metrics[k]:.4f}" for k in self.headline)

    def label_values(self, values: Sequence[Any]) -> list[Any]:
        """Every label value in a column (a multi-label cell holds several)."""
        return list(values)

    def decision_state(self, model) -> dict[str, Any]:
        """What, beside the weights, decides a model's predictions (kept with the best model during a run)."""
        return {}

    def load_decision_state(self, model, state: dict[str, Any]) -> None:
        """Give ``model`` the decision state ``decision_state`` returned."""

    def configure(self, model, tune: bool, threshold: Any, delimiter: str) -> None:
        """Set the run's decision options on a new model."""


class SingleLabel(Task):
    name = "single_label"
    metrics = ("accuracy", "macro_f1", "loss")
    headline = ("loss", "accuracy", "macro_f1")
    summary = ("accuracy", "macro_f1", "loss", "ece")
    compared = "accuracy"

    def uniform_loss(self, num_labels: int) -> float:
        """The loss of predicting every label equally likely: ln(num_labels) for softmax over the labels."""
        return math.log(num_labels)

    def targets(self, values: Sequence[Any], labels: Sequence[str], source: str = "data") -> list[int]:
        from bertcls.data import label_ids

        return label_ids(values, labels, source)

    def check_label_count(self, labels: Sequence[str], values: Sequence[Any], source: str) -> None:
        from bertcls.errors import BertclsError

        if len(set(map(str, values))) < 2:
            raise BertclsError(f"{source}: every training example has the same label; a classifier needs two or more")

    def probabilities(self, logits):
        return logits.float().softmax(-1)

    def plain_loss(self, logits, labels):
        """Mean cross-entropy in float32 (what the model's forward returns with labels)."""
        import torch

        return torch.nn.functional.cross_entropy(logits.float(), labels)

    def numpy_probabilities(self, logits):
        z = logits - logits.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def build_loss(self, loss_cfg, labels: Sequence[str], train_targets, log):
        """``(loss_fn, loss_weight)``: cross-entropy with ``loss.class_weights`` and ``loss.label_smoothing``."""
        from bertcls import losses

        weights = losses.class_weights(loss_cfg.class_weights, labels, train_targets)
        if weights is not None:
            log(f"class weights: {dict(zip(labels, [round(w, 4) for w in weights.tolist()], strict=True))}")
        return losses.build_loss(weights, loss_cfg.label_smoothing), losses.build_loss_weight(weights)

    def metrics_of(self, gold, probs, thresholds=None) -> dict[str, float]:
        from bertcls.metrics import core_metrics

        return core_metrics(gold, probs)

    def decide(self, probs, thresholds=None):
        """Predicted label indices."""
        return probs.argmax(-1)

    def prediction_dicts(self, rows: Sequence[Sequence[float]], labels: Sequence[str], thresholds=None) -> list[dict]:
        """``[{"label": ..., "score": ..., "probabilities": {label: p}}, ...]``: the top label of each row."""
        out = []
        for row in rows:
            top = max(range(len(row)), key=row.__getitem__)
            out.append({"label": labels[top], "score": row[top], "probabilities": dict(zip(labels, row, strict=True))})
        return out


class MultiLabel(Task):
    name = "multi_label"
    metrics = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "loss")
    headline = ("loss", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
    summary = ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss", "loss")
    compared = "subset_accuracy"

    def uniform_loss(self, num_labels: int) -> float:
        """The loss of predicting every label at probability 1/2: ln 2 for a sigmoid per label."""
        return math.log(2)

    def label_values(self, values: Sequence[Any]) -> list[Any]:
        return [v for s in values for v in s]

    def targets(self, values: Sequence[Any], labels: Sequence[str], source: str = "data") -> list[list[int]]:
        from bertcls.multilabel import multi_hot

        return multi_hot(values, labels, source)

    def check_label_count(self, labels: Sequence[str], values: Sequence[Any], source: str) -> None:
        from bertcls.errors import BertclsError

        if len(labels) < 2:
            raise BertclsError(
                f"{source}: the training examples use {len(labels)} label(s) {list(labels)}; a multi-label classifier "
                "needs two or more (for one yes/no label use data.task=single_label)"
            )

    def probabilities(self, logits):
        return logits.float().sigmoid()

    def plain_loss(self, logits, labels):
        """Mean binary cross-entropy in float32 (what the model's forward returns with labels)."""
        import torch

        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def numpy_probabilities(self, logits):
        from bertcls.multilabel import sigmoid

        return sigmoid(logits)

    def build_loss(self, loss_cfg, labels: Sequence[str], train_targets, log):
        """``(loss_fn, loss_weight)``: binary cross-entropy per label with ``loss.pos_weight``."""
        from bertcls import losses

        weights = losses.pos_weights(loss_cfg.pos_weight, labels, train_targets)
        if weights is not None:
            log(f"pos_weight: {dict(zip(labels, [round(w, 4) for w in weights.tolist()], strict=True))}")
        return losses.build_multilabel_loss(weights), losses.build_loss_weight(None, multi_label=True)

    def metrics_of(self, gold, probs, thresholds=None) -> dict[str, float]:
        from bertcls.metrics import multilabel_metrics

        return multilabel_metrics(gold, probs, thresholds)

    def decide(self, probs, thresholds=None):
        """Multi-hot rows: the labels at or above their thresholds."""
        from bertcls.multilabel import decide

        return decide(probs, thresholds)

    def prediction_dicts(self, rows: Sequence[Sequence[float]], labels: Sequence[str], thresholds=None) -> list[dict]:
        from bertcls.multilabel import prediction_dicts

        return prediction_dicts(rows, labels, thresholds)

    def decision_state(self, model) -> dict[str, Any]:
        return {"thresholds": dict(zip(model.labels, model.thresholds, strict=True))}

    def load_decision_state(self, model, state: dict[str, Any]) -> None:
        model.thresholds = list(state["thresholds"].values())

    def configure(self, model, tune: bool, threshold: Any, delimiter: str) -> None:
        from bertcls.multilabel import DEFAULT_THRESHOLD

        # Tuned thresholds replace 0.5 at each evaluation; best/ and last/ keep the ones tuned for their weights.
        model.thresholds = DEFAULT_THRESHOLD if tune else threshold
        model.label_delimiter = delimiter


TASKS: dict[str, Task] = {t.name: t for t in (SingleLabel(), MultiLabel())}


def get_task(name: str) -> Task:
    """The task registered as ``name`` (``single_label`` or ``multi_label``)."""
    if name not in TASKS:
        from bertcls.errors import BertclsError

        raise BertclsError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    return TASKS[name]
