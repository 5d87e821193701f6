"""Small training files (bertcls.small_data): no validation cut too small to choose anything, enough steps, no
temperature fitted on a handful of rows, the L-BFGS penalty chosen by cross-validation, a line when near chance."""

from __future__ import annotations

import json

from bertcls.config import load_config
from bertcls.small_data import calibration_skip_reason, near_chance_line, no_cut_reason, scaled_steps
from bertcls.train import train

from .conftest import make_rows, write_csv
from .test_train import tiny_cfg


def test_planning_of_16_rows_and_of_2000_rows():
    cfg = load_config(None, [])
    # 16 rows: a 0.1 cut would be 2 rows; 2,000 rows: a 200-row cut, as before
    assert "would be 2" in no_cut_reason(cfg, 16)
    assert no_cut_reason(cfg, 2000) is None
    steps, why = scaled_steps(cfg, 2, 1)
    assert steps == cfg.train.min_steps == 50 and "instead of 2" in why
    assert scaled_steps(cfg, 94, 63) == (94, None)
    assert scaled_steps(load_config(None, ["train.max_steps=3"]), 3, 1) == (3, None)  # the user's count stands
    assert "skipped" in calibration_skip_reason(cfg, 2)
    assert calibration_skip_reason(cfg, 200) is None
    # a run that asks for early stopping still gets its (small) cut
    assert no_cut_reason(load_config(None, ["train.early_stopping_patience=2"]), 16) is None


def test_near_chance_line():
    cfg = load_config(None, [])
    line = near_chance_line(cfg, 0.4966, 0.5, "test", 8)
    assert line.startswith("warning: near chance: test accuracy 0.4966") and "data.unlabeled" in line
    assert near_chance_line(cfg, 0.62, 0.5, "test", 8) is None
    # a contrastive run's head starts from the label names: the line says how to tell it what they mean, or not to
    contrastive = near_chance_line(load_config(None, ["train.recipe=contrastive"]), 0.5, 0.5, "test", 8)
    assert "data.label_descriptions" in contrastive and "train.contrastive_centroids=1" in contrastive
    centroids = load_config(None, ["train.recipe=contrastive", "train.contrastive_centroids=1"])
    assert "train.contrastive_centroids" not in near_chance_line(centroids, 0.5, 0.5, "test", 8)
    assert near_chance_line(load_config(None, ["eval.near_chance_margin=0"]), 0.5, 0.5, "test", 8) is None


def small_file(tmp_path, n=16):
    return write_csv(tmp_path / "small.csv", make_rows(n, 7))


def small_cfg(tiny_bert, tiny_data, tmp_path, *extra):
    """A 16-row training file and a test split, no validation given, the small-file rules at their defaults."""
    return tiny_cfg(
        tiny_bert, {**tiny_data, "train": small_file(tmp_path)}, tmp_path / "run",
        "data.validation=null", "train.min_steps=50", "data.min_validation_rows=100", "eval.min_calibration_rows=100",
        *extra,
    )  # fmt: skip


def test_small_frozen_file_chooses_the_penalty_by_cross_validation(tiny_bert, tiny_data, tmp_path):
    from bertcls.probe import C_GRID

    result = train(small_cfg(tiny_bert, tiny_data, tmp_path, "model.freeze_backbone=true"))
    cv = result["small_data"]["cv"]
    assert cv["folds"] == 5 and cv["C"] in C_GRID and set(cv["scores"]) == {f"{c:g}" for c in C_GRID}
    assert cv["C"] == float(min(cv["scores"], key=cv["scores"].get))
    assert [h["C"] for h in result["history"]] == [cv["C"]]  # one fit, at the chosen C, on all 16 rows
    assert "validation" not in result["history"][0]
    assert result["calibration"]["method"] == "none"
    log = (tmp_path / "run" / "train.log").read_text()
    assert "train 16, validation 0" in log
    assert "small file: validation: none cut from 16 training rows" in log
    assert "chosen by 5-fold cross-validation" in log and "calibration: skipped" in log
    card = (tmp_path / "run" / "best" / "README.md").read_text()  # the card says no validation split was cut
    assert "none (every training row trained)" in card and "held out" not in card
    assert "no validation split to choose on" in card and "by validation" not in card


def test_small_file_gets_enough_steps_and_its_collapse_check(tiny_bert, tiny_data, tmp_path):
    result = train(small_cfg(tiny_bert, tiny_data, tmp_path, "train.epochs=1"))
    assert result["train_loss_curve"][-1][0] == 50  # 50 steps, not the 2 of one epoch at batch 8
    log = (tmp_path / "run" / "train.log").read_text()
    assert "small file: steps: 50 instead of 2" in log
    assert "| 50 steps x 8 examples" in log
    assert "calibration: skipped" in log


def test_small_file_collapse_is_seen_on_the_training_rows(tiny_bert, tiny_data, tmp_path):
    # lr 0: the random head never moves, and a tiny random model gives most texts one answer; with no validation
    # split the guard looks at the training rows (if this head happens to separate them, nothing is claimed)
    result = train(small_cfg(tiny_bert, tiny_data, tmp_path, "train.lr=1e-12", "train.min_steps=2"))
    log = (tmp_path / "run" / "train.log").read_text()
    if "collapse" in result:
        assert "every training prediction is" in result["collapse"]["warning"]["reason"]
        assert "looks collapsed" in log


def test_near_chance_run_says_so_once(tiny_bert, tiny_data, tmp_path):
    cfg = small_cfg(tiny_bert, tiny_data, tmp_path, "model.freeze_backbone=true", "eval.near_chance_margin=0.99")
    result = train(cfg)
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("warning: near chance: test accuracy") == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["small_data"]["near_chance"]
    assert result["small_data"]["near_chance"].startswith("warning: near chance")
