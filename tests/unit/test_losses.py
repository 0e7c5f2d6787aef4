"""Tests for losses.py: ClapLoss, sinkhorn_knopp, MaskedDistillationLoss, teacher temperature."""

import math

import pytest
import torch

from speechbrain_slap.losses import (
    ClapLoss,
    MaskedDistillationLoss,
    gather_with_grad,
    sinkhorn_knopp,
    teacher_temperature,
)

# ---------------------------------------------------------------------------
# Independent references (float64, written out step by step)
# ---------------------------------------------------------------------------


def reference_clap_loss(audio, text, logit_scale, max_scale=100.0):
    """Symmetric InfoNCE by hand: normalise, scale, CE audio->text and text->audio, average."""
    a = audio.double()
    t = text.double()
    a = a / a.pow(2).sum(dim=1, keepdim=True).sqrt()
    t = t / t.pow(2).sum(dim=1, keepdim=True).sqrt()
    scale = min(math.exp(float(logit_scale)), max_scale)
    sims = scale * (a @ t.T)
    n = sims.shape[0]
    a2t = sum(-(sims[i, i] - torch.logsumexp(sims[i, :], dim=0)) for i in range(n)) / n
    t2a = sum(-(sims[i, i] - torch.logsumexp(sims[:, i], dim=0)) for i in range(n)) / n
    return float(0.5 * (a2t + t2a))


def reference_sinkhorn(logits, temperature, n_iterations):
    """DINOv2 ``sinkhorn_knopp_teacher`` (single process): K x M matrix normalisation loop."""
    q = torch.exp(logits.double() / temperature).T  # (K, M)
    n_prototypes, n_tokens = q.shape
    q = q / q.sum()
    for _ in range(n_iterations):
        q = q / q.sum(dim=1, keepdim=True)  # every prototype gets 1/K of the mass
        q = q / n_prototypes
        q = q / q.sum(dim=0, keepdim=True)  # every token gets 1/M of the mass
        q = q / n_tokens
    q = q * n_tokens  # tokens' columns sum to 1
    return q.T


def reference_masked_loss(student, targets, clip_id, student_temp):
    """Per-token -sum_k q log softmax(s / T_s), mean within each clip, then mean over clips."""
    per_clip = {}
    for i in range(student.shape[0]):
        s = student[i].double() / student_temp
        log_p = s - torch.logsumexp(s, dim=0)
        token_loss = -float((targets[i].double() * log_p).sum())
        per_clip.setdefault(int(clip_id[i]), []).append(token_loss)
    clip_means = [sum(v) / len(v) for v in per_clip.values()]
    return sum(clip_means) / len(clip_means), per_clip


def cosine_logits(m, k, generator=None):
    """Random prototype logits in [-1, 1], like PrototypeHead's cosines."""
    return torch.rand(m, k, generator=generator) * 2 - 1


# ---------------------------------------------------------------------------
# ClapLoss
# ---------------------------------------------------------------------------


def test_clap_initial_logit_scale():
    """logit_scale starts at ln(1 / 0.07) and the scale at 1 / 0.07."""
    loss_fn = ClapLoss()
    assert loss_fn.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    assert loss_fn.scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert ClapLoss(init_temperature=0.5).logit_scale.item() == pytest.approx(math.log(2.0))


@pytest.mark.parametrize("batch, dim", [(1, 4), (5, 16), (12, 32)])
def test_clap_matches_hand_written_symmetric_ce(batch, dim):
    """ClapLoss equals the hand-written symmetric cross-entropy on unnormalised embeddings."""
    audio = torch.randn(batch, dim) * 3
    text = torch.randn(batch, dim) * 0.5
    loss_fn = ClapLoss()
    expected = reference_clap_loss(audio, text, loss_fn.logit_scale.item())
    assert loss_fn(audio, text).item() == pytest.approx(expected, abs=1e-5)


def test_clap_is_not_symmetric_in_one_direction_only():
    """Both CE directions count: the loss differs from either one-directional CE."""
    audio, text = torch.randn(6, 8), torch.randn(6, 8)
    loss_fn = ClapLoss()
    logits = loss_fn.logits(audio, text).detach()
    labels = torch.arange(6)
    a2t = torch.nn.functional.cross_entropy(logits, labels).item()
    t2a = torch.nn.functional.cross_entropy(logits.T, labels).item()
    assert a2t != pytest.approx(t2a, abs=1e-3)
    assert loss_fn(audio, text).item() == pytest.approx(0.5 * (a2t + t2a), abs=1e-5)


