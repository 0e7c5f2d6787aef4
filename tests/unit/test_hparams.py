"""Tests for hparams/*.yaml: both load and give a working feature -> encoder -> MAP chain."""

import pytest
import torch

from speechbrain_slap.lobes.attention import LOCAL_WINDOW
from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder
from speechbrain_slap.lobes.features import SLAPFbank
from speechbrain_slap.lobes.pooling import MAPooling

EXPECTED = {
    "slap_tiny": {"embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_hidden": 512},
    "slap_base": {"embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_hidden": 3072},
}


@pytest.fixture
def hparams(request, load_yaml, base_hparams):
    """Tiny hparams freshly loaded; base hparams shared across the session."""
    return base_hparams if request.param == "slap_base" else load_yaml(request.param)


@pytest.mark.parametrize("hparams", list(EXPECTED), indirect=True)
def test_yaml_defines_the_audio_chain(hparams, request):
    """Each yaml defines SLAPFbank, SLAPAudioEncoder and MAPooling with the declared sizes."""
    name = request.node.callspec.params["hparams"]
    expected = EXPECTED[name]
    for key, value in expected.items():
        assert hparams[key] == value
    fbank, encoder, pooling = (
        hparams["compute_features"],
        hparams["audio_encoder"],
        hparams["audio_pooling"],
    )
    assert isinstance(fbank, SLAPFbank) and isinstance(encoder, SLAPAudioEncoder)
    assert isinstance(pooling, MAPooling)
    assert (fbank.n_mels, fbank.mean, fbank.std, fbank.hop_samples) == (64, -15.0, 12.0, 160)
    assert encoder.embed_dim == expected["embed_dim"] and len(encoder.blocks) == expected["depth"]
    assert [b.is_global for b in encoder.blocks] == [i % 3 == 2 for i in range(expected["depth"])]
    assert {b.attn.window for b in encoder.blocks if not b.is_global} == {LOCAL_WINDOW}
    assert encoder.attention_backend == "auto"
    assert pooling.num_heads == expected["num_heads"]
    assert pooling.probe.shape == (expected["embed_dim"],)


def test_tiny_forward(load_yaml, pad_batch):
    """Tiny: pooling(encoder(features(wavs), wav_lens), wav_lens) gives finite (B, 128)."""
    hp = load_yaml("slap_tiny")
    wavs, wav_lens = pad_batch([0.1 * torch.randn(n) for n in (32000, 7000, 500)])
    with torch.no_grad():
        tokens = hp["audio_encoder"](hp["compute_features"](wavs), wav_lens)
        emb = hp["audio_pooling"](tokens, wav_lens)
    assert tokens.shape == (3, 4 * (201 // 16), 128)
    assert emb.shape == (3, 128) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    assert (emb[0] - emb[1]).abs().max() > 1e-4


def test_base_forward_one_second(base_hparams):
    """Base: a 1 s clip runs through the chain and gives a finite (1, 768) embedding."""
    hp = base_hparams
    wavs, wav_lens = 0.1 * torch.randn(1, 16000), torch.ones(1)
    with torch.no_grad():
        tokens = hp["audio_encoder"].eval()(hp["compute_features"](wavs), wav_lens)
        emb = hp["audio_pooling"](tokens, wav_lens)
    assert tokens.shape == (1, 24, 768)
    assert emb.shape == (1, 768)
    assert torch.isfinite(emb).all()
