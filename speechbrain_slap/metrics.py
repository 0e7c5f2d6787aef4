"""Evaluation metrics: audio-text retrieval and (zero-shot) classification accuracy.

Retrieval follows the WavCaps / LAION-CLAP protocol (``DATASETS.md``,
"Evaluation protocols"): every text queries all audios (``t2a``) and every
captioned audio queries all texts (``a2t``); ``R@k`` is the share of queries
whose best-ranked match has 0-based rank ``< k``; ``mAP@10`` sums ``i / rank_i``
over the matches in the top 10 (``i`` their 1-based order among the query's
matches, ``rank_i`` their 1-based rank) and divides by the number of matches.
With one match per query this is ``1 / (rank + 1)`` when ``rank < 10``, else 0.

Ties are broken against the query, once, in ``_sorted_matches``: the gallery is
sorted by descending score and an item that does not match the query comes
before a matching item with the same score. For a single match this makes its
0-based rank the number of other items scoring ``>=`` it, so a constant
similarity never scores well. Matches of one query tied with each other (an
audio with two identical captions) keep consecutive ranks and do not count
against each other; which of them comes first changes no metric.

Authors
 * speechbrain-slap contributors 2026
"""

import math
from collections.abc import Sequence

import numpy as np
import torch

MAP_CUTOFF = 10

ArrayLike = torch.Tensor | np.ndarray | Sequence


def retrieval_metrics(
    similarity: ArrayLike, text_to_audio: ArrayLike, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Text-to-audio and audio-to-text retrieval metrics from a similarity matrix.

    Audios without a caption stay in the ``t2a`` gallery (they can outrank the
    right audio) but cannot be ``a2t`` queries, since no text matches them;
    ``n_a2t_queries`` says how many audios were queried. Median and mean ranks
    are 1-based and computed on each query's best match; the median is
    ``floor(median of 0-based ranks) + 1``, as in LAION-CLAP and WavCaps.

    Arguments
    ---------
    similarity : torch.Tensor or numpy.ndarray
        ``(n_texts, n_audios)`` scores, higher is more similar; finite.
    text_to_audio : torch.Tensor, numpy.ndarray or sequence of int
        ``(n_texts,)`` index of the audio each text describes. Several texts may
        describe the same audio.
    ks : sequence of int
        Cut-offs of the ``R@k`` entries.

    Returns
    -------
    dict
        ``t2a_R@k`` and ``a2t_R@k`` for each ``k`` in ``ks``, ``t2a_mAP@10``,
        ``a2t_mAP@10``, ``t2a_median_rank``, ``a2t_median_rank``,
        ``t2a_mean_rank``, ``a2t_mean_rank`` (floats) and ``n_texts``,
        ``n_audios``, ``n_a2t_queries`` (ints).

    Example
    -------
    >>> similarity = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.4]])
    >>> metrics = retrieval_metrics(similarity, [0, 0, 1], ks=(1,))
    >>> metrics["t2a_R@1"], metrics["a2t_R@1"], metrics["a2t_mAP@10"]
    (1.0, 1.0, 1.0)
    >>> metrics["t2a_median_rank"], metrics["n_a2t_queries"]
    (1.0, 2)
    """
    scores = _as_scores(similarity, "similarity")
    n_texts, n_audios = scores.shape
    audio_of_text = _as_labels(text_to_audio, "text_to_audio", n_texts, n_audios)
    ks = _as_cutoffs(ks)

    matches = torch.zeros(n_texts, n_audios, dtype=torch.bool)
    matches[torch.arange(n_texts), audio_of_text] = True
    captioned = matches.any(dim=0)

    metrics = _query_metrics(scores, matches, ks, "t2a")
    metrics.update(_query_metrics(scores.T[captioned], matches.T[captioned], ks, "a2t"))
    metrics.update(n_texts=n_texts, n_audios=n_audios, n_a2t_queries=int(captioned.sum()))
    return metrics


def zero_shot_accuracy(similarity: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy of picking the class with the highest similarity.

    A clip counts as correct only when its class scores strictly higher than
    every other class (ties are broken against the clip, as in retrieval).

    Arguments
    ---------
    similarity : torch.Tensor or numpy.ndarray
        ``(n_audios, n_classes)`` audio-to-class-prompt scores; finite.
    labels : torch.Tensor, numpy.ndarray or sequence of int
        ``(n_audios,)`` true class index of each clip.

    Returns
    -------
    float
        Share of clips whose class is ranked first.

    Example
    -------
    >>> similarity = torch.tensor([[0.9, 0.1], [0.2, 0.7], [0.5, 0.5]])
    >>> zero_shot_accuracy(similarity, [0, 0, 1])
    0.3333333333333333
    """
    scores = _as_scores(similarity, "similarity")
    n_audios, n_classes = scores.shape
    labels = _as_labels(labels, "labels", n_audios, n_classes)
    matches = torch.zeros(n_audios, n_classes, dtype=torch.bool)
    matches[torch.arange(n_audios), labels] = True
    return _sorted_matches(scores, matches)[:, 0].double().mean().item()


