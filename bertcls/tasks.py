"""The classification task, looked up once by name: what a label is and everything that follows from it.

A single-label task has one label per text (softmax, cross-entropy, accuracy, the top label); a multi-label task a
set of labels per text (a sigmoid per label, binary cross-entropy, micro-F1, every label at or above its threshold).
Callers hold a ``Task`` and never branch on its name. Importing this module imports neither torch nor scikit-learn
(``bertcls.config`` reads the metric names), so the heavy imports live inside the methods.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bertcls.errors import BertclsError, label_set, some

# What a label value is, read from a file (bertcls.data reads the files and calls these through the task).


def label_ids(values: Sequence[Any], labels: Sequence[str], source: str = "data") -> list[int]:
    """Map raw label values to indices of ``labels``; unknown labels are an error naming them."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise BertclsError(f"{source} has label(s) {some(unknown)} that are not in the label set {label_set(labels)}")
    return [index[str(v)] for v in values]


def is_soft(values: Any) -> bool:
    """Whether a split's label values are soft targets: a float matrix of the teacher's probabilities and the true
    label (``bertcls.distill.soft_targets``), which every task passes through as they are."""
    return isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype.kind == "f"


class Task:
    """What single- and multi-label classification share; the two subclasses fill in the differences."""

    name: str
    metrics: tuple[str, ...]  # what eval.metric may select; the first is the default
    headline: tuple[str, ...]  # the numbers a log line shows
    summary: tuple[str, ...]  # the columns of `bertcls.evaluate`'s comparison table
    compared: str  # the score checkpoints are compared on, row by row (paired bootstrap)
    per_label: bool  # a decision per label (a sigmoid and a threshold each) rather than one label per text
    hf_problem_type: str  # transformers' `config.problem_type` of an exported BertForSequenceClassification

    @property
    def default_metric(self) -> str:
        return self.metrics[0]

    def describe(self, metrics: dict[str, float]) -> str:
        """The headline numbers of a metrics dict, for the log."""
        return " ".join(f"{k} {metrics[k]:.4f}" for k in self.headline)

    def label_values(self, values: Sequence[Any]) -> list[Any]:
        """Every label value in a column (a multi-label cell holds several)."""
        return list(values)

    def decision_state(self, model) -> dict[str, Any]:
        """What, beside the weights, decides a model's predictions (kept with the best model during a run)."""
        return {}

    def load_decision_state(self, model, state: dict[str, Any]) -> None:
        """Give ``model`` the decision state ``decision_state`` returned."""

    def configure(self, model, tune: bool, threshold: Any, delimiter: str) -> None:
        """Set the run's decision options on a new model."""

    def saved_decision(self, model) -> dict[str, Any]:
        """What a saved model's or an export's config records of the decision rule, beside the weights."""
        return {}

    def initial_thresholds(self, num_labels: int) -> list[float] | None:
        """A new model's per-label thresholds (None: the task decides without thresholds)."""
        return None

    def load_saved_decision(self, model, config: Mapping[str, Any]) -> None:
        """Give a loaded model the decision rule its config (``saved_decision``'s keys) records."""

    def check_saved_decision(self, config: dict[str, Any], labels: Sequence[str]) -> None:
        """Check (and normalise in place) the decision rule an export's config records."""

    def chosen_labels(self, prediction: Mapping[str, Any]) -> list[str]:
        """The labels a prediction dict (``prediction_dicts``) predicts."""
        return [prediction["label"]]

    def tally(self, model):
        """Empty metric counts for ``model`` (``tally_of`` its labels and thresholds): evaluation adds chunks of rows
        to them."""
        return self.tally_of(model.labels, model.thresholds)

    def known(self, gold: np.ndarray) -> np.ndarray:
        """Per row of ``gold_rows``'s gold: every label of the row is one the checkpoint knows."""
        return (gold >= 0).reshape(len(gold), -1).all(-1)

    def same(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per row: two decisions (label indices, or multi-hot rows: the whole label set) are equal."""
        return (a == b).reshape(len(a), -1).all(-1)

    def correct(self, predicted: np.ndarray, gold: np.ndarray) -> np.ndarray:
        """Per row: the prediction (multi-label: the whole label set) is the gold one, and the gold is known."""
        return self.same(predicted, gold) & self.known(gold)

    # -- temperature scaling (bertcls.calibration): what differs between the tasks lives here

    def fit_temperature(self, probs: np.ndarray, gold: np.ndarray, doc_ids=None) -> float | list[float]:
        """The temperature fitted on (validation) probabilities: one, or one per label (``doc_ids``: windows)."""
        from bertcls.calibration import fit_temperature

        return fit_temperature(probs, gold, self.per_label, doc_ids)

    def calibrated(self, probs: np.ndarray, temperature, doc_ids=None) -> np.ndarray:
        """Per text, the probabilities once ``temperature`` is folded in (``probs``: windows' with ``doc_ids``)."""
        from bertcls.calibration import calibrated

        return calibrated(probs, temperature, self.per_label, doc_ids)

    def calibration_scores(self, labels: Sequence[str], gold: np.ndarray, probs: np.ndarray, thresholds=None):
        """Every score ``bertcls.evaluate`` reports of these probabilities (one ``tally_of``), of which calibration
        records its before and after (``bertcls.calibration.RECORDED``)."""
        tally = self.tally_of(labels, thresholds)
        tally.add(gold, probs)
        return tally.report(labels)

    def calibrate_decisions(self, model, temperature, gold: np.ndarray, calibrated_probs: np.ndarray, tune: bool):
        """Move the decision rule with a temperature being folded into ``model``. Single-label: nothing to move (a
        temperature never changes the top label of one row)."""

    def thresholds_before_calibration(self, model) -> list[float] | None:
        """The thresholds that decided before ``model``'s temperature was folded in (None: no thresholds)."""
        return None

    def describe_calibration(self, record: Mapping[str, Any]) -> str:
        """The log line of a calibration ``record`` (``bertcls.calibration.record``)."""
        t, before, after = record["temperature"], record["before"], record["after"]
        line = f"calibration: temperature {self._temperatures(t)} on the {record['split']} split; "
        line += f"loss {before['loss']:.4f} -> {after['loss']:.4f}"
        if "ece" in before:
            line += f", ECE {before['ece']:.4f} -> {after['ece']:.4f}"
        if t == 1.0:  # (fit_temperature's answer when every validation prediction is right)
            line += " (every validation prediction is right: no temperature to fit, T stays 1)"
        if record["decisions_changed"]:
            n = record["decisions_changed"]
            line += f"; {n} decision(s) changed (a text read as windows averages its windows' calibrated probabilities)"
        return line

    def _temperatures(self, temperature) -> str:
        return f"{temperature:.3f}"


class SingleLabel(Task):
    name = "single_label"
    metrics = ("accuracy", "macro_f1", "loss")
    headline = ("loss", "accuracy", "macro_f1")
    summary = ("accuracy", "macro_f1", "loss", "ece")
    compared = "accuracy"
    per_label = False
    hf_problem_type = "single_label_classification"

    def uniform_loss(self, num_labels: int) -> float:
        """The loss of predicting every label equally likely: ln(num_labels) for softmax over the labels."""
        return math.log(num_labels)

    def check_config(self, cfg) -> None:
        """Refuse the options that only mean something for a multi-label task (never silently ignored)."""
        from bertcls.errors import BertclsError

        if cfg.loss.pos_weight is not None:
            raise BertclsError("loss.pos_weight is for data.task=multi_label; single_label uses loss.class_weights")
        if cfg.eval.threshold != 0.5:
            raise BertclsError(
                "eval.threshold is for data.task=multi_label; single_label predicts the most probable label"
            )

    def read_labels(self, values: Sequence[Any], source: str, delimiter: str) -> list[Any]:
        """A label column as read from a file, each label cleaned (``multilabel.clean_label``: whitespace stripped).

        Raises:
            BertclsError: a cell holds a list (multi-label data read as single-label), or a label is missing or
                blank (a cell of spaces is no more a class than an empty one), naming its file lines.
        """
        from bertcls.errors import BertclsError
        from bertcls.multilabel import clean_label

        lists = next((i for i, v in enumerate(values) if isinstance(v, (list, tuple))), None)
        if lists is not None:
            raise BertclsError(
                f"{source}: labels are lists (file line {lists + 2}: {list(values[lists])!r}); for several labels per "
                "text set data.task=multi_label"
            )
        cleaned = [clean_label(v) for v in values]
        missing = [i for i, v in enumerate(cleaned) if v is None or v == "" or (isinstance(v, float) and math.isnan(v))]
        if missing:
            rows = ", ".join(str(i + 2) for i in missing[:5])  # +2: 1-based, after the header line
            raise BertclsError(
                f"{source}: {len(missing)} row(s) have no label or a blank one (file lines {rows}...); "
                "fill or drop them"
            )
        return cleaned

    def targets(self, values: Sequence[Any], labels: Sequence[str], source: str = "data") -> list[int]:
        if is_soft(values):  # a distillation run's training split
            return values
        return label_ids(values, labels, source)

    def gold_rows(self, values: Sequence[Any], labels: Sequence[str], delimiter: str) -> tuple[np.ndarray, Counter]:
        """Gold label indices for evaluation (-1 for a label the checkpoint does not know), and those labels counted."""
        index = {label: i for i, label in enumerate(labels)}
        gold = np.array([index.get(str(v), -1) for v in values], dtype=np.int64)
        return gold, Counter(str(v) for v, g in zip(values, gold) if g < 0)

    def check_label_count(self, labels: Sequence[str], values: Sequence[Any], source: str) -> None:
        from bertcls.errors import BertclsError

        if len(set(map(str, values))) < 2:
            raise BertclsError(f"{source}: every training example has the same label; a classifier needs two or more")

    def probabilities(self, logits):
        return logits.float().softmax(-1)

    def plain_loss(self, logits, labels):
        """Mean cross-entropy in float32 (what the model's forward returns with labels)."""
        import torch

        return torch.nn.functional.cross_entropy(logits.float(), labels)

    def numpy_probabilities(self, logits):
        z = logits - logits.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def build_loss(self, loss_cfg, labels: Sequence[str], train_targets, log):
        """``(loss_fn, loss_weight)``: cross-entropy with ``loss.class_weights`` and ``loss.label_smoothing``."""
        from bertcls import losses

        weights = losses.class_weights(loss_cfg.class_weights, labels, train_targets)
        if weights is not None:
            log(f"class weights: {dict(zip(labels, [round(w, 4) for w in weights.tolist()], strict=True))}")
        return losses.build_loss(weights, loss_cfg.label_smoothing), losses.build_loss_weight(weights)

    def metrics_of(self, gold, probs, thresholds=None) -> dict[str, float]:
        from bertcls.metrics import core_metrics

        return core_metrics(gold, probs)

    def decide(self, probs, thresholds=None):
        """Predicted label indices."""
        return probs.argmax(-1)

    def prediction_dicts(self, rows: Sequence[Sequence[float]], labels: Sequence[str], thresholds=None) -> list[dict]:
        """``[{"label": ..., "score": ..., "probabilities": {label: p}}, ...]``: the top label of each row."""
        out = []
        for row in rows:
            top = max(range(len(row)), key=row.__getitem__)
            out.append({"label": labels[top], "score": row[top], "probabilities": dict(zip(labels, row, strict=True))})
        return out

    def tally_of(self, labels: Sequence[str], thresholds=None):
        """An empty ``bertcls.metrics.ReportTally``."""
        from bertcls.metrics import ReportTally

        return ReportTally(len(labels))

    def report(self, model, tally) -> dict[str, Any]:
        """Every metric ``bertcls.evaluate`` reports (``bertcls.metrics.classification_report``), from a tally."""
        return tally.report(model.labels)


class MultiLabel(Task):
    name = "multi_label"
    metrics = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "loss")
    headline = ("loss", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
    summary = ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss", "loss")
    compared = "subset_accuracy"
    per_label = True
    hf_problem_type = "multi_label_classification"

    def uniform_loss(self, num_labels: int) -> float:
        """The loss of predicting every label at probability 1/2: ln 2 for a sigmoid per label."""
        return math.log(2)

    def label_values(self, values: Sequence[Any]) -> list[Any]:
        return [v for s in values for v in s]

    def check_config(self, cfg) -> None:
        """Refuse the options that only mean something for a single-label task (never silently ignored)."""
        from bertcls.errors import BertclsError

        single_only = {
            "loss.class_weights": cfg.loss.class_weights is not None,
            "loss.label_smoothing": cfg.loss.label_smoothing > 0,
            "train.sampler=balanced": cfg.train.sampler == "balanced",
        }
        for key, used in single_only.items():
            if used:
                raise BertclsError(
                    f"{key} is for data.task=single_label (one label per text); with multi_label, weigh rare "
                    "labels with loss.pos_weight instead"
                )

    def read_labels(self, values: Sequence[Any], source: str, delimiter: str) -> list[list[Any]]:
        """A label column as read from a file: each cell a set of labels (``bertcls.multilabel.parse_label_set``); an
        empty cell is the empty set, not a missing label."""
        from bertcls.multilabel import parse_label_set

        return [parse_label_set(v, delimiter) for v in values]

    def targets(self, values: Sequence[Any], labels: Sequence[str], source: str = "data") -> list[list[int]]:
        from bertcls.multilabel import multi_hot

        return multi_hot(values, labels, source)

    def gold_rows(self, values: Sequence[Any], labels: Sequence[str], delimiter: str) -> tuple[np.ndarray, Counter]:
        """Gold multi-hot rows for evaluation (a row with a label the checkpoint does not know is all -1), and those
        labels counted. A cell is a list, or a string joined by ``delimiter``."""
        from bertcls.multilabel import multi_hot, parse_label_set

        known = set(labels)
        sets = [parse_label_set(v, delimiter) for v in values]
        gold = np.full((len(sets), len(labels)), -1, dtype=np.int64)
        for i, s in enumerate(sets):
            if all(str(v) in known for v in s):
                gold[i] = multi_hot([s], labels)[0]
        return gold, Counter(str(v) for s in sets for v in s if str(v) not in known)

    def check_label_count(self, labels: Sequence[str], values: Sequence[Any], source: str) -> None:
        from bertcls.errors import BertclsError

        if len(labels) < 2:
            raise BertclsError(
                f"{source}: the training examples use {len(labels)} label(s) {list(labels)}; a multi-label classifier "
                "needs two or more (for one yes/no label use data.task=single_label)"
            )

    def probabilities(self, logits):
        return logits.float().sigmoid()

    def plain_loss(self, logits, labels):
        """Mean binary cross-entropy in float32 (what the model's forward returns with labels)."""
        import torch

        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def numpy_probabilities(self, logits):
        from bertcls.multilabel import sigmoid

        return sigmoid(logits)

    def build_loss(self, loss_cfg, labels: Sequence[str], train_targets, log):
        """``(loss_fn, loss_weight)``: binary cross-entropy per label with ``loss.pos_weight``."""
        from bertcls import losses

        weights = losses.pos_weights(loss_cfg.pos_weight, labels, train_targets)
        if weights is not None:
            log(f"pos_weight: {dict(zip(labels, [round(w, 4) for w in weights.tolist()], strict=True))}")
        return losses.build_multilabel_loss(weights), losses.build_loss_weight()

    def metrics_of(self, gold, probs, thresholds=None) -> dict[str, float]:
        from bertcls.metrics import multilabel_metrics

        return multilabel_metrics(gold, probs, thresholds)

    def decide(self, probs, thresholds=None):
        """Multi-hot rows: the labels at or above their thresholds."""
        from bertcls.multilabel import decide

        return decide(probs, thresholds)

    def prediction_dicts(self, rows: Sequence[Sequence[float]], labels: Sequence[str], thresholds=None) -> list[dict]:
        from bertcls.multilabel import prediction_dicts

        return prediction_dicts(rows, labels, thresholds)

    def tally_of(self, labels: Sequence[str], thresholds=None):
        """An empty ``bertcls.metrics.MultiLabelTally`` at ``thresholds``."""
        from bertcls.metrics import MultiLabelTally

        return MultiLabelTally(thresholds)

    def report(self, model, tally) -> dict[str, Any]:
        """Every metric ``bertcls.evaluate`` reports (``bertcls.metrics.multilabel_report``), from a tally, and the
        delimiter its label sets are written with."""
        return {**tally.report(model.labels), "label_delimiter": model.label_delimiter}

    def decision_state(self, model) -> dict[str, Any]:
        return {"thresholds": dict(zip(model.labels, model.thresholds, strict=True))}

    def saved_decision(self, model) -> dict[str, Any]:
        return {"thresholds": model.thresholds, "label_delimiter": model.label_delimiter}

    def load_decision_state(self, model, state: dict[str, Any]) -> None:
        model.thresholds = list(state["thresholds"].values())

    def initial_thresholds(self, num_labels: int) -> list[float] | None:
        from bertcls.multilabel import DEFAULT_THRESHOLD

        return [DEFAULT_THRESHOLD] * num_labels

    def load_saved_decision(self, model, config: Mapping[str, Any]) -> None:
        from bertcls.multilabel import DEFAULT_DELIMITER, DEFAULT_THRESHOLD

        model.thresholds = config.get("thresholds") or DEFAULT_THRESHOLD
        model.label_delimiter = str(config.get("label_delimiter") or DEFAULT_DELIMITER)

    def check_saved_decision(self, config: dict[str, Any], labels: Sequence[str]) -> None:
        from bertcls.multilabel import check_thresholds

        config["thresholds"] = check_thresholds(config["thresholds"], labels)

    def chosen_labels(self, prediction: Mapping[str, Any]) -> list[str]:
        return list(prediction["labels"])

    def calibrate_decisions(self, model, temperature, gold: np.ndarray, calibrated_probs: np.ndarray, tune: bool):
        """Tuned thresholds are tuned again on the calibrated probabilities; a fixed threshold is an operating point
        the user chose, so each label's moves with its T and every decision stays (``scaled_thresholds``)."""
        from bertcls.calibration import scaled_thresholds
        from bertcls.multilabel import tune_thresholds

        if tune:
            model.thresholds = tune_thresholds(gold, calibrated_probs).tolist()
        else:
            model.thresholds = scaled_thresholds(model.thresholds, temperature)

    def thresholds_before_calibration(self, model) -> list[float] | None:
        from bertcls.calibration import scaled_thresholds

        if model.temperature is None:
            return model.thresholds
        return scaled_thresholds(model.thresholds, 1.0 / np.asarray(model.temperature, dtype=np.float64))

    def _temperatures(self, temperature) -> str:
        return f"{min(temperature):.3f} to {max(temperature):.3f} (one per label)"

    def configure(self, model, tune: bool, threshold: Any, delimiter: str) -> None:
        from bertcls.multilabel import DEFAULT_THRESHOLD

        # Tuned thresholds replace 0.5 at each evaluation; best/ and last/ keep the ones tuned for their weights.
        model.thresholds = DEFAULT_THRESHOLD if tune else threshold
        model.label_delimiter = delimiter


TASKS: dict[str, Task] = {t.name: t for t in (SingleLabel(), MultiLabel())}


def get_task(name: str) -> Task:
    """The task registered as ``name`` (``single_label`` or ``multi_label``)."""
    if name not in TASKS:
        from bertcls.errors import BertclsError

        raise BertclsError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def task_of_metrics(metrics: Mapping[str, Any]) -> Task:
    """The task whose metrics ``metrics`` holds, for a dict saved without its task name (a comparison row, a
    validation record); single-label when neither fits."""
    return next((t for t in TASKS.values() if set(t.metrics) <= metrics.keys()), TASKS["single_label"])
