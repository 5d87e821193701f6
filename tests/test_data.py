"""Loading splits from every file type, label handling, tokenization once, padding, length grouping."""

from __future__ import annotations

import json

import pytest
import torch

from bertcls import BertclsError, LengthGroupedBatchSampler, TextClassificationDataset, load_split
from bertcls.data import build_labels, label_ids, split_validation
from bertcls.inference import length_sorted_batches

from .conftest import make_rows, write_csv

ROWS = make_rows(20, 0)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet", "csv.gz"])
def test_every_file_type_loads_the_same_rows(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt in ("csv", "tsv"):
        write_csv(path, ROWS, sep="\t" if fmt == "tsv" else ",")
    elif fmt == "csv.gz":
        import gzip

        plain = write_csv(tmp_path / "plain.csv", ROWS)
        path.write_bytes(gzip.compress(plain.read_bytes()))
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS))
    else:
        import pandas as pd

        pd.DataFrame(ROWS).to_parquet(path)
    split = load_split(str(path))
    assert split.texts == [r["text"] for r in ROWS]
    assert split.labels == [r["label"] for r in ROWS]


def test_configurable_columns_and_pairs(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"sentence": r["text"], "y": r["label"], "q": r["other"]} for r in ROWS])
    split = load_split(str(path), text_column="sentence", label_column="y", text_pair_column="q")
    assert split.text_pairs == [r["other"] for r in ROWS]


def test_packaged_rotten_tomatoes_ships_with_the_package():
    split = load_split("packaged:rotten_tomatoes/validation")
    assert len(split) == 1397
    assert set(split.labels) == {"negative", "positive"}


