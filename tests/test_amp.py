"""The GPU's training-step code path, run on the CPU: fp16 autocast with a dynamic loss scaler (skipped overflow
steps, the scaler's state in checkpoints), and a step that never makes the host wait for the device."""

from __future__ import annotations

import shutil
import traceback

import pytest
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

import bertcls.run as train_module  # the one-run recipe, whose steps these tests replace
from bertcls.checkpoint import CHECKPOINTS
from bertcls.train import optimizer_step, setup, train

from .test_train import tiny_cfg


def set_up(tiny_bert, tiny_data, out, *extra):
    run = setup(tiny_cfg(tiny_bert, tiny_data, out, *extra))
    run.progress = tqdm(disable=True)
    return run


def one_group(run) -> list[dict]:
    return [next(iter(run.train_loader))]


def weights(run) -> list[torch.Tensor]:
    return [p.detach().clone() for p in run.model.parameters() if p.requires_grad]


def adam_steps(run) -> set[float]:
    return {float(s["step"]) for s in run.optimizer.optimizer.state.values()}


def test_fp16_on_cpu_autocasts_and_scales_the_loss(tiny_bert, tiny_data, tmp_path):
    run = set_up(tiny_bert, tiny_data, tmp_path / "run", "train.mixed_precision=fp16")
    scaler = run.accelerator.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and run.precision == "fp16"
    optimizer_step(run, one_group(run))  # (its scale may overflow at torch's initial 65536: then it backs off)
    scaler.update(new_scale=1024.0)
    dtypes, scaled = [], []
    layer = run.model.backbone.encoder.layer[0].intermediate.dense
    hook = layer.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    real_scale = scaler.scale

    def spied_scale(loss):
        out = real_scale(loss)
        scaled.append((loss.detach().clone(), out.detach().clone()))
        return out

    scaler.scale = spied_scale
    before, steps = weights(run), adam_steps(run)
    optimizer_step(run, one_group(run))
    hook.remove()
    assert dtypes == [torch.float16]  # the backbone ran under fp16 autocast
    [(loss, loss_scaled)] = scaled  # backward ran on the loss times the scale
    torch.testing.assert_close(loss_scaled, loss * 1024.0)
    assert scaler.get_scale() == 1024.0  # a good step keeps the scale (it grows after 2,000 of them)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(run), strict=True))
    assert adam_steps(run) == {max(steps) + 1}


def test_an_fp16_overflow_skips_the_update_and_backs_the_scale_off(tiny_bert, tiny_data, tmp_path):
    run = set_up(tiny_bert, tiny_data, tmp_path / "run", "train.mixed_precision=fp16")
    scaler = run.accelerator.scaler
    optimizer_step(run, one_group(run))  # AdamW has state now (a step counted, or skipped if 65536 overflowed)
    scaler.update(new_scale=2.0**120)  # scaled fp16 gradients overflow to inf
    before, steps = weights(run), adam_steps(run)
    optimizer_step(run, one_group(run))
    assert all(torch.equal(a, b) for a, b in zip(before, weights(run), strict=True))
    assert adam_steps(run) == steps  # the fused kernel left its step counts alone too
    assert scaler.get_scale() == 2.0**119
    # An overflow is the scaler's business, not a non-finite loss: nan_policy does not see it.
    assert run.nonfinite.read()[:2] == (0, 0)
    scaler.update(new_scale=1024.0)
    optimizer_step(run, one_group(run))
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(run), strict=True))
    assert adam_steps(run) == {max(steps) + 1}


@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_an_infinite_loss_with_finite_gradients_makes_no_update(tiny_bert, tiny_data, tmp_path, precision):
    """A constant inf added to the loss leaves every gradient finite: only the loss says the step is bad (under fp16
    the scaler's own flag, from the gradients, would not)."""
    run = set_up(tiny_bert, tiny_data, tmp_path / "run", f"train.mixed_precision={precision}")
    optimizer_step(run, one_group(run))
    if run.accelerator.scaler is not None:
        run.accelerator.scaler.update(new_scale=1024.0)
    real_loss = run.loss_fn
    run.loss_fn = lambda logits, labels: real_loss(logits, labels) + float("inf")
    before, steps, lr_of_step = weights(run), adam_steps(run), run.lr
    optimizer_step(run, one_group(run))
    assert all(torch.equal(a, b) for a, b in zip(before, weights(run), strict=True))
    assert adam_steps(run) == steps
    assert run.nonfinite.read() == (1, 1, 2, float("inf"), lr_of_step)  # what the error and the log say
    run.loss_fn = real_loss
    optimizer_step(run, one_group(run))
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(run), strict=True))


def test_the_loss_scale_is_checkpointed_and_restored(tiny_bert, tiny_data, tmp_path, monkeypatch):
    def growing_scaler(accelerator):  # doubles every good step, so a scale that was not restored shows
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
        accelerator.native_amp = True

    monkeypatch.setattr(train_module, "use_fp16_without_accelerator", growing_scaler)
    extra = ("train.mixed_precision=fp16", "train.max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=5")
    straight = tmp_path / "straight"
    train(tiny_cfg(tiny_bert, tiny_data, straight, *extra))
    saved = straight / CHECKPOINTS / "step-2"
    scale = torch.load(saved / "scaler.pt", weights_only=True)["scale"]
    assert scale == 2.0**12
    resumed = tmp_path / "resumed"
    (resumed / CHECKPOINTS).mkdir(parents=True)
    shutil.copytree(saved, resumed / CHECKPOINTS / "step-2")
    run = set_up(tiny_bert, tiny_data, resumed, *extra, "train.resume_from=latest")
    assert run.accelerator.scaler.get_scale() == scale
    run.accelerator.end_training()
    train(tiny_cfg(tiny_bert, tiny_data, resumed, *extra, "train.resume_from=latest"))
    want, got = (load_file(d / "last" / "model.safetensors") for d in (straight, resumed))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_a_training_step_never_reads_the_device(tiny_bert, tiny_data, tmp_path, monkeypatch, precision):
    """On a GPU each read (item, bool, tolist, float...) would make the host wait for the queued kernels; a step
    reads nothing, a non-finite loss included (check_nonfinite reads it later, with the loss curve)."""
    reads: list[str] = []
    inside = {"step": False}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            if inside["step"]:
                reads.append(_name + "\n" + "".join(traceback.format_stack(limit=4)))  # where, if it fails
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_step = train_module.optimizer_step

    def watched(run, group):
        inside["step"] = True
        try:
            real_step(run, group)
        finally:
            inside["step"] = False

    monkeypatch.setattr(train_module, "optimizer_step", watched)
    poisoned = {"n": 0}
    real_loss = train_module.forward_tokens

    def sometimes_nan(module, batch):
        poisoned["n"] += 1
        logits = real_loss(module, batch)
        return logits * float("nan") if poisoned["n"] == 3 else logits

    monkeypatch.setattr(train_module, "forward_tokens", sometimes_nan)
    out = tmp_path / "run"
    extra = (f"train.mixed_precision={precision}", "train.max_steps=12", "train.nan_policy=skip")
    result = train(tiny_cfg(tiny_bert, tiny_data, out, *extra))
    assert reads == [], reads[0]
    assert result["nan_skipped_steps"] == 1
