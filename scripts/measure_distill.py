"""Test accuracy and predict rows/s of a teacher and its distilled students (docs/distill.md).

    python scripts/measure_distill.py --model teacher=runs/teacher/best --model student3=runs/student3/best \
        --model student3-int8=runs/student3-onnx-int8 [--data packaged:rotten_tomatoes/test] [--rows 512] [--rounds 2]

Each model is a bertcls checkpoint (PyTorch, ``model.predict_proba``) or an ONNX export (``OnnxClassifier``). Accuracy
is over the whole ``--data`` split; rows/s over its first ``--rows`` texts, the models taking turns round by round
(on shared cores the load drifts: alternating keeps the comparison fair), the best round of each reported.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bertcls.data import load_split
from bertcls.model import load_checkpoint
from bertcls.onnx_predict import OnnxClassifier, is_onnx_export


def load(path: str, threads: int):
    if is_onnx_export(path):
        return OnnxClassifier.from_folder(path, threads=threads)
    return load_checkpoint(path)


def probabilities(model, texts: list[str], batch_size: int) -> np.ndarray:
    probs = model.predict_proba(texts, None, batch_size)
    return probs.numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--data", default="packaged:rotten_tomatoes/test")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = load_split(args.data)
    texts = [str(t) for t in split.texts]
    models = {name: load(path, args.threads) for name, path in (m.split("=", 1) for m in args.model)}
    results = {}
    for name, model in models.items():
        gold = np.asarray([model.labels.index(str(v)) for v in split.labels])
        results[name] = {"accuracy": float((probabilities(model, texts, args.batch_size).argmax(-1) == gold).mean())}
    timed = texts[: args.rows]
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            probabilities(model, timed, args.batch_size)
            rate = len(timed) / (time.perf_counter() - start)
            results[name]["rows_per_s"] = max(results[name].get("rows_per_s", 0.0), rate)
    print(json.dumps({"data": args.data, "rows": len(timed), "threads": args.threads, "models": results}, indent=2))


if __name__ == "__main__":
    main()
