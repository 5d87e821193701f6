"""Frozen-backbone feature cache: run the backbone once per split, keep the pooled outputs on disk.

With the backbone frozen (no layer unfrozen) the head's input never changes, so head-only epochs can run on stored
tensors. A second run with another initializer, learning rate or seed reuses the cache without touching the
backbone. The key hashes everything that changes the features: backbone weights and config, tokenizer, max length,
truncation, pooling, precision, and the texts themselves (content, not the file path), so a stale entry is never
used. Entries are ``<key>.safetensors`` files written atomically and read memory-mapped; the folder is safe to delete at
any time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from bertcls.atomic import atomic_file
from bertcls.data import Split, tokenize_texts
from bertcls.inference import gather_padded, predict_rows, torch_runner
from bertcls.token_store import tokenizer_fingerprint, update_strings

CACHE_VERSION = 2  # 2: the tokenizer's hash leaves out its last call's truncation and padding state
DEFAULT_CACHE_DIR = Path(os.environ.get("BERTCLS_CACHE", Path.home() / ".cache" / "bertcls" / "features"))


def backbone_fingerprint(model) -> str:
    """Hash of the backbone's weights, config and tokenizer; memoized on the model until its weights change."""
    memo = getattr(model, "_bertcls_fingerprint", None)
    version = sum(p._version for p in model.backbone.parameters())
    if memo is not None and memo[0] == version:
        return memo[1]
    h = hashlib.blake2b(digest_size=20)
    for name, tensor in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(model.backbone.config.to_dict(), sort_keys=True, default=str).encode())
    h.update(tokenizer_fingerprint(model.tokenizer).encode())
    digest = h.hexdigest()
    model._bertcls_fingerprint = (version, digest)
    return digest


def cache_key(model, split: Split, max_length: int, precision: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"v{CACHE_VERSION}|{backbone_fingerprint(model)}|{model.spec.pooling}|{max_length}|{precision}".encode())
    truncation = getattr(model, "truncation", "head")
    if truncation != "head":  # keys of head-truncated features stay what they were before truncation existed
        h.update(f"|truncation={truncation}".encode())
    update_strings(h, split.texts)
    update_strings(h, split.text_pairs)
    return h.hexdigest()


# The feature pass's batch when the caller gives none (train() passes eval.batch_size, whose default is the same).
FEATURE_BATCH_SIZE = 64


@torch.inference_mode()
def compute_features(
    model, split: Split, max_length: int, accelerator, precision: str = "no", batch_size: int = FEATURE_BATCH_SIZE
) -> torch.Tensor:
    """Pooled backbone outputs for every text of ``split`` (in order), each process doing its share.

    Batches of ``batch_size`` length-sorted texts; the default 64 beat 128 on CPU in time and in peak memory (the
    longest batch's activations) (docs/benchmarks.md, "Levers").

    The backbone runs under ``precision`` autocast (the run's mixed precision); features are stored in float32.
    """
    model.eval()
    indices = list(range(len(split)))
    with accelerator.split_between_processes(indices) as mine:
        mine = list(mine)
        part = split.subset(mine)
        truncation = getattr(model, "truncation", "head")
        rows, _ = tokenize_texts(model.tokenizer, part.texts, part.text_pairs, max_length, truncation, progress=False)
        bar = tqdm(total=len(mine), desc="features", unit="text", disable=not accelerator.is_main_process, leave=False)
        forward = torch_runner(lambda batch: model.features(**batch), accelerator.device, precision)

        def run_batch(batch):
            bar.update(len(batch["input_ids"]))
            return forward(batch)

        local = torch.from_numpy(
            predict_rows(
                rows, batch_size, model.tokenizer.pad_token_id or 0, run_batch, model.backbone.config.hidden_size
            )
        )
        bar.close()
    if accelerator.num_processes == 1:
        return local
    device = accelerator.device
    feats, index = gather_padded(accelerator, local.to(device), torch.tensor(mine, dtype=torch.long, device=device))
    out = torch.empty(len(split), local.shape[1])
    keep = index >= 0
    out[index[keep].cpu()] = feats[keep].cpu()
    return out


