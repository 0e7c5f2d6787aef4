"""Tagging parts: rolling, mixup, balanced weights, embedder, head, the Brain's losses."""

import pytest
import speechbrain as sb
import torch
from sklearn.metrics import average_precision_score

from speechbrain_slap.lobes.classifier import IdentityNormalization, LinearClassifier, SLAPEmbedder
from speechbrain_slap.lobes.pooling import MAPooling
from speechbrain_slap.tagging import (
    TaggingBrain,
    balanced_sample_weights,
    cyclic_roll,
    mixup,
    random_shifts,
    sample_mixup,
)


# -- cyclic rolling ---------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 50), (4, 50, 3)], ids=["waveforms", "features"])
def test_cyclic_roll_is_torch_roll_of_each_real_part(shape):
    """Each clip's real part equals torch.roll of it; padding rows are untouched."""
    x = torch.randn(shape)
    lengths = torch.tensor([50, 17, 1, 33])
    shifts = torch.tensor([3, -5, 4, 70])
    out = cyclic_roll(x, lengths, shifts)
    for b, (n, s) in enumerate(zip(lengths.tolist(), shifts.tolist(), strict=True)):
        torch.testing.assert_close(out[b, :n], torch.roll(x[b, :n], s, dims=0), rtol=0, atol=0)
        torch.testing.assert_close(out[b, n:], x[b, n:], rtol=0, atol=0)
    assert torch.equal(cyclic_roll(x, lengths, torch.zeros(4, dtype=torch.long)), x)


def test_cyclic_roll_rejects_bad_lengths():
    with pytest.raises(ValueError, match=r"values in \[1, 5\]"):
        cyclic_roll(torch.zeros(2, 5), torch.tensor([6, 2]), torch.zeros(2))
    with pytest.raises(ValueError, match=r"shifts must have shape \(2,\)"):
        cyclic_roll(torch.zeros(2, 5), torch.tensor([5, 2]), torch.zeros(3))


