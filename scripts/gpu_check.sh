#!/usr/bin/env bash
# The GPU check (issue 21), one command for a lent GPU, meant to fit in about 8 minutes on one H200:
#   1. the tests marked gpu;
#   2. the default run on the GPU in bf16 and in fp16 (test accuracy, training samples/s);
#   3. scripts/bench.py --device cuda, full fine-tuning, one seed, bf16: the packaged MiniLM and a randomly
#      initialised bert-base-sized model against the tuned Hugging Face Trainer (samples/s, MFU, peak GPU memory);
#      for bert-base also bertcls with train.unpadded=true against its padded default;
#   4. the frozen run (configs/frozen.yaml) on a cold feature cache.
# Each step has a time limit (together 8 minutes), so a hung step fails instead of eating the machine's time.
# Prints one table and exits non-zero if any step failed. Without CUDA it prints "no CUDA device" and exits 3.
#   bash scripts/gpu_check.sh            # logs and JSON in a temporary folder (or $OUT when set)
# Run it from the repository root with the project installed (pip install -e ".[dev]").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
    echo "no CUDA device"
    exit 3
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-$(mktemp -d -t gpu_check-XXXX)}
mkdir -p "$out"
failed=0
table=()

# run NAME SECONDS COMMAND...: run it with its output in $out/NAME.log under a time limit; note ok/FAILED, the seconds
run() {
    local name=$1 limit=$2 start status
    shift 2
    start=$(date +%s)
    # -k: training takes a first SIGTERM as "stop after this step", so a hung step is killed 15 s later
    if timeout -k 15 "$limit" "$@" >"$out/$name.log" 2>&1; then status=ok; else status="FAILED (exit $?)"; failed=1; fi
    table+=("$name|$status|$(($(date +%s) - start)) s|$(summary "$name")")
}

# summary NAME: the numbers that step produced (a run's test metrics; a bench's samples/s, MFU, peak GPU memory and
# accuracy per tool; else the log's last line, as pytest's summary)
summary() {
    "$PY" - "$out" "$1" <<'EOF'
import json, statistics, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
metrics = out / name / "metrics.json"
bench = out / f"{name}.json"
log = (out / f"{name}.log").read_text(errors="replace") if (out / f"{name}.log").exists() else ""
if metrics.exists():
    m = json.loads(metrics.read_text())
    print(f"test accuracy {m['test']['accuracy']:.4f}, {m['train_examples_per_s']:.0f} train samples/s, "
          f"precision {m['mixed_precision']}")
elif bench.exists():
    b = json.loads(bench.read_text())
    tools = {}
    for r in b["runs"]:
        j = r["job"]
        tools.setdefault(f"{j['kind']} {j.get('variant', '')}".strip(), []).append(r)
    mean = lambda rs, k: statistics.mean(r[k] for r in rs)  # noqa: E731
    parts = []
    for tool, rs in tools.items():
        fpt, peak = b["flops_per_token"], b["peak"].get(rs[0]["job"]["precision"])  # (no fpt: a bench cut short)
        mfu = f"{3 * fpt * mean(rs, 'tokens_per_s') / peak:.1%}" if fpt and peak else "?"
        gpu = mean(rs, "peak_gpu_mb") if all(r.get("peak_gpu_mb") for r in rs) else float("nan")
        parts.append(f"{tool}: {mean(rs, 'train_samples_per_s'):.0f}/s, MFU {mfu}, {gpu:.0f} MB GPU, "
                     f"acc {mean(rs, 'test_accuracy'):.3f}")
    if "bertcls" in tools and "trainer tuned" in tools:
        ratio = mean(tools["bertcls"], "train_samples_per_s") / mean(tools["trainer tuned"], "train_samples_per_s")
        parts.append(f"bertcls {ratio:.2f}x the tuned Trainer")
    print("; ".join(parts))
else:
    tail = [l for l in log.splitlines() if l.strip()]
    print(tail[-1][:200] if tail else "")
EOF
}

"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')"
run gpu-tests 75 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/
run default-bf16 60 "$PY" -m bertcls.train output.dir="$out/default-bf16" train.mixed_precision=bf16
run default-fp16 60 "$PY" -m bertcls.train output.dir="$out/default-fp16" train.mixed_precision=fp16
run bench-minilm 80 "$PY" scripts/bench.py --device cuda --parts full --seeds 1 --precisions bf16 \
    --out "$out/bench-minilm.json"
run bench-bert-base 170 "$PY" scripts/bench.py --device cuda --model random:bert-base --parts full,unpadded \
    --seeds 1 --precisions bf16 --out "$out/bench-bert-base.json"
run frozen 30 "$PY" -m bertcls.train --config configs/frozen.yaml output.dir="$out/frozen" \
    train.cache_dir="$out/cache"

printf '\n| step | status | time | numbers |\n| --- | --- | --- | --- |\n'
for row in "${table[@]}"; do printf '| %s |\n' "${row//|/ | }"; done
echo "logs: $out"
exit $failed
