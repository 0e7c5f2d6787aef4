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
``--compile`` compiles the encoders' blocks in place (``SLAPBrain._compile``);
``--contrastive_gradient_cache=True`` makes the CLAP loss of an optimizer step
contrast all its ``--grad_accumulation_factor`` micro-batches (README.md).

Bad data does not stop a run: manifest rows and audio files that cannot be
used are skipped, named in the log and counted per epoch
(``speechbrain_slap.data.manifest``; rejected rows in
``<output_folder>/<split>_rejected.csv``), and optimizer steps with a
non-finite loss are skipped (``SLAPBrain``). A killed run, started again with
the same command, resumes from its newest complete checkpoint (also from
within an epoch: ``ckpt_interval_minutes`` in ``pretrain_base.yaml``).

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import json
import logging
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.brain import SLAPBrain
from speechbrain_slap.data.audio import AudioLoadError, load_audio
from speechbrain_slap.data.manifest import load_manifest, split_captions, validate_manifest
from speechbrain_slap.data.pipelines import dataio_prepare, loader_kwargs
from speechbrain_slap.data.stream import ShardStream, StreamLoader
from speechbrain_slap.frame_probe import frame_features, linear_probe
from speechbrain_slap.lobes.caption_decoder import caption_prompt_ids, train_caption_tokenizer
from speechbrain_slap.recipe import batches_per_rank, set_total_steps

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
    """Trains SentencePiece on every caption of the usable training rows, one per row.

    Rows that training leaves out (``validate_manifest``) are left out here too.
    """
    folder = Path(hparams["tokenizer_folder"])
    folder.mkdir(parents=True, exist_ok=True)
    captions_csv = folder / "train_captions.csv"
    if not captions_csv.exists():
        manifest, _ = validate_manifest(hparams["train_csv"], hparams["data_folder"])
        rows = [split_captions(row["captions"]) for row in manifest.values()]
        with open(captions_csv, "w", newline="", encoding="utf-8") as fout:
            writer = csv.writer(fout)
            writer.writerow(["ID", "caption"])
            writer.writerows((i, c) for i, caps in enumerate(rows) for c in caps)
    return train_caption_tokenizer(captions_csv, folder, hparams["vocab_size"], "caption")


def zeroshot_prompt_ids(hparams, tokenizer):
    """The zero-shot prompts as caption prefixes, for the captioner's zero-shot score.

    Set as ``hparams["zeroshot_prompt_ids"]``, they make the test stage also
    report ``zeroshot_caption_accuracy``: the prompt that the caption decoder
    finds likeliest to open a clip's caption is its prediction
    (``CaptionDecoder.prefix_log_likelihoods``). None without prompts or
    without the captioning loss (an untrained decoder has nothing to say).
    """
    prompts = hparams.get("zeroshot_prompts")
    if not prompts or hparams["loss_weights"]["cap"] <= 0:
        return None
    return caption_prompt_ids(tokenizer.sp, prompts)


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
        decoder_captions=hparams.get("decoder_captions", 1),
        sample_rate=hparams["sample_rate"],
        batches_per_epoch=hparams["batches_per_epoch"],
        shuffle_buffer=hparams["shuffle_buffer"],
        seed=hparams["seed"],
    )
    # A generator of its own: the loader's per-epoch seed draw leaves the global RNG
    # (restored on resume) alone.
    loader = StreamLoader(
        stream,
        num_workers=hparams["num_workers"],
        generator=torch.Generator().manual_seed(hparams["seed"]),
    )
    hparams["checkpointer"].add_recoverable("train_stream", loader)
    return loader


def precompute_text_states(hparams, datasets) -> None:
    """The frozen text encoder's states of every caption and prompt, computed once up front.

    The text encoder is frozen and the corpus's captions are known, so their
    Transformer states are computed in batches before training (the
    encoder's cache) instead of one new sentence at a time during the steps.
    Skipped unless the encoder keeps a cache (``cache_size``).
    """
    encoder = hparams["text_encoder"]
    if not getattr(encoder, "cache_size", 0):
        return
    texts = [
        caption
        for dataset in datasets.values()
        for row in dataset.data.values()
        for caption in split_captions(row["captions"])
    ]
    texts += list(hparams.get("zeroshot_prompts") or [])
    distinct = len(set(texts))
    if distinct > encoder.cache_size:
        logger.warning(
            "text encoder: %d distinct captions exceed cache_size %d; their states are "
            "computed during training instead (raise cache_size to precompute them)",
            distinct,
            encoder.cache_size,
        )
        return
    start = time.perf_counter()
    computed = encoder.precompute(texts)
    logger.info(
        "text encoder: states of %d sentences computed in %.0f s (frozen, cached)",
        computed,
        time.perf_counter() - start,
    )


