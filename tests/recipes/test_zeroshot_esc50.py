"""ESC-50 zero-shot recipe on a tiny fake ``ESC-50-master`` (3 classes, 5 folds).

The fake copy has the official layout: ``meta/esc50.csv`` with the official
columns and ``audio/{fold}-{clip}-{take}-{target}.wav`` (44.1 kHz mono), two
clips of each of the first three classes spread over the five folds. The
manifest comes from the shared ``recipes/ESC50/esc50_prepare.py`` (tested
with the tagging recipe).
"""

import csv
import sys
from pathlib import Path

import pytest

# The helpers sit beside this file (tests/recipes may or may not be a package).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from zeroshot_fixtures import (  # noqa: E402
    REPO,
    check_evaluation,
    load_module,
    read_csv,
    recipe_hparams,
    run_evaluate,
    write_clip,
)

RECIPE = REPO / "recipes" / "ESC50" / "zeroshot"
HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
# (fold, source clip, take, target, category, esc10, seconds)
CLIPS = [
    (1, 100032, "A", 0, "dog", True, 0.6),
    (2, 110389, "A", 0, "dog", True, 0.8),
    (3, 100038, "B", 1, "rooster", True, 0.5),
    (4, 104532, "A", 1, "rooster", True, 1.0),
    (5, 103415, "A", 2, "pig", False, 0.7),
    (1, 208652, "C", 2, "pig", False, 0.9),
]


@pytest.fixture(scope="module")
def fake_esc50(tmp_path_factory):
    """``ESC-50-master`` with the clips of ``CLIPS``."""
    root = tmp_path_factory.mktemp("esc50") / "ESC-50-master"
    rows = []
    for i, (fold, source, take, target, category, esc10, seconds) in enumerate(CLIPS):
        name = f"{fold}-{source}-{take}-{target}.wav"
        write_clip(root / "audio" / name, seconds, 44100, seed=i)
        rows.append([name, fold, target, category, esc10, source, take])
    (root / "meta").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(HEADER)
        writer.writerows(rows)
    (root / "LICENSE").write_text("CC BY-NC 3.0\n")
    return root


def test_labels_must_follow_the_target_order(fake_esc50, tmp_path):
    evaluate = load_module(RECIPE / "evaluate.py", "esc50_zeroshot_evaluate")
    manifest = evaluate.prepare_esc50(fake_esc50, tmp_path)
    evaluate.check_labels(["dog", "rooster", "pig", "cow"], manifest)
    with pytest.raises(ValueError, match="target 1 is 'rooster', but the yaml's labels give 'pig'"):
        evaluate.check_labels(["dog", "pig", "rooster"], manifest)


def test_evaluate_end_to_end(fake_esc50, slap_model_folder, tmp_path):
    """5 folds' protocol: each fold reported, their mean and the overall accuracy."""
    output = tmp_path / "out"
    run_evaluate(RECIPE, fake_esc50, output, slap_model_folder)
    manifest = read_csv(output / "save" / "esc50.csv")
    assert [(r["category"], r["fold"]) for r in manifest] == [(c[4], str(c[0])) for c in CLIPS]
    hparams = recipe_hparams(RECIPE, fake_esc50, slap_model_folder)
    assert len(hparams["labels"]) == 50
    results = check_evaluation(
        output, hparams, manifest, fake_esc50, slap_model_folder, label_field="category"
    )
    assert list(results["fold_accuracy"]) == ["1", "2", "3", "4", "5"]
    assert results["n_per_fold"] == {"1": 2, "2": 1, "3": 1, "4": 1, "5": 1}
    assert results["info"]["dataset"] == "ESC-50"
