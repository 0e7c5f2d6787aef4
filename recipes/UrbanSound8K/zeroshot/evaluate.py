#!/usr/bin/env python3
"""Recipe: zero-shot classification of UrbanSound8K with a pretrained SLAP model.

Paper Table 2, column US8K. Every one of the 8,732 slices is classified into
the 10 classes by cosine similarity between its audio embedding and the
embeddings of the class prompts (a prompt ensemble); no training. Top-1
accuracy is reported per official fold (1-10), as the unweighted mean over the
folds (the WavCaps protocol) and over all slices.

    python recipes/UrbanSound8K/zeroshot/evaluate.py \
        recipes/UrbanSound8K/zeroshot/hparams/zeroshot.yaml \
        --data_folder=/data/UrbanSound8K --pretrained_model=/models/slap_wavcaps

Writes ``results.json``, ``predictions.csv`` and ``confusion_matrix.png`` to
``output_folder`` (see ``speechbrain_slap.evaluation.evaluate_zero_shot``).

Authors
 * speechbrain-slap contributors 2026
"""

import sys

from speechbrain.utils.distributed import run_on_main
from urbansound8k_prepare import prepare_urbansound8k

from speechbrain_slap.evaluation import zero_shot_recipe
from speechbrain_slap.recipe import load_hparams

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])

    prepare_kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["save_folder"]}
    run_on_main(prepare_urbansound8k, kwargs=prepare_kwargs)
    manifest = prepare_urbansound8k(**prepare_kwargs)

    zero_shot_recipe(hparams, run_opts, manifest, "UrbanSound8K")
