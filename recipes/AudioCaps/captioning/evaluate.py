#!/usr/bin/env python3
"""Recipe: AudioCaps captioning with a fine-tuned SLAP model (paper Table 3).

Run the retrieval fine-tuning first (``recipes/AudioCaps/retrieval/train.py``):
the paper captions with the same fine-tuned checkpoints. This script captions
every test clip with the caption decoder's beam search and scores the captions
against the 5 references of each clip (pycocoevalcap: CIDEr-D and METEOR,
SPICE when asked). Written to ``output_folder``: ``predictions.csv`` (ID,
prediction, references) and ``results.json``.

    python recipes/AudioCaps/captioning/evaluate.py \\
        recipes/AudioCaps/captioning/hparams/captioning.yaml \\
        --pretrained_model=results/AudioCaps/finetune/1234/model \\
        --data_folder=/data/AUDIOCAPS

Authors
 * speechbrain-slap contributors 2026
"""

import sys
from pathlib import Path

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from speechbrain_slap.inference import SLAP
from speechbrain_slap.retrieval import evaluate_captioning

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
    split = hparams["eval_split"]
    prepared = prepare_audiocaps(
        data_folder=hparams["data_folder"],
        save_folder=hparams["manifest_folder"],
        splits=[split],
        csv_folder=hparams["csv_folder"],
        audio_pattern=hparams["audio_pattern"],
    )

    model = SLAP.from_hparams(source=hparams["pretrained_model"], run_opts=run_opts)
    evaluate_captioning(
        model,
        Path(hparams["manifest_folder"]) / f"{split}.csv",
        data_folder=hparams["data_folder"],
        output_folder=hparams["output_folder"],
        beam_size=hparams["beam_size"],
        batch_clips=hparams["batch_clips"],
        compute_metrics=hparams["compute_metrics"],
        spice=hparams["spice"],
        extra={
            "pretrained_model": str(hparams["pretrained_model"]),
            "split": split,
            "prepare": prepared,
        },
    )
