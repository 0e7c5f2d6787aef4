"""Evaluating a SLAP model folder: retrieval, captioning and zero-shot classification.

Every evaluation reads its clips through one embedder: ``process_files``
reads audio files in order, in batches of about ``batch_seconds`` of audio
(``speechbrain_slap.data.audio.audio_batches``), gives each batch to the
model in one packed forward, and skips and reports a file that cannot be read
(the ``AudioLoadError`` of ``speechbrain_slap.data.audio``: missing,
undecodable, empty, NaN or Inf samples). ``embed_files`` and ``caption_files``
are its two uses; the ``slap`` command runs on it too.

* **Retrieval** (``evaluate_retrieval``, paper Table 1): every clip is
  embedded whole (audio longer than the model's window is split and pooled as
  ``SLAP`` documents), every caption is a text query (5 per clip in AudioCaps
  and Clotho, the protocol of ``DATASETS.md``), and
  ``metrics.retrieval_metrics`` scores both directions.
* **Captioning** (``evaluate_captioning``, Table 3): beam-search captions of
  every clip, scored against its references (``metrics.caption_metrics``).
* **Zero-shot classification** (``evaluate_zero_shot``, Table 2): a clip is
  assigned the class whose prompt-ensemble embedding
  (``SLAP.label_embeddings``) is most similar (paper Sec. 3.3). Zero-shot uses
  *all* clips of a dataset; where the dataset has official folds (ESC-50: 5,
  UrbanSound8K: 10) the accuracy of each fold and their unweighted mean are
  reported, as WavCaps does, beside the accuracy over all clips.

A skipped clip is left out of every score, named in the log and listed in
``results.json``.

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from speechbrain_slap.data.audio import AudioLoadError, NonFiniteResultError, audio_batches
from speechbrain_slap.data.manifest import CaptionedClip, read_clips, read_labelled_manifest
from speechbrain_slap.metrics import accuracy, mean_recall_at_1, retrieval_metrics
from speechbrain_slap.outputs import write_csv, write_json

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reading files


def process_files(
    model,
    files: Sequence[str | Path],
    work: Callable[[list[torch.Tensor]], Sequence],
    batch_seconds: float | None = 300.0,
    batch_files: int | None = None,
    progress: bool = False,
    on_skip: Callable[[int, AudioLoadError], None] | None = None,
) -> tuple[list, list[int], list[tuple[int, str]]]:
    """Reads audio files in batches and gives each batch to ``work``; skips unreadable files.

    A batch closes before it would exceed ``batch_seconds`` of audio (or hold
    more than ``batch_files`` files), so at most the budget plus one file is in
    memory; a longer file is a batch of its own.

    Every result is checked (``is_finite``): a file whose result holds a NaN or
    an infinity is reported as skipped, never returned. A batch whose ``work``
    runs out of memory or raises ``NonFiniteResultError`` is retried one file
    at a time, so only the files that fail alone are lost.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        Anything with ``load_audio(path)`` (raising ``AudioLoadError``) and,
        with a ``batch_seconds`` budget, ``sample_rate``.
    files : sequence of str or Path
        Audio files, processed in this order.
    work : callable
        ``work(waveforms)`` -> one result per waveform (e.g. ``model.encode_waveforms``).
    batch_seconds : float, optional
        Audio seconds per batch; None: no seconds budget.
    batch_files : int, optional
        Most files per batch.
    progress : bool
        A tqdm progress bar (files) on stderr.
    on_skip : callable, optional
        ``on_skip(index, error)`` for each unreadable file (default: a logged warning).

    Returns
    -------
    results : list
        The results of ``work``, one per readable file, in input order.
    read : list of int
        Index in ``files`` of each result.
    skipped : list of (int, str)
        Index and reason of each unreadable file.

    Example
    -------
    >>> class Model:  # stands in for SLAP: a file "n" holds n samples
    ...     sample_rate = 10
    ...     def load_audio(self, path):
    ...         if path == "bad":
    ...             raise AudioLoadError(path, "cannot decode audio")
    ...         return torch.zeros(int(path))
    >>> results, read, skipped = process_files(
    ...     Model(), ["3", "bad", "9", "4"], lambda waves: [w.numel() for w in waves], 1.0
    ... )
    >>> results, read, skipped
    ([3, 9, 4], [0, 2, 3], [(1, 'cannot decode audio')])
    """
    if batch_seconds is not None and batch_seconds <= 0:
        raise ValueError(f"batch_seconds must be positive, got {batch_seconds}")
    results, read, skipped = [], [], []
    bar = tqdm(total=len(files), unit="file", disable=not progress)

    def skip(index, error):
        (on_skip or _log_skip)(index, error)
        skipped.append((index, error.reason))
        bar.update(1)

    budget = float("inf") if batch_seconds is None else batch_seconds * model.sample_rate
    with bar:
        for indices, waveforms in audio_batches(files, model.load_audio, budget, skip, batch_files):
            for index, output in _checked_work(work, indices, waveforms, files, skip):
                results.append(output)
                read.append(index)
                bar.update(1)
    return results, read, skipped


# A batch that fails with one of these is retried one file at a time: only the files
# that fail alone are lost (and reported), not the good files batched with them.
_RETRY_ALONE = (MemoryError, torch.OutOfMemoryError, NonFiniteResultError)
NON_FINITE_RESULT = "the model gave a non-finite result (NaN or infinite)"


def _checked_work(work, indices, waveforms, files, skip) -> list[tuple[int, object]]:
    """``(index, result)`` of each file whose ``work`` result is finite; reports the others."""
    try:
        outputs = work(waveforms)
    except _RETRY_ALONE as error:
        if len(waveforms) > 1:
            pairs = []
            for index, wave in zip(indices, waveforms, strict=True):
                pairs += _checked_work(work, [index], [wave], files, skip)
            return pairs
        if isinstance(error, NonFiniteResultError):
            reason = NON_FINITE_RESULT
        else:
            reason = "out of memory while processing it"
        skip(indices[0], AudioLoadError(str(files[indices[0]]), reason))
        return []
    if len(outputs) != len(waveforms):
        raise ValueError(f"work gave {len(outputs)} results for {len(waveforms)} files")
    pairs = []
    for index, output in zip(indices, outputs, strict=True):
        if is_finite(output):
            pairs.append((index, output))
        else:
            skip(index, AudioLoadError(str(files[index]), NON_FINITE_RESULT))
    return pairs


def is_finite(result) -> bool:
    """Whether a result holds no NaN or infinity (tensors, numbers, and lists of them).

    Arguments
    ---------
    result : torch.Tensor, float, str, or a list, tuple or dict of these
        A result of ``work`` (strings are finite).

    Returns
    -------
    bool

    Example
    -------
    >>> is_finite(torch.ones(3)), is_finite([0.5, float("nan")]), is_finite("a caption")
    (True, False, True)
    """
    if isinstance(result, torch.Tensor):
        return not result.is_floating_point() or bool(torch.isfinite(result).all())
    if isinstance(result, float):
        return math.isfinite(result)
    if isinstance(result, list | tuple):
        return all(is_finite(item) for item in result)
    if isinstance(result, dict):
        return all(is_finite(item) for item in result.values())
    return True


def _log_skip(index: int, error: AudioLoadError) -> None:
    logger.warning("skipped %s: %s", error.source, error.reason)


def embed_files(
    model,
    files: Sequence[str | Path],
    batch_seconds: float | None = 300.0,
    progress: bool = True,
    batch_files: int | None = None,
    on_skip: Callable[[int, AudioLoadError], None] | None = None,
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Audio embeddings of files, encoded in batches of at most ``batch_seconds`` of audio.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        Anything with ``sample_rate``, ``load_audio(path)`` and
        ``encode_waveforms(clips) -> (B, D)``.
    files : sequence of str or Path
        Audio files.
    batch_seconds : float, optional
        Audio seconds per ``encode_waveforms`` call.
    progress : bool
        Show a tqdm progress bar (one step per file).
    batch_files : int, optional
        Most files per call.
    on_skip : callable, optional
        As for ``process_files``.

    Returns
    -------
    embeddings : torch.Tensor
        ``(n_read, D)`` on the CPU, one row per readable file, in input order.
    read : list of int
        Index in ``files`` of each embedding row.
    skipped : list of (int, str)
        Index and reason of each unreadable file.

    Raises
    ------
    ValueError
        No file could be read.

    Example
    -------
    >>> class Model:  # stands in for SLAP: the embedding of a clip is its length
    ...     sample_rate = 10
    ...     def load_audio(self, path):
    ...         if path == "bad.wav":
    ...             raise AudioLoadError(path, "cannot decode audio")
    ...         return torch.zeros(int(path[0]))
    ...     def encode_waveforms(self, clips):
    ...         return torch.tensor([[float(c.numel())] for c in clips])
    >>> emb, read, skipped = embed_files(Model(), ["3.wav", "bad.wav", "5.wav"], progress=False)
    >>> emb.squeeze(1).tolist(), read, skipped
    ([3.0, 5.0], [0, 2], [(1, 'cannot decode audio')])
    """
    rows, read, skipped = process_files(
        model,
        files,
        lambda waves: list(model.encode_waveforms(waves).float().cpu()),
        batch_seconds,
        batch_files,
        progress,
        on_skip,
    )
    if not rows:
        raise ValueError(f"none of the {len(files)} audio files could be read")
    return torch.stack(rows), read, skipped


