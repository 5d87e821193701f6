"""Batched prediction over a DataLoader of length-sorted batches, across one process or many, in input order.

Training's evaluation and its test split use it; every item carries its index, so rows are put back in input order
and the windows of a long text are averaged into one row.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from bertcls.data import length_sorted_batches
from bertcls.long_texts import mean_of_windows
from bertcls.tasks import Task


def make_eval_loader(ds, batch_size: int, pin: bool) -> DataLoader:
    # Length-sorted batches; every item carries its index so predictions are put back in input order.
    return DataLoader(
        ds,
        batch_sampler=length_sorted_batches(ds.lengths, batch_size),
        collate_fn=ds.collate,
        pin_memory=pin,
        generator=torch.Generator(),  # leaves the global RNG (dropout's) alone, as the training loader does
    )


def forward_tokens(module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the whole model on a tokenized batch."""
    return module(**batch).logits


def forward_features(module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the head alone on a batch of cached backbone features."""
    return module(batch["features"])


@torch.inference_mode()
def predict_loader(
    model, loader: DataLoader, accelerator, n: int, forward, task: Task
) -> tuple[np.ndarray, np.ndarray, int]:
    """Probabilities and gold labels (indices, or multi-hot rows for a multi-label task) for all ``n`` examples in
    input order, gathered across processes.

    Length-sorted batches differ in size between processes, and accelerate repeats a few examples so every process
    gets the same number of batches. So each batch is padded to a common size (index -1), gathered, and rows are
    kept by their example index: every example counts exactly once. Results go to CPU at once, so accelerator
    memory does not grow with the dataset. Also returns how many distinct examples were seen.
    """
    model.eval()
    probs: np.ndarray | None = None
    gold: np.ndarray | None = None
    seen = np.zeros(n, dtype=bool)
    for batch in loader:
        index = batch.pop("index")
        labels = batch.pop("labels", None)
        logits = forward(model, batch).float()
        if labels is None:
            labels = torch.full_like(index, -1)
        if accelerator.num_processes > 1:
            padded = accelerator.pad_across_processes((logits, labels, index), dim=0, pad_index=-1)
            logits, labels, index = accelerator.gather(padded)
        index = index.cpu().numpy()
        keep = index >= 0
        index = index[keep]
        if probs is None:
            probs = np.zeros((n, logits.shape[-1]), dtype=np.float32)
            gold = np.full((n, *labels.shape[1:]), -1, dtype=np.int64)
        probs[index] = task.probabilities(logits).cpu().numpy()[keep]
        gold[index] = labels.cpu().numpy()[keep]
        seen[index] = True
    assert probs is not None and gold is not None, "evaluation loader yielded no batches"
    return probs, gold, int(seen.sum())


def split_predictions(model, loader, accelerator, ds, forward, task: Task) -> tuple[np.ndarray, np.ndarray, int]:
    """``predict_loader`` per text: the windows of a long text are averaged into one row."""
    probs, gold, gathered = predict_loader(model, loader, accelerator, len(ds), forward, task)
    doc_ids = getattr(ds, "doc_ids", None)
    if doc_ids is not None:  # windows of long texts: a text's probabilities are the mean over its windows
        probs = mean_of_windows(probs, doc_ids, ds.num_docs)
        gold = np.asarray(ds.doc_label_ids)
        gathered = ds.num_docs if gathered == len(ds) else gathered
    return probs, gold, gathered


def split_metrics(task: Task, probs: np.ndarray, gold: np.ndarray, gathered: int, thresholds=None) -> dict[str, float]:
    """The task's validation metrics (multi-label: at ``thresholds``) and how many examples they cover."""
    result = task.metrics_of(gold, probs, thresholds)
    result["num_examples"] = gathered
    return result
