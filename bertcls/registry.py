"""One registry per pluggable choice (initializers, poolings): a name -> function table that users extend with a
decorator, the same way the built-in entries are added."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict[str, F]):
    """A dict of named functions; ``@registry.register("name")`` adds one (a later one of the same name wins)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # what an entry is, for messages: "initializer", "pooling"

    def register(self, name: str) -> Callable[[F], F]:
        def add(fn: F) -> F:
            self[name] = fn
            return fn

        return add
