"""The optimizer and what happens in one optimizer step: parameter groups with layer-wise learning rates, gradual
unfreezing, micro-batch groups with exact gradient accumulation, non-finite losses, and stop requests."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from accelerate import Accelerator

from bertcls.checkpoint import CHECKPOINTS, StopSignals
from bertcls.config import Config
from bertcls.model import BertForTextClassification


def layer_lr_scales(model: BertForTextClassification, decay: float) -> dict[int, float]:
    """Learning-rate multiplier per backbone parameter (by ``id``) for layer-wise decay (Sun et al. 2019, arXiv
    1905.05583): the top layer and the pooler get 1, each layer below one more factor of ``decay``, and the
    embeddings (everything below the first layer) ``decay ** num_layers``."""
    layers = model.encoder_layers()
    n = len(layers)
    scales = {id(p): decay**n for p in model.backbone.parameters()}
    for i, layer in enumerate(layers):
        scales |= {id(p): decay ** (n - 1 - i) for p in layer.parameters()}
    pooler = getattr(model.backbone, "pooler", None)
    if pooler is not None:
        scales |= {id(p): 1.0 for p in pooler.parameters()}
    return scales


def build_optimizer(model: BertForTextClassification, cfg: Config) -> torch.optim.Optimizer:
    """torch AdamW with no decay on biases and LayerNorm weights, the head on its own learning rate, and (with
    ``train.layer_lr_decay`` < 1) lower rates for lower backbone layers."""
    t = cfg.train
    scales = layer_lr_scales(model, t.layer_lr_decay) if t.layer_lr_decay != 1.0 else {}
    groups: dict[tuple[bool, bool, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("head.")
        no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((is_head, no_decay, scales.get(id(p), 1.0)), []).append(p)
    head_lr = t.head_lr if t.head_lr is not None else t.lr
    param_groups = [
        {
            "params": ps,
            "lr": head_lr if is_head else t.lr * scale,
            "weight_decay": 0.0 if no_decay else t.weight_decay,
        }
        for (is_head, no_decay, scale), ps in groups.items()
    ]
    # The fused kernel is the fastest AdamW on CUDA and on CPU alike (docs/benchmarks.md, "Levers"); the Trainer uses
    # it too.
    return torch.optim.AdamW(param_groups, lr=t.lr, fused=True)


def unfreeze_for_epoch(model: BertForTextClassification, epoch: int, log=print) -> None:
    """Gradual unfreezing (Howard & Ruder 2018, ULMFiT): epoch 0 trains the head alone, epoch k also the top k
    layers, and once every layer is trainable the embeddings join. The optimizer holds every parameter from the
    start; frozen ones get no gradient, so AdamW leaves them (and their weight decay) alone."""
    n = len(model.encoder_layers())
    if epoch > n:
        model.set_trainable(False)
    else:
        model.set_trainable(True, epoch)
    what = "everything" if epoch > n else (f"head + top {epoch} layer(s)" if epoch else "head only")
    log(f"gradual unfreezing, epoch {epoch}: training {what}")


def micro_batch_groups(loader, k: int):
    """The loader's batches in lists of ``k`` (the last list may be shorter): one list per optimizer step."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def backward_group(accelerator: Accelerator, module, group: list[dict], forward, loss_fn, loss_weight) -> list:
    """Forward and backward over one update's micro-batches; returns their (detached) mean losses.

    Each example weighs the same in the update, however many micro-batches and processes it spans: a micro-batch's
    mean loss is scaled by its share of the group's total ``loss_weight`` (over every process), so the gradient is
    the one of a single batch of all the group's examples, a short last group included.
    """
    weights = [loss_weight(b["labels"]) for b in group]
    total = sum(weights)
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, "sum") / accelerator.num_processes  # DDP averages the gradients
    losses = []
    for i, (batch, weight) in enumerate(zip(group, weights, strict=True)):
        labels = batch.pop("labels")
        batch.pop("index", None)
        # Gradients are all-reduced across processes only on the group's last micro-batch.
        with accelerator.no_sync(module) if i < len(group) - 1 else contextlib.nullcontext():
            loss = loss_fn(forward(module, batch), labels)
            accelerator.backward(loss * (weight / total))
        losses.append(loss.detach())
    return losses


