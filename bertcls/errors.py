"""The one exception users see, and the wrapper that turns it into a one-line CLI error."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class BertclsError(Exception):
    """A problem with the user's input (file, column, label, option, checkpoint). The message says what to do."""


def some(values: Sequence[object], limit: int = 5, width: int = 40) -> str:
    """Values for an error message: the first ``limit``, each cut to ``width`` characters, then how many more. (A label
    column that holds free text by mistake would otherwise print every sentence of the data set.)"""
    shown = [str(v) if len(str(v)) <= width else str(v)[: width - 3] + "..." for v in values[:limit]]
    more = len(values) - limit
    return ", ".join(map(repr, shown)) + (f" and {more} more" if more > 0 else "")


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type name when it has no message), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def label_set(labels: Sequence[str]) -> str:
    """A label set for an error message, with a hint when it is too large to be one."""
    hint = f" ({len(labels)} distinct: is the label column a text column?)" if len(labels) > 100 else ""
    return f"[{some(labels, limit=20 if len(labels) <= 20 else 5)}]{hint}"


def check_parent(path: Path, option: str) -> None:
    """``path``'s missing parent folders can be made (the writer makes them, as ``mkdir -p`` would): an error when a
    file stands where a folder is needed."""
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise BertclsError(f"{option} {path}: {ancestor} is a file, not a folder")
            return


def cli_errors(main: F) -> F:
    """Run an entry point so that a BertclsError prints one line on stderr and exits 2, without a traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except BertclsError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(getattr(e, "exit_code", 2))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapped  # type: ignore[return-value]


def quiet_loading() -> None:
    """Turn off transformers' per-tensor "Loading weights" progress bar: noise in a command's output or run log."""
    import transformers

    transformers.logging.disable_progress_bar()