def caption_files(
    model,
    files: Sequence[str | Path],
    beam_size: int = 4,
    max_length: int | None = None,
    batch_seconds: float | None = 300.0,
    batch_files: int | None = None,
    progress: bool = False,
    on_skip: Callable[[int, AudioLoadError], None] | None = None,
) -> tuple[list[str], list[int], list[tuple[int, str]]]:
    """Beam-search captions of files with a ``SLAP`` model's caption decoder (``process_files``).

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        A model folder with a caption decoder and tokenizer.
    files : sequence of str or Path
        Audio files.
    beam_size : int
        Beams per clip (1 is greedy).
    max_length : int, optional
        Most caption tokens (default: the decoder's).
    batch_seconds, batch_files, progress, on_skip
        As for ``process_files``.

    Returns
    -------
    captions : list of str
        One per readable file, in input order.
    read : list of int
        Index in ``files`` of each caption.
    skipped : list of (int, str)
        Index and reason of each unreadable file.
    """
    return process_files(
        model,
        files,
        lambda waves: model.caption_waveforms(waves, beam_size=beam_size, max_length=max_length),
        batch_seconds,
        batch_files,
        progress,
        on_skip,
    )


def _skipped_rows(clips_or_rows: Sequence, skipped: list[tuple[int, str]]) -> list[dict]:
    """``{"ID", "wav", "reason"}`` of each skipped clip (a ``CaptionedClip`` or a manifest row)."""
    out = []
    for index, reason in skipped:
        item = clips_or_rows[index]
        if isinstance(item, CaptionedClip):
            clip_id, wav = item.id, item.wav
        else:
            clip_id, wav = item["ID"], item["wav"]
        out.append({"ID": clip_id, "wav": wav, "reason": reason})
    if out:
        logger.warning(
            "%d of %d clips skipped (unreadable): %s",
            len(out),
            len(clips_or_rows),
            ", ".join(s["ID"] for s in out),
        )
    return out


