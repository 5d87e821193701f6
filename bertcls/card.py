"""Model cards: the ``README.md`` written into every checkpoint folder.

``model.save_pretrained`` writes a basic card from what the model knows (backbone, labels, head, training mode);
``train()`` re-writes the cards of ``best/`` and ``last/`` at the end of a run with what only the run knows (data,
config, validation and test metrics).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bertcls.model import BertForTextClassification

CARD_NAME = "README.md"


def _init_name(spec: Any) -> str:
    if isinstance(spec, dict):
        params = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
        return f"{spec.get('name')}({params})" if params else str(spec.get("name"))
    return str(spec)


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


def _metrics_table(rows: list[tuple[str, dict[str, Any] | None]]) -> list[str]:
    present = [(name, m) for name, m in rows if m]
    multi = any("micro_f1" in m for _, m in present)
    keys = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "loss", "num_examples") if multi else None
    keys = keys or ("accuracy", "macro_f1", "loss", "num_examples")
    if not present:
        return []
    lines = ["| split | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for name, m in present:
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k, "")) for k in keys) + " |")
    return lines


def model_card(model: BertForTextClassification, run_info: dict[str, Any] | None = None) -> str:
    """The card as Markdown. ``run_info`` (from a training run) may hold ``base_model``, ``data`` (split name ->
    source), ``config`` (YAML text), ``validation`` and ``test`` (metric dicts), ``checkpoint`` (which one this is),
    ``thresholds`` (multi-label: the folder's, when they are not the model's in memory)."""
    info = run_info or {}
    spec = model.spec
    head = " -> ".join([f"dropout({spec.dropout})"] + [f"Linear({h}) -> {spec.activation}" for h in spec.hidden_sizes])
    multi = model.multi_label
    kind = f"multi-label text classifier over {len(spec.labels)} labels" if multi else None
    kind = kind or f"{len(spec.labels)}-class text classifier"
    saved = info.get("thresholds") or model.thresholds or []
    thresholds = ", ".join(f"`{label}` {t:.4g}" for label, t in zip(spec.labels, saved))
    lines = [
        "---",
        "library_name: bertcls",
        "pipeline_tag: text-classification",
        "tags: [bertcls, text-classification]",
        "---",
        "",
        "# Text classifier (bertcls)",
        "",
        f"A {kind} fine-tuned with bertcls."
        + (f" This is the {info['checkpoint']} checkpoint of a training run." if info.get("checkpoint") else ""),
        "",
        "## Model",
        "",
        f"- **Base model:** {_base_model(model, info)}",
        f"- **Labels ({len(spec.labels)}):** " + ", ".join(f"`{label}`" for label in spec.labels),
        f"- **Head:** {head} -> Linear({len(spec.labels)})" + (" -> sigmoid per label" if multi else ""),
        *([f"- **Thresholds** (a label is predicted at probability >= its threshold): {thresholds}"] if multi else []),
        f"- **Head initializer:** `{_init_name(spec.head_init)}` (bias: `{_init_name(spec.bias_init)}`)",
        f"- **Pooling:** `{spec.pooling}`",
        f"- **Dropout:** {spec.dropout}",
        f"- **Hidden sizes:** {spec.hidden_sizes or 'none (a single linear layer)'}",
        f"- **Mode:** {training_mode(model)}",
        f"- **Max length:** {model.max_length} tokens",
        "",
    ]
    if info.get("data"):
        lines += ["## Training data", ""]
        lines += [f"- **{split}:** `{source}`" for split, source in info["data"].items() if source]
        lines.append("")
    table = _metrics_table([("validation", info.get("validation")), ("test", info.get("test"))])
    if table:
        lines += ["## Results", ""]
        if info.get("metrics_note"):
            lines += [info["metrics_note"], ""]
        lines += [*table, ""]
        test = info.get("test") or {}
        if "accuracy" in test:
            lines += [f"Test accuracy: {test['accuracy']:.4f}", ""]
    if info.get("config"):
        lines += ["## Training config", "", "```yaml", str(info["config"]).rstrip(), "```", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from bertcls import BertForTextClassification",
        "",
        'model = BertForTextClassification.from_pretrained("path/to/this/folder")',
        'model.predict(["a gripping, beautiful film"])',
        "```",
        "",
        'or `python -m bertcls.predict --checkpoint path/to/this/folder "some text"`.',
        "",
        "## Intended use and limits",
        "",
        f"Intended for classifying short texts into the labels above ({', '.join(spec.labels)}), in the language and "
        "domain of the training data. It knows no other labels: "
        + (
            "every input gets each label whose probability reaches its threshold (possibly none). "
            if multi
            else "every input gets one of them, however unrelated. "
        )
        + f"Texts longer than {model.max_length} tokens are truncated. Accuracy on data unlike the training data "
        "(other domains, languages, registers) is unknown and likely lower than the results above; it may reproduce "
        "biases of the training data and of the base model. Check it on your own data before relying on it.",
        "",
    ]
    return "\n".join(lines)


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
    return {
        "checkpoint": checkpoint,
        "base_model": cfg.model.name_or_path,
        "data": {
            "train": cfg.data.train,
            "validation": resolve_split(cfg.data, "validation")
            or f"{cfg.data.validation_fraction:g} of train, held out",
            "test": resolve_split(cfg.data, "test"),
        },
        "config": to_yaml(cfg),
        "validation": validation,
        "test": result.get("test"),
        "metrics_note": note,
    }
