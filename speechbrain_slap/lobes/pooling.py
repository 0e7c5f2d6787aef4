"""Multi-head attention pooling (MAP), SigLIP style, over one clip's tokens.

A learned probe attends over the tokens of each clip (never across clips),
then a LayerNorm and a residual MLP: ``x = MHA(probe, tokens); x = x +
MLP(LN(x))``. The packed entry point computes a per-clip softmax over the
packed sequence; the padded entry point packs the valid rows and calls it, so
both give the same result.

Authors
 * speechbrain-slap contributors 2026
"""

import math

import torch
from torch import nn

from speechbrain_slap.lobes.attention import clip_ids
from speechbrain_slap.lobes.packing import pack_padded


class MAPooling(nn.Module):
    """Multi-head attention pooling with a learned probe.

    Arguments
    ---------
    input_size : int
        Token width ``D`` (output width too).
    num_heads : int
        Attention heads of the probe.
    mlp_ratio : float
        Hidden size of the residual MLP relative to ``D``.

    Example
    -------
    >>> pool = MAPooling(input_size=32, num_heads=4)
    >>> tokens = torch.randn(2, 10, 32)
    >>> tokens[1, 6:] = 0     # clip 1 has 6 tokens; padding rows are zero
    >>> pool(tokens, torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 32])
    """

    def __init__(self, input_size: int, num_heads: int = 12, mlp_ratio: float = 4.0):
        super().__init__()
        if input_size % num_heads != 0:
            raise ValueError(f"input_size {input_size} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.probe = nn.Parameter(torch.empty(input_size))
        self.q_proj = nn.Linear(input_size, input_size)
        self.kv_proj = nn.Linear(input_size, 2 * input_size)
        self.out_proj = nn.Linear(input_size, input_size)
        self.norm = nn.LayerNorm(input_size)
        hidden = int(input_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(input_size, hidden), nn.GELU(), nn.Linear(hidden, input_size)
        )
        self.reset_parameters()

    def reset_parameters(self):
        """Xavier-uniform projections and zero biases, as in SigLIP's MAP head.

        The probe is drawn at the scale of a LayerNorm'd token (std 1), so the
        probe's attention logits start at unit scale: pooling can single out the
        few tokens of a short event from the first steps. With the probe and its
        projection both near zero (std 0.02 each), the query is the product of
        two small tensors, the attention stays uniform, and the pooled embedding
        is the clip's mean, in which a sparse event drowns.
        """
        nn.init.normal_(self.probe, std=1.0)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_packed(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Pools a packed sequence clip by clip.

        Arguments
        ---------
        tokens, cu_seqlens : torch.Tensor
            The packed sequence: ``(N, D)`` token features and ``(B + 1,)``
            cumulative token counts (every clip non-empty), as ``PackedBatch`` holds them.

        Returns
        -------
        ``(B, D)`` pooled embeddings.
        """
        n, dim = tokens.shape
        batch = cu_seqlens.numel() - 1
        heads, head_dim = self.num_heads, dim // self.num_heads
        if batch < 1 or int(cu_seqlens[-1]) != n:
            raise ValueError(f"cu_seqlens {cu_seqlens.tolist()} does not describe {n} tokens")
        clip = clip_ids(cu_seqlens)
        key, value = self.kv_proj(tokens).view(n, 2, heads, head_dim).unbind(1)
        query = self.q_proj(self.probe.to(tokens.dtype)).view(heads, head_dim)
        # Per-clip softmax over the packed axis, in fp32.
        logits = (key.float() * query.float()).sum(-1) / math.sqrt(head_dim)  # (N, H)
        index = clip[:, None].expand(n, heads)
        peak = logits.new_full((batch, heads), float("-inf")).scatter_reduce(
            0, index, logits, reduce="amax"
        )
        weights = torch.exp(logits - peak[clip])
        total = logits.new_zeros(batch, heads).index_add(0, clip, weights)
        weights = weights / total[clip]
        pooled = tokens.new_zeros(batch, heads, head_dim, dtype=torch.float32).index_add(
            0, clip, weights[..., None] * value.float()
        )
        x = self.out_proj(pooled.to(tokens.dtype).reshape(batch, dim))
        return x + self.mlp(self.norm(x))

    def forward(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pools a padded batch ``(B, L, D)`` -> ``(B, D)``.

        Padding rows are the rows that are exactly zero: ``SLAPAudioEncoder``
        writes zeros past each clip's end. Relative lengths cannot say where a
        clip's tokens end (the token count follows whole 16-frame patches, with
        at least one per clip, not a fraction of the batch), so ``lengths`` only
        keeps the SpeechBrain signature ``pool(tokens, wav_lens)``. Tokens from
        another source must zero their padding rows (or use ``forward_packed``).

        Given ``cu_seqlens``, ``tokens`` is a packed ``(N, D)`` sequence and
        ``forward_packed`` runs (so a DDP-wrapped head is called through
        ``forward``).

        Arguments
        ---------
        tokens : torch.Tensor
            ``(B, L, D)`` token features, padding rows zero; or packed ``(N, D)``.
        lengths : torch.Tensor, optional
            ``(B,)`` relative lengths, checked for shape only.
        cu_seqlens : torch.Tensor, optional
            ``(B + 1,)`` cumulative token counts of packed ``tokens``.

        Returns
        -------
        ``(B, D)`` pooled embeddings.
        """
        if cu_seqlens is not None:
            return self.forward_packed(tokens, cu_seqlens)
        if tokens.dim() != 3:
            raise ValueError(f"expected tokens (batch, length, dim), got {tuple(tokens.shape)}")
        batch = tokens.shape[0]
        if lengths is not None and lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        # Valid rows form a prefix of each clip; a clip with none keeps row 0.
        valid = tokens.ne(0).any(dim=-1)
        seqlens = valid.long().cumprod(dim=1).sum(dim=1).clamp(min=1)
        packed = pack_padded(tokens, seqlens)
        return self.forward_packed(packed.tokens, packed.cu_seqlens)
