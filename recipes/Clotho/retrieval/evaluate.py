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

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from speechbrain_slap.inference import SLAP
from speechbrain_slap.retrieval import evaluate_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clotho_prepare import prepare_clotho  # noqa: E402

if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    prepared = prepare_clotho(
        data_folder=hparams["data_folder"],
        save_folder=hparams["manifest_folder"],
        splits=hparams["eval_splits"],
    )

    model = SLAP.from_hparams(source=hparams["pretrained_model"], run_opts=run_opts)
    evaluate_splits(
        model,
        {
            split: Path(hparams["manifest_folder"]) / f"{split}.csv"
            for split in hparams["eval_splits"]
        },
        data_folder=hparams["data_folder"],
        output_folder=hparams["output_folder"],
        batch_clips=hparams["batch_clips"],
        extra={"pretrained_model": str(hparams["pretrained_model"]), "prepare": prepared},
    )
