"""The head fitted by L-BFGS on cached features is scikit-learn's logistic regression; frozen runs use train.lr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bertcls.errors import BertclsError
from bertcls.losses import build_loss
from bertcls.probe import fit_linear

from .test_train import tiny_cfg


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_lbfgs_head_is_sklearns_logistic_regression(c):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = (x[:, :3] @ rng.normal(size=(3, 3))).argmax(1) ^ (rng.random(300) < 0.1)  # noisy 3-class labels
    y = np.clip(y, 0, 2)
    linear = torch.nn.Linear(12, 3)
    fit_linear(linear, torch.from_numpy(x), torch.from_numpy(y).long(), build_loss(None), c)
    ours = linear(torch.from_numpy(x)).softmax(-1).detach().numpy()
    theirs = LogisticRegression(C=c, max_iter=10000, tol=1e-10).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)  # float32 (the run's loss) against float64


def _sklearn_data(classes: int, n: int = 300, d: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :3] @ rng.normal(size=(3, classes))).argmax(1)
    flip = rng.random(n) < 0.15
    y[flip] = rng.integers(0, classes, flip.sum())  # noise, so the penalty matters
    return x, y


def _our_probabilities(x, y, loss_fn, c, outputs, weight_sum=None, sigmoid=False):
    linear = torch.nn.Linear(x.shape[1], outputs)
    fit_linear(linear, torch.from_numpy(x), torch.from_numpy(y), loss_fn, c, weight_sum=weight_sum)
    z = linear(torch.from_numpy(x)).detach().double()
    return (z.sigmoid() if sigmoid else z.softmax(-1)).numpy()


@pytest.mark.parametrize("c", [0.03, 1.0])
def test_binary_c_is_sklearns_c(c):
    """scikit-learn fits one weight vector for two classes; our two softmax rows at C are its fit at C."""
    from sklearn.linear_model import LogisticRegression

    x, y = _sklearn_data(2)
    ours = _our_probabilities(x, torch.from_numpy(y).long().numpy(), build_loss(None), c, 2)
    theirs = LogisticRegression(C=c, max_iter=10000, tol=1e-10).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


@pytest.mark.parametrize("classes", [2, 3])
def test_class_weighted_c_is_sklearns_c(classes):
    """Class weights: sklearn sums the weighted losses; our weighted mean divides by the weights' sum."""
    from sklearn.linear_model import LogisticRegression

    x, y = _sklearn_data(classes, seed=1)
    w = np.array([3.0, 0.5, 1.5][:classes], dtype=np.float32)
    c = 0.1
    weights = torch.from_numpy(w)
    ours = _our_probabilities(x, y.astype(np.int64), build_loss(weights), c, classes, float(w[y].sum()))
    cw = dict(enumerate(w.astype(np.float64)))
    theirs = LogisticRegression(C=c, class_weight=cw, max_iter=10000, tol=1e-10).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_multi_label_c_is_one_sklearn_fit_per_label():
    """Multi-label with L labels: L independent scikit-learn fits at the same C (ours averages over labels too)."""
    from sklearn.linear_model import LogisticRegression

    from bertcls.losses import build_multilabel_loss

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = ((x[:, :4] @ rng.normal(size=(4, 5)) + rng.normal(size=(300, 5))) > 0.3).astype(np.float32)
    c = 0.1
    ours = _our_probabilities(x, y, build_multilabel_loss(None), c, 5, sigmoid=True)
    for j in range(5):
        theirs = LogisticRegression(C=c, max_iter=10000, tol=1e-10).fit(x, y[:, j]).predict_proba(x)[:, 1]
        np.testing.assert_allclose(ours[:, j], theirs, atol=1e-3)


def test_frozen_run_fits_the_head_by_lbfgs_and_keeps_the_best_penalty(tiny_bert, tiny_data, tmp_path):
    from bertcls.probe import C_GRID
    from bertcls.train import train

    out = tmp_path / "run"
    result = train(tiny_cfg(tiny_bert, tiny_data, out, "model.freeze_backbone=true"))
    assert [h["C"] for h in result["history"]] == list(C_GRID)
    assert result["best"]["metric"] == "loss"
    losses = [h["validation"]["loss"] for h in result["history"]]
    assert result["best"]["step"] == int(np.argmin(losses)) + 1
    assert json.loads((out / "metrics.json").read_text())["test"]["num_examples"] == 40


def test_frozen_adamw_run_trains_the_head_at_train_lr(tiny_bert, tiny_data, tmp_path, monkeypatch):
    import bertcls.run as recipe  # the one-run recipe, whose optimizer this test watches
    from bertcls.train import train

    seen = []
    real = recipe.build_optimizer

    def spy(model, cfg):
        opt = real(model, cfg)
        seen.extend(g["lr"] for g in opt.param_groups)
        return opt

    monkeypatch.setattr(recipe, "build_optimizer", spy)
    cfg = tiny_cfg(
        tiny_bert, tiny_data, tmp_path / "run", "model.freeze_backbone=true", "train.head_solver=adamw", "train.lr=0.02"
    )
    train(cfg)
    assert seen and all(lr == 0.02 for lr in seen)


def test_lbfgs_on_a_head_it_cannot_fit_is_a_clear_error(tiny_bert, tiny_data, tmp_path):
    from bertcls.train import train

    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "train.head_solver=lbfgs")  # full fine-tuning
    with pytest.raises(BertclsError, match="head_solver=lbfgs fits a linear head on cached features"):
        train(cfg)
