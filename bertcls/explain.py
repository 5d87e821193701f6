"""Token attributions: which words of a text a prediction leaned on.

Per text, each word of the original text (the fast tokenizer's subwords merged back by ``word_ids``, located by
its character offsets) gets a score for one class: the predicted one (multi-label: the most probable label), or
the class asked for. Two methods, both through Captum on the word-embedding layer:

- ``ig``: integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks", arXiv
  1703.01365) from a baseline where every word token is ``[PAD]`` (special tokens, the attention mask and the token
  types stay). Completeness: a text's scores sum to the class's logit at the text minus at the baseline, up to the
  Riemann-sum error Captum reports as the convergence delta (``delta`` in each result).
- ``grad_x_input``: the gradient of the class logit times the word embedding; one backward pass, no such sum.

Texts are read as the model reads them (``model.max_length``, ``truncation``): a word cut off gets no score and is
left out. A model that reads long texts as windows gets each window attributed on its own, and a word's score is
its mean over the text's windows (zero in windows without it), so the scores sum to the mean over windows of the
logit differences, as the prediction is the mean of the windows' probabilities.

Importing this module loads no torch (``bertcls.predict`` reads ``METHODS`` for its options, and an ONNX export's
prediction needs no torch); the functions that need it import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bertcls.errors import BertclsError
from bertcls.inference import length_sorted_batches, select_tokens

if TYPE_CHECKING:
    from bertcls.model import BertForTextClassification

METHODS = ("ig", "grad_x_input")
# Texts at a time past which explain() shows a progress bar.
PROGRESS_TEXTS = 64


def available() -> bool:
    """Whether Captum (the ``explain`` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("captum") is not None


def check_method(method: str) -> str:
    if method not in METHODS:
        raise BertclsError(f"unknown attribution method '{method}'; valid: {', '.join(METHODS)}")
    return method


def explain(
    model: BertForTextClassification,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    target: str | Sequence[str] | None = None,
    method: str = "ig",
    n_steps: int = 32,
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Word attributions for ``texts`` (see the module docstring), one dict per text in input order::

        {"label": "positive", "method": "ig", "words": [{"word": "great", "start": 4, "end": 9, "score": 0.8}, ...],
         "pair_words": [...] (with text_pairs), "logit_difference": 1.1, "delta": 0.002 (these two: ig only)}

    ``target``: a label name for every text, one per text, or None for the predicted class. ``n_steps``: integrated
    gradients' steps (more: smaller ``delta``, slower). ``batch_size``: texts per forward (integrated gradients runs
    ``n_steps`` times that many rows in chunks of ``batch_size`` rows). ``progress``: a bar (default: past
    ``PROGRESS_TEXTS`` texts).

    Raises:
        BertclsError: an unknown method or target label, mismatched lengths, bad sizes, Captum missing.
    """
    check_method(method)
    if n_steps < 1 or batch_size < 1:
        raise BertclsError(f"n_steps and batch_size must be at least 1, got {n_steps} and {batch_size}")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise BertclsError(f"{len(texts)} texts but {len(text_pairs)} text pairs; give one pair per text")
    targets = _target_indices(model, target, len(texts))
    attributor = _attributor(model, method)
    rows, doc_ids = _encode(model, texts, text_pairs)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with _gradients_through_backbone(model):
            if targets is None:
                targets = _predicted(model, rows, doc_ids, len(texts), batch_size, device)
            row_targets = [targets[d] for d in doc_ids]
            token_scores, diffs, deltas = _attribute_rows(
                model, attributor, method, rows, row_targets, n_steps, batch_size, device, progress, len(texts)
            )
    finally:
        model.train(was_training)
    return _per_text(model, texts, text_pairs, rows, doc_ids, token_scores, diffs, deltas, targets, method)


# ---------------------------------------------------------------- setup


def _target_indices(model, target, n: int) -> list[int] | None:
    if target is None:
        return None
    names = [target] * n if isinstance(target, str) else list(target)
    if len(names) != n:
        raise BertclsError(f"{n} texts but {len(names)} targets; give one label, or one per text")
    unknown = sorted({t for t in names if t not in model.labels})
    if unknown:
        raise BertclsError(f"unknown target label(s) {unknown}; the model's labels: {', '.join(model.labels)}")
    return [model.labels.index(t) for t in names]


def _attributor(model, method: str):
    try:
        from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
    except ImportError as e:
        raise BertclsError("token attributions need Captum: pip install 'bertcls[explain]'") from e

    def logits(input_ids, attention_mask, token_type_ids):
        return model(input_ids, attention_mask, token_type_ids).logits.float()

    layer = model.backbone.get_input_embeddings()
    return LayerIntegratedGradients(logits, layer) if method == "ig" else LayerGradientXActivation(logits, layer)


@contextlib.contextmanager
def _gradients_through_backbone(model):
    """A frozen backbone runs without autograd (``model.features``); attributions need gradients with respect to
    its inputs, so it counts as unfrozen while they are computed (no weight changes, no weight gradients kept)."""
    frozen = model.freeze_backbone
    model.freeze_backbone = False
    try:
        yield
    finally:
        model.freeze_backbone = frozen


def _encode(model, texts, text_pairs) -> tuple[dict[str, list], list[int]]:
    """Rows as the model reads them (truncated, or windows), each with its tokens' word ids, sequence ids and
    character offsets; and each row's text index."""
    tok = model.tokenizer
    if not getattr(tok, "is_fast", False):
        raise BertclsError("token attributions need a fast tokenizer (for word offsets); this model's is not")
    pairs = list(text_pairs) if text_pairs is not None else None
    out = tok(list(texts), pairs, truncation=False, padding=False, return_offsets_mapping=True, verbose=False)
    columns = {k: out[k] for k in ("input_ids", "token_type_ids") if k in out}
    columns["offsets"] = out["offset_mapping"]
    columns["word"] = [out.word_ids(i) for i in range(len(texts))]
    columns["seq"] = [out.sequence_ids(i) for i in range(len(texts))]
    stride = model.window_stride or None
    rows, doc_ids = select_tokens(columns, out.sequence_ids, model.max_length, model.truncation, stride)
    return rows, doc_ids if doc_ids is not None else list(range(len(texts)))


def _batch(rows, idx: Sequence[int], pad_id: int, device):
    import torch

    width = max(len(rows["input_ids"][i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for r, i in enumerate(idx):
        n = len(rows["input_ids"][i])
        ids[r, :n] = torch.tensor(rows["input_ids"][i])
        mask[r, :n] = 1
        if "token_type_ids" in rows:
            types[r, :n] = torch.tensor(rows["token_type_ids"][i])
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "token_type_ids": types.to(device)}


def _baseline(batch, rows, idx, pad_id: int):
    """The input ids with every word token (not [CLS], [SEP]: their sequence id is None) set to [PAD]."""
    base = batch["input_ids"].clone()
    for r, i in enumerate(idx):
        for j, s in enumerate(rows["seq"][i]):
            if s is not None:
                base[r, j] = pad_id
    return base


def _predicted(model, rows, doc_ids, num_texts: int, batch_size: int, device) -> list[int]:
    """The predicted class of each text: the top probability (of the mean over a text's windows)."""
    import torch

    from bertcls.long_texts import mean_of_windows

    pad_id = model.tokenizer.pad_token_id or 0
    probs = np.zeros((len(doc_ids), model.num_labels), dtype=np.float32)
    with torch.no_grad():
        for idx in length_sorted_batches([len(r) for r in rows["input_ids"]], batch_size):
            logits = model(**_batch(rows, idx, pad_id, device)).logits.float()
            probs[idx] = model.probabilities(logits).cpu().numpy()
    return mean_of_windows(probs, doc_ids, num_texts).argmax(1).tolist()


# ---------------------------------------------------------------- attribution


def _attribute_rows(model, attributor, method, rows, targets, n_steps, batch_size, device, progress, num_texts):
    """Per row: each token's score (summed over the embedding), and for integrated gradients the target logit's
    difference between the input and the baseline and Captum's convergence delta (NaN for gradient x input)."""
    import torch
    from tqdm.auto import tqdm

    pad_id = model.tokenizer.pad_token_id or 0
    n = len(rows["input_ids"])
    scores: list[np.ndarray] = [np.zeros(0)] * n
    diffs, deltas = np.full(n, np.nan), np.full(n, np.nan)
    show = num_texts > PROGRESS_TEXTS if progress is None else progress
    bar = tqdm(total=n, desc="explain", unit="row", disable=not show)
    for idx in length_sorted_batches([len(r) for r in rows["input_ids"]], batch_size):
        batch = _batch(rows, idx, pad_id, device)
        base = _baseline(batch, rows, idx, pad_id)
        target = torch.tensor([targets[i] for i in idx], device=device)
        extra = (batch["attention_mask"], batch["token_type_ids"])
        if method == "ig":
            attr, delta = attributor.attribute(
                batch["input_ids"], base, target=target, additional_forward_args=extra, n_steps=n_steps,
                internal_batch_size=batch_size, return_convergence_delta=True,
            )  # fmt: skip
            delta = delta.detach().double().cpu().numpy()
            deltas[idx] = delta
            # Captum's delta is sum(attributions) - (F(input) - F(baseline)), from its own two forward passes.
            diffs[idx] = attr.detach().double().sum((1, 2)).cpu().numpy() - delta
        else:
            attr = attributor.attribute(batch["input_ids"], target=target, additional_forward_args=extra)
        token = attr.detach().float().sum(-1).cpu().numpy()
        for r, i in enumerate(idx):
            scores[i] = token[r, : len(rows["input_ids"][i])]
        bar.update(len(idx))
    bar.close()
    return scores, diffs, deltas


def _per_text(model, texts, text_pairs, rows, doc_ids, token_scores, diffs, deltas, targets, method):
    """Token scores merged into words of the original texts; windows of one text averaged."""
    windows = np.bincount(np.asarray(doc_ids), minlength=len(texts))
    rows_of: list[list[int]] = [[] for _ in texts]
    for i, d in enumerate(doc_ids):
        rows_of[d].append(i)
    words: list[dict[tuple[int, int], list]] = [{} for _ in texts]
    for i, d in enumerate(doc_ids):
        for j, (w, s) in enumerate(zip(rows["word"][i], rows["seq"][i])):
            if w is None or s is None:
                continue
            start, end = rows["offsets"][i][j]
            entry = words[d].setdefault((s, w), [start, end, 0.0])
            entry[0], entry[1] = min(entry[0], start), max(entry[1], end)
            entry[2] += float(token_scores[i][j]) / int(windows[d])
    out = []
    for d, text in enumerate(texts):
        result: dict[str, Any] = {"label": model.labels[targets[d]], "method": method}
        for s, key, source in ((0, "words", text), (1, "pair_words", text_pairs[d] if text_pairs else None)):
            if source is None:
                continue
            result[key] = [
                {"word": source[a:b], "start": a, "end": b, "score": score}
                for (seq, _), (a, b, score) in sorted(words[d].items())
                if seq == s
            ]
        if method == "ig":
            result["logit_difference"] = float(np.mean(diffs[rows_of[d]]))
            result["delta"] = float(np.mean(deltas[rows_of[d]]))
        out.append(result)
    return out