# --------------------------------------------------------------------------- retrieval


@dataclass
class RetrievalEvaluation:
    """Embeddings of an evaluation split and their retrieval metrics.

    Arguments
    ---------
    clip_ids : list of str
        Audio IDs, in gallery order.
    texts : list of str
        Every caption, in query order.
    text_to_audio : torch.Tensor
        ``(n_texts,)`` audio index of each caption.
    audio : torch.Tensor
        ``(n_audios, D)`` L2-normalised audio embeddings.
    text : torch.Tensor
        ``(n_texts, D)`` L2-normalised text embeddings.

    Example
    -------
    >>> ids, texts, text_to_audio = ["a", "b"], ["A dog barks.", "Rain."], torch.tensor([0, 1])
    >>> evaluation = RetrievalEvaluation(ids, texts, text_to_audio, torch.eye(2), torch.eye(2))
    >>> evaluation.metrics["t2a_R@1"], evaluation.metrics["n_audios"]
    (1.0, 2)
    """

    clip_ids: list[str]
    texts: list[str]
    text_to_audio: torch.Tensor
    audio: torch.Tensor
    text: torch.Tensor
    skipped: list[dict] = field(default_factory=list)

    @property
    def similarity(self) -> torch.Tensor:
        """``(n_texts, n_audios)`` cosine similarities."""
        return self.text @ self.audio.T

    @property
    def metrics(self) -> dict:
        """``retrieval_metrics`` (R@1/5/10, mAP@10, ranks, gallery sizes) and ``mean_R@1``.

        ``mean_R@1`` is the mean of ``t2a_R@1`` and ``a2t_R@1``, the checkpoint
        selection criterion of ``SLAPBrain``.
        """
        metrics = retrieval_metrics(self.similarity, self.text_to_audio)
        metrics["mean_R@1"] = mean_recall_at_1(metrics)
        metrics.update(n_skipped=len(self.skipped), skipped=self.skipped)
        return metrics

    def save(self, folder: str | Path, name: str) -> dict:
        """Writes ``<name>_embeddings.pt`` and the ``<name>_similarity.png`` heat map.

        Arguments
        ---------
        folder : str or Path
            Output folder.
        name : str
            File name prefix (the split).

        Returns
        -------
        dict
            ``{"embeddings": path, "similarity_png": path}``.
        """
        from speechbrain_slap.plots import plot_similarity

        folder = Path(folder)
        embeddings = folder / f"{name}_embeddings.pt"
        torch.save(
            {
                "clip_ids": self.clip_ids,
                "texts": self.texts,
                "text_to_audio": self.text_to_audio,
                "audio": self.audio,
                "text": self.text,
            },
            embeddings,
        )
        png = plot_similarity(
            self.similarity, self.text_to_audio, folder / f"{name}_similarity.png"
        )
        return {"embeddings": str(embeddings), "similarity_png": str(png)}


