"""How a model reads a text longer than ``max_length``: which token positions survive truncation (``head``, ``tail``,
``head+tail``), which windows cover it, and the mean of a text's window probabilities.

The functions work on one untruncated encoding's ``sequence_ids`` (None for a special token, 0 for the first text, 1
for the second), which transformers' fast tokenizers and the ``tokenizers`` library both give. No torch here: training
and ``model.predict`` (through ``bertcls.data``) and the ONNX predictor (``bertcls.onnx_predict``) share this one
implementation, so an export reads long texts exactly as the model it came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertcls.errors import BertclsError

TRUNCATIONS = ("head", "tail", "head+tail")


def check_truncation(truncation: str) -> str:
    if truncation not in TRUNCATIONS:
        raise BertclsError(f"unknown truncation '{truncation}'; valid: {', '.join(TRUNCATIONS)}")
    return truncation


def truncated_positions(sequence_ids: Sequence[int | None], max_length: int, truncation: str) -> list[int]:
    """The positions of one encoding that stay when it is cut to ``max_length`` tokens: special tokens always, and of
    each text its first (``head``), last (``tail``) or first quarter and last three quarters (``head+tail``) of the
    tokens its share of the budget allows (``share_budget``)."""
    parts = [[j for j, s in enumerate(sequence_ids) if s == part] for part in (0, 1)]
    specials = [j for j, s in enumerate(sequence_ids) if s is None]
    sizes = share_budget(len(parts[0]), len(parts[1]), max_length - len(specials))
    return sorted(specials + _keep(parts[0], sizes[0], truncation) + _keep(parts[1], sizes[1], truncation))


def window_positions(
    sequence_ids: Sequence[int | None], max_length: int, stride: int, text_index: int = 0
) -> list[list[int]]:
    """The positions of each window over one encoding: up to ``max_length`` tokens, starts ``stride`` tokens of the
    first text apart, the last one reaching its end; special tokens and a second text are in every window.

    Raises:
        BertclsError: ``stride`` is not in 1..(tokens per window), or a second text leaves no room for the first
            (``text_index`` names the text).
    """
    first = [j for j, s in enumerate(sequence_ids) if s == 0]
    rest = [j for j, s in enumerate(sequence_ids) if s != 0]  # specials and the second text
    width = max_length - len(rest)
    if width < 1:
        raise BertclsError(f"text {text_index}: its second text alone fills data.max_length={max_length}")
    if not 1 <= stride <= width:
        raise BertclsError(f"data.window_stride must be between 1 and {width} (tokens per window), got {stride}")
    windows, start = [], 0
    while True:
        windows.append(sorted(rest + first[start : start + width]))
        if start + width >= len(first):
            return windows
        start += stride


def mean_of_windows(probs: np.ndarray, doc_ids: Sequence[int], num_docs: int) -> np.ndarray:
    """Mean of the window probabilities of each text, in numpy: (num_windows, C) -> (num_docs, C)."""
    index = np.asarray(doc_ids, dtype=np.int64)
    sums = np.zeros((num_docs, probs.shape[-1]), dtype=probs.dtype)
    np.add.at(sums, index, probs)
    counts = np.maximum(np.bincount(index, minlength=num_docs), 1).astype(probs.dtype)
    return sums / counts[:, None]


def share_budget(a: int, b: int, budget: int) -> tuple[int, int]:
    """How many tokens each of two texts (``a`` and ``b`` tokens long) keeps, as the tokenizers library's
    ``longest_first`` truncation shares them: the shorter keeps all it has if that is at most half, the longer the
    rest; when both are longer than half, each gets half and the longer one (the second, on a tie) the odd token."""
    if a + b <= budget:
        return a, b
    half = budget // 2
    if min(a, b) <= half:
        return (a, budget - a) if a <= b else (budget - b, b)
    return (half, budget - half) if a <= b else (budget - half, half)


def _keep(positions: list[int], n: int, truncation: str) -> list[int]:
    if len(positions) <= n:
        return positions
    if truncation == "head":
        return positions[:n]
    if truncation == "tail":
        return positions[len(positions) - n :]
    head = n // 4
    return positions[:head] + positions[len(positions) - (n - head) :]
