#!/usr/bin/env python3
"""Recipe: zero-shot audio-text retrieval of a SLAP model folder on AudioCaps.

The pretrained model is evaluated directly, without training (paper Sec. 3.3,
Table 1 "Zero-Shot"): each val/test clip is embedded whole and each of its
captions queries the audio gallery (text-to-audio), and each clip queries all
captions (audio-to-text). Written to ``output_folder``: ``results.json``
(R@1/5/10, mAP@10, ranks and gallery sizes per split, and how many clips were
skipped for missing audio), ``<split>_embeddings.pt`` and
``<split>_similarity.png``.

    python recipes/AudioCaps/retrieval/evaluate.py \\
        recipes/AudioCaps/retrieval/hparams/zeroshot.yaml \\
        --pretrained_model=path/to/slap_model --data_folder=/data/AUDIOCAPS

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
from audiocaps_prepare import prepare_audiocaps  # noqa: E402

if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    prepared = prepare_audiocaps(
        data_folder=hparams["data_folder"],
        save_folder=hparams["manifest_folder"],
        splits=hparams["eval_splits"],
        csv_folder=hparams["csv_folder"],
        audio_pattern=hparams["audio_pattern"],
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
