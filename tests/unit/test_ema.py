"""Tests for ema.py: cosine momentum schedule and the EMA teacher."""

import math

import pytest
import torch
from torch import nn

from speechbrain_slap.ema import EMATeacher, cosine_momentum
from speechbrain_slap.lobes.ssl_head import PrototypeHead


def make_student(seed=0):
    """A small student: a linear 'encoder' and a prototype head (weight-normalised)."""
    torch.manual_seed(seed)
    return nn.ModuleDict(
        {
            "encoder": nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 8)),
            "ssl_head": PrototypeHead(8, n_prototypes=5, hidden_size=12, bottleneck_size=4),
        }
    )


def perturb_(module, scale=0.5):
    """Adds noise to every trainable parameter in place."""
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


def flat_params(module):
    """All parameters concatenated into one vector (copies)."""
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


class Wrapped(nn.Module):
    """Stand-in for DistributedDataParallel: the real module sits at ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


def test_cosine_momentum_endpoints():
    """0.994 at step 0, 1.0 at total_steps and after, start value for negative steps."""
    assert cosine_momentum(0, 1000) == pytest.approx(0.994)
    assert cosine_momentum(1000, 1000) == pytest.approx(1.0)
    assert cosine_momentum(5000, 1000) == pytest.approx(1.0)
    assert cosine_momentum(-3, 1000) == pytest.approx(0.994)
    assert cosine_momentum(0, 10, start=0.9, end=0.99) == pytest.approx(0.9)
    assert cosine_momentum(10, 10, start=0.9, end=0.99) == pytest.approx(0.99)


def test_cosine_momentum_matches_formula_and_is_monotonic():
    """m(s) = 1 - (1 - 0.994) (cos(pi s / T) + 1) / 2, non-decreasing in s."""
    total = 97
    values = [cosine_momentum(s, total) for s in range(total + 10)]
    for s in range(total + 1):
        expected = 1.0 - 0.006 * (math.cos(math.pi * s / total) + 1) / 2
        assert values[s] == pytest.approx(expected, abs=1e-12)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[total // 2] == pytest.approx(0.997, abs=2e-4)


def test_update_is_hand_computed_lerp():
    """After update every teacher parameter equals m * teacher + (1 - m) * student."""
    student = make_student()
    teacher = EMATeacher(student, total_steps=10)
    for _ in range(2):  # move off step 0 so the momentum is not the start value
        teacher.update(student)
    perturb_(student)
    before_teacher = {n: p.clone() for n, p in teacher.modules_ema.named_parameters()}
    m = cosine_momentum(2, 10)
    assert teacher.momentum == pytest.approx(m)
    used = teacher.update(student)
    assert used == pytest.approx(m)
    student_params = dict(student.named_parameters())
    for name, p in teacher.modules_ema.named_parameters():
        expected = m * before_teacher[name] + (1 - m) * student_params[name].detach()
        torch.testing.assert_close(p, expected, atol=1e-7, rtol=1e-6)


def test_teacher_starts_as_copy_and_is_independent():
    """The teacher starts equal to the student but does not share storage with it."""
    student = make_student()
    teacher = EMATeacher(student, total_steps=10)
    torch.testing.assert_close(flat_params(teacher.modules_ema), flat_params(student))
    perturb_(student)
    assert not torch.allclose(flat_params(teacher.modules_ema), flat_params(student))
    assert teacher["encoder"] is teacher.modules_ema["encoder"]


def test_teacher_never_requires_or_receives_grad():
    """Teacher params never require grad; backward through student and teacher leaves .grad None."""
    student = make_student()
    teacher = EMATeacher(student, total_steps=10)
    teacher.train()
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(3, 6)
    student_out = student["ssl_head"](student["encoder"](x))
    teacher_out = teacher["ssl_head"](teacher["encoder"](x))
    assert not teacher_out.requires_grad
    (student_out - teacher_out).pow(2).sum().backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student["encoder"][0].weight.grad is not None
    teacher.update(student)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_teacher_stays_in_eval_mode():
    """train() on the teacher (or a parent module) keeps every teacher module in eval mode."""
    student = make_student()
    teacher = EMATeacher(student, total_steps=10)
    assert not any(m.training for m in teacher.modules_ema.modules())
    teacher.train()
    assert not any(m.training for m in teacher.modules_ema.modules())
    parent = nn.ModuleDict({"student": student, "teacher": teacher})
    parent.train()
    assert student.training
    assert not any(m.training for m in teacher.modules_ema.modules())


def test_step_buffer_increments_and_is_saved():
    """Each update adds one to the step buffer, which is part of state_dict."""
    student = make_student()
    teacher = EMATeacher(student, total_steps=10)
    assert int(teacher.step) == 0
    for i in range(3):
        teacher.update(student)
        assert int(teacher.step) == i + 1
    state = teacher.state_dict()
    assert "step" in state and int(state["step"]) == 3


def test_state_dict_round_trip_restores_parameters_and_momentum():
    """Loading a state_dict into a fresh EMATeacher restores parameters, step and momentum."""
    student = make_student(seed=0)
    teacher = EMATeacher(student, total_steps=20)
    for _ in range(4):
        perturb_(student, 0.1)
        teacher.update(student)
    fresh = EMATeacher(make_student(seed=1), total_steps=20)
    assert not torch.allclose(flat_params(fresh.modules_ema), flat_params(teacher.modules_ema))
    fresh.load_state_dict(teacher.state_dict())
    torch.testing.assert_close(
        flat_params(fresh.modules_ema), flat_params(teacher.modules_ema), atol=0, rtol=0
    )
    assert int(fresh.step) == 4
    assert fresh.momentum == teacher.momentum == pytest.approx(cosine_momentum(4, 20))


def test_teacher_converges_to_fixed_student():
    """With a fixed student the distance shrinks each update by exactly the momentum used."""
    student = make_student(seed=0)
    teacher = EMATeacher(student, total_steps=50, momentum_start=0.9)
    perturb_(student)
    target = flat_params(student)
    dist = (flat_params(teacher.modules_ema) - target).norm().item()
    assert dist > 0.1
    for _ in range(10):
        m = teacher.update(student)
        new_dist = (flat_params(teacher.modules_ema) - target).norm().item()
        assert new_dist < dist
        assert new_dist == pytest.approx(m * dist, rel=1e-4)
        dist = new_dist


def test_momentum_one_freezes_teacher():
    """At the end of the schedule (m = 1) the teacher no longer moves."""
    student = make_student()
    teacher = EMATeacher(student, total_steps=2)
    teacher.update(student)
    teacher.update(student)
    assert teacher.momentum == pytest.approx(1.0)
    before = flat_params(teacher.modules_ema)
    perturb_(student)
    teacher.update(student)
    torch.testing.assert_close(flat_params(teacher.modules_ema), before, atol=0, rtol=0)


def test_update_unwraps_ddp_like_modules():
    """Students wrapped in an object with ``.module`` (like DDP) update the teacher identically."""
    plain = make_student(seed=0)
    perturb_(plain)
    wrapped = nn.ModuleDict({name: Wrapped(module) for name, module in plain.items()})
    teacher_a = EMATeacher(make_student(seed=0), total_steps=10)
    teacher_b = EMATeacher(make_student(seed=0), total_steps=10)
    teacher_a.update(plain)
    teacher_b.update(wrapped)
    torch.testing.assert_close(
        flat_params(teacher_a.modules_ema), flat_params(teacher_b.modules_ema), atol=0, rtol=0
    )
    assert not torch.allclose(flat_params(teacher_b.modules_ema), flat_params(make_student(0)))


def test_update_rejects_structurally_different_student():
    """A student module with a different parameter list raises instead of mis-averaging."""
    student = make_student()
    teacher = EMATeacher(student, total_steps=10)
    other = nn.ModuleDict({"encoder": nn.Linear(6, 8), "ssl_head": student["ssl_head"]})
    with pytest.raises(RuntimeError):
        teacher.update(other)
