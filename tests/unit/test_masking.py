"""Tests for random_token_mask, concat_packed (lobes/packing.py) and pad_to_hop (features.py)."""

import pytest
import torch

from speechbrain_slap.lobes.features import num_frames, pad_to_hop
from speechbrain_slap.lobes.packing import (
    concat_packed,
    frames_from_relative_lengths,
    pack_padded,
    patchify,
    random_token_mask,
)

# ---------------------------------------------------------------------------
# random_token_mask
# ---------------------------------------------------------------------------


def random_packed(batch=9, max_len=23, seed=0):
    """A packed batch of clips with random lengths in [1, max_len]."""
    g = torch.Generator().manual_seed(seed)
    seqlens = torch.randint(1, max_len + 1, (batch,), generator=g)
    seqlens[0] = max_len
    return pack_padded(torch.randn(batch, max_len, 3, generator=g), seqlens)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 0.75, 1.0])
def test_mask_count_per_clip(ratio):
    """Each clip of n tokens gets exactly round(ratio * n) masked tokens."""
    packed = random_packed()
    mask = random_token_mask(packed, ratio, torch.Generator().manual_seed(3))
    assert mask.dtype == torch.bool and mask.shape == (packed.tokens.shape[0],)
    cu = packed.cu_seqlens.tolist()
    for b in range(packed.batch_size):
        n = cu[b + 1] - cu[b]
        assert int(mask[cu[b] : cu[b + 1]].sum()) == round(ratio * n), (b, n)


def test_mask_edge_ratios():
    """Ratio 0 masks nothing; ratio 1 masks everything."""
    packed = random_packed()
    assert not random_token_mask(packed, 0.0).any()
    assert random_token_mask(packed, 1.0).all()


def test_mask_generator_determinism():
    """The same seed gives the same mask; different seeds give different masks."""
    packed = random_packed()
    a = random_token_mask(packed, 0.5, torch.Generator().manual_seed(1))
    b = random_token_mask(packed, 0.5, torch.Generator().manual_seed(1))
    c = random_token_mask(packed, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(5)
    d = random_token_mask(packed, 0.5)
    torch.manual_seed(5)
    assert torch.equal(d, random_token_mask(packed, 0.5))


def test_mask_positions_are_uniform():
    """Over many draws every token position of a clip is masked about ratio of the time."""
    packed = pack_padded(torch.randn(2, 10, 1), torch.tensor([10, 6]))
    g = torch.Generator().manual_seed(0)
    freq = torch.stack([random_token_mask(packed, 0.5, g) for _ in range(600)]).float().mean(0)
    assert (freq - 0.5).abs().max().item() < 0.1


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_mask_bad_ratio_raises(ratio):
    """A ratio outside [0, 1] raises ValueError."""
    with pytest.raises(ValueError):
        random_token_mask(random_packed(), ratio)


# ---------------------------------------------------------------------------
# concat_packed
# ---------------------------------------------------------------------------


def assert_same_packed(a, b):
    """Field-by-field equality of two PackedBatch objects."""
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.cu_seqlens, b.cu_seqlens)
    assert a.cu_seqlens.dtype == b.cu_seqlens.dtype == torch.int32
    assert a.max_seqlen == b.max_seqlen
    assert torch.equal(a.pos_t, b.pos_t)
    assert torch.equal(a.pos_f, b.pos_f)
    assert torch.equal(a.clip_id, b.clip_id)


def test_concat_layout():
    """cu_seqlens continue, clip ids are offset, tokens and positions are kept in order."""
    a = pack_padded(torch.randn(2, 5, 4), torch.tensor([5, 2]))
    b = pack_padded(torch.randn(3, 4, 4), torch.tensor([1, 4, 3]))
    c = concat_packed(a, b)
    assert c.cu_seqlens.tolist() == [0, 5, 7, 8, 12, 15]
    assert c.cu_seqlens.dtype == torch.int32
    assert c.batch_size == 5 and c.max_seqlen == 5
    assert c.clip_id.tolist() == [0] * 5 + [1] * 2 + [2] + [3] * 4 + [4] * 3
    assert torch.equal(c.tokens, torch.cat([a.tokens, b.tokens]))
    assert torch.equal(c.pos_t, torch.cat([a.pos_t, b.pos_t]))
    assert torch.equal(c.pos_f, torch.cat([a.pos_f, b.pos_f]))
    assert torch.equal(c.local_index(), torch.cat([a.local_index(), b.local_index()]))


