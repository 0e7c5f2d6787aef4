"""End-to-end run of ``recipes/pretrain/train.py`` on a tiny generated corpus.

The recipe runs once per module in a subprocess (``--debug``: two epochs of at
most two batches; the checkpoints go to ``<output_folder>/save``, not
SpeechBrain's temporary debug folder, so ``slap export`` works on the output). It generates the
12/4/4-clip corpus itself into a fresh folder. The tests then check what it
wrote, and that ``--output_folder`` and ``--data_folder`` redirect everything.
"""

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SEED = 4242  # not the yaml's: results/pretrain_tiny_synth/<SEED> must never appear
N_TEST = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.exists() else set()


def _recipe_command(data: Path, output: Path, *extra: str) -> list[str]:
    """The recipe in --debug mode on the tiny corpus, at the tiny test sizes."""
    return [
        sys.executable,
        "recipes/pretrain/train.py",
        "recipes/pretrain/hparams/pretrain_tiny_synth.yaml",
        "--debug",
        f"--data_folder={data}",
        f"--output_folder={output}",
        f"--seed={SEED}",
        "--n_train=12",
        "--n_valid=4",
        f"--n_test={N_TEST}",
        "--corpus_max_duration=4.0",
        "--vocab_size=80",
        "--embed_dim=64",
        "--depth=3",
        "--mlp_hidden=128",
        "--n_prototypes=32",
        *extra,
    ]


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """Runs the recipe once; returns ``(completed_process, output_folder, data_folder)``."""
    root = tmp_path_factory.mktemp("recipe")
    output, data = root / "out", root / "corpus"
    results, default_data = REPO / "results", REPO / "data"
    before = {"results": _tree(results), "data": _tree(default_data)}
    command = _recipe_command(data, output, "--log_interval=1")
    # One OpenMP thread: on a busy 2-core machine two threads are ~100x slower.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    after = {"results": _tree(results), "data": _tree(default_data)}
    return process, output, data, before, after


@pytest.fixture(scope="module")
def output(recipe_run):
    """The output folder of a run that exited with code 0."""
    process, output, *_ = recipe_run
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-6000:]
    return output


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk of a PNG file, checking its signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_recipe_exits_cleanly_and_generates_the_corpus(recipe_run, output):
    """Exit code 0, and the corpus was generated into --data_folder (4 test clips)."""
    _, _, data, *_ = recipe_run
    config = json.loads((data / "corpus.json").read_text())["config"]
    assert (config["n_train"], config["n_valid"], config["n_test"]) == (12, 4, N_TEST)
    assert config["max_duration"] == 4.0
    with open(data / "test.csv", newline="") as fin:
        assert len(list(csv.DictReader(fin))) == N_TEST


def test_recipe_writes_test_results(output):
    """test_results.json holds retrieval, zero-shot and chance metrics in range."""
    results = json.loads((output / "test_results.json").read_text())
    for key in ("t2a_R@1", "t2a_R@5", "t2a_R@10", "a2t_R@1", "a2t_R@5", "a2t_R@10"):
        assert 0.0 <= results[key] <= 1.0, key
    for direction in ("t2a", "a2t"):
        assert results[f"{direction}_R@1"] <= results[f"{direction}_R@5"]
        assert results[f"{direction}_R@5"] <= results[f"{direction}_R@10"]
    # With 4 test clips every text ranks its clip in the top 5.
    assert results["t2a_R@5"] == results["t2a_R@10"] == 1.0
    assert 0.0 <= results["zeroshot_accuracy"] <= 1.0
    assert 0.0 <= results["zeroshot_caption_accuracy"] <= 1.0  # the captioner's reading
    assert 0.0 <= results["zeroshot_onset_accuracy"] <= 1.0  # the onset windows' reading
    assert results["n_test_audio"] == N_TEST
    assert results["chance_R@1"] == pytest.approx(1.0 / N_TEST)
    assert results["mean_R@1"] == pytest.approx(0.5 * (results["t2a_R@1"] + results["a2t_R@1"]))


