#!/usr/bin/env python3
"""Recipe: SLAP pretraining (contrastive + masked self-distillation + captioning).

Trains the SLAP audio encoder from scratch on audio-caption manifests with all
three losses in one stage (paper Sec. 2.2, 3.2), validates text-audio retrieval
every epoch (the best checkpoint by mean R@1 is kept) and evaluates the test
split at the end.

To run on the embedded synthetic corpus (generated if absent, no download):

    python recipes/pretrain/train.py recipes/pretrain/hparams/pretrain_tiny_synth.yaml

On real manifests (CSV with ID, duration, wav, captions; see README.md):

    python recipes/pretrain/train.py recipes/pretrain/hparams/pretrain_base.yaml \
        --train_csv=... --valid_csv=... --test_csv=... --data_folder=...

Training can stream WebDataset shards (``slap shards``) instead of reading the
train manifest's files (``--train_shards=/data/shards``; valid and test stay
manifests), and runs on several GPUs or nodes under ``torchrun`` (README.md).

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import logging
import math
import random
import sys
import time
from pathlib import Path

import soundfile
import speechbrain as sb
import torch
import torchaudio
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.brain import SLAPBrain
from speechbrain_slap.data import split_captions
from speechbrain_slap.data.stream import ShardStream, StreamLoader
from speechbrain_slap.lobes.caption_decoder import encode_captions, train_caption_tokenizer

logger = logging.getLogger(__name__)


def prepare_corpus(hparams):
    """Generates the embedded synthetic corpus, and shards of its train split, if asked."""
    if hparams.get("generate_corpus", False):
        from speechbrain_slap.data.synthetic import generate_corpus

        generate_corpus(
            hparams["data_folder"],
            seed=hparams["corpus_seed"],
            n_train=hparams["n_train"],
            n_valid=hparams["n_valid"],
            n_test=hparams["n_test"],
            max_duration=hparams["corpus_max_duration"],
        )
    if hparams.get("generate_shards", False):
        from speechbrain_slap.data.shards import write_shards

        # Complete shards of an earlier run are kept, so this is cheap on a rerun.
        write_shards(
            hparams["train_csv"],
            hparams["shard_folder"],
            max_shard_samples=hparams["shard_max_samples"],
            num_workers=max(hparams["num_workers"], 1),
            data_root=hparams["data_folder"],
            sample_rate=hparams["sample_rate"],
            progress=False,
        )


def prepare_tokenizer(hparams):
    """Trains SentencePiece on every training caption, one per row."""
    folder = Path(hparams["tokenizer_folder"])
    folder.mkdir(parents=True, exist_ok=True)
    captions_csv = folder / "train_captions.csv"
    if not captions_csv.exists():
        with open(hparams["train_csv"], newline="") as fin:
            rows = [split_captions(row["captions"]) for row in csv.DictReader(fin)]
        with open(captions_csv, "w", newline="") as fout:
            writer = csv.writer(fout)
            writer.writerow(["ID", "caption"])
            writer.writerows((i, c) for i, caps in enumerate(rows) for c in caps)
    return train_caption_tokenizer(captions_csv, folder, hparams["vocab_size"], "caption")


def dataio_prepare(hparams, tokenizer):
    """Audio, caption and label pipelines for the train/valid/test manifests.

    With ``train_shards`` set, training streams shards (``stream_prepare``)
    and only the valid and test manifests are loaded.
    """
    sample_rate = hparams["sample_rate"]
    max_samples = int(hparams["max_duration"] * sample_rate)
    labels = list(hparams.get("zeroshot_labels") or [])

    def load(wav, train):
        audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
        sig = torch.from_numpy(audio).mean(dim=1)  # mix to mono
        if rate != sample_rate:
            sig = torchaudio.functional.resample(sig, rate, sample_rate)
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
            tokens_in, tokens_out = encode_captions(
                tokenizer.sp, [caption], hparams["max_caption_tokens"]
            )
            yield tokens_in[0]
            yield tokens_out[0]

        return pipeline

    @sb.utils.data_pipeline.takes("sound_type")
    @sb.utils.data_pipeline.provides("label")
    def label_pipeline(sound_type):
        return torch.tensor([labels.index(sound_type) if sound_type in labels else -1])

    datasets = {}
    keys = ["id", "sig", "captions", "caption", "tokens_in", "tokens_out"]
    splits = ("valid", "test") if hparams.get("train_shards") else ("train", "valid", "test")
    for split in splits:
        train = split == "train"
        dataset = DynamicItemDataset.from_csv(
            hparams[f"{split}_csv"], replacements={"data_root": hparams["data_folder"]}
        )
        dataset.add_dynamic_item(train_audio if train else eval_audio)
        dataset.add_dynamic_item(text_pipeline(train))
        split_keys = list(keys)
        if labels and not train:
            dataset.add_dynamic_item(label_pipeline)
            split_keys.append("label")
        dataset.set_output_keys(split_keys)
        datasets[split] = dataset
    return datasets


def stream_prepare(hparams, tokenizer):
    """The training stream over ``train_shards``, split by rank and loader worker.

    Batches have the manifest pipeline's keys and the same duration budget;
    the loader is a checkpoint recoverable (see ``speechbrain_slap.data.stream``).
    """
    stream = ShardStream(
        hparams["train_shards"],
        batch_seconds=hparams["batch_seconds"],
        max_batch_clips=hparams["max_batch_clips"],
        max_duration=hparams["max_duration"],
        tokenizer=tokenizer.sp,
        max_caption_tokens=hparams["max_caption_tokens"],
        sample_rate=hparams["sample_rate"],
        batches_per_epoch=hparams["batches_per_epoch"],
        shuffle_buffer=hparams["shuffle_buffer"],
        seed=hparams["seed"],
    )
    loader = StreamLoader(stream, num_workers=hparams["num_workers"])
    hparams["checkpointer"].add_recoverable("train_stream", loader)
    return loader


def duration_sampler(dataset, hparams, shuffle):
    """Batches by total seconds of audio (a token budget), not by clip count."""
    return DynamicBatchSampler(
        dataset,
        max_batch_length=hparams["batch_seconds"],
        num_buckets=hparams["num_buckets"],
        length_func=lambda x: min(float(x["duration"]), hparams["max_duration"]),
        shuffle=shuffle,
        batch_ordering="random" if shuffle else "ascending",
        max_batch_ex=hparams["max_batch_clips"],
    )


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    sb.utils.distributed.ddp_init_group(run_opts)
    if sb.utils.distributed.is_distributed_initialized():
        # The yaml seeded every rank alike, so the initial weights agree; from here on the
        # ranks should draw different token masks and SpecAugment masks.
        torch.manual_seed(hparams["seed"] + torch.distributed.get_rank())
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    run_on_main(prepare_corpus, kwargs={"hparams": hparams})
    run_on_main(prepare_tokenizer, kwargs={"hparams": hparams})
    tokenizer = prepare_tokenizer(hparams)
    datasets = dataio_prepare(hparams, tokenizer)

    if hparams["train_shards"]:
        train_data = stream_prepare(hparams, tokenizer)
        train_kwargs = {}
        batches_per_epoch = len(train_data)  # on every rank
    else:
        train_data = datasets["train"]
        train_sampler = duration_sampler(train_data, hparams, shuffle=True)
        train_kwargs = {"batch_sampler": train_sampler, "num_workers": hparams["num_workers"]}
        # Under DDP every rank trains on its share of the sampler's batches.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world_size = torch.distributed.get_world_size() if distributed else 1
        batches_per_epoch = math.ceil(len(train_sampler) / world_size)
    steps = batches_per_epoch * hparams["number_of_epochs"] // hparams["grad_accumulation_factor"]
    hparams["lr_schedule"].total_steps = max(steps, 1)
    hparams["teacher"].total_steps = max(steps, 1)

    brain = SLAPBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    eval_kwargs = lambda split: {  # noqa: E731
        "batch_sampler": duration_sampler(datasets[split], hparams, shuffle=False),
        "num_workers": hparams["num_workers"],
    }
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        datasets["valid"],
        train_loader_kwargs=train_kwargs,
        valid_loader_kwargs=eval_kwargs("valid"),
    )
    brain.evaluate(datasets["test"], max_key="mean_R@1", test_loader_kwargs=eval_kwargs("test"))

    if sb.utils.distributed.is_distributed_initialized():
        # gloo's worker threads free a collective's buffers just after it completes, and
        # need the GIL to do so: a process already finalising then aborts
        # (pytorch/pytorch#190489). A pause that releases the GIL lets them finish.
        torch.distributed.destroy_process_group()
        time.sleep(0.5)
