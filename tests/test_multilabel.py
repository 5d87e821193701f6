"""Multi-label classification (issue #6): label sets from lists and delimited strings, BCE with pos_weight, decision
thresholds (global or tuned per label, saved and applied everywhere), multi-label metrics, and every entry point."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from bertcls import BertclsError, BertForTextClassification
from bertcls.config import load_config
from bertcls.data import TextClassificationDataset, load_split
from bertcls.losses import build_multilabel_loss, pos_weights
from bertcls.metrics import is_better, multilabel_metrics
from bertcls.multilabel import decide, parse_label_set, tune_thresholds
from bertcls.serialization import CONFIG_NAME, checkpoint_task
from bertcls.tasks import get_task
from bertcls.train import load_data, make_train_loader, train

from .conftest import FILLER, NEGATIVE, POSITIVE, assert_one_line_error, run_main, run_torchrun
from .test_train import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["bad", "cast", "good"]
MULTI = get_task("multi_label")
TEXTS = ["a gripping beautiful film", "dull", "the actor was awful and the plot boring", "fun", "the ending"]


def make_rows(n: int, seed: int) -> list[dict]:
    """Texts whose labels are the word groups in them: a positive word -> good, a negative one -> bad, actor -> cast;
    about one text in five has no label at all."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        labels = [name for name in LABELS if rng.random() < 0.4]
        words = [rng.choice([w for w in FILLER if w != "actor"]) for _ in range(rng.randint(2, 8))]
        words += [rng.choice(NEGATIVE)] if "bad" in labels else []
        words += ["actor"] if "cast" in labels else []
        words += [rng.choice(POSITIVE)] if "good" in labels else []
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": labels})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_delimited_csv(path: Path, rows: list[dict], delimiter: str = "|") -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": delimiter.join(r["label"])} for r in rows)
    return path


@pytest.fixture(scope="session")
def ml_data(tmp_path_factory) -> dict[str, Path]:
    """Train as JSONL lists, validation as a CSV of "a|b" strings (empty cells: no label), test as JSONL."""
    d = tmp_path_factory.mktemp("ml_data")
    return {
        "train": write_jsonl(d / "train.jsonl", make_rows(96, 1)),
        "validation": write_delimited_csv(d / "validation.csv", make_rows(40, 2)),
        "test": write_jsonl(d / "test.jsonl", make_rows(40, 3)),
    }


def ml_cfg(tiny_bert, ml_data, out: Path, *extra: str):
    return load_config(None, tiny_overrides(tiny_bert, ml_data, out, "data.task=multi_label", *extra))


# ---------------------------------------------------------------- label sets


def test_label_sets_from_lists_delimited_strings_and_empty_cells(tmp_path):
    assert parse_label_set(["news", "sport"]) == ["news", "sport"]
    assert parse_label_set(" news | sport |news|") == ["news", "sport"]  # stripped, empty parts and repeats dropped
    assert parse_label_set("news;sport", ";") == ["news", "sport"]
    assert parse_label_set("['news', 'sport']") == ["news", "sport"]  # a pandas list column written to CSV
    assert parse_label_set('["news"]') == ["news"]
    assert parse_label_set([1.0, 3]) == [1, 3] and parse_label_set(2) == [2]
    for empty in ("", "  ", None, float("nan"), [], "[]"):
        assert parse_label_set(empty) == [], empty
    with pytest.raises(BertclsError, match="looks like a list"):
        parse_label_set("[news, sport]")

    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": ["b", "a"]}, {"text": "y", "label": []}])
    assert load_split(str(jsonl), task="multi_label").labels == [["b", "a"], []]
    rows = [{"text": "x", "label": ["a", "b"]}, {"text": "y", "label": []}, {"text": "z", "label": ["c"]}]
    csv_path = write_delimited_csv(tmp_path / "a.csv", rows, ",")
    split = load_split(str(csv_path), task="multi_label", label_delimiter=",")
    assert split.labels == [["a", "b"], [], ["c"]]  # the empty cell is the empty set, not a missing label
    assert MULTI.targets(split.labels, ["a", "b", "c"]) == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(BertclsError, match=r"'c'.*not in the label set"):
        MULTI.targets(split.labels, ["a", "b"], "validation data")
    with pytest.raises(BertclsError, match="no label"):  # single-label reading keeps refusing empty cells
        load_split(str(csv_path))


