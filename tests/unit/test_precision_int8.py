"""``DynamicInt8Linear`` / ``int8_copy`` against fp32 ``nn.Linear``, and the CPU SwiGLU path."""

import pytest
import torch

from speechbrain_slap.lobes.audio_encoder import CPU_INFERENCE_ROWS, SwiGLU
from speechbrain_slap.precision import DynamicInt8Linear, int8_copy


def _relative_error(out, ref):
    return float((out - ref).detach().norm() / ref.detach().norm())


@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_fp32_on_rows_and_batches(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40, bias=bias)
    layer = DynamicInt8Linear(linear)
    for x in (torch.randn(7, 96), torch.randn(2, 5, 96), torch.randn(96)):
        out, ref = layer(x), linear(x)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert _relative_error(out, ref) < 0.02
    assert not list(layer.parameters())


def test_int8_weights_have_one_scale_per_output_channel():
    # Rows of very different magnitudes: one scale for the whole matrix would round the
    # small row to zero; one per output channel keeps it.
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 2, bias=False)
    with torch.no_grad():
        linear.weight[0] *= 1000.0
    x = torch.randn(16, 64)
    out, ref = DynamicInt8Linear(linear)(x), linear(x)
    assert _relative_error(out[:, 1], ref[:, 1]) < 0.02


def test_int8_copy_replaces_every_linear_and_leaves_the_original():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), SwiGLU(64, 128))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copied = int8_copy(net)
    kinds = [type(m) for m in copied.modules()]
    assert torch.nn.Linear not in kinds and kinds.count(DynamicInt8Linear) == 3
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    x = torch.randn(9, 32)
    with torch.no_grad():
        assert _relative_error(copied(x), net(x)) < 0.05


def test_int8_linear_refuses_inputs_off_the_cpu():
    layer = DynamicInt8Linear(torch.nn.Linear(4, 4))
    meta = torch.empty(2, 4, device="meta")
    with pytest.raises(RuntimeError, match="int8 linear layers run on the CPU; got an input on"):
        layer(meta)


def test_swiglu_cpu_inference_blocks_equal_the_training_path():
    # More rows than one block, in a (batch, time, dim) shape: the in-place, blocked
    # inference path gives what the autograd path gives.
    torch.manual_seed(0)
    mlp = SwiGLU(16, 40)
    x = torch.randn(3, CPU_INFERENCE_ROWS // 2 + 5, 16)
    with torch.enable_grad():
        ref = mlp(x)
    with torch.no_grad():
        out = mlp(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref.detach(), atol=1e-6, rtol=1e-6)
