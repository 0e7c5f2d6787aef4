"""Tests for metrics.py: retrieval, accuracy and tagging mAP against independent references."""

import math
import statistics

import numpy as np
import pytest
import torch

from speechbrain_slap.metrics import (
    accuracy,
    macro_average_precision,
    retrieval_metrics,
    zero_shot_accuracy,
)


def reference_ranks(scores, matching):
    """0-based ranks of a query's matching items, best first, ties against the query.

    The i-th best match (0-based) has rank ``i + #{non-matching items scoring >= it}``:
    it sits behind the better matches and behind every non-match that is not lower.
    """
    ranks = []
    matching_scores = sorted((scores[j] for j in matching), reverse=True)
    for i, score in enumerate(matching_scores):
        ahead = sum(1 for j, s in enumerate(scores) if j not in matching and s >= score)
        ranks.append(i + ahead)
    return ranks


def reference_direction(queries, ks, prefix):
    """Metrics of one direction from ``[(scores, matching_indices), ...]`` with loops."""
    best, average_precisions = [], []
    for scores, matching in queries:
        ranks = reference_ranks(scores, set(matching))
        best.append(ranks[0])
        precision = sum((i + 1) / (r + 1) for i, r in enumerate(ranks) if r < 10)
        average_precisions.append(precision / len(matching))
    metrics = {f"{prefix}_R@{k}": sum(r < k for r in best) / len(best) for k in ks}
    metrics[f"{prefix}_mAP@10"] = sum(average_precisions) / len(average_precisions)
    metrics[f"{prefix}_median_rank"] = math.floor(statistics.median(best)) + 1
    metrics[f"{prefix}_mean_rank"] = sum(best) / len(best) + 1
    return metrics


def reference_retrieval(similarity, text_to_audio, ks=(1, 5, 10)):
    """The retrieval protocol spelled out with Python lists and loops."""
    rows = similarity.tolist()
    n_texts, n_audios = len(rows), len(rows[0])
    t2a_queries = [(rows[t], [text_to_audio[t]]) for t in range(n_texts)]
    a2t_queries = []
    for a in range(n_audios):
        captions = [t for t in range(n_texts) if text_to_audio[t] == a]
        if captions:
            a2t_queries.append(([rows[t][a] for t in range(n_texts)], captions))
    metrics = reference_direction(t2a_queries, ks, "t2a")
    metrics.update(reference_direction(a2t_queries, ks, "a2t"))
    metrics.update(n_texts=n_texts, n_audios=n_audios, n_a2t_queries=len(a2t_queries))
    return metrics


def random_captions(gen, n_audios, max_captions=5):
    """``text_to_audio`` with 1..max_captions captions per audio, shuffled."""
    counts = torch.randint(1, max_captions + 1, (n_audios,), generator=gen)
    text_to_audio = torch.repeat_interleave(torch.arange(n_audios), counts)
    return text_to_audio[torch.randperm(len(text_to_audio), generator=gen)]


def assert_metrics_equal(got, expected):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["continuous", "few_levels"])
def test_retrieval_matches_reference(seed, kind):
    """Vectorised metrics equal the loop reference; ``few_levels`` has many ties."""
    gen = torch.Generator().manual_seed(seed)
    n_audios = 8 + 7 * seed
    text_to_audio = random_captions(gen, n_audios)
    shape = (len(text_to_audio), n_audios)
    if kind == "continuous":
        similarity = torch.randn(shape, generator=gen)
        # Make the right audio likelier to be near the top so R@1..R@10 are not all 0.
        similarity[torch.arange(shape[0]), text_to_audio] += 1.5
    else:
        similarity = torch.randint(0, 4, shape, generator=gen).float()
    ks = (1, 2, 5, 10)
    expected = reference_retrieval(similarity, text_to_audio.tolist(), ks)
    assert_metrics_equal(retrieval_metrics(similarity, text_to_audio, ks), expected)


