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

import sys

import speechbrain as sb
import torch
from audioset_prepare import prepare_audioset, read_class_labels
from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.recipe import init_from_model_folder, load_hparams
from speechbrain_slap.tagging import (
    balanced_sample_weights,
    finetune_tagging,
    make_label_encoder,
    tagging_datasets,
)


def multi_hot_targets(mids):
    """A data pipeline: the ``labels`` column (comma-separated MIDs) -> multi-hot targets."""
    index_of = {mid: i for i, mid in enumerate(mids)}

    @sb.utils.data_pipeline.takes("labels")
    @sb.utils.data_pipeline.provides("label_indices", "targets")
    def target_pipeline(labels):
        indices = [index_of[mid] for mid in labels.split(",")]
        yield indices
        targets = torch.zeros(len(mids))
        targets[indices] = 1.0
        yield targets

    return target_pipeline


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
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])
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
    datasets = tagging_datasets(
        manifests,
        hparams["sample_rate"],
        multi_hot_targets(mids),
        replacements={"audio_root": hparams["audio_folder"]},
    )
    init_from_model_folder(hparams)
    sampler = balanced_sampler(datasets["train"], hparams) if hparams["balanced_sampling"] else None
    # No official validation split: the eval set is monitored, the last epoch tested.
    finetune_tagging(
        hparams,
        run_opts,
        (datasets["train"], datasets["eval"], datasets["eval"]),
        label_encoder,
        title="SLAP fine-tuned on AudioSet (" + " + ".join(hparams["train_splits"]) + ")",
        sampler=sampler,
    )
