"""Collapsed seeds are named and retried (bertcls.collapse), and train.seeds compares seeds (bertcls.seeds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertcls import BertclsError
from bertcls.collapse import collapse_reason
from bertcls.tasks import get_task
from bertcls.train import train

from .test_train import tiny_cfg

SINGLE, MULTI = get_task("single_label"), get_task("multi_label")


def test_collapse_is_one_answer_for_varied_labels_or_a_loss_stuck_at_ln_k():
    probs = np.array([[0.6, 0.4], [0.7, 0.3], [0.55, 0.45]])
    moving = [[10, 0.69], [20, 0.5]]
    assert "every validation prediction is no" in collapse_reason(SINGLE, probs, np.array([0, 1, 0]), None,
                                                                  ["no", "yes"], moving)  # fmt: skip
    assert collapse_reason(SINGLE, probs, np.array([0, 0, 0]), None, ["no", "yes"], moving) is None  # labels agree
    varied = np.array([[0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    stuck = [[10, 0.6931], [20, 0.6925], [30, 0.6940]]
    assert "never left 0.6931 (ln 2" in collapse_reason(SINGLE, varied, np.array([0, 1, 0]), None, ["a", "b"], stuck)
    assert collapse_reason(SINGLE, varied, np.array([0, 1, 0]), None, ["a", "b"], moving) is None
    gold = np.array([[1, 0], [0, 1], [1, 1]])
    same = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    reason = collapse_reason(MULTI, same, gold, [0.5, 0.5], ["x", "y"], moving)
    assert "every validation prediction is {x}" in reason


@pytest.fixture(scope="module")
def collapsed_run(tiny_bert, tiny_data, tmp_path_factory):
    """A head that cannot learn (zeros, a negligible rate): every seed collapses the same way."""
    out = tmp_path_factory.mktemp("collapse") / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "model.head_init=zeros", "train.lr=1e-12", "train.collapse_retries=1",
                   "model.freeze_backbone=true", "train.head_solver=adamw", "train.epochs=1")  # fmt: skip
    return out, train(cfg)


def test_a_collapsed_seed_is_retried_once_then_reported(collapsed_run):
    out, result = collapsed_run
    c = result["collapse"]
    assert [a["seed"] for a in c["collapsed"]] == [42] and c["seed"] == 43
    assert "every validation prediction is negative" in c["collapsed"][0]["reason"]
    assert c["warning"]["seed"] == 43  # no retries left: said, not retried
    assert json.loads((out / "metrics.json").read_text())["collapse"] == c
    log = (out / "train.log").read_text()
    assert "seed 42 collapsed at step" in log and "this run looks collapsed" in log


def test_seeds_are_trained_and_compared(tiny_bert, tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "s", "train.seeds=[3,4]", "model.freeze_backbone=true")
    summary = train(cfg)
    assert [r["seed"] for r in summary["seeds"]] == [3, 4]
    for seed in (3, 4):
        assert (tmp_path / "s" / f"seed-{seed}" / "best").is_dir()
    accs = [r["test"]["accuracy"] for r in summary["seeds"]]
    assert summary["test_mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert summary["test_std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    (comparison,) = summary["comparison"]
    assert comparison["accuracy_difference"] == pytest.approx(accs[1] - accs[0])
    assert comparison["ci_low"] <= comparison["accuracy_difference"] <= comparison["ci_high"]
    assert json.loads((tmp_path / "s" / "seeds.json").read_text()) == summary
    assert (tmp_path / "s" / "seed_comparison" / "metrics.json").is_file()
    with pytest.raises(BertclsError, match="already holds a seed summary"):
        train(cfg)
    with pytest.raises(BertclsError, match="must not repeat a seed"):
        tiny_cfg(tiny_bert, tiny_data, tmp_path / "t", "train.seeds=[1,1]")
