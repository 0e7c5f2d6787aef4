"""Attention over packed clips: one mask definition, several backends.

The rule (``attention_allowed``): token ``i`` may attend to token ``j`` iff both
belong to the same clip and, for local blocks, ``|i - j| <= window``. SLAP's
local window is 24 time patches wide (paper Sec. 3.2): +-12 time patches, i.e.
``LOCAL_WINDOW = 12 * 4 = 48`` tokens at 4 frequency bands per time patch.
Global blocks use ``window=None``.

Backends, all computing that same mask:

=============  =========================================================
``varlen``     ``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16)
``flash_attn`` ``flash_attn_varlen_func`` from the flash-attn package
``flex``       FlexAttention with a BlockMask built from the rule
``sdpa``       exact reference on any device: padded per-clip SDPA with the
               dense mask built from the rule
``blocked``    exact, for CPUs: no padding to the longest clip. Global
               blocks run SDPA per group of equal-length clips, unmasked;
               local blocks cut each clip into blocks of ``window`` tokens
               and attend each block to itself and its two neighbours
               (``3 x window`` keys, masked by the rule) instead of to
               the whole clip
``auto``       ``varlen`` for fp16/bf16 CUDA tensors, ``blocked`` on the
               CPU, else ``sdpa``
=============  =========================================================

``PaddedAttention`` is the baseline that pads instead of packing
(``packing: false`` in ``SLAPBrain``): every clip padded to one length, dense
SDPA with the mask built from the same rule, so compute is spent on padding.

Authors
 * speechbrain-slap contributors 2026
"""

import functools
import importlib.util
import math

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None

# +-12 time patches x 4 frequency bands (a 24-patch window).
LOCAL_WINDOW = 48
BACKENDS = ("auto", "varlen", "flash_attn", "flex", "sdpa", "blocked")


def attention_allowed(clip_q, clip_k, index_q, index_k, window: int | None):
    """THE attention rule: same clip and, if ``window`` is set, within the band.

    All arguments broadcast; indices are token positions (packed or per clip,
    only differences matter).

    Arguments
    ---------
    clip_q, clip_k : torch.Tensor
        Clip ids of the query and key tokens.
    index_q, index_k : torch.Tensor
        Positions of the query and key tokens.
    window : int or None
        Band half-width in tokens (``LOCAL_WINDOW`` for local blocks), or None
        for global attention within the clip.

    Returns
    -------
    Boolean tensor, True where attention is allowed.

    Example
    -------
    >>> clip = torch.tensor([0, 0, 0, 1])
    >>> idx = torch.arange(4)
    >>> attention_allowed(clip[:, None], clip[None], idx[:, None], idx[None], 1).int()
    tensor([[1, 1, 0, 0],
            [1, 1, 1, 0],
            [0, 1, 1, 0],
            [0, 0, 0, 1]], dtype=torch.int32)
    """
    allowed = clip_q == clip_k
    if window is not None:
        allowed = allowed & ((index_q - index_k).abs() <= window)
    return allowed


