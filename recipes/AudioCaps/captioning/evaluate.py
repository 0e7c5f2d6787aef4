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

from speechbrain_slap.evaluation import captioning_recipe
from speechbrain_slap.recipe import load_hparams

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audiocaps_prepare import prepare_audiocaps  # noqa: E402

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])
    split = hparams["eval_split"]
    prepared = prepare_audiocaps(
        data_folder=hparams["data_folder"],
        save_folder=hparams["manifest_folder"],
        splits=[split],
        csv_folder=hparams["csv_folder"],
        audio_pattern=hparams["audio_pattern"],
    )

    captioning_recipe(hparams, run_opts, prepared)