def accuracy(predictions: ArrayLike, targets: ArrayLike) -> float:
    """Share of predicted class indices equal to the targets.

    Arguments
    ---------
    predictions : torch.Tensor, numpy.ndarray or sequence of int
        Predicted class indices, any non-empty shape.
    targets : torch.Tensor, numpy.ndarray or sequence of int
        True class indices, same shape as ``predictions``.

    Returns
    -------
    float
        Accuracy in [0, 1].

    Example
    -------
    >>> accuracy(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 1, 1, 1]))
    0.75
    """
    predictions = _as_integers(predictions, "predictions")
    targets = _as_integers(targets, "targets")
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} "
            "must have the same shape"
        )
    if predictions.numel() == 0:
        raise ValueError("predictions and targets are empty")
    return (predictions == targets).double().mean().item()


def _sorted_matches(scores: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """Sorts each query's gallery by descending score, ties against the query.

    Arguments
    ---------
    scores : torch.Tensor
        ``(n_queries, n_gallery)`` scores.
    matches : torch.Tensor
        ``(n_queries, n_gallery)`` bool, True where the item matches the query.

    Returns
    -------
    torch.Tensor
        ``matches`` with each row in ranked order: element ``[q, r]`` says
        whether the item at 0-based rank ``r`` of query ``q`` matches it.
    """
    # Put non-matching items first, then a stable descending sort keeps them
    # ahead of matching items with the same score.
    non_matches_first = torch.argsort(matches.to(torch.uint8), dim=1, stable=True)
    by_score = torch.argsort(
        scores.gather(1, non_matches_first), dim=1, descending=True, stable=True
    )
    return matches.gather(1, non_matches_first).gather(1, by_score)


def _query_metrics(
    scores: torch.Tensor, matches: torch.Tensor, ks: list[int], prefix: str
) -> dict[str, float]:
    """R@k, mAP@10 and 1-based median / mean best rank of queries with >= 1 match."""
    ranked = _sorted_matches(scores, matches)
    best_rank = ranked.to(torch.uint8).argmax(dim=1).double()  # first match in each row

    top = ranked[:, :MAP_CUTOFF]
    order_among_matches = top.cumsum(dim=1).double()
    rank_1based = torch.arange(1, top.shape[1] + 1, dtype=torch.float64)
    precision_at_match = torch.where(top, order_among_matches / rank_1based, 0.0)
    average_precision = precision_at_match.sum(dim=1) / matches.sum(dim=1)

    metrics = {f"{prefix}_R@{k}": (best_rank < k).double().mean().item() for k in ks}
    metrics[f"{prefix}_mAP@{MAP_CUTOFF}"] = average_precision.mean().item()
    metrics[f"{prefix}_median_rank"] = math.floor(best_rank.quantile(0.5).item()) + 1.0
    metrics[f"{prefix}_mean_rank"] = best_rank.mean().item() + 1.0
    return metrics


def _as_scores(values: ArrayLike, name: str) -> torch.Tensor:
    """A finite, non-empty 2-D float64 CPU tensor (float64 keeps ties exact)."""
    scores = torch.as_tensor(values).detach().to("cpu")
    if scores.dim() != 2 or scores.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {tuple(scores.shape)}")
    if not (scores.is_floating_point() or _is_integer(scores)):
        raise ValueError(f"{name} must hold real numbers, got dtype {scores.dtype}")
    scores = scores.to(torch.float64)
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return scores


def _as_labels(values: ArrayLike, name: str, length: int, n_classes: int) -> torch.Tensor:
    """A 1-D int64 tensor of ``length`` indices in ``[0, n_classes)``."""
    labels = _as_integers(values, name)
    if labels.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(labels.shape)}")
    out_of_range = (labels < 0) | (labels >= n_classes)
    if out_of_range.any():
        bad = labels[out_of_range][:5].tolist()
        raise ValueError(f"{name} must index [0, {n_classes}), got values {bad}")
    return labels


def _as_integers(values: ArrayLike, name: str) -> torch.Tensor:
    """An int64 CPU tensor; floats and bools are refused rather than cast."""
    tensor = torch.as_tensor(values).detach().to("cpu")
    if tensor.numel() > 0 and not _is_integer(tensor):
        raise ValueError(f"{name} must hold integer indices, got dtype {tensor.dtype}")
    return tensor.to(torch.int64)


def _is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def _as_cutoffs(ks: Sequence[int]) -> list[int]:
    """``ks`` as a non-empty list of positive ints."""
    ks = list(ks)
    if not ks or not all(isinstance(k, int | np.integer) and k > 0 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks}")
    return [int(k) for k in ks]