def frame_probe(brain, hparams) -> dict:
    """The dense-feature probe on the embedded corpus (``speechbrain_slap.frame_probe``).

    Frozen time-step features of the student encoder (one row per 160 ms
    step) of the first ``frame_probe_train_clips`` training clips train a
    linear classifier of the sound type sounding at each step, or none (from
    the manifest's ``events`` column); it is scored on every step of the test
    clips. Manifests without ``events`` (real corpora) get no probe.

    Returns
    -------
    dict
        ``frame_probe_accuracy``, ``frame_probe_majority`` (share of the most
        frequent test class), ``frame_probe_train_accuracy``, and the step
        counts; empty without ``events``.
    """
    from speechbrain_slap.data.synthetic import NO_EVENT, frame_labels, parse_events

    def steps_and_labels(split, limit=None):
        rows = load_manifest(hparams[f"{split}_csv"], hparams["data_folder"])
        rows = list(rows.values())[:limit]
        if not rows or "events" not in rows[0]:
            return None
        waves, events = [], []
        for row in rows:
            try:
                waves.append(load_audio(row["wav"], hparams["sample_rate"]))
            except AudioLoadError as error:
                logger.warning("frame probe: skipped %s: %s", row["wav"], error.reason)
                continue
            events.append(parse_events(row["events"]))
        encoder = brain.modules.audio_encoder
        feats = frame_features(
            brain.modules.compute_features,
            getattr(encoder, "module", encoder),  # DDP's module: rank 0 runs this alone
            waves,
            hparams["batch_seconds"],
            hparams["sample_rate"],
        )
        labels = [torch.tensor(frame_labels(e, len(f))) for e, f in zip(events, feats, strict=True)]
        return torch.cat(feats), torch.cat(labels)

    train = steps_and_labels("train", hparams["frame_probe_train_clips"])
    test = steps_and_labels("test")
    if train is None or test is None:
        return {}
    result = linear_probe(*train, *test, n_classes=NO_EVENT + 1)
    return {
        "frame_probe_accuracy": result["accuracy"],
        "frame_probe_majority": result["majority"],
        "frame_probe_train_accuracy": result["train_accuracy"],
        "frame_probe_train_steps": result["n_train"],
        "frame_probe_test_steps": result["n_test"],
    }


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
    hparams["zeroshot_prompt_ids"] = zeroshot_prompt_ids(hparams, tokenizer)
    hparams["train_monitor"] = datasets.get("train_monitor")  # train R@1 beside valid R@1
    precompute_text_states(hparams, datasets)

    if hparams["train_shards"]:
        train_data = stream_prepare(hparams, tokenizer)
        train_kwargs = {}
        batches_per_epoch = len(train_data)  # on every rank
    else:
        train_data = datasets["train"]
        train_kwargs = loader_kwargs(train_data, hparams, train=True)
        # Under DDP every rank trains on its share of the sampler's batches.
        batches_per_epoch = batches_per_rank(len(train_kwargs["batch_sampler"]))
    set_total_steps(hparams, batches_per_epoch, hparams["grad_accumulation_factor"])

    brain = SLAPBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        datasets["valid"],
        train_loader_kwargs=train_kwargs,
        valid_loader_kwargs=loader_kwargs(datasets["valid"], hparams, train=False),
    )
    brain.evaluate(
        datasets["test"],
        max_key="mean_R@1",
        test_loader_kwargs=loader_kwargs(datasets["test"], hparams, train=False),
    )
    if hparams.get("frame_probe_train_clips") and sb.utils.distributed.if_main_process():
        probe = frame_probe(brain, hparams)
        results_file = Path(hparams["output_folder"]) / "test_results.json"
        if probe and results_file.is_file():
            results = {**json.loads(results_file.read_text()), **probe}
            results_file.write_text(json.dumps(results, indent=2))
            logger.info(
                "frame probe: accuracy %.3f (majority class %.3f) on %d test steps",
                probe["frame_probe_accuracy"],
                probe["frame_probe_majority"],
                probe["frame_probe_test_steps"],
            )

    if sb.utils.distributed.is_distributed_initialized():
        # gloo's worker threads free a collective's buffers just after it completes, and
        # need the GIL to do so: a process already finalising then aborts
        # (pytorch/pytorch#190489). A pause that releases the GIL lets them finish.
        torch.distributed.destroy_process_group()
        time.sleep(0.5)
