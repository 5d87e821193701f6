"""Atomic writes: a folder or file appears whole or not at all.

Everything bertcls writes for later use (checkpoints, exports, cached features, prediction files) is written beside
its target under a hidden temporary name and moved into place with ``os.replace`` (atomic on one file system), so a
crash never leaves a half-written folder that looks complete. No torch here: ``bertcls.predict`` on an ONNX export
uses it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def remove(paths: Iterable[Path]) -> None:
    """Remove each of these files and folders (one that is not there is fine): a run's, cv's or a sweep's own
    outputs, before they are written again."""
    for p in paths:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move folder ``tmp`` to ``target``; an older ``target`` is moved aside first and removed only once the new one
    is in."""
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target`` to write into; when the block ends it replaces ``target``
    (see ``replace_dir``), and when the block raises it is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write one file at; when the block ends the file replaces
    ``target``, and when the block raises it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
