"""Audio-text retrieval and captioning on caption manifests: data, evaluation, fine-tuning.

The recipes of AudioCaps, Clotho and WavCaps turn each dataset's official
layout into caption manifests (``speechbrain_slap.data.manifest``). This
module holds what those recipes share beyond the manifests:

* zero-shot or fine-tuned retrieval evaluation of a ``SLAP`` model folder
  (``evaluate_retrieval``): every clip is embedded whole (no cropping; audio
  longer than the model's window is split and pooled as ``SLAP`` documents),
  every caption is a text query, and ``metrics.retrieval_metrics`` scores both
  directions;
* beam-search captioning of every clip, scored against its references
  (``evaluate_captioning``);
* fine-tuning from a model folder: initialisation (``load_pretrained``, every
  module through SpeechBrain's ``Pretrainer`` with strict state-dict loading,
  and the folder's caption tokenizer instead of a newly trained one) and the
  training loop (``fit_and_test``: a ``SLAPBrain`` fitted with validation,
  then tested with its best checkpoint).

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from speechbrain_slap.data.manifest import CaptionedClip, read_clips
from speechbrain_slap.metrics import mean_recall_at_1, retrieval_metrics

logger = logging.getLogger(__name__)


def _batches(clips: Sequence[CaptionedClip], batch_clips: int):
    if batch_clips < 1:
        raise ValueError(f"batch_clips must be >= 1, got {batch_clips}")
    for start in range(0, len(clips), batch_clips):
        yield clips[start : start + batch_clips]


def embed_clips(model, clips: Sequence[CaptionedClip], batch_clips: int = 32) -> torch.Tensor:
    """``(N, D)`` L2-normalised embeddings of whole clips with a ``SLAP`` model.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        The model.
    clips : sequence of CaptionedClip
        Clips to embed (their files are read with ``model.load_audio``).
    batch_clips : int
        Clips read and encoded together (bounds the memory of loaded audio).

    Returns
    -------
    torch.Tensor
    """
    out = [
        model.encode_waveforms([model.load_audio(c.wav) for c in batch])
        for batch in _batches(clips, batch_clips)
    ]
    return torch.cat(out)


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
    model, clips: Sequence[CaptionedClip], batch_clips: int = 32
) -> RetrievalEvaluation:
    """Text-to-audio and audio-to-text retrieval over all captions of the clips.

    Every clip is embedded whole and every one of its captions is a text query
    (5 per clip in AudioCaps and Clotho), the protocol of ``DATASETS.md``.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        The model (zero-shot: a pretrained folder; fine-tuned: the recipe's export).
    clips : sequence of CaptionedClip
        The evaluation split (``read_manifest``).
    batch_clips : int
        Clips read and encoded together.

    Returns
    -------
    RetrievalEvaluation
        Its ``metrics`` hold the scores and the gallery sizes.

    Example
    -------
    >>> model = SLAP.from_hparams(source="slap_model")  # doctest: +SKIP
    >>> clips = read_manifest("manifests/test.csv", "/data/clotho")  # doctest: +SKIP
    >>> evaluate_retrieval(model, clips).metrics["t2a_R@1"]  # doctest: +SKIP
    0.189
    """
    texts = [caption for clip in clips for caption in clip.captions]
    text_to_audio = torch.tensor([i for i, clip in enumerate(clips) for _ in clip.captions])
    return RetrievalEvaluation(
        clip_ids=[clip.id for clip in clips],
        texts=texts,
        text_to_audio=text_to_audio,
        audio=embed_clips(model, clips, batch_clips),
        text=model.encode_text(texts),
    )


def evaluate_splits(
    model,
    manifests: dict,
    data_folder: str | Path,
    output_folder: str | Path,
    batch_clips: int = 32,
    extra: dict | None = None,
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
    batch_clips : int
        Clips read and encoded together.
    extra : dict, optional
        More entries for ``results.json`` (e.g. the model folder and the
        preparation report).

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
        evaluation = evaluate_retrieval(model, read_clips(manifest, data_folder), batch_clips)
        evaluation.save(output_folder, split)
        results[split] = evaluation.metrics
        logger.info("%s retrieval: %s", split, results[split])
    (output_folder / "results.json").write_text(json.dumps(results, indent=2))
    return results


def caption_clips(
    model,
    clips: Sequence[CaptionedClip],
    beam_size: int = 4,
    batch_clips: int = 32,
    max_length: int | None = None,
) -> list[str]:
    """Beam-search captions of whole clips with a ``SLAP`` model's caption decoder.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        A model folder with a caption decoder and tokenizer.
    clips : sequence of CaptionedClip
        Clips to caption.
    beam_size : int
        Beams per clip (1 is greedy).
    batch_clips : int
        Clips read and decoded together.
    max_length : int, optional
        Most caption tokens (default: the decoder's).

    Returns
    -------
    list of str
        One caption per clip, in order.
    """
    captions = []
    for batch in _batches(clips, batch_clips):
        wavs = [model.load_audio(c.wav) for c in batch]
        captions.extend(model.caption_waveforms(wavs, beam_size=beam_size, max_length=max_length))
    return captions


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
    with open(predictions_csv, "w", newline="", encoding="utf-8") as fout:
        writer = csv.writer(fout)
        writer.writerow(["ID", "prediction", *(f"reference_{i + 1}" for i in range(n_refs))])
        for clip, prediction in zip(clips, predictions, strict=True):
            padding = [""] * (n_refs - len(clip.captions))
            writer.writerow([clip.id, prediction, *clip.captions, *padding])
    return Path(predictions_csv)


def evaluate_captioning(
    model,
    manifest: str | Path,
    data_folder: str | Path,
    output_folder: str | Path,
    beam_size: int = 4,
    batch_clips: int = 32,
    compute_metrics: bool = True,
    spice: bool = False,
    extra: dict | None = None,
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
    batch_clips : int
        Clips read and decoded together.
    compute_metrics : bool
        Score the captions (False: write the predictions only).
    spice : bool
        Also compute SPICE (needs Stanford CoreNLP).
    extra : dict, optional
        More entries for ``results.json``.

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
    clips = read_clips(manifest, data_folder)
    predictions = caption_clips(model, clips, beam_size=beam_size, batch_clips=batch_clips)
    write_predictions(output_folder / "predictions.csv", clips, predictions)
    results = {**(extra or {}), "beam_size": beam_size, "n_clips": len(clips)}
    if compute_metrics:
        results.update(caption_metrics(predictions, [c.captions for c in clips], spice=spice))
    (output_folder / "results.json").write_text(json.dumps(results, indent=2))
    logger.info("captioning results: %s", results)
    return results


def load_pretrained(
    pretrainer, model_folder: str | Path, tokenizer_folder: str | Path, vocab_size: int
):
    """Initialises a fine-tuning run from a SLAP model folder.

    1. ``verify_checksums`` on the folder, and every file the ``pretrainer``
       needs must be there (a folder exported without ``ssl_head.ckpt`` and
       ``teacher.ckpt`` cannot continue the SSL loss).
    2. The folder's caption tokenizer is copied to
       ``<tokenizer_folder>/<vocab_size>_unigram.model``, where the recipe's
       tokenizer (SpeechBrain's SentencePiece wrapper) loads it instead of
       training a new one, and where ``export_model`` finds it.
    3. Every loadable of the ``pretrainer`` that is a ``torch.nn.Module`` is
       loaded with ``load_state_dict(strict=True)``: SpeechBrain's default
       transfer only warns about missing or unexpected weights, so a yaml whose
       architecture differs from the folder's (e.g. another depth) would
       otherwise fine-tune partly random layers.

    Arguments
    ---------
    pretrainer : speechbrain.utils.parameter_transfer.Pretrainer
        With ``loadables`` and ``paths`` (``<model_folder>/<name>.ckpt``).
    model_folder : str or Path
        The SLAP model folder.
    tokenizer_folder : str or Path
        The recipe's tokenizer folder.
    vocab_size : int
        The caption decoder's vocabulary size (must be the tokenizer's).

    Returns
    -------
    speechbrain.tokenizers.SentencePiece.SentencePiece
        The tokenizer (its ``.sp`` is the ``SentencePieceProcessor``).

    Example
    -------
    >>> tokenizer = load_pretrained(  # doctest: +SKIP
    ...     hparams["pretrainer"], "slap_model", "save/tokenizer", vocab_size=5000
    ... )
    """
    from speechbrain.tokenizers.SentencePiece import SentencePiece
    from speechbrain.utils.distributed import run_on_main

    from speechbrain_slap.export import ModelFolderError, verify_checksums

    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise ModelFolderError(f"{model_folder}: pretrained_model must be a SLAP model folder")
    verify_checksums(model_folder)
    needed = {name: Path(pretrainer.paths[name]) for name in pretrainer.loadables}
    missing = [str(path) for path in [*needed.values(), model_folder / "tokenizer.ckpt"]]
    missing = [path for path in missing if not Path(path).is_file()]
    if missing:
        raise ModelFolderError(
            f"{model_folder}: missing {missing}; fine-tuning with all three losses needs the "
            "SSL head and the EMA teacher, which `slap export` writes from a pretraining output"
        )

    tokenizer_model = Path(tokenizer_folder) / f"{vocab_size}_unigram.model"
    run_on_main(
        _copy_file, kwargs={"source": model_folder / "tokenizer.ckpt", "target": tokenizer_model}
    )
    tokenizer = SentencePiece(model_dir=str(tokenizer_folder), vocab_size=vocab_size)
    if tokenizer.sp.get_piece_size() != vocab_size:
        raise ModelFolderError(
            f"{model_folder}/tokenizer.ckpt has {tokenizer.sp.get_piece_size()} pieces but the "
            f"yaml's vocab_size is {vocab_size}: set vocab_size to the model's"
        )

    pretrainer.add_custom_hooks(
        {
            name: _strict_loader(model_folder)
            for name, obj in pretrainer.loadables.items()
            if isinstance(obj, torch.nn.Module)
        }
    )
    pretrainer.collect_files()
    pretrainer.load_collected()
    logger.info("initialised %s from %s", sorted(pretrainer.loadables), model_folder)
    return tokenizer


def fit_and_test(brain, hparams: dict, datasets: dict):
    """Trains a ``SLAPBrain`` and tests its best checkpoint: the recipes' training loop.

    The schedules (learning rate, EMA momentum) are set to span the run's
    optimizer steps (per rank under DDP); retrieval on ``datasets["valid"]``
    after each epoch keeps the checkpoint with the best mean R@1, which is then
    evaluated on ``datasets["test"]`` (``test_results.json`` in the output
    folder). Batches are ``speechbrain_slap.data.pipelines.loader_kwargs``'s:
    duration batches from which unreadable clips are dropped and counted.

    Arguments
    ---------
    brain : speechbrain_slap.brain.SLAPBrain
        The Brain, built from ``hparams``.
    hparams : dict
        The loaded recipe yaml (``SLAPBrain``'s keys, ``lr_schedule``,
        ``teacher``, ``epoch_counter``, ``number_of_epochs``,
        ``grad_accumulation_factor`` and ``loader_kwargs``'s keys).
    datasets : dict
        ``train``, ``valid`` and ``test`` datasets
        (``speechbrain_slap.data.pipelines.dataio_prepare``).

    Returns
    -------
    speechbrain_slap.brain.SLAPBrain
        The trained Brain (its ``checkpointer`` holds the best checkpoint).
    """
    from speechbrain_slap.data.pipelines import loader_kwargs

    train_kwargs = loader_kwargs(datasets["train"], hparams, train=True)
    # Under DDP every rank trains on its share of the sampler's batches.
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world_size = torch.distributed.get_world_size() if distributed else 1
    batches_per_epoch = math.ceil(len(train_kwargs["batch_sampler"]) / world_size)
    steps = batches_per_epoch * hparams["number_of_epochs"] // hparams["grad_accumulation_factor"]
    hparams["lr_schedule"].total_steps = max(steps, 1)
    hparams["teacher"].total_steps = max(steps, 1)

    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=train_kwargs,
        valid_loader_kwargs=loader_kwargs(datasets["valid"], hparams, train=False),
    )
    brain.evaluate(
        datasets["test"],
        max_key="mean_R@1",
        test_loader_kwargs=loader_kwargs(datasets["test"], hparams, train=False),
    )
    return brain


def _copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _strict_loader(model_folder: Path):
    """A Pretrainer hook: ``load_state_dict(strict=True)`` naming the folder on mismatch."""

    def load(module: torch.nn.Module, path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise RuntimeError(
                f"{path}: does not fit the module the yaml builds; make the architecture keys "
                f"of the yaml match {model_folder}/hyperparams.yaml.\n{error}"
            ) from error

    return load
