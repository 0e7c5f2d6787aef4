"""Tests for the pad-and-mask layout (``packing: false``): same outputs as packed on real tokens.

``pad_clips`` (packing.py), ``padded_attention_mask`` / ``PaddedAttention``
(attention.py) and ``SLAPAudioEncoder(..., pad_to=...)`` must give every real
token exactly what the packed path gives it (fp32 CPU, ~1e-5), while really
computing over the padding.
"""

import pytest
import torch

from speechbrain_slap.lobes.attention import (
    PackedAttention,
    PaddedAttention,
    padded_attention_mask,
)
from speechbrain_slap.lobes.features import SLAPFbank
from speechbrain_slap.lobes.packing import num_tokens_for_duration, pack_padded, pad_clips
from speechbrain_slap.lobes.pooling import MAPooling

PAD_TO = num_tokens_for_duration(30.0)  # 748, what SLAPBrain pads to at max_duration 30 s
# 0.7 s, 3.1 s and 6.4 s: the longest is wider than a local band (97 tokens).
CLIP_SAMPLES = [11237, 49613, 102400]


def cu_seqlens_of(seqlens):
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seqlens), 0)
    return cu


def brute_force_padded_mask(seqlens, length, window):
    """The rule spelled out per row: real tokens see real tokens of the clip in the band."""
    mask = torch.zeros(len(seqlens), length, length, dtype=torch.bool)
    for b, n in enumerate(seqlens):
        for i in range(length):
            for j in range(length):
                in_band = window is None or abs(i - j) <= window
                if i < n and j < n:
                    mask[b, i, j] = in_band
                elif i >= n and j >= n:  # padding sees padding (its output is discarded)
                    mask[b, i, j] = in_band or i == j
    return mask


@pytest.mark.parametrize("window", [None, 0, 2])
def test_padded_attention_mask_matches_brute_force(window):
    """The padded mask is the rule: no real query ever sees a padding key."""
    seqlens, length = [3, 1, 6], 6
    valid = torch.arange(length)[None, :] < torch.tensor(seqlens)[:, None]
    mask = padded_attention_mask(valid, window)
    assert mask.shape == (3, 1, length, length)
    assert torch.equal(mask[:, 0], brute_force_padded_mask(seqlens, length, window))


def test_padded_attention_mask_rejects_bad_valid():
    with pytest.raises(ValueError, match="bool"):
        padded_attention_mask(torch.ones(2, 3), None)


def test_pad_clips_layout():
    """Real tokens and positions at the start of each padded row, zeros after."""
    x = torch.randn(3, 5, 4)
    packed = pack_padded(x, torch.tensor([5, 1, 3]))
    padded, valid = pad_clips(packed, 7)
    assert padded.tokens.shape == (21, 4)
    assert padded.cu_seqlens.tolist() == [0, 7, 14, 21]
    assert padded.max_seqlen == 7
    assert valid.sum(dim=1).tolist() == [5, 1, 3]
    rows = padded.tokens.view(3, 7, 4)
    for b, n in enumerate([5, 1, 3]):
        assert torch.equal(rows[b, :n], x[b, :n])
        assert torch.equal(rows[b, n:], torch.zeros(7 - n, 4))
    assert torch.equal(padded.pos_t.view(3, 7)[valid], packed.pos_t)
    assert padded.clip_id.tolist() == [b for b in range(3) for _ in range(7)]


def test_pad_clips_rejects_short_length():
    packed = pack_padded(torch.randn(2, 5, 4), torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="up to 5 tokens to 4"):
        pad_clips(packed, 4)


@pytest.mark.parametrize("window", [None, 0, 3, 48])
def test_padded_attention_equals_packed_on_real_tokens(window):
    """PaddedAttention over random (nonzero) padding gives the packed sdpa result."""
    seqlens, length, heads, head_dim = [1, 7, 60, 23], 64, 2, 8
    valid = torch.arange(length)[None, :] < torch.tensor(seqlens)[:, None]
    q, k, v = (torch.randn(len(seqlens) * length, heads, head_dim) for _ in range(3))
    padded = PaddedAttention(valid)(q, k, v, window)
    real = valid.flatten()
    packed = PackedAttention(cu_seqlens_of(seqlens), max(seqlens), "sdpa")(
        q[real], k[real], v[real], window
    )
    assert (padded[real] - packed).abs().max() <= 1e-5