@pytest.mark.parametrize("kind", ["continuous", "few_levels"])
def test_retrieval_five_captions_per_audio_matches_reference(kind):
    """The benchmark layout (5 captions per clip, shuffled), with and without ties."""
    gen = torch.Generator().manual_seed(7)
    n_audios = 30
    text_to_audio = torch.arange(n_audios).repeat_interleave(5)
    text_to_audio = text_to_audio[torch.randperm(len(text_to_audio), generator=gen)]
    shape = (len(text_to_audio), n_audios)
    if kind == "continuous":
        similarity = torch.randn(shape, generator=gen)
        similarity[torch.arange(shape[0]), text_to_audio] += 2.0
    else:
        similarity = torch.randint(0, 3, shape, generator=gen).float()
        similarity[torch.arange(shape[0]), text_to_audio] += 1.0
    expected = reference_retrieval(similarity, text_to_audio.tolist())
    assert expected["t2a_R@1"] not in (0.0, 1.0) and expected["a2t_mAP@10"] not in (0.0, 1.0)
    assert_metrics_equal(retrieval_metrics(similarity, text_to_audio), expected)


def wavcaps_retrieval(similarity):
    """WavCaps' ``a2t`` / ``t2a`` evaluation (5 captions per clip, text-major), transcribed.

    Its ``argsort`` breaks ties arbitrarily, so compare only on tie-free scores.
    """
    n_audios = similarity.shape[1]
    t2a_ranks = np.zeros(5 * n_audios)
    for t in range(5 * n_audios):
        t2a_ranks[t] = np.where(np.argsort(similarity[t])[::-1] == t // 5)[0][0]
    a2t_ranks, a2t_ap = np.zeros(n_audios), np.zeros(n_audios)
    for a in range(n_audios):
        order = np.argsort(similarity[:, a])[::-1]
        positions = np.sort([np.where(order == t)[0][0] for t in range(5 * a, 5 * a + 5)])
        a2t_ranks[a] = positions[0]
        top = positions[positions < 10] + 1
        a2t_ap[a] = np.sum(np.arange(1, len(top) + 1) / top) / 5
    metrics = {}
    for prefix, ranks in (("t2a", t2a_ranks), ("a2t", a2t_ranks)):
        for k in (1, 5, 10):
            metrics[f"{prefix}_R@{k}"] = len(np.where(ranks < k)[0]) / len(ranks)
        metrics[f"{prefix}_median_rank"] = np.floor(np.median(ranks)) + 1
        metrics[f"{prefix}_mean_rank"] = ranks.mean() + 1
    metrics["t2a_mAP@10"] = np.mean(np.where(t2a_ranks < 10, 1 / (t2a_ranks + 1), 0.0))
    metrics["a2t_mAP@10"] = a2t_ap.mean()
    return metrics


@pytest.mark.parametrize("seed", range(3))
def test_retrieval_matches_wavcaps_protocol(seed):
    """On tie-free scores the metrics equal WavCaps' published evaluation code."""
    gen = torch.Generator().manual_seed(seed)
    n_audios = 40
    text_to_audio = torch.arange(n_audios).repeat_interleave(5)
    similarity = torch.randn(5 * n_audios, n_audios, generator=gen, dtype=torch.float64)
    similarity[torch.arange(5 * n_audios), text_to_audio] += 2.0
    got = retrieval_metrics(similarity, text_to_audio)
    for key, value in wavcaps_retrieval(similarity.numpy()).items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_identity_is_perfect():
    """One caption per audio and an identity similarity: every metric is perfect."""
    metrics = retrieval_metrics(torch.eye(12), torch.arange(12))
    for direction in ("t2a", "a2t"):
        for key in ("R@1", "R@5", "R@10", "mAP@10", "median_rank", "mean_rank"):
            assert metrics[f"{direction}_{key}"] == 1.0
    assert (metrics["n_texts"], metrics["n_audios"], metrics["n_a2t_queries"]) == (12, 12, 12)


def test_every_audio_retrieved_first():
    """Five captions per audio, each scoring highest with its audio: R@1 = mAP@10 = 1."""
    gen = torch.Generator().manual_seed(0)
    n_audios = 20
    text_to_audio = torch.arange(n_audios).repeat_interleave(5)
    similarity = 0.5 * torch.rand(len(text_to_audio), n_audios, generator=gen)
    similarity[torch.arange(len(text_to_audio)), text_to_audio] += 1.0
    metrics = retrieval_metrics(similarity, text_to_audio)
    assert metrics["t2a_R@1"] == metrics["a2t_R@1"] == 1.0
    # All 5 captions of an audio take ranks 1..5, so sum(i / rank_i) / 5 = 1.
    assert metrics["t2a_mAP@10"] == metrics["a2t_mAP@10"] == 1.0
    assert metrics["a2t_median_rank"] == metrics["a2t_mean_rank"] == 1.0


def test_constant_similarity_is_pessimistic():
    """All scores tied: every match is ranked behind every non-match, R@1 = 0."""
    n_audios, captions = 4, 3
    text_to_audio = torch.arange(n_audios).repeat_interleave(captions)
    n_texts = len(text_to_audio)
    metrics = retrieval_metrics(torch.zeros(n_texts, n_audios), text_to_audio)
    assert metrics["t2a_R@1"] == 0.0 and metrics["a2t_R@1"] == 0.0
    # t2a: the right audio is last of 4 (1-based rank 4); it is within the top 10.
    assert metrics["t2a_median_rank"] == metrics["t2a_mean_rank"] == n_audios
    assert metrics["t2a_mAP@10"] == pytest.approx(1 / n_audios)
    assert metrics["t2a_R@5"] == 1.0
    # a2t: 9 non-matching texts come first, the 3 captions take 1-based ranks 10, 11, 12.
    assert metrics["a2t_median_rank"] == n_texts - captions + 1
    assert metrics["a2t_mAP@10"] == pytest.approx((1 / 10) / captions)
    assert metrics["a2t_R@10"] == 1.0 and metrics["a2t_R@5"] == 0.0


def test_a2t_map_by_hand():
    """Audio 0's five captions at 1-based ranks 1, 3, 6, 10, 12 (one beyond the top 10)."""
    text_to_audio = torch.arange(3).repeat_interleave(5)  # audio a owns texts 5a..5a+4
    # Texts in the order audio 0 ranks them: its captions 0..4 sit at ranks 1, 3, 6, 10, 12.
    ranking_of_audio_0 = [0, 5, 1, 6, 7, 2, 8, 9, 10, 3, 11, 4, 12, 13, 14]
    similarity = torch.zeros(15, 3)
    for position, text in enumerate(ranking_of_audio_0):
        similarity[text, 0] = 15 - position
    # Audios 1 and 2: their captions tie with each other above all other texts.
    similarity[text_to_audio == 1, 1] = 1.0
    similarity[text_to_audio == 2, 2] = 1.0

    metrics = retrieval_metrics(similarity, text_to_audio)
    ap_audio_0 = (1 / 1 + 2 / 3 + 3 / 6 + 4 / 10) / 5  # the caption at rank 12 adds 0
    assert metrics["a2t_mAP@10"] == pytest.approx((ap_audio_0 + 1.0 + 1.0) / 3, abs=1e-12)
    assert metrics["a2t_R@1"] == 1.0
    assert metrics["a2t_mean_rank"] == 1.0


def test_target_at_rank_11_adds_nothing_to_map():
    """t2a: a match at 1-based rank 10 adds 1/10 to mAP@10, one at rank 11 adds 0."""
    n = 12
    similarity = torch.eye(n)
    similarity[0] = torch.linspace(1.0, 0.0, n).roll(-10)  # audio 0 gets the 11th score
    similarity[1] = torch.linspace(1.0, 0.0, n).roll(-8)  # audio 1 gets the 10th score
    assert (similarity[0] > similarity[0, 0]).sum() == 10
    assert (similarity[1] > similarity[1, 1]).sum() == 9

    metrics = retrieval_metrics(similarity, torch.arange(n))
    assert metrics["t2a_mAP@10"] == pytest.approx((0 + 1 / 10 + (n - 2)) / n, abs=1e-12)
    assert metrics["t2a_R@10"] == pytest.approx((n - 1) / n)
    assert metrics["t2a_mean_rank"] == pytest.approx((11 + 10 + (n - 2)) / n)


def test_tied_captions_of_one_audio_do_not_count_against_it():
    """Two identical top captions of one audio: a2t R@1 = 1 and mAP@10 = 1."""
    similarity = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    metrics = retrieval_metrics(similarity, [0, 0, 1])
    assert metrics["a2t_R@1"] == metrics["a2t_mAP@10"] == 1.0


def test_uncaptioned_audio_stays_in_t2a_gallery():
    """An audio without captions can outrank in t2a but is not an a2t query."""
    similarity = torch.eye(3, 4)
    similarity[0, 3] = 2.0  # text 0 prefers the uncaptioned audio 3
    metrics = retrieval_metrics(similarity, [0, 1, 2])
    assert metrics["n_audios"] == 4 and metrics["n_a2t_queries"] == 3
    assert metrics["t2a_R@1"] == pytest.approx(2 / 3)
    assert metrics["a2t_R@1"] == 1.0


def test_numpy_and_tensor_inputs_agree():
    gen = torch.Generator().manual_seed(3)
    text_to_audio = random_captions(gen, 10)
    similarity = torch.randn(len(text_to_audio), 10, generator=gen)
    from_torch = retrieval_metrics(similarity, text_to_audio)
    from_numpy = retrieval_metrics(similarity.numpy(), text_to_audio.numpy())
    assert from_torch == from_numpy


@pytest.mark.parametrize(
    ("similarity", "text_to_audio", "ks", "message"),
    [
        (torch.zeros(3), [0, 1, 2], (1,), "2-D"),
        (torch.zeros(2, 3, 4), [0, 1], (1,), "2-D"),
        (torch.zeros(0, 3), [], (1,), "non-empty"),
        (torch.tensor([[0.0, float("nan")]]), [0], (1,), "NaN"),
        (torch.zeros(3, 2), [0, 1], (1,), r"shape \(3,\)"),
        (torch.zeros(3, 2), [[0, 1, 1]], (1,), r"shape \(3,\)"),
        (torch.zeros(3, 2), [0, 1, 2], (1,), r"index \[0, 2\)"),
        (torch.zeros(3, 2), [0, -1, 1], (1,), r"index \[0, 2\)"),
        (torch.zeros(3, 2), [0.0, 1.0, 1.0], (1,), "integer"),
        (torch.zeros(3, 2), [0, 1, 1], (0, 5), "positive"),
        (torch.zeros(3, 2), [0, 1, 1], (), "positive"),
    ],
)
def test_retrieval_rejects_bad_inputs(similarity, text_to_audio, ks, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(similarity, text_to_audio, ks)


def test_zero_shot_accuracy_matches_manual_count():
    gen = torch.Generator().manual_seed(1)
    similarity = torch.randn(200, 10, generator=gen)
    labels = torch.randint(0, 10, (200,), generator=gen)
    correct = sum(
        int(all(similarity[i, labels[i]] > similarity[i, c] for c in range(10) if c != labels[i]))
        for i in range(200)
    )
    assert zero_shot_accuracy(similarity, labels) == pytest.approx(correct / 200, abs=1e-12)
    assert zero_shot_accuracy(similarity.numpy(), labels.numpy()) == pytest.approx(correct / 200)


def test_zero_shot_accuracy_ties_count_as_wrong():
    similarity = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    assert zero_shot_accuracy(similarity, [0, 1, 0]) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("similarity", "labels", "message"),
    [
        (torch.zeros(4), [0, 1, 0, 1], "2-D"),
        (torch.zeros(4, 2), [0, 1, 0], r"shape \(4,\)"),
        (torch.zeros(4, 2), [0, 1, 0, 2], r"index \[0, 2\)"),
        (torch.zeros(4, 2), np.array([0.0, 1.0, 0.0, 1.0]), "integer"),
    ],
)
def test_zero_shot_accuracy_rejects_bad_inputs(similarity, labels, message):
    with pytest.raises(ValueError, match=message):
        zero_shot_accuracy(similarity, labels)


def test_accuracy():
    predictions = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    targets = np.array([3, 1, 4, 0, 5, 0, 2, 0])
    assert accuracy(predictions, targets) == pytest.approx(5 / 8)
    assert accuracy(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 0], [3, 4]])) == 0.75
    with pytest.raises(ValueError, match="same shape"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="integer"):
        accuracy(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))


