"""Tokenized splits in flat arrays: tokenized in chunks, kept on disk and memory-mapped by the next run.

A split's token rows are one flat ``int32`` array of every id plus an ``offsets`` array (row ``i`` is
``ids[offsets[i]:offsets[i + 1]]``), so memory is four bytes a token instead of a Python list per row (about 7 KB a
row for lists of Python ints with the tokenizer's per-row encodings). The attention mask is never stored (rows are
unpadded: it is all ones); token types are one byte a token, kept only when the tokenizer gives them.

``tokenize`` builds a store ``CHUNK_ROWS`` texts at a time, so building one never holds more than a chunk's Python
lists. ``cached_tokens`` keeps stores in a folder keyed by what changes the tokens (the texts themselves, the
tokenizer, ``max_length``, truncation, window stride), writes each entry atomically and memory-maps it on a hit; a
damaged entry is rebuilt, never trusted. No torch here: the ONNX predictor reads rows through ``bertcls.inference``
as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertcls.atomic import atomic_dir

STORE_VERSION = 1
CHUNK_ROWS = 8192
DEFAULT_TOKEN_CACHE = Path(os.environ.get("BERTCLS_TOKEN_CACHE", Path.home() / ".cache" / "bertcls" / "tokens"))
# name -> dtype of the files in an entry; `type_ids` and `doc_ids` are absent when a store has none.
FILES = {"ids": np.int32, "offsets": np.int64, "type_ids": np.int8, "doc_ids": np.int64}


@dataclass
class TokenStore:
    """Token rows in flat arrays (in memory or memory-mapped).

    ``doc_ids`` maps each row to its text when texts are read as windows (None: one row per text); ``num_texts`` is
    the number of texts the rows came from.
    """

    ids: np.ndarray
    offsets: np.ndarray
    type_ids: np.ndarray | None = None
    doc_ids: np.ndarray | None = None
    num_texts: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> dict[str, np.ndarray]:
        """Row ``i``'s columns, unpadded."""
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        out = {"input_ids": np.asarray(self.ids[start:stop]), "attention_mask": np.ones(stop - start, np.int8)}
        if self.type_ids is not None:
            out["token_type_ids"] = np.asarray(self.type_ids[start:stop])
        return out

    def pad(self, idx: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
        """Rows ``idx`` padded to the longest of them, as int64 arrays (one gather, no Python loop over rows)."""
        idx = np.asarray(idx, dtype=np.int64)
        starts, lengths = self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx]
        cols = np.arange(int(lengths.max()))
        mask = cols[None, :] < lengths[:, None]
        where = np.where(mask, starts[:, None] + cols[None, :], 0)
        batch = {
            "input_ids": np.where(mask, self.ids[where], pad_id).astype(np.int64),
            "attention_mask": mask.astype(np.int64),
        }
        if self.type_ids is not None:
            batch["token_type_ids"] = np.where(mask, self.type_ids[where], 0).astype(np.int64)
        return batch


# ---------------------------------------------------------------- building a store chunk by chunk


