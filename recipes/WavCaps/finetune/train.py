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

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main
from wavcaps_prepare import prepare_wavcaps

from speechbrain_slap.brain import SLAPBrain
from speechbrain_slap.data.pipelines import dataio_prepare
from speechbrain_slap.export import export_model, find_best_checkpoint
from speechbrain_slap.retrieval import fit_and_test, load_pretrained

if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
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
    tokenizer = load_pretrained(
        hparams["pretrainer"],
        hparams["pretrained_model"],
        hparams["tokenizer_folder"],
        hparams["vocab_size"],
    )
    hparams["teacher"].step.zero_()  # the EMA schedule spans the fine-tuning steps

    datasets = dataio_prepare(hparams, tokenizer)
    brain = SLAPBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    fit_and_test(brain, hparams, datasets)

    run_on_main(
        export_model,
        kwargs={
            "output_folder": hparams["output_folder"],
            "model_folder": hparams["model_folder"],
            "checkpoint": find_best_checkpoint(brain.checkpointer.checkpoints_dir),
            "overwrite": True,
        },
    )