def evaluate_retrieval(
    model,
    clips: Sequence[CaptionedClip],
    batch_clips: int | None = 32,
    batch_seconds: float | None = None,
) -> RetrievalEvaluation:
    """Text-to-audio and audio-to-text retrieval over all captions of the readable clips.

    Every clip is embedded whole (``embed_files``) and every one of its
    captions is a text query (5 per clip in AudioCaps and Clotho), the
    protocol of ``DATASETS.md``. A clip whose audio cannot be read is left
    out of the gallery, its captions out of the queries, and listed in
    ``skipped``.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        The model (zero-shot: a pretrained folder; fine-tuned: the recipe's export).
    clips : sequence of CaptionedClip
        The evaluation split (``speechbrain_slap.data.manifest.read_clips``).
    batch_clips : int, optional
        Most clips read and encoded together.
    batch_seconds : float, optional
        Most audio seconds read and encoded together.

    Returns
    -------
    RetrievalEvaluation
        Its ``metrics`` hold the scores and the gallery sizes.

    Example
    -------
    >>> model = SLAP.from_hparams(source="slap_model")  # doctest: +SKIP
    >>> clips = read_clips("manifests/test.csv", "/data/clotho")  # doctest: +SKIP
    >>> evaluate_retrieval(model, clips).metrics["t2a_R@1"]  # doctest: +SKIP
    0.189
    """
    audio, read, skipped = embed_files(
        model, [clip.wav for clip in clips], batch_seconds, False, batch_clips
    )
    used = [clips[i] for i in read]
    texts = [caption for clip in used for caption in clip.captions]
    text_to_audio = torch.tensor([i for i, clip in enumerate(used) for _ in clip.captions])
    return RetrievalEvaluation(
        clip_ids=[clip.id for clip in used],
        texts=texts,
        text_to_audio=text_to_audio,
        audio=audio,
        text=model.encode_text(texts),
        skipped=_skipped_rows(clips, skipped),
    )


def evaluate_splits(
    model,
    manifests: dict,
    data_folder: str | Path,
    output_folder: str | Path,
    batch_clips: int | None = 32,
    extra: dict | None = None,
    batch_seconds: float | None = None,
) -> dict:
    """Evaluates retrieval on each manifest; writes ``results.json``, embeddings, heat maps.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        The model.
    manifests : dict
        ``{split name: manifest CSV}``.
    data_folder : str or Path
        Replaces ``$data_root`` in the manifests.
    output_folder : str or Path
        Where ``results.json``, ``<split>_embeddings.pt`` and
        ``<split>_similarity.png`` go.
    batch_clips : int, optional
        Most clips read and encoded together.
    extra : dict, optional
        More entries for ``results.json`` (e.g. the model folder and the
        preparation report).
    batch_seconds : float, optional
        Most audio seconds read and encoded together.

    Returns
    -------
    dict
        What ``results.json`` holds: ``{split: metrics, **extra}``.

    Example
    -------
    >>> model = SLAP.from_hparams(source="slap_model")  # doctest: +SKIP
    >>> manifests = {"test": "manifests/test.csv"}
    >>> results = evaluate_splits(model, manifests, "/data/clotho", "out")  # doctest: +SKIP
    >>> results["test"]["n_audios"]  # doctest: +SKIP
    1045
    """
    output_folder = Path(output_folder)
    results = dict(extra or {})
    for split, manifest in manifests.items():
        clips = read_clips(manifest, data_folder)
        evaluation = evaluate_retrieval(model, clips, batch_clips, batch_seconds)
        evaluation.save(output_folder, split)
        results[split] = evaluation.metrics
        logger.info("%s retrieval: %s", split, results[split])
    write_json(output_folder / "results.json", results)
    return results


# --------------------------------------------------------------------------- captioning