def sklearn_per_class_ap(scores, targets):
    """scikit-learn's average precision of every class (the reference)."""
    from sklearn.metrics import average_precision_score

    return np.array(
        [average_precision_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1])]
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [None, 1])
def test_macro_ap_matches_sklearn(seed, decimals):
    """Per-class AP equals scikit-learn's; ``decimals=1`` makes many tied scores."""
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(seed)
    n_clips, n_classes = 60 + 20 * seed, 9
    targets = (rng.random((n_clips, n_classes)) < 0.3).astype(np.int64)
    targets[:, 0] = 0  # a class without positives is left out
    targets[rng.integers(n_clips), 0 if seed % 2 else 1] = 1
    targets[:, -1] = 1  # every clip positive: AP is 1 at any ranking
    scores = rng.random((n_clips, n_classes)) + 0.3 * targets
    if decimals is not None:
        scores = scores.round(decimals)
    evaluated = targets.sum(axis=0) > 0

    macro_ap, per_class = macro_average_precision(scores, targets, return_per_class=True)
    expected = sklearn_per_class_ap(scores[:, evaluated], targets[:, evaluated])
    np.testing.assert_allclose(per_class.numpy()[evaluated], expected, rtol=0, atol=1e-12)
    assert np.isnan(per_class.numpy()[~evaluated]).all()
    assert macro_ap == pytest.approx(expected.mean(), abs=1e-12)
    assert per_class[-1] == 1.0
    # The float form equals the tuple's, and torch / bool inputs give the same.
    assert macro_average_precision(scores, targets) == macro_ap
    assert macro_average_precision(torch.from_numpy(scores), torch.from_numpy(targets == 1)) == (
        pytest.approx(macro_ap, abs=1e-12)
    )


