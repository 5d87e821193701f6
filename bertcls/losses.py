"""The training loss: cross-entropy with optional class weights and label smoothing, or for a multi-label task
binary cross-entropy per label with optional ``pos_weight``.

Kept apart from the loop so the loop reads ``loss = loss_fn(logits, labels)`` and tests can check the exact formula.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from bertcls.errors import BertclsError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_weights(spec: str | Mapping[str, float] | None, labels: Sequence[str], train_ids: Sequence[int]):
    """Per-class loss weights in label order, or None.

    ``spec`` is ``"balanced"`` (sklearn's ``n_samples / (n_classes * count(class))`` over the train labels) or a
    mapping from label *name* to weight (labels left out weigh 1), so the order of labels can never be confused.

    Raises:
        BertclsError: an unknown label name, or ``balanced`` with a label that has no training example.
    """
    if spec is None:
        return None
    if spec == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = set(train_ids)
        missing = [labels[i] for i in range(len(labels)) if i not in present]
        if missing:
            raise BertclsError(
                f"loss.class_weights=balanced: label(s) {missing} have no training example; give weights by name"
            )
        w = compute_class_weight("balanced", classes=np.arange(len(labels)), y=np.asarray(train_ids))
        return torch.tensor(w, dtype=torch.float32)
    unknown = sorted(set(spec) - set(labels))
    if unknown:
        raise BertclsError(f"loss.class_weights: unknown label(s) {unknown}; labels are {list(labels)}")
    return torch.tensor([float(spec.get(name, 1.0)) for name in labels], dtype=torch.float32)


def on_device(weights: torch.Tensor | None):
    """``get(device)``: ``weights`` on that device, copied there once (a copy from the host at every step would make
    the host wait for the GPU's queue each time)."""
    copies: dict[torch.device, torch.Tensor] = {}

    def get(device: torch.device) -> torch.Tensor | None:
        if weights is None:
            return None
        if device not in copies:
            copies[device] = weights.to(device)
        return copies[device]

    return get


def build_loss(weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> LossFn:
    """``loss_fn(logits, labels)``: mean cross-entropy in float32, weighted and smoothed as torch defines it.

    With weights ``w`` the mean is ``sum_i w[y_i] * l_i / sum_i w[y_i]``; with smoothing ``e`` each target becomes
    ``(1 - e) * onehot + e / num_classes``.
    """

    on = on_device(weights)

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = on(logits.device)
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=w, label_smoothing=label_smoothing)

    return loss_fn


def build_loss_weight(weights: torch.Tensor | None = None):
    """``weight(labels)``: what the mean loss of a batch divides its summed loss by (the sum of the examples' class
    ``weights``, or without weights the number of label entries: examples, or for multi-hot rows example-label
    pairs), so that micro-batches of one update can be weighed as the single batch they make up."""

    on = on_device(weights)

    def weight(labels: torch.Tensor) -> torch.Tensor:
        if weights is not None:
            return on(labels.device)[labels].sum()
        # A fill on the device: torch.tensor(n, device=...) would copy from the host and wait for the GPU.
        return torch.full((), float(labels.numel()), device=labels.device)

    return weight


def pos_weights(spec: str | Mapping[str, float] | None, labels: Sequence[str], train_rows: Sequence[Sequence[int]]):
    """Per-label weights of the positive term of the multi-label BCE, in label order, or None.

    ``spec`` is ``"balanced"`` (``negatives / positives`` of each label over the train examples, so both terms of a
    label weigh the same in total) or a mapping from label *name* to weight (labels left out weigh 1).

    Raises:
        BertclsError: an unknown label name, or ``balanced`` with a label that no training example has.
    """
    if spec is None:
        return None
    if spec == "balanced":
        rows = np.asarray(train_rows, dtype=np.float64).reshape(-1, len(labels))
        pos = rows.sum(0)
        missing = [labels[i] for i in range(len(labels)) if pos[i] == 0]
        if missing:
            raise BertclsError(
                f"loss.pos_weight=balanced: label(s) {missing} have no positive training example; give weights by name"
            )
        return torch.tensor((len(rows) - pos) / pos, dtype=torch.float32)
    unknown = sorted(set(spec) - set(labels))
    if unknown:
        raise BertclsError(f"loss.pos_weight: unknown label(s) {unknown}; labels are {list(labels)}")
    return torch.tensor([float(spec.get(name, 1.0)) for name in labels], dtype=torch.float32)


def build_multilabel_loss(pos_weight: torch.Tensor | None = None) -> LossFn:
    """``loss_fn(logits, targets)``: binary cross-entropy with logits in float32, averaged over examples and labels.

    With ``pos_weight`` ``w`` each element is ``-(w[c] * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x)))``,
    as torch's ``binary_cross_entropy_with_logits`` defines it.
    """

    on = on_device(pos_weight)

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = on(logits.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=w)

    return loss_fn


def build_distill_loss(temperature: float, alpha: float) -> LossFn:
    """``loss_fn(logits, targets)``: knowledge distillation (Hinton et al. 2015), the mean over rows in float32.

    ``targets`` holds per row the teacher's probabilities at ``temperature`` (the first ``num_labels`` columns) and
    the true label index, or -1 where the row has none (the last column; ``bertcls.distill.soft_targets``). A row's
    loss is ``T² · KL(teacher_T || softmax(logits / T))``, mixed as ``alpha · CE + (1 - alpha) · T² · KL`` with the
    cross-entropy on the true label where there is one. T² keeps the soft term's gradients the same size whatever T.
    """
    t2 = temperature * temperature

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, soft, hard = logits.float(), targets[:, :-1].float(), targets[:, -1].long()
        log_student = torch.log_softmax(logits / temperature, -1)
        kl = torch.nn.functional.kl_div(log_student, soft, reduction="none").sum(-1) * t2
        has = hard >= 0
        ce = torch.nn.functional.cross_entropy(logits, hard.clamp(min=0), reduction="none")
        return torch.where(has, alpha * ce + (1 - alpha) * kl, kl).mean()

    return loss_fn


def row_weight(targets: torch.Tensor) -> torch.Tensor:
    """``loss_weight`` of a loss averaged over rows (``build_distill_loss``): the number of rows."""
    return torch.full((), float(targets.shape[0]), device=targets.device)
