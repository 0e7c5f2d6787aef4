"""Caption decoder: a shallow Transformer that writes a caption from dense audio tokens.

Paper Sec. 2.2.3: a shallow Transformer decoder, trained from scratch with
teacher forcing, cross-attends to each clip's dense audio tokens (before MAP
pooling) and provides the auxiliary captioning loss ``L_CAP``. Base size: 8
pre-LN layers, 512 wide, 8 heads; the 768-d audio tokens are projected to 512
and attended with a key-padding mask, so a clip only ever sees its own tokens.

The audio encoder places its tokens with 2-D RoPE, which acts inside its
attention only: its output rows carry no time, and a decoder that attends to
them reads a set of tokens and cannot tell which sound came first. With
``memory_time_positions`` the decoder adds a fixed sinusoidal embedding of each
token's time step to its memory (``time_embedding``), so captions can follow
the order of the sounds (the paper leaves the decoder's positions open).

Captions are tokenized with SentencePiece trained on the training captions
through SpeechBrain's wrapper, with the special ids ``pad=0, bos=1, eos=2,
unk=3`` that the decoder uses by default.

Authors
 * speechbrain-slap contributors 2026
"""

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from sentencepiece import SentencePieceProcessor
from speechbrain.decoders.seq2seq import S2STransformerGreedySearcher
from speechbrain.tokenizers.SentencePiece import SentencePiece
from torch import nn

from speechbrain_slap.lobes.packing import unpack_tokens, unpack_values

PAD_INDEX = 0
BOS_INDEX = 1
EOS_INDEX = 2
UNK_INDEX = 3


def time_embedding(time_index: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoidal embedding of time steps (sines, then cosines).

    Arguments
    ---------
    time_index : torch.Tensor
        Time steps of any shape (fractional steps allowed).
    dim : int
        Embedding width, even.
    base : float
        Longest wavelength scale, as in the original Transformer.

    Returns
    -------
    ``(*time_index.shape, dim)`` float tensor; step 0 is ``[0] * (dim / 2) + [1] * (dim / 2)``.

    Example
    -------
    >>> time_embedding(torch.tensor([0, 3]), 4).shape
    torch.Size([2, 4])
    >>> time_embedding(torch.tensor([0]), 4).tolist()
    [[0.0, 0.0, 1.0, 1.0]]
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"time_embedding needs an even dim >= 2, got {dim}")
    frequencies = base ** (-torch.arange(0, dim, 2, device=time_index.device) / dim)
    angles = time_index.float()[..., None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, pad_index: int = PAD_INDEX):
    """Token-level cross-entropy of teacher-forced captions, in fp32.

    The loss is averaged over the real (non-padding) target tokens of the whole
    batch, so a long caption weighs more than a short one (standard for
    captioning); EOS counts as a real token. A batch without real tokens gives 0.

    Arguments
    ---------
    logits : torch.Tensor
        ``(B, U, vocab)`` decoder output (any float dtype).
    targets : torch.Tensor
        ``(B, U)`` target ids (``tokens_out`` of ``encode_captions``).
    pad_index : int
        Id of the padding token, ignored.

    Returns
    -------
    Scalar fp32 loss.

    Example
    -------
    >>> logits = torch.zeros(2, 3, 10)
    >>> targets = torch.tensor([[4, 5, 2], [6, 2, 0]])
    >>> caption_loss(logits, targets)  # uniform prediction: log(10)
    tensor(2.3026)
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, U, vocab) and targets (B, U), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    total = nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=pad_index, reduction="sum"
    )
    return total / targets.ne(pad_index).sum().clamp(min=1)


@contextlib.contextmanager
def _inference(module: nn.Module):
    """Eval mode (no dropout) and no autograd, restoring the previous mode after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class _CaptionGreedySearcher(S2STransformerGreedySearcher):
    """SpeechBrain's Transformer greedy searcher, bounded by caption length.

    SpeechBrain sizes the search as a ratio of the encoder length (right for
    ASR); a caption's length does not follow the clip's, so the bound is the
    decoder's ``max_length`` instead.
    """

    def __init__(self, decoder: "CaptionDecoder", max_length: int):
        super().__init__(
            modules=[decoder, decoder.head],
            bos_index=decoder.bos_index,
            eos_index=decoder.eos_index,
            min_decode_ratio=0.0,
            max_decode_ratio=1.0,
        )
        self.max_length = max_length

    def change_max_decoding_length(self, min_decode_steps, max_decode_steps):
        """Decodes at most ``max_length`` tokens (EOS included)."""
        return 0, self.max_length


