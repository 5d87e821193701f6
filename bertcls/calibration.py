"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): probabilities that mean what
they say, fitted after training on the validation split and folded into the head's last layer.

A single-label model gets one temperature ``T`` (its logits divided by T before the softmax); a multi-label model one
per label (each sigmoid's logit divided by its own T, i.e. Platt scaling without the offset, which would move the
0.5 decision). T is fitted by minimising the negative log-likelihood on the validation split; dividing by T > 0 never
changes a single-label model's top label.

Folding: the last linear layer's weight rows and bias are divided by T, so the saved weights themselves give the
calibrated probabilities, and every path that runs them (``predict``, ``evaluate``, ONNX and Hugging Face exports)
needs no extra code. The temperature is recorded in the checkpoint (``bertcls_config.json``) so the uncalibrated
probabilities can be recovered for reports (``uncalibrated``).

Everything works from probabilities: log p (softmax) and logit p (sigmoid) equal the logits up to what the
normalisation removes, so fitting needs no second forward pass. numpy only, apart from ``fold_temperature``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CALIBRATIONS = ("temperature", "none")
LOG_T_RANGE = (-4.0, 4.0)  # T in [0.018, 55]: beyond either end a model is broken, not miscalibrated
EPS = 1e-12


def _logits(probs: np.ndarray, multi_label: bool) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p) if multi_label else np.log(p)


def scaled(probs: np.ndarray, factor: float | np.ndarray, multi_label: bool) -> np.ndarray:
    """Probabilities whose logits are multiplied by ``factor`` (1/T calibrates; T undoes a calibration)."""
    z = _logits(probs, multi_label) * factor
    if multi_label:
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _nll(z: np.ndarray, gold: np.ndarray, multi_label: bool) -> float:
    """Mean negative log-likelihood of logits ``z`` (multi-label: one column's binary cross-entropy)."""
    if multi_label:
        return float(np.mean(np.logaddexp(0.0, z) - gold * z))
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-log_p[np.arange(len(gold)), gold].mean())


def _fit_one(z: np.ndarray, gold: np.ndarray, multi_label: bool) -> float:
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: _nll(z / np.exp(log_t), gold, multi_label), bounds=LOG_T_RANGE, method="bounded"
    )
    return float(np.exp(result.x))


def all_right(z: np.ndarray, gold: np.ndarray, multi_label: bool) -> bool:
    """Whether every validation decision is right (multi-label: one label's column, at logit 0). Then the NLL falls
    forever as T shrinks (every row's loss goes to 0), so there is no temperature to fit: T stays 1."""
    if multi_label:
        return bool(np.all((z > 0) == (gold > 0.5)))
    return bool(np.all(z.argmax(-1) == gold))


def fit_temperature(probs: np.ndarray, gold: np.ndarray, multi_label: bool) -> float | list[float]:
    """The temperature(s) minimising the validation NLL: one for single-label (``gold``: label indices), one per
    label for multi-label (``gold``: multi-hot rows). 1 where nothing can be fitted: every decision right
    (``all_right``), or a label with one class only in ``gold``."""
    z = _logits(probs, multi_label)
    gold = np.asarray(gold)
    if not multi_label:
        gold = gold.astype(np.int64)
        return 1.0 if all_right(z, gold, False) else _fit_one(z, gold, False)
    temps = []
    for j in range(z.shape[1]):
        column = gold[:, j].astype(np.float64)
        both = 0 < column.sum() < len(column)  # with one class only, the NLL falls forever as T shrinks
        temps.append(_fit_one(z[:, j], column, True) if both and not all_right(z[:, j], column, True) else 1.0)
    return temps


def calibrated(probs: np.ndarray, temperature: float | Sequence[float], multi_label: bool) -> np.ndarray:
    """``probs`` as the model gives them once ``temperature`` is folded in."""
    return scaled(probs, 1.0 / np.asarray(temperature, dtype=np.float64), multi_label)


def uncalibrated(probs: np.ndarray, temperature: float | Sequence[float] | None, multi_label: bool) -> np.ndarray:
    """A calibrated model's probabilities as they were before ``temperature`` was folded in."""
    if temperature is None:
        return probs
    return scaled(probs, np.asarray(temperature, dtype=np.float64), multi_label)


def fold_temperature(model, temperature: float | Sequence[float]) -> None:
    """Divide the head's last linear layer (weight rows and bias) by ``temperature`` and record it on the model
    (``model.temperature``, multiplied into an earlier one), so the model's own outputs are calibrated."""
    import torch

    t = torch.as_tensor(temperature, dtype=torch.float64)
    linear = model.head.layers[-1]
    with torch.no_grad():
        scale = (1.0 / t).to(linear.weight.dtype).to(linear.weight.device)
        linear.weight.mul_(scale.reshape(-1, 1) if scale.ndim else scale)
        linear.bias.mul_(scale)
    before = model.temperature
    total = t.numpy() * (np.asarray(before, dtype=np.float64) if before is not None else 1.0)
    model.temperature = total.tolist() if total.ndim else float(total)