@pytest.mark.parametrize(
    ("content", "kwargs", "match"),
    [
        ("", {}, "is empty"),
        ("text,label\n", {}, "header but no rows"),
        ("txt,label\nhello,positive\n", {}, r"no column 'text' \(did you mean 'txt'\?\)"),
        ("text,labels\nhello,positive\n", {}, r"no column 'label' \(did you mean 'labels'\?\)"),
        ("text,label\nhello,\nbye,negative\n", {}, "no label"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, content, kwargs, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(BertclsError, match=match) as e:
        load_split(str(path), **kwargs)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(BertclsError, match="does not exist"):
        load_split(str(tmp_path / "nope.csv"))
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(BertclsError, match="unknown file type"):
        load_split(str(tmp_path / "data.xlsx"))
    with pytest.raises(BertclsError, match="unknown packaged data"):
        load_split("packaged:imdb/train")


def test_label_order_is_stable():
    assert build_labels(["pos", "neg", "pos", "mid"]) == ["mid", "neg", "pos"]
    assert build_labels([10, 2, 1, 2]) == ["1", "2", "10"]
    with pytest.raises(BertclsError, match="mix types"):
        build_labels([1, "a"])


def test_integer_labels_from_a_file(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"text": r["text"], "label": i % 3} for i, r in enumerate(ROWS)])
    split = load_split(str(path))
    assert build_labels(split.labels) == ["0", "1", "2"]
    assert label_ids(split.labels, ["0", "1", "2"])[:4] == [0, 1, 2, 0]


def test_unknown_label_names_it():
    with pytest.raises(BertclsError, match="'maybe'"):
        label_ids(["pos", "maybe"], ["neg", "pos"])


def test_label_error_of_a_text_column_stays_short():
    # data.label_column pointed at the text column by mistake: every sentence is a "label"
    sentences = [f"sentence number {i} of a review, long enough to be cut in an error message" for i in range(5000)]
    with pytest.raises(BertclsError) as err:
        label_ids(["another sentence that no training row had", *sentences[:3]], sentences[3:])
    message = str(err.value)
    assert len(message) < 600, message
    assert "and 4992 more" in message and "4997 distinct: is the label column a text column?" in message
    assert "'another sentence that no training row..." in message


def test_stratified_validation_split_is_seeded_and_disjoint():
    split = load_split("packaged:rotten_tomatoes/validation")
    train_a, val_a = split_validation(split, 0.2, seed=3)
    train_b, val_b = split_validation(split, 0.2, seed=3)
    assert val_a.texts == val_b.texts
    assert len(val_a) + len(train_a) == len(split)
    assert not set(val_a.texts) & set(train_a.texts)
    share = lambda s: s.labels.count("positive") / len(s)  # noqa: E731
    assert abs(share(val_a) - share(split)) < 0.01
    _, val_c = split_validation(split, 0.2, seed=4)
    assert val_c.texts != val_a.texts


def test_dataset_tokenizes_once_and_collate_pads_per_batch(tiny_model, monkeypatch):
    texts = ["good", "a very good film and a great story", "bad movie"]
    ds = TextClassificationDataset(texts, ["positive", "positive", "negative"], tiny_model.tokenizer, max_length=8)
    calls = []
    monkeypatch.setattr(type(tiny_model.tokenizer), "__call__", lambda *a, **k: calls.append(1))
    items = [ds[i] for i in range(3)] * 3
    assert not calls
    assert ds.label_names == ["negative", "positive"]
    assert [it["labels"] for it in items[:3]] == [1, 1, 0]
    assert max(ds.lengths) == 8  # truncated to max_length
    batch = ds.collate(items[:2])
    assert batch["input_ids"].shape == (2, max(ds.lengths[:2]))
    assert batch["attention_mask"].sum().item() == ds.lengths[0] + ds.lengths[1]
    assert batch["input_ids"][0, ds.lengths[0] :].eq(tiny_model.tokenizer.pad_token_id).all()
    short = ds.collate([items[0], items[2]])
    assert short["input_ids"].shape[1] == max(ds.lengths[0], ds.lengths[2])  # padding per batch, not max_length


def test_dataset_rejects_bad_input(tiny_model):
    with pytest.raises(BertclsError, match="empty"):
        TextClassificationDataset([], [], tiny_model.tokenizer)
    with pytest.raises(BertclsError, match="not in the label set"):
        TextClassificationDataset(["a"], ["x"], tiny_model.tokenizer, label_names=["neg", "pos"])
    with pytest.raises(BertclsError, match="labels"):
        TextClassificationDataset(["a", "b"], ["x"], tiny_model.tokenizer)


def test_sentence_pairs_get_token_types(tiny_model):
    ds = TextClassificationDataset(
        ["good film"], [0], tiny_model.tokenizer, text_pairs=["bad plot"], label_names=["0", "1"]
    )
    assert set(ds[0]["token_type_ids"]) == {0, 1}


def test_length_grouped_sampler_covers_everything_once_and_groups_lengths():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (1000,), generator=g).tolist()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=1, window=10)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert len(batches) == len(sampler) == 63
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 1000 % 16  # short batch last
    assert max(lengths[i] for i in batches[0]) == max(max(lengths[i] for i in b) for b in batches[:-1])
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 40  # random batches of 16 would spread ~180
    pad_grouped = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert pad_grouped < 1.15 * sum(lengths)
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order each epoch
    sampler.set_epoch(0)
    assert list(sampler) == batches  # and the same order for the same epoch


def test_length_sorted_batches_for_evaluation():
    batches = length_sorted_batches([3, 9, 1, 7], 2)
    assert batches == [[1, 3], [0, 2]]


def test_an_unknown_label_deep_in_a_file_is_named_with_its_row(tmp_path):
    from bertcls.config import load_config
    from bertcls.run_data import load_data

    from .conftest import make_rows, write_csv

    rows = make_rows(60, 7)
    rows[1]["text"] = "   "  # skipped (data.empty_texts=skip): later rows keep their own row numbers
    rows[44]["label"] = "maybe"
    train = write_csv(tmp_path / "train.csv", rows)
    cfg = load_config(None, [f"data.train={train}", "data.labels=[negative,positive]", "data.validation_fraction=0.2"])
    with pytest.raises(BertclsError, match=r"'maybe'.*not in the label set.*\(first in row 45 of .*train\.csv\)"):
        load_data(cfg, log=lambda *_: None)
