"""Finer time steps than the SLAP encoder's 160 ms, for frame-level heads such as CTC.

One SLAP time step covers 16 feature frames (160 ms at a 10 ms hop). That is
too coarse for character CTC: CTC needs at least one output step per label
plus one blank between repeated labels, and speech at 130 to 200 words a
minute has about 15 characters a second (22 at most in the eSpeak corpus of
``recipes/examples/encoder_ctc_asr``), while 160 ms steps give 6.25 a second.
There, 8 sub-steps (20 ms) give every utterance at least twice the steps its
transcript needs; 4 (40 ms) leave the fastest utterances none to spare.

``SubstepProjection`` splits every time step into ``substeps`` equal sub-steps
with a learned linear map, from the step's ``F`` band tokens side by side
(``SLAPFrameEncoder(..., bands="concat")``, ``F * D`` features) to
``substeps`` vectors of ``output_size`` features, laid out in time order
(sub-pixel upsampling, as ``PixelShuffle`` does for images). It gives back the
resolution that patchifying folded into the token dimension instead of
inventing it: the patch embedding is a linear map of all 16 frames x 16 mel
bins of a patch, the blocks add to it through residual connections, so the
four band tokens of a step jointly carry the 16 frames x 64 bins it was made
from, in context. Repeating or interpolating the 160 ms rows would give CTC
more steps but no more information per step (a repeated row cannot change its
label inside the step). A finer patch hop would change the pretrained model
itself (4x the tokens for 40 ms), and a skip path from the log-mels would let
the head recognise speech without the encoder.

The projection has no bias, like every linear layer of the encoder: rows past
a clip's end stay zero, and SpeechBrain relative lengths of the input stay
exact for the output (both lengths scale by ``substeps``).

Authors
 * speechbrain-slap contributors 2026
"""

import torch
from torch import nn


class SubstepProjection(nn.Module):
    """Splits each time step into ``substeps`` steps with a learned linear map.

    Arguments
    ---------
    input_size : int
        Features per input time step (``F * D`` for the concatenated band
        tokens of ``SLAPFrameEncoder(..., bands="concat")``).
    substeps : int
        Output steps per input step: 8 turns 160 ms steps into 20 ms ones.
    output_size : int
        Features per output step.

    Example
    -------
    >>> split = SubstepProjection(input_size=128, substeps=8, output_size=16)
    >>> frames = torch.randn(2, 6, 128)
    >>> frames[1, 4:] = 0  # padding of a shorter clip
    >>> out = split(frames)
    >>> out.shape
    torch.Size([2, 48, 16])
    >>> bool(out[1, 32:].eq(0).all())  # padding stays zero
    True
    """

    def __init__(self, input_size: int, substeps: int = 8, output_size: int = 128):
        super().__init__()
        if substeps < 1:
            raise ValueError(f"substeps must be at least 1, got {substeps}")
        self.input_size = input_size
        self.substeps = substeps
        self.output_size = output_size
        self.proj = nn.Linear(input_size, substeps * output_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sub-step features of a padded batch of time-step features.

        Arguments
        ---------
        x : torch.Tensor
            ``(B, T, input_size)`` time-step features.

        Returns
        -------
        torch.Tensor
            ``(B, T * substeps, output_size)``: output step ``t * substeps + j``
            is sub-step ``j`` of input step ``t``. Relative lengths of ``x``
            are those of the output.
        """
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"expected time-step features (batch, steps, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )
        batch, steps, _ = x.shape
        return self.proj(x).reshape(batch, steps * self.substeps, self.output_size)