class CaptionDecoder(nn.Module):
    """Pre-LN Transformer decoder that cross-attends to dense audio tokens.

    Token embedding + learned positional embedding, ``num_layers``
    ``torch.nn.TransformerDecoderLayer`` blocks (pre-LN, GELU, causal
    self-attention, cross-attention to the projected audio tokens with a
    key-padding mask), final LayerNorm and a linear head to the vocabulary.

    Arguments
    ---------
    vocab_size : int
        Number of caption tokens (the SentencePiece vocabulary size).
    audio_dim : int
        Width of the dense audio tokens (768 for the base encoder).
    d_model : int
        Decoder width (512).
    num_layers : int
        Decoder layers (8).
    num_heads : int
        Attention heads (8).
    ffn_dim : int
        Feed-forward hidden size (2048).
    max_length : int
        Longest token sequence, BOS (input) or EOS (target) included; the size
        of the positional table and the default decoding bound.
    dropout : float
        Dropout in attention and feed-forward (training only).
    pad_index : int
        Padding id, never attended by the loss.
    bos_index : int
        Start-of-caption id that prefixes ``tokens_in``.
    eos_index : int
        End-of-caption id that ends ``tokens_out`` and stops decoding.
    memory_time_positions : bool
        Add ``time_embedding`` of each audio token's time step to the projected
        memory; every call then takes the tokens' ``time_index``
        (``PackedBatch.pos_t``). Off by default: the decoder then reads its
        memory as a set, and models trained that way stay as they were.

    Example
    -------
    >>> decoder = CaptionDecoder(vocab_size=50, audio_dim=32, d_model=64, num_layers=2,
    ...                          num_heads=4, ffn_dim=128, max_length=16)
    >>> audio = torch.randn(2, 10, 32)
    >>> audio_mask = torch.arange(10) < torch.tensor([[10], [6]])
    >>> tokens_in = torch.tensor([[1, 7, 8, 9], [1, 5, 0, 0]])
    >>> decoder(tokens_in, audio, audio_mask).shape
    torch.Size([2, 4, 50])
    >>> captions = decoder.beam_search(audio, audio_mask, beam_size=3, max_length=5)
    >>> len(captions), all(len(c) <= 5 for c in captions)
    (2, True)
    """

    def __init__(
        self,
        vocab_size: int,
        audio_dim: int,
        d_model: int = 512,
        num_layers: int = 8,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        max_length: int = 64,
        dropout: float = 0.1,
        pad_index: int = PAD_INDEX,
        bos_index: int = BOS_INDEX,
        eos_index: int = EOS_INDEX,
        memory_time_positions: bool = False,
    ):
        super().__init__()
        specials = {"pad_index": pad_index, "bos_index": bos_index, "eos_index": eos_index}
        for name, index in specials.items():
            if not 0 <= index < vocab_size:
                raise ValueError(f"{name}={index} is outside the vocabulary [0, {vocab_size})")
        if len(set(specials.values())) != 3:
            raise ValueError(f"pad, bos and eos ids must differ, got {specials}")
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.pad_index = pad_index
        self.bos_index = bos_index
        self.eos_index = eos_index
        self.memory_time_positions = memory_time_positions
        if memory_time_positions and d_model % 2:
            raise ValueError(f"memory_time_positions needs an even d_model, got {d_model}")
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.pos_embedding = nn.Parameter(torch.zeros(max_length, d_model))
        self.audio_proj = nn.Linear(audio_dim, d_model)
        layer = nn.TransformerDecoderLayer(
            d_model,
            num_heads,
            ffn_dim,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerDecoder(layer, num_layers)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.reset_parameters()

    def reset_parameters(self):
        """Weight init, in one place: truncated normal (std 0.02), zero biases.

        ``nn.TransformerDecoder`` deep-copies one layer, so every layer is
        re-drawn here (otherwise all layers would start identical).
        """
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.trunc_normal_(module.in_proj_weight, std=0.02)
                nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def compile_blocks(self, **kwargs) -> "CaptionDecoder":
        """Compiles each decoder layer in place with ``torch.compile`` (dynamic shapes).

        Caption lengths, clip counts and audio token counts change every step,
        so ``dynamic=True`` by default. In place (``nn.Module.compile``): the
        state keys stay as they are. Embeddings, final norm and head stay eager.

        ``**kwargs`` are ``torch.compile`` options (``mode``, ``fullgraph``,
        ``dynamic``); returns ``self``, as ``SLAPAudioEncoder.compile_blocks``.

        Example
        -------
        >>> decoder = CaptionDecoder(vocab_size=50, audio_dim=32, d_model=64, num_layers=2,
        ...                          num_heads=4, ffn_dim=128, max_length=16)
        >>> keys = list(decoder.state_dict())
        >>> list(decoder.compile_blocks().state_dict()) == keys  # compiles at the first call
        True
        """
        kwargs.setdefault("dynamic", True)
        for layer in self.layers.layers:
            layer.compile(**kwargs)
        return self

    def project_audio(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        time_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Checks the audio batch and projects it to the decoder width.

        Arguments
        ---------
        audio : torch.Tensor
            ``(B, L, audio_dim)`` dense audio tokens, padded.
        audio_mask : torch.Tensor
            ``(B, L)`` boolean, True = real token; every clip has at least one.
        time_index : torch.Tensor, optional
            ``(B, L)`` time step of each token (padding rows: any value);
            required with ``memory_time_positions``, ignored without.

        Returns
        -------
        ``(B, L, d_model)`` cross-attention memory.
        """
        audio_dim = self.audio_proj.in_features
        if audio.dim() != 3 or audio.shape[-1] != audio_dim:
            raise ValueError(
                f"audio must be (batch, tokens, {audio_dim}), got {tuple(audio.shape)}"
            )
        if audio_mask.dtype != torch.bool or audio_mask.shape != audio.shape[:2]:
            raise ValueError(
                f"audio_mask must be a bool tensor of shape {tuple(audio.shape[:2])}, "
                f"got {audio_mask.dtype} {tuple(audio_mask.shape)}"
            )
        if not bool(audio_mask.any(dim=1).all()):
            raise ValueError("every clip needs at least one valid audio token in audio_mask")
        memory = self.audio_proj(audio)
        if not self.memory_time_positions:
            return memory
        if time_index is None or time_index.shape != audio_mask.shape:
            raise ValueError(
                "this decoder adds time positions to its memory (memory_time_positions): "
                f"pass time_index of shape {tuple(audio_mask.shape)} (the tokens' time steps, "
                f"PackedBatch.pos_t), got {None if time_index is None else tuple(time_index.shape)}"
            )
        return memory + time_embedding(time_index, memory.shape[-1]).to(memory.dtype)

    def forward_features(
        self, tokens: torch.Tensor, memory: torch.Tensor, memory_padding: torch.Tensor
    ) -> torch.Tensor:
        """Runs the decoder layers.

        Arguments
        ---------
        tokens : torch.Tensor
            ``(B, U)`` input ids, BOS first.
        memory : torch.Tensor
            ``(B, L, d_model)`` projected audio (``project_audio``).
        memory_padding : torch.Tensor
            ``(B, L)`` boolean, True = padding (PyTorch's key-padding convention).

        Returns
        -------
        ``(B, U, d_model)`` normalised hidden states (input of ``head``).
        """
        if tokens.dim() != 2 or tokens.shape[0] != memory.shape[0]:
            raise ValueError(
                f"tokens must be (batch={memory.shape[0]}, length), got {tuple(tokens.shape)}"
            )
        length = tokens.shape[1]
        if not 1 <= length <= self.max_length:
            raise ValueError(f"token length {length} is outside [1, max_length={self.max_length}]")
        x = self.token_embedding(tokens) + self.pos_embedding[:length]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
        x = self.layers(
            x,
            memory,
            tgt_mask=causal,
            memory_key_padding_mask=memory_padding,
            tgt_is_causal=True,
        )
        return self.norm(x)

    def forward(
        self,
        tokens_in: torch.Tensor,
        audio: torch.Tensor,
        audio_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        time_index: torch.Tensor | None = None,
        captions_per_clip: int = 1,
    ) -> torch.Tensor:
        """Teacher-forced logits for a padded audio batch.

        Given ``cu_seqlens``, ``audio`` is a packed ``(N, audio_dim)`` sequence
        and ``forward_packed`` runs (so a DDP-wrapped decoder is called through
        ``forward``, as ``MAPooling`` is).

        Arguments
        ---------
        tokens_in : torch.Tensor
            ``(B, U)`` long caption ids, BOS first, padded with ``pad_index``.
        audio : torch.Tensor
            ``(B, L, audio_dim)`` dense audio tokens, padded; or packed ``(N, audio_dim)``.
        audio_mask : torch.Tensor, optional
            ``(B, L)`` boolean, True = real audio token; required for padded audio.
        cu_seqlens : torch.Tensor, optional
            ``(B + 1,)`` cumulative token counts of packed ``audio``.
        time_index : torch.Tensor, optional
            Time step of each audio token, shaped like ``audio`` without its
            last dimension (``(B, L)``, or ``(N,)`` when packed); used with
            ``memory_time_positions``.
        captions_per_clip : int
            Caption rows per clip: ``tokens_in`` then holds ``B * captions_per_clip``
            rows, each clip's consecutive, all read from that clip's memory (a
            clip's several captions learnt from one encoder pass).

        Returns
        -------
        ``(rows, U, vocab_size)`` logits; position ``t`` predicts ``tokens_out[:, t]``.
        """
        if cu_seqlens is not None:
            return self.forward_packed(
                tokens_in, audio, cu_seqlens, time_index, captions_per_clip=captions_per_clip
            )
        if audio_mask is None:
            raise ValueError("padded audio needs audio_mask (or pass cu_seqlens for packed audio)")
        memory = self.project_audio(audio, audio_mask, time_index)
        if captions_per_clip != 1:
            if captions_per_clip < 1 or tokens_in.shape[0] != audio.shape[0] * captions_per_clip:
                raise ValueError(
                    f"captions_per_clip={captions_per_clip} needs {captions_per_clip} caption "
                    f"rows per clip: {audio.shape[0]} clips, got {tokens_in.shape[0]} rows"
                )
            memory = memory.repeat_interleave(captions_per_clip, dim=0)
            audio_mask = audio_mask.repeat_interleave(captions_per_clip, dim=0)
        return self.head(self.forward_features(tokens_in, memory, ~audio_mask))

    def forward_packed(
        self,
        tokens_in: torch.Tensor,
        audio_tokens: torch.Tensor,
        cu_seqlens: torch.Tensor,
        time_index: torch.Tensor | None = None,
        captions_per_clip: int = 1,
    ) -> torch.Tensor:
        """Teacher-forced logits for packed encoder output.

        The packed counterpart of ``forward``: each clip's tokens are cut from
        ``audio_tokens`` at ``cu_seqlens`` and padded for cross-attention.

        Arguments
        ---------
        tokens_in : torch.Tensor
            ``(B, U)`` long caption ids, BOS first.
        audio_tokens : torch.Tensor
            ``(N, audio_dim)`` packed dense audio tokens of ``B`` clips.
        cu_seqlens : torch.Tensor
            ``(B + 1,)`` int32 cumulative token counts.
        time_index : torch.Tensor, optional
            ``(N,)`` time step of each packed token (``PackedBatch.pos_t``).
        captions_per_clip : int
            Caption rows per clip, as in ``forward``.

        Returns
        -------
        ``(rows, U, vocab_size)`` logits, equal to ``forward`` on the padded batch.
        """
        audio, audio_mask = unpack_tokens(audio_tokens, cu_seqlens)
        if time_index is not None and self.memory_time_positions:
            time_index = unpack_values(time_index, cu_seqlens)
        return self.forward(
            tokens_in, audio, audio_mask, time_index=time_index, captions_per_clip=captions_per_clip
        )

    def decode(self, tokens: torch.Tensor, memory: torch.Tensor, memory_lens: torch.Tensor):
        """One decoding step in SpeechBrain's searcher interface.

        ``S2STransformerGreedySearcher`` calls ``model.decode(prefix, enc_states,
        enc_lens)`` and applies ``head`` itself.

        Arguments
        ---------
        tokens : torch.Tensor
            ``(B, t)`` ids decoded so far, BOS first (any dtype).
        memory : torch.Tensor
            ``(B, L, d_model)`` projected audio, valid rows first.
        memory_lens : torch.Tensor
            ``(B,)`` absolute number of valid rows.

        Returns
        -------
        hidden : torch.Tensor
            ``(B, t, d_model)`` normalised hidden states.
        attention : None
            No attention weights are returned.
        """
        positions = torch.arange(memory.shape[1], device=memory.device)
        padding = positions[None, :] >= memory_lens.to(memory.device)[:, None]
        return self.forward_features(tokens.long(), memory, padding), None

    @torch.no_grad()
    def prefix_log_likelihoods(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        prefixes: torch.Tensor,
        time_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Summed log-probability of each caption prefix, for each clip.

        Zero-shot classification by the captioner: a class whose prompt
        (``"The sound of a dog barking"``) is the likeliest start of the clip's
        caption is predicted. Unlike an embedding similarity, the decoder writes
        the sounds in the order they are heard, so the prompt that opens the
        caption names the first sound. Runs in eval mode without gradients.

        Arguments
        ---------
        audio, audio_mask : torch.Tensor
            ``(B, L, audio_dim)`` dense audio tokens, padded, and their mask.
        prefixes : torch.Tensor
            ``(K, U)`` long ids of ``K`` prefixes, no BOS and no EOS, right-padded
            with ``pad_index``; each has at least one id.
        time_index : torch.Tensor, optional
            ``(B, L)`` time step of each token (with ``memory_time_positions``).

        Returns
        -------
        ``(B, K)`` float log-likelihoods.
        """
        valid = prefixes.ne(self.pad_index)
        if prefixes.dim() != 2 or not bool(valid[:, 0].all()):
            raise ValueError(
                f"prefixes must be (K, U) ids, each starting with a non-pad id, got "
                f"{tuple(prefixes.shape)}"
            )
        batch, count = audio.shape[0], prefixes.shape[0]
        bos = prefixes.new_full((count, 1), self.bos_index)
        tokens_in = torch.cat([bos, prefixes[:, :-1]], dim=1).repeat(batch, 1)
        with _inference(self):
            memory = self.project_audio(audio, audio_mask, time_index)
            hidden = self.forward_features(
                tokens_in,
                memory.repeat_interleave(count, dim=0),
                (~audio_mask).repeat_interleave(count, dim=0),
            )
            log_probs = torch.log_softmax(self.head(hidden).float(), dim=-1)
        picked = log_probs.gather(-1, prefixes.repeat(batch, 1)[..., None])[..., 0]
        return (picked * valid.repeat(batch, 1)).sum(dim=1).view(batch, count)

    def _decoding_length(self, max_length: int | None) -> int:
        max_length = self.max_length if max_length is None else max_length
        if not 1 <= max_length <= self.max_length:
            raise ValueError(f"max_length {max_length} is outside [1, {self.max_length}]")
        return max_length

    def greedy_decode(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        max_length: int | None = None,
        time_index: torch.Tensor | None = None,
    ) -> list[list[int]]:
        """Greedy captions, with SpeechBrain's ``S2STransformerGreedySearcher``.

        The module is put in eval mode and no gradients are kept while it
        decodes; its previous mode is restored afterwards.

        Arguments
        ---------
        audio, audio_mask : torch.Tensor
            ``(B, L, audio_dim)`` dense audio tokens, padded, and their
            ``(B, L)`` boolean mask (True = real audio token).
        max_length : int, optional
            Most tokens generated per caption, EOS included (default and upper
            bound: ``self.max_length``).
        time_index : torch.Tensor, optional
            ``(B, L)`` time step of each token (with ``memory_time_positions``).

        Returns
        -------
        One id list per clip, without BOS and EOS; a caption that reaches
        ``max_length`` without EOS keeps all ``max_length`` tokens.
        """
        max_length = self._decoding_length(max_length)
        with _inference(self):
            memory = self.project_audio(audio, audio_mask, time_index)
            # The searcher describes padding by lengths (valid rows first).
            # Cross-attention has no position on the memory side (time steps, if
            # any, are already added to each row), so moving the valid rows to
            # the front changes nothing for any mask.
            order = torch.argsort((~audio_mask).to(torch.uint8), dim=1, stable=True)
            memory = memory.gather(1, order[..., None].expand_as(memory))
            relative = audio_mask.sum(dim=1).float() / memory.shape[1]
            hyps, _, _, _ = _CaptionGreedySearcher(self, max_length)(memory, relative)
        return hyps

    def beam_search(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        beam_size: int = 4,
        max_length: int | None = None,
        length_penalty: float = 1.0,
        time_index: torch.Tensor | None = None,
    ) -> list[list[int]]:
        """Beam-search captions, batched over clips and beams.

        A hypothesis is scored by its summed log-probability divided by
        ``length ** length_penalty`` (length in generated tokens, EOS included;
        0 = plain log-probability, 1 = mean per token). A hypothesis ends at EOS
        or, without EOS, at ``max_length`` tokens (as in greedy decoding). The
        search of a clip stops once no live beam can still beat its best ended
        hypothesis, so ``beam_size=1`` is exactly greedy decoding.

        This is written here rather than with SpeechBrain's
        ``S2STransformerBeamSearcher`` because that searcher treats the last
        token of a hypothesis that reaches the step limit as its EOS and drops
        it (so ``beam_size=1`` differs from greedy for long captions), bounds the
        search by the encoder length, describes padding by relative lengths and
        supports only on/off length normalisation.

        Runs in eval mode without gradients (the previous mode is restored).

        Arguments
        ---------
        audio : torch.Tensor
            ``(B, L, audio_dim)`` dense audio tokens, padded.
        audio_mask : torch.Tensor
            ``(B, L)`` boolean, True = real audio token.
        beam_size : int
            Live hypotheses per clip.
        max_length : int, optional
            Most tokens generated per caption, EOS included (default and upper
            bound: ``self.max_length``).
        length_penalty : float
            Length normalisation exponent, >= 0.
        time_index : torch.Tensor, optional
            ``(B, L)`` time step of each token (with ``memory_time_positions``).

        Returns
        -------
        One id list per clip, without BOS and EOS.
        """
        max_length = self._decoding_length(max_length)
        if beam_size < 1 or length_penalty < 0:
            raise ValueError(
                f"need beam_size >= 1 and length_penalty >= 0, got {beam_size}, {length_penalty}"
            )
        batch, beams = audio.shape[0], beam_size
        with _inference(self):
            memory = self.project_audio(audio, audio_mask, time_index)
            memory = memory.repeat_interleave(beams, dim=0)
            padding = (~audio_mask).repeat_interleave(beams, dim=0)
            seqs = torch.full((batch * beams, 1), self.bos_index, device=audio.device)
            # Summed log-probabilities of live beams; one live beam per clip at first.
            scores = torch.full((batch, beams), float("-inf"), device=audio.device)
            scores[:, 0] = 0.0
            best_score = torch.full((batch,), float("-inf"), device=audio.device)
            best = [[] for _ in range(batch)]
            first_beam = torch.arange(batch, device=audio.device)[:, None] * beams
            for step in range(max_length):
                hidden = self.forward_features(seqs, memory, padding)[:, -1]
                log_probs = torch.log_softmax(self.head(hidden).float(), dim=-1)
                vocab = log_probs.shape[-1]
                candidates = (scores.reshape(-1, 1) + log_probs).view(batch, beams * vocab)
                top, index = candidates.topk(beams, dim=-1)
                token = index % vocab
                seqs = torch.cat(
                    [seqs[(first_beam + index // vocab).flatten()], token.view(-1, 1)], dim=1
                )
                is_eos = token.eq(self.eos_index)
                ended = is_eos if step < max_length - 1 else torch.ones_like(is_eos)
                final = (top / (step + 1) ** length_penalty).masked_fill(
                    ~ended | top.isneginf(), float("-inf")
                )
                step_best, which = final.max(dim=-1)
                for b in torch.nonzero(step_best > best_score).flatten().tolist():
                    best[b] = seqs[b * beams + int(which[b]), 1:].tolist()
                best_score = torch.maximum(best_score, step_best)
                scores = top.masked_fill(is_eos, float("-inf"))
                # Log-probabilities only fall and L ** penalty <= max_length ** penalty,
                # so a live beam's final score is at most this bound.
                bound = scores.max(dim=-1).values / max_length**length_penalty
                if bool((bound <= best_score).all()):
                    break
        return [seq[:-1] if seq and seq[-1] == self.eos_index else seq for seq in best]


def train_caption_tokenizer(
    annotation_csv: str | Path,
    output_folder: str | Path,
    vocab_size: int = 5000,
    caption_field: str = "caption",
    model_type: str = "unigram",
) -> SentencePiece:
    """Trains SentencePiece on the training captions (SpeechBrain's wrapper).

    The special ids are ``pad=0, bos=1, eos=2, unk=3``, the ``CaptionDecoder``
    defaults. As with SpeechBrain's wrapper, a model already in
    ``output_folder`` (``{vocab_size}_{model_type}.model``) is loaded instead of
    retrained, and the caption text file it extracts from the CSV is reused.

    Arguments
    ---------
    annotation_csv : str or Path
        CSV with a header; one caption per row in column ``caption_field``.
    output_folder : str or Path
        Where the model and the extracted text go.
    vocab_size : int
        Vocabulary size, special tokens included (ignored for ``char``).
    caption_field : str
        CSV column with the caption text.
    model_type : str
        ``unigram``, ``bpe`` or ``char``.

    Returns
    -------
    The ``speechbrain.tokenizers.SentencePiece.SentencePiece`` wrapper; its
    ``.sp`` is the ``sentencepiece.SentencePieceProcessor``.

    Example
    -------
    >>> csv = getfixture("tmp_path") / "captions.csv"
    >>> _ = csv.write_text("id,caption\\n0,a dog barks\\n1,a cat meows\\n")
    >>> tokenizer = train_caption_tokenizer(csv, csv.parent / "tok", model_type="char")
    >>> tokenizer.sp.pad_id(), tokenizer.sp.bos_id(), tokenizer.sp.eos_id()
    (0, 1, 2)
    """
    tokenizer = SentencePiece(
        model_dir=str(output_folder),
        vocab_size=vocab_size,
        annotation_train=str(annotation_csv),
        annotation_read=caption_field,
        model_type=model_type,
        pad_id=PAD_INDEX,
        bos_id=BOS_INDEX,
        eos_id=EOS_INDEX,
        unk_id=UNK_INDEX,
    )
    sp = tokenizer.sp
    found = (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id())
    if found != (PAD_INDEX, BOS_INDEX, EOS_INDEX, UNK_INDEX):
        raise ValueError(
            f"tokenizer in {output_folder} has pad/bos/eos/unk ids {found}, expected "
            f"{(PAD_INDEX, BOS_INDEX, EOS_INDEX, UNK_INDEX)}; remove it to retrain"
        )
    return tokenizer


def encode_captions(sp: SentencePieceProcessor, captions: Sequence[str], max_length: int):
    """Teacher-forcing input and target ids of a batch of captions.

    Each caption is cut to ``max_length - 1`` pieces so that ``[BOS] + pieces``
    and ``pieces + [EOS]`` both fit the decoder's ``max_length``.

    Arguments
    ---------
    sp : sentencepiece.SentencePieceProcessor
        The tokenizer (``train_caption_tokenizer(...).sp``).
    captions : sequence of str
        Caption texts.
    max_length : int
        Longest sequence, BOS or EOS included (the decoder's ``max_length``).

    Returns
    -------
    tokens_in : torch.Tensor
        ``(B, U)`` long, ``[BOS] + pieces`` padded with the pad id.
    tokens_out : torch.Tensor
        ``(B, U)`` long, ``pieces + [EOS]`` padded with the pad id.

    Example
    -------
    >>> csv = getfixture("tmp_path") / "captions.csv"
    >>> _ = csv.write_text("id,caption\\n0,a dog barks\\n1,a cat meows\\n")
    >>> sp = train_caption_tokenizer(csv, csv.parent / "tok", model_type="char").sp
    >>> tokens_in, tokens_out = encode_captions(sp, ["a dog", "a cat meows"], max_length=8)
    >>> tokens_in.shape
    torch.Size([2, 8])
    >>> decode_ids(sp, tokens_out[0].tolist())
    'a dog'
    """
    if max_length < 2 or not captions:
        raise ValueError(
            f"need captions and max_length >= 2 (BOS or EOS plus one piece), got "
            f"{len(captions)} captions and max_length={max_length}"
        )
    pieces = [sp.encode_as_ids(caption)[: max_length - 1] for caption in captions]
    length = max(len(ids) for ids in pieces) + 1
    tokens_in = torch.full((len(pieces), length), sp.pad_id(), dtype=torch.long)
    tokens_out = torch.full((len(pieces), length), sp.pad_id(), dtype=torch.long)
    for row, ids in enumerate(pieces):
        tokens_in[row, : len(ids) + 1] = torch.tensor([sp.bos_id(), *ids])
        tokens_out[row, : len(ids) + 1] = torch.tensor([*ids, sp.eos_id()])
    return tokens_in, tokens_out


def check_decoder_captions(value) -> int:
    """``decoder_captions`` as an int >= 1, or a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"decoder_captions must be an int >= 1 (captions per clip the decoder learns "
            f"each step), got {value!r}"
        )
    return value


def clip_caption_ids(
    sp: SentencePieceProcessor, captions: Sequence[str], max_length: int, rows: int = 1
):
    """Teacher-forcing ids of one clip's decoder captions.

    With ``rows`` 1 (``decoder_captions: 1``, and evaluation), the first
    caption's ``(U,)`` ids. With ``rows`` K > 1, a fixed ``(K, max_length)``
    block: one row per caption,
    padded with the pad id (whole rows of padding when the clip has fewer than
    K captions; ``caption_loss`` ignores them), so that every clip of a batch
    has the same shape (SpeechBrain's ``PaddedBatch`` pads the first dimension
    only); ``SLAPBrain`` cuts the columns that are padding in every row.

    Arguments
    ---------
    sp : sentencepiece.SentencePieceProcessor
        The caption tokenizer.
    captions : sequence of str
        The clip's captions, the one its CLAP loss uses first.
    max_length : int
        The decoder's ``max_length``.
    rows : int
        1, or the rows of the block (``decoder_captions``), at least ``len(captions)``.

    Returns
    -------
    tokens_in, tokens_out : torch.Tensor
        ``(U,)`` or ``(rows, max_length)`` long ids (``encode_captions``).

    Example
    -------
    >>> csv = getfixture("tmp_path") / "captions.csv"
    >>> _ = csv.write_text("id,caption\\n0,a dog barks\\n1,a cat meows\\n")
    >>> sp = train_caption_tokenizer(csv, csv.parent / "tok", model_type="char").sp
    >>> clip_caption_ids(sp, ["a dog", "a cat"], 8)[0].shape
    torch.Size([7])
    >>> tokens_in, _ = clip_caption_ids(sp, ["a dog", "a cat"], 8, rows=3)
    >>> tokens_in.shape, tokens_in[2].tolist()
    (torch.Size([3, 8]), [0, 0, 0, 0, 0, 0, 0, 0])
    """
    if rows == 1:
        tokens_in, tokens_out = encode_captions(sp, captions[:1], max_length)
        return tokens_in[0], tokens_out[0]
    if not 1 <= len(captions) <= rows:
        raise ValueError(f"need 1 to {rows} captions for {rows} rows, got {len(captions)}")
    tokens_in, tokens_out = encode_captions(sp, captions, max_length)
    block_in = torch.full((rows, max_length), sp.pad_id(), dtype=torch.long)
    block_out = block_in.clone()
    block_in[: len(captions), : tokens_in.shape[1]] = tokens_in
    block_out[: len(captions), : tokens_out.shape[1]] = tokens_out
    return block_in, block_out


def caption_prompt_ids(sp: SentencePieceProcessor, prompts: Sequence[str]) -> torch.Tensor:
    """Zero-shot prompts as caption prefixes, for ``CaptionDecoder.prefix_log_likelihoods``.

    A prompt's closing full stop is dropped (a caption goes on after it); no
    BOS, no EOS; rows right-padded with the pad id.

    Arguments
    ---------
    sp : sentencepiece.SentencePieceProcessor
        The caption tokenizer.
    prompts : sequence of str
        One prompt per class, e.g. ``"The sound of a dog barking."``.

    Returns
    -------
    ``(K, U)`` long ids.

    Example
    -------
    >>> csv = getfixture("tmp_path") / "captions.csv"
    >>> _ = csv.write_text("id,caption\\n0,a dog barks\\n1,a cat meows\\n")
    >>> sp = train_caption_tokenizer(csv, csv.parent / "tok", model_type="char").sp
    >>> ids = caption_prompt_ids(sp, ["a dog.", "a cat meows."])
    >>> ids.shape, decode_ids(sp, ids[0].tolist())
    (torch.Size([2, 12]), 'a dog')
    """
    pieces = [sp.encode_as_ids(prompt.strip().removesuffix(".").rstrip()) for prompt in prompts]
    if not pieces or not all(pieces):
        raise ValueError(f"need non-empty prompts, got {list(prompts)!r}")
    ids = torch.full((len(pieces), max(map(len, pieces))), sp.pad_id(), dtype=torch.long)
    for row, piece in enumerate(pieces):
        ids[row, : len(piece)] = torch.tensor(piece)
    return ids


def decode_ids(sp: SentencePieceProcessor, ids: Sequence[int]) -> str:
    """Caption text of decoded ids: stops at the first EOS, skips pad and BOS.

    Arguments
    ---------
    sp : sentencepiece.SentencePieceProcessor
        The tokenizer.
    ids : sequence of int
        Token ids (a decoder hypothesis or a ``tokens_out`` row).

    Returns
    -------
    The caption text.
    """
    ids = list(ids)
    if sp.eos_id() in ids:
        ids = ids[: ids.index(sp.eos_id())]
    return sp.decode_ids([i for i in ids if i not in (sp.pad_id(), sp.bos_id())])
