"""Tests for lobes/audio_encoder.py: packing invariance, masks, locality, parameters."""

import pytest
import torch
from torch import nn

from speechbrain_slap.lobes.attention import LOCAL_WINDOW
from speechbrain_slap.lobes.audio_encoder import (
    CPU_INFERENCE_ROWS,
    EncoderBlock,
    SLAPAudioEncoder,
    enable_inference_layout,
)
from speechbrain_slap.lobes.features import SLAPFbank
from speechbrain_slap.lobes.pooling import MAPooling

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Clip lengths in samples: 0.7 s, 3.1 s, 6.4 s, two of them not a multiple of the hop.
CLIP_SAMPLES = [11237, 49613, 102400]


@pytest.fixture
def pipeline(make_encoder):
    """Tiny feature -> encoder -> MAP pipeline (fp32, sdpa, eval)."""
    fbank = SLAPFbank(mean=-15.0, std=12.0)
    encoder = make_encoder(depth=3)
    pooling = MAPooling(input_size=64, num_heads=4).eval()

    @torch.no_grad()
    def run(wavs, wav_lens):
        tokens = encoder(fbank(wavs), wav_lens)
        return tokens, pooling(tokens, wav_lens)

    return run


@pytest.fixture
def clips():
    """Random waveforms of 0.7, 3.1 and 6.4 s at a speech-like level."""
    return [0.1 * torch.randn(n) for n in CLIP_SAMPLES]


def run_alone(run, wave):
    return run(wave[None], torch.ones(1))


def test_packed_batch_equals_each_clip_alone(pipeline, clips, pad_batch):
    """Each clip's tokens and MAP embedding are the same in a packed batch as alone."""
    wavs, wav_lens = pad_batch(clips)
    tokens, pooled = pipeline(wavs, wav_lens)
    assert pooled.shape == (3, 64)
    for b, wave in enumerate(clips):
        alone_tokens, alone_pooled = run_alone(pipeline, wave)
        n = alone_tokens.shape[1]
        assert (tokens[b, :n] - alone_tokens[0]).abs().max() <= 1e-5
        assert torch.equal(tokens[b, n:], torch.zeros_like(tokens[b, n:]))
        assert (pooled[b] - alone_pooled[0]).abs().max() <= 1e-5


