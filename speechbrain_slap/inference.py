"""``SLAP``: SpeechBrain ``Pretrained`` interface of a SLAP model folder.

Load a folder written by ``slap export`` (see ``speechbrain_slap.model_folder``) and
embed, classify, search and caption audio of any length and format::

    from speechbrain_slap.inference import SLAP

    model = SLAP.from_hparams(source="my_slap_model", run_opts={"device": "cpu"})
    audio = model.encode_file("clip.flac")                      # (D,), unit norm
    text = model.encode_text(["a dog barks", "rain on a roof"])   # (2, D)
    scores, best, index, labels = model.classify_file("clip.flac", ["dog", "rain"])
    caption = model.caption_file("clip.flac", beam_size=4)

    # Many files: read and encoded in packed batches of about ``batch_seconds``.
    embeddings, files, failed = model.encode_files(["a.wav", "b.flac", "c.mp3"])

Audio is packed: no compute is spent on padding, and a clip gives the same
embedding alone or inside any batch.

Long audio (the documented rule)
--------------------------------
The encoder keeps whole 160 ms time patches (``packing.num_time_patches``), so
a window is ``max_duration`` rounded down to whole patches: 29.91 s (478,560
samples, 187 patches) at the default 30 s. A longer clip is cut into such
windows starting every ``window_hop`` seconds (default and upper bound: the
window length, i.e. no overlap); the last window is aligned to the end of the
clip, so every window sample is encoded and no window is shorter than the
others. The clip embedding is the mean of the L2-normalised window
embeddings, L2-normalised again. Captions attend to the tokens of all windows;
frame embeddings are taken from the windows in order, each time step from the
first window that covers it. The only audio not encoded is what the
whole-patch rule leaves at the end of a clip no longer than one window (less
than 160 ms), as in training.

Authors
 * speechbrain-slap contributors 2026
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from speechbrain.inference.interfaces import Pretrained

from speechbrain_slap.data.audio import (
    AudioLoadError,
    NonFiniteResultError,
    check_waveform,
    load_audio,
)
from speechbrain_slap.evaluation import process_files
from speechbrain_slap.lobes.caption_decoder import decode_ids
from speechbrain_slap.lobes.features import num_frames, pad_waveforms
from speechbrain_slap.lobes.frame_encoder import time_step_features
from speechbrain_slap.lobes.onset import onset_steps, onset_windows
from speechbrain_slap.lobes.packing import (
    PATCH_FRAMES,
    num_time_patches,
    unpack_tokens,
    unpack_values,
)
from speechbrain_slap.model_folder.loading import CheckedFolderLoading
from speechbrain_slap.precision import InferencePrecision
from speechbrain_slap.prompts import DEFAULT_TEMPLATE, check_templates, prompts_for

logger = logging.getLogger(__name__)


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows that cover a clip (the long-audio rule).

    Windows start at ``0, hop, 2 * hop, ...`` while they end inside the clip;
    the last one is aligned to the clip's end. A clip no longer than ``window``
    is one window.

    Arguments
    ---------
    n_samples : int
        Clip length in samples.
    window : int
        Window length in samples.
    hop : int
        Samples between window starts (``1 <= hop <= window``).

    Returns
    -------
    list of int

    Example
    -------
    >>> window_starts(75, window=30, hop=30)
    [0, 30, 45]
    >>> window_starts(20, window=30, hop=30)
    [0]
    """
    if not 1 <= hop <= window:
        raise ValueError(f"window hop must be in [1, {window}] samples, got {hop}")
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window, hop))
    return starts + [n_samples - window]


