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

from speechbrain_slap.evaluation import retrieval_recipe
from speechbrain_slap.recipe import load_hparams

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audiocaps_prepare import prepare_audiocaps  # noqa: E402

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])
    prepared = prepare_audiocaps(
        data_folder=hparams["data_folder"],
        save_folder=hparams["manifest_folder"],
        splits=hparams["eval_splits"],
        csv_folder=hparams["csv_folder"],
        audio_pattern=hparams["audio_pattern"],
    )

    retrieval_recipe(hparams, run_opts, prepared)
