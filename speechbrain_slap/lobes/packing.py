"""Patchify log-mels and pack variable-duration clips into one sequence.

Each clip's log-mel ``(frames, n_mels)`` is cut into non-overlapping 16x16
patches in time -> frequency order: token ``n`` of a clip covers time patch
``n // F`` and frequency band ``n % F`` where ``F = n_mels // 16`` (4 at 64
mels). Only whole time patches of real audio are kept, so all padding of a
batch sits at the end of each clip and is dropped; the tokens of all clips are
concatenated into one packed sequence described by ``cu_seqlens`` (paper
Sec. 2.1.2).

The duration -> token count rule is defined once, in ``num_time_patches``;
``num_tokens_for_duration`` (batching by token budget) and ``patchify`` both
call it.

Authors
 * speechbrain-slap contributors 2026
"""

from dataclasses import dataclass

import torch

from speechbrain_slap.lobes.attention import clip_ids, positions_in_clip
from speechbrain_slap.lobes.features import PATCH_FRAMES, num_frames

PATCH_BINS = 16


def num_time_patches(frames: torch.Tensor | int):
    """Number of time patches kept for a clip with ``frames`` log-mel frames.

    Only whole 16-frame patches are kept; a clip shorter than one patch keeps
    one (zero-padded) patch. This is THE duration -> token rule of the package.

    Arguments
    ---------
    frames : int or torch.Tensor
        Number of valid log-mel frames of each clip.

    Returns
    -------
    ``max(1, frames // 16)`` with the type of ``frames``.

    Example
    -------
    >>> num_time_patches(1001)
    62
    >>> num_time_patches(torch.tensor([3, 16, 47]))
    tensor([1, 1, 2])
    """
    if isinstance(frames, torch.Tensor):
        return torch.clamp(frames // PATCH_FRAMES, min=1)
    return max(1, int(frames) // PATCH_FRAMES)


def num_tokens_for_duration(
    duration: float,
    sample_rate: int = 16000,
    hop_samples: int = 160,
    n_mels: int = 64,
) -> int:
    """Number of encoder tokens for a clip of ``duration`` seconds.

    Arguments
    ---------
    duration : float
        Clip duration in seconds.
    sample_rate : int
        Sample rate the clip is resampled to.
    hop_samples : int
        STFT hop in samples.
    n_mels : int
        Number of mel bins.

    Returns
    -------
    Token count: time patches x frequency bands.

    Example
    -------
    >>> num_tokens_for_duration(10.0)
    248
    >>> num_tokens_for_duration(30.0)
    748
    """
    samples = int(round(duration * sample_rate))
    return num_time_patches(num_frames(samples, hop_samples)) * (n_mels // PATCH_BINS)


def frames_from_relative_lengths(lengths: torch.Tensor, total_frames: int) -> torch.Tensor:
    """Valid frames of each clip from SpeechBrain relative lengths.

    ``lengths`` are relative to the padded waveform (``wav_lens``). A batch of
    ``S`` samples gives ``T = S // hop + 1`` frames, and a clip of ``n = l * S``
    samples alone gives ``n // hop + 1`` frames; with ``S`` a multiple of the hop
    (``S = (T - 1) * hop``) this is ``floor(l * (T - 1)) + 1``, which is what is
    computed here. It is exact whenever the batch length is a multiple of the
    hop (SLAP's own data pipelines pad to one); otherwise the last frame of a
    clip may be lost, as with any relative-length convention.

    Arguments
    ---------
    lengths : torch.Tensor
        ``(batch,)`` relative lengths in ``[0, 1]``.
    total_frames : int
        Number of frames ``T`` of the padded feature batch.

    Returns
    -------
    ``(batch,)`` long tensor of valid frame counts in ``[1, T]``.

    Example
    -------
    >>> frames_from_relative_lengths(torch.tensor([1.0, 0.5]), 201)
    tensor([201, 101])
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (batch,), got shape {tuple(lengths.shape)}")
    if bool(((lengths < 0) | (lengths > 1 + 1e-6) | ~torch.isfinite(lengths)).any()):
        raise ValueError(f"relative lengths must lie in [0, 1], got {lengths.tolist()}")
    # l * (T - 1) = n / hop is a multiple of 1 / hop (1/160 at 16 kHz); adding
    # 3e-3, under half of that, absorbs float32 error in l without ever
    # reaching the next frame.
    frames = torch.floor(lengths.double() * (total_frames - 1) + 3e-3).long() + 1
    return frames.clamp(1, total_frames)


def unpack_tokens(tokens: torch.Tensor, cu_seqlens: torch.Tensor):
    """Scatters a packed sequence into a zero-padded batch and its validity mask.

    Arguments
    ---------
    tokens : torch.Tensor
        ``(N, D)`` packed token features.
    cu_seqlens : torch.Tensor
        ``(B + 1,)`` cumulative token counts; every clip non-empty.

    Returns
    -------
    padded : torch.Tensor
        ``(B, L, D)`` with ``L`` the longest clip; rows past a clip's end are 0.
    mask : torch.Tensor
        ``(B, L)`` boolean, True where a row holds a real token.

    Example
    -------
    >>> padded, mask = unpack_tokens(torch.randn(7, 8), torch.tensor([0, 5, 7]))
    >>> padded.shape
    torch.Size([2, 5, 8])
    >>> mask.sum(dim=1)
    tensor([5, 2])
    """
    if tokens.dim() != 2 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"expected tokens (N, D) and cu_seqlens (B + 1,), got {tuple(tokens.shape)} "
            f"and {tuple(cu_seqlens.shape)}"
        )
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != tokens.shape[0] or (seqlens < 1).any():
        raise ValueError(
            f"cu_seqlens {cu_seqlens.tolist()} does not describe {tokens.shape[0]} tokens "
            "in non-empty clips"
        )
    clip = clip_ids(cu_seqlens)
    local = positions_in_clip(cu_seqlens, clip)
    padded = tokens.new_zeros(seqlens.numel(), int(seqlens.max()), tokens.shape[-1])
    padded[clip, local] = tokens
    mask = torch.arange(padded.shape[1], device=tokens.device)[None, :] < seqlens[:, None]
    return padded, mask


def unpack_values(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``unpack_tokens`` for one float per token (e.g. ``PackedBatch.pos_t``): ``(B, L)``.

    Example
    -------
    >>> unpack_values(torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 3, 5]))
    tensor([[0., 1., 2.],
            [0., 1., 0.]])
    """
    return unpack_tokens(values.float()[:, None], cu_seqlens)[0][..., 0]


@dataclass
class PackedBatch:
    """Tokens of several clips concatenated into one sequence.

    Arguments
    ---------
    tokens : torch.Tensor
        ``(N, D)`` token vectors (flattened 16x16 patches, or features).
    cu_seqlens : torch.Tensor
        ``(B + 1,)`` int32 cumulative token counts; clip ``b`` owns tokens
        ``cu_seqlens[b]:cu_seqlens[b + 1]``.
    max_seqlen : int
        Longest clip in tokens.
    pos_t : torch.Tensor
        ``(N,)`` time-patch index of each token within its clip.
    pos_f : torch.Tensor
        ``(N,)`` frequency-band index of each token.
    clip_id : torch.Tensor
        ``(N,)`` index of the clip each token belongs to.
    """

    tokens: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    pos_t: torch.Tensor
    pos_f: torch.Tensor
    clip_id: torch.Tensor

    @property
    def batch_size(self) -> int:
        """Number of clips."""
        return self.cu_seqlens.numel() - 1

    @property
    def seqlens(self) -> torch.Tensor:
        """``(B,)`` token count of each clip (long)."""
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()

    def with_tokens(self, tokens: torch.Tensor) -> "PackedBatch":
        """The same layout carrying other per-token vectors (e.g. encoder output)."""
        if tokens.shape[0] != self.tokens.shape[0]:
            raise ValueError(f"expected {self.tokens.shape[0]} tokens, got {tokens.shape[0]}")
        return PackedBatch(
            tokens, self.cu_seqlens, self.max_seqlen, self.pos_t, self.pos_f, self.clip_id
        )

    def local_index(self) -> torch.Tensor:
        """``(N,)`` position of each token within its clip."""
        return positions_in_clip(self.cu_seqlens, self.clip_id)

    def unpack(self, x: torch.Tensor | None = None):
        """Scatters packed vectors back into a zero-padded batch.

        Arguments
        ---------
        x : torch.Tensor, optional
            ``(N, D)`` per-token vectors; defaults to ``self.tokens``.

        Returns
        -------
        padded : torch.Tensor
            ``(B, L, D)`` with ``L = max_seqlen``; rows past each clip's end are 0.
        lengths : torch.Tensor
            ``(B,)`` relative lengths ``seqlen / L`` (SpeechBrain convention).
        """
        x = self.tokens if x is None else x
        padded, _ = unpack_tokens(x, self.cu_seqlens)
        return padded, self.seqlens.to(x.dtype) / max(self.max_seqlen, 1)


def checked_lengths(lengths: torch.Tensor, x: torch.Tensor, name: str = "lengths") -> torch.Tensor:
    """Integer lengths of the items of a padded batch, checked: one each, in ``[1, T]``.

    Arguments
    ---------
    lengths : torch.Tensor
        ``(B,)`` real length of each item along dim 1 of ``x``.
    x : torch.Tensor
        ``(B, T, ...)`` the padded batch.
    name : str
        The argument's name in the error message.

    Returns
    -------
    torch.Tensor
        ``lengths`` as int64 on ``x``'s device.

    Example
    -------
    >>> checked_lengths(torch.tensor([3.0, 1.0]), torch.zeros(2, 3))
    tensor([3, 1])
    """
    batch, total = x.shape[:2]
    lengths = lengths.to(device=x.device, dtype=torch.long)
    if lengths.shape != (batch,) or bool((lengths < 1).any() | (lengths > total).any()):
        raise ValueError(
            f"{name} must be (batch,) = ({batch},) with values in [1, {total}], "
            f"got {lengths.tolist()}"
        )
    return lengths


def pack_padded(x: torch.Tensor, seqlens: torch.Tensor) -> PackedBatch:
    """Packs the first ``seqlens[b]`` rows of each item of a padded batch.

    Positions are plain sequence indices (``pos_t`` = index, ``pos_f`` = 0);
    use ``patchify`` for spectrogram patches.

    Arguments
    ---------
    x : torch.Tensor
        ``(B, L, D)`` padded batch.
    seqlens : torch.Tensor
        ``(B,)`` number of valid rows per item (each in ``[1, L]``).

    Returns
    -------
    PackedBatch

    Example
    -------
    >>> packed = pack_padded(torch.randn(2, 5, 8), torch.tensor([5, 2]))
    >>> packed.tokens.shape
    torch.Size([7, 8])
    >>> packed.cu_seqlens
    tensor([0, 5, 7], dtype=torch.int32)
    """
    batch, length = x.shape[:2]
    seqlens = checked_lengths(seqlens, x, "seqlens")
    positions = torch.arange(length, device=x.device)
    valid = positions[None, :] < seqlens[:, None]
    clip_id = torch.arange(batch, device=x.device)[:, None].expand(batch, length)[valid]
    pos = positions[None, :].expand(batch, length)[valid]
    cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32, device=x.device)
    cu_seqlens[1:] = torch.cumsum(seqlens, 0)
    return PackedBatch(
        tokens=x[valid],
        cu_seqlens=cu_seqlens,
        max_seqlen=int(seqlens.max()),
        pos_t=pos,
        pos_f=torch.zeros_like(pos),
        clip_id=clip_id,
    )


def patchify(feats: torch.Tensor, frames: torch.Tensor) -> PackedBatch:
    """Cuts log-mels into 16x16 patches (time -> frequency order) and packs them.

    Arguments
    ---------
    feats : torch.Tensor
        ``(B, T, n_mels)`` log-mel batch; ``n_mels`` a multiple of 16.
    frames : torch.Tensor
        ``(B,)`` number of valid frames of each clip.

    Returns
    -------
    PackedBatch with ``tokens`` of shape ``(N, 256)``; within a patch the 16
    frames x 16 bins are flattened time-major.

    Example
    -------
    >>> feats = torch.randn(2, 101, 64)
    >>> packed = patchify(feats, torch.tensor([101, 40]))
    >>> packed.tokens.shape
    torch.Size([32, 256])
    >>> packed.cu_seqlens
    tensor([ 0, 24, 32], dtype=torch.int32)
    >>> packed.pos_t[:6].tolist(), packed.pos_f[:6].tolist()
    ([0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 0, 1])
    """
    if feats.dim() != 3 or feats.shape[-1] % PATCH_BINS != 0:
        raise ValueError(
            f"feats must be (batch, frames, n_mels) with n_mels a multiple of "
            f"{PATCH_BINS}, got {tuple(feats.shape)}"
        )
    batch, total, n_mels = feats.shape
    n_freq = n_mels // PATCH_BINS
    frames = frames.to(device=feats.device, dtype=torch.long)
    if frames.shape != (batch,) or bool((frames < 1).any() | (frames > total).any()):
        raise ValueError(
            f"frames must be (batch,) = ({batch},) with values in [1, {total}], "
            f"got {frames.tolist()}"
        )
    time_patches = num_time_patches(frames)
    # Pad the time axis to whole patches (only reachable for clips shorter than
    # one patch or the ragged tail, whose partial patch is dropped anyway).
    n_time = max(int(time_patches.max()), -(-total // PATCH_FRAMES))
    pad = n_time * PATCH_FRAMES - total
    if pad > 0:
        feats = torch.nn.functional.pad(feats, (0, 0, 0, pad))
    patches = (
        feats.reshape(batch, n_time, PATCH_FRAMES, n_freq, PATCH_BINS)
        .permute(0, 1, 3, 2, 4)
        .reshape(batch, n_time * n_freq, PATCH_FRAMES * PATCH_BINS)
    )
    packed = pack_padded(patches, time_patches * n_freq)
    local = packed.pos_t
    packed.pos_t = local // n_freq
    packed.pos_f = local % n_freq
    return packed


def concat_packed(*batches: PackedBatch) -> PackedBatch:
    """Concatenates packed batches into one (clips of later batches follow).

    Example
    -------
    >>> a = pack_padded(torch.randn(2, 3, 4), torch.tensor([3, 1]))
    >>> concat_packed(a, a).cu_seqlens
    tensor([0, 3, 4, 7, 8], dtype=torch.int32)
    """
    if not batches:
        raise ValueError("concat_packed needs at least one PackedBatch")
    cu, clip_ids, offset_tokens, offset_clips = [batches[0].cu_seqlens[:1]], [], 0, 0
    for batch in batches:
        cu.append(batch.cu_seqlens[1:] + offset_tokens)
        clip_ids.append(batch.clip_id + offset_clips)
        offset_tokens += int(batch.cu_seqlens[-1])
        offset_clips += batch.batch_size
    return PackedBatch(
        tokens=torch.cat([b.tokens for b in batches]),
        cu_seqlens=torch.cat(cu).to(torch.int32),
        max_seqlen=max(b.max_seqlen for b in batches),
        pos_t=torch.cat([b.pos_t for b in batches]),
        pos_f=torch.cat([b.pos_f for b in batches]),
        clip_id=torch.cat(clip_ids),
    )


def pad_clips(packed: PackedBatch, length: int) -> tuple[PackedBatch, torch.Tensor]:
    """The same clips, each padded with zero tokens to ``length`` tokens.

    The padded layout of the ``packing: false`` baseline: clip ``b`` occupies
    rows ``b * length`` to ``(b + 1) * length`` of the result, its real tokens
    first (with their positions), then zero tokens at position 0.

    Arguments
    ---------
    packed : PackedBatch
        The packed clips.
    length : int
        Tokens per clip after padding; at least the longest clip.

    Returns
    -------
    padded : PackedBatch
        ``B * length`` tokens, every clip ``length`` long.
    valid : torch.Tensor
        ``(B, length)`` boolean, True at real tokens; ``x.view(B, length,
        -1)[valid]`` gives per-token rows back in the packed order.

    Example
    -------
    >>> packed = pack_padded(torch.randn(2, 3, 4), torch.tensor([3, 1]))
    >>> padded, valid = pad_clips(packed, 4)
    >>> padded.tokens.shape, padded.cu_seqlens
    (torch.Size([8, 4]), tensor([0, 4, 8], dtype=torch.int32))
    >>> valid.int()
    tensor([[1, 1, 1, 0],
            [1, 0, 0, 0]], dtype=torch.int32)
    >>> torch.equal(padded.tokens.view(2, 4, 4)[valid], packed.tokens)
    True
    """
    if length < packed.max_seqlen:
        raise ValueError(
            f"cannot pad clips of up to {packed.max_seqlen} tokens to {length} tokens: "
            "the padded length must cover the longest clip"
        )
    batch, device = packed.batch_size, packed.tokens.device
    positions = torch.arange(length, device=device)
    valid = positions[None, :] < packed.seqlens[:, None]

    def scatter(x):
        out = x.new_zeros(batch, length, *x.shape[1:])
        out[valid] = x
        return out.flatten(0, 1)

    padded = PackedBatch(
        tokens=scatter(packed.tokens),
        cu_seqlens=(torch.arange(batch + 1, device=device) * length).to(torch.int32),
        max_seqlen=length,
        pos_t=scatter(packed.pos_t),
        pos_f=scatter(packed.pos_f),
        clip_id=torch.arange(batch, device=device).repeat_interleave(length),
    )
    return padded, valid


def random_token_mask(
    packed: PackedBatch, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Masks ``round(ratio * n)`` random tokens of each clip of ``n`` tokens.

    Arguments
    ---------
    packed : PackedBatch
        The packed layout.
    ratio : float
        Share of each clip's tokens to mask, in ``[0, 1]``.
    generator : torch.Generator, optional
        Random generator (on the tokens' device).

    Returns
    -------
    ``(N,)`` boolean mask, True = masked.

    Example
    -------
    >>> packed = pack_padded(torch.randn(2, 8, 4), torch.tensor([8, 4]))
    >>> mask = random_token_mask(packed, 0.5)
    >>> mask[:8].sum().item(), mask[8:].sum().item()
    (4, 2)
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    device = packed.tokens.device
    n = packed.tokens.shape[0]
    scores = torch.rand(n, generator=generator, device=device)
    # Sorting by (clip, score) gives each token its rank within its clip.
    order = torch.argsort(packed.clip_id.double() + scores.double())
    rank = torch.empty(n, dtype=torch.long, device=device)
    rank[order] = torch.arange(n, device=device)
    rank = rank - packed.cu_seqlens[:-1].long()[packed.clip_id]  # rank within the clip
    n_masked = torch.round(packed.seqlens.double() * ratio).long()
    return rank < n_masked[packed.clip_id]
