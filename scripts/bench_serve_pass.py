"""Time one ``bertcls.serve`` pass of gathered short texts, by forward-call size and thread count (issue #30 §1).

    PYTHONPATH=. python scripts/bench_serve_pass.py [--checkpoint DIR] [--texts 32] [--reps 12]

What the server's worker does for a pass of ``--texts`` short Rotten Tomatoes texts (``bertcls.serve.predictor``),
run in process without HTTP, for each ``--threads``, ``--forward-batch`` and ``--precision`` value; the variants
alternate rep by rep, so a busy machine slows all alike (a thread count that changes between reps costs more than a
steady one: compare thread counts one process each). Reported per variant: the median wall and CPU time (the
process's, all threads) of a pass, CPU per text, and how many tokens the forward calls computed per token the texts
hold (padding included). On a shared machine read CPU time, which other jobs inflate less than wall time, and compare
variants only within a run.
Without ``--checkpoint``: the packaged MiniLM with an untrained head, as ``bench_serve.py`` builds it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import build_checkpoint, short_texts  # noqa: E402


def padded_ratio(lengths: list[int], forward_batch: int) -> float:
    """Tokens computed (each length-sorted call padded to its longest) per token held."""
    order = sorted(lengths, reverse=True)
    computed = sum(len(order[i : i + forward_batch]) * order[i] for i in range(0, len(order), forward_batch))
    return computed / sum(order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a bertcls checkpoint or ONNX export (default: untrained MiniLM)")
    parser.add_argument("--texts", type=int, default=32, help="texts in one pass (the server's --max-batch)")
    parser.add_argument("--forward-batch", type=int, nargs="+", default=[32, 16, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", nargs="+", default=["no"], help="as bertcls.serve's: auto, no, bf16, fp16")
    parser.add_argument("--reps", type=int, default=12)
    args = parser.parse_args()

    import torch

    from bertcls.serve import ServeOptions, load_model, predictor

    with tempfile.TemporaryDirectory(prefix="bench-pass-") as tmp:
        model = load_model(args.checkpoint or build_checkpoint(Path(tmp)))
    texts = [t for t in short_texts(20 * args.texts) if t.strip()]
    passes = [texts[i : i + args.texts] for i in range(0, len(texts) - args.texts + 1, args.texts)]
    variants = [(th, fb, pr) for th in args.threads for fb in args.forward_batch for pr in args.precision]
    runs = {
        v: predictor(model, ServeOptions(max_batch=args.texts, forward_batch=v[1], precision=v[2])) for v in variants
    }
    runs[variants[0]](passes[0], None)  # warm-up
    wall: dict = {v: [] for v in variants}
    cpu: dict = {v: [] for v in variants}
    for rep in range(args.reps):
        for v in variants:
            torch.set_num_threads(v[0])
            w, c = time.perf_counter(), time.process_time()
            runs[v](passes[rep % len(passes)], None)
            wall[v].append(time.perf_counter() - w)
            cpu[v].append(time.process_time() - c)
    lengths = [len(ids) for p in passes for ids in model.tokenizer(p, truncation=True)["input_ids"]]
    print("| threads | forward batch | precision | pass wall ms | pass CPU ms | CPU ms/text | tokens computed/held |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for th, fb, pr in variants:
        ratio = statistics.mean(
            padded_ratio(lengths[i : i + args.texts], fb) for i in range(0, len(lengths), args.texts)
        )
        c = statistics.median(cpu[(th, fb, pr)]) * 1000
        print(
            f"| {th} | {fb} | {pr} | {statistics.median(wall[(th, fb, pr)]) * 1000:.0f} | {c:.0f} | "
            f"{c / args.texts:.1f} | "
            f"{ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
