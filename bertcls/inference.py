"""One inference path: the tokens a model reads, length-sorted batches, input order restored, windows averaged.

Every prediction in bertcls goes through here: ``model.predict_proba`` (and so ``evaluate`` and ``predict``), the
feature pass of the cache, the ONNX predictor (its own tokenizer and session, the same rows and batches), and
training's evaluation over accelerate's sharded loaders (``predict_loader``: gathered across processes). Importing
this module loads neither torch nor transformers, so the ONNX predictor stays free of both; the functions that need
torch import it themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bertcls.long_texts import mean_of_windows, truncated_positions, window_positions
from bertcls.token_store import TokenStore

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
Rows = dict[str, list[list[int]]]  # token columns, one list of ids per row the model reads (or a TokenStore)

# ---------------------------------------------------------------- rows and batches (no torch)


def select_tokens(
    columns: Rows,
    sequence_ids: Callable[[int], Sequence[int | None]],
    max_length: int,
    truncation: str = "head",
    stride: int | None = None,
    first: int = 0,
) -> tuple[Rows, list[int] | None]:
    """The rows a model reads from whole (untruncated) encodings: per text its ``truncation`` of at most
    ``max_length`` tokens, or with a ``stride`` its windows (``long_texts.window_positions`` checks the stride);
    plus, with windows, each row's text index (counted from ``first``: the encodings may be one chunk of many)."""
    out: Rows = {k: [] for k in columns}
    doc_ids: list[int] = []
    for i in range(len(columns["input_ids"])):
        seq = sequence_ids(i)
        kept = (
            window_positions(seq, max_length, stride, first + i)
            if stride is not None
            else [truncated_positions(seq, max_length, truncation)]
        )
        for keep in kept:
            for k, column in columns.items():
                out[k].append([column[i][j] for j in keep])
            doc_ids.append(first + i)
    return out, (doc_ids if stride is not None else None)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches over indices sorted by length (longest first, ties in index order), for evaluation; callers restore
    input order."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_rows(rows: Rows, idx: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
    """Rows ``idx`` padded to the longest of them, as int64 arrays."""
    if isinstance(rows, TokenStore):
        return rows.pad(idx, pad_id)
    width = max(len(rows["input_ids"][i]) for i in idx)
    batch = {}
    for key, fill in zip(TOKEN_KEYS, (pad_id, 0, 0), strict=True):
        if key in rows:
            a = np.full((len(idx), width), fill, dtype=np.int64)
            for r, i in enumerate(idx):
                a[r, : len(rows[key][i])] = rows[key][i]
            batch[key] = a
    return batch


def predict_rows(
    rows: Rows, batch_size: int, pad_id: int, run_batch: Callable[[dict[str, np.ndarray]], np.ndarray], width: int
) -> np.ndarray:
    """``run_batch`` (a padded batch -> (batch, ``width``) float array) over length-sorted batches of ``rows``;
    returns every row's output in input order, as float32."""
    lengths = rows.lengths if isinstance(rows, TokenStore) else [len(ids) for ids in rows["input_ids"]]
    out = np.empty((len(lengths), width), dtype=np.float32)
    for idx in length_sorted_batches(lengths, batch_size):
        out[idx] = run_batch(pad_rows(rows, idx, pad_id))
    return out


def predict_texts(
    rows: Rows, doc_ids: list[int] | None, num_texts: int, batch_size: int, pad_id: int, run_batch, width: int
) -> np.ndarray:
    """``predict_rows`` per text: a long text read as windows gets the mean of its windows' probabilities."""
    probs = predict_rows(rows, batch_size, pad_id, run_batch, width)
    return probs if doc_ids is None else mean_of_windows(probs, doc_ids, num_texts)


# ---------------------------------------------------------------- torch: models, and loaders across processes


