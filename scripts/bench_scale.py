"""bertcls against the Hugging Face Trainer as the training file grows: time to start, wall, peak memory.

    python scripts/bench_scale.py                          # 10k, 100k and 1M rows (about 10 min on 2 CPU cores)
    python scripts/bench_scale.py --sizes 10000 --quick    # a smoke run
    python scripts/bench_scale.py --sizes 10000000 --tools bertcls --steps 100   # 10M rows, bertcls alone

The training files repeat the shipped Rotten Tomatoes training split to each size (written to ``--work``, never
committed); validation and test are the shipped splits. For each size, each tool trains ``--steps`` steps twice in a
fresh process: *cold* (empty token cache and empty ``datasets`` cache) and *warm* (the same caches, again). The Trainer
is set up as transformers' ``run_glue.py`` does: ``load_dataset("csv")`` and a batched ``map`` with the fast tokenizer,
cached by ``datasets`` under its fingerprint, ``group_by_length``, bf16 where the CPU has it, as bertcls's default.

Measured per run: wall time to the start of training (bertcls: its plan line; the Trainer: ``on_train_begin``), wall
time of the whole command, peak resident memory (``wait4``: the process's high-water mark, file-backed pages of
memory-mapped files included) and the peak of its anonymous memory alone (polled from /proc, every 50 ms). Then
tokenization rows/s on the largest size up to 1M rows (bertcls's chunked store against
``datasets.map(batched=True)``), and ``predict`` against ``evaluate`` on ``--predict-rows`` rows with the checkpoint
of the last bertcls run.
Results: a table on stdout and every number in ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bertcls" / "resources" / "rotten_tomatoes"
MINILM = "packaged:all-MiniLM-L6-v2"


# ------------------------------------------------------------------ data


def write_repeated(n: int, dest: Path) -> Path:
    """The shipped training split repeated (in order) to ``n`` rows, as a CSV at ``dest``; reused if present."""
    if dest.exists():
        return dest
    with gzip.open(DATA / "train.csv.gz", "rt", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    tmp = dest.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            w.writerow(body[i % len(body)])
    tmp.rename(dest)
    return dest


# ------------------------------------------------------------------ one measured process


def measure(cmd: list[str], env: dict[str, str], marker: str) -> dict[str, Any]:
    """Run ``cmd``; return its wall time, the time its output first shows ``marker``, its peak RSS (``wait4``) and
    the peak of its anonymous RSS (polled)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    peak_anon = [0]

    def poll() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.returncode is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.05)

    threading.Thread(target=poll, daemon=True).start()
    started, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if started is None and marker in line:
            started = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(lines[-20:])}")
    return {
        "wall_s": round(wall, 1),
        "to_train_start_s": round(started, 1) if started is not None else None,
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "peak_anon_mb": round(peak_anon[0] / 1024),
        "log_tail": [line.rstrip() for line in lines[-4:]],
    }


def bertcls_cmd(train: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "bertcls.train", f"data.train={train}",
        "data.validation=packaged:rotten_tomatoes/validation", "data.test=packaged:rotten_tomatoes/test",
        f"train.max_steps={steps}", f"output.dir={out}", "output.overwrite=true",
    ]  # fmt: skip


def trainer_cmd(train: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, __file__, "--trainer-worker", str(train), "--work", str(out), "--steps", str(steps)]


# ------------------------------------------------------------------ the Trainer, as run_glue.py sets it up


def trainer_worker(train: str, out: str, steps: int) -> None:
    import datasets
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from bertcls.precision import resolve
    from bertcls.resources import packaged_model_dir

    datasets.disable_progress_bars()
    folder = str(packaged_model_dir(MINILM))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    files = {"train": train, "validation": str(DATA / "validation.csv.gz"), "test": str(DATA / "test.csv.gz")}
    raw = datasets.load_dataset("csv", data_files=files)
    names = sorted(set(raw["train"].unique("label")))
    # A new column: datasets keeps an updated column's type (here string), so ids written into "label" come back as str.
    raw = raw.map(lambda b: {"labels": [names.index(x) for x in b["label"]]}, batched=True, remove_columns=["label"])
    tokenized = raw.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True, remove_columns=["text", "movie"]
    )
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(names))

    class Started(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            print("TRAINING STARTS", flush=True)

    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=32,
        learning_rate=1e-4,
        max_steps=steps,
        bf16=resolve("auto", "cpu") == "bf16",
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[Started()],
    )
    trainer.train()
    for split in ("validation", "test"):
        trainer.predict(tokenized[split])


