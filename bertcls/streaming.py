"""Training on a split that is streamed, not loaded: ``data.streaming=true``.

For training data that does not fit on disk as one table, or a hub dataset read as it downloads. The split is a
``datasets`` ``IterableDataset`` (local CSV/TSV/JSON/JSONL/Parquet files: one file, a folder of shards or a glob; or
a hub name), shuffled through a buffer, and shared between processes with ``split_dataset_by_node`` (whole shards per
process when their count divides evenly, else every process keeps its share of the rows), so each row is read by one
process once per pass.

Rows come ``window`` batches at a time: the window is tokenized together, sorted by length and cut into batches,
which are yielded in a random order (the length grouping of ``LengthGroupedBatchSampler`` on a rolling buffer). A
stream has no length, so training runs ``train.max_steps`` updates, starting a new pass (shuffled anew) whenever one
ends. The order is a function of the seed alone, so a resumed run skips the batches it had used and continues with
the very next one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bertcls.data import label_tensor, tokenize_texts
from bertcls.errors import BertclsError
from bertcls.inference import length_sorted_batches
from bertcls.tables import missing_column, stream_table, texts_of

SHUFFLE_BUFFER = 10_000  # rows the stream is shuffled through (datasets' IterableDataset.shuffle)


def row_reader(data, labels: list[str], task) -> Callable:
    """``read_rows`` for ``StreamedBatches``: a window of stream rows (dicts) -> texts, second texts and targets, with
    the checks ``load_split`` makes on a whole file (columns, empty texts as ``data.empty_texts`` says, labels)."""
    source = data.train
    required = {data.text_column: "data.text_column", data.label_column: "data.label_column"}
    if data.text_pair_column:
        required[data.text_pair_column] = "data.text_pair_column"

    def read(rows: list[dict[str, Any]]) -> tuple[list[str], list[str] | None, np.ndarray]:
        for column, option in required.items():
            if column not in rows[0]:
                raise missing_column(column, list(rows[0]), source, option)
        texts, pairs = texts_of(rows, data.text_column, data.text_pair_column)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if len(keep) < len(texts):
            if data.empty_texts == "error":
                raise BertclsError(
                    f"{source}: a text is empty or whitespace only; fill or drop such rows, "
                    "or set data.empty_texts=skip"
                )
            rows, texts = [rows[i] for i in keep], [texts[i] for i in keep]
            pairs = [pairs[i] for i in keep] if pairs is not None else None
        values = task.read_labels([r[data.label_column] for r in rows], source, data.label_delimiter)
        targets = np.asarray(task.targets(values, labels, f"train data {source}"), dtype=np.int64)
        return texts, pairs, targets

    return read


def check_stream(data, labels: list[str], task) -> None:
    """Open the stream and read its first row as training will, so that missing files, a missing column or an unknown
    label fail before the model loads, not at the first step."""
    first = next(iter(stream_table(data.train)), None)
    if first is None:
        raise BertclsError(f"data.train {data.train}: the stream has no rows")
    row_reader(data, labels, task)([first])


class StreamedBatches:
    """Padded training batches (tensors on the CPU) of one process's share of a stream, pass after pass."""

    def __init__(
        self,
        source: str,
        read_rows: Callable[[list[dict[str, Any]]], tuple[list[str], list[str] | None, np.ndarray]],
        tokenizer,
        max_length: int,
        truncation: str,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        window: int = 50,
    ):
        self.source, self.read_rows = source, read_rows
        self.tokenizer, self.max_length, self.truncation = tokenizer, max_length, truncation
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batch_size, self.seed, self.window = batch_size, seed, window
        self.rank, self.world_size = rank, world_size

    def rows(self, epoch: int) -> Iterator[dict[str, Any]]:
        """This process's rows of pass ``epoch``, shuffled by (seed, epoch)."""
        from datasets.distributed import split_dataset_by_node

        stream = stream_table(self.source).shuffle(seed=self.seed, buffer_size=SHUFFLE_BUFFER)
        stream.set_epoch(epoch)
        return iter(split_dataset_by_node(stream, self.rank, self.world_size))

    def one_pass(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        rows = self.rows(epoch)
        for index in itertools.count():
            window = list(itertools.islice(rows, self.batch_size * self.window))
            if not window:
                if index == 0:
                    raise BertclsError(f"data.train {self.source}: process {self.rank} got no rows from the stream")
                return
            yield from self.window_batches(window, torch.Generator().manual_seed(self.seed + 1_000_003 * epoch + index))

    def window_batches(self, window: list[dict[str, Any]], g: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        texts, pairs, targets = self.read_rows(window)
        if not texts:  # every row of the window was an empty text (skipped)
            return
        tokens, _ = tokenize_texts(self.tokenizer, texts, pairs, self.max_length, self.truncation, progress=False)
        batches = length_sorted_batches(tokens.lengths, self.batch_size)
        for b in torch.randperm(len(batches), generator=g).tolist():
            batch = {k: torch.from_numpy(v) for k, v in tokens.pad(batches[b], self.pad_id).items()}
            batch["labels"] = label_tensor(targets[batches[b]])
            yield batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for epoch in itertools.count():
            yield from self.one_pass(epoch)


class StreamLoader:
    """The training loader of a streamed split: ``StreamedBatches`` moved to the device, the first ``skip`` dropped
    (a resumed run's used batches). Stands in for the prepared DataLoader (accelerate would shard an iterable
    dataset a second time, or send every batch from the main process)."""

    def __init__(self, batches: StreamedBatches, device, skip: int = 0):
        self.batches, self.device, self.skip = batches, device, skip

    def set_epoch(self, epoch: int) -> None:
        """No epochs here: passes over the stream follow one another inside one run-long iteration."""

    def skipping(self, n: int) -> StreamLoader:
        return StreamLoader(self.batches, self.device, n)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        for batch in itertools.islice(self.batches, self.skip, None):
            # On a GPU from pinned memory: a copy from pageable memory would make the host wait for the GPU.
            yield {k: (v.pin_memory() if cuda else v).to(self.device, non_blocking=cuda) for k, v in batch.items()}
