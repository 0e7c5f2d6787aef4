"""Streaming training input over WebDataset shards (written by ``data/shards.py``).

``ShardStream`` is a torch ``IterableDataset`` that yields ready batches
(SpeechBrain ``PaddedBatch`` with the keys of the recipe's manifest pipeline:
``id, sig, captions, caption, tokens_in, tokens_out``), so ``SLAPBrain`` trains
on it unchanged. ``StreamLoader`` is the ``DataLoader`` to give ``Brain.fit``:
it tells the stream which epoch it is in and checkpoints its position.

How an epoch is read, on rank ``r`` of ``R`` with ``W`` loader workers:

1. The shards are permuted with the seed ``(seed, epoch)`` (the same on every
   rank); rank ``r`` takes every ``R``-th shard from position ``r`` and its
   worker ``w`` every ``W``-th of those. The split is disjoint and covers every
   shard, and needs at least ``R x W`` shards.
2. Each worker reads its shards sequentially (JSON before audio), through a
   shuffle buffer of ``shuffle_buffer`` samples (still FLAC-compressed). When
   its shards run out it empties the buffer and reads them again in a new
   order, so it never stops short, and no clip comes twice before every clip
   of its shards has come once (so a batch holds a clip twice only if a
   worker's shards hold fewer clips than a batch).
3. Samples are packed greedily into batches by a duration budget: the clips'
   seconds (each capped at ``max_duration``) sum to at most
   ``batch_seconds``, with at most ``max_batch_clips`` clips. Only then is the
   audio decoded, mixed to mono, resampled if needed and, in training,
   cropped to ``max_duration`` at a random offset (and a random caption of
   the clip chosen), as the manifest pipeline does.
4. Every rank yields exactly ``batches_per_epoch`` batches per epoch (DDP
   needs the same number of steps on every rank; ``Brain.fit`` gets a
   length). By default this is one pass over the data estimated from the
   shards' ``shards.json``: ``ceil(max(seconds / batch_seconds, clips /
   max_batch_clips) / R)``, each clip's seconds capped at ``max_duration``
   as packing counts them (``capped_seconds``). An epoch thus sees about every clip once;
   greedy packing leaves the last few of each worker for a later epoch.

Randomness is seeded by ``(seed, epoch, rank, worker)`` and, for crops and
caption choice, by the batch's number, never by the global RNGs: the stream of
an epoch is a function of these numbers.

Unreadable samples (a sample missing its JSON or FLAC, bad JSON, no caption,
a FLAC that does not decode, an unreadable or truncated shard) are skipped;
each is named in the log (warning) as it is met and counted in the per-epoch
summary that ``StreamLoader`` logs. A batch whose clips all fail is replaced
by the next one.

Resuming (``StreamLoader`` is a checkpoint recoverable). A checkpoint stores
the epoch and the number of batches this rank has handed out. At the end of an
epoch the next epoch starts fresh; after an intra-epoch checkpoint the
interrupted epoch restarts with its own seed and the batches already trained
on are skipped without decoding their audio (their metadata is still read,
which is cheap), so the resumed run trains on exactly the batches the
uninterrupted run would have (one-batch shift only if a batch whose clips were
all unreadable was among the skipped ones).

Authors
 * speechbrain-slap contributors 2026
"""

import glob
import itertools
import json
import logging
import math
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from speechbrain_slap.data import batching
from speechbrain_slap.data.audio import decode_audio
from speechbrain_slap.data.manifest import CAPTION_SEPARATOR
from speechbrain_slap.data.shards import INDEX_NAME
from speechbrain_slap.lobes.caption_decoder import check_decoder_captions, clip_caption_ids

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shard lists


