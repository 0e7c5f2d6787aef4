#!/usr/bin/env python3
"""Recipe: fine-tune SLAP on ESC-50, one fold of the official 5-fold cross-validation.

A linear layer on the pretrained SLAP audio encoder, the whole encoder
fine-tuned (paper Sec. 3.1). The four folds other than ``test_fold`` train;
``test_fold`` is tested. ESC-50 has no validation split, so the test fold is
only monitored each epoch and the last epoch's model is tested
(``select_best: False``). At the end the model is exported to
``<output_folder>/tagging_model``, a folder SpeechBrain's
``EncoderClassifier.from_hparams`` loads.

    python recipes/ESC50/tagging/train.py recipes/ESC50/tagging/hparams/slap_base.yaml \
        --data_folder=/data/ESC-50-master --pretrained_model=/models/slap_base --test_fold=1

All five folds, per-fold and mean accuracy: ``cross_validate.py`` (see README.md).

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import math
import sys
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.data.audio import load_audio
from speechbrain_slap.tagging import (
    TaggingBrain,
    export_tagging_model,
    load_pretrained_slap,
    make_label_encoder,
)

# The prepare script sits one level up, shared with the zero-shot recipe.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esc50_prepare import N_FOLDS, esc50_classes, prepare_esc50  # noqa: E402

logger = logging.getLogger(__name__)


def dataio_prepare(hparams, label_encoder):
    """Train (four folds) and test (``test_fold``) datasets with audio and one-hot targets."""
    test_fold = int(hparams["test_fold"])
    if not 1 <= test_fold <= N_FOLDS:
        raise ValueError(f"test_fold must be in 1..{N_FOLDS}, got {test_fold}")
    n_classes = len(label_encoder)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    @sb.utils.data_pipeline.takes("category")
    @sb.utils.data_pipeline.provides("targets")
    def target_pipeline(category):
        index = torch.tensor(label_encoder.encode_label(category))
        return torch.nn.functional.one_hot(index, n_classes).float()

    dataset = DynamicItemDataset.from_csv(
        hparams["manifest"], replacements={"data_root": hparams["data_folder"]}
    )
    dataset.add_dynamic_item(audio_pipeline)
    dataset.add_dynamic_item(target_pipeline)
    dataset.set_output_keys(["id", "sig", "targets"])
    train = dataset.filtered_sorted(key_test={"fold": lambda fold: int(fold) != test_fold})
    test = dataset.filtered_sorted(key_test={"fold": lambda fold: int(fold) == test_fold})
    return {"train": train, "test": test}


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

    run_on_main(
        prepare_esc50,
        kwargs={"data_folder": hparams["data_folder"], "save_folder": hparams["manifest_folder"]},
    )
    classes = esc50_classes(hparams["manifest"])
    label_encoder = make_label_encoder(classes, hparams["n_classes"], hparams["manifest"])
    datasets = dataio_prepare(hparams, label_encoder)

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

    # The held-out fold is monitored every epoch but never selects the model.
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["test"],
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
            "title": f"SLAP fine-tuned on ESC-50 (test fold {hparams['test_fold']})",
            "metrics": brain.test_stats,
        },
    )
