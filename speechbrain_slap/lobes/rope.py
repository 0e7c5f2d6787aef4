"""2-D axial rotary position embedding (RoPE) for spectrogram patches.

Half of each head's channel pairs rotate with the token's time-patch index, the
other half with its frequency-band index. Positions come explicitly from the
``PackedBatch`` (``pos_t``, ``pos_f``), so packing never shifts them, and the
query-key product depends only on the relative offset ``(dt, df)``.

Authors
 * speechbrain-slap contributors 2026
"""

import torch


class AxialRoPE(torch.nn.Module):
    """Axial 2-D RoPE over (time, frequency) patch indices.

    Arguments
    ---------
    head_dim : int
        Channels per attention head; a multiple of 4.
    base : float
        Frequency base (10000 as in the original RoPE).

    Example
    -------
    >>> rope = AxialRoPE(head_dim=16)
    >>> cos, sin = rope(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))
    >>> q = torch.randn(3, 2, 16)
    >>> rope.rotate(q, cos, sin).shape
    torch.Size([3, 2, 16])
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 4 != 0:
            raise ValueError(f"head_dim must be a multiple of 4 for 2-D RoPE, got {head_dim}")
        axis_dim = head_dim // 2
        inv_freq = base ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.head_dim = head_dim

    def forward(self, pos_t: torch.Tensor, pos_f: torch.Tensor):
        """Rotation angles' cosine and sine for each token.

        Arguments
        ---------
        pos_t, pos_f : torch.Tensor
            ``(N,)`` time-patch and frequency-band index of each token.

        Returns
        -------
        cos, sin : torch.Tensor
            ``(N, 1, head_dim // 2)`` fp32, broadcastable over heads.
        """
        angles = torch.cat(
            [pos_t.float()[:, None] * self.inv_freq, pos_f.float()[:, None] * self.inv_freq],
            dim=-1,
        )
        return angles.cos()[:, None], angles.sin()[:, None]

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotates channel pairs ``(i, i + head_dim/2)`` of ``(N, H, head_dim)`` x.

        Computed in fp32 and returned in ``x``'s dtype.
        """
        half = x.shape[-1] // 2
        x1, x2 = x.float()[..., :half], x.float()[..., half:]
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return rotated.to(x.dtype)

    @staticmethod
    def rotate_into(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor):
        """``rotate`` for fp32 inference: written into ``out``, no temporaries, no grad.

        ``cos`` and ``sin`` must broadcast against ``x[..., :head_dim // 2]``.
        """
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out1, out2 = out[..., :half], out[..., half:]
        torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1)
        torch.mul(x2, cos, out=out2).addcmul_(x1, sin)
        return out
