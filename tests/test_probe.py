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
    import bertcls.train as recipe

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
    recipe.train(cfg)
    assert seen and all(lr == 0.02 for lr in seen)


def test_lbfgs_on_a_head_it_cannot_fit_is_a_clear_error(tiny_bert, tiny_data, tmp_path):
    from bertcls.train import train

    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "train.head_solver=lbfgs")  # full fine-tuning
    with pytest.raises(BertclsError, match="head_solver=lbfgs fits a linear head on cached features"):
        train(cfg)
