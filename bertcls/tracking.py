"""Experiment tracking through accelerate's trackers (``output.tracking: [tensorboard]``): checking the choice and
turning the resolved config into the flat hyperparameters trackers accept."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from bertcls.errors import BertclsError

# A tracker's name in accelerate -> the pip package that provides it (when the names differ).
PACKAGES = {"comet_ml": "comet-ml"}


def check_trackers(names: Sequence[str]) -> list[str]:
    """The tracker names, checked against accelerate's list and against what is installed.

    Raises:
        BertclsError: an unknown tracker, or one whose package is not installed (naming the pip package).
    """
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    valid = list(LOGGER_TYPE_TO_CLASS)
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name not in valid:
            raise BertclsError(f"output.tracking: unknown tracker '{name}'; valid: {', '.join(valid)}")
        if name not in available:
            package = PACKAGES.get(name, name)
            raise BertclsError(
                f"output.tracking: '{name}' needs its package; pip install {package} (or remove it from the list)"
            )
    return list(names)


def flat_config(cfg: Any) -> dict[str, bool | int | float | str]:
    """``{"train.lr": 1e-4, ...}``: every config value as a scalar (lists, maps and null as text), since trackers
    such as TensorBoard's hparams take scalars only."""
    flat: dict[str, bool | int | float | str] = {}
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            v = getattr(values, f.name)
            flat[f"{section.name}.{f.name}"] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return flat