def caption_clips(
    model,
    clips: Sequence[CaptionedClip],
    beam_size: int = 4,
    batch_clips: int | None = 32,
    max_length: int | None = None,
    batch_seconds: float | None = None,
) -> list[str | None]:
    """Beam-search captions of whole clips (``caption_files``), one per clip.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        A model folder with a caption decoder and tokenizer.
    clips : sequence of CaptionedClip
        Clips to caption.
    beam_size : int
        Beams per clip (1 is greedy).
    batch_clips : int, optional
        Most clips read and decoded together.
    max_length : int, optional
        Most caption tokens (default: the decoder's).
    batch_seconds : float, optional
        Most audio seconds read and decoded together.

    Returns
    -------
    list of str or None
        One caption per clip, in order; None for a clip whose audio cannot be
        read (named in the log).
    """
    captions, read, _ = caption_files(
        model, [c.wav for c in clips], beam_size, max_length, batch_seconds, batch_clips
    )
    out = [None] * len(clips)
    for index, caption in zip(read, captions, strict=True):
        out[index] = caption
    return out


def write_predictions(
    predictions_csv: str | Path, clips: Sequence[CaptionedClip], predictions: Sequence[str]
) -> Path:
    """Writes ``ID, prediction, reference_1 ... reference_K`` (K: most references of a clip).

    Clips with fewer references have empty cells.

    Arguments
    ---------
    predictions_csv : str or Path
        The CSV to write.
    clips : sequence of CaptionedClip
        The captioned clips.
    predictions : sequence of str
        One generated caption per clip.

    Returns
    -------
    Path

    Example
    -------
    >>> path = getfixture("tmp_path") / "predictions.csv"
    >>> clips = [CaptionedClip("a", "a.wav", 1.0, ["A dog barks.", "Barking."])]
    >>> print(write_predictions(path, clips, ["a dog barks"]).read_text().strip())
    ID,prediction,reference_1,reference_2
    a,a dog barks,A dog barks.,Barking.
    """
    if len(predictions) != len(clips):
        raise ValueError(f"{len(predictions)} predictions for {len(clips)} clips")
    n_refs = max(len(c.captions) for c in clips)
    header = ["ID", "prediction", *(f"reference_{i + 1}" for i in range(n_refs))]
    rows = (
        [clip.id, prediction, *clip.captions, *[""] * (n_refs - len(clip.captions))]
        for clip, prediction in zip(clips, predictions, strict=True)
    )
    return write_csv(predictions_csv, header, rows)


def evaluate_captioning(
    model,
    manifest: str | Path,
    data_folder: str | Path,
    output_folder: str | Path,
    beam_size: int = 4,
    batch_clips: int | None = 32,
    compute_metrics: bool = True,
    spice: bool = False,
    extra: dict | None = None,
    batch_seconds: float | None = None,
) -> dict:
    """Captions every clip of a manifest; writes ``predictions.csv`` and ``results.json``.

    The captions are scored against all references of each clip with
    ``metrics.caption_metrics`` (CIDEr-D, METEOR; SPICE when asked). The
    predictions are written first, so they survive a scoring failure (no
    Java, no pycocoevalcap, no CoreNLP for SPICE: the error says what to
    install).

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        A model folder with a caption decoder (the fine-tuning recipe's export).
    manifest : str or Path
        Caption manifest of the split to caption.
    data_folder : str or Path
        Replaces ``$data_root`` in the manifest.
    output_folder : str or Path
        Where ``predictions.csv`` and ``results.json`` go.
    beam_size : int
        Beams per clip.
    batch_clips : int, optional
        Most clips read and decoded together.
    compute_metrics : bool
        Score the captions (False: write the predictions only).
    spice : bool
        Also compute SPICE (needs Stanford CoreNLP).
    extra : dict, optional
        More entries for ``results.json``.
    batch_seconds : float, optional
        Most audio seconds read and decoded together.

    Returns
    -------
    dict
        What ``results.json`` holds: the metrics (``CIDEr-D``, ``METEOR``,
        ``n_clips``...), ``beam_size`` and ``extra``.

    Example
    -------
    >>> model = SLAP.from_hparams(source="finetuned_model")  # doctest: +SKIP
    >>> results = evaluate_captioning(model, "manifests/test.csv", "/data/clotho", "out")
    ... # doctest: +SKIP
    >>> sorted(results)  # doctest: +SKIP
    ['CIDEr-D', 'METEOR', 'beam_size', 'n_clips']
    """
    from speechbrain_slap.metrics import caption_metrics

    output_folder = Path(output_folder)
    all_clips = read_clips(manifest, data_folder)
    predictions, read, skipped = caption_files(
        model, [c.wav for c in all_clips], beam_size, None, batch_seconds, batch_clips
    )
    clips = [all_clips[i] for i in read]
    write_predictions(output_folder / "predictions.csv", clips, predictions)
    results = {**(extra or {}), "beam_size": beam_size, "n_clips": len(clips)}
    if skipped:
        results.update(n_skipped=len(skipped), skipped=_skipped_rows(all_clips, skipped))
    if compute_metrics:
        results.update(caption_metrics(predictions, [c.captions for c in clips], spice=spice))
    write_json(output_folder / "results.json", results)
    logger.info("captioning results: %s", results)
    return results


