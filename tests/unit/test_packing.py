"""Tests for lobes/packing.py: patch order, packing layout, duration -> token rule."""

import math

import pytest
import torch

from speechbrain_slap.lobes.features import SLAPFbank, num_frames
from speechbrain_slap.lobes.packing import (
    PackedBatch,
    frames_from_relative_lengths,
    num_time_patches,
    num_tokens_for_duration,
    pack_padded,
    patchify,
)


def encoded_feats(batch, frames, n_mels):
    """Log-mel batch whose value at (b, t, m) is ``b * 1e5 + t * 100 + m`` (exact in fp32)."""
    b = torch.arange(batch)[:, None, None]
    t = torch.arange(frames)[None, :, None]
    m = torch.arange(n_mels)[None, None, :]
    return (b * 100000 + t * 100 + m).float()


def reference_patchify(feats, frames):
    """Hand-built patchify with explicit loops: token n = (time n // F, band n % F)."""
    batch, total, n_mels = feats.shape
    n_freq = n_mels // 16
    values = feats.tolist()
    tokens, clip_id, pos_t, pos_f, seqlens = [], [], [], [], []
    for b in range(batch):
        n_time = max(1, int(frames[b]) // 16)
        seqlens.append(n_time * n_freq)
        for n in range(n_time * n_freq):
            tp, band = n // n_freq, n % n_freq
            patch = []
            for i in range(16):  # frames of the patch, time-major
                for j in range(16):  # bins of the patch
                    t, m = tp * 16 + i, band * 16 + j
                    patch.append(values[b][t][m] if t < total else 0.0)
            tokens.append(patch)
            clip_id.append(b)
            pos_t.append(tp)
            pos_f.append(band)
    return torch.tensor(tokens), clip_id, pos_t, pos_f, seqlens


@pytest.mark.parametrize(
    "total, n_mels, frames",
    [
        (101, 64, [101, 40, 10, 16]),  # ragged tail dropped, short clip keeps 1 patch
        (64, 64, [64, 63, 33]),
        (37, 32, [37, 20, 1]),  # 2 frequency bands
        (10, 64, [10, 3]),  # batch shorter than one patch: zero-padded
    ],
)
def test_patchify_matches_loop_reference(total, n_mels, frames):
    """patchify gives time->frequency token order, time-major patches, padding dropped."""
    feats = encoded_feats(len(frames), total, n_mels)
    packed = patchify(feats, torch.tensor(frames))
    tokens, clip_id, pos_t, pos_f, seqlens = reference_patchify(feats, frames)

    assert packed.tokens.shape == (sum(seqlens), 256)
    assert torch.equal(packed.tokens, tokens)
    assert packed.clip_id.tolist() == clip_id
    assert packed.pos_t.tolist() == pos_t
    assert packed.pos_f.tolist() == pos_f
    assert packed.cu_seqlens.dtype == torch.int32
    assert packed.cu_seqlens.tolist() == [0] + torch.tensor(seqlens).cumsum(0).tolist()
    assert packed.max_seqlen == max(seqlens)
    assert packed.batch_size == len(frames)
    assert packed.seqlens.tolist() == seqlens


def test_patchify_token_decodes_to_frame_and_bin():
    """Token n of a clip holds frames 16*(n//4)+i and bins 16*(n%4)+j at entry 16*i+j."""
    feats = encoded_feats(1, 80, 64)
    packed = patchify(feats, torch.tensor([80]))
    assert packed.tokens.shape == (20, 256)
    for n in range(20):
        patch = packed.tokens[n].view(16, 16)
        frame = (patch // 100).long()
        mel = (patch % 100).long()
        assert torch.equal(frame, (16 * (n // 4) + torch.arange(16))[:, None].expand(16, 16))
        assert torch.equal(mel, (16 * (n % 4) + torch.arange(16))[None, :].expand(16, 16))


def test_patchify_layout_values():
    """cu_seqlens, max_seqlen, clip_id and local_index for frames (101, 40, 10)."""
    packed = patchify(torch.randn(3, 101, 64), torch.tensor([101, 40, 10]))
    assert packed.cu_seqlens.tolist() == [0, 24, 32, 36]
    assert packed.cu_seqlens.dtype == torch.int32
    assert packed.max_seqlen == 24
    assert packed.clip_id.tolist() == [0] * 24 + [1] * 8 + [2] * 4
    assert packed.local_index().tolist() == list(range(24)) + list(range(8)) + list(range(4))


def test_patchify_rejects_bad_feats():
    """patchify raises ValueError on non-3-D feats or n_mels not a multiple of 16."""
    with pytest.raises(ValueError):
        patchify(torch.randn(101, 64), torch.tensor([101]))
    with pytest.raises(ValueError):
        patchify(torch.randn(1, 101, 40), torch.tensor([101]))


def test_unpack_round_trip():
    """unpack scatters packed vectors to (B, L, D), zero past each end, lengths seqlen/L."""
    packed = patchify(torch.randn(3, 101, 64), torch.tensor([40, 101, 10]))
    x = torch.randn(packed.tokens.shape[0], 7)
    padded, lengths = packed.unpack(x)
    seqlens = [8, 24, 4]
    assert padded.shape == (3, 24, 7)
    for b, start in enumerate([0, 8, 32]):
        n = seqlens[b]
        assert torch.equal(padded[b, :n], x[start : start + n])
        assert torch.equal(padded[b, n:], torch.zeros(24 - n, 7))
    torch.testing.assert_close(lengths, torch.tensor(seqlens) / 24.0)

    # Default unpacks the tokens themselves; repacking gives them back.
    padded_tokens, _ = packed.unpack()
    repacked = pack_padded(padded_tokens, packed.seqlens)
    assert torch.equal(repacked.tokens, packed.tokens)
    assert torch.equal(repacked.cu_seqlens, packed.cu_seqlens)


def test_with_tokens_checks_count():
    """with_tokens keeps the layout and rejects a wrong token count."""
    packed = patchify(torch.randn(2, 64, 64), torch.tensor([64, 32]))
    other = packed.with_tokens(torch.randn(packed.tokens.shape[0], 5))
    assert isinstance(other, PackedBatch)
    assert torch.equal(other.cu_seqlens, packed.cu_seqlens)
    assert other.tokens.shape == (24, 5)
    with pytest.raises(ValueError):
        packed.with_tokens(torch.randn(23, 5))


def test_pack_padded_layout_and_errors():
    """pack_padded keeps the first seqlens rows, positions are indices, bad seqlens raise."""
    x = torch.randn(3, 5, 4)
    packed = pack_padded(x, torch.tensor([5, 1, 3]))
    assert torch.equal(packed.tokens, torch.cat([x[0], x[1, :1], x[2, :3]]))
    assert packed.cu_seqlens.tolist() == [0, 5, 6, 9]
    assert packed.pos_t.tolist() == [0, 1, 2, 3, 4, 0, 0, 1, 2]
    assert packed.pos_f.tolist() == [0] * 9
    for bad in ([5, 0, 3], [6, 1, 3], [5, 1]):
        with pytest.raises(ValueError):
            pack_padded(x, torch.tensor(bad))


def test_num_time_patches_rule():
    """num_time_patches = max(1, frames // 16) for ints and tensors."""
    frames = [0, 1, 15, 16, 31, 32, 47, 48, 1001, 3001]
    expected = [1, 1, 1, 1, 1, 2, 2, 3, 62, 187]
    assert [num_time_patches(f) for f in frames] == expected
    assert num_time_patches(torch.tensor(frames)).tolist() == expected


@pytest.mark.parametrize(
    "duration, n_mels, tokens",
    [
        (10.0, 64, 248),
        (30.0, 64, 748),
        (0.05, 64, 4),  # shorter than one patch: still one time patch
        (0.0, 64, 4),
        (0.3, 64, 4),  # 4800 samples -> 31 frames -> 1 patch
        (0.31, 64, 8),  # 4960 samples -> 32 frames -> 2 patches
        (1.0, 64, 24),
        (10.0, 128, 496),  # 8 frequency bands
    ],
)
def test_num_tokens_for_duration(duration, n_mels, tokens):
    """Duration -> token count: whole time patches x frequency bands, at least one patch."""
    assert num_tokens_for_duration(duration, n_mels=n_mels) == tokens


def test_num_tokens_for_duration_matches_pipeline(make_encoder):
    """num_tokens_for_duration equals the tokens SLAPFbank + encoder.patchify produce."""
    fbank, encoder = SLAPFbank(), make_encoder(depth=1)
    for n in [1, 800, 2399, 2400, 4799, 4960, 16000, 16161, 33333, 48000]:
        packed = encoder.patchify(fbank(torch.randn(1, n)))
        assert packed.tokens.shape[0] == num_tokens_for_duration(n / 16000), n


@pytest.mark.parametrize("seconds", [0.16, 1.0, 3.0, 10.0, 30.0, 600.0])
def test_frames_from_relative_lengths_exact(seconds):
    """With S a multiple of the hop, float32 wav_lens n/S give exactly n // 160 + 1 frames."""
    gen = torch.Generator().manual_seed(int(seconds * 100))
    total = int(round(seconds * 16000))
    assert total % 160 == 0
    n = torch.randint(1, total + 1, (2000,), generator=gen)
    # Include the hardest cases: exact multiples of the hop and one sample below.
    n = torch.cat([n, (n // 160 * 160).clamp(min=1), (n // 160 * 160 - 1).clamp(min=1)])
    n = torch.cat([n, torch.tensor([1, 159, 160, 161, total - 1, total])])
    lengths = n.float() / total
    frames = frames_from_relative_lengths(lengths, num_frames(total))
    assert frames.dtype == torch.long
    assert torch.equal(frames, num_frames(n))


def test_frames_from_relative_lengths_ends():
    """Relative length 0 gives one frame and 1 gives all frames."""
    assert frames_from_relative_lengths(torch.tensor([0.0, 1.0]), 201).tolist() == [1, 201]


@pytest.mark.parametrize(
    "lengths",
    [
        torch.tensor([0.5, -0.1]),
        torch.tensor([1.5]),
        torch.tensor([0.5, math.nan]),
        torch.tensor([math.inf]),
        torch.tensor([[0.5, 1.0]]),
        torch.tensor(0.5),
    ],
    ids=["negative", "above-one", "nan", "inf", "2-d", "0-d"],
)
def test_frames_from_relative_lengths_rejects_bad_input(lengths):
    """Lengths outside [0, 1], non-finite or not 1-D raise ValueError."""
    with pytest.raises(ValueError):
        frames_from_relative_lengths(lengths, 101)
