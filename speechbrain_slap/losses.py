"""SLAP training objectives (paper Sec. 2.2).

* ``ClapLoss``: symmetric InfoNCE over L2-normalised audio and text
  embeddings with a learnable temperature; under DDP the embeddings of all
  ranks are gathered with gradient, so the loss equals the single-process
  loss on the global batch.
* ``MaskedDistillationLoss``: iBOT-style masked-token self-distillation:
  cross-entropy between teacher targets (Sinkhorn-Knopp or centred softmax,
  temperature ``teacher_temp``) and student predictions (temperature 0.1) on
  the masked tokens, each clip weighted equally.
* ``caption_loss`` (in ``lobes/caption_decoder.py``): teacher-forced token
  cross-entropy.

All three are computed in fp32.

Authors
 * speechbrain-slap contributors 2026
"""

import math

import torch
import torch.distributed as dist
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenates ``x`` from every rank along dim 0, keeping gradients.

    The contract (open_clip's): the result is the global batch in rank order
    and its gradient flows back to each rank's own shard. Ranks may hold
    different numbers of rows (batches built by a duration budget): the counts
    are exchanged first, every shard is padded to the largest for the
    collective, and the padding is cut off again. Without a process group (or
    with one rank) ``x`` is returned as is.

    Example
    -------
    >>> gather_with_grad(torch.ones(2, 3)).shape
    torch.Size([2, 3])
    """
    if not _distributed():
        return x
    import torch.distributed.nn.functional as dist_nn

    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padding = [0, 0] * (x.dim() - 1) + [0, max(counts) - x.shape[0]]
    shards = dist_nn.all_gather(torch.nn.functional.pad(x, padding).contiguous())
    return torch.cat([shard[:n] for shard, n in zip(shards, counts, strict=True)], dim=0)


class ClapLoss(nn.Module):
    """Symmetric contrastive loss with a learnable logit scale (Eq. 3).

    Arguments
    ---------
    init_temperature : float
        Initial temperature ``tau``; the logit scale starts at ``ln(1/tau)``.
    max_logit_scale : float
        The scale ``exp(logit_scale)`` is clamped at this value (100).

    Example
    -------
    >>> loss_fn = ClapLoss()
    >>> audio, text = torch.randn(4, 8), torch.randn(4, 8)
    >>> loss_fn(audio, text).shape
    torch.Size([])
    >>> loss_fn.last_global_batch  # pairs contrasted, over all ranks
    4
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_logit_scale = max_logit_scale
        # Pairs of the global batch (all ranks) the last forward contrasted: the step log's
        # ``clap_negatives``.
        self.last_global_batch = 0

    @property
    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` clamped at ``max_logit_scale``."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def logits(self, audio_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities ``(B_audio, B_text)`` in fp32 (no gathering)."""
        with torch.autocast(device_type=audio_emb.device.type, enabled=False):
            audio = nn.functional.normalize(audio_emb.float(), dim=-1)
            text = nn.functional.normalize(text_emb.float(), dim=-1)
            return self.scale * audio @ text.T

    def forward(self, audio_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Loss over the global batch; ``(B, D)`` embeddings of this rank's pairs."""
        if audio_emb.shape != text_emb.shape:
            raise ValueError(
                f"audio and text embeddings must match, got {tuple(audio_emb.shape)} "
                f"and {tuple(text_emb.shape)}"
            )
        logits = self.logits(gather_with_grad(audio_emb), gather_with_grad(text_emb))
        self.last_global_batch = logits.shape[0]
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (
            nn.functional.cross_entropy(logits, labels)
            + nn.functional.cross_entropy(logits.T, labels)
        )


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(x)
    return x


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temperature: float, n_iterations: int = 3):
    """Teacher targets by Sinkhorn-Knopp over the tokens given (fp32).

    Makes the ``(M, K)`` assignment matrix doubly normalised: every token's
    row sums to 1 and every prototype receives ``M / K`` of the mass, across
    all ranks. Only pass the valid (masked) tokens: padding would bias the
    prototype marginals.

    Arguments
    ---------
    teacher_logits : torch.Tensor
        ``(M, K)`` teacher prototype logits of the valid masked tokens.
    temperature : float
        Teacher temperature.
    n_iterations : int
        Sinkhorn iterations (3).

    Returns
    -------
    ``(M, K)`` targets, rows summing to 1.

    Example
    -------
    >>> q = sinkhorn_knopp(torch.randn(6, 4), 0.05)
    >>> torch.allclose(q.sum(dim=1), torch.ones(6))  # each row a distribution
    True
    """
    # Prototype logits are cosines in [-1, 1] (PrototypeHead), so exp cannot
    # overflow at the temperatures used (>= 0.04) and no max-shift is needed,
    # which keeps the normalisation identical across ranks.
    q = torch.exp(teacher_logits.float() / temperature).T  # (K, M)
    n_prototypes = q.shape[0]
    n_tokens = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_tokens
    q *= n_tokens
    return q.T


class MaskedDistillationLoss(nn.Module):
    """iBOT masked-token loss (Eq. 4) with per-clip weighting.

    Arguments
    ---------
    n_prototypes : int
        Number of prototypes ``K``.
    student_temp : float
        Student softmax temperature (0.1).
    centering : str
        ``sinkhorn`` (Sinkhorn-Knopp over the valid masked tokens) or
        ``softmax`` (softmax after subtracting an EMA centre, as in DINO).
    sinkhorn_iterations : int
        Iterations of Sinkhorn-Knopp.
    center_momentum : float
        EMA momentum of the centre for ``softmax`` centering.

    Example
    -------
    >>> loss_fn = MaskedDistillationLoss(n_prototypes=16)
    >>> s, t = torch.randn(7, 16), torch.randn(7, 16)
    >>> clip = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    >>> loss_fn(s, t, clip, teacher_temp=0.04).shape
    torch.Size([])
    """

    def __init__(
        self,
        n_prototypes: int,
        student_temp: float = 0.1,
        centering: str = "sinkhorn",
        sinkhorn_iterations: int = 3,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        if centering not in ("sinkhorn", "softmax"):
            raise ValueError(f"centering must be 'sinkhorn' or 'softmax', got {centering!r}")
        self.student_temp = student_temp
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, n_prototypes))

    @torch.no_grad()
    def teacher_targets(self, teacher_logits: torch.Tensor, teacher_temp: float):
        """``(M, K)`` teacher probabilities for the valid masked tokens."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, teacher_temp, self.sinkhorn_iterations)
        logits = teacher_logits.float()
        targets = torch.softmax((logits - self.center) / teacher_temp, dim=-1)
        if self.training:
            total = _all_reduce(logits.sum(dim=0, keepdim=True))
            count = _all_reduce(torch.tensor(float(logits.shape[0]), device=logits.device))
            self.center.mul_(self.center_momentum).add_(
                total / count.clamp(min=1), alpha=1 - self.center_momentum
            )
        return targets

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        clip_id: torch.Tensor,
        teacher_temp: float,
    ) -> torch.Tensor:
        """Mean over clips of the mean over a clip's masked tokens of ``-q_t log q_s``.

        Arguments
        ---------
        student_logits, teacher_logits : torch.Tensor
            ``(M, K)`` prototype logits of the masked tokens (student saw the
            mask token, teacher the real patch).
        clip_id : torch.Tensor
            ``(M,)`` clip of each masked token.
        teacher_temp : float
            Current teacher temperature (0.04 -> 0.07 warm-up).

        Returns
        -------
        Scalar loss (0 if there is no masked token).
        """
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student and teacher logits differ: {tuple(student_logits.shape)} vs "
                f"{tuple(teacher_logits.shape)}"
            )
        if student_logits.shape[0] == 0:
            return student_logits.sum() * 0.0
        targets = self.teacher_targets(teacher_logits, teacher_temp)
        log_probs = torch.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        per_token = -(targets * log_probs).sum(dim=-1)
        clips, inverse, counts = torch.unique(clip_id, return_inverse=True, return_counts=True)
        per_clip = per_token.new_zeros(clips.numel()).index_add(0, inverse, per_token)
        return (per_clip / counts).mean()


def teacher_temperature(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07):
    """Linear teacher-temperature warm-up ``start -> end`` over ``warmup_steps``.

    Example
    -------
    >>> round(teacher_temperature(50, 100), 3)
    0.055
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
