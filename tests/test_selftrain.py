"""Self-training on data.unlabeled (bertcls.selftrain): rounds of pseudo-labels, each measured and recorded."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from bertcls.config import load_config
from bertcls.errors import BertclsError
from bertcls.selftrain import Pseudo, choose, read_unlabeled, selftrain

from .conftest import make_rows, write_csv
from .test_train import tiny_cfg


def test_fraction_takes_the_most_probable_per_class_in_the_labelled_proportions():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8], [0.4, 0.6]])
    cfg = load_config(None, ["selftrain.fraction=0.25"])
    chosen = choose(probs, np.array([0.5, 0.5]), 1, cfg)  # 2 of 8 rows: one per class, the most probable
    assert chosen.tolist() == [0, -1, -1, -1, -1, 1, -1, -1]
    chosen = choose(probs, np.array([0.5, 0.5]), 2, cfg)  # round 2: 4 rows
    assert chosen.tolist() == [0, 0, -1, -1, -1, 1, 1, -1]
    chosen = choose(probs, np.array([0.75, 0.25]), 2, cfg)  # 3 of class 0, 1 of class 1
    assert chosen.tolist() == [0, 0, 0, -1, -1, 1, -1, -1]
    thresholded = choose(
        probs, np.array([0.5, 0.5]), 1, load_config(None, ["selftrain.select=threshold", "selftrain.threshold=0.75"])
    )
    assert thresholded.tolist() == [0, 0, -1, -1, -1, 1, 1, -1]


def test_unlabeled_text_file_and_table(tmp_path):
    txt = tmp_path / "u.txt"
    txt.write_text("a good film\n\n  \nawful\n")
    split, gold = read_unlabeled(load_config(None, [f"data.unlabeled={txt}"]))
    assert list(split.texts) == ["a good film", "awful"] and gold is None
    table = write_csv(tmp_path / "u.csv", make_rows(5, 3))
    split, gold = read_unlabeled(load_config(None, [f"data.unlabeled={table}"]))
    assert len(split) == 5 and len(gold) == 5
    with pytest.raises(BertclsError, match="data.unlabeled"):
        read_unlabeled(load_config(None, []))


def rounds_cfg(tiny_bert, tiny_data, tmp_path, *extra: str):
    """16 labelled rows (8 a class), 40 unlabelled ones (with labels, so pseudo-label accuracy is reported), into
    ``tmp_path/st``."""
    labeled = write_csv(tmp_path / "labeled.csv", make_rows(16, 7))
    unlabeled = write_csv(tmp_path / "unlabeled.csv", make_rows(40, 8))
    return tiny_cfg(
        tiny_bert, {**tiny_data, "train": labeled}, tmp_path / "st", "data.validation=null",
        f"data.unlabeled={unlabeled}", *extra,
    )  # fmt: skip


def test_rounds_add_pseudo_labelled_rows_and_record_each_round(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "st"
    cfg = rounds_cfg(
        tiny_bert, tiny_data, tmp_path, "model.freeze_backbone=true", "selftrain.rounds=2", "selftrain.fraction=0.25",
        "data.min_validation_rows=100",
    )  # fmt: skip
    summary = selftrain(cfg)
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["added_total"] == 0
    # round R adds R x 0.25 x 40 rows at most, half per class (the labelled rows are 8 and 8)
    for r, most in ((1, 10), (2, 20)):
        assert 0 < rounds[r]["added_total"] <= most and all(v <= most // 2 for v in rounds[r]["added"].values())
        assert 0.0 <= rounds[r]["pseudo_label_accuracy"] <= 1.0  # the unlabelled file had labels: reported
        log = (out / f"round-{r}" / "train.log").read_text()
        assert f"train {16 + rounds[r]['added_total']}," in log  # the round trained on them
    assert all("accuracy" in r["test"] for r in rounds)
    written = json.loads((out / "metrics.json").read_text())
    assert written["rounds"] == json.loads(json.dumps(rounds)) and (out / "selftrain.png").stat().st_size > 0
    assert summary["model"] == str(out / "round-2" / "best")
    with pytest.raises(BertclsError, match="already holds results"):
        selftrain(cfg)


@pytest.mark.auto_recipe
def test_auto_recipe_is_chosen_once_by_the_labelled_rows(tiny_bert, tiny_data, tmp_path, monkeypatch):
    """Pseudo-labels are not a user's examples: with 8 labelled rows a class ``auto`` picks contrastive tuning, and
    a round with 28 rows a class (labelled + pseudo) keeps it instead of counting them toward full fine-tuning; the
    contrastive rounds score the unlabelled texts with their own tuned model, not the untuned body's stored features."""
    from bertcls import recipes

    monkeypatch.setattr(recipes, "FINETUNE_FROM", 20)
    out = tmp_path / "st"
    cfg = rounds_cfg(
        tiny_bert, tiny_data, tmp_path, "train.recipe=auto", "selftrain.rounds=1", "selftrain.fraction=1.0",
        "train.contrastive_steps=2", "train.contrastive_max_steps=2",
    )  # fmt: skip
    rounds = selftrain(cfg)["rounds"]
    labelled = {"negative": 0, "positive": 0}
    for row in make_rows(16, 7):
        labelled[row["label"]] += 1
    assert min(labelled.values()) < 20 <= min(labelled[c] + n for c, n in rounds[1]["added"].items())
    for r in (0, 1):
        log = (out / f"round-{r}" / "train.log").read_text()
        assert "contrastive tuning: 2 steps" in log and "chose finetune" not in log, r
        # train.contrastive_centroids=auto is decided by round 0's labelled rows, then kept
        assert ("train.contrastive_centroids=auto chose" in log) == (r == 0), r
        metrics = json.loads((out / f"round-{r}" / "metrics.json").read_text())
        auto = metrics.get("contrastive_centroids_auto")
        # metrics.json keeps the counts auto chose by, beside the share it chose (round 1 is handed the share)
        assert (auto is not None) == (r == 0), r
        if auto:
            assert set(auto) == {"centroids", "texts", "p", "threshold_p"}
            assert metrics["contrastive_centroids"] == (1.0 if auto["p"] < auto["threshold_p"] else 0.0)


