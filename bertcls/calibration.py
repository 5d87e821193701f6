"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): probabilities that mean what
they say, fitted after training on the validation split and folded into the head's last layer.

A single-label model gets one temperature ``T`` (its logits divided by T before the softmax); a multi-label model one
per label (each sigmoid's logit divided by its own T, i.e. Platt scaling without the offset, which would move the
0.5 decision). T is fitted by minimising the negative log-likelihood on the validation split; dividing by T > 0 never
changes a single-label model's top label.

Folding: the last linear layer's weight rows and bias are divided by T, so the saved weights themselves give the
calibrated probabilities, and every path that runs them (``predict``, ``evaluate``, ONNX and Hugging Face exports)
needs no extra code. The temperature is recorded in the checkpoint (``bertcls_config.json``) so reports can give
the scores before it (``model.predict_proba_before_calibration``: the logits times T, in the same pass; for a text
read as one row ``uncalibrated`` recovers them from the probabilities too).

Everything works from probabilities: log p (softmax) and logit p (sigmoid) equal the logits up to what the
normalisation removes, so fitting needs no second forward pass. numpy only, apart from ``fold_temperature``.

A model that reads long texts as windows (``data.window_stride``) gives a text the mean of its windows'
probabilities; folded in, T gives ``mean_w softmax(z_w / T)``. So T is fitted on the windows' probabilities
(``doc_ids``: each window's text), minimising the NLL of that mean, which is what the saved model computes; not on
the log of the mean, another function. A multi-label model with a fixed threshold keeps its decisions: each label's
threshold moves with its T (``scaled_thresholds``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertcls.long_texts import mean_of_windows

CALIBRATIONS = ("temperature", "none")
# What metrics.json keeps of the scores before and after calibration (where the task has them): one shape for a
# training run (on its validation split) and for bertcls.evaluate (on the data it evaluates).
RECORDED = ("loss", "ece", "calibration_bins", "accuracy", "macro_f1", "micro_f1", "subset_accuracy")
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


def _row_log_likelihood(z: np.ndarray, gold: np.ndarray, multi_label: bool) -> np.ndarray:
    """Per row, the log-probability of its gold under logits ``z`` (multi-label: one column, gold 0 or 1)."""
    if multi_label:
        signed = np.where(gold > 0.5, z, -z)
        return -np.logaddexp(0.0, -signed)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return log_p[np.arange(len(gold)), gold]


def _nll(z: np.ndarray, gold: np.ndarray, multi_label: bool, doc_ids: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of logits ``z`` (multi-label: one column's binary cross-entropy). With
    ``doc_ids`` the rows are windows and ``gold`` is per text: a text's probability is the mean of its windows'
    (a log-mean-exp of their log-probabilities, so a confident window stays exact)."""
    if doc_ids is None:
        return float(-_row_log_likelihood(z, gold, multi_label).mean())
    ll = _row_log_likelihood(z, gold[doc_ids], multi_label)
    num_docs = len(gold)
    top = np.full(num_docs, -np.inf)
    np.maximum.at(top, doc_ids, ll)
    sums = np.bincount(doc_ids, weights=np.exp(ll - top[doc_ids]), minlength=num_docs)
    counts = np.bincount(doc_ids, minlength=num_docs)
    return float(-(top + np.log(sums) - np.log(counts)).mean())


def _fit_one(z: np.ndarray, gold: np.ndarray, multi_label: bool, doc_ids: np.ndarray | None = None) -> float:
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: _nll(z / np.exp(log_t), gold, multi_label, doc_ids), bounds=LOG_T_RANGE, method="bounded"
    )
    return float(np.exp(result.x))


def all_right(z: np.ndarray, gold: np.ndarray, multi_label: bool) -> bool:
    """Whether every validation decision is right (multi-label: one label's column, at logit 0). Then the NLL falls
    forever as T shrinks (every row's loss goes to 0), so there is no temperature to fit: T stays 1."""
    if multi_label:
        return bool(np.all((z > 0) == (gold > 0.5)))
    return bool(np.all(z.argmax(-1) == gold))


def fit_temperature(probs: np.ndarray, gold: np.ndarray, multi_label: bool, doc_ids=None) -> float | list[float]:
    """The temperature(s) minimising the validation NLL: one for single-label (``gold``: label indices), one per
    label for multi-label (``gold``: multi-hot rows). With ``doc_ids`` (each row's text) ``probs`` are windows' and
    ``gold`` is per text, whose probability is its windows' mean (what the folded model computes). 1 where nothing
    can be fitted: every decision right (``all_right``; with windows, every window's), or a label with one class only
    in ``gold``."""
    z = _logits(probs, multi_label)
    gold = np.asarray(gold)
    doc_ids = None if doc_ids is None else np.asarray(doc_ids, dtype=np.int64)
    row_gold = gold if doc_ids is None else gold[doc_ids]  # (as T shrinks every window's own decision wins)
    if not multi_label:
        gold = gold.astype(np.int64)
        return 1.0 if all_right(z, row_gold.astype(np.int64), False) else _fit_one(z, gold, False, doc_ids)
    temps = []
    for j in range(z.shape[1]):
        column = gold[:, j].astype(np.float64)
        both = 0 < column.sum() < len(column)  # with one class only, the NLL falls forever as T shrinks
        fit = both and not all_right(z[:, j], row_gold[:, j], True)
        temps.append(_fit_one(z[:, j], column, True, doc_ids) if fit else 1.0)
    return temps


def calibrated(probs: np.ndarray, temperature: float | Sequence[float], multi_label: bool, doc_ids=None) -> np.ndarray:
    """``probs`` as the model gives them once ``temperature`` is folded in; with ``doc_ids``, ``probs`` are windows'
    and the answer is per text (the mean of its windows' calibrated probabilities)."""
    out = scaled(probs, 1.0 / np.asarray(temperature, dtype=np.float64), multi_label)
    return out if doc_ids is None else mean_of_windows(out, doc_ids, int(np.max(doc_ids)) + 1)


def scaled_thresholds(thresholds: Sequence[float], temperature: float | Sequence[float]) -> list[float]:
    """Multi-label thresholds that make the same decisions once ``temperature`` is folded in: ``p >= t`` is
    ``z >= logit t``, and the folded model's ``z / T >= logit(t) / T``. (The reciprocal of T undoes it.)"""
    t = np.clip(np.asarray(thresholds, dtype=np.float64), EPS, 1 - EPS)
    moved = 1.0 / (1.0 + np.exp(-(np.log(t) - np.log1p(-t)) / np.asarray(temperature, dtype=np.float64)))
    return np.clip(moved, EPS, 1 - EPS).tolist()


def record(temperature, split: str, before: dict, after: dict, changed: int) -> dict:
    """What ``metrics.json`` records under ``calibration``, in training and in ``bertcls.evaluate``: the temperature,
    the split it is scored on, the scores there before and after it (``RECORDED``, where the task has them), and how
    many of that split's decisions it changed (0 unless texts are read as windows)."""
    before, after = ({k: m[k] for k in RECORDED if k in m} for m in (before, after))
    return {
        "method": "temperature",
        "temperature": temperature,
        "split": split,
        "before": before,
        "after": after,
        "decisions_changed": int(changed),
    }


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


def unfold_temperature(model) -> None:
    """Undo ``fold_temperature`` (the last layer multiplied back by the recorded temperature, which is cleared):
    a model about to be trained again starts from its raw head, and a checkpoint saved from it records no
    temperature it was not calibrated with."""
    if model.temperature is None:
        return
    fold_temperature(model, 1.0 / np.asarray(model.temperature, dtype=np.float64))
    model.temperature = None