def test_recipe_writes_plots(output):
    """training_curves.png and test_similarity.png are real, non-trivial PNGs."""
    for name in ("training_curves.png", "test_similarity.png"):
        path = output / name
        width, height = _png_size(path)
        assert width >= 200 and height >= 200, (name, width, height)
        assert path.stat().st_size > 5000, name


def test_recipe_writes_logs(output):
    """train_log.txt has both debug epochs and the test line; every step is logged."""
    log = (output / "train_log.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in log[:2]] == ["epoch: 1", "epoch: 2"]
    assert "valid mean_R@1" in log[0] and "train loss_ssl" in log[0]
    assert log[-1].startswith("Epoch loaded") and "test t2a_R@1" in log[-1]
    with open(output / "train_steps.jsonl") as fin:
        records = [json.loads(line) for line in fin]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert all({"loss_clap", "loss_ssl", "loss_cap", "lr"} <= r.keys() for r in records)
    for name in ("hyperparams.yaml", "log.txt", "env.log", "train.py"):
        assert (output / name).is_file(), name


def test_recipe_saves_a_checkpoint(output):
    """save/ holds a CKPT+ folder with every recoverable; teacher and schedule agree."""
    checkpoints = sorted((output / "save").glob("CKPT+*"))
    assert checkpoints, list((output / "save").iterdir())
    latest = checkpoints[-1]
    for name in (
        "CKPT.yaml",
        "audio_encoder.ckpt",
        "teacher.ckpt",
        "ssl_head.ckpt",
        "ssl_loss.ckpt",
        "clap_loss.ckpt",
        "caption_decoder.ckpt",
        "text_encoder.ckpt",
        "lr_schedule.ckpt",
        "optimizer.ckpt",
        "brain.ckpt",
        "counter.ckpt",
    ):
        assert (latest / name).is_file(), name
    assert "mean_R@1" in (latest / "CKPT.yaml").read_text()
    steps = int(torch.load(latest / "lr_schedule.ckpt", weights_only=True)["step"])
    teacher = torch.load(latest / "teacher.ckpt", weights_only=True)
    assert steps >= 2  # at least one optimizer step in each of the two epochs
    assert int(teacher["step"]) == steps
    assert (output / "save" / "tokenizer" / "80_unigram.model").is_file()


def test_a_debug_run_exports_to_a_loadable_model_folder(output, tmp_path):
    """``--debug`` without ``--debug_persistently``: ``slap export`` finds the checkpoint."""
    from speechbrain_slap.cli import main

    folder = tmp_path / "model"
    assert main(["export", str(output), str(folder)]) == 0
    assert (folder / "hyperparams.yaml").is_file() and (folder / "SHA256SUMS").is_file()


def test_output_folder_redirects_everything(recipe_run, output):
    """Nothing is written to the repo's results/ or data/ folders."""
    _, _, _, before, after = recipe_run
    assert not (REPO / "results" / "pretrain_tiny_synth" / str(SEED)).exists()
    default_corpus = REPO / "data" / "slap_synth"
    if default_corpus not in before["data"]:
        assert not default_corpus.exists()
    # Other runs may be writing into their own run folders (results/<name>/<seed>).
    running = {p for p in before["results"] if len(p.relative_to(REPO / "results").parts) == 2}
    new = {
        p
        for p in after["results"] - before["results"]
        if not any(parent in running for parent in p.parents)
    }
    assert not new, sorted(new)


def test_bf16_run_writes_results(tmp_path, recipe_run):
    """``--precision=bf16`` (SpeechBrain's autocast) trains and evaluates end to end."""
    _, _, data, *_ = recipe_run
    output = tmp_path / "bf16"
    command = _recipe_command(data, output, "--precision=bf16")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert process.returncode == 0, process.stderr[-6000:]
    results = json.loads((output / "test_results.json").read_text())
    assert 0.0 <= results["t2a_R@1"] <= 1.0
    assert results["n_test_audio"] == N_TEST
