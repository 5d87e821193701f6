"""The evaluation report's metrics, accumulated chunk by chunk, against scikit-learn's on the same rows."""

import numpy as np
import pytest
from sklearn import metrics as skm

from bertcls.metrics import (
    MultiLabelTally,
    ReportTally,
    classification_report,
    expected_calibration_error,
    multilabel_report,
)


def _probs(rng, n, k):
    z = rng.normal(size=(n, k)) * 2
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _assert_prf(report, y, pred, **kw):
    for average in ("macro", "micro", "weighted", *(["samples"] if "samples" in report else [])):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0, **kw)
        assert [report[average][m] for m in ("precision", "recall", "f1")] == pytest.approx([p, r, f]), average
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0, **kw)
    got = np.array([[c["precision"], c["recall"], c["f1"], c["support"]] for c in report["per_class"].values()])
    np.testing.assert_allclose(got, np.stack([p, r, f, s], 1), atol=1e-12)


@pytest.mark.parametrize("k", [2, 4])
def test_single_label_report_equals_sklearn(k):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k - 1, size=300)  # the last class never occurs: its recall is 0/0
    probs = _probs(rng, 300, k)
    labels = [f"c{i}" for i in range(k)]
    report = classification_report(y, probs, labels)
    pred = probs.argmax(-1)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["loss"] == pytest.approx(skm.log_loss(y, probs, labels=list(range(k))))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=list(range(k))).tolist()
    _assert_prf(report, y, pred, labels=list(range(k)))
    if k == 2:
        assert report["roc_auc"] is None  # one class only in the gold
        y[:10] = 1
        report = classification_report(y, probs, labels)
        assert report["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=1e-6)
        assert report["average_precision"] == pytest.approx(skm.average_precision_score(y, probs[:, 1]), abs=1e-6)


def test_report_in_chunks_equals_one_go():
    rng = np.random.default_rng(0)
    y, probs = rng.integers(0, 2, size=500), _probs(rng, 500, 2)
    tally = ReportTally(2)
    for start in range(0, 500, 77):
        tally.add(y[start : start + 77], probs[start : start + 77])
    chunked, whole = tally.report(["a", "b"]), classification_report(y, probs, ["a", "b"])
    assert chunked.keys() == whole.keys()
    for key, value in whole.items():
        if key == "calibration_bins":  # sums in another order
            np.testing.assert_allclose(chunked[key], value, rtol=1e-12)
        else:
            assert chunked[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert chunked["ece"] == pytest.approx(expected_calibration_error(y, probs))


def test_multilabel_report_equals_sklearn_in_chunks():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 4)) < 0.3).astype(np.int64)
    y[:5] = 0  # rows with no gold label: their samples-average scores are 0/0
    y[:, 3] = 0  # a label never gold
    probs = rng.random((200, 4))
    thresholds = [0.5, 0.3, 0.7, 0.5]
    tally = MultiLabelTally(thresholds)
    for start in range(0, 200, 33):
        tally.add(y[start : start + 33], probs[start : start + 33])
    report = tally.report(list("abcd"))
    assert report == multilabel_report(y, probs, list("abcd"), thresholds)
    pred = (probs >= np.array(thresholds)).astype(np.int64)
    _assert_prf(report, y, pred)
    assert report["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred))
    assert report["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    matrices = skm.multilabel_confusion_matrix(y, pred)
    assert [report["confusion_matrices"][c] for c in "abcd"] == matrices.tolist()
    assert report["per_class"]["b"]["threshold"] == 0.3