# --------------------------------------------------------------------------- zero-shot


def confusion_matrix(
    predictions: Sequence[int] | torch.Tensor, targets: Sequence[int] | torch.Tensor, n_classes: int
) -> torch.Tensor:
    """Counts of (true class, predicted class) pairs.

    Arguments
    ---------
    predictions : sequence of int or torch.Tensor
        Predicted class indices.
    targets : sequence of int or torch.Tensor
        True class indices, same length.
    n_classes : int
        Number of classes.

    Returns
    -------
    torch.Tensor
        ``(n_classes, n_classes)`` int64; row = true class, column = prediction.

    Example
    -------
    >>> confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], n_classes=3)
    tensor([[1, 0, 0],
            [0, 1, 0],
            [0, 1, 1]])
    """
    predictions = torch.as_tensor(predictions, dtype=torch.int64)
    targets = torch.as_tensor(targets, dtype=torch.int64)
    if predictions.shape != targets.shape or predictions.dim() != 1:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} "
            "must be 1-D of the same length"
        )
    for name, values in (("predictions", predictions), ("targets", targets)):
        if values.numel() and not (0 <= int(values.min()) and int(values.max()) < n_classes):
            raise ValueError(f"{name} must index [0, {n_classes}), got {values.unique().tolist()}")
    flat = targets * n_classes + predictions
    return torch.bincount(flat, minlength=n_classes * n_classes).view(n_classes, n_classes)


