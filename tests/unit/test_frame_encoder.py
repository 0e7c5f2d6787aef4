"""Tests for lobes/frame_encoder.py: time-step features, lengths, batching, freezing."""

import pytest
import torch
from speechbrain.nnet.pooling import StatisticsPooling

from speechbrain_slap.lobes.features import SLAPFbank, pad_waveforms
from speechbrain_slap.lobes.frame_encoder import SLAPFrameEncoder

HOP = 160
BANDS = 4  # 64 mel bins / 16-bin patches
# 0.1 s (under one patch), 0.73 s, 2.05 s and 3.3 s (beyond the local attention
# window of 12 time patches), none a multiple of the hop.
CLIP_SAMPLES = [1601, 11687, 32809, 52817]


def time_steps(num_samples: int) -> int:
    """Time steps of a clip, from its sample count: whole 16-frame patches, at least one."""
    return max(1, (num_samples // HOP + 1) // 16)


@pytest.fixture
def fbank():
    return SLAPFbank(mean=-15.0, std=12.0)


@pytest.fixture
def clips():
    return [0.1 * torch.randn(n) for n in CLIP_SAMPLES]


@pytest.fixture
def batch(fbank, clips):
    """Log-mels of the clips padded into one batch, with their relative lengths."""
    wavs, wav_lens = pad_waveforms(clips, HOP)
    return fbank(wavs), wav_lens


def test_frames_are_the_mean_of_each_time_patch_frequency_tokens(make_encoder, batch):
    """Row t of a clip = mean of the encoder's 4 tokens of time patch t; zeros past the end."""
    feats, lens = batch
    encoder = make_encoder()
    with torch.no_grad():
        frames = SLAPFrameEncoder(encoder, freeze=True)(feats, lens)
        tokens = encoder(feats, lens)  # (B, L, D), time -> frequency order
    steps = [time_steps(n) for n in CLIP_SAMPLES]
    assert frames.shape == (len(CLIP_SAMPLES), max(steps), 64)
    for b, n_steps in enumerate(steps):
        reference = tokens[b, : n_steps * BANDS].reshape(n_steps, BANDS, -1).mean(dim=1)
        assert (frames[b, :n_steps] - reference).abs().max() <= 1e-6
        assert torch.equal(frames[b, n_steps:], torch.zeros_like(frames[b, n_steps:]))
        assert frames[b, :n_steps].abs().sum(dim=-1).gt(0).all()


def test_output_lengths_are_exact(make_encoder, batch):
    """output_lengths * T' gives each clip's number of time steps exactly."""
    feats, lens = batch
    frame_encoder = SLAPFrameEncoder(make_encoder(), freeze=True)
    frame_lens = frame_encoder.output_lengths(feats, lens)
    steps = torch.tensor([time_steps(n) for n in CLIP_SAMPLES], dtype=torch.float32)
    torch.testing.assert_close(frame_lens, steps / steps.max(), rtol=0, atol=0)
    with torch.no_grad():
        frames = frame_encoder(feats, lens)
    assert torch.round(frame_lens * frames.shape[1]).long().tolist() == steps.long().tolist()
    # SpeechBrain's StatisticsPooling with these lengths averages exactly the real
    # steps; its mean carries Gaussian noise of about 1e-5, hence the tolerance.
    stats = StatisticsPooling(return_std=False)(frames, frame_lens)
    for b, n_steps in enumerate(steps.long().tolist()):
        expected = frames[b, :n_steps].mean(dim=0)
        assert (stats[b, 0] - expected).abs().max() <= 1e-4


def test_lengths_none_means_full_clips(make_encoder, fbank):
    """Without lengths every clip is full length; output_lengths are all 1."""
    feats = fbank(0.1 * torch.randn(2, 16000))
    frame_encoder = SLAPFrameEncoder(make_encoder(), freeze=True)
    frames = frame_encoder(feats)
    torch.testing.assert_close(frames, frame_encoder(feats, torch.ones(2)), rtol=0, atol=0)
    assert frames.shape[1] == time_steps(16000)
    assert frame_encoder.output_lengths(feats).tolist() == [1.0, 1.0]


def test_clip_alone_equals_clip_in_batch(make_encoder, fbank, clips, batch):
    """Each clip's frames are the same alone and inside the padded batch (fp32, 1e-5)."""
    feats, lens = batch
    frame_encoder = SLAPFrameEncoder(make_encoder(), freeze=True)
    with torch.no_grad():
        frames = frame_encoder(feats, lens)
        for b, clip in enumerate(clips):
            wav, wav_len = pad_waveforms([clip], HOP)
            alone = frame_encoder(fbank(wav), wav_len)
            assert alone.shape[1] == time_steps(clip.numel())
            assert (frames[b, : alone.shape[1]] - alone[0]).abs().max() <= 1e-5


def test_frozen_encoder_stays_in_eval_mode_without_gradients(make_encoder, batch):
    """freeze=True: train() leaves the encoder in eval mode and nothing gets a gradient."""
    feats, lens = batch
    frame_encoder = SLAPFrameEncoder(make_encoder().train(), freeze=True)
    frame_encoder.train()
    assert frame_encoder.training and not frame_encoder.encoder.training
    assert not any(module.training for module in frame_encoder.encoder.modules())
    assert not any(p.requires_grad for p in frame_encoder.parameters())
    frames = frame_encoder(feats.requires_grad_(True), lens)
    assert not frames.requires_grad
    before = {k: v.clone() for k, v in frame_encoder.state_dict().items()}
    # An optimizer over all parameters (as Brain.init_optimizers builds) changes nothing.
    optimizer = torch.optim.Adam(frame_encoder.parameters(), lr=0.1)
    head = torch.nn.Linear(64, 1)
    head(frames).sum().backward()
    optimizer.step()
    for key, value in frame_encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_fine_tuned_encoder_trains(make_encoder, batch):
    """freeze=False: train() sets train mode, gradients reach the encoder and a step moves it."""
    feats, lens = batch
    frame_encoder = SLAPFrameEncoder(make_encoder(), freeze=False)
    frame_encoder.train()
    assert frame_encoder.encoder.training
    frames = frame_encoder(feats, lens)
    assert frames.requires_grad
    frames.pow(2).mean().backward()
    grads = {
        name: p.grad for name, p in frame_encoder.encoder.named_parameters() if name != "mask_token"
    }
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
    optimizer = torch.optim.SGD(frame_encoder.parameters(), lr=1.0)
    optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(frame_encoder(feats, lens), frames.detach())


def test_concat_rows_are_the_four_band_tokens_side_by_side(make_encoder, batch):
    """bands="concat": row t = tokens (t, 0), (t, 1), (t, 2), (t, 3) concatenated; the mean
    of its four chunks is the bands="mean" row; padding is zero; lengths are unchanged."""
    feats, lens = batch
    encoder = make_encoder()
    concat = SLAPFrameEncoder(encoder, freeze=True, bands="concat")
    mean = SLAPFrameEncoder(encoder, freeze=True)
    assert (concat.output_size, mean.output_size) == (BANDS * 64, 64)
    with torch.no_grad():
        rows = concat(feats, lens)
        tokens = encoder(feats, lens)
        mean_rows = mean(feats, lens)
    steps = [time_steps(n) for n in CLIP_SAMPLES]
    assert rows.shape == (len(CLIP_SAMPLES), max(steps), BANDS * 64)
    for b, n_steps in enumerate(steps):
        for t in (0, n_steps - 1):
            expected = torch.cat([tokens[b, t * BANDS + f] for f in range(BANDS)])
            assert torch.equal(rows[b, t], expected)
        assert torch.equal(rows[b, n_steps:], torch.zeros_like(rows[b, n_steps:]))
    chunk_mean = rows.view(*rows.shape[:2], BANDS, 64).mean(dim=2)
    assert (chunk_mean - mean_rows).abs().max() <= 1e-6
    torch.testing.assert_close(concat.output_lengths(feats, lens), mean.output_lengths(feats, lens))


def test_unknown_band_mode_is_refused(make_encoder):
    with pytest.raises(ValueError, match="bands must be one of"):
        SLAPFrameEncoder(make_encoder(), bands="sum")