def test_random_shifts_cover_each_clip_uniformly():
    """Shifts lie in [0, n); every shift of a 4-long clip is about equally likely."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([4, 1]).repeat(4000)
    shifts = random_shifts(lengths, generator=generator)
    assert bool((shifts >= 0).all()) and bool((shifts < lengths).all())
    counts = torch.bincount(shifts[lengths == 4], minlength=4).double() / 4000
    torch.testing.assert_close(
        counts, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03, rtol=0
    )
    assert bool((shifts[lengths == 1] == 0).all())


# -- mixup ---------------------------------------------------------------------------
def test_mixup_mixes_inputs_targets_and_lengths():
    """Against the formula written out clip by clip; lengths become the longer of each pair."""
    x = torch.randn(3, 10, 2)
    targets = torch.eye(3)
    lengths = torch.tensor([1.0, 0.3, 0.6])
    weights = torch.tensor([0.7, 0.2, 1.0])
    partners = torch.tensor([2, 0, 1])
    mixed, mixed_targets, mixed_lengths = mixup(x, targets, lengths, weights, partners)
    for i, (w, p) in enumerate(zip(weights.tolist(), partners.tolist(), strict=True)):
        torch.testing.assert_close(mixed[i], w * x[i] + (1 - w) * x[p])
        torch.testing.assert_close(mixed_targets[i], w * targets[i] + (1 - w) * targets[p])
        assert float(mixed_lengths[i]) == max(float(lengths[i]), float(lengths[p]))
    torch.testing.assert_close(mixed_targets.sum(dim=1), torch.ones(3))
    assert torch.equal(mixed[2], x[2])  # weight 1 keeps the clip


def test_mixup_of_padded_waveforms_is_the_sum_of_the_sounds():
    """A short clip mixed into a long one is heard only over its own duration."""
    long, short = torch.ones(8), torch.full((3,), 2.0)
    x = torch.stack([long, torch.nn.functional.pad(short, (0, 5))])
    mixed, _, lengths = mixup(
        x, torch.eye(2), torch.tensor([1.0, 3 / 8]), torch.tensor([0.5, 0.5]), torch.tensor([1, 0])
    )
    assert mixed[0].tolist() == [1.5] * 3 + [0.5] * 5
    assert torch.equal(mixed[0], mixed[1]) and lengths.tolist() == [1.0, 1.0]


def test_sample_mixup_draws_beta_weights_and_a_permutation():
    torch.manual_seed(0)
    weights, partners = sample_mixup(20000, alpha=0.5)
    assert sorted(partners.tolist()) == list(range(20000))
    # Beta(0.5, 0.5): mean 1/2, variance 1/8.
    assert float(weights.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(weights.var()) == pytest.approx(0.125, abs=0.005)
    with pytest.raises(ValueError, match="alpha must be positive"):
        sample_mixup(4, alpha=0.0)


# -- balanced sampling ------------------------------------------------------------------
def test_balanced_weights_give_every_class_the_same_mass():
    """Single-label: each class gets total weight 1 however rare it is."""
    labels = [[0]] * 7 + [[1]] * 2 + [[2]]
    weights = balanced_sample_weights(labels, n_classes=3)
    for c in range(3):
        mass = sum(w for w, clip in zip(weights, labels, strict=True) if c in clip)
        assert float(mass) == pytest.approx(1.0)
    # Multi-label: the sum of the inverse counts of the clip's labels.
    weights = balanced_sample_weights([[0, 1], [0], [1, 2], []], n_classes=4)
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5, 1.5, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"clip 0: label index 5 not in \[0, 4\)"):
        balanced_sample_weights([[5]], n_classes=4)


# -- embedder and head --------------------------------------------------------------------
def test_embedder_equals_the_padded_encoder_and_pooling(make_encoder, pad_batch):
    """(B, 1, D) from the packed path equals encoder(feats, lens) -> MAPooling on padded tokens."""
    encoder = make_encoder()
    pooling = MAPooling(input_size=64, num_heads=4).eval()
    embedder = SLAPEmbedder(encoder, pooling)
    feats = torch.randn(3, 201, 64)
    lens = torch.tensor([1.0, 0.4, 0.75])
    with torch.no_grad():
        emb = embedder(feats, lens)
        reference = pooling(encoder(feats, lens), lens)
        alone = embedder(feats[1:2, :81], None)  # clip 1 alone: 0.4 * 200 + 1 frames
    assert emb.shape == (3, 1, 64)
    torch.testing.assert_close(emb[:, 0], reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb[1], alone[0], atol=1e-5, rtol=1e-5)


def test_embedder_trains_every_parameter_but_the_mask_token(make_encoder):
    """Under DDP a parameter without gradient would stall training: only the mask token has none."""
    embedder = SLAPEmbedder(make_encoder().train(), MAPooling(input_size=64, num_heads=4))
    embedder(torch.randn(2, 101, 64), torch.tensor([1.0, 0.5])).square().sum().backward()
    no_grad = [n for n, p in embedder.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert not embedder.audio_encoder.mask_token.requires_grad


def test_linear_classifier_outputs():
    torch.manual_seed(0)
    head = LinearClassifier(8, 5)
    emb = torch.randn(4, 1, 8)
    logits = emb @ head.linear.weight.T + head.linear.bias
    torch.testing.assert_close(head(emb), logits)
    torch.testing.assert_close(head(emb[:, 0]), logits[:, 0])
    head.output = "log_softmax"
    torch.testing.assert_close(head(emb), logits - logits.logsumexp(dim=-1, keepdim=True))
    head.output = "sigmoid"
    torch.testing.assert_close(head(emb), 1 / (1 + torch.exp(-logits)))
    with pytest.raises(ValueError, match="output must be one of"):
        LinearClassifier(8, 5, output="softmax")
    with pytest.raises(ValueError, match=r"expected embeddings \(batch, 8\)"):
        head(torch.randn(4, 7))


def test_identity_normalization_returns_its_input():
    feats = torch.randn(2, 10, 64)
    assert IdentityNormalization()(feats, torch.ones(2)) is feats


# -- the Brain's objectives and metrics ----------------------------------------------------
def _brain(multilabel: bool, label_smoothing: float = 0.0) -> TaggingBrain:
    hparams = {"multilabel": multilabel, "label_smoothing": label_smoothing}
    modules = {"classifier": LinearClassifier(4, 3)}
    brain = TaggingBrain(modules=modules, hparams=hparams, run_opts={"device": "cpu"})
    brain.on_stage_start(sb.Stage.VALID)
    return brain


def test_multilabel_loss_is_bce_and_metric_is_macro_ap():
    """BCE written out; collected sigmoid scores give scikit-learn's mean per-class AP."""
    brain = _brain(multilabel=True)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0], [0.3, 0.2, 1.0], [1.0, -1.0, 0.0]])
    targets = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 1]])
    loss = brain.compute_objectives((logits, targets), None, sb.Stage.VALID)
    p = torch.sigmoid(logits)
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    metrics = brain.evaluation_metrics()
    reference = average_precision_score(targets.numpy(), p.numpy(), average=None).mean()
    assert metrics["mAP"] == pytest.approx(float(reference))
    assert metrics["n_clips"] == 4 and brain.metric_name == "mAP"


def test_single_label_loss_is_smoothed_cross_entropy_and_metric_is_accuracy():
    """Cross-entropy against (1 - eps) one-hot + eps / C; accuracy of the argmax."""
    brain = _brain(multilabel=False, label_smoothing=0.1)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0], [0.3, 0.2, 1.0]])
    targets = torch.eye(3)[[0, 0, 2]]
    loss = brain.compute_objectives((logits, targets), None, sb.Stage.VALID)
    smoothed = 0.9 * targets + 0.1 / 3
    expected = -(smoothed * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert brain.evaluation_metrics() == {"accuracy": pytest.approx(2 / 3), "n_clips": 3}
