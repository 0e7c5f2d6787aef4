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

import sys
from pathlib import Path

from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.recipe import init_from_model_folder, load_hparams
from speechbrain_slap.tagging import (
    finetune_tagging,
    make_label_encoder,
    one_hot_targets,
    tagging_datasets,
)

# The prepare script sits one level up, shared with the zero-shot recipe.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esc50_prepare import N_FOLDS, esc50_classes, prepare_esc50  # noqa: E402


def dataio_prepare(hparams, label_encoder):
    """Train (four folds) and test (``test_fold``) datasets with audio and one-hot targets."""
    test_fold = int(hparams["test_fold"])
    if not 1 <= test_fold <= N_FOLDS:
        raise ValueError(f"test_fold must be in 1..{N_FOLDS}, got {test_fold}")
    dataset = tagging_datasets(
        {"all": hparams["manifest"]},
        hparams["sample_rate"],
        one_hot_targets(label_encoder, "category"),
        replacements={"data_root": hparams["data_folder"]},
    )["all"]
    train = dataset.filtered_sorted(key_test={"fold": lambda fold: int(fold) != test_fold})
    test = dataset.filtered_sorted(key_test={"fold": lambda fold: int(fold) == test_fold})
    return {"train": train, "test": test}


if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])
    run_on_main(
        prepare_esc50,
        kwargs={"data_folder": hparams["data_folder"], "save_folder": hparams["manifest_folder"]},
    )
    classes = esc50_classes(hparams["manifest"])
    label_encoder = make_label_encoder(classes, hparams["n_classes"], hparams["manifest"])
    datasets = dataio_prepare(hparams, label_encoder)
    init_from_model_folder(hparams)

    # The held-out fold is monitored every epoch but never selects the model.
    finetune_tagging(
        hparams,
        run_opts,
        (datasets["train"], datasets["test"], datasets["test"]),
        label_encoder,
        title=f"SLAP fine-tuned on ESC-50 (test fold {hparams['test_fold']})",
    )