def torch_runner(forward: Callable[[dict[str, Any]], Any], device, precision: str = "no"):
    """``run_batch`` for ``predict_rows`` from ``forward`` (a tensor batch on ``device`` -> float tensor), under
    ``precision`` autocast, in inference mode."""
    import torch

    from bertcls.precision import autocast

    def run_batch(batch: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}
        with torch.inference_mode(), autocast(device.type, precision):
            return forward(tensors).float().cpu().numpy()

    return run_batch


def gather_padded(accelerator, *tensors):
    """Tensors of every process, concatenated; each process's are padded to a common length first (with -1, so
    an index tensor marks the padding)."""
    return accelerator.gather(accelerator.pad_across_processes(tensors, dim=0, pad_index=-1))


def make_eval_loader(ds, batch_size: int, pin: bool):
    import torch
    from torch.utils.data import DataLoader

    # Length-sorted batches; every item carries its index so predictions are put back in input order.
    return DataLoader(
        ds,
        batch_sampler=length_sorted_batches(ds.lengths, batch_size),
        collate_fn=ds.collate,
        pin_memory=pin,
        generator=torch.Generator(),  # leaves the global RNG (dropout's) alone, as the training loader does
    )


def forward_tokens(module, batch):
    """Logits of the whole model on a tokenized batch."""
    return module(**batch).logits


def forward_features(module, batch):
    """Logits of the head alone on a batch of cached backbone features."""
    return module(batch["features"])


def predict_loader(model, loader, accelerator, n: int, forward, task) -> tuple[np.ndarray, np.ndarray, int]:
    """Probabilities and gold labels (indices, or multi-hot rows for a multi-label task) for all ``n`` examples in
    input order, gathered across processes.

    Length-sorted batches differ in size between processes, and accelerate repeats a few examples so every process
    gets the same number of batches. So each batch is padded to a common size (index -1), gathered, and rows are
    kept by their example index: every example counts exactly once. Results go to CPU at once, so accelerator
    memory does not grow with the dataset. Also returns how many distinct examples were seen.
    """
    import torch

    model.eval()
    probs: np.ndarray | None = None
    gold: np.ndarray | None = None
    seen = np.zeros(n, dtype=bool)
    with torch.inference_mode():
        for batch in loader:
            index = batch.pop("index")
            labels = batch.pop("labels", None)
            logits = forward(model, batch).float()
            if labels is None:
                labels = torch.full_like(index, -1)
            if accelerator.num_processes > 1:
                logits, labels, index = gather_padded(accelerator, logits, labels, index)
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


def split_predictions(model, loader, accelerator, ds, forward, task) -> tuple[np.ndarray, np.ndarray, int]:
    """``predict_loader`` per text: the windows of a long text are averaged into one row."""
    probs, gold, gathered = predict_loader(model, loader, accelerator, len(ds), forward, task)
    doc_ids = getattr(ds, "doc_ids", None)
    if doc_ids is not None:  # windows of long texts: a text's probabilities are the mean over its windows
        probs = mean_of_windows(probs, doc_ids, ds.num_docs)
        gold = np.asarray(ds.doc_label_ids)
        gathered = ds.num_docs if gathered == len(ds) else gathered
    return probs, gold, gathered


def window_predictions(model, loader, accelerator, ds, forward, task):
    """``predict_loader``'s rows with a long text's windows kept apart: (rows' probabilities, gold per text, each
    row's text index or None when every text is one row). Calibration fits on these (``bertcls.calibration``)."""
    probs, gold, _ = predict_loader(model, loader, accelerator, len(ds), forward, task)
    doc_ids = getattr(ds, "doc_ids", None)
    if doc_ids is None:
        return probs, gold, None
    return probs, np.asarray(ds.doc_label_ids), np.asarray(doc_ids, dtype=np.int64)


def split_metrics(task, probs: np.ndarray, gold: np.ndarray, gathered: int, thresholds=None) -> dict[str, float]:
    """The task's validation metrics (multi-label: at ``thresholds``) and how many examples they cover."""
    result = task.metrics_of(gold, probs, thresholds)
    result["num_examples"] = gathered
    return result