def _as_tensor(value, name: str, expected: str) -> torch.Tensor:
    """``value`` (a tensor, a NumPy array or a list of numbers) as a tensor, or a ValueError."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"{name} must be {expected}, got {type(value).__name__} {value!r:.80}"
        ) from None


class FileResults(NamedTuple):
    """What the ``*_files`` methods of ``SLAP`` return: results, their files, failures.

    Arguments
    ---------
    output : Any
        The results of the readable files, in input order: ``(N, D)``
        embeddings, the ``classify_batch`` tuple, or a list of captions.
    files : list of str
        The file of each result (the inputs minus the unreadable ones).
    failed : list of dict
        ``{"file", "error"}`` of each unreadable file, in input order: the
        ``failed`` list of the ``slap`` command's output.

    Example
    -------
    >>> result = FileResults(torch.zeros(1, 4), ["a.wav"], [{"file": "b.wav", "error": "x"}])
    >>> embeddings, files, failed = result
    >>> embeddings.shape
    torch.Size([1, 4])
    """

    output: Any
    files: list[str]
    failed: list[dict]


class SLAP(InferencePrecision, CheckedFolderLoading, Pretrained):
    """A SLAP model folder, ready to embed, classify, search and caption audio.

    Build it with ``SLAP.from_hparams(source=FOLDER, run_opts=...)`` or, for a model
    on the Hugging Face hub, ``SLAP.from_hparams(source="org/name", savedir=...)``;
    the SHA-256 sums of the folder's files are checked first.

    Arguments
    ---------
    *args, **kwargs
        As ``speechbrain.inference.interfaces.Pretrained``.
    batch_seconds : float
        Most seconds of audio encoded per forward (and read per batch by the
        ``*_files`` methods): the memory bound.
    precision : str, optional
        ``fp32``, ``bf16``, ``fp16`` or ``int8`` (``speechbrain_slap.precision``;
        ``int8`` quantizes the linear layers of the audio encoder and its
        pooling head, CPU only); the
        default is ``run_opts["precision"]``, itself ``fp32`` by default.
        ``set_precision`` changes it later.

    Example
    -------
    >>> model = SLAP.from_hparams(source=tiny_model_folder)  # doctest: +SKIP
    >>> model.encode_file("clip.wav").shape  # doctest: +SKIP
    torch.Size([128])
    """

    HPARAMS_NEEDED = ["sample_rate", "max_duration", "window_hop"]
    MODULES_NEEDED = ["compute_features", "audio_encoder", "audio_pooling", "text_encoder"]
    INT8_MODULES = ("audio_encoder", "audio_pooling")

    def __init__(self, *args, batch_seconds: float = 300.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_seconds = batch_seconds
        self.sample_rate = int(self.hparams.sample_rate)
        self.hop_samples = self.mods.compute_features.hop_samples
        longest = int(round(float(self.hparams.max_duration) * self.sample_rate))
        # Whole patches only: frames = samples // hop + 1 = 16 * patches.
        patches = num_time_patches(num_frames(longest, self.hop_samples))
        self.window = (patches * PATCH_FRAMES - 1) * self.hop_samples
        hop = int(round(float(self.hparams.window_hop) * self.sample_rate))
        self.hop = min(hop, self.window)
        window_starts(self.window + 1, self.window, self.hop)  # validates the hop
        self.frame_seconds = PATCH_FRAMES * self.hop_samples / self.sample_rate

    # -- audio in ---------------------------------------------------------------------
    def load_audio(self, path, savedir=None) -> torch.Tensor:
        """Any soundfile-readable file -> mono float32 at the model's rate.

        Raises ``speechbrain_slap.data.audio.AudioLoadError`` naming the file.
        """
        return load_audio(path, self.sample_rate)

    def _split(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None) -> list[torch.Tensor]:
        """A padded batch (or one waveform) -> its clips, cut at their exact lengths."""
        wavs = _as_tensor(wavs, "wavs", "a (batch, samples) or (samples,) array")
        if wav_lens is not None:
            wav_lens = _as_tensor(wav_lens, "wav_lens", "relative lengths in (0, 1]")
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be (batch, samples) or (samples,), got {wavs.shape}")
        total = wavs.shape[1]
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        if wav_lens.shape != (wavs.shape[0],):
            raise ValueError(f"wav_lens must have shape ({wavs.shape[0]},), got {wav_lens.shape}")
        if bool(((wav_lens <= 0) | (wav_lens > 1 + 1e-6)).any()):
            raise ValueError(f"wav_lens must be relative lengths in (0, 1], got {wav_lens}")
        counts = [max(1, min(total, round(float(r) * total))) for r in wav_lens]
        return [check_waveform(wavs[i, :n].cpu(), f"waveform {i}") for i, n in enumerate(counts)]

    @staticmethod
    def _checked(clips: Sequence, purpose: str) -> list[torch.Tensor]:
        """1-D float32 CPU waveforms, each checked (``check_waveform``); at least one."""
        clips = [
            check_waveform(torch.as_tensor(c).cpu(), f"waveform {i}") for i, c in enumerate(clips)
        ]
        if not clips:
            raise ValueError(f"no audio to {purpose}")
        return clips

    def _windows(self, clips: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
        """All windows of all clips and the clip each window belongs to."""
        windows, owner = [], []
        for index, clip in enumerate(clips):
            for start in window_starts(clip.numel(), self.window, self.hop):
                windows.append(clip[start : start + self.window])
                owner.append(index)
        return windows, owner

    def _window_starts(self, clips: Sequence[torch.Tensor]) -> list[int]:
        """The start sample of every window of ``_windows(clips)``, in the same order."""
        return [s for c in clips for s in window_starts(c.numel(), self.window, self.hop)]

    def _chunks(self, windows: Sequence[torch.Tensor]) -> list[range]:
        """Consecutive groups of windows of at most ``batch_seconds`` audio (>= 1 each)."""
        budget = self.batch_seconds * self.sample_rate
        chunks, start, used = [], 0, 0
        for i, wav in enumerate(windows):
            if i > start and used + wav.numel() > budget:
                chunks.append(range(start, i))
                start, used = i, 0
            used += wav.numel()
        chunks.append(range(start, len(windows)))
        return chunks

    @torch.no_grad()
    def _encode_windows(self, windows: Sequence[torch.Tensor]):
        """Packed encoder pass over windows; yields ``(tokens, packed)`` per chunk."""
        for chunk in self._chunks(windows):
            wavs, wav_lens = pad_waveforms([windows[i] for i in chunk], self.hop_samples)
            with self.inference_ctx:
                feats = self.mods.compute_features(wavs.to(self.device))
                packed = self.mods.audio_encoder.patchify(feats, wav_lens.to(self.device))
                tokens = self.mods.audio_encoder(packed)
            yield tokens.float(), packed

    # -- embeddings ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_waveforms(self, clips: Sequence[torch.Tensor]) -> torch.Tensor:
        """L2-normalised embeddings of 1-D waveforms of any lengths (model rate).

        Arguments
        ---------
        clips : sequence of torch.Tensor
            Mono waveforms at ``sample_rate``.

        Returns
        -------
        torch.Tensor
            ``(B, D)`` on the CPU.
        """
        clips = self._checked(clips, "encode")
        windows, owner = self._windows(clips)
        pooled = []
        for tokens, packed in self._encode_windows(windows):
            with self.inference_ctx:
                emb = self.mods.audio_pooling(tokens, cu_seqlens=packed.cu_seqlens)
            pooled.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        pooled = torch.cat(pooled)
        owner = torch.tensor(owner)
        sums = torch.zeros(len(clips), pooled.shape[1]).index_add_(0, owner, pooled)
        return torch.nn.functional.normalize(sums, dim=-1)

    def encode_audio_batch(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Audio embeddings of a padded batch.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` waveforms at ``sample_rate`` (or one ``(S,)`` waveform).
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths; None means all ``S`` samples.

        Returns
        -------
        torch.Tensor
            ``(B, D)`` L2-normalised, on the CPU.
        """
        return self.encode_waveforms(self._split(wavs, wav_lens))

    def encode_file(self, path: str | Path) -> torch.Tensor:
        """``(D,)`` L2-normalised embedding of an audio file (any length and format)."""
        return self.encode_waveforms([self.load_audio(path)])[0]

    def process_files(self, paths: Sequence[str | Path], work, progress: bool = False):
        """``work(waveforms)`` over files read in batches of ``batch_seconds``; the failures.

        The reader of the ``slap`` command and the evaluators
        (``speechbrain_slap.evaluation.process_files``): files are read in
        order, grouped until the next would exceed ``batch_seconds`` of audio,
        and each group goes to ``work`` (one packed forward). A file that
        cannot be read (``AudioLoadError``: missing, undecodable, empty,
        NaN/Inf samples) is left out, logged as a warning ``FILE: REASON``
        and listed in ``failed``; the others keep their order.

        Arguments
        ---------
        paths : sequence of str or Path
            Audio files.
        work : callable
            ``work(waveforms)`` -> one result per waveform.
        progress : bool
            A tqdm progress bar on stderr.

        Returns
        -------
        FileResults
            ``output`` is the list of results.
        """
        if isinstance(paths, str | Path):
            raise TypeError(f"paths must be a sequence of files, got the single path {paths!r}")
        paths = list(paths)
        failed = []

        def report(_, error: AudioLoadError):
            logger.warning("%s", error)
            failed.append({"file": error.source, "error": error.reason})

        results, read, _ = process_files(
            self, paths, work, self.batch_seconds, progress=progress, on_skip=report
        )
        return FileResults(results, [str(paths[i]) for i in read], failed)

    def encode_files(self, paths: Sequence[str | Path], progress: bool = False) -> FileResults:
        """Embeddings of audio files, read and encoded in packed batches of ``batch_seconds``.

        Each row equals ``encode_file`` of its file (CPU fp32, <= 1e-5): a clip
        gets the same embedding alone or packed with others. Unreadable files
        are reported as ``process_files`` says.

        Arguments
        ---------
        paths : sequence of str or Path
            Audio files (any format, rate, channel count and length).
        progress : bool
            A tqdm progress bar on stderr.

        Returns
        -------
        FileResults
            ``output``: ``(N, D)`` L2-normalised embeddings (CPU), one row per
            readable file in input order (``(0, D)`` if none was readable);
            ``files``: their files; ``failed``: ``{"file", "error"}`` of the others.

        Example
        -------
        >>> embeddings, files, failed = model.encode_files(["a.wav", "b.wav"])  # doctest: +SKIP
        >>> embeddings.shape  # doctest: +SKIP
        torch.Size([2, 128])
        """
        rows, files, failed = self.process_files(
            paths, lambda waves: list(self.encode_waveforms(waves)), progress
        )
        # MAPooling's output width is its probe's.
        dim = self.mods.audio_pooling.probe.numel()
        embeddings = torch.stack(rows) if rows else torch.zeros(0, dim)
        return FileResults(embeddings, files, failed)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 256) -> torch.Tensor:
        """``(N, D)`` L2-normalised text embeddings (CPU).

        Arguments
        ---------
        texts : str or sequence of str
            Captions or prompts (non-empty strings).
        batch_size : int
            Texts per forward.

        Returns
        -------
        torch.Tensor
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no text to encode")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} must be a non-empty string, got {text!r}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates, e.g. undecodable bytes of argv
                raise ValueError(
                    f"text {i}: not valid Unicode (lone surrogates) in {text!r}"
                ) from None
        out = []
        for start in range(0, len(texts), batch_size):
            with self.inference_ctx:
                emb = self.mods.text_encoder(texts[start : start + batch_size])
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out)

    # -- zero-shot classification ----------------------------------------------------------
    def label_embeddings(
        self, labels: Sequence[str], templates: Sequence[str] | str = DEFAULT_TEMPLATE
    ) -> torch.Tensor:
        """``(C, D)`` class embeddings: the mean over prompt templates, renormalised.

        Arguments
        ---------
        labels : sequence of str
            Class names (``_`` is read as a space).
        templates : str or sequence of str
            Prompts with a ``{label}`` field; several make a prompt ensemble.

        Returns
        -------
        torch.Tensor
        """
        labels = list(labels)
        templates = check_templates(templates)
        if not labels:
            raise ValueError("need at least one label")
        emb = (
            self.encode_text(prompts_for(labels, templates))
            .view(len(labels), len(templates), -1)
            .mean(dim=1)
        )
        return torch.nn.functional.normalize(emb, dim=-1)

    def scores_from_embeddings(self, audio: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over classes: log-softmax of scaled cosine similarity."""
        scale = float(self.mods.clap_loss.scale) if "clap_loss" in self.mods else 1.0
        return torch.log_softmax(scale * audio @ classes.T, dim=-1)

    def classify_batch(
        self,
        wavs: torch.Tensor,
        wav_lens: torch.Tensor | None = None,
        labels: Sequence[str] = (),
        templates: Sequence[str] | str = DEFAULT_TEMPLATE,
    ):
        """Zero-shot classification, returning what ``EncoderClassifier`` returns.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` waveforms.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths.
        labels : sequence of str
            Class names.
        templates : str or sequence of str
            Prompt template(s) with ``{label}``.

        Returns
        -------
        scores : torch.Tensor
            ``(B, C)`` log-probabilities (log-softmax of the model's logit scale
            times the cosine similarity).
        best : torch.Tensor
            ``(B,)`` best log-probability.
        index : torch.Tensor
            ``(B,)`` best class index.
        text_labels : list of str
            Best class names.
        """
        audio = self.encode_audio_batch(wavs, wav_lens)
        return self._classify(audio, labels, self.label_embeddings(labels, templates))

    def classify_file(self, path, labels, templates=DEFAULT_TEMPLATE):
        """``classify_batch`` for one file; outputs have a batch dimension of 1."""
        audio = self.encode_file(path).unsqueeze(0)
        return self._classify(audio, labels, self.label_embeddings(labels, templates))

    def classify_files(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[str],
        templates: Sequence[str] | str = DEFAULT_TEMPLATE,
        progress: bool = False,
    ) -> FileResults:
        """Zero-shot classification of audio files, read and encoded as ``encode_files`` does.

        Arguments
        ---------
        paths : sequence of str or Path
            Audio files.
        labels : sequence of str
            Class names.
        templates : str or sequence of str
            Prompt template(s) with ``{label}``.
        progress : bool
            A tqdm progress bar on stderr.

        Returns
        -------
        FileResults
            ``output``: ``(scores, best, index, text_labels)`` as
            ``classify_batch`` returns them, one row per readable file in
            input order (row ``i`` equals ``classify_file`` of ``files[i]``);
            ``files`` and ``failed`` as for ``encode_files``.
        """
        classes = self.label_embeddings(labels, templates)  # bad labels fail before any file
        embeddings, files, failed = self.encode_files(paths, progress)
        return FileResults(self._classify(embeddings, labels, classes), files, failed)

    def _classify(self, audio, labels, classes):
        """``classify_batch``'s tuple for audio embeddings and the labels' class embeddings."""
        scores = self.scores_from_embeddings(audio, classes)
        best, index = scores.max(dim=-1)
        return scores, best, index, [list(labels)[i] for i in index.tolist()]

    # -- retrieval ----------------------------------------------------------------------------
    def retrieve(self, queries, gallery: torch.Tensor, k: int = 5):
        """Top-``k`` gallery items of each query, by cosine similarity.

        Works both ways: text queries (strings, embedded here) against an audio
        gallery, or audio queries (embeddings) against a text gallery.

        Arguments
        ---------
        queries : str, sequence of str, or torch.Tensor
            Texts, or ``(N, D)`` embeddings.
        gallery : torch.Tensor or sequence of str
            ``(M, D)`` embeddings, or texts (embedded here).
        k : int
            Results per query (at most ``M``).

        Returns
        -------
        scores : torch.Tensor
            ``(N, k)`` cosine similarities, best first.
        indices : torch.Tensor
            ``(N, k)`` gallery indices.
        """
        queries = self._as_embeddings(queries, "queries")
        gallery = self._as_embeddings(gallery, "gallery")
        if queries.shape[1] != gallery.shape[1]:
            raise ValueError(
                f"queries have dimension {queries.shape[1]}, gallery {gallery.shape[1]}"
            )
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        similarity = queries @ gallery.T
        return similarity.topk(min(k, gallery.shape[0]), dim=-1)

    def _as_embeddings(self, items, name: str) -> torch.Tensor:
        if isinstance(items, str) or (
            isinstance(items, Sequence) and items and isinstance(items[0], str)
        ):
            return self.encode_text(items)
        items = torch.as_tensor(items, dtype=torch.float32)
        if items.dim() == 1:
            items = items.unsqueeze(0)
        if items.dim() != 2 or items.shape[0] == 0:
            raise ValueError(f"{name} must be texts or (N, D) embeddings, got {items.shape}")
        bad = int((~torch.isfinite(items).all(dim=1)).sum())
        if bad:  # a NaN row would rank anywhere, silently
            raise ValueError(f"{name}: {bad} of {items.shape[0]} rows are not finite")
        return torch.nn.functional.normalize(items, dim=-1)

    # -- captioning ------------------------------------------------------------------------------
    @torch.no_grad()
    def caption_waveforms(
        self, clips: Sequence[torch.Tensor], beam_size: int = 4, max_length: int | None = None
    ) -> list[str]:
        """Captions of 1-D waveforms (beam search; ``beam_size=1`` is greedy).

        Arguments
        ---------
        clips : sequence of torch.Tensor
            Mono waveforms at ``sample_rate``.
        beam_size : int
            Beams per clip.
        max_length : int, optional
            Most caption tokens.

        Returns
        -------
        list of str
        """
        if "caption_decoder" not in self.mods or not hasattr(self.hparams, "tokenizer"):
            raise RuntimeError("this model folder has no caption decoder and tokenizer")
        clips = self._checked(clips, "caption")
        windows, owner = self._windows(clips)
        starts = self._window_starts(clips)
        per_window, per_window_steps = [], []
        for tokens, packed in self._encode_windows(windows):
            lengths = (packed.cu_seqlens[1:] - packed.cu_seqlens[:-1]).tolist()
            per_window.extend(tokens.split(lengths))
            per_window_steps.extend(packed.pos_t.float().split(lengths))
        # A clip's memory: the tokens of all its windows, in order, each at its time
        # step in the clip (window start + step in the window) for a decoder with
        # memory_time_positions.
        memories, steps = [[] for _ in clips], [[] for _ in clips]
        step_samples = self.frame_seconds * self.sample_rate
        for tokens, time_steps, index, start in zip(
            per_window, per_window_steps, owner, starts, strict=True
        ):
            memories[index].append(tokens)
            steps[index].append(time_steps + start / step_samples)
        memory = [torch.cat(m) for m in memories]
        for index, tokens in enumerate(memory):
            if not bool(torch.isfinite(tokens).all()):  # beam search would give ""
                raise NonFiniteResultError(f"waveform {index}: non-finite encoder output")
        cu = torch.zeros(len(memory) + 1, dtype=torch.int32, device=memory[0].device)
        cu[1:] = torch.cumsum(torch.tensor([m.shape[0] for m in memory], device=cu.device), 0)
        audio, audio_mask = unpack_tokens(torch.cat(memory), cu)
        time_index = unpack_values(torch.cat([torch.cat(t) for t in steps]), cu)
        with self.inference_ctx:
            ids = self.mods.caption_decoder.beam_search(
                audio,
                audio_mask,
                beam_size=beam_size,
                max_length=max_length,
                time_index=time_index,
            )
        return [decode_ids(self.hparams.tokenizer, seq) for seq in ids]

    def caption_batch(self, wavs, wav_lens=None, beam_size: int = 4, max_length=None):
        """Captions of a padded batch; see ``caption_waveforms``."""
        return self.caption_waveforms(self._split(wavs, wav_lens), beam_size, max_length)

    def caption_file(self, path, beam_size: int = 4, max_length=None) -> str:
        """Caption of one audio file."""
        return self.caption_waveforms([self.load_audio(path)], beam_size, max_length)[0]

    def caption_files(
        self,
        paths: Sequence[str | Path],
        beam_size: int = 4,
        max_length: int | None = None,
        progress: bool = False,
    ) -> FileResults:
        """Captions of audio files, read and encoded in packed batches of ``batch_seconds``.

        Arguments
        ---------
        paths : sequence of str or Path
            Audio files.
        beam_size : int
            Beams per clip (1 is greedy).
        max_length : int, optional
            Most caption tokens.
        progress : bool
            A tqdm progress bar on stderr.

        Returns
        -------
        FileResults
            ``output``: one caption per readable file in input order (each
            that of ``caption_file``); ``files`` and ``failed`` as for
            ``encode_files``.
        """
        return self.process_files(
            paths, lambda waves: self.caption_waveforms(waves, beam_size, max_length), progress
        )

    # -- frame features ------------------------------------------------------------------------
    @torch.no_grad()
    def frame_embeddings(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        """Per-time-step encoder features with their timestamps.

        One time step is one 16-frame patch column (``frame_seconds``, 0.16 s):
        the mean of its frequency tokens. For long audio, each time step comes
        from the first window that covers it.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` waveforms (or one ``(S,)``).
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths.

        Returns
        -------
        frames : torch.Tensor
            ``(B, T', D)`` zero-padded features (CPU).
        times : torch.Tensor
            ``(B, T')`` start time in seconds of each step (0 on padding).
        frame_lens : torch.Tensor
            ``(B,)`` relative lengths of ``frames``.
        """
        clips = self._split(wavs, wav_lens)
        windows, owner = self._windows(clips)
        starts = self._window_starts(clips)
        steps = []
        for tokens, packed in self._encode_windows(windows):
            frames, mask = time_step_features(tokens, packed)
            steps.extend(f[m].cpu() for f, m in zip(frames, mask, strict=True))
        per_clip = [([], []) for _ in clips]
        covered = [0.0] * len(clips)
        for feats, index, start in zip(steps, owner, starts, strict=True):
            offset = start / self.sample_rate
            times = offset + self.frame_seconds * torch.arange(feats.shape[0])
            keep = times + self.frame_seconds > covered[index] + 1e-9  # not covered yet
            per_clip[index][0].append(feats[keep])
            per_clip[index][1].append(times[keep])
            if keep.any():
                covered[index] = float(times[keep][-1]) + self.frame_seconds
        frames = [torch.cat(f) for f, _ in per_clip]
        times = [torch.cat(t) for _, t in per_clip]
        longest = max(f.shape[0] for f in frames)
        out = torch.zeros(len(frames), longest, frames[0].shape[1])
        out_times = torch.zeros(len(frames), longest)
        for i, (f, t) in enumerate(zip(frames, times, strict=True)):
            out[i, : f.shape[0]], out_times[i, : t.shape[0]] = f, t
        frame_lens = torch.tensor([f.shape[0] / longest for f in frames])
        return out, out_times, frame_lens

    @torch.no_grad()
    def onset_embeddings(
        self,
        wavs: torch.Tensor,
        wav_lens: torch.Tensor | None = None,
        threshold: float = 0.25,
        window_steps: int = 3,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of where each clip's first sound starts, and when it starts.

        The onset window (``speechbrain_slap/lobes/onset.py``): the first time
        step one of whose tokens stands out of its frequency band's median over
        the clip by ``threshold`` of the clip's range, and ``window_steps``
        steps (``frame_seconds`` each) from there,
        pooled by the model's MAP head. Its embedding lives in the same space as
        ``encode_audio_batch``'s, so prompts score it the same way: which sound
        a clip opens with, where the clip embedding says which sounds it holds.
        Audio longer than the model's window is read in its first window.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` waveforms (or one ``(S,)``).
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths.
        threshold : float
            In ``[0, 1)``: how far out of the clip's background the onset step is.
        window_steps : int
            Time steps pooled from the onset on (>= 1).

        Returns
        -------
        embeddings : torch.Tensor
            ``(B, D)`` L2-normalised, on the CPU.
        onset_seconds : torch.Tensor
            ``(B,)`` start time of each clip's onset step.

        Example
        -------
        >>> onset, seconds = model.onset_embeddings(wavs)  # doctest: +SKIP
        >>> prompts = model.label_embeddings(["dog", "bell"])  # doctest: +SKIP
        >>> model.scores_from_embeddings(onset, prompts).argmax(dim=1)  # doctest: +SKIP
        """
        clips = self._split(wavs, wav_lens)
        firsts = [clip[: self.window] for clip in clips]
        embeddings, onsets = [], []
        for tokens, packed in self._encode_windows(firsts):
            onset = onset_steps(tokens, packed, threshold)
            window, cu_seqlens = onset_windows(tokens, packed, threshold, window_steps, onset)
            with self.inference_ctx:
                emb = self.mods.audio_pooling(window, cu_seqlens=cu_seqlens)
            embeddings.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
            onsets.append(onset.cpu())
        return torch.cat(embeddings), self.frame_seconds * torch.cat(onsets).float()

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Audio embeddings (``encode_audio_batch``)."""
        return self.encode_audio_batch(wavs, wav_lens)
