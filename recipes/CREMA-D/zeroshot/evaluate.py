#!/usr/bin/env python3
"""Recipe: zero-shot speech emotion classification of CREMA-D with a pretrained SLAP model.

Paper Table 2, column CRD. Every clip of ``AudioWAV/`` is classified into the
6 emotions by cosine similarity between its audio embedding and the
embeddings of the class prompts (a prompt ensemble); no training. CREMA-D has
no official split, so top-1 accuracy is over all clips (one fold, ``all``).

    python recipes/CREMA-D/zeroshot/evaluate.py recipes/CREMA-D/zeroshot/hparams/zeroshot.yaml \
        --data_folder=/data/CREMA-D --pretrained_model=/models/slap_wavcaps

Writes ``results.json``, ``predictions.csv`` and ``confusion_matrix.png`` to
``output_folder`` (see ``speechbrain_slap.evaluation.evaluate_zero_shot``).

Authors
 * speechbrain-slap contributors 2026
"""

import sys

from cremad_prepare import prepare_cremad
from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.evaluation import zero_shot_recipe
from speechbrain_slap.recipe import load_hparams

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])

    prepare_kwargs = {
        "data_folder": hparams["data_folder"],
        "save_folder": hparams["save_folder"],
        "exclude": hparams["exclude_ids"],
    }
    run_on_main(prepare_cremad, kwargs=prepare_kwargs)
    manifest = prepare_cremad(**prepare_kwargs)

    zero_shot_recipe(hparams, run_opts, manifest, "CREMA-D")
