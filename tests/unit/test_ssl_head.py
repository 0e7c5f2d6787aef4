"""Tests for lobes/ssl_head.py: PrototypeHead shapes, cosine logits, frozen prototype norms."""

import pytest
import torch

from speechbrain_slap.lobes.ssl_head import PrototypeHead


def make_head(n_layers=3):
    """A small head: 32 -> 64 hidden -> 16 bottleneck -> 40 prototypes."""
    return PrototypeHead(32, n_prototypes=40, hidden_size=64, bottleneck_size=16, n_layers=n_layers)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_output_shape(n_layers):
    """(M, input_size) -> (M, n_prototypes), including M = 0."""
    head = make_head(n_layers)
    assert head(torch.randn(7, 32)).shape == (7, 40)
    assert head(torch.randn(0, 32)).shape == (0, 40)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in head.mlp)
    assert n_linear == n_layers


def test_bad_layer_count_raises():
    """n_layers < 1 raises ValueError."""
    with pytest.raises(ValueError):
        PrototypeHead(8, n_prototypes=4, n_layers=0)


def test_logits_are_cosines():
    """Logits equal cos(bottleneck, prototype): normalised MLP output times unit prototypes."""
    head = make_head()
    x = torch.randn(11, 32)
    z = head.mlp(x)
    v = head.prototypes.parametrizations.weight.original1
    expected = (z / z.norm(dim=1, keepdim=True)) @ (v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(head(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("input_scale", [1e-3, 1.0, 1e3])
def test_logits_bounded_by_one(input_scale):
    """|logit| <= 1 + 1e-5 for any input scale, also after the parameters have been trained."""
    head = make_head()
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    for _ in range(3):
        x = torch.randn(64, 32) * input_scale
        assert head(x).abs().max().item() <= 1 + 1e-5
        optimizer.zero_grad()
        (-head(x).max(dim=1).values.sum()).backward()  # push logits toward +1
        optimizer.step()
    assert head(torch.randn(64, 32) * input_scale).abs().max().item() <= 1 + 1e-5


def test_prototype_norm_is_frozen_at_one():
    """weight_norm's g (original0) is all ones, not trainable, and gets no gradient."""
    head = make_head()
    g = head.prototypes.parametrizations.weight.original0
    assert not g.requires_grad
    assert torch.equal(g, torch.ones_like(g))
    head(torch.randn(5, 32)).sum().backward()
    assert g.grad is None
    trainable = {id(p) for p in head.parameters() if p.requires_grad}
    assert id(g) not in trainable
    assert id(head.prototypes.parametrizations.weight.original1) in trainable
    rows = head.prototypes.weight.norm(dim=1)
    torch.testing.assert_close(rows, torch.ones_like(rows))


def test_gradient_reaches_mlp_and_prototypes():
    """A backward pass gives gradients to every trainable parameter."""
    head = make_head()
    head(torch.randn(9, 32)).pow(2).sum().backward()
    for name, p in head.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
