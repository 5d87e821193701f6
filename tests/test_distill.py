"""bertcls.distill: the layer-dropped student, the distillation loss, and whole runs on the tiny model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from bertcls import BertForTextClassification
from bertcls.config import load_config
from bertcls.distill import distill, kept_layers, soft_targets, student_backbone
from bertcls.errors import BertclsError
from bertcls.heads import find_encoder_layers
from bertcls.losses import build_distill_loss
from bertcls.train import train
from tests.conftest import assert_one_line_error, run_cli
from tests.test_train import tiny_overrides


def test_kept_layers_spread_as_distilbert():
    assert kept_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice from BERT-base
    assert kept_layers(6, 3) == [0, 2, 5]
    assert kept_layers(6, 2) == [0, 5]
    assert kept_layers(6, 6) == list(range(6))
    with pytest.raises(BertclsError, match="keep 1 to 6"):
        kept_layers(6, 7)


def test_student_keeps_the_teachers_chosen_layers(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=20)
    teacher = BertModel(config)
    student = student_backbone(teacher, 3)
    layers = find_encoder_layers(student)
    assert len(layers) == 3 and student.config.num_hidden_layers == 3
    assert teacher.config.num_hidden_layers == 6 and len(find_encoder_layers(teacher)) == 6  # teacher untouched
    for mine, theirs in zip(layers, [0, 2, 5], strict=True):
        ours, source = mine.state_dict(), find_encoder_layers(teacher)[theirs].state_dict()
        assert ours.keys() == source.keys()
        assert all(torch.equal(ours[k], source[k]) for k in ours)
    emb_s, emb_t = student.embeddings.state_dict(), teacher.embeddings.state_dict()
    assert all(torch.equal(emb_s[k], emb_t[k]) for k in emb_t)
    # Saved and loaded again, it is a 3-layer encoder with the same weights.
    student.save_pretrained(tmp_path)
    again = BertModel.from_pretrained(tmp_path)
    assert again.config.num_hidden_layers == 3
    kept, chosen = find_encoder_layers(again)[1], find_encoder_layers(teacher)[2]
    assert torch.equal(kept.output.dense.weight, chosen.output.dense.weight)


def test_distill_loss_matches_torch_reference():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    teacher = torch.randn(6, 3)
    t, alpha = 2.5, 0.3
    probs = soft_targets(teacher.softmax(-1).numpy(), np.array([0, 2, -1, 1, -1, 0]), t)
    targets = torch.from_numpy(probs)
    # soft_targets tempers probabilities exactly as softmax(z / T) would
    assert torch.allclose(targets[:, :3], (teacher / t).softmax(-1), atol=1e-6)
    got = build_distill_loss(t, alpha)(logits, targets)
    kl = torch.nn.KLDivLoss(reduction="none")((logits / t).log_softmax(-1), (teacher / t).softmax(-1)).sum(-1) * t * t
    hard = torch.tensor([0, 2, -1, 1, -1, 0])
    ce = torch.nn.CrossEntropyLoss(reduction="none")(logits, hard.clamp(min=0))
    want = torch.where(hard >= 0, alpha * ce + (1 - alpha) * kl, kl).mean()
    assert torch.allclose(got, want, atol=1e-6)
    # alpha=0: labels ignored, pure T²·KL; equal distributions: zero
    assert torch.allclose(build_distill_loss(t, 0.0)(logits, targets), kl.mean(), atol=1e-6)
    same = torch.from_numpy(soft_targets(logits.softmax(-1).numpy(), np.full(6, -1), t))
    assert build_distill_loss(t, 0.0)(logits, same).abs().item() < 1e-5


@pytest.fixture(scope="module")
def teachers(tiny_bert, tiny_data, tmp_path_factory):
    """Two tiny teachers (different seeds), trained on the tiny data."""
    paths = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp("teacher") / "run"
        train(load_config(None, tiny_overrides(tiny_bert, tiny_data, out, f"train.seed={seed}", "train.epochs=3")))
        paths.append(str(out / "best"))
    return paths


def unlabeled(path: Path, source: Path) -> Path:
    with source.open() as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    path.write_text("text\n" + "\n".join(texts) + "\n")
    return path


def student_overrides(tiny_data, out: Path, *extra: str) -> list[str]:
    return [
        f"data.validation={tiny_data['validation']}",
        f"data.test={tiny_data['test']}",
        "data.max_length=32",
        "train.batch_size=8",
        "train.epochs=2",
        "train.mixed_precision=no",
        "train.collapse_retries=0",
        f"output.dir={out}",
        *extra,
    ]


@pytest.mark.auto_recipe  # train.recipe=auto as shipped: soft targets are no few-label file to pick a recipe for
def test_distilled_student_is_a_checkpoint_naming_its_teacher(teachers, tiny_data, tmp_path):
    out = tmp_path / "student"
    result = distill(load_config(None, student_overrides(tiny_data, out)), teachers[:1], str(tiny_data["train"]))
    assert "accuracy" in result["test"] and result["recipe"] == "finetune"
    student = BertForTextClassification.from_pretrained(out / "best")
    teacher = BertForTextClassification.from_pretrained(teachers[0])
    assert len(find_encoder_layers(student.backbone)) == 1  # null layers: half of the teacher's 2
    assert student.labels == teacher.labels
    probs = student.predict_proba(["a fine film", "dull"]).numpy()
    assert probs.shape == (2, 2) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    card = (out / "best" / "README.md").read_text()
    assert "Distilled from" in card and teachers[0] in card
    assert (out / "metrics.json").is_file() and (out / "student-init" / "config.json").is_file()


def test_unlabeled_data_and_two_teachers(teachers, tiny_data, tmp_path):
    data = unlabeled(tmp_path / "pool.csv", tiny_data["train"])
    out = tmp_path / "student"
    cfg = load_config(None, student_overrides(tiny_data, out, "distill.layers=2", "distill.temperature=3"))
    result = distill(cfg, teachers, str(data))
    assert "accuracy" in result["test"]
    card = (out / "best" / "README.md").read_text()
    assert all(t in card for t in teachers) and "teachers' mean probabilities" in card
    student = BertForTextClassification.from_pretrained(out / "best")
    assert len(find_encoder_layers(student.backbone)) == 2


def test_distill_cli_refuses_bad_input_before_writing(teachers, tiny_data, tmp_path):
    out = tmp_path / "student"
    proc = run_cli("bertcls.distill", "--teacher", str(tmp_path / "nope"), "--data", str(tiny_data["train"]),
                   f"output.dir={out}")  # fmt: skip
    assert_one_line_error(proc, "nope")
    proc = run_cli("bertcls.distill", "--teacher", teachers[0], "--data", str(tiny_data["train"]),
                   "distill.layers=5", f"output.dir={out}", "data.max_length=32")  # fmt: skip
    assert_one_line_error(proc, "distill.layers=5")
    proc = run_cli("bertcls.distill", "--teacher", teachers[0], "--data", str(tiny_data["train"]),
                   "loss.label_smoothing=0.1", f"output.dir={out}")  # fmt: skip
    assert_one_line_error(proc, "loss.label_smoothing")
    assert not (out / "best").exists()
