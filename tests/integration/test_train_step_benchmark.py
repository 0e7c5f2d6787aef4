"""``benchmarks/train_step_throughput.py`` runs on the CPU (tiny model, one step per variant).

The GPU numbers come from ``benchmarks/gpu_check.sh``; this keeps the
script's CPU path working: the recipe's Brain built per variant, the
optimizer steps of two micro-batches through ``SLAPBrain.fit_batch``, the FLOP
count, the gradient cache's ``clap_negatives`` and the table printed last.
The compiled variants are left out here (inductor takes minutes on this CPU;
``test_compile.py`` covers ``--compile``).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ["eager/packed/plain", "eager/padded/plain", "eager/packed/cache"]


@pytest.mark.timeout(300)
def test_cpu_run_measures_every_variant(tmp_path):
    results_file = tmp_path / "results.json"
    command = [
        sys.executable,
        "benchmarks/train_step_throughput.py",
        "--device=cpu",
        "--arch=tiny",
        "--threads=1",
        "--token-budget=500",
        "--mixes",
        "audiocaps",
        "--warmup=0",
        "--steps=1",
        "--variants",
        *VARIANTS,
        f"--json={results_file}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=280
    )
    assert process.returncode == 0, process.stderr[-6000:]
    results = json.loads(results_file.read_text())
    assert results["header"]["accumulation"] == 2 and "interrupted" not in results["header"]
    rows = {(r["compile"], r["mode"], r["cache"]): r for r in results["rows"]}
    assert set(rows) == {
        ("eager", "packed", "off"),
        ("eager", "padded", "off"),
        ("eager", "packed", "on"),
    }
    clips = rows["eager", "packed", "off"]["clips"]  # two 10 s clips per micro-batch, 2 of them
    assert clips == 4
    for row in rows.values():
        assert row["clips"] == clips and row["audio_s"] == 40.0
        assert row["step_ms"] > 0 and row["audio_s_per_s"] > 0 and 0 < row["mfu"] < 2
    assert rows["eager", "packed", "on"]["clap_negatives"] == clips  # the whole step
    assert rows["eager", "packed", "off"]["clap_negatives"] == clips / 2  # one micro-batch
    # Encoder passes per step: the student's views (the yaml's ssl_view) and the teacher;
    # the cache's first pass encodes the CLAP view once more.
    yaml_text = (REPO / "recipes/pretrain/hparams/pretrain_tiny_synth.yaml").read_text()
    (view,) = re.findall(r"^ssl_view:\s*(\w+)", yaml_text, re.MULTILINE)
    passes = {"dual": 2, "shared": 1}[view] + 1
    tokens = rows["eager", "packed", "off"]["tokens"]
    assert rows["eager", "packed", "off"]["encoder_tokens"] == passes * tokens
    assert rows["eager", "packed", "on"]["encoder_tokens"] == (passes + 1) * tokens
    assert rows["eager", "padded", "off"]["encoder_tokens"] == passes * 748 * clips
    last_lines = process.stdout.strip().splitlines()[-5:]  # header, rule, 3 rows
    assert last_lines[0].startswith("| mix | compile | mode | cache |")
    assert last_lines[-1].startswith("| audiocaps | eager | packed | on |")
