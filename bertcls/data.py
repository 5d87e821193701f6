"""Loading splits, label mapping, the tokenizer dataset, padding per batch, and length-grouped batching."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from bertcls.errors import BertclsError
from bertcls.inference import TOKEN_KEYS, pad_rows, select_tokens
from bertcls.long_texts import TRUNCATIONS, check_truncation  # noqa: F401 (re-exported)
from bertcls.multilabel import DEFAULT_DELIMITER
from bertcls.tables import COMPRESSIONS, FORMATS, TextColumn, column_values, read_checked, read_table  # noqa: F401 (re-exported)
from bertcls.tables import text_column as read_texts
from bertcls.tasks import get_task, is_soft, label_ids  # noqa: F401 (re-exported)
from bertcls.token_store import CHUNK_ROWS, TokenStore, cached_tokens, token_key, tokenize

# ---------------------------------------------------------------- reading files and hub datasets


@dataclass
class Split:
    """One split as plain columns: texts, optional second texts, and raw label values (or None); for a multi-label
    task each label value is a list of labels (possibly empty)."""

    texts: Sequence[str]  # a TextColumn (Arrow) when read from a table, or a list
    labels: list[Any] | None
    text_pairs: Sequence[str] | None = None
    source: str = ""
    rows: np.ndarray | None = None  # each row's index in the source (None: 0, 1, 2, ...), kept through subsets
    # A subset's whole split as read, and its rows' positions there: the frozen backbone's features are computed
    # (and cached) once for the whole split and shared by its subsets (validation cut, cross-validation folds).
    base: Split | None = field(default=None, repr=False, compare=False)
    base_rows: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Split:
        def pick(col):
            if isinstance(col, TextColumn):
                return col.take(indices)
            if isinstance(col, np.ndarray):  # soft targets (bertcls.distill): rows of a float matrix
                return col[indices]
            return None if col is None else [col[i] for i in indices]

        indices = np.asarray(indices, dtype=np.int64)
        rows = (self.rows if self.rows is not None else np.arange(len(self)))[indices]
        base, base_rows = (self.base, self.base_rows[indices]) if self.base is not None else (self, indices)
        return Split(pick(self.texts), pick(self.labels), pick(self.text_pairs), self.source, rows, base, base_rows)

    def source_row(self, i: int) -> int:
        """Row ``i``'s 1-based row number in its source (the first row after a header is 1)."""
        return int(self.rows[i] if self.rows is not None else i) + 1


def load_split(
    source: str,
    text_column: str = "text",
    label_column: str | None = "label",
    text_pair_column: str | None = None,
    split: str = "train",
    require_labels: bool = True,
    option_names: Mapping[str, str] | None = None,
    task: str = "single_label",
    label_delimiter: str = DEFAULT_DELIMITER,
) -> Split:
    """Read ``source`` and pull out the text, pair and label columns, with one-line errors for what is wrong.

    With ``task="multi_label"`` every label cell is read as a set of labels (``bertcls.multilabel.parse_label_set``:
    a list, or a string joined by ``label_delimiter``); an empty cell is the empty set, not a missing label.

    ``option_names`` maps ``text_column`` / ``text_pair_column`` / ``label_column`` to the option a user sets them
    with (default: the config keys ``data.text_column`` ...), so an error names the option of the tool in use.
    """
    option = lambda key: (option_names or {}).get(key, f"data.{key}")  # noqa: E731
    required = {text_column: option("text_column")}
    if text_pair_column:
        required[text_pair_column] = option("text_pair_column")
    if require_labels:
        required.setdefault(str(label_column), option("label_column"))
    table = read_checked(source, split, required)
    has_labels = bool(label_column) and label_column in table.column_names
    # Straight from the Arrow columns: iterating a datasets column formats row by row, far slower (docs/benchmarks.md,
    # "Levers"); texts stay Arrow strings (tables.TextColumn), so memory does not hold a str object per row.
    texts = read_texts(table, text_column)
    pairs = read_texts(table, text_pair_column) if text_pair_column else None
    values = column_values(table, label_column) if has_labels else None
    labels = get_task(task).read_labels(values, source, label_delimiter) if has_labels else None
    return Split(texts, labels, pairs, source)


