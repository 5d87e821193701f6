"""report.html (bertcls.report_page): bounded on big files, user text escaped, and in a real browser: no console
errors, no network, the headline matches metrics.json, a confusion-matrix cell lists its examples."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from bertcls.evaluate import CheckpointResult, evaluate
from bertcls.metrics import classification_report
from bertcls.report_page import PageLimits, write_page

from .conftest import assert_one_line_error, run_cli

LABELS = ["negative", "positive", "neutral"]


def fake_result(folder: Path, n: int, seed: int = 0) -> tuple[CheckpointResult, list[str]]:
    """A scored split of ``n`` rows without a model: predictions.csv and metrics as evaluate writes them."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 3, n)
    probs = rng.dirichlet([1, 1, 1], n)
    probs[np.arange(n), gold] += 0.5
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    words = ["good", "bad", "plot", "<script>alert(1)</script>", "&amp;", "film"]
    texts = [" ".join(random.Random(i).choices(words, k=3 + i % 60)) for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "gold", "predicted", *(f"prob_{x}" for x in LABELS)])
        for t, g, p, pr in zip(texts, gold, pred, probs):
            w.writerow([t, LABELS[g], LABELS[p], *map(repr, pr.tolist())])
    metrics = {"checkpoint": "ckpt", "data": "fake.csv", "labels": LABELS, "num_rows": n, "task": "single_label"}
    metrics["precision"] = "no"
    metrics.update(classification_report(gold, probs, LABELS))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    result = CheckpointResult("ckpt", LABELS, metrics, gold, pred == gold)
    sources = [f"source-{i % 97}" for i in range(n)]
    return result, sources


def test_page_stays_bounded_on_100k_rows(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    limits = PageLimits(n_resamples=200)
    sizes = {}
    for folder, n in ((small, 2_000), (big, 100_000)):
        result, sources = fake_result(folder, n)
        sizes[n] = write_page(result, folder, sources, "source", limits=limits).stat().st_size
    # The examples are bounded (3x3 cells x 8, 25 mistakes, 15 correct, 40 slice rows), so 50x the rows adds
    # (almost) nothing: only the numbers' widths change.
    assert sizes[100_000] < 300_000
    assert sizes[100_000] < sizes[2_000] * 1.2
    page = (big / "report.html").read_text()
    assert "<script>alert(1)</script>" not in page  # user text is escaped, in HTML and in the embedded JSON
    assert "57 more values not shown" in page  # 97 sources, 40 shown


def test_slice_column_missing_fails_before_writing(tiny_model, tiny_data, tmp_path):
    ckpt = tiny_model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "report"
    proc = run_cli("bertcls.evaluate", "--checkpoint", str(ckpt), "--data", str(tiny_data["test"]), "--output",
                   str(out), "--slice-column", "nope")  # fmt: skip
    assert_one_line_error(proc, "nope")
    assert not out.exists()


# ---------------------------------------------------------------- in a browser


def chromium_path() -> str | None:
    found = os.environ.get("BERTCLS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_bert, tiny_data):
    pytest.importorskip("captum")
    from bertcls import BertForTextClassification

    folder = tmp_path_factory.mktemp("page")
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"], seed=0)
    ckpt = model.save_pretrained(folder / "ckpt")
    evaluate(str(ckpt), str(tiny_data["test"]), output=folder / "eval", slice_column="other", verbose=False)
    return folder / "eval"


def test_page_from_evaluate_has_every_part(evaluated):
    page = (evaluated / "report.html").read_text()
    for part in ('id="confusion"', 'id="per-class"', "reliability diagram", 'id="slice-length"', "By other"):
        assert part in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    data = json.loads(page.split('type="application/json">')[1].split("</script>")[0])
    assert data["mistakes"] and all("words" in e for e in data["mistakes"] + data["correct"])


def test_page_in_headless_chromium(evaluated):
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (the dev extra has it)")
    metrics = json.loads((evaluated / "metrics.json").read_text())
    errors, requests = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto((evaluated / "report.html").as_uri())
        page.wait_for_load_state("load")
        for key in ("accuracy", "macro_f1", "loss", "ece"):
            shown = page.locator(f'.metric[data-key="{key}"]').inner_text()
            assert float(shown) == pytest.approx(metrics[key], abs=5e-5)
        # A cell with a count: clicking it lists examples of exactly that gold and predicted label.
        matrix = metrics["confusion_matrix"]
        g, q = next((g, q) for g in range(2) for q in range(2) if matrix[g][q])
        gold, predicted = metrics["labels"][g], metrics["labels"][q]
        page.locator(f'td.cell[data-gold="{gold}"][data-predicted="{predicted}"]').click()
        metas = page.locator("#cell-examples .ex .meta").all_inner_texts()
        assert 0 < len(metas) <= min(8, matrix[g][q])
        assert all(f"gold {gold} · predicted {predicted}" in m for m in metas)
        assert page.locator("#mistakes .ex").count() > 0
        browser.close()
    assert errors == []
    assert requests == []


def test_multi_label_pairs_page(tiny_bert, tmp_path):
    pytest.importorskip("captum")
    from bertcls import BertForTextClassification

    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["a", "b", "c"], task="multi_label", seed=0)
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    data = tmp_path / "ml.csv"
    data.write_text("text,pair,label\ngood film,dull plot,a|b\nthe <b>plot</b>,fun,c\nboring,great,\n")
    evaluate(str(ckpt), str(data), text_pair_column="pair", output=tmp_path / "eval", verbose=False)
    page = (tmp_path / "eval" / "report.html").read_text()
    assert 'data-key="subset_accuracy"' in page and 'id="confusion"' not in page
    assert "<b>plot</b>" not in page
    payload = json.loads(page.split('type="application/json">')[1].split("</script>")[0])
    shown = payload["mistakes"] + payload["correct"]
    assert len(shown) == 3 and all("text_pair" in e and "words" in e for e in shown)