def test_clap_scale_clamped_at_100_with_zero_gradient():
    """logit_scale = 10 gives scale 100 (not e^10) and no gradient to logit_scale."""
    audio, text = torch.randn(6, 8), torch.randn(6, 8)
    loss_fn = ClapLoss()
    with torch.no_grad():
        loss_fn.logit_scale.fill_(10.0)
    assert loss_fn.scale.item() == pytest.approx(100.0)
    loss = loss_fn(audio, text)
    assert loss.item() == pytest.approx(reference_clap_loss(audio, text, 10.0), abs=1e-4)
    loss.backward()
    assert loss_fn.logit_scale.grad is not None
    assert loss_fn.logit_scale.grad.item() == 0.0


def test_clap_logit_scale_gradient_unclamped_matches_finite_difference():
    """Below the clamp logit_scale gets the gradient of the hand reference (finite differences)."""
    audio, text = torch.randn(6, 8), torch.randn(6, 8)
    loss_fn = ClapLoss()
    loss_fn(audio, text).backward()
    s0, eps = loss_fn.logit_scale.item(), 1e-4
    fd = (
        reference_clap_loss(audio, text, s0 + eps) - reference_clap_loss(audio, text, s0 - eps)
    ) / (2 * eps)
    assert loss_fn.logit_scale.grad.item() == pytest.approx(fd, rel=1e-3, abs=1e-5)
    assert loss_fn.logit_scale.grad.item() != 0.0


@pytest.mark.parametrize("shape_a, shape_t", [((4, 8), (5, 8)), ((4, 8), (4, 6))])
def test_clap_mismatched_shapes_raise(shape_a, shape_t):
    """Audio and text embeddings of different shapes raise ValueError."""
    with pytest.raises(ValueError):
        ClapLoss()(torch.randn(*shape_a), torch.randn(*shape_t))


def test_clap_loss_falls_as_pairs_align():
    """Moving each text embedding toward its audio embedding lowers the loss step by step."""
    audio, text = torch.randn(8, 32), torch.randn(8, 32)
    loss_fn = ClapLoss()
    with torch.no_grad():
        losses = [
            loss_fn(audio, (1 - alpha) * text + alpha * audio).item()
            for alpha in (0.0, 0.25, 0.5, 0.75, 1.0)
        ]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.05  # identical pairs at scale 1/0.07: near-zero loss


def test_clap_is_invariant_to_embedding_norm():
    """Embeddings are L2-normalised: rescaling rows does not change the loss."""
    audio, text = torch.randn(5, 8), torch.randn(5, 8)
    loss_fn = ClapLoss()
    scales = torch.tensor([0.1, 1.0, 3.0, 7.0, 100.0])[:, None]
    assert loss_fn(audio * scales, text / scales).item() == pytest.approx(
        loss_fn(audio, text).item(), abs=1e-5
    )


def test_clap_is_fp32_under_autocast():
    """The module promises fp32 losses: under bf16 autocast logits stay fp32, loss unchanged."""
    audio = torch.randn(32, 64)
    text = audio + 2.0 * torch.randn(32, 64)
    loss_fn = ClapLoss()
    with torch.no_grad():
        loss_fn.logit_scale.fill_(4.6)  # scale ~100, where bf16 cosines are off by ~0.4 logits
    expected = reference_clap_loss(audio, text, 4.6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = loss_fn.logits(audio, text)
        loss = loss_fn(audio, text)
    assert logits.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, abs=1e-4)


def test_masked_loss_is_fp32_under_autocast():
    """MaskedDistillationLoss gives the fp32 value under bf16 autocast."""
    student, teacher = torch.randn(9, 8), cosine_logits(9, 8)
    loss_fn = MaskedDistillationLoss(n_prototypes=8)
    expected = loss_fn(student, teacher, CLIP_ID, 0.04)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(student, teacher, CLIP_ID, 0.04)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_gather_with_grad_is_identity_without_process_group():
    """Without torch.distributed, gather_with_grad returns its input (gradient intact)."""
    x = torch.randn(3, 4, requires_grad=True)
    out = gather_with_grad(x)
    assert torch.equal(out, x)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 4))


# ---------------------------------------------------------------------------
# sinkhorn_knopp
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("m, k, iterations", [(64, 16, 3), (200, 32, 3), (7, 50, 1), (30, 5, 10)])
def test_sinkhorn_matches_reference(m, k, iterations):
    """sinkhorn_knopp equals the DINOv2-style reimplementation to 1e-6."""
    logits = cosine_logits(m, k)
    expected = reference_sinkhorn(logits, 0.05, iterations)
    got = sinkhorn_knopp(logits, 0.05, iterations)
    assert got.shape == (m, k)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-5)


def test_sinkhorn_rows_sum_to_one():
    """Every token's target distribution sums to 1 and is non-negative."""
    q = sinkhorn_knopp(cosine_logits(96, 24), 0.04, 3)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(96), atol=1e-5, rtol=0)


