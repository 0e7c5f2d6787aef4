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
``output_folder`` (see ``speechbrain_slap.evaluation.evaluate_zero_shot``).

Authors
 * speechbrain-slap contributors 2026
"""

import sys

from ravdess_prepare import prepare_ravdess
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.evaluation import zero_shot_recipe
from speechbrain_slap.recipe import load_hparams

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])

    prepare_kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["save_folder"]}
    run_on_main(prepare_ravdess, kwargs=prepare_kwargs)
    manifest = prepare_ravdess(**prepare_kwargs)

    zero_shot_recipe(hparams, run_opts, manifest, "RAVDESS")
