"""Few labels: the label_embeddings head (a zero-shot classifier and a prior), contrastive tuning, train.recipe."""

from __future__ import annotations

import json

import pytest
import torch

from bertcls import BertForTextClassification
from bertcls.config import load_config
from bertcls.contrastive import batches, blend_centroids, centroid_evidence, step_count, supcon_loss
from bertcls.errors import BertclsError
from bertcls.init import InitContext, label_texts, parse_init
from bertcls.probe import fit_linear
from bertcls.recipes import CONTRASTIVE_FROM, FINETUNE_FROM, choose, resolve

from .test_train import tiny_cfg

pytestmark = pytest.mark.auto_recipe  # these tests are about what train.recipe=auto picks

LABELS = ["negative", "positive"]


def test_label_embeddings_rows_are_the_normalized_pooled_label_embeddings(tiny_bert):
    model = BertForTextClassification.from_pretrained(
        tiny_bert, labels=LABELS, pooling="mean", head_init={"name": "label_embeddings", "scale": 3.0}
    )
    expected = torch.nn.functional.normalize(model.embed(LABELS), dim=1) * 3.0
    torch.testing.assert_close(model.head.layers[-1].weight, expected)
    assert model.head.layers[-1].weight.norm(dim=1).tolist() == pytest.approx([3.0, 3.0])


def test_label_embeddings_zero_shot_predicts_the_label_whose_text_is_nearest(tiny_bert):
    model = BertForTextClassification.from_pretrained(
        tiny_bert, labels=LABELS, pooling="mean", head_init="label_embeddings", label_descriptions="a {} film"
    )
    texts = ["the film was good", "a boring movie", "dull and flat", "great fun", "a negative film", "a positive film"]
    label_rows = torch.nn.functional.normalize(model.embed(["a negative film", "a positive film"]), dim=1)
    nearest = (torch.nn.functional.normalize(model.embed(texts), dim=1) @ label_rows.T).argmax(1)
    predicted = [LABELS.index(p["label"]) for p in model.predict(texts)]
    assert predicted == nearest.tolist()
    assert predicted[-2:] == [0, 1]  # a label's own text is nearest to itself


def test_label_texts_from_a_template_or_a_map_and_bad_ones_are_refused():
    assert label_texts(LABELS, None) == LABELS
    assert label_texts(LABELS, "a {} review") == ["a negative review", "a positive review"]
    assert label_texts(LABELS, {"positive": "great"}) == ["negative", "great"]
    with pytest.raises(BertclsError, match="no \\{\\}"):
        label_texts(LABELS, "a review")
    with pytest.raises(BertclsError, match="unknown label"):
        label_texts(LABELS, {"neutral": "meh"})
    # a bad template or type is refused when the config is read, before a run chooses or prints anything
    with pytest.raises(BertclsError, match="no \\{\\}"):
        load_config(None, ["data.label_descriptions=a review"])
    with pytest.raises(BertclsError, match="a template with"):
        load_config(None, ["data.label_descriptions=[1, 2]"])


def test_label_embeddings_is_refused_where_it_cannot_work(tiny_bert):
    assert parse_init("label_embeddings") == ("label_embeddings", {})  # context is passed, never a spec parameter
    with pytest.raises(BertclsError, match="no parameter context"):
        parse_init({"name": "label_embeddings", "context": 1})
    with pytest.raises(BertclsError, match="one row per label"):
        BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, bias_init="label_embeddings")
    from bertcls.init import init_tensor

    with pytest.raises(BertclsError, match="needs the encoder"):
        init_tensor(torch.empty(2, 4), "label_embeddings", context=InitContext(LABELS))