def test_concat_equals_packing_concatenated_batch():
    """concat(pack(x1), pack(x2), pack(x3)) == pack(cat(x1, x2, x3))."""
    xs = [torch.randn(n, 6, 2) for n in (2, 1, 3)]
    lens = [torch.tensor([6, 3]), torch.tensor([1]), torch.tensor([2, 6, 5])]
    parts = [pack_padded(x, n) for x, n in zip(xs, lens, strict=True)]
    assert_same_packed(concat_packed(*parts), pack_padded(torch.cat(xs), torch.cat(lens)))


def test_concat_patchified_views_equals_patchify_of_joint_batch():
    """Two patchified views concatenated equal patchifying both batches at once (pos_f kept)."""
    f1, f2 = torch.randn(2, 70, 64), torch.randn(3, 70, 64)
    fr1, fr2 = torch.tensor([70, 20]), torch.tensor([5, 48, 64])
    joint = patchify(torch.cat([f1, f2]), torch.cat([fr1, fr2]))
    assert_same_packed(concat_packed(patchify(f1, fr1), patchify(f2, fr2)), joint)
    assert int(joint.pos_f.max()) == 3


def test_concat_same_batch_twice_doubles_clips():
    """concat(p, p) (the dual student view) has 2B clips whose second half repeats the first."""
    p = pack_padded(torch.randn(3, 4, 2), torch.tensor([4, 1, 2]))
    c = concat_packed(p, p)
    assert c.batch_size == 6
    assert torch.equal(c.seqlens, torch.cat([p.seqlens, p.seqlens]))
    assert torch.equal(c.clip_id, torch.cat([p.clip_id, p.clip_id + 3]))
    assert_same_packed(concat_packed(p), p)


def test_concat_needs_a_batch():
    """Calling concat_packed with nothing raises ValueError."""
    with pytest.raises(ValueError):
        concat_packed()


# ---------------------------------------------------------------------------
# pad_to_hop
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, samples",
    [
        (250, [250, 100, 1]),
        (1234, [1234, 1000, 7, 161]),
        (16001, [16001, 8000, 15999, 160]),
        (480_001, [480_001, 479_999, 123_457, 1]),
    ],
)
def test_pad_to_hop_preserves_sample_counts(total, samples):
    """Length becomes a multiple of 160, padding is zero, round(l * S) survives exactly."""
    wavs = torch.zeros(len(samples), total)
    for i, n in enumerate(samples):
        wavs[i, :n] = torch.rand(n) + 0.5  # non-zero real audio
    lens = torch.tensor([n / total for n in samples], dtype=torch.float32)
    out, out_lens = pad_to_hop(wavs, lens)
    new_total = out.shape[1]
    assert new_total % 160 == 0 and total < new_total < total + 160
    assert out_lens.dtype == torch.float32
    assert torch.equal(out[:, :total], wavs)
    assert not out[:, total:].any()
    recovered = torch.round(out_lens.double() * new_total).long().tolist()
    assert recovered == samples
    # The point of the padding: relative lengths give each clip's exact frame count.
    frames = frames_from_relative_lengths(out_lens, new_total // 160 + 1)
    assert frames.tolist() == [num_frames(n) for n in samples]


def test_pad_to_hop_noop_on_multiple():
    """A batch already a multiple of the hop is returned unchanged."""
    wavs, lens = torch.randn(2, 480), torch.tensor([1.0, 0.5])
    out, out_lens = pad_to_hop(wavs, lens)
    assert torch.equal(out, wavs) and torch.equal(out_lens, lens)
    assert out.shape == (2, 480)
