"""Learning-rate schedule of SLAP pretraining: linear warm-up, then cosine decay.

Authors
 * speechbrain-slap contributors 2026
"""

import math

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


@register_checkpoint_hooks
class WarmupCosineLR:
    """Per-optimizer-step schedule: ``0 -> lr`` linearly, then cosine to ``final_lr``.

    Call it once per optimizer step; it sets the learning rate of every
    parameter group (times the group's ``lr_scale`` if present) and returns it.
    Saved and restored by SpeechBrain's checkpointer.

    Arguments
    ---------
    lr : float
        Peak learning rate.
    warmup_steps : int
        Optimizer steps of linear warm-up.
    total_steps : int
        Optimizer steps of the whole run (may be set later, before training).
    final_lr : float
        Learning rate at ``total_steps``.

    Example
    -------
    >>> opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = WarmupCosineLR(lr=1e-3, warmup_steps=10, total_steps=100)
    >>> [round(sched(opt), 6) for _ in range(2)]
    [0.0001, 0.0002]
    """

    def __init__(self, lr: float, warmup_steps: int, total_steps: int = 0, final_lr: float = 0.0):
        self.lr = lr
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.final_lr = final_lr
        self.step = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (1-based)."""
        if step <= self.warmup_steps:
            return self.lr * step / max(self.warmup_steps, 1)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1 + math.cos(math.pi * progress))

    def __call__(self, optimizer: torch.optim.Optimizer) -> float:
        """Advances one optimizer step and applies its learning rate."""
        self.step += 1
        lr = self.lr_at(self.step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    @mark_as_saver
    def save(self, path):
        """Saves the step counter."""
        torch.save({"step": self.step, "total_steps": self.total_steps}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restores the step counter."""
        del end_of_epoch  # the schedule is per optimizer step
        state = torch.load(path, weights_only=True)
        self.step = int(state["step"])
