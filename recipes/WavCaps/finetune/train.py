#!/usr/bin/env python3
"""Recipe: continued pretraining of a SLAP model on WavCaps (paper Table 2, SLAP_WavCaps).

The pretrained model is trained further on WavCaps' captions with all three
losses, as the paper does before its zero-shot classification results. The
code path is the fine-tuning one of the AudioCaps and Clotho recipes: every
module, the EMA teacher and the caption tokenizer start from a SLAP model
folder (``--pretrained_model``) and the training loop is the pretraining
recipe's (``SLAPBrain``, and the data pipelines and duration batches of
``speechbrain_slap.data.pipelines``, which skip and count unusable rows and
files). Retrieval on a held-out WavCaps split keeps the checkpoint with the
best mean R@1, which is re-scored on it (``test_results.json``) and exported to
``<output_folder>/model``; run the zero-shot classification recipes on that
folder for Table 2.

    python recipes/WavCaps/finetune/train.py \\
        recipes/WavCaps/finetune/hparams/wavcaps_finetune.yaml \\
        --pretrained_model=path/to/slap_model --data_folder=/data/WavCaps

Authors
 * speechbrain-slap contributors 2026
"""

import sys

from speechbrain.utils.distributed import run_on_main
from wavcaps_prepare import prepare_wavcaps

from speechbrain_slap.brain import SLAPBrain
from speechbrain_slap.data.pipelines import dataio_prepare
from speechbrain_slap.recipe import finetune, init_from_model_folder, load_hparams, make_brain

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])
    run_on_main(
        prepare_wavcaps,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["manifest_folder"],
            "json_files": hparams["json_files"],
            "audio_pattern": hparams["audio_pattern"],
            "blacklist_files": hparams["blacklist_files"],
            "n_valid": hparams["n_valid"],
            "seed": hparams["valid_seed"],
        },
    )

    # Start from the pretrained model: weights, teacher and caption tokenizer.
    tokenizer = init_from_model_folder(hparams)
    datasets = dataio_prepare(hparams, tokenizer)
    finetune(make_brain(SLAPBrain, hparams, run_opts), hparams, datasets)