def tokenize(
    encode_chunk: Callable[[Sequence[str], Sequence[str] | None, int], tuple[dict[str, list], list[int] | None]],
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    folder: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> TokenStore:
    """A store of ``texts`` (and ``pairs``), ``CHUNK_ROWS`` at a time through ``encode_chunk(texts, pairs, first)``
    (token columns as lists, and with windows each row's text index counted from ``first``). With a ``folder`` the
    arrays are appended to files there and the result is memory-mapped; otherwise they stay in memory."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FILES}
    total, windows = 0, False
    with contextlib.ExitStack() as files:
        sinks = {n: files.enter_context(open(folder / f"{n}.bin", "wb")) for n in FILES} if folder is not None else {}
        for first in range(0, len(texts), CHUNK_ROWS):
            chunk_pairs = pairs[first : first + CHUNK_ROWS] if pairs is not None else None
            rows, doc_ids = encode_chunk(texts[first : first + CHUNK_ROWS], chunk_pairs, first)
            lengths = np.fromiter(map(len, rows["input_ids"]), np.int64, len(rows["input_ids"]))
            arrays = {"ids": _flat(rows["input_ids"], np.int32), "offsets": total + np.cumsum(lengths)}
            if "token_type_ids" in rows:
                arrays["type_ids"] = _flat(rows["token_type_ids"], np.int8)
            if doc_ids is not None:
                arrays["doc_ids"], windows = np.asarray(doc_ids, np.int64), True
            total += int(lengths.sum())
            for name, a in arrays.items():
                sinks[name].write(a.tobytes()) if sinks else parts[name].append(a)
            if progress is not None:
                progress(min(CHUNK_ROWS, len(texts) - first))
    if folder is not None:
        meta = {"version": STORE_VERSION, "num_texts": len(texts), "tokens": total, "windows": windows}
        (folder / "meta.json").write_text(json.dumps(meta))
        return open_store(folder)
    joined = {name: np.concatenate(p) if p else None for name, p in parts.items()}
    offsets = np.concatenate([[0], joined["offsets"] if joined["offsets"] is not None else []]).astype(np.int64)
    return TokenStore(joined["ids"], offsets, joined["type_ids"], joined["doc_ids"], len(texts))


def _flat(rows: list[list[int]], dtype) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(rows), dtype, sum(map(len, rows)))


def open_store(folder: Path) -> TokenStore:
    """Memory-map the store in ``folder``.

    Raises:
        ValueError: the entry is incomplete or its files disagree with each other (a damaged entry).
    """
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("version") != STORE_VERSION:
        raise ValueError(f"store version {meta.get('version')}, expected {STORE_VERSION}")
    arrays: dict[str, Any] = {}
    for name, dtype in FILES.items():
        path = folder / f"{name}.bin"
        size = path.stat().st_size if path.exists() else 0
        arrays[name] = np.memmap(path, dtype=dtype, mode="r") if size else None
    ids, ends = arrays["ids"], arrays["offsets"]
    if ids is None or ends is None or len(ids) != meta["tokens"] or int(ends[-1]) != meta["tokens"]:
        raise ValueError("token and offset files disagree")
    if arrays["type_ids"] is not None and len(arrays["type_ids"]) != len(ids):
        raise ValueError("token type file has the wrong size")
    if meta["windows"] != (arrays["doc_ids"] is not None) or (meta["windows"] and len(arrays["doc_ids"]) != len(ends)):
        raise ValueError("window file has the wrong size")
    # offsets are stored without the leading 0 (each chunk appends its ends); one small array in memory
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    return TokenStore(ids, offsets, arrays["type_ids"], arrays["doc_ids"], meta["num_texts"])


# ---------------------------------------------------------------- the cache


def update_strings(h, values: Sequence[str] | None) -> None:
    """Feed ``values`` to hash ``h``, each length-prefixed (so ["ab", "c"] and ["a", "bc"] differ)."""
    if values is None:
        h.update(b"\x00none")
        return
    for v in values:
        b = v.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of everything in a tokenizer that changes its ids: the fast tokenizer's JSON (vocab, normalizer,
    pre-tokenizer, post-processor) or the vocab of a slow one, and the special-token ids and truncation side.

    The JSON's ``truncation`` and ``padding`` entries are left out: they are the state of the last call (a call with
    ``truncation=True`` sets them), not part of the tokenizer, so with them the same tokenizer hashed differently
    before and after its first use.
    """
    h = hashlib.blake2b(digest_size=20)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        spec = tokenizer.get_vocab()
    h.update(json.dumps(spec, sort_keys=True).encode())
    h.update(f"{type(tokenizer).__name__}|{tokenizer.all_special_ids}|{tokenizer.truncation_side}".encode())
    return h.hexdigest()


def token_key(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None, options: dict[str, Any]) -> str:
    """The cache key of ``texts``/``pairs`` read by ``tokenizer`` with ``options`` (max_length, truncation,
    window stride): content, not file names, so an edited file or a changed option is a miss."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"v{STORE_VERSION}|{tokenizer_fingerprint(tokenizer)}|{json.dumps(options, sort_keys=True)}".encode())
    update_strings(h, texts)
    update_strings(h, pairs)
    return h.hexdigest()


def cached_tokens(
    build: Callable[[Path | None], TokenStore], key: str, cache_dir: Path | None, log: Callable[[str], None] = print
) -> tuple[TokenStore, bool]:
    """The store under ``key`` in ``cache_dir``, memory-mapped, or ``build(folder)`` into a new entry there (or in
    memory, ``build(None)``, with no ``cache_dir``). Returns the store and whether it was a hit."""
    if cache_dir is None:
        return build(None), False
    entry = cache_dir / key
    if entry.is_dir():
        try:
            return open_store(entry), True
        except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged entry is rebuilt, never trusted
            log(f"token cache entry {entry} is unreadable ({e}); tokenizing again")
            shutil.rmtree(entry, ignore_errors=True)
    with atomic_dir(entry) as tmp:
        build(tmp)
    return open_store(entry), False
