"""SpeechBrain datasets over caption manifests: audio and caption pipelines, duration batches.

``dataio_prepare`` builds the ``DynamicItemDataset`` of each split of the
pretraining and fine-tuning recipes from its checked caption manifest
(``speechbrain_slap.data.manifest.load_manifest``); ``loader_kwargs`` gives
the DataLoader arguments of a split: batches by summed seconds
(``speechbrain_slap.data.batching``) and ``collate_usable``.

Audio is checked when it is read (``speechbrain_slap.data.audio.load_audio``:
missing, empty, truncated or undecodable files, NaN or Inf samples). The audio
pipeline then returns an ``UnusableItem`` marker instead of a waveform, and
``collate_usable`` (the DataLoader's ``collate_fn``) drops the marked items and
lists them on the batch as ``batch.bad_items`` (``[(ID, reason), ...]``).
Collation runs in the DataLoader workers; the batch carries the list to the
main process, where ``SLAPBrain`` logs each item and counts them per epoch. A
batch with no usable item is an ``EmptyBatch`` (length 0), whose step
``SLAPBrain`` skips.

Captions of any length are accepted: the caption tokenizer and the text
encoder truncate (``max_caption_tokens``, the text encoder's ``max_length``).

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_slap.data.audio import AudioLoadError, load_audio
from speechbrain_slap.data.batching import DurationBatchSampler
from speechbrain_slap.data.manifest import load_manifest, split_captions
from speechbrain_slap.lobes.caption_decoder import check_decoder_captions, clip_caption_ids

logger = logging.getLogger(__name__)

# What dataio_prepare's pipelines provide; a manifest column of one of these names is dropped.
PIPELINE_OUTPUTS = ("sig", "caption", "tokens_in", "tokens_out", "label")


class UnusableItem:
    """What the audio pipeline returns instead of a waveform for audio it cannot use.

    Arguments
    ---------
    reason : str
        What was wrong (``AudioLoadError.reason``).

    Example
    -------
    >>> UnusableItem("file not found").reason
    'file not found'
    """

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"UnusableItem({self.reason!r})"


class EmptyBatch:
    """A batch none of whose items could be used: length 0, and the items' ``bad_items``.

    Arguments
    ---------
    bad_items : list of (str, str)
        ``(ID, reason)`` of every item of the batch.

    Example
    -------
    >>> batch = EmptyBatch([("a", "file not found")])
    >>> len(batch), batch.bad_items
    (0, [('a', 'file not found')])
    """

    batchsize = 0

    def __init__(self, bad_items: list[tuple[str, str]]):
        self.bad_items = list(bad_items)

    def __len__(self) -> int:
        return 0

    def to(self, *args, **kwargs) -> "EmptyBatch":
        """Nothing to move (``PaddedBatch.to``'s interface)."""
        return self

    def pin_memory(self) -> "EmptyBatch":
        """Nothing to pin (``PaddedBatch.pin_memory``'s interface)."""
        return self


def collate_usable(examples: Sequence[dict]) -> PaddedBatch | EmptyBatch:
    """``PaddedBatch`` of the usable examples; the others listed as ``batch.bad_items``.

    An example is unusable when its ``sig`` is an ``UnusableItem``.

    Arguments
    ---------
    examples : sequence of dict
        Examples of a ``DynamicItemDataset`` with ``id`` and ``sig`` keys.

    Returns
    -------
    PaddedBatch or EmptyBatch
        With ``bad_items``: ``[(ID, reason), ...]`` of the dropped examples.

    Example
    -------
    >>> batch = collate_usable([
    ...     {"id": "a", "sig": torch.ones(3)},
    ...     {"id": "b", "sig": UnusableItem("file not found")},
    ... ])
    >>> batch.id, batch.sig.data.shape, batch.bad_items
    (['a'], torch.Size([1, 3]), [('b', 'file not found')])
    """
    usable = [e for e in examples if not isinstance(e["sig"], UnusableItem)]
    bad = [(e["id"], e["sig"].reason) for e in examples if isinstance(e["sig"], UnusableItem)]
    batch = PaddedBatch(usable) if usable else EmptyBatch(bad)
    batch.bad_items = bad
    return batch


def dataio_prepare(hparams: dict, tokenizer) -> dict[str, DynamicItemDataset]:
    """Audio, caption and label pipelines over the train/valid/test caption manifests.

    Each manifest is checked first (``load_manifest``; rejected rows go to
    ``<output_folder>/<split>_rejected.csv``). Training crops clips longer
    than ``max_duration`` at a random offset and picks a random caption of
    each clip; evaluation crops at 0 and takes the first caption. Audio that
    cannot be read gives an ``UnusableItem`` (see the module docstring); batch
    with ``collate_usable`` (``loader_kwargs`` does).

    With ``train_shards`` set, training streams shards and only the valid and
    test manifests are loaded.

    Arguments
    ---------
    hparams : dict
        ``train_csv`` / ``valid_csv`` / ``test_csv``, ``data_folder``,
        ``output_folder``, ``sample_rate``, ``max_duration``,
        ``max_caption_tokens``; optional ``train_shards``,
        ``zeroshot_labels`` (manifests with a ``sound_type`` column),
        ``train_monitor_clips`` (N > 0 adds a ``train_monitor`` split: the
        first N training rows with the evaluation pipelines) and
        ``decoder_captions`` (K > 1: the training split's ``tokens_in`` /
        ``tokens_out`` are ``(K, max_caption_tokens)`` blocks, the CLAP caption
        and up to ``K - 1`` other captions of the clip, for the decoder:
        ``clip_caption_ids``).
    tokenizer : SentencePiece
        The caption tokenizer: SpeechBrain's ``SentencePiece`` (its ``sp`` is
        used) or a ``sentencepiece.SentencePieceProcessor``.

    Returns
    -------
    dict
        ``{split: DynamicItemDataset}`` with keys ``id, sig, captions,
        caption, tokens_in, tokens_out`` (and ``label`` for evaluation splits
        when ``zeroshot_labels`` is set).

    Example
    -------
    >>> import numpy as np, soundfile
    >>> from speechbrain_slap.lobes.caption_decoder import train_caption_tokenizer
    >>> folder = getfixture("tmp_path")
    >>> soundfile.write(folder / "a.wav", np.zeros(8000, "float32"), 16000)
    >>> for split in ("train", "valid", "test"):
    ...     _ = (folder / f"{split}.csv").write_text(
    ...         "ID,duration,wav,captions\\n"
    ...         "a,0.5,$data_root/a.wav,A dog barks. | Barking.\\n"
    ...         "b,0.5,$data_root/gone.wav,Rain.\\n"
    ...     )
    >>> _ = (folder / "captions.csv").write_text("id,caption\\n0,a dog barks\\n1,rain\\n")
    >>> tokenizer = train_caption_tokenizer(
    ...     folder / "captions.csv", folder / "tok", model_type="char"
    ... )
    >>> hparams = {
    ...     "train_csv": folder / "train.csv", "valid_csv": folder / "valid.csv",
    ...     "test_csv": folder / "test.csv", "data_folder": folder, "output_folder": folder,
    ...     "sample_rate": 16000, "max_duration": 10.0, "max_caption_tokens": 16,
    ... }
    >>> datasets = dataio_prepare(hparams, tokenizer)
    >>> batch = collate_usable([datasets["train"][0], datasets["train"][1]])
    >>> batch.id, batch.sig.data.shape, batch.bad_items
    (['a'], torch.Size([1, 8000]), [('b', 'file not found')])
    """
    sp = getattr(tokenizer, "sp", tokenizer)
    sample_rate = hparams["sample_rate"]
    max_samples = int(hparams["max_duration"] * sample_rate)
    labels = list(hparams.get("zeroshot_labels") or [])
    decoder_captions = check_decoder_captions(hparams.get("decoder_captions", 1))

    def load(wav, train):
        try:
            sig = load_audio(wav, sample_rate)  # mono, resampled; checked
        except AudioLoadError as error:
            return UnusableItem(error.reason)
        if sig.numel() > max_samples:  # training crops at a random offset
            start = random.randint(0, sig.numel() - max_samples) if train else 0
            sig = sig[start : start + max_samples]
        return sig

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def train_audio(wav):
        return load(wav, train=True)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def eval_audio(wav):
        return load(wav, train=False)

    def text_pipeline(train):
        @sb.utils.data_pipeline.takes("captions")
        @sb.utils.data_pipeline.provides("caption", "tokens_in", "tokens_out")
        def pipeline(captions):
            captions = split_captions(captions)
            caption = random.choice(captions) if train else captions[0]
            yield caption
            decoded, rows = [caption], decoder_captions if train else 1
            if rows > 1:  # and others, at random, for the decoder
                others = [other for other in captions if other != caption]
                decoded += random.sample(others, min(rows - 1, len(others)))
            yield from clip_caption_ids(sp, decoded, hparams["max_caption_tokens"], rows=rows)

        return pipeline

    @sb.utils.data_pipeline.takes("sound_type")
    @sb.utils.data_pipeline.provides("label")
    def label_pipeline(sound_type):
        return torch.tensor([labels.index(sound_type) if sound_type in labels else -1])

    datasets = {}
    keys = ["id", "sig", "captions", "caption", "tokens_in", "tokens_out"]
    splits = ("valid", "test") if hparams.get("train_shards") else ("train", "valid", "test")
    monitor_clips = int(hparams.get("train_monitor_clips") or 0)
    if monitor_clips > 0:
        splits += ("train_monitor",)
    output_folder = Path(hparams["output_folder"])
    for split in splits:
        train = split == "train"
        source = "train" if split == "train_monitor" else split
        rows = load_manifest(
            hparams[f"{source}_csv"],
            hparams["data_folder"],
            rejected_csv=output_folder / f"{source}_rejected.csv",
        )
        if split == "train_monitor":  # training clips, read like the valid split
            rows = dict(list(rows.items())[:monitor_clips])
        dataset = DynamicItemDataset(_without_pipeline_columns(rows, hparams[f"{source}_csv"]))
        dataset.add_dynamic_item(train_audio if train else eval_audio)
        dataset.add_dynamic_item(text_pipeline(train))
        split_keys = list(keys)
        if labels and not train:
            dataset.add_dynamic_item(label_pipeline)
            split_keys.append("label")
        dataset.set_output_keys(split_keys)
        datasets[split] = dataset
    return datasets


def _without_pipeline_columns(rows: dict[str, dict], csv_path) -> dict[str, dict]:
    """``rows`` without the columns named like a pipeline output.

    ``DynamicItemDataset`` gives a static column precedence over a dynamic
    item of the same name, so a manifest column ``caption`` would replace the
    caption the text pipeline picked (and no longer match ``tokens_out``).
    """
    columns = {name for values in rows.values() for name in values}
    dropped = sorted(columns & set(PIPELINE_OUTPUTS))
    if not dropped:
        return rows
    logger.warning(
        "%s: columns %s are named like pipeline outputs and are ignored", csv_path, dropped
    )
    return {
        clip_id: {key: value for key, value in values.items() if key not in dropped}
        for clip_id, values in rows.items()
    }


def duration_sampler(
    dataset: DynamicItemDataset, hparams: dict, shuffle: bool
) -> DurationBatchSampler:
    """Batches by total seconds of audio (a token budget), not by clip count.

    The clips of a batch add up to at most ``batch_seconds`` (each counted up
    to ``max_duration``, the training crop) and number at most
    ``max_batch_clips`` (``speechbrain_slap.data.batching``): packing spends
    nothing on padding, so a batch of short clips holds many of them.

    Arguments
    ---------
    dataset : DynamicItemDataset
        A ``dataio_prepare`` split (its ``duration`` values).
    hparams : dict
        ``batch_seconds``, ``max_duration``, ``max_batch_clips``; ``seed``
        (optional, 0) seeds the per-epoch order.
    shuffle : bool
        A new random order every epoch (training; ``set_epoch``), else
        ascending duration.

    Returns
    -------
    DurationBatchSampler

    Example
    -------
    >>> dataset = DynamicItemDataset({str(i): {"duration": float(i)} for i in range(1, 9)})
    >>> hparams = {"batch_seconds": 10.0, "max_duration": 30.0, "max_batch_clips": 8}
    >>> batches = list(duration_sampler(dataset, hparams, shuffle=True))
    >>> sorted(i for batch in batches for i in batch)  # every clip once
    [0, 1, 2, 3, 4, 5, 6, 7]
    >>> all(sum(i + 1 for i in batch) <= 10 for batch in batches)
    True
    """
    with dataset.output_keys_as(["duration"]):
        durations = [float(item["duration"]) for item in dataset]
    return DurationBatchSampler(
        durations,
        batch_seconds=hparams["batch_seconds"],
        max_batch_clips=hparams["max_batch_clips"],
        max_duration=hparams["max_duration"],
        shuffle=shuffle,
        seed=hparams.get("seed", 0),
    )


def loader_kwargs(dataset: DynamicItemDataset, hparams: dict, train: bool) -> dict:
    """DataLoader arguments for a ``dataio_prepare`` split (``Brain.fit``'s loader kwargs).

    Duration batches (``duration_sampler``), ``num_workers`` workers,
    ``collate_usable``, and a DataLoader ``generator`` of its own: PyTorch
    draws each epoch's worker base seed from it, which would otherwise come
    from the global torch RNG and shift it, so a run resumed from a
    checkpoint (which restores that RNG) would draw other masks and crops
    than the run it continues.

    Arguments
    ---------
    dataset : DynamicItemDataset
        The split.
    hparams : dict
        ``duration_sampler``'s keys, ``num_workers`` and ``seed``.
    train : bool
        Shuffled batches (training) or ascending duration (evaluation).

    Returns
    -------
    dict
        ``batch_sampler``, ``num_workers``, ``collate_fn``, ``generator``.

    Example
    -------
    >>> dataset = DynamicItemDataset({"a": {"duration": 2.0}, "b": {"duration": 3.0}})
    >>> hparams = {"batch_seconds": 6.0, "max_duration": 30.0,
    ...            "max_batch_clips": 8, "num_workers": 0, "seed": 1}
    >>> sorted(loader_kwargs(dataset, hparams, train=True))
    ['batch_sampler', 'collate_fn', 'generator', 'num_workers']
    """
    return {
        "batch_sampler": duration_sampler(dataset, hparams, shuffle=train),
        "num_workers": hparams["num_workers"],
        "collate_fn": collate_usable,
        "generator": torch.Generator().manual_seed(hparams["seed"]),
    }