def test_load_data_builds_the_label_set_and_names_unknown_labels(tiny_bert, ml_data, tmp_path):
    data = load_data(ml_cfg(tiny_bert, ml_data, tmp_path))
    assert data.labels == LABELS
    assert [] in data.train.labels and [] in data.validation.labels  # examples where no label applies
    assert data.validation.labels == [r["label"] for r in make_rows(40, 2)]  # "a|b" cells read back as lists
    explicit = load_data(ml_cfg(tiny_bert, ml_data, tmp_path, "data.labels=[good,cast,bad,extra]"))
    assert explicit.labels == ["good", "cast", "bad", "extra"]
    with pytest.raises(BertclsError, match=r"train data .* label\(s\) 'cast'"):
        load_data(ml_cfg(tiny_bert, ml_data, tmp_path, "data.labels=[good,bad]"))
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": "x", "label": ["a"]}, {"text": "y", "label": []}])
    with pytest.raises(BertclsError, match="needs two or more"):
        load_data(ml_cfg(tiny_bert, ml_data, tmp_path, f"data.train={one}", "data.validation=null"))


def test_validation_cut_from_multilabel_train_data():
    from bertcls.data import Split, split_validation

    # 12 label combinations, each twice: more strata than the 3 validation rows, so the cut is random (no error)
    combos = [[f"l{i}"] for i in range(6)] + [[f"l{i}", f"l{i + 1}"] for i in range(6)]
    data = Split([f"t{i}" for i in range(24)], [c for c in combos for _ in range(2)])
    train_part, val = split_validation(data, 0.1, seed=0)
    assert len(val) == 3 and len(train_part) == 21
    # few combinations: stratified, each combination (in any order) keeps its share
    data = Split([f"t{i}" for i in range(40)], [["a", "b"], ["b", "a"], ["a"], []] * 10)
    _, val = split_validation(data, 0.2, seed=0)
    assert [sorted(v) for v in val.labels].count(["a", "b"]) == 4 and val.labels.count([]) == 2


def test_dataset_and_collate_give_float_multi_hot_rows(tiny_model):
    ds = TextClassificationDataset(
        ["a", "b c"], [["y"], []], tiny_model.tokenizer, label_names=["x", "y"], task="multi_label"
    )
    batch = ds.collate([ds[0], ds[1]])
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [[0.0, 1.0], [0.0, 0.0]]


# ---------------------------------------------------------------- config


def test_options_of_the_other_task_are_refused():
    multi = ["data.task=multi_label"]
    assert load_config(None, multi).eval.metric == "micro_f1"  # auto
    assert load_config(None, []).eval.metric == "accuracy"
    assert load_config(None, [*multi, "eval.metric=hamming_loss", "eval.threshold=tune"]).eval.threshold == "tune"
    cases = {
        "loss.class_weights is for data.task=single_label": [*multi, "loss.class_weights=balanced"],
        "loss.label_smoothing is for": [*multi, "loss.label_smoothing=0.1"],
        "train.sampler=balanced is for": [*multi, "train.sampler=balanced"],
        "'accuracy' is not a multi_label metric": [*multi, "eval.metric=accuracy"],
        "'micro_f1' is not a single_label metric": ["eval.metric=micro_f1"],
        "loss.pos_weight is for data.task=multi_label": ["loss.pos_weight=balanced"],
        "eval.threshold is for data.task=multi_label": ["eval.threshold=0.3"],
        "eval.threshold must be a number in (0, 1) or tune": [*multi, "eval.threshold=1.5"],
        "'best' is not a number": [*multi, "eval.threshold=best"],
        "data.task: 'multilabel' is not one of": ["data.task=multilabel"],
        "loss.pos_weight.good must be a number >= 0": [*multi, "loss.pos_weight={good: -1}"],
    }
    for expected, overrides in cases.items():
        with pytest.raises(BertclsError) as e:
            load_config(None, overrides)
        assert expected in str(e.value), (expected, str(e.value))


