"""The token store and cache: chunked tokenization equals one-shot, the cache key, hits, and damaged entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertcls import token_store
from bertcls.data import TextClassificationDataset, encode, encode_windows, tokenize_texts
from bertcls.inference import pad_rows

TEXTS = ["good film", "a very good film and a great story with a moving ending", "bad", "dull plot and weak actor"]
PAIRS = ["great", "bad plot", "fun", "the ending"]


def as_lists(store):
    return [store.row(i)["input_ids"].tolist() for i in range(len(store))]


@pytest.mark.parametrize("stride", [0, 3])
def test_chunked_store_equals_one_shot_encoding(tiny_model, monkeypatch, tmp_path, stride):
    tok = tiny_model.tokenizer
    if stride:
        rows, doc_ids = encode_windows(tok, TEXTS, PAIRS, 10, stride)
    else:
        rows, doc_ids = encode(tok, TEXTS, PAIRS, 10, "head+tail"), None
    monkeypatch.setattr(token_store, "CHUNK_ROWS", 3)  # a chunk boundary inside the texts
    for cache in (None, tmp_path):
        store, hit = tokenize_texts(tok, TEXTS, PAIRS, 10, "head+tail", stride, cache)
        assert not hit
        assert as_lists(store) == rows["input_ids"]
        assert [store.row(i)["token_type_ids"].tolist() for i in range(len(store))] == rows["token_type_ids"]
        assert store.lengths.tolist() == [len(r) for r in rows["input_ids"]]
        assert (store.doc_ids.tolist() if stride else None) == doc_ids
        idx = [2, 0, 1]
        expected = pad_rows(rows, idx, pad_id=0)
        got = store.pad(idx, pad_id=0)
        assert got.keys() == expected.keys()
        for k in got:
            np.testing.assert_array_equal(got[k], expected[k])


def test_cache_hits_on_the_same_input_and_misses_on_any_change(tiny_model, tmp_path):
    tok = tiny_model.tokenizer
    first, hit = tokenize_texts(tok, TEXTS, None, 16, cache_dir=tmp_path)
    assert not hit and isinstance(first.ids, np.memmap)
    again, hit = tokenize_texts(tok, list(TEXTS), None, 16, cache_dir=tmp_path)
    assert hit and as_lists(again) == as_lists(first)
    changes = [
        dict(texts=[*TEXTS[:3], "dull plot and weak actors"]),  # one edited row
        dict(pairs=PAIRS),
        dict(max_length=8),
        dict(truncation="tail"),
        dict(window_stride=4),
    ]
    for change in changes:
        args = dict(texts=TEXTS, pairs=None, max_length=16, truncation="head", window_stride=0) | change
        _, hit = tokenize_texts(
            tok, args["texts"], args["pairs"], args["max_length"], args["truncation"], args["window_stride"], tmp_path
        )
        assert not hit, change
    assert len(list(tmp_path.iterdir())) == 1 + len(changes)


def test_key_follows_the_tokenizer_not_its_last_call(tiny_model, tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(tiny_bert)
    options = {"max_length": 16}
    before = token_store.token_key(fresh, TEXTS, None, options)
    fresh(TEXTS, truncation=True, max_length=5, padding="max_length")  # leaves truncation/padding state behind
    assert token_store.token_key(fresh, TEXTS, None, options) == before
    lower = AutoTokenizer.from_pretrained(tiny_bert, do_lower_case=False)
    assert token_store.token_key(lower, TEXTS, None, options) != before


def test_damaged_entry_is_rebuilt_not_trusted(tiny_model, tmp_path):
    tok = tiny_model.tokenizer
    good, _ = tokenize_texts(tok, TEXTS, None, 16, cache_dir=tmp_path)
    expected = as_lists(good)
    (entry,) = tmp_path.iterdir()
    ids = entry / "ids.bin"
    ids.write_bytes(ids.read_bytes()[:-4])  # a truncated file
    logged = []
    store, hit = tokenize_texts(tok, TEXTS, None, 16, cache_dir=tmp_path, log=logged.append)
    assert not hit and as_lists(store) == expected
    assert "unreadable" in logged[0] and "tokenizing again" in logged[0]
    (entry / "meta.json").write_text("{not json")
    store, hit = tokenize_texts(tok, TEXTS, None, 16, cache_dir=tmp_path, log=logged.append)
    assert not hit and as_lists(store) == expected


def test_dataset_keeps_tokens_labels_and_lengths_as_arrays(tiny_model, tmp_path):
    ds = TextClassificationDataset(TEXTS, [1, 0, 0, 1], tiny_model.tokenizer, 16, label_names=["0", "1"])
    assert isinstance(ds.lengths, np.ndarray) and isinstance(ds.label_ids, np.ndarray)
    assert isinstance(ds.tokens.ids, np.ndarray) and ds.tokens.ids.dtype == np.int32
    cached = TextClassificationDataset(TEXTS, [1, 0, 0, 1], tiny_model.tokenizer, 16, cache_dir=tmp_path)
    batch, again = ds.collate([ds[i] for i in range(4)]), cached.collate([cached[i] for i in range(4)])
    for k in batch:
        assert batch[k].equal(again[k]), k


def test_predictions_in_chunks_equal_one_chunk(tiny_model, monkeypatch):
    texts = [f"{t} {i}" for i in range(5) for t in TEXTS]
    whole = tiny_model.predict_proba(texts, batch_size=4)
    monkeypatch.setattr(token_store, "CHUNK_ROWS", 3)
    assert torch.allclose(tiny_model.predict_proba(texts, batch_size=4), whole)
    monkeypatch.setattr(tiny_model, "window_stride", 3)  # windows across chunk boundaries
    monkeypatch.setattr(tiny_model, "max_length", 8)
    monkeypatch.setattr(token_store, "CHUNK_ROWS", 10**6)
    windows = tiny_model.predict_proba(texts, batch_size=4)
    monkeypatch.setattr(token_store, "CHUNK_ROWS", 3)
    assert torch.allclose(tiny_model.predict_proba(texts, batch_size=4), windows)