def _fold_order(folds: Iterable[str]) -> list[str]:
    """Distinct fold names, numerically sorted when they are all integers."""
    names = set(folds)
    if all(name.isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def accuracy_report(
    predictions: Sequence[int] | torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    folds: Sequence[str],
    labels: Sequence[str],
) -> dict:
    """Overall, per-fold and per-class top-1 accuracy and the confusion matrix.

    ``fold_mean_accuracy`` is the unweighted mean of the fold accuracies (the
    WavCaps protocol); ``accuracy`` is over all clips, so the two differ when
    folds differ in size.

    Arguments
    ---------
    predictions : sequence of int or torch.Tensor
        Predicted class index of each clip.
    targets : sequence of int or torch.Tensor
        True class index of each clip.
    folds : sequence of str
        Fold name of each clip.
    labels : sequence of str
        Class names in class-index order.

    Returns
    -------
    dict
        ``accuracy``, ``n_evaluated``, ``fold_accuracy`` (fold -> accuracy),
        ``n_per_fold``, ``fold_mean_accuracy``, ``per_class_accuracy`` (label ->
        accuracy, None for a class without clips), ``n_per_class`` and
        ``confusion_matrix`` (nested lists, row = true class).

    Example
    -------
    >>> report = accuracy_report([0, 1, 1, 0], [0, 1, 0, 0], ["1", "1", "2", "2"], ["a", "b"])
    >>> report["accuracy"], report["fold_accuracy"], report["fold_mean_accuracy"]
    (0.75, {'1': 1.0, '2': 0.5}, 0.75)
    >>> report["per_class_accuracy"], report["confusion_matrix"]
    ({'a': 0.6666666666666666, 'b': 1.0}, [[2, 1], [0, 1]])
    """
    predictions = torch.as_tensor(predictions, dtype=torch.int64)
    targets = torch.as_tensor(targets, dtype=torch.int64)
    folds = list(folds)
    if len(folds) != targets.numel():
        raise ValueError(f"got {len(folds)} folds for {targets.numel()} clips")
    labels = list(labels)
    matrix = confusion_matrix(predictions, targets, len(labels))

    fold_accuracy, n_per_fold = {}, {}
    for fold in _fold_order(folds):
        member = torch.tensor([f == fold for f in folds])
        fold_accuracy[fold] = accuracy(predictions[member], targets[member])
        n_per_fold[fold] = int(member.sum())

    per_class, n_per_class = {}, {}
    for i, label in enumerate(labels):
        n = int(matrix[i].sum())
        per_class[label] = int(matrix[i, i]) / n if n else None
        n_per_class[label] = n
    return {
        "accuracy": accuracy(predictions, targets),
        "n_evaluated": int(targets.numel()),
        "fold_accuracy": fold_accuracy,
        "n_per_fold": n_per_fold,
        "fold_mean_accuracy": sum(fold_accuracy.values()) / len(fold_accuracy),
        "per_class_accuracy": per_class,
        "n_per_class": n_per_class,
        "confusion_matrix": matrix.tolist(),
    }


def evaluate_zero_shot(
    model,
    manifest: str | Path,
    labels: Sequence[str],
    templates: Sequence[str] | str,
    output_folder: str | Path,
    label_names: Sequence[str] | None = None,
    label_field: str = "label",
    replacements: dict | None = None,
    batch_seconds: float = 300.0,
    progress: bool = True,
    info: dict | None = None,
) -> dict:
    """Zero-shot classification of every clip of a manifest; writes the results.

    Written to ``output_folder``:

    * ``results.json``: ``accuracy_report`` plus ``n_clips`` (manifest rows),
      ``n_skipped`` and ``skipped`` (``ID``, ``wav``, ``reason`` of each
      unreadable file), ``labels``, ``label_names``, ``templates`` and ``info``.
    * ``predictions.csv``: ``ID, fold, label, prediction, log_prob`` per
      evaluated clip (``log_prob`` of the predicted class).
    * ``confusion_matrix.png``.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        A loaded model (``load_audio``, ``encode_waveforms``,
        ``label_embeddings``, ``scores_from_embeddings``, ``sample_rate``).
    manifest : str or Path
        CSV with ``ID, wav, fold`` and the label column
        (``speechbrain_slap.data.manifest.read_labelled_manifest``).
    labels : sequence of str
        The manifest's class labels in class-index order. Every class is a
        candidate, including classes without clips.
    templates : str or sequence of str
        Prompt template(s) with a ``{label}`` field; several are an ensemble.
    output_folder : str or Path
        Where the results go (created).
    label_names : sequence of str, optional
        The words put in the prompts, one per label (default: the labels;
        ``_`` is read as a space).
    label_field : str
        The manifest column holding the class label.
    replacements : dict, optional
        ``$key`` replacements in the ``wav`` column, e.g. ``{"data_root": folder}``.
    batch_seconds : float
        Audio seconds per encoder call.
    progress : bool
        Show a progress bar.
    info : dict, optional
        Extra entries for ``results.json`` (e.g. the dataset and model folder).

    Returns
    -------
    dict
        What ``results.json`` holds.

    Example
    -------
    >>> model = SLAP.from_hparams(source="my_slap_model")  # doctest: +SKIP
    >>> results = evaluate_zero_shot(
    ...     model, "esc50.csv", labels=["dog", "rooster"], templates="This is a sound of {label}.",
    ...     output_folder="results/esc50")  # doctest: +SKIP
    >>> results["accuracy"], results["fold_mean_accuracy"]  # doctest: +SKIP
    (0.9, 0.9)
    """
    labels = list(labels)
    label_names = labels if label_names is None else list(label_names)
    if len(label_names) != len(labels):
        raise ValueError(f"got {len(label_names)} label names for {len(labels)} labels")
    templates = [templates] if isinstance(templates, str) else list(templates)
    rows = read_labelled_manifest(manifest, labels, label_field, replacements)
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)

    classes = model.label_embeddings(label_names, templates)
    audio, read, skipped = embed_files(model, [r["wav"] for r in rows], batch_seconds, progress)
    log_probs = model.scores_from_embeddings(audio, classes.to(audio.device))
    best, predictions = log_probs.max(dim=-1)
    evaluated = [rows[i] for i in read]
    targets = [r["target"] for r in evaluated]

    results = accuracy_report(predictions, targets, [r["fold"] for r in evaluated], labels)
    skipped = _skipped_rows(rows, skipped)
    results.update(
        n_clips=len(rows),
        n_skipped=len(skipped),
        skipped=skipped,
        labels=labels,
        label_names=label_names,
        templates=templates,
        info=dict(info or {}),
    )
    write_json(output_folder / "results.json", results)
    write_csv(
        output_folder / "predictions.csv",
        ["ID", "fold", "label", "prediction", "log_prob"],
        (
            [row["ID"], row["fold"], labels[row["target"]], labels[pred], f"{score:.6f}"]
            for row, pred, score in zip(evaluated, predictions.tolist(), best.tolist(), strict=True)
        ),
    )

    title = f"zero-shot accuracy {results['accuracy']:.1%} ({results['n_evaluated']} clips)"
    if info and info.get("dataset"):
        title = f"{info['dataset']}: {title}"
    from speechbrain_slap.plots import plot_confusion_matrix

    plot_confusion_matrix(
        results["confusion_matrix"], labels, output_folder / "confusion_matrix.png", title
    )
    logger.info(
        "zero-shot accuracy %.4f over %d clips; mean over %d folds %.4f",
        results["accuracy"],
        results["n_evaluated"],
        len(results["fold_accuracy"]),
        results["fold_mean_accuracy"],
    )
    return results


