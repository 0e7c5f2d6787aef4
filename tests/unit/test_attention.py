"""Tests for lobes/attention.py: the one mask rule and every backend against it."""

import math

import pytest
import torch

from speechbrain_slap.lobes.attention import (
    LOCAL_WINDOW,
    PackedAttention,
    clip_ids,
    dense_mask,
    flash_attn_available,
    resolve_backend,
    varlen_available,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# Eager flex_attention on CPU warns that it is unfused; that is expected here.
flex_cpu_warning = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def cu_seqlens_of(seqlens, device="cpu"):
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seqlens), 0)
    return cu.to(device)


def brute_force_mask(seqlens, window):
    """The rule spelled out with Python loops: same clip and |i - j| <= window."""
    clip = [b for b, n in enumerate(seqlens) for _ in range(n)]
    total = len(clip)
    mask = torch.zeros(total, total, dtype=torch.bool)
    for i in range(total):
        for j in range(total):
            same_clip = clip[i] == clip[j]
            in_band = window is None or abs(i - j) <= window
            mask[i, j] = same_clip and in_band
    return mask


def random_seqlens(gen, count, high):
    return torch.randint(1, high + 1, (count,), generator=gen).tolist()


MASK_CASES = [
    [1],
    [1, 1, 1],
    [2, 5, 9],
    [60, 1, 100, 3],
    [1, 97, 1, 50, 1],
]


@pytest.mark.parametrize("window", [None, 0, 1, 3, LOCAL_WINDOW])
@pytest.mark.parametrize("seqlens", MASK_CASES + ["random"])
def test_dense_mask_matches_brute_force(seqlens, window):
    """dense_mask(cu_seqlens, window) equals the double-loop definition of the rule."""
    if seqlens == "random":
        seqlens = random_seqlens(torch.Generator().manual_seed(7), 6, 70) + [1]
    mask = dense_mask(cu_seqlens_of(seqlens), window)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, brute_force_mask(seqlens, window))


def test_local_window_constant():
    """The local window is +-12 time patches x 4 frequency bands = 48 tokens."""
    assert LOCAL_WINDOW == 48


def test_clip_ids():
    """clip_ids expands cu_seqlens to one clip index per token."""
    assert clip_ids(cu_seqlens_of([2, 1, 3])).tolist() == [0, 0, 1, 2, 2, 2]


def reference_attention(q, k, v, seqlens, window):
    """Per-clip softmax(q k^T / sqrt(d) + band mask) v with plain matmuls (fp64)."""
    outputs, start = [], 0
    for n in seqlens:
        qc, kc, vc = (x[start : start + n].double().transpose(0, 1) for x in (q, k, v))
        scores = qc @ kc.transpose(1, 2) / math.sqrt(q.shape[-1])  # (H, n, n)
        if window is not None:
            index = torch.arange(n)
            band = (index[:, None] - index[None, :]).abs() <= window
            scores = scores.masked_fill(~band, float("-inf"))
        outputs.append((scores.softmax(-1) @ vc).transpose(0, 1))
        start += n
    return torch.cat(outputs).to(q.dtype)


BACKEND_CASES = [
    ([2, 5, 9], 3),  # window straddles clip boundaries
    ([2, 5, 9], None),
    ([1, 7, 1, 12], 1),
    ([30, 1, 57], LOCAL_WINDOW),
    ([120, 64], LOCAL_WINDOW),
    ([120, 64], None),
]


