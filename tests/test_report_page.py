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
from bertcls.metrics import bootstrap_groups, classification_report, group_scores, multilabel_report, paired_bootstrap
from bertcls.report_page import PageLimits, write_page
from bertcls.report_sources import decision_groups, headline, read_label_issues, run_curves

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
        issues = read_label_issues(fake_cv(folder / "cv", n), limits.label_issues, limits.text_chars)
        sizes[n] = write_page(result, folder, sources, "source", limits=limits, label_issues=issues).stat().st_size
    # The examples are bounded (3x3 cells x 8, 25 mistakes, 15 correct, 40 slice rows, 50 of the n suspected wrong
    # labels), so 50x the rows adds
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


def fake_run(folder: Path) -> Path:
    """A training run's folder as bertcls.run leaves it, without curves.png: metrics.json with a history."""
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"step": s, "validation": {"loss": 0.7 - s / 100, "accuracy": 0.5 + s / 100, "macro_f1": 0.5}}
               for s in (10, 20)]  # fmt: skip
    metrics = {"history": history, "train_loss_curve": [[5, 0.7], [15, 0.6]], "best": {"step": 20}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def fake_cv(folder: Path, n: int = 70, audit: bool = True, oof: float | None = 0.9) -> Path:
    """A finished bertcls.cv output folder: metrics.json with its label audit and label_issues.csv (``oof=None``:
    as cv wrote it before its audit recorded the out-of-fold accuracy)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"folds": [{"fold": 1, "metrics": {"accuracy": 0.9}}], "task": "single_label", "label_issues": None}
    if audit:
        summary["label_issues"] = {"estimated": n + 3, "listed": n, "method": "confident learning", "warning": None}
        if oof is not None:
            summary["label_issues"]["out_of_fold_accuracy"] = oof
        with (folder / "label_issues.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "text", "label", "suggested", "score"])
            w.writerows(
                [i, f"<i>suspect</i> text {i}", "negative", "positive", f"{1 - i / 1000:.6f}"] for i in range(n)
            )
    (folder / "metrics.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_bert, tiny_data):
    pytest.importorskip("captum")
    from bertcls import BertForTextClassification

    folder = tmp_path_factory.mktemp("page")
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"], seed=0)
    ckpt = model.save_pretrained(fake_run(folder / "run") / "best")
    cv = fake_cv(folder / "cv")
    evaluate(str(ckpt), str(tiny_data["test"]), output=folder / "eval", slice_column="other", verbose=False,
             label_issues=cv)  # fmt: skip
    return folder / "eval"


def test_page_from_evaluate_has_every_part(evaluated):
    page = (evaluated / "report.html").read_text()
    parts = ('id="confusion"', 'id="per-class"', "reliability diagram", 'id="slice-length"', "By other",
             'id="curves"', 'id="label-issues"')  # fmt: skip
    for part in parts:
        assert part in page
    # The 50 most suspicious of the 70 listed, in cv's order, their text escaped.
    assert page.count("suspect&lt;/i&gt; text") == 50 and "&lt;i&gt;suspect&lt;/i&gt; text 49<" in page
    assert "suspect&lt;/i&gt; text 50<" not in page and "<i>suspect" not in page
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
        assert page.locator("#curves").evaluate("img => img.complete && img.naturalWidth > 0")  # the inline PNG
        assert page.locator("#label-issues tr").count() == 51  # header and 50 rows
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
    # Two multi-label checkpoints: the comparison page's subset accuracy carries an interval from the label sets.
    args = dict(text_pair_column="pair", explain_method=None, n_resamples=50, verbose=False)
    evaluate([str(ckpt), str(ckpt)], str(data), output=tmp_path / "two", **args)
    page = (tmp_path / "two" / "report.html").read_text()
    row = page.split('<td class="name">subset_accuracy</td>')[1].split("</tr>")[0]
    assert row.count(" – ") == 2  # each checkpoint's value with its interval


# ---------------------------------------------------------------- headline intervals


def test_group_scores_equal_the_reports():
    rng = np.random.default_rng(1)
    gold, probs = rng.integers(0, 3, 500), rng.dirichlet([1, 1, 1], 500)
    report = classification_report(gold, probs, LABELS)
    result = CheckpointResult("c", LABELS, {**report, "task": "single_label"}, gold, probs.argmax(1) == gold)
    scores = group_scores(decision_groups(result, Path("unused"))[0], *decision_groups(result, Path("unused"))[1:])
    assert scores["accuracy"][0] == pytest.approx(report["accuracy"])
    assert scores["macro_f1"][0] == pytest.approx(report["macro_f1"])
    multi_gold, multi_probs = rng.integers(0, 2, (400, 4)), rng.random((400, 4))
    multi = multilabel_report(multi_gold, multi_probs, list("abcd"), [0.3, 0.5, 0.5, 0.7])
    pred = (multi_probs >= [0.3, 0.5, 0.5, 0.7]).astype(int)
    keys, inverse = np.unique(np.concatenate([multi_gold, pred], 1), axis=0, return_inverse=True)
    scores = group_scores(np.bincount(inverse.ravel()), keys[:, :4], keys[:, 4:])
    for key, theirs in (("accuracy", "subset_accuracy"), ("micro_f1", "micro_f1"), ("macro_f1", "macro_f1"),
                        ("hamming_loss", "hamming_loss")):  # fmt: skip
        assert scores[key][0] == pytest.approx(multi[theirs]), key


def test_bootstrap_of_groups_matches_resampling_rows(tmp_path):
    result, _ = fake_result(tmp_path, 3000)
    groups = decision_groups(result, tmp_path / "predictions.csv")
    ours = bootstrap_groups(*groups, n_resamples=2000, seed=0)
    rows = paired_bootstrap(np.zeros(3000, bool), result.correct, n_resamples=2000, seed=1)
    # Two bootstraps of the same accuracy (different draws): the ends agree to well within the interval's width.
    width = rows["ci_high"] - rows["ci_low"]
    assert abs(ours["accuracy"]["low"] - rows["ci_low"]) < 0.1 * width
    assert abs(ours["accuracy"]["high"] - rows["ci_high"]) < 0.1 * width
    items = {h["key"]: h for h in headline(result, groups, 500, 0)}
    assert items["macro_f1"]["low"] < result.metrics["macro_f1"] < items["macro_f1"]["high"]
    assert "low" not in items["loss"] and "low" not in items["ece"]  # they depend on probabilities


# ---------------------------------------------------------------- learning curves and label issues


def test_curves_from_the_run_folder_or_none(tmp_path):
    assert run_curves(tmp_path / "not-a-run" / "best") is None
    drawn = run_curves(fake_run(tmp_path / "run") / "best")
    assert drawn is not None and drawn.startswith("data:image/png;base64,")
    (tmp_path / "run" / "curves.png").write_bytes(b"\x89PNG fake")
    assert run_curves(tmp_path / "run" / "best") == "data:image/png;base64,iVBORyBmYWtl"  # the run's own file
    result, _ = fake_result(tmp_path / "eval", 50)
    assert 'id="curves"' not in write_page(result, tmp_path / "eval").read_text()  # no curves: no section


def test_label_issues_folder_that_is_not_cv_fails_before_writing(tiny_model, tiny_data, tmp_path):
    ckpt = tiny_model.save_pretrained(tmp_path / "ckpt")
    multi = fake_cv(tmp_path / "multi", audit=False)
    for folder, expected in ((ckpt, "not a bertcls.cv output folder"), (multi, "was multi-label")):
        out = tmp_path / "report"
        proc = run_cli("bertcls.evaluate", "--checkpoint", str(ckpt), "--data", str(tiny_data["test"]), "--output",
                       str(out), "--label-issues", str(folder))  # fmt: skip
        assert_one_line_error(proc, expected)
        assert proc.returncode == 2 and not out.exists()
    assert read_label_issues(fake_cv(tmp_path / "cv", n=3), 50, 600)["rows"][2]["score"] == pytest.approx(0.998)


# ---------------------------------------------------------------- several checkpoints


def test_comparison_page(tiny_bert, tiny_data, tmp_path):
    from bertcls import BertForTextClassification

    ckpts = [
        BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"], seed=s).save_pretrained(
            tmp_path / name
        )
        for s, name in ((0, "a"), (1, "b"))
    ]
    out = tmp_path / "ab"
    summary = evaluate([str(c) for c in ckpts], str(tiny_data["test"]), output=out, explain_method=None,
                       verbose=False, label_issues=fake_cv(tmp_path / "cv", n=5, oof=None))  # fmt: skip
    page = (out / "report.html").read_text()
    assert page.index('id="paired"') < page.index('id="headline"')  # the paired bootstrap first
    c = summary["comparisons"][0]
    assert f"{c['accuracy_difference']:+.4f}" in page and f"{c['ci_low']:+.4f}" in page
    for row in summary["checkpoints"]:
        assert f'href="{row["report"]}/report.html"' in page and (out / row["report"] / "report.html").is_file()
        assert f'data-key="macro_f1">{row["macro_f1"]:.4f}<' in page
    assert 'id="per-class-f1"' in page and page.count("suspect&lt;/i&gt; text") == 5
    assert "http://" not in page and "https://" not in page and "<script" not in page
