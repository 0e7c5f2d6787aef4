"""Tests for lobes/features.py: SLAPFbank frames, window, precision, normalisation."""

import pytest
import torch
from speechbrain.lobes.features import Fbank

from speechbrain_slap.lobes import features
from speechbrain_slap.lobes.features import SLAPFbank, num_frames


def test_num_frames_rule():
    """num_frames(n) = n // 160 + 1 for ints and tensors."""
    assert num_frames(0) == 1
    assert num_frames(159) == 1
    assert num_frames(160) == 2
    assert num_frames(16000) == 101
    assert num_frames(torch.tensor([1, 320, 479])).tolist() == [1, 3, 3]


@pytest.mark.parametrize(
    "samples, frames",
    [
        (1, 16),
        (100, 16),
        (2399, 16),
        (2400, 16),
        (2401, 16),
        (2560, 17),
        (16000, 101),
        (16159, 101),
        (16160, 102),
    ],
)
def test_frame_count(samples, frames):
    """Output is (B, n // 160 + 1, 64), with at least 16 frames for short waveforms."""
    out = SLAPFbank()(torch.randn(2, samples))
    assert out.shape == (2, frames, 64)
    assert torch.isfinite(out).all()


def test_short_waveform_is_zero_padded_to_one_patch():
    """A waveform shorter than 2400 samples gives the features of it zero-padded to 2400."""
    fbank = SLAPFbank()
    wav = torch.randn(1, 900)
    padded = torch.nn.functional.pad(wav, (0, 1500))
    torch.testing.assert_close(fbank(wav), fbank(padded), atol=0, rtol=0)


def test_output_is_fp32_under_bf16_autocast():
    """bf16 input under CPU bf16 autocast still gives fp32 features close to the fp32 ones."""
    fbank = SLAPFbank(mean=-15.0, std=12.0)
    wav = 0.1 * torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fbank(wav.bfloat16())
    assert out.dtype == torch.float32
    expected = fbank(wav.bfloat16().float())
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_uses_hann_window():
    """The STFT window is Hann(400), not SpeechBrain Fbank's default Hamming."""
    fbank = SLAPFbank()
    window = fbank.fbank.compute_STFT.window
    torch.testing.assert_close(window, torch.hann_window(400), atol=0, rtol=0)
    assert not torch.allclose(window, torch.hamming_window(400))


def test_matches_manual_hann_stft():
    """Features equal the mel filterbank applied to a hand-computed centred Hann power STFT."""
    fbank = SLAPFbank()
    wav = 0.1 * torch.randn(2, 8000)
    spec = torch.stft(
        wav,
        n_fft=400,
        hop_length=160,
        win_length=400,
        window=torch.hann_window(400),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spec.abs().pow(2).transpose(1, 2)  # (B, T, 201)
    expected = fbank.fbank.compute_fbanks(power)
    torch.testing.assert_close(fbank(wav), expected, atol=1e-4, rtol=1e-5)
    # SpeechBrain's Hamming-window Fbank is measurably different.
    hamming = Fbank(sample_rate=16000, n_fft=400, n_mels=64)(wav)
    assert (hamming - expected).abs().mean() > 0.1


def test_normalisation():
    """(fbank - mean) / std with the given statistics, relative to mean=0, std=1."""
    wav = 0.1 * torch.randn(2, 16000)
    raw = SLAPFbank()(wav)
    normalised = SLAPFbank(mean=-15.0, std=12.0)(wav)
    torch.testing.assert_close(normalised, (raw + 15.0) / 12.0, atol=1e-5, rtol=1e-5)


def test_batch_items_are_independent():
    """A clip's features do not depend on the other clips in the batch."""
    fbank = SLAPFbank()
    wav = 0.1 * torch.randn(3, 4800)
    other = wav.clone()
    other[0] = torch.randn(4800)
    torch.testing.assert_close(fbank(other)[1:], fbank(wav)[1:], atol=0, rtol=0)


def noise_clip(n):
    return 0.1 * torch.randn(n)


def silence_then_click(n):
    """Digital silence with a loud click in the last 30 samples (a clip cut mid-event)."""
    clip = torch.zeros(n)
    clip[-30:] = torch.randn(30)
    return clip


@pytest.mark.parametrize("make_clip", [noise_clip, silence_then_click])
@pytest.mark.parametrize("extra", [1, 1601])
def test_clip_frames_do_not_depend_on_trailing_padding(make_clip, extra):
    """A clip's n // 160 + 1 frames are the same alone and zero-padded inside a batch."""
    fbank = SLAPFbank()
    n = 32159  # n % 160 == 159: the first padded frame covers the clip's last samples
    clip = make_clip(n)
    alone = fbank(clip[None])[0]
    batch = torch.stack([torch.nn.functional.pad(clip, (0, extra)), noise_clip(n + extra)])
    in_batch = fbank(batch)[0, : alone.shape[0]]
    assert alone.shape[0] == n // 160 + 1
    torch.testing.assert_close(in_batch, alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(16000,), (1, 1, 16000)])
def test_rejects_bad_shape(shape):
    """Input that is not (batch, samples) raises ValueError."""
    with pytest.raises(ValueError):
        SLAPFbank()(torch.randn(*shape))


def test_rejects_bad_config():
    """n_mels not a multiple of 16 or a non-positive std raise ValueError."""
    with pytest.raises(ValueError):
        SLAPFbank(n_mels=40)
    with pytest.raises(ValueError):
        SLAPFbank(std=0.0)


def test_pad_waveforms_if_present():
    """pad_waveforms pads to a multiple of 160 with zeros and returns n / S lengths."""
    pad_waveforms = getattr(features, "pad_waveforms", None)
    if pad_waveforms is None:
        pytest.skip("features.pad_waveforms not defined")
    waves = [torch.randn(16001), torch.randn(5)]
    wavs, wav_lens = pad_waveforms(waves)
    assert wavs.shape == (2, 16160)
    assert torch.equal(wavs[0, :16001], waves[0]) and torch.equal(wavs[1, :5], waves[1])
    assert wavs[0, 16001:].eq(0).all() and wavs[1, 5:].eq(0).all()
    torch.testing.assert_close(wav_lens, torch.tensor([16001 / 16160, 5 / 16160]))