def test_lbfgs_prior_penalty_pulls_toward_the_prior_not_zero():
    torch.manual_seed(0)
    x, y = torch.randn(20, 6), torch.arange(20) % 2
    prior = torch.randn(2, 6) * 5
    linear = torch.nn.Linear(6, 2)
    fit_linear(linear, x, y, torch.nn.functional.cross_entropy, c=1e-6, prior=prior)
    torch.testing.assert_close(linear.weight, prior, atol=1e-3, rtol=0)  # a huge penalty keeps the prior
    plain = torch.nn.Linear(6, 2)
    fit_linear(plain, x, y, torch.nn.functional.cross_entropy, c=1e-6)
    assert plain.weight.abs().max() < 1e-3


def test_supcon_loss_is_lower_when_same_labels_are_together():
    y = torch.tensor([0, 0, 1, 1])
    together = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    apart = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert supcon_loss(together, y, 0.1) < supcon_loss(apart, y, 0.1)


def test_contrastive_batches_hold_every_class_twice():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 2)
    for idx in batches(y, 8, 5, torch.Generator().manual_seed(0)):
        assert len(idx) == 8 and len(set(idx.tolist())) == 8
        assert all((y[idx] == c).sum() >= 2 for c in (0, 1, 2))


def test_contrastive_steps_grow_with_the_rows_between_their_bounds():
    assert step_count(16, 40, 32, 160) == 40  # 8 a class: a batch holds every row; 40 steps at least
    assert step_count(32, 40, 32, 160) == 40 and step_count(33, 40, 32, 160) == 42
    assert step_count(128, 40, 32, 160) == 160  # 64 a class: the same 40 passes over each row
    assert step_count(5000, 40, 32, 160) == 160  # a self-training round's pseudo-labels: capped
    assert step_count(5000, 40, 32, 20) == 20