def test_macro_ap_perfect_ranking_is_one():
    """Every positive above every negative in each class: AP = 1."""
    targets = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
    scores = torch.tensor([[0.9, -1.0], [0.8, 3.0], [0.1, 2.0], [0.0, 1.0]])
    assert macro_average_precision(scores, targets) == 1.0


def test_macro_ap_by_hand():
    """Class 0: positives at ranks 1 and 3 of 4; class 1: a positive tied with a negative.

    Class 0: AP = (1/1 + 2/3) / 2 = 5/6. Class 1 ranks clip 3 first, then clips 0 and 1
    tied (one positive, one negative): the positive enters with both, precision 2/3,
    so AP = (1/1 + 2/3) / 2 = 5/6 as well. Class 2 has no positive and is left out.
    """
    scores = torch.tensor(
        [[0.9, 0.5, 0.1], [0.8, 0.5, 0.2], [0.7, 0.1, 0.3], [0.2, 0.9, 0.4]], dtype=torch.float64
    )
    targets = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    macro_ap, per_class = macro_average_precision(scores, targets, return_per_class=True)
    assert per_class[:2].tolist() == pytest.approx([5 / 6, 5 / 6], abs=1e-12)
    assert torch.isnan(per_class[2])
    assert macro_ap == pytest.approx(5 / 6, abs=1e-12)