@pytest.mark.integration
def test_train_cli_errors_are_one_line(tiny_bert, ml_data, tmp_path, capsys):
    from bertcls.train import main

    base = tiny_overrides(tiny_bert, ml_data, tmp_path / "out", "data.task=multi_label", "train.max_steps=1")
    proc = run_main("bertcls.train", *base, "loss.class_weights=balanced")
    assert_one_line_error(proc, "with multi_label, weigh rare labels with loss.pos_weight")
    with pytest.raises(SystemExit) as e:
        main([*base, "data.labels=[good,bad]"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "'cast'" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "metrics.json").exists()


# ---------------------------------------------------------------- loss


def test_pos_weight_balanced_and_by_name():
    rows = [[1, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0]]
    w = pos_weights("balanced", ["a", "b", "c"], rows)
    assert w.tolist() == pytest.approx([1 / 3, 3 / 1, 3 / 1])  # negatives / positives per label
    assert pos_weights({"b": 2.5}, ["a", "b", "c"], rows).tolist() == [1.0, 2.5, 1.0]
    assert pos_weights(None, ["a", "b", "c"], rows) is None
    with pytest.raises(BertclsError, match="unknown label"):
        pos_weights({"d": 2.0}, ["a", "b", "c"], rows)
    with pytest.raises(BertclsError, match=r"\['c'\] have no positive training example"):
        pos_weights("balanced", ["a", "b", "c"], [[1, 0, 0], [0, 1, 0]])


def test_pos_weight_changes_the_training_loss_exactly(tiny_bert, ml_data, tmp_path):
    # A frozen backbone (eval mode) and a head without dropout make the first step deterministic.
    frozen = ("model.freeze_backbone=true", "train.cache=false", "model.dropout=0", "train.max_steps=1")
    cfg = ml_cfg(tiny_bert, ml_data, tmp_path / "run", *frozen, "loss.pos_weight={good: 3.0, bad: 0.5}")
    loss = train(cfg)["train_loss_curve"][0][1]

    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, seed=cfg.train.seed, dropout=0)
    split = load_split(str(ml_data["train"]), task="multi_label")
    ds = TextClassificationDataset(
        split.texts, split.labels, model.tokenizer, 32, label_names=LABELS, task="multi_label"
    )
    sampler = make_train_loader(ds, cfg, False).batch_sampler
    sampler.set_epoch(0)
    batch = ds.collate([ds[i] for i in next(iter(sampler))])
    y = batch.pop("labels")
    with torch.no_grad():
        x = model.eval()(**batch).logits.double()
    w = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)  # label order: bad, cast, good
    by_hand = -(w * y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))).mean()
    assert loss == pytest.approx(float(by_hand), rel=1e-5)
    plain = -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))).mean()
    assert loss != pytest.approx(float(plain), rel=1e-3)
    assert build_multilabel_loss()(x.float(), y).item() == pytest.approx(float(plain), rel=1e-5)


# ---------------------------------------------------------------- thresholds and metrics


