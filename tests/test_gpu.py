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


@pytest.mark.parametrize(
    "extra",
    [
        ("train.mixed_precision=bf16",),
        ("train.mixed_precision=fp16",),
        ("train.mixed_precision=bf16", "train.unpadded=true"),
    ],
    ids=["bf16", "fp16", "bf16-unpadded"],
)
def test_training_steps_on_cuda_never_wait_for_the_gpu(tiny_bert, tiny_data, tmp_path, extra):
    """The host queues step after step: nothing in a step (the non-finite check included) reads the GPU."""
    from bertcls.train import optimizer_step

    from .test_amp import set_up

    run = set_up(tiny_bert, tiny_data, tmp_path / "run", *extra)
    batches = iter(run.train_loader)
    optimizer_step(run, [next(batches)])  # the first step creates AdamW's state and the loss scale
    groups = [[next(batches)] for _ in range(3)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for group in groups:
            optimizer_step(run, group)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert run.nonfinite.read()[:2] == (0, 0)


def test_unpadded_logits_equal_padded_logits_on_cuda(tiny_bert):
    """The variable-length path on the GPU's kernels (flash or memory-efficient SDPA on nested tensors)."""
    from bertcls import BertForTextClassification, speed
    from bertcls.packing import pack

    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["a", "b"], seed=0)
    speed.apply(model)
    model = model.to("cuda").eval()
    texts = ["a good film", "the plot was dull and the ending flat", "fine", "x y z w v u t"]
    batch = {k: v.to("cuda") for k, v in model.tokenizer(texts, padding=True, return_tensors="pt").items()}
    packed = {
        k: v.to("cuda") if torch.is_tensor(v) else v for k, v in pack({k: v.cpu() for k, v in batch.items()}).items()
    }
    with torch.no_grad():
        torch.testing.assert_close(model(**packed).logits, model(**batch).logits, rtol=1e-4, atol=1e-5)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.testing.assert_close(model(**packed).logits, model(**batch).logits, rtol=2e-2, atol=2e-2)
