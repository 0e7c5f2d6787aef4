#!/usr/bin/env python3
"""Recipe: Clotho captioning with a fine-tuned SLAP model (paper Table 3).

Run the retrieval fine-tuning first (``recipes/Clotho/retrieval/train.py``):
the paper captions with the same fine-tuned checkpoints. This script captions
every evaluation clip, whole, with the caption decoder's beam search and
scores the captions against the 5 references of each clip (pycocoevalcap:
CIDEr-D and METEOR, SPICE when asked). Written to ``output_folder``:
``predictions.csv`` (ID, prediction, references) and ``results.json``.

    python recipes/Clotho/captioning/evaluate.py \\
        recipes/Clotho/captioning/hparams/captioning.yaml \\
        --pretrained_model=results/Clotho/finetune/1234/model \\
        --data_folder=/data/clotho

Authors
 * speechbrain-slap contributors 2026
"""

import sys
from pathlib import Path

from speechbrain_slap.evaluation import captioning_recipe
from speechbrain_slap.recipe import load_hparams

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clotho_prepare import prepare_clotho  # noqa: E402

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])
    split = hparams["eval_split"]
    prepared = prepare_clotho(
        data_folder=hparams["data_folder"],
        save_folder=hparams["manifest_folder"],
        splits=[split],
    )

    captioning_recipe(hparams, run_opts, prepared)
