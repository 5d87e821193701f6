"""What a run does when its training file is small: no validation cut too small to choose anything, enough
optimizer steps, no temperature fitted on a handful of rows, and one line when the result is near chance.

The thresholds are config values (``data.min_validation_rows``, ``train.min_steps``, ``eval.min_calibration_rows``,
``eval.near_chance_margin``); their measurements are in docs/fewshot.md. Each function returns the line the run
logs (or None when nothing changes), so the plan says what was chosen and why. No torch, no scikit-learn.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from bertcls.config import Config


def no_cut_reason(cfg: Config, n_rows: int) -> str | None:
    """Why a validation split is not cut from ``n_rows`` training rows (None: cut it as configured)."""
    d = cfg.data
    n_val = math.ceil(d.validation_fraction * n_rows)
    needs_validation = cfg.train.early_stopping_patience or cfg.eval.threshold == "tune"
    if n_val >= d.min_validation_rows or needs_validation:
        return None
    return (
        f"validation: none cut from {n_rows} training rows ({d.validation_fraction:g} of them would be {n_val}, under "
        f"data.min_validation_rows={d.min_validation_rows}: too few to choose anything); every row trains"
    )


def scaled_steps(cfg: Config, steps: int, updates_per_epoch: int) -> tuple[int, str | None]:
    """At least ``train.min_steps`` optimizer steps when the run is counted in epochs; (steps, why) when scaled."""
    t = cfg.train
    if t.max_steps > 0 or steps >= t.min_steps:
        return steps, None
    epochs = t.min_steps / updates_per_epoch
    why = (
        f"steps: {t.min_steps} instead of {steps} ({epochs:g} epochs instead of {t.epochs:g}: train.min_steps="
        f"{t.min_steps} for a small file; train.max_steps sets the count yourself)"
    )
    return t.min_steps, why


def calibration_skip_reason(cfg: Config, n_rows: int, source: str = "validation rows") -> str | None:
    """Why temperature scaling is skipped on ``n_rows`` rows (None: fit it)."""
    need = cfg.eval.min_calibration_rows
    if n_rows >= need:
        return None
    return (
        f"calibration: skipped, {n_rows} {source} are under eval.min_calibration_rows={need} (a temperature fitted on "
        "them would be noise); probabilities are as trained (give data.validation with more rows to calibrate)"
    )


def majority_rate(label_ids: Sequence[int]) -> float:
    """The accuracy of always answering the most common label."""
    counts = Counter(int(i) for i in label_ids)
    return max(counts.values()) / len(label_ids) if len(label_ids) else 0.0


def per_class_min(label_ids: Sequence[int]) -> int:
    counts = Counter(int(i) for i in label_ids)
    return min(counts.values()) if counts else 0


def near_chance_line(cfg: Config, accuracy: float, majority: float, what: str, per_class: int) -> str | None:
    """One warning line (with what to do) when ``accuracy`` is within ``eval.near_chance_margin`` of ``majority``."""
    margin = cfg.eval.near_chance_margin
    if margin <= 0 or accuracy > majority + margin:
        return None
    todo = ["label more examples", "give texts without labels to python -m bertcls.selftrain (data.unlabeled=...)"]
    if cfg.train.recipe == "contrastive":  # its head starts from the label names: say what they mean, or drop them
        todo.append("say what each label means (data.label_descriptions='a {} review', or a map)")
        if cfg.train.contrastive_centroids != 1:
            todo.append("start the head from your examples alone (train.contrastive_centroids=1)")
    else:
        todo.append("try a frozen head (--config configs/frozen.yaml)")
    return (
        f"warning: near chance: {what} accuracy {accuracy:.4f} against {majority:.4f} for always answering the most "
        f"common label, with {per_class} training example(s) in the smallest class; {', '.join(todo[:-1])}, or "
        f"{todo[-1]}"
    )
