"""Tests for lobes/substeps.py: 160 ms SLAP steps split into finer CTC steps."""

import pytest
import torch
from speechbrain.decoders import ctc_greedy_decode

from speechbrain_slap.lobes.features import SLAPFbank, pad_waveforms
from speechbrain_slap.lobes.frame_encoder import SLAPFrameEncoder
from speechbrain_slap.lobes.substeps import SubstepProjection


def test_output_step_t_k_plus_j_is_substep_j_of_step_t():
    """Output row t * k + j = rows j * H : (j + 1) * H of W x_t; nothing mixes steps."""
    split = SubstepProjection(input_size=12, substeps=4, output_size=3)
    x = torch.randn(2, 5, 12)
    out = split(x)
    assert out.shape == (2, 20, 3)
    full = x @ split.proj.weight.T  # (2, 5, 4 * 3)
    for t in range(5):
        for j in range(4):
            assert torch.equal(out[:, t * 4 + j], full[:, t, j * 3 : (j + 1) * 3])
    # Changing step 2 changes output rows 8-11 only.
    y = x.clone()
    y[:, 2] += 1.0
    changed = (split(y) != out).any(dim=-1).any(dim=0)
    assert changed.nonzero().flatten().tolist() == [8, 9, 10, 11]


def test_sub_steps_can_differ_within_a_step():
    """Unlike repeating a row, the k sub-steps of one step can carry different labels."""
    torch.manual_seed(0)
    split = SubstepProjection(input_size=8, substeps=4, output_size=5)
    out = split(torch.randn(1, 1, 8))
    labels = out[0].argmax(dim=-1)
    assert len(set(labels.tolist())) > 1


def test_padding_stays_zero_and_relative_lengths_stay_exact(make_encoder):
    """Encoder -> concat rows -> sub-steps: each clip's real sub-steps are k times its
    steps, what follows is zero, and the frame encoder's lengths decode exactly."""
    fbank = SLAPFbank(mean=-15.0, std=12.0)
    clips = [0.1 * torch.randn(n) for n in (8000, 20000, 33000)]
    wavs, lens = pad_waveforms(clips, 160)
    feats = fbank(wavs)
    frame_encoder = SLAPFrameEncoder(make_encoder(), freeze=True, bands="concat")
    split = SubstepProjection(frame_encoder.output_size, substeps=8, output_size=16)
    with torch.no_grad():
        out = split(frame_encoder(feats, lens))
    steps = [max(1, (c.numel() // 160 + 1) // 16) for c in clips]
    assert out.shape == (3, 8 * max(steps), 16)
    rel = frame_encoder.output_lengths(feats, lens)
    assert torch.round(rel * out.shape[1]).long().tolist() == [8 * s for s in steps]
    for b, n in enumerate(steps):
        assert out[b, : 8 * n].abs().sum(dim=-1).gt(0).all()
        assert torch.equal(out[b, 8 * n :], torch.zeros_like(out[b, 8 * n :]))
    # SpeechBrain's greedy CTC decoder reads exactly the real sub-steps of each clip.
    decoded = ctc_greedy_decode(torch.randn(3, out.shape[1], 5), rel, blank_id=0)
    assert len(decoded) == 3


def test_gradients_reach_the_projection_with_a_frozen_encoder(make_encoder):
    fbank = SLAPFbank(mean=-15.0, std=12.0)
    frame_encoder = SLAPFrameEncoder(make_encoder(), freeze=True, bands="concat")
    split = SubstepProjection(frame_encoder.output_size, substeps=8, output_size=16)
    split(frame_encoder(fbank(0.1 * torch.randn(1, 16000)))).pow(2).sum().backward()
    assert split.proj.weight.grad is not None and split.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in frame_encoder.parameters())


@pytest.mark.parametrize(
    "kwargs, shape, message",
    [
        ({"substeps": 0}, None, "substeps must be at least 1"),
        ({}, (2, 5, 7), "expected time-step features (batch, steps, 12)"),
        ({}, (5, 12), "expected time-step features"),
    ],
)
def test_bad_inputs_are_refused(kwargs, shape, message):
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        SubstepProjection(input_size=12, output_size=3, **kwargs)(torch.randn(*shape))