# ------------------------------------------------------------------ tokenization and prediction


def tokenization_rates(train: Path, env: dict[str, str]) -> dict[str, float]:
    code = f"""
import json, time
import datasets
from transformers import AutoTokenizer
from bertcls.data import load_split, tokenize_texts
from bertcls.resources import packaged_model_dir
from bertcls.tables import read_table
tok = AutoTokenizer.from_pretrained(str(packaged_model_dir({MINILM!r})))
split = load_split({str(train)!r})
t = time.perf_counter(); tokenize_texts(tok, split.texts, None, 128, progress=False); ours = time.perf_counter() - t
datasets.disable_caching()
table = read_table({str(train)!r})
t = time.perf_counter()
table.map(lambda b: tok(b["text"], truncation=True, max_length=128), batched=True, remove_columns=table.column_names)
theirs = time.perf_counter() - t
print(json.dumps({{"bertcls_rows_per_s": len(split) / ours, "datasets_map_rows_per_s": len(split) / theirs}}))
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return {k: round(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def prediction(checkpoint: Path, rows: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    data = write_repeated(rows, work / f"train_{rows}.csv")
    out = work / "predictions.csv"
    predict = [sys.executable, "-m", "bertcls.predict", "--checkpoint", str(checkpoint), "--input", str(data)]
    p = measure([*predict, "--output", str(out), "--overwrite"], env, "\0")
    evaluate = [sys.executable, "-m", "bertcls.evaluate", "--checkpoint", str(checkpoint), "--data", str(data)]
    e = measure([*evaluate, "--output", str(work / "eval"), "--overwrite"], env, "\0")
    return {
        "rows": rows,
        "predict": {**p, "rows_per_s": round(rows / p["wall_s"])},
        "evaluate": {**e, "rows_per_s": round(rows / e["wall_s"])},
    }


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--tools", nargs="+", default=["bertcls", "trainer"], choices=["bertcls", "trainer"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--predict-rows", type=int, default=1_000_000, help="0: skip predict/evaluate")
    ap.add_argument("--quick", action="store_true", help="5 steps, predict on 2,000 rows")
    ap.add_argument("--work", type=Path, default=None, help="folder for data and caches (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=Path("bench_scale.json"))
    ap.add_argument("--trainer-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trainer_worker:
        return trainer_worker(args.trainer_worker, str(args.work), args.steps)
    if args.quick:
        args.steps, args.predict_rows = 5, 2_000
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"steps": args.steps, "runs": []}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    checkpoint = None
    for n in args.sizes:
        train = write_repeated(n, work / f"train_{n}.csv")
        for tool in args.tools:
            caches = work / f"caches-{tool}-{n}"
            shutil.rmtree(caches, ignore_errors=True)
            run_env = {**env, "HF_DATASETS_CACHE": str(caches / "datasets"), "BERTCLS_TOKEN_CACHE": str(caches / "tok")}
            out = work / f"run-{tool}-{n}"
            make, marker = (bertcls_cmd, "bertcls: ") if tool == "bertcls" else (trainer_cmd, "TRAINING STARTS")
            for cache in ("cold", "warm"):
                r = measure(make(train, out, args.steps), run_env, marker)
                results["runs"].append({"tool": tool, "rows": n, "cache": cache, **r})
                print(f"{tool:8s} {n:>10,} rows {cache}: {json.dumps({k: v for k, v in r.items() if k != 'log_tail'})}")
            if tool == "bertcls":
                checkpoint = out / "best"
    # On the largest size up to 1M rows: tokenizing 10M rows twice more would take ~20 min here and say nothing new.
    largest = work / f"train_{max([n for n in args.sizes if n <= 1_000_000] or [min(args.sizes)])}.csv"
    results["tokenization"] = tokenization_rates(largest, env)
    print("tokenization:", results["tokenization"])
    if args.predict_rows and checkpoint is not None:
        results["prediction"] = prediction(checkpoint, args.predict_rows, work, env)
        print("prediction:", json.dumps(results["prediction"]))
    args.out.write_text(json.dumps(results, indent=2))
    print(f"all numbers in {args.out}")


if __name__ == "__main__":
    main()