def clip_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``(N,)`` clip index of every token from ``(B + 1,)`` cumulative lengths."""
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(seqlens.numel(), device=cu_seqlens.device), seqlens)


def positions_in_clip(cu_seqlens: torch.Tensor, clip_id: torch.Tensor) -> torch.Tensor:
    """``(N,)`` position of every token within its clip (``clip_id`` from ``clip_ids``).

    Example
    -------
    >>> cu = torch.tensor([0, 3, 5])
    >>> positions_in_clip(cu, clip_ids(cu))
    tensor([0, 1, 2, 0, 1])
    """
    return torch.arange(clip_id.numel(), device=clip_id.device) - cu_seqlens[:-1].long()[clip_id]


def dense_mask(cu_seqlens: torch.Tensor, window: int | None) -> torch.Tensor:
    """``(N, N)`` boolean mask of a packed sequence, from the rule.

    Example
    -------
    >>> dense_mask(torch.tensor([0, 2, 3]), None).int()
    tensor([[1, 1, 0],
            [1, 1, 0],
            [0, 0, 1]], dtype=torch.int32)
    """
    clip = clip_ids(cu_seqlens)
    index = torch.arange(clip.numel(), device=cu_seqlens.device)
    return attention_allowed(clip[:, None], clip[None, :], index[:, None], index[None, :], window)


def padded_attention_mask(valid: torch.Tensor, window: int | None) -> torch.Tensor:
    """``(B, 1, L, L)`` SDPA mask of clips padded to one length, from the rule.

    Padding positions get clip id -1, so the rule keeps them out of every real
    token's keys. A padding query attends to the padding keys of its own row
    (and always to itself), which keeps its softmax finite; its output is
    never used.

    Arguments
    ---------
    valid : torch.Tensor
        ``(B, L)`` boolean, True where a position holds a real token (a prefix
        of each row).
    window : int or None
        Band half-width in tokens, or None for global attention.

    Returns
    -------
    ``(B, 1, L, L)`` boolean mask, True where attention is allowed.

    Example
    -------
    >>> valid = torch.tensor([[True, True, False], [True, False, False]])
    >>> padded_attention_mask(valid, None)[0, 0].int()
    tensor([[1, 1, 0],
            [1, 1, 0],
            [0, 0, 1]], dtype=torch.int32)
    """
    if valid.dim() != 2 or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a (batch, length) bool tensor, got {valid.dtype} {tuple(valid.shape)}"
        )
    batch, length = valid.shape
    clip = torch.where(valid, torch.arange(batch, device=valid.device)[:, None], -1)
    positions = torch.arange(length, device=valid.device)
    allowed = attention_allowed(
        clip[:, :, None], clip[:, None, :], positions[:, None], positions[None, :], window
    )
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return (allowed | eye)[:, None]


def flash_attn_available() -> bool:
    """True when the optional flash-attn package can be imported."""
    return importlib.util.find_spec("flash_attn") is not None


def varlen_available() -> bool:
    """True when this torch ships ``torch.nn.attention.varlen`` (>= 2.10)."""
    return varlen_attn is not None


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """Maps ``auto`` to a concrete backend and checks an explicit choice.

    Example
    -------
    >>> resolve_backend("auto", torch.device("cpu"), torch.float32)
    'blocked'
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {BACKENDS}")
    half = dtype in (torch.float16, torch.bfloat16)
    if name == "auto":
        if device.type == "cuda" and half and varlen_available():
            return "varlen"
        if device.type == "cuda" and half and flash_attn_available():
            return "flash_attn"
        # On a CPU, padded work costs its full price: skip it.
        return "blocked" if device.type == "cpu" else "sdpa"
    if name in ("varlen", "flash_attn") and (device.type != "cuda" or not half):
        raise ValueError(
            f"attention backend {name!r} needs fp16/bf16 CUDA tensors, got {dtype} on "
            f"{device}; use 'sdpa' or 'auto'"
        )
    if name == "flash_attn" and not flash_attn_available():
        raise ImportError(
            "attention backend 'flash_attn' needs the flash-attn package: "
            "pip install speechbrain-slap[flash]"
        )
    if name == "varlen" and not varlen_available():
        raise ImportError("attention backend 'varlen' needs torch >= 2.10")
    return name


class ForwardScratch:
    """Buffers that every block of one forward reuses (eager CPU inference).

    An attention layout lives for one forward of the encoder; buffers kept on it
    are allocated once instead of once per block (on a CPU, a fresh buffer of
    tens of MB costs its page faults each time). ``inference`` is True when the
    encoder runs its inference layout (``SLAPAudioEncoder.inference_layout``).
    """

    inference = False

    def scratch(self, name: str, shape, like: torch.Tensor, zeros: bool = False) -> torch.Tensor:
        """A buffer of ``shape`` with ``like``'s dtype and device, kept by name.

        Uninitialised when made, or zeros with ``zeros=True`` (rows a caller never
        writes then stay zero for every later block).
        """
        buffers = self.__dict__.setdefault("_scratch", {})
        buffer = buffers.get(name)
        shape = torch.Size(shape)
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype:
            buffer = buffers[name] = like.new_zeros(shape) if zeros else like.new_empty(shape)
        return buffer


