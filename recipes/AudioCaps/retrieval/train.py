#!/usr/bin/env python3
"""Recipe: fine-tune a pretrained SLAP model on AudioCaps (retrieval and captioning).

Paper Sec. 3.3: the pretrained model is trained further on the target dataset
with all three losses (contrastive, masked self-distillation, captioning).
Every module, the EMA teacher and the caption tokenizer start from a SLAP
model folder (``--pretrained_model``); the training loop is the pretraining
recipe's (``SLAPBrain``, and the data pipelines and duration batches of
``speechbrain_slap.data.pipelines``, which skip and count unusable rows and
files). Retrieval over all val captions is checked every epoch and the
checkpoint with the best mean R@1 is kept, evaluated on test
(``test_results.json``) and exported to ``<output_folder>/model``, the model
folder that the captioning recipe and ``SLAP.from_hparams`` load.

    python recipes/AudioCaps/retrieval/train.py \\
        recipes/AudioCaps/retrieval/hparams/finetune.yaml \\
        --pretrained_model=path/to/slap_model --data_folder=/data/AUDIOCAPS

Authors
 * speechbrain-slap contributors 2026
"""

import sys
from pathlib import Path

from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.brain import SLAPBrain
from speechbrain_slap.data.pipelines import dataio_prepare
from speechbrain_slap.recipe import finetune, init_from_model_folder, load_hparams, make_brain

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audiocaps_prepare import prepare_audiocaps  # noqa: E402

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])
    run_on_main(
        prepare_audiocaps,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["manifest_folder"],
            "csv_folder": hparams["csv_folder"],
            "audio_pattern": hparams["audio_pattern"],
        },
    )

    # Start from the pretrained model: weights, teacher and caption tokenizer.
    tokenizer = init_from_model_folder(hparams)
    datasets = dataio_prepare(hparams, tokenizer)
    finetune(make_brain(SLAPBrain, hparams, run_opts), hparams, datasets)
