"""Per-time-step features of the SLAP encoder, for other SpeechBrain pipelines.

``SLAPAudioEncoder`` returns one token per 16 x 16 patch, four per time step
(frequency bands). Downstream recipes (emotion, ASR, tagging) want a frame
sequence ``(B, T', D)`` with SpeechBrain's relative lengths, which
``SLAPFrameEncoder`` gives by averaging each time step's frequency tokens, or
``(B, T', F * D)`` with the ``F`` band tokens side by side (``bands="concat"``),
which keeps everything the encoder says about the step (what
``lobes/substeps.py`` needs to split a step into finer ones).

Authors
 * speechbrain-slap contributors 2026
"""

import torch
from torch import nn

from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder
from speechbrain_slap.lobes.packing import PATCH_BINS, PackedBatch, unpack_tokens

BAND_MODES = ("mean", "concat")


def time_step_features(tokens: torch.Tensor, packed: PackedBatch) -> tuple[torch.Tensor, ...]:
    """Averages the frequency tokens of each time patch, clip by clip.

    Arguments
    ---------
    tokens : torch.Tensor
        ``(N, D)`` packed encoder output for ``packed``.
    packed : PackedBatch
        The packed batch (its ``pos_t`` and ``clip_id`` give each token's time step).

    Returns
    -------
    frames : torch.Tensor
        ``(B, T', D)`` zero-padded time-step features.
    mask : torch.Tensor
        ``(B, T')`` boolean, True on real time steps.

    Example
    -------
    >>> from speechbrain_slap.lobes.packing import patchify
    >>> packed = patchify(torch.randn(2, 64, 64), torch.tensor([64, 32]))
    >>> frames, mask = time_step_features(torch.randn(24, 8), packed)
    >>> frames.shape, mask.sum(dim=1).tolist()
    (torch.Size([2, 4, 8]), [4, 2])
    """
    steps_per_clip = torch.zeros(packed.batch_size, dtype=torch.long, device=tokens.device)
    steps_per_clip.scatter_reduce_(0, packed.clip_id.long(), packed.pos_t.long() + 1, "amax")
    cu_steps = torch.zeros(packed.batch_size + 1, dtype=torch.long, device=tokens.device)
    cu_steps[1:] = torch.cumsum(steps_per_clip, 0)
    # Token -> its (clip, time step) slot in the packed time-step sequence.
    slot = cu_steps[packed.clip_id.long()] + packed.pos_t.long()
    n_slots = int(cu_steps[-1])
    sums = tokens.new_zeros(n_slots, tokens.shape[-1]).index_add_(0, slot, tokens)
    counts = torch.bincount(slot, minlength=n_slots).clamp_min(1).to(tokens.dtype)
    return unpack_tokens(sums / counts[:, None], cu_steps)


class SLAPFrameEncoder(nn.Module):
    """Wraps a ``SLAPAudioEncoder`` to return time-step features ``(B, T', D)``.

    One time step is 16 feature frames (160 ms at a 10 ms hop). Rows past each
    clip's end are zero. The input relative lengths stay valid for the output to
    within one time step; ``output_lengths`` gives them exactly.

    Arguments
    ---------
    encoder : SLAPAudioEncoder
        The (pretrained) encoder.
    freeze : bool
        True runs the encoder without gradients and in eval mode (a frozen
        feature extractor); False fine-tunes it.
    bands : str
        How the ``F = n_mels // 16`` frequency tokens of a time step make one
        row: ``"mean"`` (their average, ``D`` features) or ``"concat"`` (band
        0's features, then band 1's, ..., ``F * D`` features).

    Example
    -------
    >>> encoder = SLAPAudioEncoder(embed_dim=32, depth=3, num_heads=4, mlp_hidden=64)
    >>> frames = SLAPFrameEncoder(encoder)(torch.randn(2, 101, 64), torch.tensor([1.0, 0.5]))
    >>> frames.shape
    torch.Size([2, 6, 32])
    >>> SLAPFrameEncoder(encoder, bands="concat")(torch.randn(2, 101, 64)).shape
    torch.Size([2, 6, 128])
    """

    def __init__(self, encoder: SLAPAudioEncoder, freeze: bool = False, bands: str = "mean"):
        super().__init__()
        if bands not in BAND_MODES:
            raise ValueError(f"bands must be one of {BAND_MODES}, got {bands!r}")
        self.encoder = encoder
        self.freeze = freeze
        self.bands = bands
        if freeze:
            self.encoder.requires_grad_(False)

    @property
    def output_size(self) -> int:
        """Features per output row: ``D`` (``bands="mean"``) or ``F * D`` (``"concat"``)."""
        n_bands = self.encoder.n_mels // PATCH_BINS
        return self.encoder.embed_dim * (n_bands if self.bands == "concat" else 1)

    def train(self, mode: bool = True) -> "SLAPFrameEncoder":
        """Keeps a frozen encoder in eval mode."""
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Time-step features of a padded log-mel batch.

        Arguments
        ---------
        feats : torch.Tensor
            ``(B, T, n_mels)``: the normalised log-mels ``SLAPFbank`` computes.
        lengths : torch.Tensor, optional
            ``(B,)`` relative lengths.

        Returns
        -------
        torch.Tensor
            ``(B, T', output_size)``.
        """
        packed = self.encoder.patchify(feats, lengths)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            tokens = self.encoder(packed)
        if self.bands == "mean":
            return time_step_features(tokens, packed)[0]
        # Tokens are in time -> frequency order and every kept time step has all
        # F bands, so each clip's (steps * F, D) tokens are (steps, F * D) rows.
        padded, _ = unpack_tokens(tokens, packed.cu_seqlens)
        return padded.reshape(padded.shape[0], -1, self.output_size)

    def output_lengths(self, feats: torch.Tensor, lengths: torch.Tensor | None = None):
        """Exact relative lengths of ``forward``'s output.

        Arguments
        ---------
        feats : torch.Tensor
            ``(B, T, n_mels)`` features.
        lengths : torch.Tensor, optional
            ``(B,)`` relative lengths.

        Returns
        -------
        torch.Tensor
            ``(B,)`` time steps of each clip over the longest clip's.
        """
        packed = self.encoder.patchify(feats, lengths)
        steps = (packed.cu_seqlens[1:] - packed.cu_seqlens[:-1]).float() / (
            self.encoder.n_mels // PATCH_BINS
        )
        return steps / steps.max()