@functools.cache
def _compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=True)


class PackedAttention(ForwardScratch):
    """Attention over one packed batch; built once per forward, used by every block.

    It holds the layout (``cu_seqlens``, ``max_seqlen``, clip ids), the backend
    resolved for the compute dtype, and whatever that backend derives from the
    layout (padded index and dense masks for ``sdpa``, blocks and band masks for
    ``blocked``, BlockMasks for ``flex``),
    built once by ``prepare`` and shared by every block. ``varlen`` is traced
    into compiled blocks (with ``dynamic=True`` the changing ``max_seqlen`` is a
    symbolic int, so it does not recompile); the other backends run between
    compiled graphs.

    Arguments
    ---------
    cu_seqlens : torch.Tensor
        ``(B + 1,)`` int32 cumulative token counts.
    max_seqlen : int
        Longest clip in tokens.
    backend : str
        One of ``BACKENDS``.
    dtype : torch.dtype, optional
        Compute dtype of the queries, which resolves ``auto`` (and checks an
        explicit choice) now; if None, that happens at the first call.

    Example
    -------
    >>> attend = PackedAttention(torch.tensor([0, 5, 8], dtype=torch.int32), 5)
    >>> q = k = v = torch.randn(8, 2, 16)
    >>> attend(q, k, v, window=None).shape
    torch.Size([8, 2, 16])
    """

    def __init__(
        self,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
        self.cu_seqlens = cu_seqlens.to(torch.int32)
        self.max_seqlen = int(max_seqlen)
        self.requested_backend = backend
        self.backend = None if dtype is None else resolve_backend(backend, cu_seqlens.device, dtype)
        self.clip_id = clip_ids(self.cu_seqlens)
        self._cache = {}

    def prepare(self, windows) -> "PackedAttention":
        """Builds the backend's masks for every window in ``windows`` up front."""
        if self.backend is None:
            raise RuntimeError("prepare() needs the backend resolved: pass dtype at construction")
        for window in windows:
            if self.backend == "sdpa":
                self._sdpa_mask(window)
            elif self.backend == "blocked" and window is not None:
                self._band_layout(window)
            elif self.backend == "flex":
                self._flex_mask(window)
        return self

    def __call__(self, q, k, v, window: int | None):
        """Attends ``(N, H, Dh)`` queries to keys/values of the same clip.

        Arguments
        ---------
        q, k, v : torch.Tensor
            ``(N, heads, head_dim)`` packed projections.
        window : int or None
            Band half-width in tokens, or None for global attention.

        Returns
        -------
        ``(N, heads, head_dim)`` attention output.
        """
        if self.backend is None:
            self.backend = resolve_backend(self.requested_backend, q.device, q.dtype)
        if self.backend == "varlen":
            # A registered custom op: compiled blocks trace straight through it.
            return self._varlen(q, k, v, window)
        return self._call_outside_graph(q, k, v, window)

    @torch.compiler.disable
    def _call_outside_graph(self, q, k, v, window):
        """Backends with cached masks or external kernels run between compiled graphs."""
        return getattr(self, f"_{self.backend}")(q, k, v, window)

    # -- backends ---------------------------------------------------------
    def _varlen(self, q, k, v, window):
        band = (-1, -1) if window is None else (window, window)
        cu = self.cu_seqlens
        return varlen_attn(q, k, v, cu, cu, self.max_seqlen, self.max_seqlen, window_size=band)

    def _flash_attn(self, q, k, v, window):
        from flash_attn import flash_attn_varlen_func

        band = (-1, -1) if window is None else (window, window)
        cu = self.cu_seqlens
        return flash_attn_varlen_func(
            q, k, v, cu, cu, self.max_seqlen, self.max_seqlen, window_size=band
        )

    def _flex_mask(self, window):
        key = ("flex", window)
        if key not in self._cache:
            clip = self.clip_id

            def mask_mod(b, h, q_idx, kv_idx):
                return attention_allowed(clip[q_idx], clip[kv_idx], q_idx, kv_idx, window)

            n = clip.numel()
            self._cache[key] = create_block_mask(
                mask_mod, None, None, n, n, device=clip.device, _compile=clip.is_cuda
            )
        return self._cache[key]

    def _flex(self, q, k, v, window):
        attend = _compiled_flex_attention() if q.is_cuda else flex_attention
        out = attend(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            block_mask=self._flex_mask(window),
        )
        return out[0].transpose(0, 1)

    def _padded_layout(self):
        """Clip index, local index, (B, L) validity and positions of the padded layout."""
        if "layout" not in self._cache:
            clip = self.clip_id
            device = clip.device
            local = positions_in_clip(self.cu_seqlens, clip)
            seqlens = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
            positions = torch.arange(self.max_seqlen, device=device)
            valid = positions[None, :] < seqlens[:, None]
            self._cache["layout"] = (clip, local, valid, positions)
        return self._cache["layout"]

    def _sdpa_mask(self, window):
        key = ("sdpa", window)
        if key not in self._cache:
            _, _, valid, _ = self._padded_layout()
            self._cache[key] = padded_attention_mask(valid, window)
        return self._cache[key]

    def _sdpa(self, q, k, v, window):
        clip, local, valid, _ = self._padded_layout()
        heads, head_dim = q.shape[1:]

        def to_padded(x):
            out = x.new_zeros(valid.shape[0], self.max_seqlen, heads, head_dim)
            out[clip, local] = x
            return out.transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(
            to_padded(q),
            to_padded(k),
            to_padded(v),
            attn_mask=self._sdpa_mask(window),
            scale=1.0 / math.sqrt(head_dim),
        )
        return out.transpose(1, 2)[clip, local]

    def _length_groups(self):
        """``[(length, clip indices)]``: the clips grouped by token count."""
        if "groups" not in self._cache:
            seqlens = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()
            groups = {}
            for clip, length in enumerate(seqlens):
                groups.setdefault(length, []).append(clip)
            self._cache["groups"] = sorted(groups.items())
        return self._cache["groups"]

    def _band_layout(self, window):
        """Blocks of ``window`` tokens of every clip, their keys and the band mask.

        Returns ``(queries, keys, mask, real)``: ``(K, window)`` and ``(K, 3 *
        window)`` token indices of each block and of its keys (the block and
        its two neighbours in the clip; ``-1`` past a clip's end), the ``(K,
        1, window, 3 * window)`` mask from the rule, and which of the
        flattened query slots hold a token (they come in token order).
        """
        key = ("band", window)
        if key not in self._cache:
            device = self.cu_seqlens.device
            seqlens = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
            blocks = (seqlens + window - 1) // window  # per clip, >= 1
            first = torch.cumsum(blocks, 0) - blocks  # first block of each clip
            clip = torch.repeat_interleave(torch.arange(blocks.numel(), device=device), blocks)
            in_clip = torch.arange(clip.numel(), device=device) - first[clip]  # block number
            offset = torch.arange(window, device=device)
            position = in_clip[:, None] * window + offset[None, :]  # (K, window) within clip
            real = position < seqlens[clip][:, None]
            queries = torch.where(real, self.cu_seqlens[:-1].long()[clip][:, None] + position, -1)
            # Keys: blocks b - 1, b, b + 1 of the same clip (none before the first).
            padding = torch.full((1, window), -1, dtype=queries.dtype, device=device)
            padded = torch.cat([padding, queries, padding])  # block k is row k + 1
            previous = torch.where(in_clip > 0, torch.arange(clip.numel(), device=device), 0)
            following = torch.arange(clip.numel(), device=device) + 2
            last = in_clip == blocks[clip] - 1
            following = torch.where(last, 0, following)
            keys = torch.cat([padded[previous], queries, padded[following]], dim=1)
            # The rule on these pairs; non-tokens get clip -1 and one far position, so
            # a padded query attends to padded keys (its softmax stays finite, unused).
            clip_q = torch.where(queries >= 0, clip[:, None], -1)
            clip_k = torch.where(keys >= 0, clip[:, None], -1)
            far = -(10**9)
            local = positions_in_clip(self.cu_seqlens, self.clip_id)
            pos_q = torch.where(queries >= 0, local[queries.clamp(min=0)], far)
            pos_k = torch.where(keys >= 0, local[keys.clamp(min=0)], far)
            mask = attention_allowed(
                clip_q[:, :, None], clip_k[:, None, :], pos_q[:, :, None], pos_k[:, None, :], window
            )
            self._cache[key] = (queries, keys, mask[:, None], real.flatten())
        return self._cache[key]

    def _blocked(self, q, k, v, window):
        heads, head_dim = q.shape[1:]
        scale = 1.0 / math.sqrt(head_dim)
        if window is None:
            out = torch.empty_like(q)
            starts = self.cu_seqlens[:-1].long()
            for length, clips in self._length_groups():
                if len(clips) == 1:  # the clip's rows are one slice: no gather
                    start = int(starts[clips[0]])
                    rows = slice(start, start + length)
                else:
                    rows = starts[clips][:, None] + torch.arange(length, device=q.device)
                    rows = rows.flatten()
                shape = (len(clips), length, heads, head_dim)
                group = torch.nn.functional.scaled_dot_product_attention(
                    *(x[rows].view(shape).transpose(1, 2) for x in (q, k, v)), scale=scale
                )
                out[rows] = group.transpose(1, 2).reshape(-1, heads, head_dim)
            return out
        if self.inference:
            return self._blocked_windows(q, k, v, window)
        queries, keys, mask, real = self._band_layout(window)
        # (K, heads, n, head_dim) per block. Index -1 (past a clip's end) reads token 0:
        # the mask hides those keys and those queries' outputs are dropped.
        q, k, v = (
            x[i.clamp(min=0)].transpose(1, 2) for x, i in ((q, queries), (k, keys), (v, keys))
        )
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return out.transpose(1, 2).reshape(-1, heads, head_dim)[real]

    def _window_mask(self, window):
        """The band mask of ``_blocked_windows``: ``(K, 1, window, 3 * window)``, K blocks.

        Query block ``b`` holds packed tokens ``b * window ..`` and its keys are
        tokens ``(b - 1) * window .. (b + 2) * window``, which covers the band of
        every query in the block; the rule masks the rest (other clips, beyond
        the band). Rows before the first and past the last token get clip -1
        and one far position, so a padding query attends to padding keys: its
        softmax stays finite, its output unused.
        """
        key = ("windows", window)
        if key not in self._cache:
            device = self.cu_seqlens.device
            n = self.clip_id.numel()
            blocks = (n + window - 1) // window
            rows = (blocks + 2) * window
            row_clip = torch.full((rows,), -1, dtype=torch.long, device=device)
            row_clip[window : window + n] = self.clip_id
            row_index = torch.full((rows,), -(10**9), dtype=torch.long, device=device)
            row_index[window : window + n] = torch.arange(n, device=device)
            keys = (blocks, 3 * window)
            mask = attention_allowed(
                row_clip[window:-window].view(blocks, window, 1),
                row_clip.as_strided(keys, (window, 1))[:, None, :],
                row_index[window:-window].view(blocks, window, 1),
                row_index.as_strided(keys, (window, 1))[:, None, :],
                window,
            )
            self._cache[key] = mask[:, None]
        return self._cache[key]

    def _blocked_windows(self, q, k, v, window):
        """Local blocks without gathering keys (inference): overlapping windows of one buffer.

        Queries, keys and values are copied once, in packed order, into buffers
        with ``window`` padding rows at each end (kept for the next block of
        the forward; the padding stays zero); the keys of query block ``b`` are
        rows ``(b - 1) * window .. (b + 2) * window`` of the packed order, a
        strided view of the buffer, so no key is copied three times
        (``_window_mask``). The same attention as the gathering path.
        """
        mask = self._window_mask(window)
        blocks = mask.shape[0]
        n, heads, head_dim = q.shape
        shape = ((blocks + 2) * window, heads, head_dim)
        buffers = [self.scratch(f"window_{name}", shape, q, zeros=True) for name in "qkv"]
        for buffer, x in zip(buffers, (q, k, v), strict=True):
            buffer[window : window + n] = x
        row = heads * head_dim
        queries = buffers[0][window:-window].view(blocks, window, heads, head_dim)
        keys, values = (
            b.as_strided((blocks, 3 * window, heads, head_dim), (window * row, row, head_dim, 1))
            for b in buffers[1:]
        )
        out = torch.nn.functional.scaled_dot_product_attention(
            queries.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=mask,
            scale=1.0 / math.sqrt(head_dim),
        )  # (blocks, heads, window, head_dim)
        return out.transpose(1, 2).reshape(blocks * window, heads, head_dim)[:n]


class PaddedAttention(ForwardScratch):
    """Attention over clips padded to one length: dense SDPA masked by the rule.

    The baseline that pads and masks instead of packing (``packing: false``):
    the tokens of ``B`` clips come flattened, each clip padded to ``L`` tokens
    (``packing.pad_clips``), and every block attends over all ``B x L``
    positions with the ``padded_attention_mask`` of its window, so compute is
    spent on the padding. Real tokens get exactly what ``PackedAttention``
    gives them. Same interface as ``PackedAttention``: built once per forward,
    used by every block.

    Arguments
    ---------
    valid : torch.Tensor
        ``(B, L)`` boolean, True where a position holds a real token.

    Example
    -------
    >>> valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    >>> attend = PaddedAttention(valid).prepare([None, 2])
    >>> q = k = v = torch.randn(10, 2, 16)
    >>> attend(q, k, v, window=2).shape
    torch.Size([10, 2, 16])
    """

    def __init__(self, valid: torch.Tensor):
        self.valid = valid
        self._masks = {}

    def prepare(self, windows) -> "PaddedAttention":
        """Builds the mask of every window in ``windows`` up front."""
        for window in windows:
            self.mask(window)
        return self

    def mask(self, window: int | None) -> torch.Tensor:
        """The ``(B, 1, L, L)`` mask of ``window`` (built once)."""
        if window not in self._masks:
            self._masks[window] = padded_attention_mask(self.valid, window)
        return self._masks[window]

    def __call__(self, q, k, v, window: int | None):
        """Attends ``(B * L, H, Dh)`` queries to keys/values of the same clip.

        Arguments
        ---------
        q, k, v : torch.Tensor
            ``(B * L, heads, head_dim)`` projections, clip ``b`` at rows
            ``b * L`` to ``(b + 1) * L``.
        window : int or None
            Band half-width in tokens, or None for global attention.

        Returns
        -------
        ``(B * L, heads, head_dim)`` attention output.
        """
        batch, length = self.valid.shape
        heads, head_dim = q.shape[1:]
        if q.shape[0] != batch * length:
            raise ValueError(
                f"expected {batch} x {length} = {batch * length} tokens, got {q.shape[0]}"
            )

        def to_batch(x):
            return x.view(batch, length, heads, head_dim).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(
            to_batch(q),
            to_batch(k),
            to_batch(v),
            attn_mask=self.mask(window),
            scale=1.0 / math.sqrt(head_dim),
        )
        return out.transpose(1, 2).reshape(batch * length, heads, head_dim)
