"""UrbanSound8K zero-shot recipe on a tiny fake ``UrbanSound8K`` folder.

The fake copy has the official layout: ``metadata/UrbanSound8K.csv`` with the
official columns, ``audio/fold1`` ... ``audio/fold10`` and slices named
``[fsID]-[classID]-[occurrenceID]-[sliceID].wav`` at mixed sample rates,
channel counts and bit depths, as the real set has; 3 of the 10 classes, 2
slices each, over folds 1, 2 and 10.
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

RECIPE = REPO / "recipes" / "UrbanSound8K" / "zeroshot"
HEADER = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
# (fsID, classID, class, occurrence, slice, fold, salience, seconds, rate, channels, subtype)
SLICES = [
    (100032, 3, "dog_bark", 0, 0, 1, 1, 0.6, 44100, 2, "PCM_24"),
    (100652, 3, "dog_bark", 0, 1, 10, 2, 0.8, 48000, 1, "PCM_16"),
    (102305, 1, "car_horn", 0, 0, 2, 1, 0.5, 22050, 1, "PCM_U8"),
    (102857, 1, "car_horn", 1, 3, 10, 1, 0.7, 44100, 2, "PCM_16"),
    (106955, 8, "siren", 0, 0, 1, 2, 1.0, 96000, 1, "PCM_24"),
    (108041, 8, "siren", 2, 4, 2, 1, 0.9, 11025, 1, "PCM_16"),
]


@pytest.fixture(scope="module")
def prepare():
    return load_module(RECIPE / "urbansound8k_prepare.py", "urbansound8k_prepare")


@pytest.fixture(scope="module")
def fake_urbansound8k(tmp_path_factory):
    """``UrbanSound8K/`` with the 6 slices of ``SLICES``; returns the folder."""
    root = tmp_path_factory.mktemp("us8k") / "UrbanSound8K"
    for fold in range(1, 11):
        (root / "audio" / f"fold{fold}").mkdir(parents=True)
    rows = []
    for i, (fs_id, class_id, name, occ, slc, fold, sal, sec, rate, ch, subtype) in enumerate(
        SLICES
    ):
        file_name = f"{fs_id}-{class_id}-{occ}-{slc}.wav"
        write_clip(root / "audio" / f"fold{fold}" / file_name, sec, rate, ch, subtype, seed=i)
        rows.append([file_name, fs_id, 1.5 * slc, 1.5 * slc + sec, sal, fold, class_id, name])
    (root / "metadata").mkdir()
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(HEADER)
        writer.writerows(rows)
    (root / "UrbanSound8K_README.txt").write_text("UrbanSound8K\n")
    (root / "FREESOUNDCREDITS.txt").write_text("credits\n")
    return root


def test_prepare_writes_the_manifest(prepare, fake_urbansound8k, tmp_path):
    """Every slice once, with its class, fold, duration and $data_root path."""
    manifest = prepare.prepare_urbansound8k(fake_urbansound8k, tmp_path)
    assert manifest == tmp_path / "urbansound8k.csv"
    rows = read_csv(manifest)
    assert list(rows[0]) == [
        "ID",
        "duration",
        "wav",
        "label",
        "fold",
        "class_id",
        "fsID",
        "salience",
    ]
    assert len(rows) == len(SLICES)
    for row, (fs_id, class_id, name, occ, slc, fold, sal, sec, *_) in zip(
        rows, SLICES, strict=True
    ):
        assert row["ID"] == f"{fs_id}-{class_id}-{occ}-{slc}"
        assert row["wav"] == f"$data_root/audio/fold{fold}/{row['ID']}.wav"
        assert (row["label"], row["fold"], row["class_id"]) == (name, str(fold), str(class_id))
        assert (row["fsID"], row["salience"]) == (str(fs_id), str(sal))
        assert float(row["duration"]) == pytest.approx(sec, abs=1e-4)

    # A second call keeps the existing manifest.
    manifest.write_text(manifest.read_text() + "# kept\n")
    assert prepare.prepare_urbansound8k(fake_urbansound8k, tmp_path).read_text().endswith("kept\n")


def test_prepare_names_what_is_missing(prepare, fake_urbansound8k, tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata/UrbanSound8K.csv"):
        prepare.prepare_urbansound8k(fake_urbansound8k / "audio", tmp_path / "a")

    broken = tmp_path / "UrbanSound8K"
    (broken / "metadata").mkdir(parents=True)
    meta = (fake_urbansound8k / "metadata" / "UrbanSound8K.csv").read_text()
    (broken / "metadata" / "UrbanSound8K.csv").write_text(meta)
    with pytest.raises(FileNotFoundError, match=r"line 2: audio file .*fold1/100032-3-0-0.wav"):
        prepare.prepare_urbansound8k(broken, tmp_path / "b")

    bad_fold = meta.splitlines()
    bad_fold[1] = bad_fold[1].replace(",1,3,dog_bark", ",11,3,dog_bark")
    (broken / "metadata" / "UrbanSound8K.csv").write_text("\n".join(bad_fold))
    with pytest.raises(ValueError, match="line 2: fold must be in 1..10, got 11"):
        prepare.prepare_urbansound8k(broken, tmp_path / "c")


def test_evaluate_end_to_end(fake_urbansound8k, slap_model_folder, tmp_path):
    """10 folds' protocol: fold 1, 2 and 10 reported, their mean and the overall accuracy."""
    output = tmp_path / "out"
    run_evaluate(RECIPE, fake_urbansound8k, output, slap_model_folder)
    manifest = read_csv(output / "save" / "urbansound8k.csv")
    hparams = recipe_hparams(RECIPE, fake_urbansound8k, slap_model_folder)
    results = check_evaluation(output, hparams, manifest, fake_urbansound8k, slap_model_folder)
    assert list(results["fold_accuracy"]) == ["1", "2", "10"]
    assert results["n_per_class"]["dog_bark"] == 2 and results["n_per_class"]["drilling"] == 0
    assert results["info"]["dataset"] == "UrbanSound8K"
    assert Path(results["info"]["pretrained_model"]) == Path(slap_model_folder)
    assert (output / "log.txt").is_file()
