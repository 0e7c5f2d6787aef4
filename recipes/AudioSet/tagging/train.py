#!/usr/bin/env python3
"""Recipe: fine-tune SLAP for AudioSet tagging (527 classes, macro mAP on the eval set).

A linear layer on the pretrained SLAP audio encoder, the whole encoder
fine-tuned with the AudioMAE protocol the paper follows (Sec. 3.1): balanced
sampling (each clip drawn with the summed inverse frequencies of its labels),
mixup and cyclic rolling, binary cross-entropy. AudioSet has no official
validation split: the eval set is monitored every epoch and the last epoch's
model is tested (``select_best: False``). The model is then exported to
``<output_folder>/tagging_model``, a folder SpeechBrain's
``EncoderClassifier.from_hparams`` loads.

    python recipes/AudioSet/tagging/train.py recipes/AudioSet/tagging/hparams/slap_base.yaml \
        --data_folder=/data/audioset --audio_folder=/data/audioset/audios \
        --pretrained_model=/models/slap_base

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import math
import sys

import speechbrain as sb
import torch
from audioset_prepare import prepare_audioset, read_class_labels
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.data.audio import load_audio
from speechbrain_slap.tagging import (
    TaggingBrain,
    balanced_sample_weights,
    export_tagging_model,
    load_pretrained_slap,
    make_label_encoder,
)

logger = logging.getLogger(__name__)


def dataio_prepare(hparams, manifests, mids):
    """Train and eval datasets with audio and multi-hot targets over the classes ``mids``."""
    index_of = {mid: i for i, mid in enumerate(mids)}

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    @sb.utils.data_pipeline.takes("labels")
    @sb.utils.data_pipeline.provides("label_indices", "targets")
    def target_pipeline(labels):
        indices = [index_of[mid] for mid in labels.split(",")]
        yield indices
        targets = torch.zeros(len(mids))
        targets[indices] = 1.0
        yield targets

    datasets = {}
    for split, manifest in manifests.items():
        dataset = DynamicItemDataset.from_csv(
            manifest, replacements={"audio_root": hparams["audio_folder"]}
        )
        dataset.add_dynamic_item(audio_pipeline)
        dataset.add_dynamic_item(target_pipeline)
        dataset.set_output_keys(["id", "sig", "targets"])
        datasets[split] = dataset
    return datasets


def balanced_sampler(dataset, hparams):
    """Draws clips with probabilities that balance the classes (with replacement)."""
    with dataset.output_keys_as(["label_indices"]):
        label_indices = [item["label_indices"] for item in dataset]
    weights = balanced_sample_weights(label_indices, hparams["n_classes"])
    return ReproducibleWeightedRandomSampler(
        weights,
        num_samples=hparams["samples_per_epoch"] or len(dataset),
        replacement=True,
        seed=hparams["seed"],
    )


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    prepare_kwargs = {
        "data_folder": hparams["data_folder"],
        "save_folder": hparams["manifest_folder"],
        "audio_folder": hparams["audio_folder"],
        "train_splits": hparams["train_splits"],
        "split_folders": hparams["split_folders"],
        "audio_file_template": hparams["audio_file_template"],
    }
    run_on_main(prepare_audioset, kwargs=prepare_kwargs)
    manifests = prepare_audioset(**prepare_kwargs)  # returns at once: already prepared
    class_file = hparams["class_labels_file"]
    mids, names = zip(*read_class_labels(class_file), strict=True)
    label_encoder = make_label_encoder(names, hparams["n_classes"], class_file)
    datasets = dataio_prepare(hparams, manifests, mids)

    load_pretrained_slap(hparams["pretrainer"], hparams["pretrained_model"])
    brain = TaggingBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    train_options = dict(hparams["train_dataloader_options"])
    if hparams["balanced_sampling"]:
        train_options["sampler"] = balanced_sampler(datasets["train"], hparams)
        # SpeechBrain calls set_epoch on this sampler so each epoch draws anew.
        brain.train_sampler = train_options["sampler"]
        n_train = len(train_options["sampler"])
    else:
        train_options["shuffle"] = True
        n_train = len(datasets["train"])
    batches = math.ceil(n_train / train_options["batch_size"])
    steps = batches * hparams["number_of_epochs"] // brain.grad_accumulation_factor
    hparams["lr_schedule"].total_steps = max(steps, 1)

    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["eval"],
        train_loader_kwargs=train_options,
        valid_loader_kwargs=hparams["eval_dataloader_options"],
    )
    brain.evaluate(
        datasets["eval"],
        max_key=brain.metric_name if hparams["select_best"] else None,
        test_loader_kwargs=hparams["eval_dataloader_options"],
    )
    run_on_main(
        export_tagging_model,
        kwargs={
            "hparams": hparams,
            "label_encoder": label_encoder,
            "out_dir": hparams["export_folder"],
            "title": "SLAP fine-tuned on AudioSet (" + " + ".join(hparams["train_splits"]) + ")",
            "metrics": brain.test_stats,
        },
    )