def test_the_head_turns_toward_the_class_centroids_by_its_share():
    unit = torch.nn.functional.normalize
    weight = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    features = torch.tensor([[0.0, 5.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])  # class 2 has no rows
    torch.testing.assert_close(blend_centroids(weight, features, labels, 0.0), weight)
    full = blend_centroids(weight, features, labels, 1.0)
    centroid0 = unit(unit(features[:2], dim=1).mean(0), dim=0)  # rows count alike, whatever their norm
    torch.testing.assert_close(full[0], 3.0 * centroid0)
    torch.testing.assert_close(full[1], torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(full[2], weight[2])  # no rows: the label text's row stays
    half = blend_centroids(weight, features, labels, 0.5)
    torch.testing.assert_close(half[1], 2.0 * unit(torch.tensor([1.0, 1.0, 0.0]), dim=0))
    assert half.norm(dim=1).tolist() == pytest.approx([3.0, 2.0, 1.0])


def test_centroid_evidence_counts_the_rows_each_head_alone_gets_right():
    # Rows of class 0 lie around x, of class 1 around y; the label texts point at z +- a little x / y.
    x_rows, y_rows = [[1.0, 0.1, 0.0], [1.0, -0.1, 0.0], [1.0, 0.0, 0.1]] * 4, [[0.1, 1.0, 0.0], [0.0, 1.0, 0.1]] * 6
    rows = torch.tensor(x_rows + y_rows)
    labels = torch.tensor([0] * 12 + [1] * 12)
    useless = torch.tensor([[-0.01, 0.01, 1.0], [0.01, -0.01, 1.0]])  # they favour the wrong class on every row
    e = centroid_evidence(rows, useless, labels)
    assert e == {"centroids": 24, "texts": 0, "p": pytest.approx(0.5**24)}
    meaningful = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert centroid_evidence(rows, meaningful, labels) == {"centroids": 0, "texts": 0, "p": 1.0}
    # a class of one row has no other rows to make its centroid: a miss for the centroids
    lone = centroid_evidence(rows[:13], meaningful, labels[:13])
    assert lone["texts"] == 1 and lone["centroids"] == 0 and lone["p"] == 1.0


@pytest.mark.parametrize("bad", ["sometimes", "1.5", "-0.1", "true"])
def test_contrastive_centroids_takes_a_share_or_auto(bad):
    from bertcls.config import load_config

    assert load_config(overrides=["train.contrastive_centroids=0.25"]).train.contrastive_centroids == 0.25
    assert load_config().train.contrastive_centroids == "auto"
    with pytest.raises(BertclsError, match="train.contrastive_centroids must be a number in"):
        load_config(overrides=[f"train.contrastive_centroids={bad}"])


def test_auto_recipe_chooses_by_examples_per_class(tiny_bert, tiny_data, tmp_path):
    assert choose(CONTRASTIVE_FROM - 1)[0] == "frozen"
    assert choose(8)[0] == "contrastive" and choose(FINETUNE_FROM - 1)[0] == "contrastive"
    assert choose(FINETUNE_FROM)[0] == "finetune"
    assert choose(8, processes=2)[0] == "frozen"  # contrastive tuning runs in one process
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path, "train.recipe=auto")
    small = resolve(cfg, ["negative"] * 10 + ["positive"] * 12, log=lambda _: None)
    assert small.train.recipe == "contrastive" and small.model.freeze_backbone and small.model.pooling == "mean"
    assert small.model.head_init == "label_embeddings" and small.train.head_solver == "lbfgs"
    large = resolve(cfg, ["negative", "positive"] * FINETUNE_FROM, log=lambda _: None)
    assert large.train.recipe == "finetune" and large == cfg.__class__(**{**vars(cfg), "train": large.train})


def test_frozen_recipe_logs_zero_shot_and_fits_toward_the_prior(tiny_bert, tiny_data, tmp_path):
    from bertcls.train import train

    out = tmp_path / "run"
    result = train(tiny_cfg(tiny_bert, tiny_data, out, "train.recipe=frozen"))
    assert result["recipe"] == "frozen"
    assert set(result["zero_shot"]) == {"validation", "test"}
    # the default label texts are the names in a sentence that names no domain; null: the bare names
    said = "zero-shot (head from the label texts 'the text is negative', 'the text is positive', before training)"
    assert said in (out / "train.log").read_text()
    bare = tmp_path / "bare"
    train(tiny_cfg(tiny_bert, tiny_data, bare, "train.recipe=frozen", "data.label_descriptions=null"))
    assert "head from the label texts 'negative', 'positive', before" in (bare / "train.log").read_text()


HEAD_LINES = {
    "0.5": "head: each class's row 50% from the centroid of its tuned training rows, 50% from its label text",
    "1": "head: each class's row from the centroid of its tuned training rows\n",
}


@pytest.mark.parametrize("share", sorted(HEAD_LINES))
def test_contrastive_recipe_tunes_the_body_and_its_checkpoint_predicts(tiny_bert, tiny_data, tmp_path, share):
    from bertcls.train import train

    out = tmp_path / "run"
    steps = ("train.contrastive_steps=1", "train.contrastive_max_steps=3")  # 1 for each 32 rows, at most 3
    centroids = f"train.contrastive_centroids={share}"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.recipe=contrastive", centroids, *steps)
    result = train(cfg)
    log = (out / "train.log").read_text()
    assert "contrastive tuning: 3 steps" in log
    assert HEAD_LINES[share] in log
    assert result["contrastive_centroids"] == float(share) and "contrastive_centroids_auto" not in result
    best = BertForTextClassification.from_pretrained(out / "best")
    base = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    moved = [not torch.equal(a, b) for a, b in zip(best.backbone.parameters(), base.backbone.parameters())]
    assert any(moved)  # the saved body is the tuned one
    assert "contrastive: backbone tuned" in (out / "best" / "README.md").read_text()  # not "frozen": it was tuned
    probs = best.predict_proba(["a good film", "a dull film"])
    assert probs.shape == (2, 2)
    # the saved model scores the test split as the run did
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == result["test"]["accuracy"]


def test_a_fine_tuned_run_from_the_label_head_reports_its_zero_shot_scores(tiny_bert, tiny_data, tmp_path):
    from bertcls.train import train

    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "model.head_init=label_embeddings", "train.max_steps=2")
    result = train(cfg)
    assert result["recipe"] == "finetune" and result["zero_shot"]["test"]["num_examples"] == 40
