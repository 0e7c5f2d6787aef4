#!/usr/bin/env python3
"""Recipe: zero-shot speech emotion classification of RAVDESS with a pretrained SLAP model.

Paper Table 2, column RAD. Each of the 1,440 audio-only speech clips is
classified into the 8 emotions by cosine similarity between its audio
embedding and the embeddings of the class prompts (a prompt ensemble); no
training. RAVDESS has no official split, so top-1 accuracy is over all clips
(one fold, ``all``).

    python recipes/RAVDESS/zeroshot/evaluate.py recipes/RAVDESS/zeroshot/hparams/zeroshot.yaml \
        --data_folder=/data/RAVDESS --pretrained_model=/models/slap_wavcaps

Writes ``results.json``, ``predictions.csv`` and ``confusion_matrix.png`` to
``output_folder`` (see ``speechbrain_slap.zeroshot.evaluate_zero_shot``).

Authors
 * speechbrain-slap contributors 2026
"""

import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from ravdess_prepare import prepare_ravdess
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.inference import SLAP
from speechbrain_slap.zeroshot import evaluate_zero_shot

if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    prepare_kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["save_folder"]}
    run_on_main(prepare_ravdess, kwargs=prepare_kwargs)
    manifest = prepare_ravdess(**prepare_kwargs)

    model = SLAP.from_hparams(
        source=hparams["pretrained_model"],
        run_opts=run_opts,
        batch_seconds=hparams["batch_seconds"],
    )
    evaluate_zero_shot(
        model,
        manifest,
        labels=hparams["labels"],
        label_names=hparams["label_names"],
        templates=hparams["templates"],
        output_folder=hparams["output_folder"],
        replacements={"data_root": hparams["data_folder"]},
        batch_seconds=hparams["batch_seconds"],
        info={"dataset": "RAVDESS", "pretrained_model": str(hparams["pretrained_model"])},
    )
