"""Tests for schedulers.py: WarmupCosineLR values, parameter groups and checkpointing."""

import math

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_slap.schedulers import WarmupCosineLR

LR, WARMUP, TOTAL, FINAL = 1e-3, 10, 110, 1e-5


def hand_lr(step):
    """The schedule written out: linear 0 -> LR over WARMUP steps, cosine LR -> FINAL after."""
    if step <= WARMUP:
        return LR * step / WARMUP
    progress = min((step - WARMUP) / (TOTAL - WARMUP), 1.0)
    return FINAL + (LR - FINAL) * (1 + math.cos(math.pi * progress)) / 2


def make_optimizer():
    """AdamW with two parameter groups, the second at half the learning rate."""
    p1 = torch.nn.Parameter(torch.zeros(2))
    p2 = torch.nn.Parameter(torch.zeros(3))
    return torch.optim.AdamW([{"params": [p1]}, {"params": [p2], "lr_scale": 0.5}], lr=123.0)


def make_sched():
    return WarmupCosineLR(lr=LR, warmup_steps=WARMUP, total_steps=TOTAL, final_lr=FINAL)


def test_key_points_of_the_schedule():
    """Step 1 = LR / warmup, end of warm-up = LR, decay midpoint = mean, end = final_lr."""
    sched, opt = make_sched(), make_optimizer()
    lrs = [sched(opt) for _ in range(TOTAL + 20)]
    lr_of = dict(enumerate(lrs, start=1))
    assert lr_of[1] == pytest.approx(LR / WARMUP)
    assert lr_of[WARMUP] == pytest.approx(LR)
    assert lr_of[WARMUP + (TOTAL - WARMUP) // 2] == pytest.approx((LR + FINAL) / 2)
    assert lr_of[TOTAL] == pytest.approx(FINAL)
    assert lr_of[TOTAL + 20] == pytest.approx(FINAL)
    for step, lr in lr_of.items():
        assert lr == pytest.approx(hand_lr(step), rel=1e-12, abs=1e-15)
    assert sched.step == TOTAL + 20


def test_warmup_increases_and_decay_decreases():
    """The schedule rises strictly during warm-up and falls monotonically after it."""
    sched, opt = make_sched(), make_optimizer()
    lrs = [sched(opt) for _ in range(TOTAL)]
    warm, decay = lrs[:WARMUP], lrs[WARMUP - 1 :]
    assert all(b > a for a, b in zip(warm, warm[1:], strict=False))
    assert all(b <= a for a, b in zip(decay, decay[1:], strict=False))


def test_sets_every_param_group_with_lr_scale():
    """Every group gets the scheduled lr times its lr_scale (1 if absent)."""
    sched, opt = make_sched(), make_optimizer()
    for step in range(1, 30):
        lr = sched(opt)
        assert lr == pytest.approx(hand_lr(step))
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * lr)


def test_save_load_round_trip_without_brain(tmp_path):
    """save(path) then load(path) into a new instance continues the schedule where it stopped."""
    sched, opt = make_sched(), make_optimizer()
    for _ in range(17):
        sched(opt)
    path = tmp_path / "sched.ckpt"
    sched.save(path)
    restored = make_sched()
    restored.load(path)
    assert restored.step == 17
    restored_opt = make_optimizer()
    assert restored(restored_opt) == pytest.approx(hand_lr(18))
    assert sched(opt) == pytest.approx(hand_lr(18))
    assert restored_opt.param_groups[1]["lr"] == pytest.approx(0.5 * hand_lr(18))
    other = make_sched()
    other.load(path, True)  # SpeechBrain calls loaders as (path, end_of_epoch)
    assert other.step == 17


def test_checkpointer_round_trip(tmp_path):
    """As a Checkpointer recoverable the step counter survives save_checkpoint/recover."""
    sched, opt = make_sched(), make_optimizer()
    for _ in range(23):
        sched(opt)
    Checkpointer(tmp_path / "ckpt", recoverables={"lr_sched": sched}).save_checkpoint()
    restored = make_sched()
    checkpointer = Checkpointer(tmp_path / "ckpt", recoverables={"lr_sched": restored})
    assert checkpointer.recover_if_possible() is not None
    assert restored.step == 23
    assert restored(make_optimizer()) == pytest.approx(hand_lr(24))


def test_zero_warmup_starts_at_peak():
    """With no warm-up step 1 is already on the cosine (no division by zero)."""
    sched = WarmupCosineLR(lr=1.0, warmup_steps=0, total_steps=4, final_lr=0.0)
    opt = make_optimizer()
    lrs = [sched(opt) for _ in range(4)]
    expected = [0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(1, 5)]
    assert lrs == pytest.approx(expected)
