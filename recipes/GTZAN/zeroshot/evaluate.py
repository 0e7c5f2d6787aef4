#!/usr/bin/env python3
"""Recipe: zero-shot music genre classification of GTZAN with a pretrained SLAP model.

Paper Table 2, column GTZAN. Each 30 s clip is classified into the 10 genres
by cosine similarity between its audio embedding and the embeddings of the
class prompts (a prompt ensemble); no training. Top-1 accuracy over all
clips (one fold, ``all``); the corrupt ``jazz.00054.wav`` is skipped and
listed in ``results.json``.

    python recipes/GTZAN/zeroshot/evaluate.py recipes/GTZAN/zeroshot/hparams/zeroshot.yaml \
        --data_folder=/data/GTZAN --pretrained_model=/models/slap_wavcaps

Writes ``results.json``, ``predictions.csv`` and ``confusion_matrix.png`` to
``output_folder`` (see ``speechbrain_slap.evaluation.evaluate_zero_shot``).

Authors
 * speechbrain-slap contributors 2026
"""

import sys

from gtzan_prepare import prepare_gtzan
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.evaluation import zero_shot_recipe
from speechbrain_slap.recipe import load_hparams

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])

    prepare_kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["save_folder"]}
    run_on_main(prepare_gtzan, kwargs=prepare_kwargs)
    manifest = prepare_gtzan(**prepare_kwargs)

    zero_shot_recipe(hparams, run_opts, manifest, "GTZAN")
