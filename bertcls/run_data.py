"""A run's data: the splits read and checked against one label set, and the training loader over them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from bertcls import packing
from bertcls.cache import FeatureDataset
from bertcls.config import Config, resolve_split
from bertcls.data import (
    BalancedBatchSampler,
    LengthGroupedBatchSampler,
    ShuffledBatchSampler,
    Split,
    build_labels,
    drop_empty_texts,
    load_split,
    split_validation,
)
from bertcls.errors import BertclsError
from bertcls.small_data import no_cut_reason
from bertcls.streaming import check_stream
from bertcls.tasks import get_task


@dataclass
class RunData:
    labels: list[str]
    train: Split | None  # None: streamed (data.streaming), read as training goes
    validation: Split | None
    test: Split | None
    # Why train was not cut for validation (a small file: bertcls.small_data), or None; the run logs it in its plan.
    no_cut: str | None = None


def load_data(cfg: Config, log=print) -> RunData:
    """Read the splits, fix the label set, cut a validation split if none is given, and check labels agree."""
    d, task = cfg.data, get_task(cfg.data.task)

    def read(src: str) -> Split:
        split = load_split(
            src, d.text_column, d.label_column, d.text_pair_column, task=d.task, label_delimiter=d.label_delimiter
        )
        return drop_empty_texts(split, d.empty_texts, log)

    if d.streaming and not d.labels:
        raise BertclsError(
            "data.streaming=true needs data.labels (e.g. data.labels=[negative,positive]): a stream has no label set "
            "to read up front"
        )
    train = None if d.streaming else read(d.train)
    validation_source, test_source = resolve_split(d, "validation"), resolve_split(d, "test")
    validation = read(validation_source) if validation_source else None
    test = read(test_source) if test_source else None
    no_cut = no_cut_reason(cfg, len(train)) if train is not None and validation is None else None
    if train is None and validation is None:
        log("validation: none (a streamed training split is not cut; set data.validation)")
    elif validation is None and d.validation_fraction > 0 and no_cut is None:
        train, validation = split_validation(train, d.validation_fraction, data_seed(cfg))
        log(f"validation: {len(validation.texts)} rows ({d.validation_fraction:g}) held out of {d.train}")
    if test is None:
        log("test: none (set data.test to evaluate the best checkpoint on a test split)")
    labels = list(d.labels) if d.labels else build_labels(task.label_values(train.labels))
    if train is not None:
        task.check_label_count(labels, train.labels, d.train)
    else:
        check_stream(d, labels, task)
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        if split is not None:
            check_labels(task, split, labels, f"{name} data {split.source or d.train}")
    return RunData(labels, train, validation, test, no_cut if d.validation_fraction > 0 else None)


def check_labels(task, split: Split, labels: list[str], source: str) -> None:
    """Every label of ``split`` is in ``labels``; else the task's one-line error, with the first row at fault (so a bad
    label deep in a large file can be found)."""
    try:
        task.targets(split.labels, labels, source)
    except BertclsError as e:
        known = set(labels)
        bad = next((i for i, v in enumerate(split.labels) if set(map(str, task.label_values([v]))) - known), None)
        if bad is None:
            raise
        raise BertclsError(f"{e} (first in row {split.source_row(bad)} of {split.source})") from e


def data_seed(cfg: Config) -> int:
    """The seed of data order and the validation split: ``train.data_seed``, or ``train.seed`` when unset."""
    return cfg.train.data_seed if cfg.train.data_seed is not None else cfg.train.seed


def make_train_loader(ds, cfg: Config, pin: bool) -> DataLoader:
    t = cfg.train
    seed = data_seed(cfg)
    if t.sampler == "balanced":
        labels = ds.labels.tolist() if isinstance(ds, FeatureDataset) else ds.label_ids
        sampler = BalancedBatchSampler(labels, t.batch_size, seed=seed)
    # Cached features have no length, so length grouping only applies to token batches.
    elif t.group_by_length and not isinstance(ds, FeatureDataset):
        sampler = LengthGroupedBatchSampler(ds.lengths, t.batch_size, seed=seed)
    else:
        sampler = ShuffledBatchSampler(len(ds), t.batch_size, seed=seed)
    # Its own generator: each pass over a DataLoader draws a base seed, which would otherwise come from the global
    # RNG that dropout uses, and a resumed run (one more pass: the skipping loader) would see other dropout masks.
    return DataLoader(
        ds,
        batch_sampler=sampler,
        # Unpadded: each batch's texts end to end in one row (bertcls.packing), packed here on the CPU.
        collate_fn=packing.packed_collate(ds.collate) if t.unpadded else ds.collate,
        num_workers=t.num_workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
    )
