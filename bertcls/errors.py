"""The one exception users see, and the wrapper that turns it into a one-line CLI error."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class BertclsError(Exception):
    """A problem with the user's input (file, column, label, option, checkpoint). The message says what to do."""


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
