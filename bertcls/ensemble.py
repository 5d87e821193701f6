"""Several checkpoints of the same labels as one classifier: the mean of their probabilities.

Cross-validation's fold models (``cv.save_models=true``) are the usual members: ``python -m bertcls.predict
--checkpoint runs/cv/folds/fold-1/best --checkpoint runs/cv/folds/fold-2/best ...``. No torch at import: ONNX
exports can be members too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertcls.errors import BertclsError
from bertcls.tasks import get_task


class Ensemble:
    """Predicts with every member and averages the probabilities. Members must share the task and the labels (in
    the same order). A multi-label ensemble decides at the mean of its members' thresholds."""

    def __init__(self, members: Sequence[Any], names: Sequence[str] | None = None):
        names = list(names) if names is not None else [f"member {i + 1}" for i in range(len(members))]
        first = members[0]
        for member, name in zip(members[1:], names[1:]):
            if member.task != first.task or list(member.labels) != list(first.labels):
                raise BertclsError(
                    f"checkpoint {name} ({member.task}, labels {list(member.labels)}) does not match {names[0]} "
                    f"({first.task}, labels {list(first.labels)}); an ensemble needs the same task and labels"
                )
        self.members, self.labels, self.task = list(members), list(first.labels), first.task
        self.label_delimiter = getattr(first, "label_delimiter", None)
        thresholds = [m.thresholds for m in members if m.thresholds is not None]
        self.thresholds = np.mean(thresholds, axis=0).tolist() if thresholds else None

    def predict_proba(
        self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 64, precision="no"
    ) -> np.ndarray:
        """The members' mean probabilities, (len(texts), labels), in input order."""
        total = None
        for member in self.members:
            if hasattr(member, "session"):  # an ONNX export: full precision only
                probs = np.asarray(member.predict_proba(texts, text_pairs, batch_size), dtype=np.float64)
            else:
                probs = member.predict_proba(texts, text_pairs, batch_size, precision).numpy().astype(np.float64)
            total = probs if total is None else total + probs
        return total / len(self.members)

    def predict(
        self, texts: str | Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 64, precision="no"
    ) -> list[dict[str, Any]]:
        """As ``BertForTextClassification.predict``, from the mean probabilities."""
        if isinstance(texts, str):
            texts = [texts]
        probs = self.predict_proba(list(texts), text_pairs, batch_size, precision)
        return get_task(self.task).prediction_dicts(probs.tolist(), self.labels, self.thresholds)