# --------------------------------------------------------------------------- the recipes


def zero_shot_recipe(
    hparams: dict, run_opts: dict, manifest: str | Path, dataset: str, label_field: str = "label"
) -> dict:
    """The zero-shot recipes' evaluation: the yaml's model folder on a prepared manifest.

    Arguments
    ---------
    hparams : dict
        The recipe yaml: ``pretrained_model``, ``data_folder``, ``output_folder``,
        ``labels``, ``label_names``, ``templates``, ``batch_seconds``.
    run_opts : dict
        SpeechBrain's run options (``device``).
    manifest : str or Path
        The labelled manifest (``$data_root`` is ``data_folder``).
    dataset : str
        The dataset's name, for the results and the figure.
    label_field : str
        The manifest column holding the class label.

    Returns
    -------
    dict
        What ``evaluate_zero_shot`` returns.
    """
    from speechbrain_slap.model_folder import load_slap

    model = load_slap(hparams["pretrained_model"], run_opts, hparams["batch_seconds"])
    return evaluate_zero_shot(
        model,
        manifest,
        labels=hparams["labels"],
        label_names=hparams["label_names"],
        templates=hparams["templates"],
        output_folder=hparams["output_folder"],
        label_field=label_field,
        replacements={"data_root": hparams["data_folder"]},
        batch_seconds=hparams["batch_seconds"],
        info={"dataset": dataset, "pretrained_model": str(hparams["pretrained_model"])},
    )


def retrieval_recipe(hparams: dict, run_opts: dict, prepared: dict) -> dict:
    """The retrieval recipes' evaluation: the yaml's model folder on each of ``eval_splits``.

    Arguments
    ---------
    hparams : dict
        The recipe yaml: ``pretrained_model``, ``data_folder``, ``output_folder``,
        ``manifest_folder`` (``<split>.csv``), ``eval_splits``, ``batch_clips``,
        ``batch_seconds``.
    run_opts : dict
        SpeechBrain's run options.
    prepared : dict
        The preparation report, kept in ``results.json``.

    Returns
    -------
    dict
        What ``evaluate_splits`` returns.
    """
    from speechbrain_slap.model_folder import load_slap

    model = load_slap(hparams["pretrained_model"], run_opts, hparams["batch_seconds"])
    folder = Path(hparams["manifest_folder"])
    return evaluate_splits(
        model,
        {split: folder / f"{split}.csv" for split in hparams["eval_splits"]},
        data_folder=hparams["data_folder"],
        output_folder=hparams["output_folder"],
        batch_clips=hparams["batch_clips"],
        batch_seconds=hparams["batch_seconds"],
        extra={"pretrained_model": str(hparams["pretrained_model"]), "prepare": prepared},
    )


def captioning_recipe(hparams: dict, run_opts: dict, prepared: dict) -> dict:
    """The captioning recipes' evaluation of their fine-tuned model folder on ``eval_split``.

    As ``retrieval_recipe`` (same arguments), with the yaml's ``eval_split``,
    ``beam_size``, ``compute_metrics`` and ``spice``; returns what
    ``evaluate_captioning`` returns.
    """
    from speechbrain_slap.model_folder import load_slap

    model = load_slap(hparams["pretrained_model"], run_opts, hparams["batch_seconds"])
    split = hparams["eval_split"]
    return evaluate_captioning(
        model,
        Path(hparams["manifest_folder"]) / f"{split}.csv",
        data_folder=hparams["data_folder"],
        output_folder=hparams["output_folder"],
        beam_size=hparams["beam_size"],
        batch_clips=hparams["batch_clips"],
        compute_metrics=hparams["compute_metrics"],
        spice=hparams["spice"],
        extra={
            "pretrained_model": str(hparams["pretrained_model"]),
            "split": split,
            "prepare": prepared,
        },
        batch_seconds=hparams["batch_seconds"],
    )
