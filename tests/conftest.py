"""Shared fixtures for the speechbrain-slap test suite.

Everything here is CPU, fp32 and seeded; the tiny encoder shape matches the
``SLAPAudioEncoder`` docstring example so the whole suite stays fast.
Helpers are exposed as fixtures that return functions, so test modules never
import from ``conftest``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

HPARAMS_DIR = Path(__file__).resolve().parents[1] / "hparams"
HOP = 160


def _load_yaml(name: str) -> dict:
    """Loads ``hparams/<name>.yaml`` with HyperPyYAML."""
    from hyperpyyaml import load_hyperpyyaml

    with open(HPARAMS_DIR / f"{name}.yaml") as fin:
        return load_hyperpyyaml(fin)


def _pad_batch(waves, extra: int = 0):
    """Zero-pads 1-D waveforms to a batch whose length is a multiple of the hop.

    ``extra`` adds more zero samples at the end (a multiple of the hop keeps the
    batch length a multiple of the hop). Returns ``(wavs, wav_lens)`` with
    ``wav_lens = n / S`` in float32, as SpeechBrain data loaders produce.
    """
    longest = max(w.numel() for w in waves)
    total = -(-longest // HOP) * HOP + extra
    wavs = torch.zeros(len(waves), total)
    for i, w in enumerate(waves):
        wavs[i, : w.numel()] = w
    lens = torch.tensor([w.numel() / total for w in waves], dtype=torch.float32)
    return wavs, lens


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)


@pytest.fixture
def load_yaml():
    """``load_yaml(name)`` loads ``hparams/<name>.yaml``."""
    return _load_yaml


@pytest.fixture(scope="session")
def base_hparams():
    """The base model (113M-parameter encoder), built once per session."""
    torch.manual_seed(0)
    return _load_yaml("slap_base")


@pytest.fixture
def pad_batch():
    """``pad_batch(waves, extra=0) -> (wavs, wav_lens)``, S a multiple of 160."""
    return _pad_batch


@pytest.fixture
def make_encoder():
    """Factory for a seeded tiny ``SLAPAudioEncoder`` (fp32, eval mode, sdpa)."""
    from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder

    def make(depth=3, local_attention=True, backend="sdpa", seed=0):
        torch.manual_seed(seed)
        encoder = SLAPAudioEncoder(
            embed_dim=64,
            depth=depth,
            num_heads=4,
            mlp_hidden=128,
            local_attention=local_attention,
            attention_backend=backend,
        )
        return encoder.eval()

    return make
