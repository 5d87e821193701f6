"""Reading tables (local CSV/TSV/JSON/JSONL/Parquet files, the packaged splits, hub datasets) without PyTorch.

Kept apart from ``bertcls.data`` (which needs torch for datasets and padding) so that predicting with an ONNX export
reads its input files with no PyTorch installed.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bertcls.errors import BertclsError, first_line
from bertcls.resources import is_packaged, packaged_data_file

# file suffix -> (datasets builder, extra builder kwargs)
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")


def _file_format(path: Path) -> tuple[str, dict[str, Any]]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in FORMATS:
        raise BertclsError(f"{path}: unknown file type; use one of {', '.join(FORMATS)} (optionally compressed)")
    return FORMATS[suffixes[-1]]


def _looks_like_file(source: str) -> bool:
    return any(source.lower().endswith(s) for s in FORMATS) or any(
        source.lower().endswith(f + c) for f in FORMATS for c in COMPRESSIONS
    )


def read_table(source: str, split: str = "train"):
    """A ``datasets.Dataset`` from a local file, ``packaged:NAME/SPLIT``, or a hub dataset ``name[:split]``."""
    import datasets

    datasets.disable_progress_bars()
    if is_packaged(source):
        source = str(packaged_data_file(source))
    path = Path(source).expanduser()
    if path.exists() or _looks_like_file(source):
        if not path.is_file():
            raise BertclsError(f"data file {source} does not exist")
        if path.stat().st_size == 0:
            raise BertclsError(f"data file {source} is empty")
        builder, kwargs = _file_format(path)
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        except Exception as e:  # pandas/pyarrow raise many types for malformed files; the user needs one line
            cause = e.__cause__ or e
            msg = first_line(cause)
            if "corresponds to no data" in msg:  # datasets' words for a file with a header and no rows
                raise BertclsError(f"{source} has a header but no rows") from e
            if isinstance(cause, UnicodeDecodeError) or "utf-8" in msg.lower():
                msg = "it is not valid UTF-8 text; re-save it as UTF-8"
            raise BertclsError(f"could not read {source}: {msg}") from e
    name, _, hub_split = source.partition(":")
    try:
        return datasets.load_dataset(name, split=hub_split or split)
    except Exception as e:
        first = first_line(e)
        raise BertclsError(
            f"'{source}' is neither a local file nor a loadable hub dataset (hub access needs internet): {first}"
        ) from e


def stream_table(source: str, split: str = "train"):
    """A ``datasets.IterableDataset`` over a local file, a folder of data files, a glob (``shards/*.parquet``) or a hub
    dataset ``name[:split]``: rows are read as they are used, never all at once."""
    import glob

    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and _looks_like_file(p.name))
    elif glob.has_magic(source):
        files = sorted(glob.glob(str(path)))
    else:
        files = [str(path)] if path.exists() or _looks_like_file(source) else None
    if files is not None:
        if not files or not all(Path(f).is_file() for f in files):
            raise BertclsError(f"data file(s) {source} do not exist (a file, a folder of data files, or a glob)")
        builders = [_file_format(Path(f)) for f in files]
        if any(b != builders[0] for b in builders):
            raise BertclsError(f"{source}: the files are of different types; stream one type at a time")
        builder, kwargs = builders[0]
        return datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs)
    name, _, hub_split = source.partition(":")
    try:
        return datasets.load_dataset(name, split=hub_split or split, streaming=True)
    except Exception as e:
        raise BertclsError(
            f"'{source}' is neither local data files nor a streamable hub dataset (hub access needs internet): "
            f"{first_line(e)}"
        ) from e


def read_checked(source: str, split: str, columns: Mapping[str, str]):
    """``read_table``, with a one-line error for each of ``columns`` (column name -> the option that sets it) that the
    table lacks, and for a table with no rows."""
    table = read_table(source, split)
    present = list(table.column_names)
    for column, option in columns.items():
        if column not in present:
            raise missing_column(column, present, source, option)
    if len(table) == 0:
        raise BertclsError(f"{source} has a header but no rows")
    return table


class TextColumn(Sequence[str]):
    """A table's text column kept as Arrow strings (memory-mapped from datasets' cache for a file) instead of one
    Python ``str`` per row, which at a million rows costs hundreds of MB. An index gives a ``str``, a slice a list;
    iteration converts a batch at a time. Missing cells read as ``""``."""

    BATCH = 8192

    def __init__(self, array):
        import pyarrow.compute as pc

        self.array = pc.fill_null(array, "") if array.null_count else array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            rows = self.array.slice(start, max(stop - start, 0)).to_pylist()
            return rows if step == 1 else rows[::step]
        return self.array[i].as_py()

    def __iter__(self):
        for start in range(0, len(self), self.BATCH):
            yield from self.array.slice(start, self.BATCH).to_pylist()

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    def take(self, indices: Sequence[int]) -> TextColumn:
        import pyarrow as pa

        return TextColumn(self.array.take(pa.array(indices, pa.int64())))


def text_column(table, name: str) -> Sequence[str]:
    """Column ``name`` of a ``datasets.Dataset`` as texts: a ``TextColumn`` for a string column, else a list of the
    cells as ``str`` (numbers, say), with missing cells as ``""``."""
    import pyarrow as pa

    column = table.data.column(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return TextColumn(column)
    return ["" if t is None else str(t) for t in column.to_pylist()]


def texts_of(
    rows: list[dict[str, Any]], text_column: str, text_pair_column: str | None
) -> tuple[list[str], list[str] | None]:
    """The texts (and second texts) of rows read as dicts (a chunk of a file, a window of a stream); an empty cell is
    an empty text."""
    as_text = lambda col: ["" if r[col] is None else str(r[col]) for r in rows]  # noqa: E731
    return as_text(text_column), as_text(text_pair_column) if text_pair_column else None


def column_values(table, name: str) -> list[Any]:
    """Column ``name`` as Python values. A string column is dictionary-encoded first, so a million rows of a few
    label names share a few ``str`` objects instead of holding one each."""
    import pyarrow as pa

    column = table.data.column(name)
    if column.null_count or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column.to_pylist()
    values: list[Any] = []
    for chunk in column.dictionary_encode().chunks:
        names = chunk.dictionary.to_pylist()
        values += [names[i] for i in chunk.indices.to_numpy()]
    return values


def missing_column(column: str, available: Sequence[str], source: str, option: str) -> BertclsError:
    close = difflib.get_close_matches(column, available, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return BertclsError(
        f"{source}: no column '{column}'{hint}; columns are {', '.join(available)}; set {option} to one of them"
    )


# The command-line options naming a table's columns, as evaluate and export take them.
COLUMN_OPTIONS = {
    "text_column": "--text-column",
    "text_pair_column": "--text-pair-column",
    "label_column": "--label-column",
}
COLUMN_DEFAULTS = {"text_column": "text", "text_pair_column": None, "label_column": "label"}


def add_column_options(parser) -> None:
    """``--text-column``, ``--text-pair-column`` and ``--label-column`` on an argparse parser."""
    for key, flag in COLUMN_OPTIONS.items():
        parser.add_argument(flag, default=COLUMN_DEFAULTS[key])


def column_args(args) -> dict[str, str | None]:
    """The column options of parsed arguments, as keyword arguments."""
    return {key: getattr(args, key) for key in COLUMN_OPTIONS}