class NonFiniteLosses:
    """Non-finite training losses, counted on the device and read by the host only where the loop reads something
    anyway (the loss curve every 10 steps, an evaluation, a checkpoint, the end), never once per step: on a GPU a
    per-step read would make the host wait for each step's kernels before it could queue the next step's.

    A step with a non-finite loss makes no update all the same: ``step_unless`` hands fused AdamW the step's
    ``found_inf`` flag, and the kernel leaves the weights and its step counts alone (the way it skips a GradScaler's
    overflow). Under fp16 the step's flag joins the GradScaler's own (``step_unless``).
    """

    def __init__(self, device: torch.device):
        self.losses = torch.zeros((), dtype=torch.long, device=device)  # non-finite micro-batch losses since a read
        self.steps = torch.zeros((), dtype=torch.long, device=device)  # optimizer steps they made skip
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)  # the first of those steps (-1: none)
        self.first_loss = torch.zeros((), device=device)  # its loss on this process
        self.lrs: dict[int, float] = {}  # the learning rate of each step since a read (host numbers: no sync)

    def count(self, losses: list[torch.Tensor], step: int, lr: float, accelerator: Accelerator) -> torch.Tensor:
        """Count step ``step``'s micro-batch losses (``lr``: its learning rate, for the error); returns its
        ``found_inf`` (1.0: some process saw a non-finite loss, so every process skips the update and they stay
        equal)."""
        self.lrs[step] = lr
        stacked = torch.stack([x.float() for x in losses])
        bad = ~torch.isfinite(stacked)
        n = bad.sum()
        self.losses += n
        if accelerator.num_processes > 1:
            n = accelerator.reduce(n.clone(), "sum")  # a collective, but no wait on the host
        found = n > 0
        first_here = found & (self.first_step < 0)
        self.steps += found.long()
        self.first_step = torch.where(first_here, step, self.first_step)
        # index_select, not stacked[i]: indexing by a 0-d tensor reads the index on the host.
        first_bad = stacked.index_select(0, bad.long().argmax().view(1))[0]
        self.first_loss = torch.where(first_here, first_bad, self.first_loss)
        return found.float()

    def read(self) -> tuple[int, int, int, float, float | None]:
        """``(non-finite losses, skipped steps, first skipped step, its loss, its learning rate)`` since the last
        read; one host sync."""
        losses, steps, first = torch.stack([self.losses, self.steps, self.first_step]).tolist()
        loss, lr = float(self.first_loss), self.lrs.get(first)
        self.losses.zero_(), self.steps.zero_(), self.first_step.fill_(-1)
        self.lrs.clear()
        return losses, steps, first, loss, lr


def step_unless(optimizer, found_inf: torch.Tensor, scaler=None) -> None:
    """``optimizer.step()``, the update skipped on the device where ``found_inf`` is 1: torch's fused AdamW (the only
    optimizer ``build_optimizer`` makes) reads the flag from the optimizer, as a GradScaler hands it over.

    Under fp16 (``scaler``, its gradients unscaled already) the scaler sets that flag itself, from the gradients. A
    non-finite loss can leave them finite (the cross-entropy of a -inf logit is inf, its gradient softmax - onehot),
    so this step's flag joins the scaler's own (which also backs the loss scale off)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # under accelerate's wrapper
    if scaler is not None:
        # GradScaler keeps the flags of unscale_ per optimizer and device (private in torch 2.13; tests/test_amp.py)
        for flag in scaler._per_optimizer_states[id(inner)]["found_inf_per_device"].values():
            torch.maximum(flag, found_inf.to(flag.device), out=flag)
    inner.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        if hasattr(inner, "found_inf"):  # a GradScaler's step (fp16) replaces the flag and deletes it afterwards
            del inner.found_inf


def nan_message(loss: float, step: int, lr: float | None, out: Path) -> str:
    """The error of ``nan_policy=stop``: the first non-finite loss and the step it was seen at."""
    what = f"became {loss}" if not math.isfinite(loss) else "became non-finite on another process"
    return (
        f"the training loss {what} at step {step}{'' if lr is None else f' (learning rate {lr:.3g})'}; stopped "
        "without updating the model "
        f"with it, so {out}/best and {out}/{CHECKPOINTS} keep the last good state. Try a lower train.lr, "
        "train.mixed_precision=no (fp32), gradient clipping (train.max_grad_norm=1.0), or train.nan_policy=skip"
    )


def stop_requested(accelerator: Accelerator, signals: StopSignals, step: int, every: int) -> bool:
    """Whether any process got SIGTERM/SIGINT, asked after each optimizer step. One process: at once. Several must
    agree to stop together, which takes a collective and a read of its result: on CPUs after every step (the read
    costs nothing there, and slow steps must not outlast torchrun's 30 s from SIGTERM to SIGKILL), on GPUs every
    ``every`` steps (where the loss curve is read anyway), so the host does not wait for each step to finish."""
    if accelerator.num_processes == 1:
        return signals.received is not None
    if step % every and accelerator.device.type != "cpu":
        return False
    flag = torch.tensor(int(signals.received is not None), device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item())