def expand_shards(spec: str | os.PathLike | Sequence) -> list[str]:
    """Sorted shard paths from a folder, a glob, a brace pattern or a list of those.

    Arguments
    ---------
    spec : str, path or sequence
        ``/data/shards`` (its ``*.tar``), ``/data/shards/shard-*.tar`` or
        ``/data/shards/shard-{000000..000099}.tar``, or a list of these.

    Returns
    -------
    list of str
        Unique paths, sorted (every rank sees the same list).

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> for i in range(3):
    ...     _ = (folder / f"shard-{i:06d}.tar").write_bytes(b"")
    >>> [os.path.basename(p) for p in expand_shards(str(folder / "shard-{000001..000002}.tar"))]
    ['shard-000001.tar', 'shard-000002.tar']
    >>> len(expand_shards(folder)), len(expand_shards(str(folder / "*.tar")))
    (3, 3)
    """
    from braceexpand import braceexpand

    if isinstance(spec, (list, tuple)):
        return sorted({path for item in spec for path in expand_shards(item)})
    paths = set()
    for pattern in braceexpand(str(spec)):
        if os.path.isdir(pattern):
            paths.update(glob.glob(os.path.join(pattern, "*.tar")))
        elif glob.has_magic(pattern):
            paths.update(glob.glob(pattern))
        elif os.path.isfile(pattern):
            paths.add(pattern)
        else:
            raise FileNotFoundError(f"shard not found: {pattern} (from {spec!r})")
    if not paths:
        raise FileNotFoundError(f"no shard (*.tar) matches {spec!r}")
    return sorted(paths)


def read_index(shards: Sequence[str]) -> list[dict] | None:
    """The ``shards.json`` entries of ``shards``, or ``None`` if one is not indexed.

    Example
    -------
    >>> read_index([str(getfixture("tmp_path") / "shard-000000.tar")]) is None
    True
    """
    by_folder = {}
    entries = []
    for path in shards:
        folder, name = os.path.split(path)
        if folder not in by_folder:
            index_path = os.path.join(folder, INDEX_NAME)
            if not os.path.isfile(index_path):
                return None
            with open(index_path, encoding="utf-8") as fin:
                index = json.load(fin)
            by_folder[folder] = {entry["name"]: entry for entry in index.get("shards", [])}
        if name not in by_folder[folder]:
            return None
        entries.append(by_folder[folder][name])
    return entries


def capped_seconds(entry: dict, max_duration: float) -> float:
    """Seconds of a ``shards.json`` shard entry with each clip capped at ``max_duration``.

    Exact for a whole number of seconds, from the entry's ``duration_bins``;
    within a fractional cap's bin each clip is counted as its bin's mean
    capped. An entry without ``duration_bins`` (an index written before
    them) gives its uncapped ``seconds``: an over-estimate when clips are
    longer than ``max_duration``.

    Arguments
    ---------
    entry : dict
        ``{"seconds", "duration_bins": {str(second): [clips, seconds]}}``.
    max_duration : float
        Seconds a clip counts at most.

    Returns
    -------
    float

    Example
    -------
    >>> entry = {"seconds": 42.0, "duration_bins": {"2": [1, 2.0], "20": [2, 40.0]}}
    >>> capped_seconds(entry, 10.0), capped_seconds({"seconds": 42.0}, 10.0)
    (22.0, 42.0)
    """
    bins = entry.get("duration_bins")
    if bins is None:
        return float(entry["seconds"])
    total = 0.0
    for second, (clips, seconds) in bins.items():
        if int(second) + 1 <= max_duration:  # every clip of the bin is shorter than the cap
            total += float(seconds)
        else:
            total += min(float(seconds), clips * max_duration)
    return total


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: torch.distributed, else torchrun's env, else 0, 1.

    Example
    -------
    >>> distributed_rank()
    (0, 1)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def worker_share(total: int, worker: int, num_workers: int) -> int:
    """How many of batches ``0 .. total-1`` worker ``worker`` makes.

    The DataLoader takes batch ``i`` from worker ``i % num_workers``.

    Example
    -------
    >>> [worker_share(5, w, 2) for w in range(2)]
    [3, 2]
    """
    return total // num_workers + (1 if worker < total % num_workers else 0)