def load_or_compute(
    model,
    split: Split,
    max_length: int,
    precision: str,
    accelerator,
    cache_dir: Path | None,
    log=print,
    batch_size: int = FEATURE_BATCH_SIZE,
) -> tuple[torch.Tensor, bool]:
    """Features of ``split`` from the cache, or computed (and stored, by the main process only).

    Returns (features, whether they came from the cache). ``cache_dir=None`` computes without storing.
    """
    key = cache_key(model, split, max_length, precision)
    path = cache_dir / f"{key}.safetensors" if cache_dir is not None else None
    feats = None
    if path is not None and path.is_file():
        try:
            feats = open_features(path)
        except Exception:  # a damaged entry is recomputed, never trusted
            log(f"feature cache entry {path.name} is unreadable; recomputing it")
    # Hit or miss is decided together: a process that computes alone would wait forever in its gather.
    if accelerator.num_processes > 1:
        hit = torch.tensor(float(feats is not None), device=accelerator.device)
        if accelerator.reduce(hit, "sum").item() < accelerator.num_processes:
            feats = None
    if feats is not None:
        return feats, True
    feats = compute_features(model, split, max_length, accelerator, precision, batch_size)
    if path is not None and accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"source": split.source, "rows": str(len(split)), "pooling": model.spec.pooling}
        with atomic_file(path) as tmp:
            save_file({"features": feats.contiguous()}, tmp, metadata=meta)
    accelerator.wait_for_everyone()
    if path is not None:  # training reads the stored file, memory-mapped, and the computed copy is freed
        feats = open_features(path)
    return feats, False


def open_features(path: Path) -> torch.Tensor:
    """The features of a cache entry, memory-mapped: rows are read from disk as batches need them, so a
    million-row split (1.5 GB of 384-wide float32 rows) does not sit in memory, as a plain safetensors load would.

    Raises:
        ValueError: the file is not a safetensors file with one float32 ``features`` matrix of the size it states.
    """
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    info = header["features"]
    (rows, width), (begin, end) = info["shape"], info["data_offsets"]
    if info["dtype"] != "F32" or end - begin != rows * width * 4 or path.stat().st_size < 8 + size + end:
        raise ValueError(f"{path} is not a complete float32 feature matrix")
    # Copy-on-write: a writable view (torch warns about read-only arrays) that never writes back to the file.
    return torch.from_numpy(np.memmap(path, np.float32, mode="c", offset=8 + size + begin, shape=(rows, width)))


class FeatureDataset(Dataset):
    """Cached features with label ids (or multi-hot rows, as floats, for a multi-label task); items carry their index
    so evaluation can restore input order."""

    def __init__(
        self,
        features: torch.Tensor,
        labels: Sequence[int] | Sequence[Sequence[int]] | None,
        rows: np.ndarray | None = None,
    ):
        # ``rows``: positions of this dataset's examples in ``features`` (the whole split's, for a subset), read
        # as batches need them rather than copied out of the memory-mapped file.
        self.features, self.rows = features, rows
        self.labels = torch.tensor(labels, dtype=torch.long) if labels is not None else None
        if self.labels is not None and self.labels.ndim == 2:
            self.labels = self.labels.float()
        self.lengths = np.ones(len(self), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.features)

    def matrix(self) -> torch.Tensor:
        """This dataset's features as one (examples, hidden) tensor (a copy for a subset)."""
        return self.features[torch.from_numpy(self.rows)] if self.rows is not None else self.features

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i]) if self.rows is not None else i
        item: dict[str, Any] = {"features": self.features[row], "index": i}
        if self.labels is not None:
            item["labels"] = int(self.labels[i]) if self.labels.ndim == 1 else self.labels[i]
        return item

    @staticmethod
    def collate(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {
            "features": torch.stack([it["features"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }
        if "labels" in items[0]:
            labels = [it["labels"] for it in items]
            batch["labels"] = torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels)
        return batch
