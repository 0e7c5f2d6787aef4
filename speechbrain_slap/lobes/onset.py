"""Where a clip's first sound starts, read from its encoder tokens: the onset window.

A clip-level embedding pools the whole clip, so it says which sounds a clip
holds, not which came first. The onset window is the part of the clip where
its first sound starts, found from the encoder's own tokens:

1. The clip's background is, band by band, the per-dimension median of that
   frequency band's tokens over the clip's time steps: in a clip that is
   mostly background, the median step is background, and each band has its
   own (a background noise is not flat across frequency).
2. Each time step's distance from it is the largest distance of one of its
   tokens from its band's background (one band is enough to carry a
   narrow-band event).
3. The onset is the first step whose distance exceeds ``threshold`` of the
   way from the clip's smallest distance to its largest.
4. The window is ``window_steps`` time steps from the onset (160 ms each).

Pooling the window's tokens with the model's own MAP head gives an embedding
in the joint space of the clip's first sound, which the zero-shot prompts
score like a clip embedding (``SLAPBrain``: ``zeroshot_onset_accuracy``). The
tokens keep their context (the encoder saw the whole clip); only the pooling
is restricted to the window.

Authors
 * speechbrain-slap contributors 2026
"""

import torch

from speechbrain_slap.lobes.packing import PackedBatch


def check_onset_settings(threshold: float, window_steps: int) -> None:
    """Raises ``ValueError`` naming the setting when one is out of range."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"onset_threshold must be a number in [0, 1), got {threshold!r}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"onset_threshold must be in [0, 1), got {threshold}")
    if isinstance(window_steps, bool) or not isinstance(window_steps, int) or window_steps < 1:
        raise ValueError(f"onset_window_steps must be an integer >= 1, got {window_steps!r}")


def onset_steps(tokens: torch.Tensor, packed: PackedBatch, threshold: float = 0.25) -> torch.Tensor:
    """The time step at which each clip's first sound starts.

    Arguments
    ---------
    tokens : torch.Tensor
        ``(N, D)`` packed encoder output for ``packed``.
    packed : PackedBatch
        The packed batch (``cu_seqlens``, each token's time step ``pos_t`` and
        frequency band ``pos_f``).
    threshold : float
        Share of the way from the clip's smallest step distance to its largest
        that a step must pass to be the onset, in ``[0, 1)``.

    Returns
    -------
    torch.Tensor
        ``(B,)`` long: the onset's time step of each clip (0 for a clip whose
        steps are all equally far from its background).

    Example
    -------
    >>> from speechbrain_slap.lobes.packing import patchify
    >>> packed = patchify(torch.zeros(1, 128, 64), torch.tensor([128]))  # 8 steps
    >>> tokens = torch.zeros(32, 4)
    >>> tokens[packed.pos_t == 5, 0] = 1.0  # the only event: step 5
    >>> onset_steps(tokens, packed).tolist()
    [5]
    """
    check_onset_settings(threshold, 1)
    onsets = []
    bounds = packed.cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        clip, steps = tokens[start:end].float(), packed.pos_t[start:end].long()
        bands = packed.pos_f[start:end].long()
        step_ids, slot = torch.unique(steps, return_inverse=True)
        n_steps = len(step_ids)
        background = torch.empty_like(clip)
        for band in torch.unique(bands):
            rows = bands == band
            background[rows] = clip[rows].median(dim=0).values
        distance = (clip - background).norm(dim=1)
        per_step = distance.new_full((n_steps,), float("-inf")).scatter_reduce(
            0, slot, distance, reduce="amax"
        )
        low, high = per_step.min(), per_step.max()
        above = torch.nonzero(per_step > low + threshold * (high - low))
        onsets.append(step_ids[above[0, 0]] if len(above) else step_ids[0])
    return torch.stack(onsets) if onsets else tokens.new_zeros(0, dtype=torch.long)


def onset_windows(
    tokens: torch.Tensor,
    packed: PackedBatch,
    threshold: float = 0.25,
    window_steps: int = 3,
    onsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens of each clip's onset window, packed, for a pooling head.

    Arguments
    ---------
    tokens : torch.Tensor
        ``(N, D)`` packed encoder output for ``packed``.
    packed : PackedBatch
        The packed batch.
    threshold : float
        As in ``onset_steps``.
    window_steps : int
        Time steps in the window, from the onset on (fewer where the clip ends).
    onsets : torch.Tensor, optional
        ``(B,)`` onset steps already computed by ``onset_steps`` with the same
        ``threshold`` (a caller that also needs them computes them once).

    Returns
    -------
    window_tokens : torch.Tensor
        ``(M, D)``: the tokens whose time step is in their clip's window, in
        packed order.
    cu_seqlens : torch.Tensor
        ``(B + 1,)`` cumulative token counts of ``window_tokens`` (every clip's
        window holds its onset step, so none is empty).

    Example
    -------
    >>> from speechbrain_slap.lobes.packing import patchify
    >>> packed = patchify(torch.zeros(1, 128, 64), torch.tensor([128]))
    >>> tokens = torch.zeros(32, 4)
    >>> tokens[packed.pos_t == 5, 0] = 1.0
    >>> window, cu_seqlens = onset_windows(tokens, packed, window_steps=2)
    >>> cu_seqlens.tolist()  # steps 5 and 6, four bands each
    [0, 8]
    """
    check_onset_settings(threshold, window_steps)
    onset = onset_steps(tokens, packed, threshold) if onsets is None else onsets
    clip_id = packed.clip_id.long()
    step = packed.pos_t.long() - onset[clip_id]
    keep = (step >= 0) & (step < window_steps)
    counts = torch.bincount(clip_id[keep], minlength=packed.batch_size)
    cu_seqlens = torch.zeros(packed.batch_size + 1, dtype=packed.cu_seqlens.dtype)
    cu_seqlens[1:] = torch.cumsum(counts.cpu(), 0)
    return tokens[keep], cu_seqlens.to(packed.cu_seqlens.device)
