"""Evaluation metrics: audio-text retrieval, classification, tagging and captioning.

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

Multi-label tagging (AudioSet) is scored by ``macro_average_precision``, the
PANNs mAP; captioning by ``caption_metrics`` (CIDEr-D, METEOR, SPICE through
pycocoevalcap, the ``eval`` extra).

Authors
 * speechbrain-slap contributors 2026
"""

import math
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

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


def mean_recall_at_1(metrics: dict) -> float:
    """The checkpoint-selection score: the mean of ``t2a_R@1`` and ``a2t_R@1``.

    Arguments
    ---------
    metrics : dict
        ``retrieval_metrics`` output.

    Returns
    -------
    float

    Example
    -------
    >>> mean_recall_at_1({"t2a_R@1": 0.25, "a2t_R@1": 0.5})
    0.375
    """
    return 0.5 * (metrics["t2a_R@1"] + metrics["a2t_R@1"])


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


def macro_average_precision(
    scores: ArrayLike, targets: ArrayLike, return_per_class: bool = False
) -> float | tuple[float, torch.Tensor]:
    """Multi-label tagging mAP: the unweighted mean over classes of per-class AP.

    The average precision of a class is scikit-learn's
    ``average_precision_score``: clips are ranked by descending score, precision
    ``P_t`` and recall ``R_t`` are taken at each distinct score ``t`` (clips
    with the same score enter together) and ``AP = sum_t (R_t - R_{t-1}) P_t``,
    a step-wise sum without interpolation. Put differently, each positive clip
    adds the precision measured after the last clip tied with it, divided by the
    number of positives.

    A class without any positive clip in ``targets`` has no defined AP and is
    left out of the mean, as AudioSet taggers are evaluated (PANNs takes the
    mean of scikit-learn's per-class APs on the AudioSet evaluation set, where
    every class has positives). scikit-learn itself would give such a class an
    AP of 0 (with a warning) and so lower the mean of a small evaluation set.

    Arguments
    ---------
    scores : torch.Tensor or numpy.ndarray
        ``(n_clips, n_classes)`` scores (logits or probabilities), higher means
        more likely; finite.
    targets : torch.Tensor or numpy.ndarray
        ``(n_clips, n_classes)`` 0/1 (or bool) labels, 1 where the class is
        present in the clip.
    return_per_class : bool
        Also return the per-class APs.

    Returns
    -------
    float
        The macro-averaged AP over the classes with at least one positive.
    torch.Tensor
        Only with ``return_per_class``: ``(n_classes,)`` float64 APs, NaN for
        the classes left out; ``per_class.isfinite().sum()`` is the number of
        classes averaged.

    Example
    -------
    >>> scores = torch.tensor([[0.9, 0.2, 0.5], [0.8, 0.6, 0.5], [0.1, 0.7, 0.5]])
    >>> targets = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0]])
    >>> macro_ap, per_class = macro_average_precision(scores, targets, return_per_class=True)
    >>> per_class
    tensor([0.8333, 1.0000,    nan], dtype=torch.float64)
    >>> round(macro_ap, 4)
    0.9167
    """
    scores = _as_scores(scores, "scores")
    targets = _as_binary_targets(targets, tuple(scores.shape))
    n_clips, n_classes = scores.shape
    positives = targets.sum(dim=0)
    evaluated = positives > 0
    if not evaluated.any():
        raise ValueError(
            f"targets has no positive clip in any of its {n_classes} classes; "
            "average precision is undefined"
        )

    order = torch.argsort(scores, dim=0, descending=True)
    ranked_scores = scores.gather(0, order)
    ranked_targets = targets.gather(0, order)
    n_ranked = torch.arange(1, n_clips + 1, dtype=torch.float64).unsqueeze(1)
    precision = ranked_targets.cumsum(dim=0) / n_ranked

    # Tied clips share one threshold: each takes the precision after the last
    # clip of its tie group (the first group end at or below its rank).
    group_end = torch.ones(n_clips, n_classes, dtype=torch.bool)
    group_end[:-1] = ranked_scores[:-1] != ranked_scores[1:]
    rank = torch.arange(n_clips).unsqueeze(1).expand(n_clips, n_classes)
    end_of_group = torch.where(group_end, rank, n_clips - 1)
    end_of_group = end_of_group.flip(0).cummin(dim=0).values.flip(0)
    precision_at_threshold = precision.gather(0, end_of_group)

    per_class = (precision_at_threshold * ranked_targets).sum(dim=0) / positives
    per_class[~evaluated] = float("nan")
    macro_ap = per_class[evaluated].mean().item()
    return (macro_ap, per_class) if return_per_class else macro_ap


def caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], spice: bool = False
) -> dict[str, float]:
    """Corpus-level captioning metrics of pycocoevalcap (the COCO / DCASE protocol).

    All captions are lower-cased and tokenised by pycocoevalcap's
    ``PTBTokenizer`` (Stanford CoreNLP 3.4.1, punctuation removed), then scored:

    * ``CIDEr-D``: pycocoevalcap's ``Cider`` is the CIDEr-D variant of
      Vedantam et al. (2015): tf-idf weighted 1- to 4-gram vectors whose
      candidate counts are clipped at the reference counts, a Gaussian penalty
      ``exp(-d**2 / (2 * 6**2))`` on the length difference ``d`` of candidate
      and reference, cosines averaged over n-gram orders and references, times
      10. The idf comes from the references of the evaluated clips, so the score
      depends on the whole set (a single clip always scores 0).
    * ``METEOR``: METEOR 1.5 (English, normalised), corpus level: the jar pools
      the statistics of all clips, it is not the mean of per-clip scores.
    * ``SPICE`` (only with ``spice=True``): mean of the per-clip SPICE
      F-scores. It needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap
      would download on first use; a clear error says where to put them
      instead. SPICE 1.0 is known to run on Java 8 or 11, not 17 or later, and
      asks for 8 GB of Java heap.

    Java (``java`` on PATH) and pycocoevalcap (``pip install
    speechbrain-slap[eval]``) are needed.

    Arguments
    ---------
    predictions : sequence of str
        One generated caption per clip.
    references : sequence of sequence of str
        The reference captions of each clip (at least one per clip), in the
        order of ``predictions``.
    spice : bool
        Also compute SPICE (slow).

    Returns
    -------
    dict
        ``CIDEr-D`` and ``METEOR`` (and ``SPICE``) as floats, ``n_clips`` (int).

    Example
    -------
    >>> metrics = caption_metrics(  # doctest: +SKIP
    ...     ["a dog barks", "rain falls on a roof"],
    ...     [["a dog is barking", "a dog barks"], ["rain falls on a tin roof"]],
    ... )
    >>> sorted(metrics)  # doctest: +SKIP
    ['CIDEr-D', 'METEOR', 'n_clips']
    """
    _check_captions(predictions, references)
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as error:
        raise ImportError(
            "caption_metrics needs pycocoevalcap: pip install speechbrain-slap[eval]"
        ) from error
    if shutil.which("java") is None:
        raise RuntimeError(
            "caption_metrics needs Java: pycocoevalcap's tokenizer, METEOR and SPICE run "
            "`java`, which is not on PATH; install a Java runtime (e.g. apt-get install "
            "default-jre-headless)"
        )
    if spice:
        _check_spice_jars()

    tokenizer = PTBTokenizer()
    candidates = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    gold = tokenizer.tokenize(
        {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    )
    metrics = {"CIDEr-D": float(Cider().compute_score(gold, candidates)[0])}
    meteor = Meteor()
    metrics["METEOR"] = float(meteor.compute_score(gold, candidates)[0])
    del meteor  # stops its Java process now
    if spice:
        metrics["SPICE"] = _spice_score(gold, candidates)
    metrics["n_clips"] = len(predictions)
    return metrics


def _check_captions(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Fails unless there is one caption and a non-empty list of references per clip."""
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise TypeError(f"predictions must be a list of strings, got {type(predictions).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(
            f"references must be a list of lists of strings, got {type(references).__name__}"
        )
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions ({len(predictions)} clips) and references ({len(references)} clips) "
            "must have one entry per clip"
        )
    if not predictions:
        raise ValueError("predictions and references are empty")
    for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(prediction, str):
            raise TypeError(f"predictions[{i}] must be a string, got {type(prediction).__name__}")
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise TypeError(f"references[{i}] must be a list of strings, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"references[{i}] is empty; every clip needs a reference caption")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise TypeError(f"references[{i}][{j}] must be a string, got {type(ref).__name__}")


def _check_spice_jars() -> None:
    """Fails, saying what to download, unless SPICE's Stanford CoreNLP jars are in place.

    pycocoevalcap's ``Spice()`` downloads them itself when absent; the check
    comes first so that evaluation never starts a download on its own.
    """
    from pycocoevalcap.spice.get_stanford_models import CORENLP, JAR, SPICEDIR, SPICELIB

    lib = Path(SPICEDIR) / SPICELIB
    missing = [lib / f"{JAR}{suffix}.jar" for suffix in ("", "-models")]
    missing = [str(path) for path in missing if not path.is_file()]
    if missing:
        raise RuntimeError(
            f"SPICE needs Stanford CoreNLP ({JAR}), which pycocoevalcap does not ship; missing: "
            f"{', '.join(missing)}. Download https://nlp.stanford.edu/software/{CORENLP}.zip and "
            f"copy {JAR}.jar and {JAR}-models.jar from its {CORENLP}/ folder into {lib}/ "
            "(`python -m pycocoevalcap.spice.get_stanford_models` does both)."
        )


def _spice_score(gold: dict, candidates: dict) -> float:
    """Mean SPICE F-score of tokenised captions, with a hint when SPICE's Java fails."""
    from pycocoevalcap.spice.spice import Spice

    try:
        return float(Spice().compute_score(gold, candidates)[0])
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"SPICE's Java process failed (exit status {error.returncode}, its error is printed "
            "above). SPICE 1.0 is known to fail on Java 17 and later: run it with Java 8 or 11, "
            "and with 8 GB of memory for its -Xmx8G heap."
        ) from error


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


def _as_binary_targets(values: ArrayLike, shape: tuple[int, int]) -> torch.Tensor:
    """``targets`` as a float64 CPU tensor of 0/1 with the shape of the scores."""
    targets = torch.as_tensor(values).detach().to("cpu")
    if tuple(targets.shape) != shape:
        raise ValueError(
            f"targets must have the shape of scores {shape}, got {tuple(targets.shape)}"
        )
    if targets.is_complex():
        raise ValueError(f"targets must hold 0/1 labels, got dtype {targets.dtype}")
    targets = targets.to(torch.float64)
    not_binary = (targets != 0) & (targets != 1)
    if not_binary.any():
        bad = targets[not_binary].unique()[:5].tolist()
        raise ValueError(f"targets must hold 0/1 labels, got values {bad}")
    return targets


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