# --------------------------------------------------------------------------- reading


@dataclass
class StreamSample:
    """One sample read from a shard, audio still FLAC-encoded.

    Arguments
    ---------
    name : str
        ``<shard file name>/<key>``, for messages.
    meta : dict
        The sample's JSON (``captions``, ``duration``, ``source_id``, ...).
    flac : bytes
        The encoded audio.
    """

    name: str
    meta: dict
    flac: bytes

    def cost(self, max_duration: float) -> float:
        """Seconds this clip takes from a batch's budget (cropped at ``max_duration``)."""
        return min(float(self.meta["duration"]), max_duration)


SkipCallback = Callable[[str, str], None]


def _finish_sample(shard: str, key: str, members: dict, on_skip: SkipCallback):
    name = f"{os.path.basename(shard)}/{key}"
    if "json" not in members or "flac" not in members:
        on_skip(name, f"incomplete sample (members: {', '.join(sorted(members)) or 'none'})")
        return None
    try:
        meta = json.loads(members["json"])
        captions = meta["captions"]
        if not isinstance(captions, list) or not captions or not all(captions):
            raise ValueError(f"captions must be a non-empty list, got {captions!r}")
        if not float(meta["duration"]) > 0:
            raise ValueError(f"duration must be positive, got {meta['duration']!r}")
    except (ValueError, KeyError, TypeError) as err:
        on_skip(name, f"bad JSON: {type(err).__name__}: {err}")
        return None
    return StreamSample(name, meta, members["flac"])


def read_shard(path: str, on_skip: SkipCallback) -> Iterator[StreamSample]:
    """Samples of one shard in tar order, members grouped by key (WebDataset's tar iterators).

    Only WebDataset's member iteration and grouping are used, not its
    ``WebDataset`` pipeline: exact intra-epoch resume needs the order of
    shards, the shuffle buffer and the packing to be a function of ``(seed,
    epoch, rank, worker)`` that ``ShardStream`` replays batch for batch, and
    every unusable sample to be named and counted (``on_skip``) rather than
    dropped by an exception handler.

    Arguments
    ---------
    path : str
        The ``.tar`` file (read sequentially, as from a network file system).
    on_skip : callable
        ``on_skip(name, reason)`` for each unusable sample or unreadable shard.

    Example
    -------
    >>> import soundfile
    >>> from speechbrain_slap.data.shards import write_shard
    >>> folder = getfixture("tmp_path")
    >>> soundfile.write(folder / "a.wav", np.zeros(1600, dtype="int16"), 16000)
    >>> row = {"ID": "a", "duration": 0.1, "wav": str(folder / "a.wav"), "captions": "Silence."}
    >>> _ = write_shard(folder / "s.tar", [(0, row)], 16000)
    >>> [(s.name, s.meta["source_id"]) for s in read_shard(str(folder / "s.tar"), print)]
    [('s.tar/000000000', 'a')]
    """
    count = 0
    try:
        with open(path, "rb") as stream:
            files = ({**f, "__url__": path} for f in tar_file_iterator(stream))
            for members in group_by_keys(files):
                key = os.path.basename(members.pop("__key__"))
                members.pop("__url__")
                sample = _finish_sample(path, key, members, on_skip)
                if sample is not None:
                    count += 1
                    yield sample
    # ValueError: group_by_keys met a member name twice in one sample.
    except (OSError, EOFError, tarfile.TarError, ValueError) as err:
        on_skip(os.path.basename(path), f"unreadable shard after {count} samples: {err}")


