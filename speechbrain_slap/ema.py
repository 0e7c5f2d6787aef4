"""EMA teacher with a cosine momentum schedule (paper Sec. 2.2.2, 3.2).

The teacher is a frozen copy of the student modules (audio encoder and
prototype head) updated as ``teacher = m * teacher + (1 - m) * student`` after
every optimizer step (not every micro-batch), with ``m`` rising from 0.994 to
1.0 on a cosine schedule over the total number of optimizer steps. Its step
counter is a buffer, so checkpoints restore the schedule exactly.

Authors
 * speechbrain-slap contributors 2026
"""

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, start: float = 0.994, end: float = 1.0):
    """Momentum at optimizer step ``step``: ``start`` at 0, ``end`` at ``total_steps``.

    Example
    -------
    >>> cosine_momentum(0, 100), cosine_momentum(100, 100)
    (0.994, 1.0)
    >>> round(cosine_momentum(50, 100), 4)
    0.997
    """
    progress = min(max(step, 0) / max(total_steps, 1), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


class EMATeacher(nn.Module):
    """A frozen EMA copy of student modules.

    Arguments
    ---------
    student : torch.nn.ModuleDict
        Modules to track, e.g. ``{"audio_encoder": ..., "ssl_head": ...}``.
    total_steps : int
        Optimizer steps of the whole run (the end of the cosine schedule).
    momentum_start, momentum_end : float
        Schedule end points (0.994 -> 1.0).

    Example
    -------
    >>> student = nn.ModuleDict({"layer": nn.Linear(2, 2)})
    >>> teacher = EMATeacher(student, total_steps=10)
    >>> _ = teacher.update(student)
    >>> int(teacher.step)
    1
    """

    def __init__(
        self,
        student: nn.ModuleDict,
        total_steps: int,
        momentum_start: float = 0.994,
        momentum_end: float = 1.0,
    ):
        super().__init__()
        self.modules_ema = copy.deepcopy(student)
        self.modules_ema.requires_grad_(False)
        self.modules_ema.eval()
        self.total_steps = int(total_steps)
        self.momentum_start = momentum_start
        self.momentum_end = momentum_end
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def __getitem__(self, name: str) -> nn.Module:
        return self.modules_ema[name]

    def train(self, mode: bool = True):
        """The teacher always stays in eval mode."""
        super().train(mode)
        self.modules_ema.eval()
        return self

    def compile_blocks(self, **kwargs):
        """Compiles the blocks of the tracked modules that have ``compile_blocks``, in place.

        Arguments
        ---------
        **kwargs
            Passed on to each module's ``compile_blocks`` (``torch.compile`` options).

        Returns
        -------
        self

        Example
        -------
        >>> from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder
        >>> encoder = SLAPAudioEncoder(embed_dim=32, depth=3, num_heads=2, mlp_hidden=64)
        >>> teacher = EMATeacher(nn.ModuleDict({"audio_encoder": encoder}), total_steps=10)
        >>> _ = teacher.compile_blocks()  # the teacher's copy, not the student
        >>> teacher["audio_encoder"].blocks[0]._compiled_call_impl is not None
        True
        >>> encoder.blocks[0]._compiled_call_impl is None
        True
        """
        for module in self.modules_ema.values():
            if hasattr(module, "compile_blocks"):
                module.compile_blocks(**kwargs)
        return self

    @property
    def momentum(self) -> float:
        """Momentum the next update will use."""
        return cosine_momentum(
            int(self.step), self.total_steps, self.momentum_start, self.momentum_end
        )

    @torch.no_grad()
    def update(self, student: nn.ModuleDict) -> float:
        """One EMA step toward ``student`` (unwrapped from DDP if needed).

        Returns
        -------
        The momentum used.
        """
        momentum = self.momentum
        for name, teacher_module in self.modules_ema.items():
            student_module = getattr(student[name], "module", student[name])
            teacher_params = list(teacher_module.parameters())
            student_params = [p.detach() for p in student_module.parameters()]
            if len(teacher_params) != len(student_params):
                raise RuntimeError(f"teacher and student {name!r} have different parameters")
            torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
        self.step += 1
        return momentum
