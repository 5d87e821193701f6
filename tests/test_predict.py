"""bertcls.predict: command-line texts, CSV and JSONL files, top-k, and agreement with model.predict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertcls import BertclsError, BertForTextClassification
from bertcls.predict import main, predict_file, predict_texts

from .conftest import make_rows, write_csv

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a gripping beautiful film", "dull", "the plot was very boring and the ending flat", "fun"]


@pytest.fixture(scope="module")
def checkpoint(tiny_bert, tmp_path_factory) -> Path:
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["bad", "good", "meh"], seed=0)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "best")


@pytest.fixture(scope="module")
def model(checkpoint) -> BertForTextClassification:
    return BertForTextClassification.from_pretrained(checkpoint)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "bertcls.predict", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.integration
def test_cli_texts_equal_model_predict(checkpoint, model):
    proc = run_cli("--checkpoint", str(checkpoint), "--json", *TEXTS)
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = model.predict(TEXTS, precision="auto")  # the CLI default, as training's
    assert [g["text"] for g in got] == TEXTS
    for g, e in zip(got, expected):
        assert g["label"] == e["label"]
        assert g["score"] == pytest.approx(e["score"], rel=1e-6)
        assert g["probabilities"] == pytest.approx(e["probabilities"], rel=1e-6)
        assert list(g["probabilities"].values()) == sorted(g["probabilities"].values(), reverse=True)


def test_printed_table_and_top_k(checkpoint, model, capsys):
    main(["--checkpoint", str(checkpoint), "--top-k", "2", *TEXTS[:2]])
    out = capsys.readouterr().out
    expected = model.predict(TEXTS[:2], precision="auto")
    blocks = out.strip().split("\n[")
    assert len(blocks) == 2 and TEXTS[0] in blocks[0] and TEXTS[1] in blocks[1]
    for block, e in zip(blocks, expected):
        lines = block.splitlines()[1:]
        assert len(lines) == 2  # top 2 of 3 labels
        label, prob = lines[0].split()[:2]
        assert label == e["label"] and float(prob) == pytest.approx(e["score"], abs=1e-4)
        assert "<- predicted" in lines[0]
    top1 = predict_texts(model, TEXTS, top_k=1)
    assert [list(p["probabilities"]) for p in top1] == [[p["label"]] for p in model.predict(TEXTS, precision="auto")]


def test_csv_in_csv_out_keeps_columns_and_order(checkpoint, model, tmp_path, capsys):
    rows = make_rows(15, 4)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.csv"
    # The command's own main() (test_cli_texts_equal_model_predict runs the command for real).
    main(["--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out), "--batch-size", "4"])
    assert f"15 rows written to {out}" in capsys.readouterr().out
    with out.open(newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["text", "label", "other", "predicted", "score", "prob_bad", "prob_good", "prob_meh"]
    assert [(g["text"], g["label"], g["other"]) for g in got] == [(r["text"], r["label"], r["other"]) for r in rows]
    expected = model.predict([r["text"] for r in rows], precision="auto")
    for g, e in zip(got, expected):
        assert g["predicted"] == e["label"] and float(g["score"]) == pytest.approx(e["score"], rel=1e-6)
        for label, p in e["probabilities"].items():
            assert float(g[f"prob_{label}"]) == pytest.approx(p, rel=1e-6)
    # an existing output is not replaced without --overwrite
    before = out.read_text()
    with pytest.raises(BertclsError, match="already exists"):
        predict_file(model, src, out)
    assert out.read_text() == before
    predict_file(model, src, out, overwrite=True)


def test_jsonl_in_jsonl_out_with_pairs_and_top_k(model, tmp_path):
    src = tmp_path / "in.jsonl"
    records = [{"id": i, "premise": t, "hypothesis": "fun"} for i, t in enumerate(TEXTS)]
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    predict_file(model, src, out, text_column="premise", text_pair_column="hypothesis", top_k=2)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    expected = model.predict(TEXTS, ["fun"] * len(TEXTS), precision="auto")
    assert [g["id"] for g in got] == list(range(len(TEXTS)))
    for g, e in zip(got, expected):
        assert g["premise"] in TEXTS and g["predicted"] == e["label"]
        top2 = dict(sorted(e["probabilities"].items(), key=lambda kv: -kv[1])[:2])
        assert list(g["probabilities"]) == list(top2) and g["probabilities"] == pytest.approx(top2)


@pytest.mark.integration
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_chunked_file_equals_one_chunk(model, tmp_path, suffix):
    # write_predictions reads, predicts and writes a few rows at a time: the file must be the one-chunk file, and
    # what it returns the rows written.
    texts = [f"{t} {i}" for i in range(5) for t in TEXTS]  # 20 rows, chunks of 3 leave a short last one
    src = write_csv(tmp_path / "in.csv", [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    whole = predict_file(model, src, tmp_path / f"whole{suffix}", precision="no", top_k=2, chunk_rows=len(texts))
    chunked = predict_file(model, src, tmp_path / f"chunked{suffix}", precision="no", top_k=2, chunk_rows=3)
    assert [p["label"] for p in chunked] == [p["label"] for p in whole]
    for c, w in zip(chunked, whole):
        assert c["probabilities"] == pytest.approx(w["probabilities"], abs=1e-6)
    read = (
        (lambda p: list(csv.DictReader(p.open())))
        if suffix == ".csv"
        else (lambda p: [json.loads(line) for line in p.read_text().splitlines()])
    )
    got, expected = read(tmp_path / f"chunked{suffix}"), read(tmp_path / f"whole{suffix}")
    assert [str(g["id"]) for g in got] == [str(i) for i in range(len(texts))]
    assert [list(g) for g in got] == [list(e) for e in expected]
    assert [g["predicted"] for g in got] == [e["predicted"] for e in expected]
    from bertcls.predict import write_predictions

    assert write_predictions(model, src, tmp_path / f"again{suffix}", precision="no", chunk_rows=7) == len(texts)
    with pytest.raises(BertclsError, match="chunk_rows"):
        write_predictions(model, src, tmp_path / f"bad{suffix}", chunk_rows=0)


def test_errors_are_one_line(checkpoint, tmp_path, capsys):
    src = write_csv(tmp_path / "in.csv", make_rows(3, 1))
    existing = tmp_path / "exists.csv"
    existing.write_text("keep")
    cases = {
        "does not exist": ["--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "x.csv")],
        "no column 'body'": ["--input", str(src), "--output", str(tmp_path / "o.csv"), "--text-column", "body"],
        "already exists": ["--input", str(src), "--output", str(existing)],
        "unknown file type": ["--input", str(src), "--output", str(tmp_path / "o.xlsx")],
        "one of the two": [],
        "--top-k must be at least 1": ["--top-k", "0", "text"],
        "is a file, not a folder": ["--input", str(src), "--output", str(existing / "o.csv")],
    }
    for expected, args in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(["--checkpoint", str(checkpoint), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert expected in err, err
    assert existing.read_text() == "keep"
    with pytest.raises(SystemExit):  # the weights file instead of its folder
        main(["--checkpoint", str(checkpoint / "model.safetensors"), "text"])
    assert f"give the folder that holds it ({checkpoint})" in capsys.readouterr().err


def test_output_in_a_new_folder(checkpoint, tmp_path):
    src = write_csv(tmp_path / "in.csv", make_rows(3, 1))
    out = tmp_path / "new" / "deeper" / "p.jsonl"  # missing folders are made, as mkdir -p would
    main(["--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out)])
    assert len(out.read_text().splitlines()) == 3