def test_padded_attention_rejects_wrong_token_count():
    attend = PaddedAttention(torch.ones(2, 4, dtype=torch.bool))
    q = torch.randn(7, 1, 4)
    with pytest.raises(ValueError, match="2 x 4 = 8 tokens"):
        attend(q, q, q, None)


@pytest.fixture
def packed_clips(pad_batch):
    """Patches of three clips of 0.7, 3.1 and 6.4 s, packed."""
    waves = [0.1 * torch.randn(n) for n in CLIP_SAMPLES]
    wavs, wav_lens = pad_batch(waves)
    feats = SLAPFbank(mean=-15.0, std=12.0)(wavs)
    return feats, wav_lens


def test_encoder_padded_equals_packed(make_encoder, packed_clips):
    """Real tokens after 3 blocks (local, local, global): padded to 748 == packed, masked too."""
    encoder = make_encoder(depth=3)
    feats, wav_lens = packed_clips
    packed = encoder.patchify(feats, wav_lens)
    token_mask = torch.rand(packed.tokens.shape[0]) < 0.5
    with torch.no_grad():
        for mask in (None, token_mask):
            reference = encoder(packed, token_mask=mask)
            padded = encoder(packed, token_mask=mask, pad_to=PAD_TO)
            assert padded.shape == reference.shape
            assert (padded - reference).abs().max() <= 1e-5
        # The SpeechBrain-style entry point (padded log-mels in) agrees as well.
        assert (
            encoder(feats, wav_lens, pad_to=PAD_TO) - encoder(feats, wav_lens)
        ).abs().max() <= 1e-5


def test_encoder_padded_computes_over_padding(make_encoder, packed_clips):
    """Every block really runs on B x 748 tokens (the compute the baseline spends)."""
    encoder = make_encoder(depth=3)
    feats, wav_lens = packed_clips
    packed = encoder.patchify(feats, wav_lens)
    seen = []
    for block in encoder.blocks:
        block.register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    with torch.no_grad():
        encoder(packed, pad_to=PAD_TO)
    assert seen == [3 * PAD_TO] * 3
    seen.clear()
    with torch.no_grad():
        encoder(packed)
    assert seen == [packed.tokens.shape[0]] * 3


def test_encoder_padded_gradients_and_pooling_equal_packed(make_encoder, packed_clips):
    """MAP embeddings and every parameter gradient (mask token included) match packed."""
    encoder = make_encoder(depth=3)
    pooling = MAPooling(input_size=64, num_heads=4)
    feats, wav_lens = packed_clips
    packed = encoder.patchify(feats, wav_lens)
    token_mask = torch.rand(packed.tokens.shape[0]) < 0.5
    results = {}
    for name, pad_to in (("packed", None), ("padded", PAD_TO)):
        encoder.zero_grad(set_to_none=True)
        tokens = encoder(packed, token_mask=token_mask, pad_to=pad_to)
        pooled = pooling(tokens, cu_seqlens=packed.cu_seqlens)
        (pooled.square().sum() + tokens[token_mask].sum()).backward()
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters()}
        results[name] = pooled.detach(), grads
    pooled, grads = results["packed"]
    padded_pooled, padded_grads = results["padded"]
    assert (padded_pooled - pooled).abs().max() <= 1e-5
    assert grads.keys() == padded_grads.keys()
    for name, grad in grads.items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (padded_grads[name] - grad).abs().max() <= 1e-4 * scale, name
    assert grads["mask_token"].abs().max() > 0


def test_encoder_pad_to_shorter_than_a_clip_raises(make_encoder, packed_clips):
    encoder = make_encoder(depth=3)
    packed = encoder.patchify(*packed_clips)
    with pytest.raises(ValueError, match="must cover the longest clip"):
        encoder(packed, pad_to=packed.max_seqlen - 1)


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_padded_matches_packed_forward_and_backward(make_encoder, packed_clips):
    """Under bf16 autocast on CUDA, padded (dense SDPA) and packed (varlen) agree; grads finite."""
    encoder = make_encoder(depth=3, backend="auto").cuda().train()
    feats, wav_lens = packed_clips
    packed = encoder.patchify(feats.cuda(), wav_lens.cuda())
    outputs = {}
    for name, pad_to in (("packed", None), ("padded", PAD_TO)):
        encoder.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = encoder(packed, pad_to=pad_to)
        out.float().square().mean().backward()
        outputs[name] = out.float()
        for param_name, param in encoder.named_parameters():
            if param_name != "mask_token":
                assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    cosine = torch.nn.functional.cosine_similarity(outputs["padded"], outputs["packed"], dim=-1)
    assert cosine.min() > 0.99
