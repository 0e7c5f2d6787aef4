#!/usr/bin/env python3
"""Recipe: fine-tune SLAP on Speech Commands v2 (35 words, top-1 accuracy on the test list).

A linear layer on the pretrained SLAP audio encoder, the whole encoder
fine-tuned (paper Sec. 3.1). The official split: ``validation_list.txt``
selects the best checkpoint by accuracy, ``testing_list.txt`` is tested, every
other clip trains. The model is then exported to
``<output_folder>/tagging_model``, a folder SpeechBrain's
``EncoderClassifier.from_hparams`` loads.

    python recipes/SpeechCommands/tagging/train.py \
        recipes/SpeechCommands/tagging/hparams/slap_base.yaml \
        --data_folder=/data/speech_commands_v0.02 --pretrained_model=/models/slap_base

Authors
 * speechbrain-slap contributors 2026
"""

import sys

from speechbrain.utils.distributed import run_on_main
from speechcommands_prepare import prepare_speech_commands, word_folders

from speechbrain_slap.recipe import init_from_model_folder, load_hparams
from speechbrain_slap.tagging import (
    finetune_tagging,
    make_label_encoder,
    one_hot_targets,
    tagging_datasets,
)

if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])
    words = hparams["words"] or word_folders(hparams["data_folder"])
    prepare_kwargs = {
        "data_folder": hparams["data_folder"],
        "save_folder": hparams["manifest_folder"],
        "words": words,
    }
    run_on_main(prepare_speech_commands, kwargs=prepare_kwargs)
    manifests = prepare_speech_commands(**prepare_kwargs)  # returns at once: already prepared
    label_encoder = make_label_encoder(words, hparams["n_classes"], hparams["data_folder"])
    datasets = tagging_datasets(
        manifests,
        hparams["sample_rate"],
        one_hot_targets(label_encoder, "label"),
        replacements={"data_root": hparams["data_folder"]},
    )
    init_from_model_folder(hparams)
    finetune_tagging(
        hparams,
        run_opts,
        (datasets["train"], datasets["valid"], datasets["test"]),
        label_encoder,
        title=f"SLAP fine-tuned on Speech Commands v2 ({len(words)} words)",
    )