def test_sinkhorn_prototype_marginals_converge():
    """Prototype marginals approach M/K: loose after 3 iterations, shrinking, ~exact at 50."""
    m, k = 256, 16
    logits = cosine_logits(m, k)
    target = m / k

    def marginal_error(n):
        return ((sinkhorn_knopp(logits, 0.07, n).sum(dim=0) - target).abs().max() / target).item()

    plain_softmax_error = (
        (torch.softmax(logits / 0.07, dim=1).sum(dim=0) - target).abs().max() / target
    ).item()
    errors = [marginal_error(n) for n in (1, 3, 10, 50)]
    assert errors[1] < 0.25  # 3 iterations: within 25% of M/K
    assert errors[1] < 0.5 * plain_softmax_error  # much flatter than the plain softmax
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-4


def test_sinkhorn_invariant_to_constant_shift():
    """Adding a constant to all logits leaves the targets unchanged."""
    logits = cosine_logits(40, 12)
    base = sinkhorn_knopp(logits, 0.05, 3)
    for shift in (-0.7, 0.3, 1.0):
        torch.testing.assert_close(sinkhorn_knopp(logits + shift, 0.05, 3), base)


def test_sinkhorn_has_no_gradient():
    """Targets are constants: computed without autograd even from a requires_grad input."""
    logits = cosine_logits(10, 4).requires_grad_(True)
    q = sinkhorn_knopp(logits, 0.05)
    assert not q.requires_grad


# ---------------------------------------------------------------------------
# MaskedDistillationLoss
# ---------------------------------------------------------------------------

# Three clips with 1, 2 and 6 masked tokens: per-clip averaging differs from token averaging.
CLIP_ID = torch.tensor([0, 1, 1, 2, 2, 2, 2, 2, 2])


def test_masked_loss_sinkhorn_matches_hand_computation():
    """Sinkhorn mode: mean over clips of the mean over masked tokens of -q_t log q_s."""
    k = 8
    student = torch.randn(CLIP_ID.numel(), k)
    teacher = cosine_logits(CLIP_ID.numel(), k)
    loss_fn = MaskedDistillationLoss(n_prototypes=k, sinkhorn_iterations=3)
    targets = reference_sinkhorn(teacher, 0.04, 3)
    expected, per_clip = reference_masked_loss(student, targets, CLIP_ID, 0.1)
    got = loss_fn(student, teacher, CLIP_ID, teacher_temp=0.04).item()
    assert got == pytest.approx(expected, rel=1e-5)
    per_token_mean = sum(sum(v) for v in per_clip.values()) / CLIP_ID.numel()
    assert abs(per_token_mean - expected) > 1e-2  # the weighting matters on this batch
    assert got != pytest.approx(per_token_mean, rel=1e-3)


def test_masked_loss_clips_count_equally():
    """A clip with many masked tokens counts as much as a clip with one."""
    k = 6
    teacher = cosine_logits(4, k)
    student = torch.randn(4, k)
    loss_fn = MaskedDistillationLoss(n_prototypes=k, centering="softmax").eval()
    one_clip = loss_fn(student, teacher, torch.tensor([0, 0, 0, 0]), 0.05)
    # Duplicating the first token three times inside clip 0 keeps clip 0's mean unchanged.
    s2 = torch.cat([student[:1].repeat(3, 1), student])
    t2 = torch.cat([teacher[:1].repeat(3, 1), teacher])
    ids = torch.tensor([7, 7, 7, 7, 9, 9, 9])  # clip 7: token 0 x4; clip 9: tokens 1..3
    expected = 0.5 * (
        loss_fn(student[:1], teacher[:1], torch.tensor([0]), 0.05)
        + loss_fn(student[1:], teacher[1:], torch.tensor([0, 0, 0]), 0.05)
    )
    torch.testing.assert_close(loss_fn(s2, t2, ids, 0.05), expected)
    assert not torch.allclose(one_clip, expected)


def test_masked_loss_softmax_centering_targets_and_frozen_center_in_eval():
    """Softmax mode: targets are softmax((t - center) / temp); eval() leaves the center alone."""
    k = 8
    student = torch.randn(CLIP_ID.numel(), k)
    teacher = cosine_logits(CLIP_ID.numel(), k)
    loss_fn = MaskedDistillationLoss(n_prototypes=k, centering="softmax").eval()
    center = torch.linspace(-0.3, 0.4, k)[None, :]
    loss_fn.center.copy_(center)
    targets = torch.softmax((teacher.double() - center.double()) / 0.05, dim=-1)
    torch.testing.assert_close(
        loss_fn.teacher_targets(teacher, 0.05).double(), targets, atol=1e-6, rtol=1e-5
    )
    expected, _ = reference_masked_loss(student, targets, CLIP_ID, 0.1)
    assert loss_fn(student, teacher, CLIP_ID, 0.05).item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(loss_fn.center, center, atol=0, rtol=0)


