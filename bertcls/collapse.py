"""Seeds that cannot silently collapse: a run whose first validation predicts one answer for everything, or whose
training loss never left the uniform guess, is named as collapsed (and ``train`` restarts it with the next seed).

Fine-tuning BERT-family models fails this way for some seeds (Mosbach et al. 2021, "On the Stability of Fine-tuning
BERT"; Dodge et al. 2020): the loss stays at ln K and every prediction is the majority class. The usual advice,
another seed, is what ``train.collapse_retries`` does, saying so instead of leaving a near-chance model behind.
"""

from __future__ import annotations

import numpy as np

from bertcls.run_state import StopRun

# How close to the uniform guess's loss (relative) a loss that "never left it" stays.
STUCK_TOLERANCE = 0.01


class Collapsed(StopRun):
    """Raised at the first validation of a collapsed run that may be restarted."""

    def __init__(self, reason: str, step: int):
        super().__init__(reason)
        self.reason, self.step = reason, step


def collapse_reason(task, probs: np.ndarray, gold: np.ndarray, thresholds, labels, loss_curve) -> str | None:
    """Why the run looks collapsed at its first validation, or None: every validation row got the same decision
    while the gold labels differ, or every point of the training loss curve so far is within 1% of ln K."""
    decided = np.asarray(task.decide(probs, thresholds))
    gold = np.asarray(gold)
    if len(decided) > 1 and task.same(decided, decided[:1]).all() and not task.same(gold, gold[:1]).all():
        first = decided[0]
        answer = labels[int(first)] if first.ndim == 0 else "{" + ", ".join(np.asarray(labels)[first > 0]) + "}"
        return f"every validation prediction is {answer} while the validation labels differ"
    uniform = task.uniform_loss(len(labels))
    losses = [loss for _, loss in loss_curve]
    if len(losses) >= 2 and all(abs(loss - uniform) <= STUCK_TOLERANCE * uniform for loss in losses):
        k = 2 if task.per_label else len(labels)
        return f"the training loss never left {uniform:.4f} (ln {k}, a uniform guess)"
    return None
