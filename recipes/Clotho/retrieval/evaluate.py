#!/usr/bin/env python3
"""Recipe: zero-shot audio-text retrieval of a SLAP model folder on Clotho.

The pretrained model is evaluated directly, without training (paper Sec. 3.3,
Table 1 "Zero-Shot"): each validation and evaluation clip is embedded whole
(15-30 s, never cropped), each of its 5 captions queries the audio gallery
(text-to-audio) and each clip queries all captions (audio-to-text). Written to
``output_folder``: ``results.json`` (R@1/5/10, mAP@10, ranks and gallery sizes
per split, ``valid`` being the validation folder and ``test`` the evaluation
folder, and how many clips were skipped for missing audio),
``<split>_embeddings.pt`` and ``<split>_similarity.png``.

    python recipes/Clotho/retrieval/evaluate.py \\
        recipes/Clotho/retrieval/hparams/zeroshot.yaml \\
        --pretrained_model=path/to/slap_model --data_folder=/data/clotho

Authors
 * speechbrain-slap contributors 2026
"""

import sys
from pathlib import Path

from speechbrain_slap.evaluation import retrieval_recipe
from speechbrain_slap.recipe import load_hparams

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clotho_prepare import prepare_clotho  # noqa: E402

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])
    prepared = prepare_clotho(
        data_folder=hparams["data_folder"],
        save_folder=hparams["manifest_folder"],
        splits=hparams["eval_splits"],
    )

    retrieval_recipe(hparams, run_opts, prepared)
