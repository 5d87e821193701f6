"""JSON that every parser reads: Python's ``json`` writes NaN and Infinity, which are not JSON (``jq``, browsers and
most other languages refuse the whole file). A metric is finite or absent: a non-finite number is left out of an
object, and written as null in a list (where a position means something, e.g. a curve's points)."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float left out of objects and nulled in lists."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items() if not _non_finite(v)}
    if isinstance(value, (list, tuple)):
        return [None if _non_finite(v) else finite(v) for v in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` of ``finite(value)``; refuses (ValueError) anything non-finite left, so no file holds NaN."""
    return json.dumps(finite(value), allow_nan=False, **options)


def _non_finite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)  # numpy's float64 is a float too
