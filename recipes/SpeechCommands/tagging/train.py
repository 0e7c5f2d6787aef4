#!/usr/bin/env python3
"""Recipe: fine-tune SLAP on Speech Commands v2 (35 words, top-1 accuracy on the test list).

A linear layer on the pretrained SLAP audio encoder, the whole encoder
fine-tuned (paper Sec. 3.1). The official split: ``validation_list.txt``
selects the best checkpoint by accuracy, ``testing_list.txt`` is tested, every
other clip trains. The model is then exported to
``<output_folder>/tagging_model``, a folder SpeechBrain's
``EncoderClassifier.from_hparams`` loads.

    python recipes/SpeechCommands/tagging/train.py \
        recipes/SpeechCommands/tagging/hparams/slap_base.yaml \
        --data_folder=/data/speech_commands_v0.02 --pretrained_model=/models/slap_base

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import math
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import run_on_main
from speechcommands_prepare import prepare_speech_commands, word_folders

from speechbrain_slap.data.audio import load_audio
from speechbrain_slap.tagging import (
    TaggingBrain,
    export_tagging_model,
    load_pretrained_slap,
    make_label_encoder,
)

logger = logging.getLogger(__name__)


def dataio_prepare(hparams, manifests, label_encoder):
    """Train, valid and test datasets with audio and one-hot word targets."""
    n_classes = len(label_encoder)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides("targets")
    def target_pipeline(label):
        index = torch.tensor(label_encoder.encode_label(label))
        return torch.nn.functional.one_hot(index, n_classes).float()

    datasets = {}
    for split, manifest in manifests.items():
        dataset = DynamicItemDataset.from_csv(
            manifest, replacements={"data_root": hparams["data_folder"]}
        )
        dataset.add_dynamic_item(audio_pipeline)
        dataset.add_dynamic_item(target_pipeline)
        dataset.set_output_keys(["id", "sig", "targets"])
        datasets[split] = dataset
    return datasets


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

    words = hparams["words"] or word_folders(hparams["data_folder"])
    prepare_kwargs = {
        "data_folder": hparams["data_folder"],
        "save_folder": hparams["manifest_folder"],
        "words": words,
    }
    run_on_main(prepare_speech_commands, kwargs=prepare_kwargs)
    manifests = prepare_speech_commands(**prepare_kwargs)  # returns at once: already prepared
    label_encoder = make_label_encoder(words, hparams["n_classes"], hparams["data_folder"])
    datasets = dataio_prepare(hparams, manifests, label_encoder)

    load_pretrained_slap(hparams["pretrainer"], hparams["pretrained_model"])
    brain = TaggingBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    train_options = hparams["train_dataloader_options"]
    batches = math.ceil(len(datasets["train"]) / train_options["batch_size"])
    steps = batches * hparams["number_of_epochs"] // brain.grad_accumulation_factor
    hparams["lr_schedule"].total_steps = max(steps, 1)

    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=train_options,
        valid_loader_kwargs=hparams["eval_dataloader_options"],
    )
    brain.evaluate(
        datasets["test"],
        max_key=brain.metric_name if hparams["select_best"] else None,
        test_loader_kwargs=hparams["eval_dataloader_options"],
    )
    run_on_main(
        export_tagging_model,
        kwargs={
            "hparams": hparams,
            "label_encoder": label_encoder,
            "out_dir": hparams["export_folder"],
            "title": f"SLAP fine-tuned on Speech Commands v2 ({len(words)} words)",
            "metrics": brain.test_stats,
        },
    )
