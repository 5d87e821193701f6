"""``train.recipe``: how a model learns, chosen by the data when ``auto`` (docs/fewshot.md).

A recipe is a function from the run's config to the config it runs with; ``RECIPES`` holds them by name. ``auto``
looks at the examples per class of the smallest class (and, where it is given, unlabeled text) and names one; the
thresholds come from the learning curve in docs/fewshot.md (``scripts/fewshot_curve.py``). Imports no torch.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from bertcls.config import Config
from bertcls.registry import Registry

RecipeFn = Callable[[Config], Config]
RECIPES: Registry[RecipeFn] = Registry("recipe")

# auto: below CONTRASTIVE_FROM examples in the smallest class `frozen` (the label-name prior alone: a supervised
# contrastive batch needs two texts of a class), then `contrastive` up to FINETUNE_FROM, from there the run as
# configured (full fine-tuning by default). The learning curve behind them is in docs/fewshot.md ("Learning
# curve"): contrastive tuning leads up to 128 a class; 256 is where fine-tuning led, and between is not measured.
CONTRASTIVE_FROM = 4
FINETUNE_FROM = 256


def register_recipe(name: str) -> Callable[[RecipeFn], RecipeFn]:
    """Decorator: ``fn(cfg) -> cfg`` becomes ``train.recipe=name``."""
    return RECIPES.register(name)


@register_recipe("finetune")
def finetune(cfg: Config) -> Config:
    """The run as its other keys say (the defaults fine-tune the whole model)."""
    return cfg


@register_recipe("frozen")
def frozen(cfg: Config) -> Config:
    """A frozen, mean-pooled backbone and a linear head initialized from the label texts, fitted by L-BFGS with its
    penalty pulling toward that initialization (``bertcls.probe``): the zero-shot classifier is the prior."""
    m = cfg.model
    # A sentence encoder such as all-MiniLM-L6-v2 was trained mean-pooled; its [CLS] state is no summary.
    model = replace(m, freeze_backbone=True, unfreeze_top_k=0, pooling="mean", hidden_sizes=[])
    if m.head_init == "xavier_uniform":  # the default: the prior replaces it (a user's own choice stays)
        model = replace(model, head_init="label_embeddings")
    return replace(cfg, model=model, train=replace(cfg.train, head_solver="lbfgs", schedule="standard"))


@register_recipe("contrastive")
def contrastive(cfg: Config) -> Config:
    """``frozen`` on a backbone first tuned by the supervised contrastive loss (``bertcls.contrastive``); the train
    step runs it before the features are computed."""
    return frozen(cfg)


@register_recipe("lp_ft")
def lp_ft(cfg: Config) -> Config:
    """A head fitted on the frozen backbone, then full fine-tuning from it (``train.schedule=lp_ft``)."""
    return replace(cfg, train=replace(cfg.train, schedule="lp_ft"))


def choose(per_class: int, unlabeled: bool = False, processes: int = 1) -> tuple[str, str]:
    """The recipe ``auto`` picks for ``per_class`` examples in the smallest class; returns (name, why). Contrastive
    tuning runs in one process: with several (torchrun), ``frozen`` takes its place."""
    # Decision point for data.unlabeled (self-training, bertcls's other few-label path): when unlabeled text is
    # given, its driver trains the recipe named here in each round; nothing here changes with it yet.
    del unlabeled
    if per_class >= FINETUNE_FROM:
        return "finetune", f"{per_class} examples in the smallest class (>= {FINETUNE_FROM}): full fine-tuning"
    if per_class >= CONTRASTIVE_FROM and processes > 1:
        why = f"{per_class} examples in the smallest class (< {FINETUNE_FROM}), {processes} processes (contrastive "
        return "frozen", why + "tuning runs in one): the label-name prior on the frozen backbone"
    if per_class >= CONTRASTIVE_FROM:
        why = f"{per_class} examples in the smallest class (< {FINETUNE_FROM}): contrastive tuning, then a head "
        return "contrastive", why + "from the label names or the class centroids"
    return "frozen", f"{per_class} examples in the smallest class (< {CONTRASTIVE_FROM}): the label-name prior alone"


def examples_per_class(labels: list) -> int:
    """The size of the smallest class among single-label values."""
    counts = Counter(map(str, labels))
    return min(counts.values()) if counts else 0


def resolve(cfg: Config, train_labels: list | None, log: Callable[[str], None] = print) -> Config:
    """The config a run uses: ``train.recipe`` applied (``auto`` replaced by the recipe it picks, and said why)."""
    name = cfg.train.recipe
    if name == "auto":
        if cfg.data.task != "single_label" or train_labels is None:
            name, why = "finetune", "multi-label or streamed data: the run as configured"
        else:
            processes = int(os.environ.get("WORLD_SIZE", "1"))
            name, why = choose(examples_per_class(train_labels), cfg.data.unlabeled is not None, processes)
        log(f"train.recipe=auto chose {name}: {why} (set train.recipe to choose yourself)")
        cfg = replace(cfg, train=replace(cfg.train, recipe=name))
    return RECIPES[name](cfg)
