#!/usr/bin/env python3
"""Recipe: zero-shot classification of ESC-50 with a pretrained SLAP model.

Paper Table 2, column ESC. Every one of the 2,000 clips is classified into the
50 classes by cosine similarity between its audio embedding and the
embeddings of the class prompts (a prompt ensemble); no training. Top-1
accuracy is reported per official fold (1-5), as the unweighted mean over the
folds (the WavCaps protocol) and over all clips.

    python recipes/ESC50/zeroshot/evaluate.py recipes/ESC50/zeroshot/hparams/zeroshot.yaml \
        --data_folder=/data/ESC-50-master --pretrained_model=/models/slap_wavcaps

Writes ``results.json``, ``predictions.csv`` and ``confusion_matrix.png`` to
``output_folder`` (see ``speechbrain_slap.evaluation.evaluate_zero_shot``).

Authors
 * speechbrain-slap contributors 2026
"""

import sys
from pathlib import Path

from speechbrain.utils.distributed import run_on_main

from speechbrain_slap.evaluation import zero_shot_recipe
from speechbrain_slap.recipe import load_hparams

# The prepare script sits one level up, shared with the tagging recipe.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esc50_prepare import esc50_classes, prepare_esc50  # noqa: E402


def check_labels(labels, manifest):
    """The yaml's labels must name the manifest's classes in target order."""
    for target, category in enumerate(esc50_classes(manifest)):
        if target >= len(labels) or labels[target] != category:
            raise ValueError(
                f"{manifest}: target {target} is {category!r}, but the yaml's labels give "
                f"{labels[target] if target < len(labels) else None!r}"
            )


if __name__ == "__main__":
    hparams, run_opts, _, _ = load_hparams(sys.argv[1:])

    prepare_kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["save_folder"]}
    run_on_main(prepare_esc50, kwargs=prepare_kwargs)
    manifest = prepare_esc50(**prepare_kwargs)
    check_labels(hparams["labels"], manifest)

    zero_shot_recipe(hparams, run_opts, manifest, "ESC-50", label_field="category")
