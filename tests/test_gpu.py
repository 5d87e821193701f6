"""The CUDA path (run by scripts/gpu_check.sh on a GPU; skipped, and counted as skipped, without one)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from .test_train import tiny_cfg

pytestmark = pytest.mark.gpu


def test_cuda_logits_equal_cpu_logits(tiny_model):
    """The first-token top layer and the dropout replacements run on GPU tensors and compute the same function."""
    batch = tiny_model.tokenizer(
        ["a good film", "the plot was dull and the ending flat"], padding=True, return_tensors="pt"
    )
    tiny_model.eval()
    cpu = tiny_model(**batch).logits
    gpu_model = tiny_model.to("cuda")
    gpu = gpu_model(**{k: v.to("cuda") for k, v in batch.items()}).logits.cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)
    gpu_model.train()  # training mode: the cheaper dropout masks, drawn on the GPU, and a backward through them
    out = gpu_model(**{k: v.to("cuda") for k, v in batch.items()}, labels=torch.tensor([1, 0], device="cuda"))
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu_model.parameters() if p.grad is not None)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "no"])
def test_training_steps_on_cuda(tiny_bert, tiny_data, tmp_path, precision):
    from bertcls.train import train

    out = tmp_path / "run"
    result = train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=6", f"train.mixed_precision={precision}"))
    assert result["mixed_precision"] == precision
    assert all(math.isfinite(loss) for _, loss in result["train_loss_curve"])
    assert math.isfinite(result["test"]["loss"])
    assert json.loads((out / "metrics.json").read_text())["num_processes"] == 1


def test_frozen_run_on_cuda_uses_the_cache_and_lbfgs(tiny_bert, tiny_data, tmp_path):
    from bertcls.train import train

    result = train(
        tiny_cfg(
            tiny_bert,
            tiny_data,
            tmp_path / "run",
            "model.freeze_backbone=true",
            f"train.cache_dir={tmp_path / 'cache'}",
            "train.mixed_precision=bf16",
        )
    )
    assert result["feature_cache"]["used"] and result["best"]["metric"] == "loss"
