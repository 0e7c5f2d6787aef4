"""Tests for lobes/pooling.py: MAP pooling per clip, padded == packed == reference."""

import pytest
import torch

from speechbrain_slap.lobes.pooling import MAPooling

DIM, HEADS = 32, 4
SEQLENS = [10, 3, 1, 7]


def padded_tokens(seqlens, dim=DIM):
    """Random ``(B, L, dim)`` tokens with exactly-zero padding rows, and cu_seqlens."""
    tokens = torch.zeros(len(seqlens), max(seqlens), dim)
    for b, n in enumerate(seqlens):
        tokens[b, :n] = torch.randn(n, dim)
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seqlens), 0)
    packed = torch.cat([tokens[b, :n] for b, n in enumerate(seqlens)])
    return tokens, packed, cu


@pytest.fixture
def pool():
    """A MAP pooler with non-trivial weights (random biases, larger probe)."""
    pool = MAPooling(input_size=DIM, num_heads=HEADS).eval()
    with torch.no_grad():
        for param in pool.parameters():
            param.copy_(0.3 * torch.randn_like(param))
    return pool


def reference_map(pool, tokens):
    """Independent MAP of one clip: SDPA(probe query, kv_proj keys/values) + residual MLP."""
    n, dim = tokens.shape
    head_dim = dim // HEADS
    query = pool.q_proj(pool.probe).view(1, HEADS, 1, head_dim)
    kv = pool.kv_proj(tokens)
    key = kv[:, :dim].view(n, HEADS, head_dim).transpose(0, 1)[None]
    value = kv[:, dim:].view(n, HEADS, head_dim).transpose(0, 1)[None]
    attended = torch.nn.functional.scaled_dot_product_attention(query, key, value)
    x = pool.out_proj(attended.reshape(1, dim))
    return (x + pool.mlp(pool.norm(x)))[0]


@torch.no_grad()
def test_forward_packed_matches_sdpa_reference(pool):
    """forward_packed equals a per-clip SDPA reference with the same weights."""
    _, packed, cu = padded_tokens(SEQLENS)
    pooled = pool.forward_packed(packed, cu)
    assert pooled.shape == (len(SEQLENS), DIM)
    for b in range(len(SEQLENS)):
        expected = reference_map(pool, packed[cu[b] : cu[b + 1]])
        torch.testing.assert_close(pooled[b], expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padded_forward_equals_forward_packed(pool):
    """The padded entry point (zero padding rows) equals forward_packed on the same tokens."""
    tokens, packed, cu = padded_tokens(SEQLENS)
    lengths = torch.tensor(SEQLENS) / max(SEQLENS)
    torch.testing.assert_close(
        pool(tokens, lengths), pool.forward_packed(packed, cu), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(pool(tokens), pool.forward_packed(packed, cu), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_clip_alone_equals_clip_in_batch(pool):
    """Pooling a clip alone gives the same embedding as pooling it inside a batch."""
    tokens, _, _ = padded_tokens(SEQLENS)
    batch = pool(tokens)
    for b, n in enumerate(SEQLENS):
        alone = pool(tokens[b : b + 1, :n])
        torch.testing.assert_close(alone[0], batch[b], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_pooling_ignores_other_clips(pool):
    """Perturbing clip 0's tokens changes clip 0's embedding only."""
    tokens, _, _ = padded_tokens(SEQLENS)
    before = pool(tokens)
    perturbed = tokens.clone()
    perturbed[0, : SEQLENS[0]] += torch.randn(SEQLENS[0], DIM)
    after = pool(perturbed)
    assert torch.equal(after[1:], before[1:])
    assert (after[0] - before[0]).abs().max() > 1e-3


@torch.no_grad()
def test_pooling_weights_are_a_softmax_over_the_clip(pool):
    """A clip of identical tokens pools to out_proj(v) + MLP, whatever its length."""
    token = torch.randn(DIM)
    one = pool.forward_packed(token[None], torch.tensor([0, 1], dtype=torch.int32))
    many = pool.forward_packed(token.expand(9, DIM), torch.tensor([0, 9], dtype=torch.int32))
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)


def test_input_validation(pool):
    """Bad cu_seqlens, token rank or lengths shape raise ValueError."""
    tokens, packed, cu = padded_tokens(SEQLENS)
    with pytest.raises(ValueError):
        pool.forward_packed(packed[:-1], cu)
    with pytest.raises(ValueError):
        pool(tokens[0])
    with pytest.raises(ValueError):
        pool(tokens, torch.ones(len(SEQLENS) + 1))
    with pytest.raises(ValueError):
        MAPooling(input_size=30, num_heads=4)


def test_backward(pool):
    """Gradients reach the probe and the tokens and are finite."""
    tokens, packed, cu = padded_tokens(SEQLENS)
    packed.requires_grad_(True)
    pool.forward_packed(packed, cu).pow(2).sum().backward()
    assert torch.isfinite(packed.grad).all() and packed.grad.abs().sum() > 0
    assert pool.probe.grad is not None and pool.probe.grad.abs().sum() > 0