def test_masked_loss_softmax_center_ema_in_training():
    """Training mode: loss uses the old center, then center <- m * center + (1 - m) * mean(t)."""
    k = 8
    student = torch.randn(CLIP_ID.numel(), k)
    teacher = cosine_logits(CLIP_ID.numel(), k)
    loss_fn = MaskedDistillationLoss(n_prototypes=k, centering="softmax", center_momentum=0.8)
    assert loss_fn.training
    old = torch.linspace(-0.2, 0.2, k)[None, :]
    loss_fn.center.copy_(old)
    targets = torch.softmax((teacher.double() - old.double()) / 0.05, dim=-1)
    expected, _ = reference_masked_loss(student, targets, CLIP_ID, 0.1)
    assert loss_fn(student, teacher, CLIP_ID, 0.05).item() == pytest.approx(expected, rel=1e-5)
    new_center = 0.8 * old + 0.2 * teacher.mean(dim=0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, new_center, atol=1e-6, rtol=1e-5)


def test_masked_loss_sinkhorn_mode_keeps_center_untouched():
    """Sinkhorn mode never updates the (unused) centre buffer."""
    loss_fn = MaskedDistillationLoss(n_prototypes=4)
    loss_fn(torch.randn(5, 4), cosine_logits(5, 4), torch.tensor([0, 0, 1, 1, 1]), 0.04)
    assert torch.equal(loss_fn.center, torch.zeros(1, 4))


@pytest.mark.parametrize("centering", ["sinkhorn", "softmax"])
def test_masked_loss_no_masked_tokens_is_zero_and_differentiable(centering):
    """With no masked token the loss is 0 and backward gives zero gradients."""
    loss_fn = MaskedDistillationLoss(n_prototypes=8, centering=centering)
    student = torch.randn(0, 8, requires_grad=True)
    teacher = torch.randn(0, 8)
    loss = loss_fn(student, teacher, torch.zeros(0, dtype=torch.long), 0.04)
    assert loss.dim() == 0 and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert student.grad is not None and student.grad.shape == (0, 8)
    assert torch.equal(loss_fn.center, torch.zeros(1, 8))


@pytest.mark.parametrize("centering", ["sinkhorn", "softmax"])
def test_masked_loss_gradient_reaches_student_only(centering):
    """Student logits get the analytic gradient; teacher logits get none even if requiring grad."""
    k = 6
    student = torch.randn(CLIP_ID.numel(), k, requires_grad=True)
    teacher = cosine_logits(CLIP_ID.numel(), k).requires_grad_(True)
    loss_fn = MaskedDistillationLoss(n_prototypes=k, centering=centering).eval()
    targets = loss_fn.teacher_targets(teacher, 0.04)
    loss = loss_fn(student, teacher, CLIP_ID, 0.04)
    loss.backward()
    assert teacher.grad is None
    # d/ds of -q . log softmax(s / T) = (softmax(s / T) - q) / T, times the clip weight.
    counts = torch.bincount(CLIP_ID).float()
    weight = 1.0 / (counts[CLIP_ID] * counts.numel())
    analytic = (torch.softmax(student.detach() / 0.1, dim=-1) - targets) / 0.1 * weight[:, None]
    torch.testing.assert_close(student.grad, analytic, atol=1e-5, rtol=1e-4)


def test_masked_loss_rejects_bad_arguments():
    """Mismatched logits and unknown centering modes raise ValueError."""
    with pytest.raises(ValueError):
        MaskedDistillationLoss(n_prototypes=4, centering="mean")
    loss_fn = MaskedDistillationLoss(n_prototypes=4)
    with pytest.raises(ValueError):
        loss_fn(torch.randn(3, 4), torch.randn(2, 4), torch.tensor([0, 0, 1]), 0.04)


# ---------------------------------------------------------------------------
# teacher_temperature
# ---------------------------------------------------------------------------


def test_teacher_temperature_warmup():
    """0.04 at step 0, linear to 0.07 at the end of warm-up, 0.07 afterwards."""
    warmup = 300
    assert teacher_temperature(0, warmup) == pytest.approx(0.04)
    for step in (1, 75, 150, 299):
        assert teacher_temperature(step, warmup) == pytest.approx(0.04 + 0.03 * step / warmup)
    for step in (300, 301, 10_000):
        assert teacher_temperature(step, warmup) == pytest.approx(0.07)
    values = [teacher_temperature(s, warmup) for s in range(0, 400)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_teacher_temperature_without_warmup():
    """No warm-up means the final temperature from step 0."""
    assert teacher_temperature(0, 0) == pytest.approx(0.07)
    assert teacher_temperature(5, 0, start=0.01, end=0.02) == pytest.approx(0.02)
