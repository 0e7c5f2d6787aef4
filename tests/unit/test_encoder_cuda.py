"""The whole encoder on CUDA: fast backends and compiled blocks vs the sdpa reference."""

import copy

import pytest
import torch

from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder
from speechbrain_slap.lobes.packing import pack_padded
from speechbrain_slap.lobes.pooling import MAPooling

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SEQLENS = [4, 52, 248, 100, 748, 8]  # tokens; windows straddle every clip boundary


def _packed(seqlens, seed=0):
    generator = torch.Generator().manual_seed(seed)
    patches = torch.randn(len(seqlens), max(seqlens), 256, generator=generator)
    return pack_padded(patches, torch.tensor(seqlens))


def _to_cuda(packed):
    fields = vars(packed).copy()
    for name, value in fields.items():
        if isinstance(value, torch.Tensor):
            fields[name] = value.cuda()
    return type(packed)(**fields)


def _encoder(backend):
    torch.manual_seed(0)
    return SLAPAudioEncoder(
        embed_dim=256, depth=6, num_heads=4, mlp_hidden=512, attention_backend=backend
    ).cuda()


def _rel_err(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("backend", ["varlen", "flex"])
def test_bf16_backend_matches_sdpa_forward_and_backward(backend):
    """Encoder output and weight gradients in bf16 agree with the sdpa backend."""
    reference = _encoder("sdpa")
    candidate = copy.deepcopy(reference)
    candidate.attention_backend = backend
    packed = _to_cuda(_packed(SEQLENS))
    # A fixed random projection of the output: the mean square of an RMSNorm
    # output is ~1 whatever the input, and its gradient would be pure noise.
    probe = torch.randn(packed.tokens.shape[0], 256, device="cuda")
    outputs, grads = [], []
    for model in (reference, candidate):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model.forward_packed(packed)
        (out.float() * probe).sum().backward()
        outputs.append(out.detach())
        grads.append([model.blocks[i].attn.qkv.weight.grad for i in (0, 2)])
    assert _rel_err(outputs[1], outputs[0]) < 2e-2
    for got, want in zip(grads[1], grads[0], strict=True):
        assert _rel_err(got, want) < 5e-2


def test_packed_equals_alone_on_cuda_fp32():
    """On CUDA in fp32, a clip encoded inside a packed batch matches the clip alone.

    cuBLAS picks kernels by matrix shape, so the packed and single-clip runs
    round differently (~1e-6 per op, amplified through random-init blocks);
    attention leaking across clips would differ by O(1).
    """
    encoder = _encoder("sdpa")
    pooling = MAPooling(256, num_heads=4).cuda()
    packed = _to_cuda(_packed(SEQLENS))
    with torch.no_grad():
        out = encoder.forward_packed(packed)
        pooled = pooling.forward_packed(out, packed.cu_seqlens)
        for b, n in enumerate(SEQLENS):
            start = int(packed.cu_seqlens[b])
            alone = pack_padded(packed.tokens[start : start + n][None], torch.tensor([n]))
            alone_out = encoder.forward_packed(_to_cuda(alone))
            assert float((alone_out - out[start : start + n]).abs().max()) <= 2e-3
            alone_pooled = pooling.forward_packed(alone_out, alone.cu_seqlens.cuda())
            assert float((alone_pooled[0] - pooled[b]).abs().max()) <= 2e-3


def test_compiled_blocks_match_eager_across_token_counts():
    """Per-block torch.compile matches eager and stops recompiling as token counts change."""
    from torch._dynamo.utils import counters

    eager = _encoder("varlen")
    compiled = copy.deepcopy(eager).compile_blocks()
    batches = [SEQLENS, [300, 17, 64], [748] * 3 + [12], [33, 90, 5, 400, 61], [128, 256]]
    graphs = []
    for seed, seqlens in enumerate(batches):
        packed = _to_cuda(_packed(seqlens, seed))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            reference = eager.forward_packed(packed)
            out = compiled.forward_packed(packed)
        out.float().sum().backward()
        assert _rel_err(out, reference) < 2e-2
        graphs.append(counters["stats"]["unique_graphs"])
    # Dynamic shapes settle after the first change of size; no graph after that.
    assert graphs[2] == graphs[-1], graphs