def shuffle_buffer(samples: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Shuffles a (possibly endless) stream through a buffer of ``size`` items.

    Once the buffer is full, each new item replaces a uniformly drawn one,
    which is yielded. At the end of a finite stream the rest is yielded in
    random order.

    Example
    -------
    >>> out = list(shuffle_buffer(range(10), 4, np.random.default_rng(0)))
    >>> sorted(out) == list(range(10)), out != list(range(10))
    (True, True)
    """
    buffer = []
    for item in samples:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = int(rng.integers(size))
        buffer[index], item = item, buffer[index]
        yield item
    for index in rng.permutation(len(buffer)).tolist():
        yield buffer[index]


def pack_by_duration(
    samples: Iterable[StreamSample], batch_seconds: float, max_clips: int, max_duration: float
) -> Iterator[list[StreamSample]]:
    """Groups samples in order into batches of at most ``batch_seconds`` and ``max_clips``.

    The rule of ``speechbrain_slap.data.batching.pack_by_duration``; a clip
    counts ``min(duration, max_duration)`` seconds (training crops the rest).

    Example
    -------
    >>> clips = [StreamSample(str(d), {"duration": d}, b"") for d in (3.0, 4.0, 2.0, 5.0, 9.0)]
    >>> [[s.name for s in b] for b in pack_by_duration(clips, 8.0, 4, max_duration=6.0)]
    [['3.0', '4.0'], ['2.0', '5.0'], ['9.0']]
    >>> [len(b) for b in pack_by_duration(clips, 100.0, 2, max_duration=6.0)]
    [2, 2, 1]
    """
    return batching.pack_by_duration(
        samples, lambda sample: sample.cost(max_duration), batch_seconds, max_clips
    )


# --------------------------------------------------------------------------- the stream


class ShardStream(IterableDataset):
    """Batches of training clips streamed from WebDataset shards.

    See the module docstring for the split, the packing and what an epoch is.

    Arguments
    ---------
    shards : str, path or sequence
        Shards: a folder, glob, brace pattern or list (``expand_shards``).
    batch_seconds : float
        Duration budget of a batch, in seconds (>= ``max_duration``).
    max_batch_clips : int
        Most clips in a batch.
    max_duration : float
        Longer clips are cropped to this many seconds.
    tokenizer : sentencepiece.SentencePieceProcessor, optional
        Caption tokenizer; with it batches carry ``tokens_in``/``tokens_out``.
    max_caption_tokens : int
        The caption decoder's ``max_length`` (BOS/EOS included).
    decoder_captions : int
        With ``train`` and K > 1, ``tokens_in``/``tokens_out`` are
        ``(K, max_caption_tokens)`` blocks: the clip's CLAP caption and up to
        ``K - 1`` others, for the decoder (``clip_caption_ids``).
    sample_rate : int
        Output sample rate (audio at another rate is resampled).
    batches_per_epoch : int, optional
        Batches per epoch on each rank; ``None``: one pass, estimated from
        ``shards.json``.
    shuffle_buffer : int
        Samples in each worker's shuffle buffer (1: no shuffling).
    seed : int
        Seed of the shard split, the shuffling, the crops and captions.
    train : bool
        Shuffle, crop at random offsets and pick random captions; with
        ``False``: shard order, crop at 0, first caption.
    rank, world_size : int, optional
        This process's place; by default from ``torch.distributed`` or torchrun.

    Example
    -------
    >>> from speechbrain_slap.data.synthetic import generate_corpus
    >>> from speechbrain_slap.data.shards import write_shards
    >>> folder = getfixture("tmp_path")
    >>> manifests = generate_corpus(folder, n_train=4, n_valid=0, n_test=0, max_duration=4.0,
    ...                             progress=False)
    >>> _ = write_shards(manifests["train"], folder / "shards", max_shard_samples=2,
    ...                  data_root=folder, progress=False)
    >>> stream = ShardStream(folder / "shards", batch_seconds=8.0, max_batch_clips=2,
    ...                      max_duration=4.0, batches_per_epoch=3)
    >>> batches = list(stream)
    >>> len(batches), batches[0].sig.data.ndim, len(batches[0].caption) <= 2
    (3, 2, True)
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence,
        batch_seconds: float,
        max_batch_clips: int,
        max_duration: float = 30.0,
        tokenizer=None,
        max_caption_tokens: int = 64,
        decoder_captions: int = 1,
        sample_rate: int = 16000,
        batches_per_epoch: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        train: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.shards = expand_shards(shards)
        if not batch_seconds >= max_duration > 0:
            raise ValueError(
                f"need batch_seconds >= max_duration > 0 (a cropped clip must fit a batch), got "
                f"batch_seconds={batch_seconds}, max_duration={max_duration}"
            )
        if max_batch_clips < 1:
            raise ValueError(f"max_batch_clips must be >= 1, got {max_batch_clips}")
        default_rank, default_world = distributed_rank()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if len(self.shards) < self.world_size:
            raise ValueError(
                f"{len(self.shards)} shards for {self.world_size} ranks: every rank needs at "
                "least one shard (and each DataLoader worker one); write smaller shards"
            )
        self.batch_seconds = float(batch_seconds)
        self.max_batch_clips = int(max_batch_clips)
        self.max_duration = float(max_duration)
        self.tokenizer = tokenizer
        self.max_caption_tokens = max_caption_tokens
        self.decoder_captions = check_decoder_captions(decoder_captions)
        self.sample_rate = sample_rate
        self.shuffle_buffer = max(int(shuffle_buffer), 1)
        self.seed = int(seed)
        self.train = train
        if batches_per_epoch is None:
            batches_per_epoch = self.estimate_batches_per_epoch()
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.batches_per_epoch = int(batches_per_epoch)
        self.epoch = 1
        self.skip_batches = 0

    def estimate_batches_per_epoch(self) -> int:
        """Batches per rank for one pass over the shards, from their ``shards.json``.

        Each clip counts at most ``max_duration`` seconds, as packing charges
        it (``capped_seconds``).
        """
        entries = read_index(self.shards)
        if entries is None:
            raise ValueError(
                f"the shards ({self.shards[0]}, ...) have no {INDEX_NAME} listing them all: "
                "give batches_per_epoch"
            )
        seconds = sum(capped_seconds(e, self.max_duration) for e in entries)
        clips = sum(int(e["samples"]) for e in entries)
        batches = max(seconds / self.batch_seconds, clips / self.max_batch_clips)
        return max(1, math.ceil(batches / self.world_size))

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_position(self, epoch: int, skip_batches: int = 0):
        """Selects the epoch the next iteration reads and how many of its batches to skip.

        Must be called before the DataLoader starts its workers (they copy it).
        """
        if not 0 <= skip_batches <= self.batches_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.batches_per_epoch}]")
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)

    def set_epoch(self, epoch: int):
        """Starts ``epoch`` from its beginning (SpeechBrain's sampler hook)."""
        self.set_position(epoch, 0)

    def worker_shards(self, epoch: int, worker: int = 0, num_workers: int = 1) -> list[str]:
        """The shards that worker ``worker`` of this rank reads in ``epoch``.

        Example
        -------
        >>> folder = getfixture("tmp_path")
        >>> for i in range(4):
        ...     _ = (folder / f"shard-{i:06d}.tar").write_bytes(b"")
        >>> streams = [ShardStream(folder, 30.0, 8, batches_per_epoch=1, rank=r, world_size=2)
        ...            for r in range(2)]
        >>> split = [s.worker_shards(1, w, 2) for s in streams for w in range(2)]
        >>> sorted(p for shards in split for p in shards) == streams[0].shards
        True
        """
        order = np.arange(len(self.shards))
        if self.train:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        rank_shards = [self.shards[i] for i in order[self.rank :: self.world_size]]
        if len(rank_shards) < num_workers:
            raise ValueError(
                f"rank {self.rank} has {len(rank_shards)} shards for {num_workers} DataLoader "
                f"workers: need at least world_size x num_workers = "
                f"{self.world_size * num_workers} shards, have {len(self.shards)}"
            )
        return rank_shards[worker::num_workers]

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, self.rank, *stream])

    def _samples(self, shards, worker, on_skip) -> Iterator[StreamSample]:
        """Endless: passes over this worker's shards, each in a new order and shuffled.

        The shuffle buffer is emptied at the end of each pass, so a pass yields
        every readable clip once before the next pass repeats any.
        """
        for repeat in itertools.count():
            order = shards
            if repeat > 0 and self.train:
                order = [shards[i] for i in self._rng(worker, 1, repeat).permutation(len(shards))]
            samples = (sample for path in order for sample in read_shard(path, on_skip))
            if self.train and self.shuffle_buffer > 1:
                samples = shuffle_buffer(samples, self.shuffle_buffer, self._rng(worker, 0, repeat))
            count = 0
            for sample in samples:
                count += 1
                yield sample
            if count == 0:
                raise RuntimeError(
                    f"rank {self.rank}, worker {worker}: no readable sample in {shards}"
                )

    def decode(self, sample: StreamSample, rng: np.random.Generator) -> dict:
        """One example dict (``id, sig, captions, caption`` + tokens) from a sample."""
        sig = decode_audio(sample.flac, f"{sample.name}.flac", self.sample_rate)
        max_samples = int(self.max_duration * self.sample_rate)
        if sig.numel() > max_samples:
            start = int(rng.integers(sig.numel() - max_samples + 1)) if self.train else 0
            sig = sig[start : start + max_samples]
        captions = [str(c) for c in sample.meta["captions"]]
        caption = captions[int(rng.integers(len(captions)))] if self.train else captions[0]
        example = {
            "id": str(sample.meta.get("source_id", sample.name)),
            "sig": sig,
            "captions": CAPTION_SEPARATOR.join(captions),
            "caption": caption,
        }
        if self.tokenizer is not None:
            decoded, rows = [caption], self.decoder_captions if self.train else 1
            if rows > 1:  # and others, at random, for the decoder
                others = [other for other in captions if other != caption]
                decoded += [others[index] for index in rng.permutation(len(others))[: rows - 1]]
            example["tokens_in"], example["tokens_out"] = clip_caption_ids(
                self.tokenizer, decoded, self.max_caption_tokens, rows=rows
            )
        return example

    def __iter__(self) -> Iterator[PaddedBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # Batch i of the epoch is made by worker i % num_workers. The DataLoader takes
        # its first batch from its worker 0, so after skipping k batches that worker
        # plays the role of worker k % num_workers (and so on round the ring).
        worker = (worker + self.skip_batches) % num_workers
        quota = worker_share(self.batches_per_epoch, worker, num_workers)
        skip = worker_share(self.skip_batches, worker, num_workers)
        if skip >= quota:  # nothing left of this epoch for this worker
            return
        shards = self.worker_shards(self.epoch, worker, num_workers)
        skipped = []

        def on_skip(name, reason):
            skipped.append((name, reason))

        groups = pack_by_duration(
            self._samples(shards, worker, on_skip),
            self.batch_seconds,
            self.max_batch_clips,
            self.max_duration,
        )
        position = 0  # batches of this worker's epoch handed out (or skipped on resume)
        for number, group in enumerate(groups):
            if position < skip:  # already trained on before the checkpoint
                position += 1
                continue
            rng = self._rng(worker, 2, number)
            examples = []
            for sample in group:
                try:
                    examples.append(self.decode(sample, rng))
                except Exception as err:  # an undecodable clip is skipped, not fatal
                    on_skip(sample.name, f"{type(err).__name__}: {err}")
            if not examples:
                continue  # every clip unreadable: the next group takes this batch's place
            batch = PaddedBatch(examples)
            batch.skipped = list(skipped)
            skipped.clear()
            yield batch
            position += 1
            if position >= quota:
                return


@register_checkpoint_hooks
class StreamLoader(DataLoader):
    """The ``DataLoader`` of a ``ShardStream``, for ``Brain.fit``; a checkpoint recoverable.

    Each iteration is one epoch: the next one, or after recovering an
    intra-epoch checkpoint the interrupted one minus the batches already
    handed out. Logs every skipped sample and a per-epoch summary. Add it to
    the checkpointer (``checkpointer.add_recoverable("train_stream", loader)``)
    before ``fit`` recovers.

    Arguments
    ---------
    stream : ShardStream
        The dataset.
    num_workers : int
        DataLoader worker processes (each reads its own shards).
    **loader_kwargs
        Other ``DataLoader`` arguments (e.g. ``pin_memory``); no
        ``persistent_workers`` (the workers must see each epoch's position).

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> from speechbrain_slap.data.shards import write_shards
    >>> import soundfile
    >>> soundfile.write(folder / "quiet.wav", np.zeros(16000, dtype="int16"), 16000)
    >>> rows = "".join(f"c{i},1.0,{folder}/quiet.wav,Silence.\\n" for i in range(4))
    >>> _ = (folder / "m.csv").write_text("ID,duration,wav,captions\\n" + rows)
    >>> _ = write_shards(folder / "m.csv", folder / "shards", max_shard_samples=2, progress=False)
    >>> loader = StreamLoader(ShardStream(folder / "shards", 8.0, 2, max_duration=4.0,
    ...                                   batches_per_epoch=2))
    >>> len(loader), len(list(loader)), loader.epoch, len(list(loader)), loader.epoch
    (2, 2, 1, 2, 2)
    """

    def __init__(self, stream: ShardStream, num_workers: int = 0, **loader_kwargs):
        if loader_kwargs.get("persistent_workers"):
            raise ValueError("StreamLoader cannot use persistent_workers: each epoch restarts them")
        if not isinstance(stream, ShardStream):
            raise TypeError(f"StreamLoader reads a ShardStream, got {type(stream).__name__}")
        stream.worker_shards(1, 0, max(num_workers, 1))  # fail now if too few shards
        super().__init__(stream, batch_size=None, num_workers=num_workers, **loader_kwargs)
        self.epoch = 0
        self.batches_done = 0
        self._resume = None

    def __iter__(self) -> Iterator[PaddedBatch]:
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
        else:
            epoch, skip = self.epoch + 1, 0
        self.epoch, self.batches_done = epoch, skip
        stream = self.dataset
        stream.set_position(epoch, skip)
        if skip:
            logger.info("train stream: epoch %d resumes after batch %d", epoch, skip)
        clips, seconds, skipped = 0, 0.0, 0
        for batch in super().__iter__():
            for name, reason in batch.skipped:
                logger.warning("train stream: skipped %s: %s", name, reason)
            skipped += len(batch.skipped)
            wavs, lens = batch.sig
            clips += len(lens)
            seconds += float(lens.sum()) * wavs.shape[1] / stream.sample_rate
            self.batches_done += 1
            yield batch
        logger.info(
            "train stream, epoch %d, rank %d: %d batches, %d clips, %.1f s of audio "
            "(%.0f%% of the duration budget), %d unreadable samples skipped",
            epoch,
            stream.rank,
            self.batches_done - skip,
            clips,
            seconds,
            100 * seconds / max((self.batches_done - skip) * stream.batch_seconds, 1e-9),
            skipped,
        )

    @mark_as_saver
    def _save(self, path):
        with open(path, "w", encoding="utf-8") as fout:
            json.dump({"epoch": self.epoch, "batches_done": self.batches_done}, fout)

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        with open(path, encoding="utf-8") as fin:
            state = json.load(fin)
        self.epoch = int(state["epoch"])
        # After an intra-epoch checkpoint the interrupted epoch goes on; else the next starts.
        self._resume = None if end_of_epoch else (self.epoch, int(state["batches_done"]))
