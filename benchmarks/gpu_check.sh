#!/usr/bin/env bash
# GPU check of speechbrain-slap, for a CUDA machine with torch 2.11 but no
# speechbrain stack. On the development machine, first fetch the missing wheels:
#     bash ../shared/gpu/fetch-wheels.sh pytest pluggy iniconfig
# then run this script on the GPU machine from the repo root with `.whl` carried.
# It installs the wheels to /tmp/site, runs the GPU tests (backends vs sdpa in
# bf16, forward and backward; compiled blocks), then benchmarks the base encoder
# (eager and per-block compiled) on the three duration mixes, packed vs padded
# to 30 s. Results go to $OUT (default /tmp/gpu_check); the tables print last.
set -uo pipefail
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

echo "== base encoder, bf16, eager"
timeout 150 python3 benchmarks/encoder_throughput.py --size base --device cuda --dtype bf16 \
    --json "$OUT/eager.json" >"$OUT/eager.txt" 2>"$OUT/eager.log" || echo "eager benchmark failed (see eager.log)"

echo "== GPU tests"
timeout 240 python3 -m pytest -q -m gpu tests -o addopts="" -p no:cacheprovider 2>&1 \
    | tee "$OUT/gpu_tests.txt" | tail -30

echo "== base encoder, bf16, per-block torch.compile"
timeout 170 python3 benchmarks/encoder_throughput.py --size base --device cuda --dtype bf16 --compile \
    --json "$OUT/compiled.json" >"$OUT/compiled.txt" 2>"$OUT/compiled.log" || echo "compiled benchmark failed (see compiled.log)"

echo
echo "== summary"
tail -1 "$OUT/gpu_tests.txt"
cat "$OUT/eager.txt" "$OUT/compiled.txt" 2>/dev/null
