"""Gradient accumulation is exact: one accumulated update has the gradient of one batch of all its examples."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from bertcls import BertForTextClassification, TextClassificationDataset
from bertcls.losses import build_loss, build_loss_weight, build_multilabel_loss
from bertcls.train import backward_group, forward_tokens, micro_batch_groups

TEXTS = [
    "good film",
    "a dull and flat plot",
    "the actor was great and the story was moving",
    "bad",
    "lovely",
    "tedious movie and a weak ending",
    "brilliant",
    "the plot is messy",
    "fun fun fun",
    "awful",
]


def model_and_batches(tiny_bert, task: str, sizes: list[int]):
    labels = ["negative", "positive", "neutral"]
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=labels, task=task, seed=0)
    model.eval()  # no dropout: the two computations must see the same network
    if task == "multi_label":
        targets = [["positive", "neutral"] if i % 3 == 0 else [labels[i % 2]] for i in range(len(TEXTS))]
    else:
        targets = [labels[i % 3] for i in range(len(TEXTS))]
    ds = TextClassificationDataset(TEXTS, targets, model.tokenizer, 32, label_names=labels, task=task)
    items = [ds[i] for i in range(len(ds))]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    group = [ds.collate(items[s : s + n]) for s, n in zip(starts, sizes, strict=True)]
    return model, group, ds.collate(items[: sum(sizes)])


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    "task,weights,sizes",
    [
        ("single_label", None, [4, 4, 2]),  # a short last micro-batch
        ("single_label", torch.tensor([1.0, 3.0, 0.5]), [4, 4, 2]),  # class weights on
        ("single_label", torch.tensor([1.0, 3.0, 0.5]), [3, 1]),  # a group shorter than it could be
        ("multi_label", torch.tensor([2.0, 0.5, 1.0]), [4, 4, 2]),  # pos_weight on
    ],
)
def test_accumulated_gradient_equals_one_big_batch(tiny_bert, task, weights, sizes):
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=True)
    model, group, whole = model_and_batches(tiny_bert, task, sizes)
    if task == "multi_label":
        loss_fn, weight = build_multilabel_loss(weights), build_loss_weight()
    else:
        loss_fn, weight = build_loss(weights, label_smoothing=0.1), build_loss_weight(weights)

    copies = [dict(b) for b in group]  # backward_group takes the labels out of its batches
    losses = backward_group(accelerator, model, group, forward_tokens, loss_fn, weight)
    accumulated = grads(model)
    model.zero_grad(set_to_none=True)
    labels = whole.pop("labels")
    whole.pop("index", None)
    loss_fn(forward_tokens(model, whole), labels).backward()
    single = grads(model)

    assert len(losses) == len(sizes)
    assert len(accumulated) == len(single) > 0
    for a, b in zip(accumulated, single, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # What accelerate's accumulate() computes (each micro-batch's mean / k) differs when the sizes do:
    k = len(sizes)
    model.zero_grad(set_to_none=True)
    for batch in copies:
        labels = batch.pop("labels")
        (loss_fn(forward_tokens(model, batch), labels) / k).backward()
    naive = grads(model)
    assert max((a - b).abs().max().item() for a, b in zip(naive, single, strict=True)) > 1e-4


def test_micro_batch_groups_keep_a_short_last_group():
    assert list(micro_batch_groups(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(micro_batch_groups(range(4), 1)) == [[0], [1], [2], [3]]