def drop_empty_texts(split: Split, policy: str = "skip", log=print) -> Split:
    """Drop rows whose text is empty or whitespace only (``policy="skip"``, counted in the log), or refuse them.

    Raises:
        BertclsError: ``policy="error"`` and some texts are empty.
    """
    empty = [i for i, t in enumerate(split.texts) if not t.strip()]
    if not empty:
        return split
    where = f"{split.source}: {len(empty)} of {len(split)} text(s) are empty or whitespace only"
    if policy == "error":
        rows = ", ".join(str(i + 2) for i in empty[:5])  # +2: 1-based, after the header line
        raise BertclsError(f"{where} (file lines {rows}...); fill or drop them, or set data.empty_texts=skip")
    if len(empty) == len(split):
        raise BertclsError(f"{where}: nothing left to use")
    log(f"{where}; skipped them (data.empty_texts=skip)")
    keep = set(empty)
    return split.subset([i for i in range(len(split)) if i not in keep])


# ---------------------------------------------------------------- labels


def build_labels(values: Sequence[Any]) -> list[str]:
    """The label set in a stable order: numeric order for integer labels, alphabetical for strings.

    Raises:
        BertclsError: labels of mixed types, or labels that differ only by case (``ACTING`` beside ``acting`` is
            almost always one class typed two ways; two classes would split its rows and leave one nearly empty).
    """
    kinds = {"number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__ for v in values}
    if len(kinds) > 1:
        raise BertclsError(f"labels mix types ({', '.join(sorted(kinds))}); use one type for every label")
    unique = set(values)
    ordered = sorted(unique, key=float) if kinds == {"number"} else sorted(unique, key=str)
    names = [str(v) for v in ordered]
    by_case: dict[str, list[str]] = {}
    for name in names:
        by_case.setdefault(name.casefold(), []).append(name)
    clashes = [group for group in by_case.values() if len(group) > 1]
    if clashes:
        counts = Counter(map(str, values))
        shown = "; ".join(" and ".join(f"'{n}' ({counts[n]} rows)" for n in group) for group in clashes[:3])
        raise BertclsError(
            f"labels differ only by case: {shown}; write each class one way in the data (or list every label in "
            "data.labels to keep them apart)"
        )
    return names


def stratum(value: Any) -> str:
    """What stratified splits group a row by: its label, or for multi-label its label set, as one string."""
    return "|".join(sorted(map(str, value))) if isinstance(value, list) else str(value)


def split_validation(data: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Cut a seeded, stratified validation split from ``data``; falls back to random if a class is too small, or
    there are more classes than either side has rows. Multi-label data is stratified by label combination."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(data)))
    labels = [stratum(v) for v in data.labels] if data.labels is not None else None
    stratify = labels
    if labels is not None and min(labels.count(c) for c in set(labels)) < 2:
        stratify = None
    n_val = math.ceil(fraction * len(data))  # how train_test_split sizes the two sides
    if labels is not None and len(set(labels)) > min(n_val, len(data) - n_val):
        stratify = None
    train_idx, val_idx = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    return data.subset(sorted(train_idx)), data.subset(sorted(val_idx))


# ---------------------------------------------------------------- tokenization


def encode(
    tokenizer,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None,
    max_length: int,
    truncation: str = "head",
    attention_mask: bool = True,
) -> dict[str, list[list[int]]]:
    """Tokenize everything at once with the fast tokenizer; no padding (that happens per batch).

    ``truncation`` says which tokens of a too-long text survive: ``head`` (the first), ``tail`` (the last) or
    ``head+tail`` (the first quarter and the last three quarters of the budget: Sun et al. 2019, "How to Fine-Tune
    BERT for Text Classification?", arXiv 1905.05583, keep 128 + 382 of 510). Special tokens always stay; with a
    pair the budget is shared as the tokenizer's longest-first truncation shares it (``bertcls.long_texts``, which
    the ONNX predictor uses too).
    """
    check_truncation(truncation)
    pairs = list(text_pairs) if text_pairs is not None else None
    if truncation == "head":
        out = tokenizer(
            list(texts), pairs, truncation=True, max_length=max_length, return_attention_mask=attention_mask
        )
        return {k: out[k] for k in _keys(out)}
    out = tokenizer(list(texts), pairs, truncation=False, padding=False, verbose=False)
    return select_tokens({k: out[k] for k in _keys(out)}, out.sequence_ids, max_length, truncation)[0]


def encode_windows(
    tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None, max_length: int, stride: int, first: int = 0
) -> tuple[dict[str, list[list[int]]], list[int]]:
    """Cut each text into windows of up to ``max_length`` tokens whose starts are ``stride`` tokens apart (the last
    one reaches the end); a second text, if any, is repeated whole in every window. Returns the encodings, one row
    per window, and for each window the index of its text (counted from ``first``).

    Raises:
        BertclsError: ``stride`` is not in 1..(tokens per window), or a second text leaves no room for the first.
    """
    pairs = list(text_pairs) if text_pairs is not None else None
    out = tokenizer(list(texts), pairs, truncation=False, padding=False, verbose=False)
    columns = {k: out[k] for k in _keys(out)}
    encoded, doc_ids = select_tokens(columns, out.sequence_ids, max_length, stride=stride, first=first)
    return encoded, doc_ids


def _keys(out) -> list[str]:
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in out]


def tokenize_texts(
    tokenizer,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None,
    max_length: int,
    truncation: str = "head",
    window_stride: int = 0,
    cache_dir: Path | None = None,
    log=print,
    progress: bool = True,
) -> tuple[TokenStore, bool]:
    """The token rows of ``texts`` as a ``TokenStore``, tokenized in chunks (a progress bar past one chunk): read
    from or written to the token cache in ``cache_dir`` (memory-mapped), or kept in memory when it is None. With a
    ``window_stride`` each text is read as windows (``encode_windows``), else truncated (``encode``). Returns the
    store and whether it came from the cache."""
    check_truncation(truncation)

    def encode_chunk(chunk, pairs, first):
        if window_stride:
            return encode_windows(tokenizer, chunk, pairs, max_length, window_stride, first)
        # No attention mask: unpadded rows' masks are all ones, and the store makes them when it pads a batch.
        return encode(tokenizer, chunk, pairs, max_length, truncation, attention_mask=False), None

    def build(folder):
        show = progress and len(texts) > CHUNK_ROWS
        with tqdm(total=len(texts), desc="tokenizing", unit="text", disable=not show, leave=False) as bar:
            return tokenize(encode_chunk, texts, text_pairs, folder, bar.update)

    key = None
    if cache_dir is not None:
        options = {"max_length": max_length, "truncation": truncation, "window_stride": window_stride}
        key = token_key(tokenizer, texts, text_pairs, options)
    return cached_tokens(build, key, cache_dir, log)


def pad_batch(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of examples to the longest one. Written out rather than ``tokenizer.pad`` because this runs per
    step and the tokenizer's generic path costs more than the model's forward on short texts."""
    rows = {k: [f[k] for f in features] for k in TOKEN_KEYS if k in features[0]}
    batch = {k: torch.from_numpy(v) for k, v in pad_rows(rows, range(len(features)), pad_id).items()}
    if "labels" in features[0]:
        batch["labels"] = label_tensor([f["labels"] for f in features])
    if "index" in features[0]:
        batch["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
    return batch


def label_tensor(labels) -> torch.Tensor:
    """A batch's label indices as a long tensor, or its multi-hot rows as a float one (the BCE target is float);
    soft targets (float rows, bertcls.distill) stay float."""
    if np.asarray(labels[0]).dtype.kind == "f":
        return torch.from_numpy(np.asarray(labels, dtype=np.float32))
    t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return t.float() if t.ndim == 2 else t


class TextClassificationDataset(Dataset):
    """Texts (and optional second texts) with labels, tokenized once up front into a ``TokenStore`` (flat arrays).

    Items are dicts of ``input_ids``, ``attention_mask``, (``token_type_ids``) as arrays, and ``labels``;
    ``collate`` pads a list of items into tensors. ``labels`` may be names or integers; ``label_names`` fixes the
    label set and order (default: the sorted unique labels). With ``task="multi_label"`` each label is a list of
    labels, and an item's ``labels`` is a multi-hot row (a float tensor after ``collate``). With a ``cache_dir``
    the tokens come from (or go to) the token cache there, memory-mapped (``bertcls.token_store``).
    """

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[Any] | None = None,
        tokenizer=None,
        max_length: int = 128,
        text_pairs: Sequence[str] | None = None,
        label_names: Sequence[str] | None = None,
        with_index: bool = False,
        truncation: str = "head",
        window_stride: int = 0,
        task: str = "single_label",
        cache_dir: Path | None = None,
        log=print,
        progress: bool = True,
    ):
        if tokenizer is None:
            raise BertclsError("TextClassificationDataset needs a tokenizer (e.g. model.tokenizer)")
        if len(texts) == 0:
            raise BertclsError("the dataset is empty: no texts given")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise BertclsError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        if labels is not None and len(labels) != len(texts):
            raise BertclsError(f"{len(texts)} texts but {len(labels)} labels")
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.label_names = list(label_names) if label_names is not None else None
        # Label indices, or multi-hot rows for a multi-label task; checked before the (long) tokenization.
        self.doc_label_ids: np.ndarray | None = None
        if labels is not None:
            if self.label_names is None:
                self.label_names = build_labels(get_task(task).label_values(labels))
            targets = get_task(task).targets(labels, self.label_names)
            self.doc_label_ids = targets if is_soft(targets) else np.asarray(targets, dtype=np.int64)
        self.tokens, self.cache_hit = tokenize_texts(
            tokenizer, texts, text_pairs, max_length, truncation, window_stride, cache_dir, log, progress
        )
        # With windows every item is one window; doc_ids maps it back to its text (None: one item per text).
        self.doc_ids = self.tokens.doc_ids
        self.num_docs = len(texts)
        self.label_ids = self.doc_label_ids
        if self.doc_label_ids is not None and self.doc_ids is not None:
            self.label_ids = self.doc_label_ids[self.doc_ids]
        self.with_index = with_index
        self.lengths = self.tokens.lengths

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = self.tokens.row(i)
        if self.label_ids is not None:
            item["labels"] = self.label_ids[i]
        if self.with_index:
            item["index"] = i
        return item

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_batch(features, self.pad_id)


# ---------------------------------------------------------------- batching by length


class EpochSampler(Sampler[list[int]]):
    """A batch sampler whose random order is a function of (seed, epoch): call ``set_epoch`` each epoch."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)


class LengthGroupedBatchSampler(EpochSampler):
    """Random batches of similar lengths, so little compute goes to padding.

    Shuffle all indices, cut them into windows of ``window`` batches, sort each window by length and cut it into
    batches, then shuffle the batches (the longest full batch goes first so an out-of-memory shows at step one; the
    one short batch goes last). The same idea as transformers' ``group_by_length``; call ``set_epoch`` for a new
    order each epoch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window: int = 50):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.window = window
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = self.generator()
        perm = torch.randperm(len(self.lengths), generator=g).numpy()
        span = self.batch_size * self.window
        # Batches stay numpy views (a list per batch only when it is yielded): a million Python ints would cost
        # ~60 MB at a million rows.
        batches: list[np.ndarray] = []
        for start in range(0, len(perm), span):
            chunk = perm[start : start + span]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]  # longest first, ties in shuffled order
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        # A short batch only ever comes last, as from a plain BatchSampler: accelerate's sharding across processes
        # assumes that shape (a short batch in the middle makes it drop a round).
        short = batches.pop() if len(batches[-1]) < self.batch_size else None
        if batches:
            order = torch.randperm(len(batches), generator=g).tolist()
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            order.remove(longest)
            yield batches[longest].tolist()
            for b in order:
                yield batches[b].tolist()
        if short is not None:
            yield short.tolist()


class ShuffledBatchSampler(EpochSampler):
    """Plain random batches (no length grouping), reshuffled per ``set_epoch``; the short batch comes last."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=self.generator()).numpy()
        for i in range(0, self.n, self.batch_size):
            yield perm[i : i + self.batch_size].tolist()


class BalancedBatchSampler(EpochSampler):
    """Class-balanced random batches: each epoch draws ``len(labels)`` indices with replacement, every class equally
    likely (an example's chance is 1 / (num_classes * its class count)), like torch's ``WeightedRandomSampler``.

    Batches are full except the last one, the shape accelerate's sharding across processes expects.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0):
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        counts = torch.bincount(self.labels).double()
        self.weights = (1.0 / counts)[self.labels]
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        draws = torch.multinomial(self.weights, len(self.labels), replacement=True, generator=self.generator()).numpy()
        for i in range(0, len(draws), self.batch_size):
            yield draws[i : i + self.batch_size].tolist()
