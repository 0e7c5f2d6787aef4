"""Tests for lobes/rope.py: 2-D axial RoPE depends only on relative (dt, df)."""

import pytest
import torch

from speechbrain_slap.lobes.rope import AxialRoPE

HEAD_DIM = 32


def rotate_at(rope, x, pos_t, pos_f):
    """Rotates ``(M, head_dim)`` vectors at per-row positions ``(pos_t, pos_f)``."""
    cos, sin = rope(pos_t, pos_f)
    return rope.rotate(x[:, None], cos, sin)[:, 0]


def rotated_dot(rope, q, k, t1, f1, t2, f2):
    """Row-wise <rotate(q at (t1, f1)), rotate(k at (t2, f2))>."""
    return (rotate_at(rope, q, t1, f1) * rotate_at(rope, k, t2, f2)).sum(-1)


@pytest.fixture
def sample():
    """Random q, k and integer patch positions for 512 pairs."""
    m = 512
    q, k = torch.randn(2, m, HEAD_DIM).unbind(0)
    t1, t2 = torch.randint(0, 64, (2, m)).unbind(0)
    f1, f2 = torch.randint(0, 8, (2, m)).unbind(0)
    return q, k, t1, f1, t2, f2


def test_dot_product_depends_only_on_offset(sample):
    """<R(q,(t1,f1)), R(k,(t2,f2))> is unchanged by a common shift (t+a, f+b)."""
    rope = AxialRoPE(HEAD_DIM)
    q, k, t1, f1, t2, f2 = sample
    base = rotated_dot(rope, q, k, t1, f1, t2, f2)
    for a, b in [(1, 0), (0, 1), (17, 3), (100, 5)]:
        shifted = rotated_dot(rope, q, k, t1 + a, f1 + b, t2 + a, f2 + b)
        torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("axis", ["time", "freq"])
def test_dot_product_changes_with_offset(sample, axis):
    """Changing dt (or df) by one changes the rotated dot product."""
    rope = AxialRoPE(HEAD_DIM)
    q, k, t1, f1, t2, f2 = sample
    base = rotated_dot(rope, q, k, t1, f1, t2, f2)
    if axis == "time":
        moved = rotated_dot(rope, q, k, t1, f1, t2 + 1, f2)
    else:
        moved = rotated_dot(rope, q, k, t1, f1, t2, f2 + 1)
    assert (moved - base).abs().mean() > 0.1


def test_rotation_preserves_norm(sample):
    """Rotation keeps each head vector's norm; position (0, 0) is the identity."""
    rope = AxialRoPE(HEAD_DIM)
    q, _, t1, f1, _, _ = sample
    rotated = rotate_at(rope, q, t1, f1)
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1), atol=1e-5, rtol=1e-5)
    zero = torch.zeros_like(t1)
    torch.testing.assert_close(rotate_at(rope, q, zero, zero), q)


def test_matches_complex_reference(sample):
    """Pair (i, i + D/2) rotates by t * w_i (first D/4 pairs) or f * w_(i - D/4) (rest)."""
    rope = AxialRoPE(HEAD_DIM, base=10000.0)
    q, _, t1, f1, _, _ = sample
    quarter = HEAD_DIM // 4
    inv_freq = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) * 2 / (HEAD_DIM // 2))
    angles = torch.cat(
        [t1.double()[:, None] * inv_freq, f1.double()[:, None] * inv_freq], dim=-1
    )  # (M, D/2)
    half = HEAD_DIM // 2
    z = torch.complex(q[:, :half].double(), q[:, half:].double()) * torch.polar(
        torch.ones_like(angles), angles
    )
    expected = torch.cat([z.real, z.imag], dim=-1).float()
    torch.testing.assert_close(rotate_at(rope, q, t1, f1), expected, atol=1e-5, rtol=1e-5)


def test_time_and_frequency_axes_are_separate(sample):
    """A time shift only moves the time channel pairs; a frequency shift only the others."""
    rope = AxialRoPE(HEAD_DIM)
    q, _, t1, f1, _, _ = sample
    quarter, half = HEAD_DIM // 4, HEAD_DIM // 2
    time_ch = torch.cat([torch.arange(quarter), half + torch.arange(quarter)])
    freq_ch = torch.cat([quarter + torch.arange(quarter), half + quarter + torch.arange(quarter)])
    base = rotate_at(rope, q, t1, f1)
    t_moved = rotate_at(rope, q, t1 + 3, f1)
    f_moved = rotate_at(rope, q, t1, f1 + 3)
    assert torch.equal(t_moved[:, freq_ch], base[:, freq_ch])
    assert (t_moved[:, time_ch] - base[:, time_ch]).abs().max() > 0.1
    assert torch.equal(f_moved[:, time_ch], base[:, time_ch])
    assert (f_moved[:, freq_ch] - base[:, freq_ch]).abs().max() > 0.1


def test_shapes_and_dtype():
    """cos/sin are (N, 1, D/2) fp32; rotate keeps the input dtype and shape."""
    rope = AxialRoPE(16)
    cos, sin = rope(torch.tensor([0, 1, 2]), torch.tensor([0, 3, 1]))
    assert cos.shape == sin.shape == (3, 1, 8)
    assert cos.dtype == torch.float32
    x = torch.randn(3, 2, 16, dtype=torch.bfloat16)
    out = rope.rotate(x, cos, sin)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_head_dim_must_be_multiple_of_four():
    """A head_dim that is not a multiple of 4 raises ValueError."""
    with pytest.raises(ValueError):
        AxialRoPE(18)


def test_rotate_into_equals_rotate():
    """The in-place inference rotation writes what ``rotate`` returns, into ``out``'s view."""
    rope = AxialRoPE(HEAD_DIM)
    x = torch.randn(50, 2, 3, HEAD_DIM)  # (tokens, q and k, heads, head_dim)
    cos, sin = rope(torch.randint(0, 64, (50,)), torch.randint(0, 8, (50,)))
    out = torch.zeros(50, 3, 3, HEAD_DIM)
    returned = AxialRoPE.rotate_into(x, cos[:, None], sin[:, None], out=out[:, :2])
    expected = torch.stack([rope.rotate(x[:, i], cos, sin) for i in range(2)], dim=1)
    torch.testing.assert_close(out[:, :2], expected, atol=1e-6, rtol=1e-6)
    assert returned.data_ptr() == out.data_ptr() and not out[:, 2].any()
