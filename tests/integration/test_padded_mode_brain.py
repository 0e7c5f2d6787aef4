"""``SLAPBrain`` with ``packing: false``: the same losses and gradients as packed (CPU, fp32).

Two Brains are built from the same yaml and seed (identical weights), one
packed and one padding every clip to ``max_duration``; with the same RNG state
(SpecAugment, the SSL token mask and decoder dropout draw in the same order)
their losses, gradients and training steps must agree to rounding.
"""

import pytest
import speechbrain as sb
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _brains(make_brain, tmp_path, **overrides):
    packed = make_brain(output_folder=tmp_path / "packed", **overrides)
    padded = make_brain(output_folder=tmp_path / "padded", **overrides)
    # The recipe yaml has no `packing` key (the Brain defaults to True): set it on the Brain.
    padded[0].hparams.packing = False
    for a, b in zip(packed[0].modules.parameters(), padded[0].modules.parameters(), strict=True):
        assert torch.equal(a, b)  # same seed, same weights
    return packed, padded


def _loss_and_grads(brain, batch):
    brain.modules.train()
    brain.modules.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    predictions = brain.compute_forward(batch, sb.Stage.TRAIN)
    loss = brain.compute_objectives(predictions, batch, sb.Stage.TRAIN)
    loss.backward()
    grads = {
        name: p.grad.clone() for name, p in brain.modules.named_parameters() if p.grad is not None
    }
    return float(loss.detach()), dict(brain.loss_stats), predictions, grads


@pytest.mark.parametrize(
    "loss_weights",
    [{"clap": 1.0, "ssl": 0.0, "cap": 0.5}, {"clap": 1.0, "ssl": 1.0, "cap": 0.5}],
    ids=["clap+cap", "all-three"],
)
def test_padded_loss_and_gradients_equal_packed(make_brain, make_batch, tmp_path, loss_weights):
    """CLAP + captioning (and SSL on the same token mask): loss and every gradient match."""
    (packed, hparams, datasets), (padded, _, _) = _brains(
        make_brain, tmp_path, loss_weights=loss_weights
    )
    assert padded.padded_length() == 748
    batch = make_batch(datasets["train"])
    encoder_calls = []
    padded.hparams.audio_encoder.register_forward_hook(
        lambda mod, args, kwargs, out: encoder_calls.append(kwargs["pad_to"]), with_kwargs=True
    )
    loss, stats, predictions, grads = _loss_and_grads(packed, batch)
    padded_loss, padded_stats, padded_predictions, padded_grads = _loss_and_grads(padded, batch)
    assert encoder_calls == [748]  # the student ran on the padded layout
    assert stats.keys() == padded_stats.keys() == {k for k, w in loss_weights.items() if w > 0}
    assert padded_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    for key, value in stats.items():
        assert padded_stats[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    if loss_weights["ssl"] > 0:  # SSL saw the same masked tokens
        assert torch.equal(predictions["masked_clip_id"], padded_predictions["masked_clip_id"])
    assert (padded_predictions["audio_emb"] - predictions["audio_emb"]).abs().max() <= 1e-5
    assert grads.keys() == padded_grads.keys()
    assert any(name.startswith("audio_encoder.") for name in grads)
    for name, grad in grads.items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (padded_grads[name] - grad).abs().max() <= 1e-4 * scale, name


def test_padded_fit_batch_steps_equal_packed(make_brain, make_batch, train_step, tmp_path):
    """Two full fit_batch steps (all losses, optimizer, EMA teacher): same losses and teacher."""
    (packed, hparams, datasets), (padded, padded_hparams, _) = _brains(make_brain, tmp_path)
    batch = make_batch(datasets["train"])
    losses = {}
    for name, brain in (("packed", packed), ("padded", padded)):
        brain.on_fit_start()
        torch.manual_seed(5)
        losses[name] = [float(train_step(brain, batch)) for _ in range(2)]
    assert losses["padded"] == pytest.approx(losses["packed"], rel=1e-4)
    for a, b in zip(
        hparams["teacher"].parameters(), padded_hparams["teacher"].parameters(), strict=True
    ):
        assert (a - b).abs().max() <= 1e-5


def test_padded_eval_embeddings_equal_packed(make_brain, make_batch, tmp_path):
    """The evaluation forward pads too and gives the same pooled embeddings."""
    (packed, _, datasets), (padded, _, _) = _brains(make_brain, tmp_path)
    batch = make_batch(datasets["valid"], (0, 1, 2, 3))
    with torch.no_grad():
        packed.modules.eval()
        padded.modules.eval()
        reference = packed.compute_forward(batch, sb.Stage.VALID)["audio_emb"]
        result = padded.compute_forward(batch, sb.Stage.VALID)["audio_emb"]
    assert (result - reference).abs().max() <= 1e-5
