"""data.streaming=true: a training split read as training goes, shared between processes, resumable."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertcls import BertclsError
from bertcls.checkpoint import list_checkpoints
from bertcls.config import DataConfig
from bertcls.data import encode
from bertcls.streaming import StreamedBatches, row_reader
from bertcls.tasks import get_task
from bertcls.train import train

from .conftest import make_rows, write_csv
from .test_train import tiny_cfg

LABELS = ["negative", "positive"]


def write_shards(folder, rows, n: int, fmt: str = "parquet"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        part = rows[i::n]
        if fmt == "csv":
            write_csv(folder / f"part-{i}.csv", part)
        else:
            pq.write_table(pa.table({k: [r[k] for r in part] for k in rows[0]}), folder / f"part-{i}.parquet")
    return folder


def token_rows(batch) -> list[tuple[int, ...]]:
    return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


@pytest.mark.parametrize("shards", [2, 3])  # 2: whole shards per process; 3: every process keeps its share of rows
def test_each_row_is_read_by_one_of_two_processes_once_per_pass(tiny_model, tmp_path, shards):
    rows = make_rows(70, 4)
    # CSV shards: datasets sleeps 5 s at the end of each pass over parquet ones (apache/arrow issue 45214), which here
    # would be 20 s of this test; the training runs below stream parquet.
    folder = write_shards(tmp_path / "shards", rows, shards, "csv")
    data = DataConfig(train=str(folder), labels=LABELS, streaming=True)
    read = row_reader(data, LABELS, get_task("single_label"))
    tok = tiny_model.tokenizer
    expected = Counter(tuple(ids) for ids in encode(tok, [r["text"] for r in rows], None, 32)["input_ids"])
    seen, labels, orders = Counter(), Counter(), []
    for rank in (0, 1):
        stream = StreamedBatches(str(folder), read, tok, 32, "head", batch_size=4, seed=0, rank=rank, world_size=2)
        stream.window = 3  # several windows per pass
        passes = [list(stream.one_pass(epoch)) for epoch in (0, 1)]
        for batch in passes[0]:
            seen.update(token_rows(batch))
            labels.update(batch["labels"].tolist())
            assert len(batch["labels"]) <= 4
        orders.append([token_rows(b) for b in passes[0]] != [token_rows(b) for b in passes[1]])
    assert seen == expected
    assert labels == {0: 35, 1: 35}
    assert all(orders)  # each pass is shuffled anew


def test_streamed_run_trains_and_resumes_at_the_next_batch(tiny_bert, tiny_data, tmp_path):
    folder = write_shards(tmp_path / "shards", make_rows(96, 1), 2)
    stream = (
        "data.streaming=true",
        f"data.train={folder}",
        "data.labels=[negative,positive]",
        "train.max_steps=8",
        "checkpoint.every_steps=4",
    )
    full = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "a", *stream))
    assert "train streamed" in (tmp_path / "a" / "train.log").read_text()
    step4 = [c for c in list_checkpoints(tmp_path / "a") if c.name == "step-4"]
    assert step4, list_checkpoints(tmp_path / "a")
    resumed = train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "b", *stream, f"train.resume_from={step4[0]}"))
    assert "resumed at step 4" in (tmp_path / "b" / "train.log").read_text()
    assert resumed["test"] == full["test"]
    assert json.dumps(resumed["train_loss_curve"]) == json.dumps(full["train_loss_curve"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (("train.max_steps=-1",), "needs train.max_steps"),
        (("data.labels=null",), "needs data.labels"),
        (("train.sampler=balanced",), "train.sampler=balanced"),
        (("loss.class_weights=balanced",), "give weights by label name"),
    ],
)
def test_what_a_stream_cannot_do_is_one_clear_error(tiny_bert, tiny_data, tmp_path, extra, message):
    base = ("data.streaming=true", "data.labels=[negative,positive]", "train.max_steps=4")
    with pytest.raises(BertclsError, match=message):
        train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", *base, *extra))


def test_a_bad_stream_fails_before_the_model_loads(tiny_bert, tiny_data, tmp_path, monkeypatch):
    import bertcls.run as recipe  # the one-run recipe, whose model loading must not be reached

    monkeypatch.setattr(recipe, "setup_model", lambda *a, **k: pytest.fail("the model was loaded"))
    rows = [{"body": r["text"], "label": r["label"]} for r in make_rows(20, 1)]
    folder = write_shards(tmp_path / "shards", rows, 2)
    base = ("data.streaming=true", "data.labels=[negative,positive]", "train.max_steps=4", f"data.train={folder}")
    with pytest.raises(BertclsError, match="no column 'text'; columns are body, label"):
        train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "a", *base))
    with pytest.raises(BertclsError, match="do not exist"):
        train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "b", *base, f"data.train={tmp_path / 'none' / '*.parquet'}"))
    unknown = write_shards(tmp_path / "other", make_rows(20, 1), 1)
    with pytest.raises(BertclsError, match="not in the label set"):
        train(tiny_cfg(tiny_bert, tiny_data, tmp_path / "c", *base, f"data.train={unknown}", "data.labels=[bad,good]"))


@pytest.mark.integration
def test_streamed_run_under_two_processes(tiny_bert, tiny_data, tmp_path):
    from .conftest import run_torchrun
    from .test_train import tiny_overrides

    folder = write_shards(tmp_path / "shards", make_rows(96, 1), 3)  # 3 shards, 2 processes: rows are shared out
    out = tmp_path / "run"
    args = tiny_overrides(
        tiny_bert, tiny_data, out, "data.streaming=true", f"data.train={folder}", "data.labels=[negative,positive]",
        "train.max_steps=5",
    )  # fmt: skip
    proc = run_torchrun(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["history"][-1]["step"] == 5
    assert metrics["test"]["num_examples"] == 40
