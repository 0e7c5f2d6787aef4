"""Shared fixtures of the recipe tests: generated clips, tiny SLAP model folders, recipe runs.

Each recipe test builds a tiny fake copy of its dataset's official layout in
``tmp_path`` and runs the recipe end to end in a subprocess in SpeechBrain's
``--debug`` mode (two epochs of two batches), at the tiny model size
``TINY_MODEL`` (``tiny_model_overrides``).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

REPO = Path(__file__).resolve().parents[2]

# The smallest encoder the tests use: 3 blocks (two local, one global) of width 32.
TINY_MODEL = {"embed_dim": 32, "depth": 3, "num_heads": 2, "mlp_hidden": 64}


def _write_clip(path, frequency: float, duration: float = 0.5, sample_rate: int = 16000):
    """Writes a mono 16-bit WAV: a tone at ``frequency`` Hz plus a little noise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    time = np.arange(int(round(duration * sample_rate))) / sample_rate
    noise = np.random.default_rng(int(frequency)).standard_normal(time.size)
    wave = 0.3 * np.sin(2 * np.pi * frequency * time) + 0.01 * noise
    soundfile.write(str(path), wave.astype(np.float32), sample_rate, subtype="PCM_16")
    return path


@pytest.fixture
def write_clip():
    """``write_clip(path, frequency, duration=0.5, sample_rate=16000)`` -> path of a tone WAV."""
    return _write_clip


@pytest.fixture
def make_slap_model_folder():
    """``make_slap_model_folder(folder, seed=0, **architecture)`` -> ``(folder, modules)``.

    Writes the audio side of a SLAP model folder (the model-folder contract):
    ``audio_encoder.ckpt`` and ``audio_pooling.ckpt``, state dicts of a seeded
    ``SLAPAudioEncoder`` and ``MAPooling`` of the ``TINY_MODEL`` size (or the
    given ``embed_dim``, ``depth``, ``num_heads``, ``mlp_hidden``). Returns the
    folder and ``{"audio_encoder": ..., "audio_pooling": ...}``.
    """
    from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder
    from speechbrain_slap.lobes.pooling import MAPooling
    from speechbrain_slap.model_folder import write_checksums

    def make(folder, seed=0, **architecture):
        arch = {**TINY_MODEL, **architecture}
        torch.manual_seed(seed)
        modules = {
            "audio_encoder": SLAPAudioEncoder(n_mels=64, **arch),
            "audio_pooling": MAPooling(input_size=arch["embed_dim"], num_heads=arch["num_heads"]),
        }
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, module in modules.items():
            torch.save(module.state_dict(), folder / f"{name}.ckpt")
        write_checksums(folder, [f"{name}.ckpt" for name in modules])
        return folder, modules

    return make


@pytest.fixture
def tiny_model_overrides():
    """Command-line overrides that shrink a recipe's model to ``TINY_MODEL``."""
    return [f"--{key}={value}" for key, value in TINY_MODEL.items()]


@pytest.fixture
def run_recipe():
    """``run_recipe(script, hparams, *args, timeout=300)`` -> ``CompletedProcess``.

    Runs ``python <script> <hparams> --debug <args>`` from the repository root
    on one OpenMP thread (two threads on a busy 2-core machine are far slower),
    offline, and returns the finished process (stdout and stderr captured).
    """

    def run(script, hparams, *args, timeout=300):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        command = [sys.executable, str(script), str(hparams), "--debug", *map(str, args)]
        return subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )

    return run


def _assert_success(process):
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-6000:]


@pytest.fixture
def assert_success():
    """``assert_success(process)``: exit code 0, else the tail of its output."""
    return _assert_success
