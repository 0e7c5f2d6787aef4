#!/usr/bin/env bash
# GPU check of speechbrain-slap, for a CUDA machine with torch 2.11 but no
# speechbrain stack. On the development machine, first fetch the missing wheels:
#     bash ../shared/gpu/fetch-wheels.sh pytest pluggy iniconfig
# then run this script on the GPU machine from the repo root with `.whl` carried.
# It installs the wheels to /tmp/site, runs the GPU tests (backends vs sdpa in
# bf16, forward and backward; compiled blocks), then benchmarks at base size:
# the full SLAP training step through SLAPBrain.fit_batch (the recipe's code
# path), eager vs compiled (`--compile`), packed vs `packing: false`, with and
# without the contrastive gradient cache, 2 micro-batches per optimizer step, on
# the three duration mixes, with the largest token budget that fits (eager,
# WavCaps-like mix); inference (`encode_audio_batch`); and the data pipeline on
# this machine's CPU workers, against the measured training rate. Results go to
# $OUT (default /tmp/gpu_check); the tables print last, the training step's
# table at the very end, with the seconds each part took. The timeouts add up
# to 565 s.
# PARTS selects parts (default: tests train_step inference data_pipeline); the
# encoder alone, eager and per-block compiled (already measured, see
# benchmarks/README.md), are the parts `eager` and `compiled`.
set -uo pipefail
PARTS=" ${PARTS:-tests train_step inference data_pipeline} "
want() { [[ $PARTS == *" $1 "* ]]; }
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
: >"$OUT/seconds.txt"

# bench NAME TIMEOUT SCRIPT ARGS...: one benchmark, table to NAME.txt, progress to NAME.log.
bench() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    want "$name" || return 0
    echo "== $name"
    local status=""
    timeout "$limit" python3 "$@" --json "$OUT/$name.json" >"$OUT/$name.txt" 2>"$OUT/$name.log" \
        || status=" (failed or timed out, see $name.log)"
    echo "$name: $((SECONDS - start)) s$status" | tee -a "$OUT/seconds.txt"
}

bench eager 75 benchmarks/encoder_throughput.py --size base --device cuda --dtype bf16

if want tests; then
    echo "== GPU tests"
    start=$SECONDS
    timeout 100 python3 -m pytest -q -m gpu tests -o addopts="" -p no:cacheprovider 2>&1 \
        | tee "$OUT/gpu_tests.txt" | tail -30
    echo "gpu_tests: $((SECONDS - start)) s" >>"$OUT/seconds.txt"
fi

bench compiled 110 benchmarks/encoder_throughput.py --size base --device cuda --dtype bf16 --compile
# 3 mixes x 6 variants (eager|compiled x packed|padded, and the cache on packed);
# SIGTERM at the timeout still prints the rows measured.
bench train_step 330 benchmarks/train_step_throughput.py --size base --device cuda --dtype bf16 \
    --accumulation 2 --warmup 2 --steps 2 --search-mixes wavcaps
bench inference 90 benchmarks/inference_throughput.py --size base --device cuda --dtype bf16 \
    --steps 5 --batch-seconds 1320
# The rate to feed: the fastest packed full training step measured above (none if it failed).
RATE=$(python3 -c 'import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print(max(r["audio_s_per_s"] for r in rows if r["mode"] == "packed" and "audio_s_per_s" in r))' \
    "$OUT/train_step.json" 2>/dev/null)
# shellcheck disable=SC2086  # an empty RATE passes no rate
bench data_pipeline 45 benchmarks/data_pipeline_throughput.py --audio-seconds 600 \
    --workers 1 4 --train-rate $RATE

echo
echo "== summary"
cat "$OUT/seconds.txt"
tail -1 "$OUT/gpu_tests.txt" 2>/dev/null
for name in eager compiled inference data_pipeline train_step; do  # the training step last
    want "$name" || continue
    echo "-- $name"
    cat "$OUT/$name.txt" 2>/dev/null
done
