"""Model cards: the ``README.md`` written into every checkpoint and export folder.

A ``huggingface_hub.ModelCard`` rendered from the Jinja template ``templates/model_card.md``. Saving a model
(``bertcls.serialization.save_pretrained``) writes a basic card from what the model knows (backbone, labels, head,
training mode); ``train()`` re-writes the cards of ``best/`` and ``last/`` at the end of a run with what only the run
knows (data, config, validation and test metrics); an export carries its checkpoint's card.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertcls.report import view
from bertcls.tasks import Task, get_task

if TYPE_CHECKING:
    from bertcls.model import BertForTextClassification

CARD_NAME = "README.md"
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"


def _init_name(spec: Any) -> str:
    if isinstance(spec, dict):
        params = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
        return f"{spec.get('name')}({params})" if params else str(spec.get("name"))
    return str(spec)


CONTRASTIVE_MODE = (
    "contrastive: backbone tuned by a supervised contrastive loss on the training texts, then frozen; "
    "head fitted by L-BFGS on its features"
)


def training_mode(model: BertForTextClassification) -> str:
    """``frozen`` (head only), ``top-k`` (head and the top k encoder layers) or ``full`` fine-tuning."""
    if model.freeze_backbone and model.unfreeze_top_k:
        return f"top-k: head and the top {model.unfreeze_top_k} encoder layers trained, the rest frozen"
    if model.freeze_backbone:
        return "frozen: backbone frozen, head only trained"
    return "full: backbone and head fine-tuned"


def _base_model(model: BertForTextClassification, run_info: dict[str, Any]) -> str:
    config = model.backbone.config
    name = run_info.get("base_model") or getattr(config, "name_or_path", "") or getattr(config, "_name_or_path", "")
    return f"{name} ({config.model_type})" if name else f"a {config.model_type} encoder"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metric_rows(
    task: Task, rows: list[tuple[str, dict[str, Any] | None]]
) -> tuple[tuple[str, ...], list[tuple[str, list]]]:
    """The results table: its metric columns (the task's metrics) and, for each split that has metrics, its formatted
    values."""
    keys = (*task.metrics, "num_examples")
    return keys, [(name, [_fmt(m.get(k, "")) for k in keys]) for name, m in rows if m]


def model_card(model: BertForTextClassification, run_info: dict[str, Any] | None = None) -> str:
    """The card as Markdown, rendered from ``templates/model_card.md``. ``run_info`` (from a training run) may hold
    ``base_model``, ``data`` (split name -> source), ``config`` (YAML text), ``validation`` and ``test`` (metric
    dicts), ``metrics_note``, ``checkpoint`` (which one this is), ``mode`` (how it was trained, where the model
    alone cannot tell), ``thresholds`` (multi-label: the folder's, when they are not the model's in memory),
    ``teachers`` (a distilled student's, bertcls.distill)."""
    from huggingface_hub import ModelCard, ModelCardData

    info = run_info or {}
    spec = model.spec
    task = get_task(model.task)
    saved = info.get("thresholds") or model.thresholds or []
    keys, rows = _metric_rows(task, [("validation", info.get("validation")), ("test", info.get("test"))])
    test = info.get("test") or {}
    n = len(spec.labels)
    head = [f"dropout({spec.dropout})"] + [f"Linear({h}) -> {spec.activation}" for h in spec.hidden_sizes]
    metadata = ModelCardData(
        library_name="bertcls", pipeline_tag="text-classification", tags=["bertcls", "text-classification"]
    )
    card = ModelCard.from_template(
        metadata,
        template_path=str(TEMPLATE),
        kind=view(task).kind(n),
        checkpoint=info.get("checkpoint"),
        base_model=_base_model(model, info),
        teachers=info.get("teachers"),
        labels=spec.labels,
        head=" -> ".join(head),
        multi_label=task.per_label,
        thresholds=", ".join(f"`{label}` {t:.4g}" for label, t in zip(spec.labels, saved)),
        head_init=_init_name(spec.head_init),
        bias_init=_init_name(spec.bias_init),
        pooling=spec.pooling,
        dropout=spec.dropout,
        hidden_sizes=spec.hidden_sizes or "none (a single linear layer)",
        mode=info.get("mode") or training_mode(model),
        max_length=model.max_length,
        truncation=model.truncation,
        window_stride=model.window_stride,
        data={split: source for split, source in (info.get("data") or {}).items() if source},
        metric_keys=keys,
        metric_rows=rows,
        metrics_note=info.get("metrics_note"),
        test_accuracy=f"{test['accuracy']:.4f}" if "accuracy" in test else None,
        config=str(info["config"]).rstrip() if info.get("config") else None,
    )
    return str(card)


def write_model_card(
    directory: str | os.PathLike, model: BertForTextClassification, run_info: dict[str, Any] | None = None
) -> Path:
    """Write (or re-write) ``directory/README.md``; returns its path."""
    path = Path(directory) / CARD_NAME
    path.write_text(model_card(model, run_info))
    return path


def run_card_info(cfg: Any, result: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """What a finished training run adds to the card of its ``best`` or ``last`` checkpoint."""
    from bertcls.config import resolve_split, to_yaml

    history = result.get("history") or []
    best_step = (result.get("best") or {}).get("step")
    if checkpoint == "best":
        validation = next((h.get("validation") for h in history if h.get("step") == best_step), None)
    else:
        validation = history[-1].get("validation") if history else None
    note = "Validation: this checkpoint's own evaluation. Test: the best checkpoint (by validation "
    note += f"{(result.get('best') or {}).get('metric', cfg.eval.metric)}), evaluated once at the end of the run."
    held_out = resolve_split(cfg.data, "validation") or f"{cfg.data.validation_fraction:g} of train, held out"
    if not any(h.get("validation") for h in history):  # a small file is not cut (bertcls.small_data)
        held_out = "none (every training row trained)"
        note = "Test: the trained model, evaluated once at the end of the run (no validation split to choose on)."
    return {
        "checkpoint": checkpoint,
        "base_model": cfg.model.name_or_path,
        "teachers": list(cfg.distill.teachers),
        # The model is frozen when it is saved, but a contrastive run tuned its backbone first.
        "mode": CONTRASTIVE_MODE if result.get("recipe") == "contrastive" else None,
        "data": {"train": cfg.data.train, "validation": held_out, "test": resolve_split(cfg.data, "test")},
        "config": to_yaml(cfg),
        "validation": validation,
        "test": result.get("test"),
        "metrics_note": note,
    }