@pytest.mark.parametrize("seqlens, window", BACKEND_CASES)
def test_sdpa_matches_manual_reference(seqlens, window):
    """The sdpa backend equals per-clip softmax(qk^T/sqrt(d) + band) v computed by hand."""
    n, heads, head_dim = sum(seqlens), 3, 16
    q, k, v = torch.randn(3, n, heads, head_dim).unbind(0)
    out = PackedAttention(cu_seqlens_of(seqlens), max(seqlens), "sdpa")(q, k, v, window)
    assert out.shape == (n, heads, head_dim)
    torch.testing.assert_close(
        out, reference_attention(q, k, v, seqlens, window), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(
    "seqlens, window",
    [*BACKEND_CASES, ([48, 49, 96, 97, 1], LOCAL_WINDOW), ([7, 7, 30, 7], 2), ([1], None)],
)
def test_blocked_matches_manual_reference_forward_and_backward(seqlens, window):
    """The CPU blocked backend equals the hand reference, gradients included.

    Cases cover clips of exactly one or two blocks, one token past a block,
    repeated lengths (grouped in global blocks) and a band narrower than the clip.
    """
    n, heads, head_dim = sum(seqlens), 3, 16
    q, k, v = (x.requires_grad_() for x in torch.randn(3, n, heads, head_dim).unbind(0))
    out = PackedAttention(cu_seqlens_of(seqlens), max(seqlens), "blocked")(q, k, v, window)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    expected = reference_attention(q, k, v, seqlens, window)
    expected_grads = torch.autograd.grad(expected, (q, k, v), dout)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "seqlens, window",
    [*BACKEND_CASES, ([48, 49, 96, 97, 1], LOCAL_WINDOW), ([7, 7, 30, 7], 2), ([1], 3)],
)
def test_blocked_inference_windows_match_reference(seqlens, window):
    """In the inference layout, local blocks read their keys from overlapping windows.

    The same attention as the hand reference and as the gathering path, and the
    buffers kept for the next block of the forward give the right answer again
    for other inputs (their padding rows stay zero).
    """
    n, heads, head_dim = sum(seqlens), 3, 16
    cu = cu_seqlens_of(seqlens)
    attend = PackedAttention(cu, max(seqlens), "blocked")
    attend.inference = True  # what SLAPAudioEncoder sets in its inference layout
    for _ in range(2):
        q, k, v = torch.randn(3, n, heads, head_dim).unbind(0)
        with torch.no_grad():
            out = attend(q, k, v, window)
            gathered = PackedAttention(cu, max(seqlens), "blocked")(q, k, v, window)
        torch.testing.assert_close(
            out, reference_attention(q, k, v, seqlens, window), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(out, gathered, atol=1e-6, rtol=1e-6)
    if window is not None:
        for buffer in (attend._scratch[f"window_{name}"] for name in "qkv"):
            assert not buffer[:window].any() and not buffer[window + n :].any()


def test_sdpa_window_changes_result():
    """A local window gives a different output than global attention on long clips."""
    q, k, v = torch.randn(3, 40, 2, 8).unbind(0)
    attend = PackedAttention(cu_seqlens_of([40]), 40, "sdpa")
    assert (attend(q, k, v, 3) - attend(q, k, v, None)).abs().max() > 1e-2


@flex_cpu_warning
@pytest.mark.parametrize("seqlens, window", BACKEND_CASES)
def test_flex_forward_matches_sdpa_cpu(seqlens, window):
    """Eager flex (CPU, fp32) forward equals the sdpa backend."""
    n, heads, head_dim = sum(seqlens), 2, 16
    q, k, v = torch.randn(3, n, heads, head_dim).unbind(0)
    cu = cu_seqlens_of(seqlens)
    out_flex = PackedAttention(cu, max(seqlens), "flex")(q, k, v, window)
    out_sdpa = PackedAttention(cu, max(seqlens), "sdpa")(q, k, v, window)
    torch.testing.assert_close(out_flex, out_sdpa, atol=1e-5, rtol=1e-5)


def test_resolve_backend_cpu():
    """auto is blocked on the CPU (fp32 and bf16); sdpa/flex pass through."""
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, torch.float32) == "blocked"
    assert resolve_backend("auto", cpu, torch.bfloat16) == "blocked"
    assert resolve_backend("sdpa", cpu, torch.float32) == "sdpa"
    assert resolve_backend("flex", cpu, torch.float32) == "flex"


