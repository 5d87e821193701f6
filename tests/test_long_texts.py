"""Long texts: head / tail / head+tail truncation and sliding windows, in training, evaluation and predict."""

from __future__ import annotations

import json

import pytest
import torch

from bertcls import BertclsError, BertForTextClassification
from bertcls.data import encode, encode_windows, pad_batch
from bertcls.train import train

from .test_train import tiny_cfg

LETTERS = list("abcdefghijklmnop")  # one token each in the tiny vocabulary
LONG = " ".join(LETTERS)


def tokens(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


def test_truncation_keeps_the_chosen_end(tiny_model):
    tok = tiny_model.tokenizer
    keep = lambda how: tokens(tok, encode(tok, [LONG], None, 8, how)["input_ids"][0])  # noqa: E731
    assert keep("head") == ["[CLS]", *LETTERS[:6], "[SEP]"]
    assert keep("tail") == ["[CLS]", *LETTERS[-6:], "[SEP]"]
    # 6 tokens of room: a quarter (1) from the start, the rest (5) from the end
    assert keep("head+tail") == ["[CLS]", LETTERS[0], *LETTERS[-5:], "[SEP]"]
    short = encode(tok, ["a b"], None, 8, "tail")
    assert short == encode(tok, ["a b"], None, 8, "head")


def test_truncation_of_pairs_shares_the_budget_and_keeps_token_types(tiny_model):
    tok = tiny_model.tokenizer
    out = encode(tok, [LONG], ["x y"], 10, "tail")
    assert tokens(tok, out["input_ids"][0]) == ["[CLS]", *LETTERS[-5:], "[SEP]", "x", "y", "[SEP]"]
    assert out["token_type_ids"][0] == [0] * 7 + [1] * 3
    assert len(encode(tok, [LONG], [LONG], 10, "head+tail")["input_ids"][0]) == 10


def test_windows_cover_the_text_with_the_stride(tiny_model):
    tok = tiny_model.tokenizer
    enc, doc_ids = encode_windows(tok, ["a b", LONG], None, 8, stride=4)
    windows = [tokens(tok, ids)[1:-1] for ids in enc["input_ids"]]
    assert doc_ids == [0, 1, 1, 1, 1]
    assert windows == [["a", "b"], LETTERS[0:6], LETTERS[4:10], LETTERS[8:14], LETTERS[12:16]]
    with pytest.raises(BertclsError, match="window_stride"):
        encode_windows(tok, [LONG], None, 8, stride=7)


def test_windowed_prediction_averages_the_windows(tiny_model, tmp_path):
    model = tiny_model.eval()
    model.max_length, model.window_stride = 8, 4
    texts = [LONG, "great fun"]
    enc, doc_ids = encode_windows(model.tokenizer, texts, None, 8, 4)
    with torch.no_grad():
        per_window = [
            model(**pad_batch([{k: v[i] for k, v in enc.items()}], 0)).logits.softmax(-1)[0]
            for i in range(len(doc_ids))
        ]
    expected = torch.stack([torch.stack([p for p, d in zip(per_window, doc_ids) if d == t]).mean(0) for t in (0, 1)])
    probs = model.predict_proba(texts)
    assert torch.allclose(probs, expected, atol=1e-5)
    model.window_stride = 0
    # without windows the long text is its first window alone, which is not the mean
    assert torch.allclose(model.predict_proba(texts)[0], per_window[0], atol=1e-6)
    assert (per_window[0] - expected[0]).abs().max() > 1e-6
    # the checkpoint remembers how to read long texts
    model.truncation, model.window_stride = "tail", 4
    again = BertForTextClassification.from_pretrained(model.save_pretrained(tmp_path / "ckpt"))
    assert (again.truncation, again.window_stride) == ("tail", 4)
    assert torch.allclose(again.predict_proba(texts), expected, atol=1e-5)


def test_training_with_tail_truncation_and_windows(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    extra = ("data.max_length=8", "data.truncation=tail", "data.window_stride=3", "data.train_windows=true")
    result = train(tiny_cfg(tiny_bert, tiny_data, out, *extra, "train.max_steps=2"))
    assert result["history"][-1]["validation"]["num_examples"] == 40  # texts, not windows
    saved = json.loads((out / "best" / "bertcls_config.json").read_text())
    assert (saved["truncation"], saved["window_stride"]) == ("tail", 3)
