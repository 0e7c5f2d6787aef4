"""Batches by seconds of audio: the one batching rule of training and evaluation.

Packed clips cost what their real tokens cost, so a batch's budget is the sum
of its clips' durations (each counted at most ``max_duration``, the crop),
not ``longest clip x batch size`` as for padded batches: a batch closes when
the next clip would exceed ``batch_seconds``, or when it holds
``max_batch_clips``. The manifest pipeline (``DurationBatchSampler``) and the
shard stream (``speechbrain_slap.data.stream``) both batch this way.

Authors
 * speechbrain-slap contributors 2026
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def pack_by_duration(
    items: Iterable[T], seconds: Callable[[T], float], batch_seconds: float, max_clips: int
) -> Iterator[list[T]]:
    """Groups items, in order, into batches of at most ``batch_seconds`` and ``max_clips``.

    Arguments
    ---------
    items : iterable
        Clips, consumed lazily (a stream works).
    seconds : callable
        A clip's cost in seconds (its duration, capped at the training crop).
    batch_seconds : float
        Budget of a batch; a clip longer than that is a batch of its own.
    max_clips : int
        Most clips in a batch.

    Returns
    -------
    iterator of list
        The batches, in order; every item is in exactly one.

    Example
    -------
    >>> [b for b in pack_by_duration([3.0, 4.0, 2.0, 5.0, 9.0], float, 8.0, 4)]
    [[3.0, 4.0], [2.0, 5.0], [9.0]]
    >>> [len(b) for b in pack_by_duration([1.0] * 5, float, 100.0, 2)]
    [2, 2, 1]
    """
    if not batch_seconds > 0 or max_clips < 1:
        raise ValueError(
            f"need batch_seconds > 0 and max_clips >= 1, got {batch_seconds} and {max_clips}"
        )
    batch, total = [], 0.0
    for item in items:
        cost = seconds(item)
        if batch and total + cost > batch_seconds:
            yield batch
            batch, total = [], 0.0
        batch.append(item)
        total += cost
        if len(batch) >= max_clips:
            yield batch
            batch, total = [], 0.0
    if batch:
        yield batch


class DurationBatchSampler(torch.utils.data.Sampler):
    """A DataLoader ``batch_sampler`` packing clips by their summed duration.

    Training (``shuffle=True``) draws a new random order each epoch (seeded by
    ``seed + epoch``, set with ``set_epoch``) and packs it, so batches mix
    clips of every duration and hold about ``batch_seconds / mean duration``
    clips each. Evaluation (``shuffle=False``) packs the clips sorted by
    duration. The batches of an epoch are fixed once it starts, so a resumed
    epoch (SpeechBrain skips the batches already seen) gets the same ones.

    Arguments
    ---------
    durations : sequence of float
        Seconds of each dataset item, in dataset order.
    batch_seconds : float
        Seconds of audio per batch.
    max_batch_clips : int
        Most clips per batch.
    max_duration : float
        A clip counts at most this much (training crops longer ones).
    shuffle : bool
        Random order per epoch, else ascending duration.
    seed : int
        Seed of the per-epoch order.

    Example
    -------
    >>> sampler = DurationBatchSampler([1.0, 2.0, 3.0, 4.0], batch_seconds=5.0,
    ...                                max_batch_clips=8, max_duration=30.0, shuffle=False)
    >>> list(sampler), len(sampler)
    ([[0, 1], [2], [3]], 3)
    >>> sampler = DurationBatchSampler([1.0] * 6, 3.0, 8, 30.0, shuffle=True, seed=0)
    >>> sorted(i for batch in sampler for i in batch)
    [0, 1, 2, 3, 4, 5]
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_seconds: float,
        max_batch_clips: int,
        max_duration: float,
        shuffle: bool = True,
        seed: int = 0,
    ):
        if len(durations) == 0:
            raise ValueError("no clip to batch")
        self.costs = [min(float(d), max_duration) for d in durations]
        self.batch_seconds = float(batch_seconds)
        self.max_batch_clips = int(max_batch_clips)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._batches = None

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next iteration uses."""
        if epoch != self.epoch:
            self.epoch, self._batches = epoch, None

    def batches(self) -> list[list[int]]:
        """This epoch's batches of dataset indices."""
        if self._batches is None:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + self.epoch)
                order = torch.randperm(len(self.costs), generator=generator).tolist()
            else:
                order = sorted(range(len(self.costs)), key=lambda i: (self.costs[i], i))
            self._batches = list(
                pack_by_duration(
                    order, self.costs.__getitem__, self.batch_seconds, self.max_batch_clips
                )
            )
        return self._batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
