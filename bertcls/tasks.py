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
from pathlib import Path
from typing import Any

import numpy as np


class Task:
    """What single- and multi-label classification share; the two subclasses fill in the differences."""

    name: str
    metrics: tuple[str, ...]  # what eval.metric may select; the first is the default
    headline: tuple[str, ...]  # the numbers a log line shows
    summary: tuple[str, ...]  # the columns of `bertcls.evaluate`'s comparison table
    compared: str  # the score checkpoints are compared on, row by row (paired bootstrap)
    summary_names: tuple[str, ...]  # the titles of `summary` in the printed comparison
    compared_name: str  # `compared` in words
    per_label: bool  # a decision per label (a sigmoid and a threshold each) rather than one label per text
    hf_problem_type: str  # transformers' `config.problem_type` of an exported BertForSequenceClassification
    curve_title: str

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

    def output_fields(self, prediction: Mapping[str, Any], delimiter: str | None = None) -> dict[str, Any]:
        """A prediction's fields in an output file: ``predicted`` and its score(s); with ``delimiter`` (a CSV cell)
        a label set is one string."""
        return {"predicted": prediction["label"], "score": prediction["score"]}

    def curve_scores(self) -> list[tuple[str, str, str, str]]:
        """The validation scores a learning-curve plot draws: (metric, line style, colour, legend) each."""
        return [
            ("accuracy", "o-", "tab:green", "validation accuracy"),
            ("macro_f1", "s--", "tab:purple", "validation macro F1"),
        ]

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


def _precision_note(m: Mapping[str, Any]) -> str:
    precision = m.get("precision")
    return "" if precision is None else f", precision {'full (fp32)' if precision == 'no' else precision}"


def _report_title(m: Mapping[str, Any], tag: str = "") -> str:
    """The first line of a printed report: checkpoint, data, examples, precision and the rows left out."""
    line = f"{m['checkpoint']} on {m['data']}: {m['num_examples']} examples{tag}{_precision_note(m)}"
    if m["unknown_labels"]["count"]:
        skipped = ", ".join(f"'{k}' x{n}" for k, n in m["unknown_labels"]["labels"].items())
        line += f" ({m['unknown_labels']['count']} rows skipped, labels unknown to the checkpoint: {skipped})"
    return line


def format_score(value: float | None, width: int = 9) -> str:
    """A score right-aligned in ``width`` characters with four decimals; ``n/a`` for None or NaN."""
    if value is None or math.isnan(value):
        return f"{'n/a':>{width}}"
    return f"{value:>{width}.4f}"


