#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md ("GPU results") as one script, for a session that has a GPU for
# a few minutes: the CUDA-only tests, then the step / inference / sync suites of the gpu preset, then
# memory and scaling, then ProtoSeg's step under bfloat16. Each part has its own time limit, so one
# slow part does not take the others' time; results go to OUT (default gpu_results/), a log per part.
#
#   bash benchmarks/gpu_checks.sh [OUT]          # from the repository root; python3 with torch
#   PROTOSEG_GPU_REPEATS=10 bash benchmarks/gpu_checks.sh   # fewer timed rounds
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_results}}
REPEATS=${PROTOSEG_GPU_REPEATS:-20}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=src HF_HUB_OFFLINE=1

part() {  # part NAME SECONDS COMMAND...
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s (log: $OUT/$name.log)"
    tail -n 25 "$OUT/$name.log"
}

"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
date -u +%Y-%m-%dT%H:%MZ >> "$OUT/device.txt"
part tests 150 "$PYTHON" -m pytest -q tests/test_cuda_steps.py tests/test_metrics.py tests/test_fake_cuda.py
part step 200 "$PYTHON" -m protoseg benchmark --preset gpu --device cuda --suite step inference sync \
    --repeats "$REPEATS" --out "$OUT/gpu_step.json"
part memory 120 "$PYTHON" -m protoseg benchmark --preset gpu --device cuda --suite memory scaling \
    --out "$OUT/gpu_memory.json"
part bf16 60 "$PYTHON" -m protoseg benchmark --preset gpu --device cuda --suite step sync --methods protoseg \
    --set train.amp_dtype=bfloat16 --repeats "$REPEATS" --out "$OUT/gpu_bf16.json"
