"""A run's data: the splits read and checked against one label set, and the training loader over them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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
from bertcls.errors import BertclsError, some
from bertcls.resources import is_packaged
from bertcls.small_data import no_cut_reason
from bertcls.streaming import check_stream
from bertcls.tasks import get_task


@dataclass
class RunData:
    labels: list[str]
    train: Split | None  # None: streamed (data.streaming), read as training goes
    validation: Split | None
    test: Split | None
    # split name -> where it came from, said by the run's plan line (train.log_plan); empty: given by the caller
    sources: dict[str, str] = field(default_factory=dict)
    # Why train was not cut for validation (a small file: bertcls.small_data), or None; the run logs it in its plan.
    no_cut: str | None = None
    # Lines said while reading these splits before the run's log existed (train.resolve_recipe reads them to choose a
    # recipe): the run's train.log starts with them.
    said: list[str] = field(default_factory=list)


def load_data(cfg: Config, log=print) -> RunData:
    """Read the splits, fix the label set, cut a validation split if none is given, and check labels agree (where
    each split comes from is said by the run's plan line, ``RunData.sources``)."""
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
    # A small file is not cut for validation (bertcls.small_data): a handful of held-out rows can choose nothing.
    no_cut = no_cut_reason(cfg, len(train)) if train is not None and validation is None else None
    # The label set of the whole training file, before a validation split is cut from it: a label typed two ways, or
    # a class too small to be on both sides of the cut, is then named as such.
    labels = list(d.labels) if d.labels else build_labels(task.label_values(train.labels))
    if train is not None and validation is None and d.validation_fraction > 0 and no_cut is None:
        warn_small_classes(task, train, d.train, log)
        train, validation = split_validation(train, d.validation_fraction, data_seed(cfg))
        check_trained_labels(task, train, validation, d.train)
    if train is not None:
        task.check_label_count(labels, train.labels, d.train)
    else:
        check_stream(d, labels, task)
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        if split is not None:
            check_labels(task, split, labels, f"{name} data {split.source or d.train}")
    no_cut = no_cut if d.validation_fraction > 0 else None
    return RunData(labels, train, validation, test, split_sources(cfg, no_cut), no_cut)


def split_sources(cfg: Config, no_cut: str | None = None) -> dict[str, str]:
    """Where each split of a run on ``cfg.data`` comes from, in words for the plan line: a file or split given by
    name (and that it was given, when shipped data sits beside the user's own training file), ``auto``'s choice, a
    cut of train, or none and how to get one (``no_cut``: why a small file was not cut, ``bertcls.small_data``)."""
    d = cfg.data
    own_train = not is_packaged(d.train)
    sources = {"train": f"{d.train} (streamed)" if d.streaming else d.train}
    for name in ("validation", "test"):
        value, resolved = getattr(d, name), resolve_split(d, name)
        if value == "auto" and resolved:
            sources[name] = f"{resolved} (data.{name}=auto: the packaged train's own {name} split)"
        elif resolved:
            shipped = ", shipped data beside your own train" if own_train and is_packaged(resolved) else ""
            sources[name] = f"{resolved} (data.{name} as set{shipped})"
    if "validation" not in sources:
        if d.streaming:
            sources["validation"] = "none (a streamed train is not cut; set data.validation)"
        elif no_cut:
            sources["validation"] = "none (a small file: every row trains)"
        elif d.validation_fraction > 0:
            sources["validation"] = f"{d.validation_fraction * 100:g}% cut from train (seed {data_seed(cfg)})"
        else:
            sources["validation"] = "none (data.validation_fraction=0)"
    if "test" not in sources:
        why = "data.test=null" if d.test is None else "data.test=auto and train is not a packaged split"
        sources["test"] = f"none ({why}; set data.test=FILE to test the best checkpoint)"
    return sources


def warn_small_classes(task, train: Split, source: str, log) -> None:
    """A stratified validation cut needs two rows of each label (one on each side): name the labels with fewer, whose
    cut is then random."""
    counts = Counter(map(str, task.label_values(train.labels)))
    small = sorted(label for label, n in counts.items() if n < 2)
    if small:
        log(
            f"warning: {source}: label(s) {some(small)} have a single row, too few for both the training and the "
            "validation side (the validation split is cut at random, not stratified); add rows, fix the label, or "
            "give data.validation"
        )


def check_trained_labels(task, train: Split, validation: Split, source: str) -> None:
    """Every label of the validation cut has a training row: a label the model never trains on cannot be learned.

    Raises:
        BertclsError: the cut took every row of a label.
    """
    missing = sorted(
        set(map(str, task.label_values(validation.labels))) - set(map(str, task.label_values(train.labels)))
    )
    if missing:
        raise BertclsError(
            f"{source}: every row of label(s) {some(missing)} went into the validation split, so no training row has "
            "them; add rows, fix the label, or give data.validation"
        )


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
