"""Token attributions (bertcls.explain): completeness of integrated gradients, words merged from subwords, pairs,
multi-label, windows, and the command line."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("captum")

from bertcls import BertForTextClassification  # noqa: E402
from bertcls.errors import BertclsError  # noqa: E402

from .conftest import assert_one_line_error, run_cli  # noqa: E402

# Integrated gradients with 64 steps (Gauss-Legendre, Captum's default rule) on the tiny model with a sharpened
# head (logit differences of order 1): the attributions' sum is within this share of the logit difference. A wrong
# baseline, a dropped token or a sum over the wrong axis misses it by far more.
COMPLETENESS_TOLERANCE = 0.02


def close(total: float, difference: float) -> bool:
    return abs(total - difference) <= COMPLETENESS_TOLERANCE * abs(difference) + 1e-6


@pytest.fixture()
def sharp_model(tiny_model):
    """The tiny model with its head scaled up: a random head's logits barely move, which would make any sum pass."""
    with torch.no_grad():
        for p in tiny_model.head.parameters():
            p.mul_(300.0)
    return tiny_model


def test_ig_attributions_sum_to_the_logit_difference(sharp_model):
    texts = ["the film was brilliant and moving", "boring plot, very dull ending", "a"]
    out = sharp_model.explain(texts, method="ig", n_steps=64)
    for r in out:
        assert abs(r["logit_difference"]) > 0.2  # a test with something to sum
        assert close(sum(w["score"] for w in r["words"]), r["logit_difference"])
        assert abs(r["delta"]) <= COMPLETENESS_TOLERANCE * abs(r["logit_difference"])
    # The difference the scores add up to is the model's own: logits at the text and at the all-[PAD] baseline.
    enc = sharp_model.tokenizer(texts[0], return_tensors="pt")
    base = enc["input_ids"].clone()
    base[0, 1:-1] = sharp_model.tokenizer.pad_token_id
    target = sharp_model.labels.index(out[0]["label"])
    sharp_model.eval()  # no dropout
    with torch.no_grad():
        difference = sharp_model(enc["input_ids"]).logits[0, target] - sharp_model(base).logits[0, target]
    assert close(sum(w["score"] for w in out[0]["words"]), float(difference))
    # The class explained is the predicted one.
    predicted = [p["label"] for p in sharp_model.predict(texts)]
    assert [r["label"] for r in out] == predicted


def test_words_are_the_original_words_with_subwords_merged(tiny_model):
    text = "Xylophone plot!"  # "xylophone" is not in the tiny vocab: many subwords, one word
    (r,) = tiny_model.explain(text, method="grad_x_input")
    assert [w["word"] for w in r["words"]] == ["Xylophone", "plot", "!"]
    assert all(text[w["start"] : w["end"]] == w["word"] for w in r["words"])
    assert "delta" not in r


def test_target_and_batches_give_the_same_scores(tiny_model):
    texts = ["good film", "the plot was tedious and flat and weak", "lovely"]
    one = [tiny_model.explain(t, target="negative", n_steps=8)[0] for t in texts]
    batched = tiny_model.explain(texts, target="negative", n_steps=8, batch_size=2)
    for a, b in zip(one, batched):
        assert a["label"] == b["label"] == "negative"
        assert [w["score"] for w in a["words"]] == pytest.approx([w["score"] for w in b["words"]], abs=1e-4)


def test_pairs_get_words_of_both_texts(sharp_model):
    (r,) = sharp_model.explain(["great film"], text_pairs=["dull plot"], n_steps=32)
    assert [w["word"] for w in r["words"]] == ["great", "film"]
    assert [w["word"] for w in r["pair_words"]] == ["dull", "plot"]
    assert close(sum(w["score"] for w in r["words"] + r["pair_words"]), r["logit_difference"])


def test_multi_label_explains_the_most_probable_label(tiny_bert):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["a", "b", "c"], task="multi_label", seed=0)
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(300.0)
    (r,) = model.explain("the story was fun", n_steps=32)
    probs = model.predict_proba(["the story was fun"])[0]
    assert r["label"] == model.labels[int(probs.argmax())]
    assert close(sum(w["score"] for w in r["words"]), r["logit_difference"])


def test_windows_are_attributed_and_merged(tiny_bert):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"], seed=0)
    model.set_reading(max_length=8, window_stride=3)
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(300.0)
    text = "the film was good and the plot was dull and the ending quite moving"
    (r,) = model.explain(text, n_steps=32)
    assert [w["word"] for w in r["words"]] == text.split()  # every word, from whichever windows held it
    assert close(sum(w["score"] for w in r["words"]), r["logit_difference"])


def test_frozen_backbone_still_gets_attributions(tiny_bert):
    model = BertForTextClassification.from_pretrained(
        tiny_bert, labels=["negative", "positive"], seed=0, freeze_backbone=True
    )
    (r,) = model.explain("good film", n_steps=16)
    assert any(w["score"] != 0 for w in r["words"])
    assert model.backbone_fully_frozen


def test_bad_requests_fail_in_one_line(tiny_model):
    with pytest.raises(BertclsError, match="unknown attribution method"):
        tiny_model.explain("good", method="shap")
    with pytest.raises(BertclsError, match="unknown target label"):
        tiny_model.explain("good", target="neutral")


def test_predict_explain_cli(tiny_model, tmp_path):
    ckpt = tiny_model.save_pretrained(tmp_path / "ckpt")
    src = tmp_path / "in.csv"
    src.write_text("text\ngood film\nthe plot was dull\n")
    out = tmp_path / "out.jsonl"
    proc = run_cli("bertcls.predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out),
                   "--explain", "--explain-method", "grad_x_input")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["word"] for w in rows[1]["explanation"]["words"]] == ["the", "plot", "was", "dull"]
    assert rows[1]["explanation"]["label"] == rows[1]["predicted"]
    bad = run_cli("bertcls.predict", "--checkpoint", str(ckpt), "--input", str(src), "--output",
                  str(tmp_path / "o.csv"), "--explain")  # fmt: skip
    assert_one_line_error(bad, "--explain")
    # Texts after --explain are texts, not its value; the words follow each table.
    printed = run_cli("bertcls.predict", "--checkpoint", str(ckpt), "--explain", "good film")
    assert printed.returncode == 0, printed.stderr
    assert "words for " in printed.stdout and "good(" in printed.stdout
