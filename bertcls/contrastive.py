"""Contrastive tuning of the backbone before a head is fitted (SetFit's idea, Tunstall et al. 2022, arXiv 2209.11055).

With a few examples per class, a linear head on frozen features is limited by features that were never told which
texts belong together. SetFit fine-tunes the sentence encoder on pairs (same label: cosine 1, else 0) and then fits
a logistic regression on the tuned embeddings. Here the same idea runs as a supervised contrastive loss over each
batch (Khosla et al. 2020, arXiv 2004.11362): every same-label text in the batch is a positive of every other, all
the rest negatives, on the model's own pooled features. One batch holds up to ``batch_size`` texts, so a step's cost
grows with the batch, not with the number of pairs; dropout stays on, a mild augmentation between steps. The label
texts (names or descriptions) join their class as extra examples, so the tuned space keeps them next to their
class: the ``label_embeddings`` head fitted afterwards starts from a prior that still points the right way.

The backbone is tuned in place; the caller then freezes it and fits the head (``train.recipe=contrastive``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bertcls.model import POOLINGS


def step_count(rows: int, steps_per_batch: int, batch_size: int, max_steps: int) -> int:
    """Steps of tuning for ``rows`` training rows: ``steps_per_batch`` for every ``batch_size`` of them, so each row
    is seen about as often at every size (a fixed count starves larger files: docs/fewshot.md), and at least
    ``steps_per_batch``; at most ``max_steps``."""
    return min(max_steps, max(steps_per_batch, math.ceil(steps_per_batch * rows / batch_size)))


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form): for each anchor with at least one positive,
    minus the mean log-probability of its positives among all the other rows, by cosine similarity / temperature."""
    z = nn.functional.normalize(z.float(), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    count = positives.sum(1)
    has = count > 0
    summed = log_prob.masked_fill(~positives, 0.0).sum(1)
    return -(summed[has] / count[has]).mean()


def batches(y: torch.Tensor, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index batches, each a fresh stratified draw: up to ``batch_size`` rows, the classes taking turns so
    every class present has at least two rows where it can (a class with one row in a batch has no positive)."""
    by_class = [torch.nonzero(y == c).flatten() for c in torch.unique(y)]
    out = []
    for _ in range(steps):
        perms = [rows[torch.randperm(len(rows), generator=generator)] for rows in by_class]
        picked: list[int] = []
        depth = 0
        while len(picked) < batch_size and any(depth < len(p) for p in perms):
            for p in perms:
                if depth < len(p) and len(picked) < batch_size:
                    picked.append(int(p[depth]))
            depth += 1
        out.append(torch.tensor(picked))
    return out


def contrastive_tune(
    model,
    texts: Sequence[str],
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-5,
    temperature: float = 0.07,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[float]:
    """Tune ``model.backbone`` in place on the supervised contrastive loss of its pooled features over ``texts``
    with integer ``labels``; returns the loss of each step. AdamW at ``lr`` with a linear decay; dropout on."""
    backbone = model.backbone
    device = next(backbone.parameters()).device
    was_trainable = [p.requires_grad for p in backbone.parameters()]
    backbone.requires_grad_(True)
    params = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    tokens = model.tokenizer(
        list(texts), truncation=True, max_length=model.max_length, padding=False, return_attention_mask=False
    )["input_ids"]
    pad_id = model.tokenizer.pad_token_id or 0
    losses = []
    backbone.train()
    for step, idx in enumerate(batches(labels, batch_size, steps, generator)):
        ids, mask = pad([tokens[i] for i in idx.tolist()], pad_id, device)
        outputs = backbone(input_ids=ids, attention_mask=mask)
        z = pooled(model, outputs, mask)
        loss = supcon_loss(z, labels[idx].to(device), temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == steps:
            log(f"contrastive step {step + 1}/{steps}: loss {sum(losses[-10:]) / len(losses[-10:]):.4f}")
    for p, trainable in zip(backbone.parameters(), was_trainable, strict=True):
        p.requires_grad_(trainable)
    model.train(model.training)  # frozen parts back in eval mode
    return losses


def blend_centroids(weight: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, share: float) -> torch.Tensor:
    """Each class's row of ``weight`` turned ``share`` of the way toward its training rows' centroid: the unit mean
    of the rows' unit ``features``, mixed with the row's own direction (the label text's), at the row's own norm.
    After tuning, every head separates the training rows, so the head's start is what the L-BFGS fit keeps: the
    label texts alone are a weak start where the names say little (docs/fewshot.md, "Which head")."""
    unit = nn.functional.normalize
    rows = unit(weight.float(), dim=1)
    features, labels = unit(features.float().to(rows.device), dim=1), labels.to(rows.device)
    # A class without training rows keeps its label text's direction.
    centroids = torch.stack([features[labels == c].mean(0) if (labels == c).any() else r for c, r in enumerate(rows)])
    mixed = (1 - share) * rows + share * unit(centroids, dim=1)
    return (unit(mixed, dim=1) * weight.float().norm(dim=1, keepdim=True)).to(weight.dtype)


def centroid_evidence(features: torch.Tensor, label_features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Whether the training rows' own class centroids classify them better than the label texts do, on the same
    (untuned) features: each row against the centroids of the other rows (leave-one-out) and against the label
    texts, by cosine. ``centroids``: the rows only the centroids get right, ``texts``: only the label texts, and
    ``p``: the one-sided exact McNemar p-value of the centroids being the better (a sign test on those rows)."""
    unit = nn.functional.normalize
    f, names = unit(features.float(), dim=1), unit(label_features.float().to(features.device), dim=1)
    labels = labels.to(f.device)
    classes = len(names)
    sums = torch.zeros(classes, f.shape[1], device=f.device).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=classes)
    scores = f @ unit(sums, dim=1).T
    own = (f * unit(sums[labels] - f, dim=1)).sum(1)  # each row against its class without it
    own[counts[labels] < 2] = -2.0  # a class of one row has no centroid to leave it in: a miss
    scores[torch.arange(len(f)), labels] = own
    by_centroid = scores.argmax(1) == labels
    by_text = (f @ names.T).argmax(1) == labels
    b, c = int((by_centroid & ~by_text).sum()), int((~by_centroid & by_text).sum())
    p = sum(math.comb(b + c, i) for i in range(b, b + c + 1)) / 2 ** (b + c) if b + c else 1.0
    return {"centroids": b, "texts": c, "p": p}


def pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def pooled(model, outputs, mask: torch.Tensor) -> torch.Tensor:
    """The model's own pooling of the backbone's outputs (what its head will read)."""
    return POOLINGS[model.spec.pooling](outputs, mask)