def test_tune_thresholds_picks_the_f1_maximizing_value():
    probs = np.array(
        [
            [0.90, 0.1, 0.7, 0.95],
            [0.80, 0.2, 0.2, 0.60],
            [0.35, 0.3, 0.2, 0.55],
            [0.30, 0.4, 0.2, 0.10],
            [0.10, 0.6, 0.2, 0.10],
        ]
    )
    gold = np.array([[1, 0, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    t = tune_thresholds(gold, probs)
    assert t[0] == pytest.approx(0.325)  # between 0.30 and 0.35: all three positives, no false one (F1 = 1)
    assert t[1] == 0.5  # no positive in the data: keeps 0.5
    assert t[2] == 0.5  # F1 = 1 anywhere in (0.2, 0.7]: the tie goes to the candidate nearest 0.5
    assert t[3] == pytest.approx(0.775)  # needs a threshold above 0.6: the midpoint of 0.6 and 0.95
    # On random data: no threshold on a fine grid gives a class a higher F1 than the tuned one.
    rng = np.random.default_rng(0)
    probs = rng.random((200, 4))
    gold = (probs + rng.normal(0, 0.3, probs.shape) > 0.7).astype(int)
    t = tune_thresholds(gold, probs)
    grid = np.linspace(0.001, 0.999, 999)[:, None]
    for c in range(4):
        pred = probs[:, c] >= grid  # (thresholds, examples)
        tp, pp = (pred & (gold[:, c] == 1)).sum(1), pred.sum(1)
        best_on_grid = (2 * tp / (pp + gold[:, c].sum())).max()
        tuned = skm.f1_score(gold[:, c], (probs[:, c] >= t[c]).astype(int))
        assert tuned >= best_on_grid - 1e-12 and 0 < t[c] < 1


def test_multilabel_metrics_match_sklearn_and_a_hand_count():
    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.7, 0.3, 0.6], [0.2, 0.1, 0.1]])
    thresholds = [0.5, 0.5, 0.35]
    pred = decide(probs, thresholds)
    assert pred.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0]]
    m = multilabel_metrics(gold, probs, thresholds)
    assert m["subset_accuracy"] == 0.75  # rows 0, 1 and 3 are exactly right
    assert m["hamming_loss"] == pytest.approx(2 / 12)  # row 2 misses one label and adds another
    assert m["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))  # tp 4, fp 1, fn 1
    assert m["micro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="macro"))
    assert m["subset_accuracy"] == skm.accuracy_score(gold, pred)
    assert m["hamming_loss"] == skm.hamming_loss(gold, pred)
    bce = -(gold * np.log(probs) + (1 - gold) * np.log(1 - probs)).mean()
    assert m["loss"] == pytest.approx(bce)
    assert is_better("hamming_loss", 0.1, 0.2) and not is_better("hamming_loss", 0.3, 0.2)
    assert is_better("micro_f1", 0.3, 0.2)


# ---------------------------------------------------------------- the model, predict and its CLI


@pytest.fixture()
def ml_model(tiny_bert) -> BertForTextClassification:
    return BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, task="multi_label", seed=0)


def test_sigmoid_probabilities_and_label_sets(ml_model):
    probs = ml_model.predict_proba(TEXTS)
    with torch.no_grad():
        enc = ml_model.tokenizer(TEXTS[:1], return_tensors="pt")
        assert torch.allclose(probs[:1], ml_model.eval()(**enc).logits.sigmoid(), atol=1e-5)
    assert not torch.allclose(probs.sum(-1), torch.ones(len(TEXTS)))  # independent per label, not a softmax
    ml_model.thresholds = [0.01, 0.99, float(probs[0, 2]) - 1e-4]
    p = ml_model.predict(TEXTS[0])[0]
    assert p["labels"] == sorted(["bad", "good"], key=lambda k: -p["probabilities"][k])
    assert p["scores"] == [p["probabilities"][k] for k in p["labels"]]
    ml_model.thresholds = 0.99
    assert ml_model.predict(TEXTS[0])[0]["labels"] == []  # no label applies
    with pytest.raises(BertclsError, match="in \\(0, 1\\)"):
        ml_model.thresholds = [0.5, 0.5, 1.0]
    with pytest.raises(BertclsError, match="3 labels"):
        ml_model.thresholds = [0.5, 0.5]


@pytest.mark.integration
def test_thresholds_saved_are_the_ones_predict_and_its_cli_apply(ml_model, tmp_path, capsys):
    p = float(ml_model.predict_proba(TEXTS[:1])[0, 2])  # the "good" probability of the first text
    ckpts = {}
    for name, t in (("below", p - 1e-3), ("above", p + 1e-3)):
        ml_model.thresholds = [0.01, 0.99, t]  # bad always, cast never, good decided by the third threshold
        ml_model.label_delimiter = ";"
        ckpts[name] = ml_model.save_pretrained(tmp_path / name)
        saved = json.loads((tmp_path / name / CONFIG_NAME).read_text())
        assert saved["head"]["task"] == "multi_label" and saved["thresholds"] == [0.01, 0.99, t]
        loaded = BertForTextClassification.from_pretrained(tmp_path / name)
        assert loaded.thresholds == [0.01, 0.99, t] and loaded.label_delimiter == ";"
        assert checkpoint_task(tmp_path / name) == ("multi_label", ";")
    assert set(BertForTextClassification.from_pretrained(ckpts["below"]).predict(TEXTS[0])[0]["labels"]) == {
        "bad",
        "good",
    }
    assert BertForTextClassification.from_pretrained(ckpts["above"]).predict(TEXTS[0])[0]["labels"] == ["bad"]

    from bertcls.predict import load_predictor, main, predict_file

    # full precision: the thresholds sit 1e-3 from the fp32 probability, closer than bf16's rounding
    full = ["--precision", "no"]
    proc = run_main("bertcls.predict", "--checkpoint", str(ckpts["above"]), *full, "--json", TEXTS[0])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["labels"] == ["bad"]
    main(["--checkpoint", str(ckpts["below"]), *full, "--json", TEXTS[0]])
    assert set(json.loads(capsys.readouterr().out)["labels"]) == {"bad", "good"}
    main(["--checkpoint", str(ckpts["above"]), *full, TEXTS[0], "fun"])
    lines = capsys.readouterr().out.splitlines()
    assert any("(threshold 0.9900)" in line for line in lines)
    assert [line for line in lines if "<- predicted" in line][0].split()[0] == "bad"

    # files: the CSV holds the label set joined by the checkpoint's delimiter, JSONL a list
    src = write_delimited_csv(tmp_path / "in.csv", [{"text": t, "label": []} for t in TEXTS])
    model = load_predictor(ckpts["below"])
    preds = predict_file(model, src, tmp_path / "out.csv", precision="no")
    with (tmp_path / "out.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["predicted"] for r in rows] == [";".join(p["labels"]) for p in preds]
    assert set(rows[0]["predicted"].split(";")) == {"bad", "good"} and "score" not in rows[0]
    predict_file(model, src, tmp_path / "out.jsonl", precision="no")
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert set(first["predicted"]) == {"bad", "good"} and len(first["scores"]) == 2


def test_old_checkpoint_without_task_loads_as_single_label(tiny_model, tmp_path):
    path = tiny_model.save_pretrained(tmp_path / "old")
    config = json.loads((path / CONFIG_NAME).read_text())
    del config["head"]["task"]  # what checkpoints written before multi-label support hold
    (path / CONFIG_NAME).write_text(json.dumps(config))
    model = BertForTextClassification.from_pretrained(path)
    assert model.task == "single_label" and model.thresholds is None
    assert set(model.predict("fun")[0]) == {"label", "score", "probabilities"}
    assert checkpoint_task(path) == ("single_label", "|")
    with pytest.raises(BertclsError, match="is a single_label classifier, not multi_label"):
        BertForTextClassification.from_pretrained(path, task="multi_label")


def test_windows_average_sigmoid_probabilities(ml_model):
    long_text = " ".join(["the film was fun and the actor awful"] * 6)
    ml_model.window_stride, ml_model.max_length = 8, 16
    probs = ml_model.predict_proba([long_text])
    from bertcls.data import encode_windows, pad_batch

    encoded, doc_ids = encode_windows(ml_model.tokenizer, [long_text], None, 16, 8)
    assert len(doc_ids) > 2
    batch = pad_batch([{k: v[i] for k, v in encoded.items()} for i in range(len(doc_ids))], 0)
    with torch.no_grad():
        windows = ml_model.eval()(**batch).logits.sigmoid()
    assert torch.allclose(probs[0], windows.mean(0), atol=1e-5)


# ---------------------------------------------------------------- training end to end


def recomputed_test_metrics(best: BertForTextClassification, path: Path) -> dict[str, float]:
    test = load_split(str(path), task="multi_label")
    probs = best.predict_proba(test.texts, batch_size=7).numpy()
    return multilabel_metrics(np.asarray(MULTI.targets(test.labels, best.labels)), probs, best.thresholds)


def test_end_to_end_with_tuned_thresholds(tiny_bert, ml_data, tmp_path):
    out = tmp_path / "run"
    lr = ("train.epochs=6", "train.lr=2e-3", "train.head_lr=1e-2")
    result = train(ml_cfg(tiny_bert, ml_data, out, "eval.threshold=tune", *lr))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["metric"] == "micro_f1"
    assert metrics["best"]["value"] == max(h["validation"]["micro_f1"] for h in metrics["history"])
    assert set(metrics["history"][-1]["validation"]) >= {"micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"}
    tuned = list(metrics["best"]["thresholds"].values())
    assert any(abs(t - 0.5) > 1e-3 for t in tuned)  # tuning moved something, so the checks below mean something
    best = BertForTextClassification.from_pretrained(out / "best")
    assert best.task == "multi_label" and best.thresholds == tuned
    # the test metrics of the run are the best checkpoint's, at its tuned thresholds
    assert recomputed_test_metrics(best, ml_data["test"]) == pytest.approx(
        {k: v for k, v in result["test"].items() if k != "num_examples"}, rel=1e-5
    )
    # last/ holds thresholds tuned for its own weights on the validation split
    last = BertForTextClassification.from_pretrained(out / "last")
    val = load_split(str(ml_data["validation"]), task="multi_label")
    gold = np.asarray(MULTI.targets(val.labels, LABELS))
    expected = tune_thresholds(gold, last.predict_proba(val.texts).numpy())
    assert last.thresholds == pytest.approx(expected.tolist(), abs=1e-5)
    card = (out / "best" / "README.md").read_text()
    assert "multi-label text classifier over 3 labels" in card and "micro_f1" in card
    assert f"`good` {tuned[2]:.4g}" in card
    assert f"`good` {last.thresholds[2]:.4g}" in (out / "last" / "README.md").read_text()
    assert (out / "curves.png").is_file()


def test_shipped_multilabel_config_runs_on_given_files(tiny_bert, ml_data, tmp_path):
    cfg = load_config(
        ROOT / "configs" / "multilabel.yaml", tiny_overrides(tiny_bert, ml_data, tmp_path, "train.max_steps=2")
    )
    assert (cfg.data.task, cfg.eval.threshold, cfg.loss.pos_weight) == ("multi_label", "tune", "balanced")
    result = train(cfg)
    assert set(result["best"]["thresholds"]) == set(LABELS) and result["test"]["num_examples"] == 40


def test_frozen_cached_path_agrees_with_the_uncached_one(tiny_bert, ml_data, tmp_path):
    # Cached features have no lengths, so both runs batch without length grouping to see the same order.
    # The same AdamW epochs on both paths (the cache's default L-BFGS fit has no uncached counterpart).
    extra = ("model.freeze_backbone=true", "model.dropout=0", "train.group_by_length=false", "eval.threshold=0.4")
    # Uncalibrated: a calibrated run moves a fixed threshold with its temperature (test_calibration checks that).
    extra += ("train.head_solver=adamw", "eval.calibration=none")
    cached = train(ml_cfg(tiny_bert, ml_data, tmp_path / "a", *extra, f"train.cache_dir={tmp_path / 'cache'}"))
    plain = train(ml_cfg(tiny_bert, ml_data, tmp_path / "b", *extra, "train.cache=false"))
    assert cached["feature_cache"]["used"] and not plain["feature_cache"]["used"]
    assert cached["test"] == pytest.approx(plain["test"], rel=1e-4)
    assert cached["best"]["step"] == plain["best"]["step"]
    assert cached["best"]["value"] == pytest.approx(plain["best"]["value"], rel=1e-4)
    assert cached["best"]["thresholds"] == plain["best"]["thresholds"] == dict.fromkeys(LABELS, 0.4)
    best = BertForTextClassification.from_pretrained(tmp_path / "a" / "best")
    assert best.thresholds == [0.4, 0.4, 0.4]
    assert recomputed_test_metrics(best, ml_data["test"])["micro_f1"] == pytest.approx(cached["test"]["micro_f1"])
    # tuned thresholds reach best/ of a cached run too (its best head is kept in memory and written at the end)
    tuned = train(ml_cfg(tiny_bert, ml_data, tmp_path / "c", *extra[:3], "eval.threshold=tune"))  # L-BFGS here
    best = BertForTextClassification.from_pretrained(tmp_path / "c" / "best")
    assert best.thresholds == list(tuned["best"]["thresholds"].values())


def test_pos_weight_balanced_run_and_windows(tiny_bert, ml_data, tmp_path):
    out = tmp_path / "run"
    extra = ("loss.pos_weight=balanced", "train.max_steps=2", "data.window_stride=4", "data.max_length=8")
    result = train(ml_cfg(tiny_bert, ml_data, out, *extra))
    assert "pos_weight: {'bad':" in (out / "train.log").read_text()
    assert result["test"]["num_examples"] == 40  # texts, not windows


@pytest.mark.integration
def test_evaluate_cli_on_a_multilabel_checkpoint(ml_model, ml_data, tmp_path, capsys):
    from bertcls.evaluate import main

    ml_model.thresholds = [0.45, 0.5, 0.55]
    ckpt = ml_model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "report"
    main(["--checkpoint", str(ckpt), "--data", str(ml_data["validation"]), "--output", str(out)])
    printed = capsys.readouterr().out
    assert "micro F1" in printed and "threshold" in printed and "Hamming loss" in printed
    m = json.loads((out / "metrics.json").read_text())
    split = load_split(str(ml_data["validation"]), task="multi_label")
    gold = np.asarray(MULTI.targets(split.labels, LABELS))
    pred = decide(ml_model.predict_proba(split.texts).numpy(), [0.45, 0.5, 0.55])
    assert m["micro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="micro", zero_division=0))
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(gold, pred))
    assert m["per_class"]["good"]["threshold"] == 0.55
    assert m["confusion_matrices"]["good"] == skm.multilabel_confusion_matrix(gold, pred)[2].tolist()
    with (out / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["gold"] for r in rows] == ["|".join(s) for s in split.labels]
    assert [set(filter(None, r["predicted"].split("|"))) for r in rows] == [
        {LABELS[j] for j in np.flatnonzero(p)} for p in pred
    ]
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    # two checkpoints: compared by subset accuracy; a semicolon-delimited file with --label-delimiter
    ml_model.thresholds = 0.5
    other = ml_model.save_pretrained(tmp_path / "other")
    semi = write_delimited_csv(tmp_path / "semi.csv", make_rows(20, 4), ";")
    main(
        [
            "--checkpoint",
            str(ckpt),
            str(other),
            "--data",
            str(semi),
            "--label-delimiter",
            ";",
            "--output",
            str(out / "2"),
        ]
    )
    summary = json.loads((out / "2" / "metrics.json").read_text())
    assert summary["comparisons"][0]["metric"] == "subset_accuracy"
    assert "subset accuracy vs first" in capsys.readouterr().out
    # an unknown label is one line, without a traceback
    bad = write_delimited_csv(tmp_path / "bad.csv", [{"text": "fun", "label": ["good", "meh"]}])
    proc = run_main("bertcls.evaluate", "--checkpoint", str(ckpt), "--data", str(bad))
    assert_one_line_error(proc, "1 row(s) with label(s) 'meh'")


def test_onnx_export_carries_task_and_thresholds(ml_model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bertcls.export import export_onnx
    from bertcls.onnx_predict import OnnxClassifier
    from bertcls.predict import load_predictor

    p = float(ml_model.predict_proba(TEXTS[:1])[0, 2])
    ml_model.thresholds = [0.01, 0.99, p + 1e-3]  # "good" just out of reach for the first text
    ckpt = ml_model.save_pretrained(tmp_path / "ckpt")
    config = export_onnx(ckpt, tmp_path / "onnx", verbose=False)
    assert config["task"] == "multi_label" and config["thresholds"] == [0.01, 0.99, p + 1e-3]
    onnx = load_predictor(tmp_path / "onnx")
    assert isinstance(onnx, OnnxClassifier) and onnx.thresholds == ml_model.thresholds
    expected = ml_model.predict(TEXTS)
    got = onnx.predict(TEXTS)
    assert [g["labels"] for g in got] == [e["labels"] for e in expected]
    assert got[0]["labels"] == ["bad"]
    for g, e in zip(got, expected):
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-4)


def test_hf_export_applies_a_sigmoid_per_label(tiny_bert, tmp_path):
    from transformers import pipeline

    from bertcls.export import export_hf

    model = BertForTextClassification.from_pretrained(
        tiny_bert, labels=LABELS, task="multi_label", pooling="pooler", seed=0
    ).eval()
    model.thresholds = [0.3, 0.5, 0.7]
    out = export_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["bertcls_thresholds"] == dict(zip(LABELS, [0.3, 0.5, 0.7]))
    got = pipeline("text-classification", model=str(out), top_k=None)(TEXTS)
    for g, e in zip(got, model.predict(TEXTS)):
        assert {d["label"]: d["score"] for d in g} == pytest.approx(e["probabilities"], abs=1e-5)


@pytest.mark.integration
def test_two_processes_with_torchrun(tiny_bert, tmp_path):
    # 37 validation examples over 2 processes, batches of 5: padded multi-hot label rows must not count twice.
    d = tmp_path / "data"
    d.mkdir()
    train_path = write_jsonl(d / "train.jsonl", make_rows(50, 1))
    val_path = write_delimited_csv(d / "val.csv", make_rows(37, 2))
    out = tmp_path / "run"
    args = [
        f"model.name_or_path={tiny_bert}",
        "train.collapse_retries=0",
        f"data.train={train_path}",
        f"data.validation={val_path}",
        f"data.test={val_path}",
        "data.task=multi_label",
        "eval.threshold=tune",
        "train.batch_size=8",
        "train.epochs=1",
        "eval.batch_size=5",
        "train.mixed_precision=no",
        f"output.dir={out}",
    ]
    proc = run_torchrun(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["history"][-1]["validation"]["num_examples"] == 37 and metrics["test"]["num_examples"] == 37
    best = BertForTextClassification.from_pretrained(out / "best")
    assert best.thresholds == list(metrics["best"]["thresholds"].values())
    # the gathered labels were the right ones: one process's predictions give the same metrics
    val = load_split(str(val_path), task="multi_label")
    gold = np.asarray(MULTI.targets(val.labels, best.labels))
    again = multilabel_metrics(gold, best.predict_proba(val.texts).numpy(), best.thresholds)
    assert again == pytest.approx({k: v for k, v in metrics["test"].items() if k != "num_examples"}, rel=1e-4)
