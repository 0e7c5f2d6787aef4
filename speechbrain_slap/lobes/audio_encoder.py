"""SLAP audio encoder: a modernised ViT over packed log-mel patches.

Paper Sec. 2.1: bias-free linear patch embedding, Transformer blocks with
pre-RMSNorm, 2-D RoPE and SwiGLU, no bias in any linear layer, and alternating
attention: two local (sliding-window) blocks then one global block (block ``i``
is global iff ``i % 3 == 2``). Clips of any duration are packed into one
sequence (``lobes/packing.py``) and attention never crosses clips
(``lobes/attention.py``). ``pad_to`` runs the same model on clips padded to
one length instead (the pad-and-mask baseline, ``packing: false``).

Authors
 * speechbrain-slap contributors 2026
"""

import torch
from torch import nn

from speechbrain_slap.lobes.attention import LOCAL_WINDOW, PackedAttention, PaddedAttention
from speechbrain_slap.lobes.packing import (
    PATCH_BINS,
    PackedBatch,
    frames_from_relative_lengths,
    pad_clips,
    patchify,
)
from speechbrain_slap.lobes.rope import AxialRoPE

# Compiled variants of the block code kept before dynamo falls back to eager.
RECOMPILE_LIMIT = 64
# Rows per block in CPU inference (measured on 2 cores: 1024 rows make the base model's
# int8 feed-forward 1.35x faster than one block, and fp32 no slower; for whole blocks,
# 1024 rows beat 512 and 2048).
CPU_INFERENCE_ROWS = 1024


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """True for an eager (not compiled) forward on the CPU without autograd."""
    return (
        x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
    )


class RMSNorm(nn.RMSNorm):
    """RMSNorm whose weight follows the input dtype.

    Under bf16 autocast the residual stream is bf16 while the weight is fp32;
    ``torch.rms_norm`` then falls back to an unfused path. Casting the weight
    keeps the fused kernel (which accumulates in fp32).

    Example
    -------
    >>> RMSNorm(8, eps=1e-6)(torch.randn(3, 8)).shape
    torch.Size([3, 8])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises the last dimension of ``x``."""
        return nn.functional.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class SwiGLU(nn.Module):
    """Bias-free SwiGLU feed-forward: ``W_down(silu(W_gate x) * W_up x)``.

    Example
    -------
    >>> SwiGLU(32, 64)(torch.randn(5, 32)).shape
    torch.Size([5, 32])
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the feed-forward to ``(..., dim)``."""
        if not eager_cpu_inference(x):  # inductor fuses these
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down(nn.functional.silu(gate) * up)
        # Eager CPU inference is bound by memory traffic outside the matmuls: rows go
        # through in blocks whose 2 x hidden activations stay in cache, product in place.
        rows = x.reshape(-1, x.shape[-1])
        out = [self._rows_inference(block) for block in rows.split(CPU_INFERENCE_ROWS)]
        return torch.cat(out).view(*x.shape[:-1], -1)

    def _rows_inference(self, rows: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(rows).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate).mul_(up))


class PackedSelfAttention(nn.Module):
    """Bias-free multi-head self-attention with 2-D RoPE over a packed sequence.

    Arguments
    ---------
    dim : int
        Model width.
    num_heads : int
        Number of heads.
    window : int or None
        Band half-width in tokens for local attention; None for global.
    """

    def __init__(self, dim: int, num_heads: int, window: int | None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin, attend: PackedAttention):
        """``(N, dim)`` -> ``(N, dim)``."""
        n, dim = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, dim // self.num_heads).unbind(1)
        q = AxialRoPE.rotate(q, cos, sin)
        k = AxialRoPE.rotate(k, cos, sin)
        out = attend(q, k, v, window=self.window)
        return self.proj(out.reshape(n, dim))