def test_macro_ap_constant_scores_equal_prevalence():
    """All scores tied: one threshold, AP = share of positives (sklearn's convention)."""
    targets = torch.tensor([[1], [0], [0], [1], [0]])
    assert macro_average_precision(torch.zeros(5, 1), targets) == pytest.approx(2 / 5)


@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        (torch.zeros(4), torch.zeros(4), "2-D"),
        (torch.zeros(4, 2), torch.zeros(4, 3), r"shape of scores \(4, 2\)"),
        (torch.zeros(4, 2), torch.zeros(2, 4), r"shape of scores \(4, 2\)"),
        (torch.zeros(2, 2), torch.tensor([[1, 2], [0, 1]]), r"0/1 labels, got values \[2.0\]"),
        (torch.zeros(2, 2), torch.tensor([[0.5, 1.0], [0.0, 1.0]]), "0/1 labels"),
        (torch.zeros(2, 2), torch.tensor([[-1, 1], [0, 1]]), "0/1 labels"),
        (torch.tensor([[0.0, float("inf")], [0.0, 1.0]]), torch.eye(2), "NaN or infinite"),
        (torch.tensor([[0.0, float("nan")], [0.0, 1.0]]), torch.eye(2), "NaN or infinite"),
        (torch.zeros(3, 2), torch.zeros(3, 2), "no positive clip in any of its 2 classes"),
    ],
)
def test_macro_ap_rejects_bad_inputs(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        macro_average_precision(scores, targets)
