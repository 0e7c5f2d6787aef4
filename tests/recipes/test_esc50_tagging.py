"""ESC-50 tagging recipe on a tiny fake ``ESC-50-master`` (3 classes x 5 folds, 0.5-1 s clips).

The fake copy has the official layout: ``meta/esc50.csv`` with the official
columns and ``audio/{fold}-{clip}-{take}-{target}.wav``. The prepare script's
manifest is checked value by value; ``cross_validate.py`` then runs
``train.py`` (``--debug``) on folds 1 and 2 from a tiny pretrained SLAP folder
and aggregates the accuracies; the exported folder is checked.
"""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from speechbrain_slap.model_folder import sha256sum

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "ESC50"
CATEGORIES = ["dog", "rooster", "rain"]  # targets 0, 1, 2
HEADER = "filename,fold,target,category,esc10,src_file,take"


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def esc50_prepare():
    return _import(RECIPE / "esc50_prepare.py", "esc50_prepare")


@pytest.fixture
def fake_esc50(tmp_path, write_clip):
    """``ESC-50-master`` with one clip per class and fold; returns (folder, meta rows)."""
    root = tmp_path / "ESC-50-master"
    rows = []
    for fold in range(1, 6):
        for target, category in enumerate(CATEGORIES):
            source = 100000 + 10 * fold + target
            name = f"{fold}-{source}-A-{target}.wav"
            duration = 0.5 + 0.1 * target
            write_clip(root / "audio" / name, 300.0 * (target + 1), duration, 44100)
            rows.append([name, fold, target, category, target != 2, source, "A"])
    (root / "meta").mkdir(parents=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as fout:
        fout.write(HEADER + "\n")
        csv.writer(fout).writerows(rows)
    (root / "LICENSE").write_text("CC BY-NC 3.0\n")
    return root, rows


def test_prepare_writes_the_manifest(esc50_prepare, fake_esc50, tmp_path):
    """Every clip once, with its fold, target, category, duration and $data_root path."""
    root, rows = fake_esc50
    manifest = esc50_prepare.prepare_esc50(root, tmp_path / "prep")
    with open(manifest, newline="") as fin:
        written = list(csv.DictReader(fin))
    assert list(written[0]) == ["ID", "duration", "wav", "fold", "target", "category", "esc10"]
    assert len(written) == 15
    for row, (name, fold, target, category, esc10, _, _) in zip(written, rows, strict=True):
        assert row["ID"] == name[:-4]
        assert row["wav"] == f"$data_root/audio/{name}"
        assert (int(row["fold"]), int(row["target"]), row["category"]) == (fold, target, category)
        assert row["esc10"] == str(esc10)
        assert float(row["duration"]) == pytest.approx(0.5 + 0.1 * target, abs=1e-3)
    assert esc50_prepare.esc50_classes(manifest) == CATEGORIES


def test_prepare_fails_on_a_missing_clip_and_a_bad_fold(esc50_prepare, fake_esc50, tmp_path):
    root, rows = fake_esc50
    (root / "audio" / rows[4][0]).unlink()
    with pytest.raises(FileNotFoundError, match=rows[4][0]):
        esc50_prepare.prepare_esc50(root, tmp_path / "a")
    text = (root / "meta" / "esc50.csv").read_text().replace(f"{rows[4][0]},2,", "x.wav,7,")
    (root / "meta" / "esc50.csv").write_text(text)
    with pytest.raises(ValueError, match="fold must be in 1..5, got 7"):
        esc50_prepare.prepare_esc50(root, tmp_path / "b")


def test_cross_validation_end_to_end(
    fake_esc50, tmp_path, make_slap_model_folder, tiny_model_overrides, run_recipe, assert_success
):
    """Two folds train and test; per-fold results, the summary and the exported folders."""
    root, _ = fake_esc50
    model, _ = make_slap_model_folder(tmp_path / "slap_model")
    cv = tmp_path / "cv"
    process = run_recipe(
        RECIPE / "tagging" / "cross_validate.py",
        RECIPE / "tagging" / "hparams" / "slap_base.yaml",
        "--folds=1,2",
        f"--cv_folder={cv}",
        f"--data_folder={root}",
        f"--pretrained_model={model}",
        "--n_classes=3",
        "--batch_size=4",
        "--num_workers=0",
        *tiny_model_overrides,
    )
    assert_success(process)
    summary = json.loads((cv / "cross_validation.json").read_text())
    accuracies = {}
    for fold in (1, 2):
        results = json.loads((cv / f"fold_{fold}" / "test_results.json").read_text())
        assert results["metric"] == "accuracy"
        # --debug tests two batches of 4 of the fold's 3 clips: all of them.
        assert results["n_clips"] == 3
        assert results["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)
        accuracies[str(fold)] = results["accuracy"]
    assert summary["folds"] == accuracies
    assert summary["mean_accuracy"] == pytest.approx(sum(accuracies.values()) / 2)
    assert "| mean |" in process.stdout
    # --summarize_only collects finished folds without training; a missing fold is an error.
    cross_validate = _import(RECIPE / "tagging" / "cross_validate.py", "esc50_cross_validate")
    hparams = str(RECIPE / "tagging" / "hparams" / "slap_base.yaml")
    resummarized = cross_validate.main(
        [hparams, "--folds=2,1", f"--cv_folder={cv}", "--summarize_only"]
    )
    assert resummarized["folds"] == {"2": accuracies["2"], "1": accuracies["1"]}
    with pytest.raises(FileNotFoundError, match="fold 3: .* not found"):
        cross_validate.main([hparams, "--folds=3", f"--cv_folder={cv}", "--summarize_only"])

    exported = cv / "fold_1" / "tagging_model"
    for line in (exported / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert sha256sum(exported / name) == digest
    classifier = torch.load(exported / "classifier.ckpt", weights_only=True)
    assert classifier["linear.weight"].shape == (3, 32)
    card = (exported / "README.md").read_text()
    assert "ESC-50 (test fold 1)" in card and "| accuracy |" in card
    log = (cv / "fold_1" / "train_log.txt").read_text().splitlines()
    assert log[0].startswith("epoch: 1") and "valid accuracy" in log[0]
    assert log[-1].startswith("Epoch loaded") and "test accuracy" in log[-1]