class EncoderBlock(nn.Module):
    """Pre-RMSNorm Transformer block: attention then SwiGLU, both residual."""

    def __init__(self, dim, num_heads, mlp_hidden, window, norm_eps=1e-6):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=norm_eps)
        self.attn = PackedSelfAttention(dim, num_heads, window)
        self.norm2 = RMSNorm(dim, eps=norm_eps)
        self.mlp = SwiGLU(dim, mlp_hidden)

    @property
    def is_global(self) -> bool:
        """True for a full (global) attention block."""
        return self.attn.window is None

    def forward(self, x, cos, sin, attend: PackedAttention):
        """``(N, dim)`` -> ``(N, dim)``."""
        if attend.inference and x.dtype == torch.float32 and not torch.compiler.is_compiling():
            return self._forward_rows(x, cos, sin, attend)
        x = x + self.attn(self.norm1(x), cos, sin, attend)
        return x + self.mlp(self.norm2(x))

    def _forward_rows(self, x, cos, sin, attend):
        """The same block for fp32 CPU inference, ``CPU_INFERENCE_ROWS`` rows at a time.

        Everything but attention works on blocks of rows that stay in cache: norm,
        projection and RoPE write queries, keys and values into one buffer the
        blocks of the forward share (``attend.scratch``); after attention,
        output projection, residuals and feed-forward fill the block's output.
        """
        n, dim = x.shape
        heads = self.attn.num_heads
        qkv = attend.scratch("qkv", (n, 3, heads, dim // heads), x)
        blocks = [
            slice(start, start + CPU_INFERENCE_ROWS) for start in range(0, n, CPU_INFERENCE_ROWS)
        ]
        for rows in blocks:
            projected = self.attn.qkv(self.norm1(x[rows])).view(-1, 3, heads, dim // heads)
            cos_rows, sin_rows = cos[rows, None], sin[rows, None]  # broadcast over q and k
            AxialRoPE.rotate_into(projected[:, :2], cos_rows, sin_rows, out=qkv[rows, :2])
            qkv[rows, 2] = projected[:, 2]
        mixed = attend(*qkv.unbind(1), window=self.attn.window).reshape(n, dim)
        out = torch.empty_like(x)
        for rows in blocks:
            y = torch.add(x[rows], self.attn.proj(mixed[rows]), out=out[rows])
            y += self.mlp(self.norm2(y))
        return out


def enable_inference_layout(module: nn.Module) -> None:
    """Sets ``inference_layout`` on every ``SLAPAudioEncoder`` in ``module`` (interfaces)."""
    for child in module.modules():
        if isinstance(child, SLAPAudioEncoder):
            child.inference_layout = True


class SLAPAudioEncoder(nn.Module):
    """The SLAP audio encoder, for packed variable-duration audio.

    Arguments
    ---------
    n_mels : int
        Mel bins of the input (64); a multiple of 16.
    embed_dim : int
        Model width (768 in the paper).
    depth : int
        Number of blocks (12).
    num_heads : int
        Attention heads (12).
    mlp_hidden : int
        SwiGLU hidden size (3072).
    local_window : int
        Band half-width in tokens of local blocks (48 = +-12 time patches).
    global_every : int
        Block ``i`` is global iff ``i % global_every == global_every - 1``.
    local_attention : bool
        False makes every block global (the paper's "w/o local attn" ablation).
    attention_backend : str
        ``auto``, ``varlen``, ``flash_attn``, ``flex``, ``sdpa`` or ``blocked``
        (``lobes.attention.BACKENDS``).
    rope_base : float
        RoPE frequency base.
    norm_eps : float
        RMSNorm epsilon.

    The attribute ``inference_layout`` (False; the ``SLAP`` and tagging
    interfaces set it, ``enable_inference_layout``) makes eager CPU forwards
    without autograd run the inference layout: fp32 blocks work on rows in
    blocks of ``CPU_INFERENCE_ROWS`` that share one query/key/value buffer, and
    ``blocked`` local attention reads its keys from overlapping windows. The
    same numbers up to float rounding, faster; training, its no-grad teacher
    and evaluation passes keep the plain layout, so a run reproduces exactly.

    Example
    -------
    >>> encoder = SLAPAudioEncoder(embed_dim=64, depth=3, num_heads=4, mlp_hidden=128)
    >>> feats = torch.randn(2, 301, 64)   # 3 s of log-mel frames
    >>> tokens = encoder(feats, torch.tensor([1.0, 0.5]))
    >>> tokens.shape
    torch.Size([2, 72, 64])
    >>> bool(tokens[1, 36:].eq(0).all())  # rows past the shorter clip's end
    True
    """

    def __init__(
        self,
        n_mels: int = 64,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_hidden: int = 3072,
        local_window: int = LOCAL_WINDOW,
        global_every: int = 3,
        local_attention: bool = True,
        attention_backend: str = "auto",
        rope_base: float = 10000.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if n_mels % PATCH_BINS != 0:
            raise ValueError(f"n_mels must be a multiple of {PATCH_BINS}, got {n_mels}")
        self.n_mels = n_mels
        self.embed_dim = embed_dim
        self.attention_backend = attention_backend
        self.patch_embed = nn.Linear(PATCH_BINS * PATCH_BINS, embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        self.rope = AxialRoPE(embed_dim // num_heads, base=rope_base)
        self.blocks = nn.ModuleList(
            EncoderBlock(
                embed_dim,
                num_heads,
                mlp_hidden,
                window=(
                    None
                    if not local_attention or i % global_every == global_every - 1
                    else local_window
                ),
                norm_eps=norm_eps,
            )
            for i in range(depth)
        )
        self.norm = RMSNorm(embed_dim, eps=norm_eps)
        self.inference_layout = False
        self.reset_parameters()

    def reset_parameters(self):
        """Weight init, in one place: truncated normal (std 0.02) as in ViT."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        nn.init.normal_(self.mask_token, std=0.02)

    def compile_blocks(self, **kwargs):
        """Compiles each block with ``torch.compile`` (dynamic shapes by default).

        Packed batches change their token count every step, so static shapes
        would recompile; ``dynamic=True`` avoids that. In place
        (``nn.Module.compile``): the state keys stay as they are.

        Arguments
        ---------
        **kwargs
            ``torch.compile`` options (``mode``, ``fullgraph``, ``dynamic``).

        Returns
        -------
        self

        Example
        -------
        >>> encoder = SLAPAudioEncoder(embed_dim=64, depth=3, num_heads=4, mlp_hidden=128)
        >>> keys = list(encoder.state_dict())
        >>> list(encoder.compile_blocks().state_dict()) == keys  # compiles at the first call
        True
        """
        kwargs.setdefault("dynamic", True)
        # All blocks share one code object, compiled once per variant met: local and
        # global window, with and without grad (student, gradient-cache first pass,
        # teacher), training and evaluation precision, packed and padded. That is
        # more than dynamo's default limit (8), past which it silently runs eager.
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        for block in self.blocks:
            block.compile(**kwargs)
        return self

    def patchify(self, feats: torch.Tensor, lengths: torch.Tensor | None = None):
        """Packs a padded log-mel batch; ``lengths`` relative, as in SpeechBrain.

        Arguments
        ---------
        feats : torch.Tensor
            ``(B, T, n_mels)`` log-mel batch.
        lengths : torch.Tensor, optional
            ``(B,)`` relative lengths (``wav_lens``); None means all full.

        Returns
        -------
        PackedBatch of 16x16 patches.
        """
        if feats.dim() != 3 or feats.shape[-1] != self.n_mels:
            raise ValueError(
                f"expected log-mel features (batch, frames, {self.n_mels}), "
                f"got {tuple(feats.shape)}"
            )
        batch, total = feats.shape[:2]
        if lengths is None:
            lengths = torch.ones(batch, device=feats.device)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        return patchify(feats, frames_from_relative_lengths(lengths, total))

    def forward_packed(
        self,
        packed: PackedBatch,
        token_mask: torch.Tensor | None = None,
        pad_to: int | None = None,
    ) -> torch.Tensor:
        """Encodes a packed batch of patches.

        Arguments
        ---------
        packed : PackedBatch
            Packed 16x16 patches (``tokens`` of shape ``(N, 256)``).
        token_mask : torch.Tensor, optional
            ``(N,)`` boolean; True tokens have their patch embedding replaced by
            the learned mask token (the self-supervised student view).
        pad_to : int, optional
            If set, every clip is padded to ``pad_to`` tokens and the model runs
            on the padded layout with attention masked to each clip's real
            tokens (``PaddedAttention``): the pad-and-mask baseline, which
            spends compute on the padding but gives the real tokens the same
            output. None (default) runs packed.

        Returns
        -------
        ``(N, embed_dim)`` features of the real tokens after the final RMSNorm.
        """
        n = packed.tokens.shape[0]
        if token_mask is not None and token_mask.shape != (n,):
            raise ValueError(f"token_mask must have shape ({n},), got {tuple(token_mask.shape)}")
        if pad_to is None:
            return self._encode(packed, token_mask)
        padded, valid = pad_clips(packed, pad_to)
        if token_mask is not None:
            padded_mask = token_mask.new_zeros(valid.shape)
            padded_mask[valid] = token_mask
            token_mask = padded_mask.flatten()
        out = self._encode(padded, token_mask, valid)
        return out.view(*valid.shape, -1)[valid]

    def _encode(self, packed, token_mask, valid=None):
        """Patch embedding, blocks and final norm; ``valid`` selects padded attention."""
        x = self.patch_embed(packed.tokens)
        if token_mask is not None:
            x = torch.where(token_mask[:, None], self.mask_token.to(x.dtype), x)
        cos, sin = self.rope(packed.pos_t, packed.pos_f)
        if valid is None:
            # x has the compute dtype (bf16 under autocast), which picks the backend.
            attend = PackedAttention(
                packed.cu_seqlens, packed.max_seqlen, self.attention_backend, dtype=x.dtype
            )
        else:
            attend = PaddedAttention(valid)
        attend.inference = self.inference_layout and eager_cpu_inference(x)
        attend.prepare({block.attn.window for block in self.blocks})
        for block in self.blocks:
            x = block(x, cos, sin, attend)
        return self.norm(x)

    def forward(
        self,
        feats: torch.Tensor | PackedBatch,
        lengths: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        pad_to: int | None = None,
    ) -> torch.Tensor:
        """SpeechBrain-style entry point: padded log-mels in, padded tokens out.

        A ``PackedBatch`` instead of ``feats`` runs ``forward_packed`` (so that
        a DDP-wrapped encoder is always called through ``forward``).

        Arguments
        ---------
        feats : torch.Tensor or PackedBatch
            ``(B, T, n_mels)`` normalised log-mel (``SLAPFbank`` output).
        lengths : torch.Tensor, optional
            ``(B,)`` relative lengths (``wav_lens``).
        token_mask : torch.Tensor, optional
            ``(B, L)`` boolean over each clip's tokens; True = masked.
        pad_to : int, optional
            Run on clips padded to this many tokens (see ``forward_packed``);
            the output is the same up to rounding.

        Returns
        -------
        ``(B, L, embed_dim)`` token features in time -> frequency order, ``L``
        the longest clip's token count; rows past each clip's end are zero
        (``MAPooling`` relies on that to find padding).
        """
        if isinstance(feats, PackedBatch):
            return self.forward_packed(feats, token_mask, pad_to)
        packed = self.patchify(feats, lengths)
        packed_mask = None
        if token_mask is not None:
            expected = (packed.batch_size, packed.max_seqlen)
            if token_mask.shape != expected:
                raise ValueError(
                    f"token_mask must have shape {expected} (batch, tokens of the longest "
                    f"clip), got {tuple(token_mask.shape)}"
                )
            packed_mask = token_mask[packed.clip_id, packed.local_index()]
        out = self.forward_packed(packed, packed_mask, pad_to)
        return packed.unpack(out)[0]