@pytest.mark.parametrize("name", ["varlen", "flash_attn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resolve_backend_rejects_cuda_only_on_cpu(name, dtype):
    """Explicit varlen / flash_attn on CPU raise ValueError."""
    with pytest.raises(ValueError):
        resolve_backend(name, torch.device("cpu"), dtype)


def test_unknown_backend_raises():
    """An unknown backend name raises ValueError in resolve_backend and PackedAttention."""
    with pytest.raises(ValueError):
        resolve_backend("xformers", torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError):
        PackedAttention(cu_seqlens_of([3]), 3, "xformers")


def test_packed_attention_resolves_backend_from_dtype():
    """A dtype at construction resolves auto (blocked on CPU) and prepare builds its masks."""
    cu = cu_seqlens_of([3, 2])
    attend = PackedAttention(cu, 3, "auto", dtype=torch.float32).prepare([None, 1])
    assert attend.backend == "blocked"
    q, k, v = torch.randn(3, 5, 2, 8).unbind(0)
    torch.testing.assert_close(
        attend(q, k, v, 1), reference_attention(q, k, v, [3, 2], 1), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError):
        PackedAttention(cu, 3, "varlen", dtype=torch.bfloat16)


def test_packed_attention_varlen_on_cpu_raises():
    """Calling an explicit varlen PackedAttention on CPU tensors raises ValueError."""
    q = torch.randn(4, 2, 8)
    with pytest.raises(ValueError):
        PackedAttention(cu_seqlens_of([4]), 4, "varlen")(q, q, q, None)


# --------------------------------------------------------------------------- GPU
GPU_SEQLENS = [1, 37, 160, 300, 4, 96, 2]


GPU_CASES = [
    ("varlen", LOCAL_WINDOW),
    ("varlen", 3),
    ("varlen", None),
    # Each flex window compiles its own kernels (tens of seconds): two windows.
    ("flex", LOCAL_WINDOW),
    ("flex", None),
    *(
        pytest.param(
            "flash_attn",
            window,
            marks=pytest.mark.skipif(not flash_attn_available(), reason="flash-attn not installed"),
        )
        for window in (LOCAL_WINDOW, 3, None)
    ),
]


def _forward_backward(backend, q, k, v, dout, cu, max_seqlen, window):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = PackedAttention(cu, max_seqlen, backend)(q, k, v, window)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def _assert_close_scaled(actual, expected, rel, name):
    scale = expected.float().abs().max().clamp(min=1.0)
    err = (actual.float() - expected.float()).abs().max()
    assert err <= rel * scale, f"{name}: max abs err {err:.3g} > {rel} x {scale:.3g}"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("backend, window", GPU_CASES)
def test_cuda_backend_matches_sdpa_bf16(backend, window):
    """bf16 CUDA backend forward and q/k/v grads match sdpa (bf16 and fp32 references)."""
    if backend == "varlen" and not varlen_available():
        pytest.skip("torch.nn.attention.varlen not available")
    device = torch.device("cuda")
    n, heads, head_dim = sum(GPU_SEQLENS), 4, 64
    cu = cu_seqlens_of(GPU_SEQLENS, device)
    q, k, v, dout = torch.randn(4, n, heads, head_dim, device=device).unbind(0)
    bf16 = [x.bfloat16() for x in (q, k, v, dout)]
    got = _forward_backward(backend, *bf16, cu, max(GPU_SEQLENS), window)
    ref_bf16 = _forward_backward("sdpa", *bf16, cu, max(GPU_SEQLENS), window)
    ref_fp32 = _forward_backward("sdpa", *(x.float() for x in bf16), cu, max(GPU_SEQLENS), window)
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, ref_bf16, ref_fp32, strict=True):
        assert a.dtype == torch.bfloat16 and a.shape == (n, heads, head_dim)
        assert torch.isfinite(a).all(), name
        _assert_close_scaled(a, b, 2e-2, f"{backend} vs sdpa bf16 {name}")
        _assert_close_scaled(a, c, 2e-2, f"{backend} vs sdpa fp32 {name}")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("window", [LOCAL_WINDOW, 3, None])
def test_cuda_sdpa_fp32_matches_cpu(window):
    """fp32 sdpa on CUDA equals fp32 sdpa on CPU."""
    n, heads, head_dim = sum(GPU_SEQLENS), 4, 64
    q, k, v = torch.randn(3, n, heads, head_dim).unbind(0)
    out_cpu = PackedAttention(cu_seqlens_of(GPU_SEQLENS), max(GPU_SEQLENS), "sdpa")(q, k, v, window)
    cu = cu_seqlens_of(GPU_SEQLENS, "cuda")
    out_cuda = PackedAttention(cu, max(GPU_SEQLENS), "sdpa")(q.cuda(), k.cuda(), v.cuda(), window)
    torch.testing.assert_close(out_cuda.cpu(), out_cpu, atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
@requires_cuda
def test_resolve_backend_auto_cuda():
    """auto is varlen (or flash_attn) for bf16 CUDA and sdpa for fp32 CUDA."""
    cuda = torch.device("cuda")
    assert resolve_backend("auto", cuda, torch.float32) == "sdpa"
    expected = (
        "varlen" if varlen_available() else ("flash_attn" if flash_attn_available() else "sdpa")
    )
    assert resolve_backend("auto", cuda, torch.bfloat16) == expected
    with pytest.raises(ValueError):
        resolve_backend("varlen", cuda, torch.float32)