class SingleLabel(Task):
    name = "single_label"
    metrics = ("accuracy", "macro_f1", "loss")
    headline = ("loss", "accuracy", "macro_f1")
    summary = ("accuracy", "macro_f1", "loss", "ece")
    compared = "accuracy"
    summary_names = ("accuracy", "macro F1", "loss", "ECE")
    compared_name = "accuracy"
    per_label = False
    curve_title = "accuracy and macro F1"  # what a learning-curve plot's score panel shows
    hf_problem_type = "single_label_classification"

    def uniform_loss(self, num_labels: int) -> float:
        """The loss of predicting every label equally likely: ln(num_labels) for softmax over the labels."""
        return math.log(num_labels)

    def kind(self, num_labels: int) -> str:
        """What the model is, for its card."""
        return f"{num_labels}-class text classifier"

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
        """A label column as read from a file: a missing label is an error naming its file lines."""
        from bertcls.data import normalize_label
        from bertcls.errors import BertclsError

        missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and math.isnan(v))]
        if missing:
            rows = ", ".join(str(i + 2) for i in missing[:5])  # +2: 1-based, after the header line
            raise BertclsError(
                f"{source}: {len(missing)} row(s) have no label (file lines {rows}...); fill or drop them"
            )
        return [normalize_label(v) for v in values]

    def targets(self, values: Sequence[Any], labels: Sequence[str], source: str = "data") -> list[int]:
        from bertcls.data import label_ids

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

    def csv_cells(self, value: Any, predicted, labels: Sequence[str], delimiter: str) -> tuple[Any, str]:
        """The ``gold`` and ``predicted`` cells of a predictions row: the gold as read, the predicted label's name."""
        return value, labels[predicted]

    def plot_confusion(self, m: Mapping[str, Any], labels: Sequence[str], path: Path, title: str) -> None:
        from bertcls.plots import plot_confusion_matrix

        plot_confusion_matrix(m["confusion_matrix"], labels, path, title=title)

    def format_report(self, m: Mapping[str, Any]) -> str:
        """Headline numbers, per-class table, confusion matrix."""
        labels = list(m["labels"])
        lines = [_report_title(m)]
        head = (
            f"accuracy {m['accuracy']:.4f}   macro F1 {m['macro_f1']:.4f}   loss {m['loss']:.4f}   ECE {m['ece']:.4f}"
        )
        if "roc_auc" in m:
            auc, ap = format_score(m["roc_auc"], 0).strip(), format_score(m["average_precision"], 0).strip()
            head += f"   ROC-AUC {auc}   AP {ap} (positive: {m['positive_label']})"
        lines.append(head)
        if "calibration" in m:
            c = m["calibration"]
            lines.append(
                f"calibrated (temperature {c['temperature']:.3f}); before calibration: loss {c['before']['loss']:.4f}"
                f"   ECE {c['before']['ece']:.4f}"
            )
        lines.append("")
        w = max(12, *(len(label) for label in labels)) + 2
        lines.append(f"{'':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
        for label in labels:
            c = m["per_class"][label]
            lines.append(f"{label:<{w}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}")
        for avg in ("macro", "micro", "weighted"):
            a = m[avg]
            lines.append(f"{avg + ' avg':<{w}}{a['precision']:>10.4f}{a['recall']:>10.4f}{a['f1']:>10.4f}")
        lines += ["", "confusion matrix (rows = gold, columns = predicted):"]
        cw = max(8, *(len(label) + 1 for label in labels))
        lines.append(f"{'':<{w}}" + "".join(f"{label:>{cw}}" for label in labels))
        for label, row in zip(labels, m["confusion_matrix"]):
            lines.append(f"{label:<{w}}" + "".join(f"{n:>{cw}}" for n in row))
        return "\n".join(lines)


class MultiLabel(Task):
    name = "multi_label"
    metrics = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "loss")
    headline = ("loss", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
    summary = ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss", "loss")
    compared = "subset_accuracy"
    summary_names = ("subset acc", "micro F1", "macro F1", "Hamming", "loss")
    compared_name = "subset accuracy"
    per_label = True
    curve_title = "micro / macro F1 and subset accuracy"
    hf_problem_type = "multi_label_classification"

    def uniform_loss(self, num_labels: int) -> float:
        """The loss of predicting every label at probability 1/2: ln 2 for a sigmoid per label."""
        return math.log(2)

    def label_values(self, values: Sequence[Any]) -> list[Any]:
        return [v for s in values for v in s]

    def kind(self, num_labels: int) -> str:
        """What the model is, for its card."""
        return f"multi-label text classifier over {num_labels} labels"

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

    def csv_cells(self, value: Any, predicted, labels: Sequence[str], delimiter: str) -> tuple[str, str]:
        """The ``gold`` and ``predicted`` cells of a predictions row: label sets joined by ``delimiter``."""
        from bertcls.multilabel import join_labels, parse_label_set

        gold = join_labels(parse_label_set(value, delimiter), delimiter)
        return gold, join_labels([labels[j] for j in np.flatnonzero(predicted)], delimiter)

    def plot_confusion(self, m: Mapping[str, Any], labels: Sequence[str], path: Path, title: str) -> None:
        """One 2x2 confusion matrix per label."""
        from bertcls.plots import plot_multilabel_confusion

        plot_multilabel_confusion(m["confusion_matrices"], path, title=title)

    def format_report(self, m: Mapping[str, Any]) -> str:
        """Headline numbers, per-label precision / recall / F1 / support / threshold, and per-label decision counts."""
        labels = list(m["labels"])
        lines = [_report_title(m, " (multi-label)")]
        lines.append(
            f"micro F1 {m['micro_f1']:.4f}   macro F1 {m['macro_f1']:.4f}   subset accuracy {m['subset_accuracy']:.4f}"
            f"   Hamming loss {m['hamming_loss']:.4f}   loss {m['loss']:.4f}"
        )
        lines.append("")
        w = max(12, *(len(label) for label in labels)) + 2
        lines.append(f"{'':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}{'threshold':>11}")
        for label in labels:
            c = m["per_class"][label]
            lines.append(
                f"{label:<{w}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}"
                f"{c['threshold']:>11.4f}"
            )
        for avg in ("micro", "macro", "weighted", "samples"):
            a = m[avg]
            lines.append(f"{avg + ' avg':<{w}}{a['precision']:>10.4f}{a['recall']:>10.4f}{a['f1']:>10.4f}")
        lines += ["", "per label (tp = predicted and gold, fp = predicted only, fn = gold only, tn = neither):"]
        lines.append(f"{'':<{w}}{'tp':>8}{'fp':>8}{'fn':>8}{'tn':>8}")
        for label in labels:
            (tn, fp), (fn, tp) = m["confusion_matrices"][label]
            lines.append(f"{label:<{w}}{tp:>8}{fp:>8}{fn:>8}{tn:>8}")
        return "\n".join(lines)

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

    def output_fields(self, prediction: Mapping[str, Any], delimiter: str | None = None) -> dict[str, Any]:
        from bertcls.multilabel import join_labels

        if delimiter is not None:  # the label set in one cell, as data.label_delimiter reads it back
            return {"predicted": join_labels(prediction["labels"], delimiter)}
        return {"predicted": prediction["labels"], "scores": prediction["scores"]}

    def curve_scores(self) -> list[tuple[str, str, str, str]]:
        return [
            ("micro_f1", "o-", "tab:green", "validation micro F1"),
            ("subset_accuracy", "^:", "tab:olive", "validation subset accuracy"),
            ("macro_f1", "s--", "tab:purple", "validation macro F1"),
        ]

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