def test_later_rounds_train_the_recipe_selftrain_recipe_names(tiny_bert, tiny_data, tmp_path):
    """``selftrain.recipe=finetune``: round 0 keeps the frozen head on the stored features, later rounds fine-tune
    the whole model on the labelled and pseudo-labelled rows, and their pseudo-labels come from the round's own
    model, not from the untuned body's stored features."""
    out = tmp_path / "st"
    cfg = rounds_cfg(
        tiny_bert, tiny_data, tmp_path, "train.recipe=frozen", "selftrain.rounds=2", "selftrain.fraction=0.5",
        "selftrain.recipe=finetune",
    )  # fmt: skip
    rounds = selftrain(cfg)["rounds"]
    assert [r["recipe"] for r in rounds] == ["frozen", "finetune", "finetune"] and rounds[2]["added_total"] > 0
    assert "head only" in (out / "round-0" / "train.log").read_text()
    for r in (1, 2):
        assert "full fine-tuning" in (out / f"round-{r}" / "train.log").read_text(), r
    # which rounds' models may score the unlabelled texts from the untuned body's stored features
    recipe = lambda name: replace(cfg, train=replace(cfg.train, recipe=name))  # noqa: E731
    assert Pseudo.cached(recipe("frozen")) and not Pseudo.cached(recipe("finetune"))
    assert not Pseudo.cached(recipe("contrastive"))
    cfg = rounds_cfg(
        tiny_bert, tiny_data, tmp_path, "train.recipe=frozen", "selftrain.rounds=1", "output.overwrite=true"
    )
    assert [r["recipe"] for r in selftrain(cfg)["rounds"]] == ["frozen", "frozen"]  # the default: same
    (tmp_path / "bad").mkdir()
    with pytest.raises(BertclsError, match="selftrain.recipe='nonsense' is not a recipe"):
        selftrain(rounds_cfg(tiny_bert, tiny_data, tmp_path / "bad", "selftrain.recipe=nonsense"))


def test_later_rounds_may_start_from_the_previous_rounds_model(tiny_bert, tiny_data, tmp_path):
    """``selftrain.start=previous``: round 1 fine-tunes round 0's best model, its mean-pooled label-name head as
    fitted (the run's own default head options, [CLS] pooling and a Xavier head, would be a HeadChanged error)."""
    out = tmp_path / "st"
    cfg = rounds_cfg(
        tiny_bert, tiny_data, tmp_path, "train.recipe=frozen", "selftrain.rounds=1", "selftrain.fraction=0.5",
        "selftrain.recipe=finetune", "selftrain.start=previous",
    )  # fmt: skip
    rounds = selftrain(cfg)["rounds"]
    assert [r["recipe"] for r in rounds] == ["frozen", "finetune"] and rounds[1]["added_total"] > 0
    saved = yaml.safe_load((out / "round-1" / "config.yaml").read_text())["model"]
    assert saved["name_or_path"] == str(out / "round-0" / "best")
    assert (saved["pooling"], saved["head_init"], saved["freeze_backbone"]) == ("mean", "label_embeddings", False)
    assert "full fine-tuning" in (out / "round-1" / "train.log").read_text()
    with pytest.raises(BertclsError, match="selftrain.start: 'nowhere' is not one of fresh, previous"):
        load_config(None, ["selftrain.start=nowhere"])
