"""Zero-shot audio classification of a labelled dataset with a SLAP model (paper Table 2).

Every clip of a manifest is embedded, every class becomes a text embedding
(the mean over a prompt ensemble, ``SLAP.label_embeddings``), and a clip is
assigned the class of highest cosine similarity (paper Sec. 3.3).

The protocol (``DATASETS.md``, "Evaluation protocols"): zero-shot uses *all*
clips of a dataset. Where the dataset has official folds (ESC-50: 5,
UrbanSound8K: 10) the accuracy of each fold and their unweighted mean are
reported, as WavCaps does, beside the accuracy over all clips; datasets
without folds put every clip in one fold, ``"all"``.

A clip whose file cannot be read (missing, undecodable, empty; the
``AudioLoadError`` of ``speechbrain_slap.data.audio``) is skipped: it is left
out of every accuracy, named in the log and listed in ``results.json``.

Manifests are SpeechBrain CSVs with at least ``ID, duration, wav, label,
fold``; the ``*_prepare.py`` scripts of the recipes write them with
``write_manifest``. ``label`` holds the dataset's own class name (or code),
``fold`` the fold name.

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import torch
from tqdm import tqdm

from speechbrain_slap.data.audio import audio_batches
from speechbrain_slap.data.manifest import read_labelled_manifest
from speechbrain_slap.metrics import accuracy

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger(__name__)

# Count annotations in the confusion-matrix cells stay readable up to this many classes.
MAX_ANNOTATED_CLASSES = 16


def embed_clips(
    model, wavs: Sequence[str | Path], batch_seconds: float = 300.0, progress: bool = True
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Audio embeddings of files, encoded in groups of at most ``batch_seconds`` of audio.

    Files are read with ``model.load_audio``; one that raises ``AudioLoadError``
    is skipped with a warning. A file longer than the budget is a group of its own.

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        Anything with ``sample_rate``, ``load_audio(path)`` and
        ``encode_waveforms(clips) -> (B, D)``.
    wavs : sequence of str or Path
        Audio files.
    batch_seconds : float
        Audio seconds per ``encode_waveforms`` call.
    progress : bool
        Show a tqdm progress bar (one step per file).

    Returns
    -------
    embeddings : torch.Tensor
        ``(n_read, D)``, one row per readable file, in input order.
    read : list of int
        Index in ``wavs`` of each embedding row.
    skipped : list of (int, str)
        Index and reason of each unreadable file.

    Example
    -------
    >>> from speechbrain_slap.data.audio import AudioLoadError
    >>> class Model:  # stands in for SLAP: the embedding of a clip is its length
    ...     sample_rate = 10
    ...     def load_audio(self, path):
    ...         if path == "bad.wav":
    ...             raise AudioLoadError(path, "cannot decode audio")
    ...         return torch.zeros(int(path[0]))
    ...     def encode_waveforms(self, clips):
    ...         return torch.tensor([[float(c.numel())] for c in clips])
    >>> emb, read, skipped = embed_clips(Model(), ["3.wav", "bad.wav", "5.wav"], progress=False)
    >>> emb.squeeze(1).tolist(), read, skipped
    ([3.0, 5.0], [0, 2], [(1, 'cannot decode audio')])
    """
    if batch_seconds <= 0:
        raise ValueError(f"batch_seconds must be positive, got {batch_seconds}")
    embeddings, read, skipped = [], [], []

    def skip(index, error):
        logger.warning("skipped %s: %s", wavs[index], error.reason)
        skipped.append((index, error.reason))

    files = tqdm(wavs, desc="embedding clips", unit="clip", disable=not progress)
    budget = batch_seconds * model.sample_rate
    for indices, group in audio_batches(files, model.load_audio, budget, skip):
        embeddings.append(model.encode_waveforms(group).float().cpu())
        read.extend(indices)
    if not embeddings:
        raise ValueError(f"none of the {len(wavs)} audio files could be read")
    return torch.cat(embeddings), read, skipped


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


def plot_confusion_matrix(
    matrix: torch.Tensor | Sequence[Sequence[int]],
    class_names: Sequence[str],
    output_png: str | Path,
    title: str = "",
) -> Path:
    """Heat map of a confusion matrix of counts (row = true class, column = prediction).

    Cells are coloured by the share of the true class's clips, so classes of
    different sizes read alike; up to ``MAX_ANNOTATED_CLASSES`` classes the
    counts are written in the cells.

    Arguments
    ---------
    matrix : torch.Tensor or nested sequence
        ``(C, C)`` counts.
    class_names : sequence of str
        ``C`` names, in class-index order.
    output_png : str or Path
        Where to write the figure.
    title : str
        Figure title.

    Returns
    -------
    Path
        The PNG path.

    Example
    -------
    >>> import tempfile
    >>> png = Path(tempfile.mkdtemp()) / "confusion.png"
    >>> plot_confusion_matrix([[3, 1], [0, 4]], ["dog", "cat"], png).read_bytes()[1:4]
    b'PNG'
    """
    counts = torch.as_tensor(matrix, dtype=torch.int64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"matrix must be ({n}, {n}) for {n} class names, got {counts.shape}")
    shares = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(5.0, 0.28 * n + 3.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(shares.numpy(), interpolation="nearest", cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color=color)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(output_png, dpi=100)
    plt.close(fig)
    return Path(output_png)


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
        CSV with ``ID, wav, fold`` and the label column (see ``read_manifest``).
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
    audio, read, skipped = embed_clips(model, [r["wav"] for r in rows], batch_seconds, progress)
    log_probs = model.scores_from_embeddings(audio, classes.to(audio.device))
    best, predictions = log_probs.max(dim=-1)
    evaluated = [rows[i] for i in read]
    targets = [r["target"] for r in evaluated]

    results = accuracy_report(predictions, targets, [r["fold"] for r in evaluated], labels)
    skipped = [dict(ID=rows[i]["ID"], wav=rows[i]["wav"], reason=why) for i, why in skipped]
    if skipped:
        logger.warning(
            "%d of %d clips skipped (unreadable): %s",
            len(skipped),
            len(rows),
            ", ".join(s["ID"] for s in skipped),
        )
    results.update(
        n_clips=len(rows),
        n_skipped=len(skipped),
        skipped=skipped,
        labels=labels,
        label_names=label_names,
        templates=templates,
        info=dict(info or {}),
    )
    (output_folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    with open(output_folder / "predictions.csv", "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(["ID", "fold", "label", "prediction", "log_prob"])
        for row, pred, score in zip(evaluated, predictions.tolist(), best.tolist(), strict=True):
            label = labels[row["target"]]
            writer.writerow([row["ID"], row["fold"], label, labels[pred], f"{score:.6f}"])

    title = f"zero-shot accuracy {results['accuracy']:.1%} ({results['n_evaluated']} clips)"
    if info and info.get("dataset"):
        title = f"{info['dataset']}: {title}"
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