def test_packed_equals_alone_for_clip_ending_in_a_click(pipeline, clips, pad_batch):
    """Packing invariance also holds for a silent clip whose only sound is its last 2 ms."""
    click = torch.zeros(32159)  # 32159 % 160 == 159
    click[-30:] = torch.randn(30)
    wavs, wav_lens = pad_batch([click, clips[0]])
    tokens, pooled = pipeline(wavs, wav_lens)
    alone_tokens, alone_pooled = run_alone(pipeline, click)
    n = alone_tokens.shape[1]
    assert (tokens[0, :n] - alone_tokens[0]).abs().max() <= 1e-5
    assert (pooled[0] - alone_pooled[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("extra", [1600, 16000])
def test_extra_padding_changes_nothing(pipeline, clips, pad_batch, extra):
    """Extra zero samples at the end of the batch change no clip's tokens or embedding."""
    tokens, pooled = pipeline(*pad_batch(clips))
    more_tokens, more_pooled = pipeline(*pad_batch(clips, extra=extra))
    assert more_tokens.shape == tokens.shape
    assert (more_tokens - tokens).abs().max() <= 1e-5
    assert (more_pooled - pooled).abs().max() <= 1e-5


def test_perturbing_one_clip_leaves_others_unchanged(pipeline, clips, pad_batch):
    """Changing clip 1's waveform changes only clip 1's tokens and embedding."""
    tokens, pooled = pipeline(*pad_batch(clips))
    perturbed = list(clips)
    perturbed[1] = clips[1] + 0.05 * torch.randn_like(clips[1])
    new_tokens, new_pooled = pipeline(*pad_batch(perturbed))
    for b in (0, 2):
        assert (new_tokens[b] - tokens[b]).abs().max() <= 1e-6
        assert (new_pooled[b] - pooled[b]).abs().max() <= 1e-6
    assert (new_tokens[1] - tokens[1]).abs().max() > 1e-2
    assert (new_pooled[1] - pooled[1]).abs().max() > 1e-4


@pytest.mark.parametrize("depth", [3, 6, 7])
def test_global_block_pattern(make_encoder, depth):
    """Block i is global iff i % 3 == 2; local blocks use the 48-token window."""
    encoder = make_encoder(depth=depth)
    assert [block.is_global for block in encoder.blocks] == [i % 3 == 2 for i in range(depth)]
    for block in encoder.blocks:
        assert block.attn.window == (None if block.is_global else LOCAL_WINDOW)


def test_local_attention_false_makes_all_blocks_global(make_encoder):
    """local_attention=False turns every block global (the paper's ablation)."""
    encoder = make_encoder(depth=6, local_attention=False)
    assert all(block.is_global for block in encoder.blocks)


def token_change_after_perturbing_first_patch(encoder):
    """Per-token max |change| of a 40-time-patch clip when its first time patch changes."""
    feats = torch.randn(1, 640, 64)
    perturbed = feats.clone()
    perturbed[:, :16] += 3.0 * torch.randn(1, 16, 64)
    with torch.no_grad():
        before, after = encoder(feats), encoder(perturbed)
    assert before.shape == (1, 160, 64)
    return (after - before)[0].abs().amax(-1)


def test_local_block_only_sees_window(make_encoder):
    """After one local block, tokens more than 12 time patches away are unchanged."""
    change = token_change_after_perturbing_first_patch(make_encoder(depth=1))
    # Perturbed tokens are 0..3; token i sees them iff i - 3 <= 48, i.e. i <= 51
    # (time patch 12); time patches 13..39 (tokens 52..159) cannot see them.
    assert (change[:52] > 1e-6).all()
    assert change[52:].max() <= 1e-7


@pytest.mark.parametrize("depth, local_attention", [(1, False), (3, True)])
def test_global_block_sees_whole_clip(make_encoder, depth, local_attention):
    """With a global block, every token of the clip changes, even 39 time patches away."""
    change = token_change_after_perturbing_first_patch(
        make_encoder(depth=depth, local_attention=local_attention)
    )
    assert (change > 1e-6).all()


def test_token_mask_replaces_patch_embeddings(make_encoder):
    """An all-True token_mask makes the output independent of the features."""
    encoder = make_encoder()
    lengths = torch.tensor([1.0, 0.4])
    mask = torch.ones(2, 24, dtype=torch.bool)
    with torch.no_grad():
        out_a = encoder(torch.randn(2, 101, 64), lengths, token_mask=mask)
        out_b = encoder(torch.randn(2, 101, 64), lengths, token_mask=mask)
    assert out_a.shape == (2, 24, 64)
    assert (out_a - out_b).abs().max() <= 1e-6
    assert torch.equal(out_a[1, 8:], torch.zeros(16, 64))


def test_token_mask_changes_output(make_encoder):
    """A partial token_mask changes the output; an all-False mask does not."""
    encoder = make_encoder()
    feats, lengths = torch.randn(2, 101, 64), torch.tensor([1.0, 0.5])
    mask = torch.rand(2, 24) < 0.5
    with torch.no_grad():
        plain = encoder(feats, lengths)
        masked = encoder(feats, lengths, token_mask=mask)
        unmasked = encoder(feats, lengths, token_mask=torch.zeros(2, 24, dtype=torch.bool))
    assert (masked - plain).abs().max() > 1e-2
    assert torch.equal(unmasked, plain)


def test_forward_packed_rejects_bad_token_mask(make_encoder):
    """forward_packed raises ValueError for a token_mask of the wrong shape."""
    encoder = make_encoder()
    packed = encoder.patchify(torch.randn(1, 101, 64))
    with pytest.raises(ValueError):
        encoder.forward_packed(packed, torch.zeros(5, dtype=torch.bool))


def test_rows_past_clip_end_are_zero(make_encoder):
    """Output rows past each clip's token count are exactly zero; valid rows are not."""
    encoder = make_encoder()
    feats = torch.randn(3, 301, 64)
    with torch.no_grad():
        out = encoder(feats, torch.tensor([1.0, 0.3, 0.02]))
    # 301 frames -> 18 time patches; 0.3 -> 91 frames -> 5; 0.02 -> 7 frames -> 1.
    assert out.shape == (3, 72, 64)
    for b, n in enumerate([72, 20, 4]):
        assert torch.equal(out[b, n:], torch.zeros(72 - n, 64))
        assert out[b, :n].ne(0).any(-1).all()


def test_input_validation(make_encoder):
    """Wrong n_mels, wrong feats rank or wrong lengths shape raise ValueError."""
    encoder = make_encoder(depth=1)
    with pytest.raises(ValueError):
        encoder(torch.randn(1, 101, 80))
    with pytest.raises(ValueError):
        encoder(torch.randn(101, 64))
    with pytest.raises(ValueError):
        encoder(torch.randn(2, 101, 64), torch.ones(3))
    with pytest.raises(ValueError):
        SLAPAudioEncoder(n_mels=40)


def test_no_bias_anywhere(make_encoder):
    """Every nn.Linear of the encoder is bias-free and no parameter is a bias."""
    encoder = make_encoder()
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 + 3 * 4  # patch embed + (qkv, proj, gate_up, down) per block
    assert all(m.bias is None for m in linears)
    assert not any("bias" in name for name, _ in encoder.named_parameters())


def encoder_param_count(embed_dim, depth, mlp_hidden, patch=256):
    """Closed-form parameter count of SLAPAudioEncoder."""
    block = 4 * embed_dim * embed_dim + 3 * embed_dim * mlp_hidden + 2 * embed_dim
    return patch * embed_dim + embed_dim + depth * block + embed_dim


def test_tiny_param_count_deterministic(load_yaml):
    """The tiny yaml encoder has the closed-form parameter count (1,607,424)."""
    counts = [
        sum(p.numel() for p in load_yaml("slap_tiny")["audio_encoder"].parameters())
        for _ in range(2)
    ]
    assert counts[0] == counts[1] == encoder_param_count(128, 6, 512) == 1_607_424


def test_base_param_count(base_hparams):
    """The base yaml encoder has 113.4-113.5M parameters (closed form 113,462,784)."""
    count = sum(p.numel() for p in base_hparams["audio_encoder"].parameters())
    assert 113.4e6 <= count <= 113.5e6
    assert count == encoder_param_count(768, 12, 3072)


@pytest.mark.parametrize("backend", ["blocked", "sdpa"])
def test_cpu_inference_rows_equal_the_autograd_path(backend, monkeypatch):
    """The inference layout runs each block in row blocks; it equals the autograd path.

    Over two row blocks, clips that straddle them, local and global blocks;
    the input is left as it was. Without the flag a no-grad forward keeps the
    plain layout (the training's teacher and evaluation passes).
    """
    torch.manual_seed(0)
    encoder = SLAPAudioEncoder(
        embed_dim=64, depth=3, num_heads=4, mlp_hidden=96, attention_backend=backend
    ).eval()
    calls, rows_forward = [], EncoderBlock._forward_rows

    def counted(block, *args):
        calls.append(block)
        return rows_forward(block, *args)

    monkeypatch.setattr(EncoderBlock, "_forward_rows", counted)
    feats = torch.randn(3, 16 * 420, 64)  # 1680 tokens for the longest clip
    lens = torch.tensor([1.0, 0.37, 0.81])
    packed = encoder.patchify(feats, lens)
    assert packed.tokens.shape[0] > CPU_INFERENCE_ROWS
    tokens = packed.tokens.clone()
    with torch.enable_grad():
        expected = encoder.forward_packed(packed)
    with torch.no_grad():
        plain = encoder.forward_packed(packed)
        assert not calls
        enable_inference_layout(encoder)
        out = encoder.forward_packed(packed)
    assert len(calls) == len(encoder.blocks)
    torch.testing.assert_close(out, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, expected.detach(), atol=1e-5, rtol=1e-5)
    assert torch.equal(packed.tokens, tokens)


def test_backward_gives_finite_grads(make_encoder):
    """A masked forward + MAP pooling backpropagates finite, non-zero grads to all params."""
    encoder = make_encoder().train()
    pooling = MAPooling(64, num_heads=4)
    feats = torch.randn(2, 201, 64, requires_grad=True)
    lengths = torch.tensor([1.0, 0.6])
    mask = torch.rand(2, 48) < 0.5
    loss = pooling(encoder(feats, lengths, token_mask=mask), lengths).pow(2).sum()
    loss.backward()
    for name, param in list(encoder.named_parameters()) + list(pooling.named_parameters()):
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert torch.isfinite(feats.grad).all()


# RMSNorm gets bf16 activations under autocast and warns it cannot use its fused kernel.
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_cpu_bf16_autocast_close_to_fp32(make_encoder):
    """Under CPU bf16 autocast the encoder runs (sdpa) and stays close to fp32."""
    encoder = make_encoder()
    feats, lengths = torch.randn(2, 301, 64), torch.tensor([1.0, 0.5])
    with torch.no_grad():
        expected = encoder(feats, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = encoder(feats, lengths)
    valid = expected.ne(0).any(-1)
    assert torch.equal(got.ne(0).any(-1), valid)
    cosine = torch.nn.functional.cosine_similarity(got.float()[valid], expected[valid], dim=-1)
    assert cosine.min() > 0.99


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@requires_cuda
def test_cuda_bf16_auto_matches_cpu_fp32(make_encoder):
    """On CUDA under bf16 autocast (auto -> varlen), tokens match the CPU fp32 sdpa run."""
    reference = make_encoder(depth=3, backend="sdpa")
    encoder = make_encoder(depth=3, backend="auto").cuda()
    feats = torch.randn(3, 1001, 64)
    lengths = torch.tensor([1.0, 0.31, 0.07])
    with torch.no_grad():
        expected = reference(feats, lengths)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = encoder(feats.cuda(), lengths.cuda())
    got = got.float().cpu()
    assert got.shape == expected.shape
    valid = expected.ne(0).any(-1)
    assert torch.equal(got.ne(0).any(-1), valid)
    cosine = torch.nn.functional.cosine_similarity(got[valid], expected[valid], dim=-1)
    assert cosine.min() > 0.99


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_cuda_backward_finite(make_encoder, backend):
    """Encoder fwd+bwd on CUDA under bf16 autocast gives finite grads."""
    encoder = make_encoder(depth=3, backend=backend).cuda().train()
    feats = torch.randn(2, 501, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = encoder(feats, torch.tensor([1.0, 0.5], device="cuda"))
    out.float().pow(2).mean().backward()
    for name, param in encoder.named_parameters():
        if name == "mask_token":
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
