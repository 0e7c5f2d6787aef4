"""Gradient cache for the contrastive loss: a CLAP batch that GPU memory does not limit.

With plain gradient accumulation, the CLAP loss of an optimizer step contrasts
the clips of one micro-batch only (gathered over the ranks): accumulating
``K`` micro-batches adds no negatives. The gradient cache (Gao et al. 2021,
"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup")
makes one step's CLAP loss contrast every clip of its ``K`` micro-batches:

1. each micro-batch is embedded without a graph (audio and text embeddings
   only, ``no_grad``), as it arrives;
2. once the step's last micro-batch is in, the CLAP loss over all of them
   (gathered over the ranks) is differentiated w.r.t. the embeddings and the
   logit scale only (``contrastive_gradients``): a ``(K B) x (K B)`` matrix,
   no encoder in the graph;
3. each micro-batch runs again with a graph and back-propagates its cached
   embedding gradients (``cached_gradient_product``) together with its own
   SSL and captioning losses.

The parameter gradient is then that of the CLAP loss over the ``K B`` clips
(up to rounding), for the memory of one micro-batch plus the cache. Both
passes of a micro-batch must compute the same function, so they draw the same
random numbers (SpecAugment, token mask, dropout): each runs inside
``replayed_rng(seed)``, with one seed per micro-batch drawn from the global
generator (which a checkpoint's ``RandomState`` restores, so resuming stays
exact). One limit: a *compiled* module with dropout on the CLAP path (text
encoder, audio encoder, pooling) draws its masks inside inductor's graphs,
and the graph-free first pass and the second pass are different graphs, which
need not draw alike; the recipes' CLAP path has no active dropout (the audio
side has none, the frozen MiniLM runs in eval mode, ModernBERT's dropouts are
0), so the replay is exact there.

``SLAPBrain`` uses this with ``contrastive_gradient_cache: True``.

Authors
 * speechbrain-slap contributors 2026
"""

import contextlib
import dataclasses
import random
from collections.abc import Callable, Sequence

import torch


def draw_seed() -> int:
    """A seed for one micro-batch, drawn from torch's global CPU generator.

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> first = draw_seed()
    >>> _ = torch.manual_seed(0)
    >>> draw_seed() == first
    True
    """
    return int(torch.randint(0, 2**62, (1,)).item())


@contextlib.contextmanager
def replayed_rng(seed: int, device: str | torch.device = "cpu"):
    """Runs a block with torch's (CPU and ``device``) and Python's generators seeded.

    The generators are restored afterwards, so the global random streams only
    advance by what ``draw_seed`` takes. Two blocks run with the same seed
    draw the same numbers, in the same order.

    Arguments
    ---------
    seed : int
        Seed of the block (``draw_seed``).
    device : str or torch.device
        The training device; a CUDA device's generator is seeded and restored too.

    Example
    -------
    >>> with replayed_rng(3):
    ...     first = torch.rand(2)
    >>> with replayed_rng(3):
    ...     bool(torch.equal(torch.rand(2), first))
    True
    """
    device = torch.device(device)
    cuda_index = None
    if device.type == "cuda":
        cuda_index = device.index if device.index is not None else torch.cuda.current_device()
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[] if cuda_index is None else [cuda_index]):
        torch.random.default_generator.manual_seed(seed)
        if cuda_index is not None:
            torch.cuda.default_generators[cuda_index].manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


@dataclasses.dataclass
class CachedMicroBatch:
    """One micro-batch of a gradient-cached step, held until the step completes.

    Arguments
    ---------
    batch : object
        The micro-batch as the loader gave it (run again in the second pass).
    seed : int
        Seed of both of its passes (``replayed_rng``).
    audio_emb, text_emb : torch.Tensor
        ``(B, D)`` embeddings of its first pass, without a graph.
    """

    batch: object
    seed: int
    audio_emb: torch.Tensor
    text_emb: torch.Tensor


def contrastive_gradients(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    audio: Sequence[torch.Tensor],
    text: Sequence[torch.Tensor],
    weight: float = 1.0,
    scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The contrastive loss over all micro-batches, and its gradient w.r.t. each one's embeddings.

    The embeddings are concatenated (this rank's micro-batches in order) and
    given to ``loss_fn`` (``ClapLoss``, which gathers them over the ranks), and
    ``scale(weight * loss)`` is back-propagated: into leaf copies of the
    embeddings, whose gradients are returned, and into the parameters of
    ``loss_fn`` (the logit scale), whose ``.grad`` it accumulates.

    Arguments
    ---------
    loss_fn : callable
        ``(audio, text) -> scalar`` over ``(N, D)`` embeddings.
    audio, text : sequence of torch.Tensor
        ``(B_k, D)`` embeddings of each micro-batch (their graphs are not used).
    weight : float
        Weight of the loss in the training objective (``loss_weights.clap``).
    scale : callable, optional
        Loss scaling before ``backward`` (``GradScaler.scale`` under fp16);
        the returned gradients include it, as the rest of the step's do.

    Returns
    -------
    loss : torch.Tensor
        The unweighted, unscaled loss, detached.
    gradients : list of (torch.Tensor, torch.Tensor)
        ``(d scale(weight * loss) / d audio_k, ... / d text_k)`` in fp32, per micro-batch.

    Example
    -------
    >>> from speechbrain_slap.losses import ClapLoss
    >>> loss_fn = ClapLoss()
    >>> audio, text = torch.randn(5, 8), torch.randn(5, 8)
    >>> loss, grads = contrastive_gradients(loss_fn, [audio[:2], audio[2:]], [text[:2], text[2:]])
    >>> bool(torch.isclose(loss, loss_fn(audio, text)))
    True
    >>> [tuple(g.shape) for g, _ in grads]
    [(2, 8), (3, 8)]
    """
    sizes = [a.shape[0] for a in audio]
    audio_all = torch.cat([a.detach().float() for a in audio]).requires_grad_(True)
    text_all = torch.cat([t.detach().float() for t in text]).requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(audio_all, text_all)
        weighted = weight * loss
        (scale(weighted) if scale is not None else weighted).backward()
    gradients = list(zip(audio_all.grad.split(sizes), text_all.grad.split(sizes), strict=True))
    return loss.detach(), gradients


def cached_gradient_product(embeddings: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient w.r.t. ``embeddings`` is ``gradient``: ``sum(emb * grad)``.

    Back-propagating it sends a cached embedding gradient through the graph of
    the second pass into the encoders' parameters.

    Arguments
    ---------
    embeddings : torch.Tensor
        ``(B, D)`` embeddings of the second pass, with their graph.
    gradient : torch.Tensor
        ``(B, D)`` cached gradient (``contrastive_gradients``).

    Returns
    -------
    Scalar tensor (its value has no meaning of its own).

    Example
    -------
    >>> emb = torch.randn(2, 3, requires_grad=True)
    >>> grad = torch.randn(2, 3)
    >>> cached_gradient_product(emb, grad).backward()
    >>> bool(torch.equal(emb.grad, grad))
    True
    """
    if embeddings.shape != gradient.shape:
        raise ValueError(
            f"the second pass gave embeddings of shape {tuple(embeddings.shape)}, the cached "
            f"gradient has {tuple(gradient.shape)}: the micro-batch changed between the passes"
        )
    return (embeddings.float() * gradient).sum()
