"""AudioSet tagging recipe on a tiny fake AudioSet (4 classes, a few 0.5-1 s clips per split).

The fake copy has the official metadata format (three ``#`` header lines,
``", "`` separators, quoted label lists, YTIDs starting with ``-``,
``class_labels_indices.csv`` with a quoted display name holding a comma) and
the PANNs audio layout (``audios/<split>_segments/Y<YTID>.wav``, unbalanced
audio in part subfolders), with one balanced segment whose audio is missing.
"""

import csv
import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from speechbrain.inference.classifiers import EncoderClassifier

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "AudioSet" / "tagging"
CLASSES = [
    ("/m/09x0r", "Speech"),
    ("/m/05zppz", "Male speech, man speaking"),
    ("/m/0jbk", "Animal"),
    ("/m/0bt9lr", "Dog"),
]
BALANCED = [
    ("--PJHxphWEs", 30.0, ["/m/09x0r", "/m/05zppz"]),
    ("-0RWZT-miFs", 420.0, ["/m/0jbk", "/m/0bt9lr"]),
    ("0Ax3J8U2hB4", 0.0, ["/m/0jbk"]),
    ("1dW2xSJB1zE", 12.5, ["/m/09x0r"]),
    ("MISSINGclip", 5.0, ["/m/0bt9lr"]),  # no audio file: skipped
]
UNBALANCED = [("2cS-ZW6EZ9M", 70.0, ["/m/0bt9lr"]), ("zz-Ikf5jsF8", 10.0, ["/m/09x0r"])]
EVAL = [
    ("-1nDzpRL0jE", 30.0, ["/m/09x0r"]),
    ("3KjcVKy-sLI", 40.0, ["/m/0jbk", "/m/0bt9lr"]),
    ("5Y8W1R2bs0o", 0.0, ["/m/05zppz", "/m/09x0r"]),
]


@pytest.fixture(scope="module")
def audioset_prepare():
    spec = importlib.util.spec_from_file_location(
        "audioset_prepare", RECIPE / "audioset_prepare.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write_segments(path: Path, segments):
    lines = [
        "# Segments csv created Sun Mar  5 10:54:31 2017",
        f"# num_ytids={len(segments)}, num_segs={len(segments)}, num_unique_labels=4, "
        "num_positive_labels=9",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    lines += [f'{y}, {s:.3f}, {s + 10:.3f}, "{",".join(m)}"' for y, s, m in segments]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_audioset(tmp_path, write_clip):
    """Metadata in ``<root>``, audio in ``<root>/audios`` (PANNs names)."""
    root = tmp_path / "audioset"
    root.mkdir()
    with open(root / "class_labels_indices.csv", "w", newline="") as fout:
        writer = csv.writer(fout, quoting=csv.QUOTE_NONNUMERIC)
        fout.write("index,mid,display_name\n")
        writer.writerows([i, mid, name] for i, (mid, name) in enumerate(CLASSES))
    audio = root / "audios"
    layout = {
        "balanced_train_segments": (BALANCED[:-1], ""),
        "unbalanced_train_segments": (UNBALANCED, "unbalanced_train_segments_part00/"),
        "eval_segments": (EVAL, ""),
    }
    for folder, (segments, part) in layout.items():
        for i, (ytid, _, _) in enumerate(segments):
            write_clip(audio / folder / f"{part}Y{ytid}.wav", 200.0 + 100 * i, 0.5 + 0.25 * (i % 3))
    _write_segments(root / "balanced_train_segments.csv", BALANCED)
    _write_segments(root / "unbalanced_train_segments.csv", UNBALANCED)
    _write_segments(root / "eval_segments.csv", EVAL)
    return root


def _read(path):
    with open(path, newline="") as fin:
        return list(csv.DictReader(fin))


def test_read_class_labels_and_segments(audioset_prepare, fake_audioset):
    assert audioset_prepare.read_class_labels(fake_audioset / "class_labels_indices.csv") == CLASSES
    segments = audioset_prepare.read_segments(fake_audioset / "balanced_train_segments.csv")
    assert segments == [(y, s, s + 10, m) for y, s, m in BALANCED]


def test_prepare_writes_manifests_and_counts_missing_audio(
    audioset_prepare, fake_audioset, tmp_path, caplog
):
    """Balanced + unbalanced train, eval; the missing clip is skipped with a warning."""
    with caplog.at_level(logging.WARNING):
        manifests = audioset_prepare.prepare_audioset(
            fake_audioset,
            tmp_path / "prep",
            fake_audioset / "audios",
            train_splits=["balanced_train", "unbalanced_train"],
        )
    train, evaluation = _read(manifests["train"]), _read(manifests["eval"])
    assert list(train[0]) == ["ID", "duration", "wav", "labels"]
    assert [r["ID"] for r in train] == [y for y, _, _ in BALANCED[:-1] + UNBALANCED]
    assert [r["labels"] for r in train] == [",".join(m) for _, _, m in BALANCED[:-1] + UNBALANCED]
    assert train[0]["wav"] == "$audio_root/balanced_train_segments/Y--PJHxphWEs.wav"
    assert train[-1]["wav"] == (
        "$audio_root/unbalanced_train_segments/unbalanced_train_segments_part00/Yzz-Ikf5jsF8.wav"
    )
    assert [float(r["duration"]) for r in train[:4]] == [0.5, 0.75, 1.0, 0.5]
    assert [r["ID"] for r in evaluation] == [y for y, _, _ in EVAL]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 of 5 segments skipped: 1 without an audio file" in warnings[0]
    assert "YMISSINGclip.wav" in warnings[0]


def test_prepare_with_another_naming_and_bad_labels(
    audioset_prepare, fake_audioset, tmp_path, write_clip, caplog
):
    """{ytid}.flac in bal_train / eval (Hugging Face layout), an unreadable file, a bad MID."""
    audio = tmp_path / "hf_audio"
    write_clip(audio / "bal_train" / f"{BALANCED[0][0]}.flac", 300.0)
    (audio / "bal_train" / f"{BALANCED[1][0]}.flac").write_bytes(b"not audio")
    write_clip(audio / "eval" / f"{EVAL[0][0]}.flac", 300.0)
    manifests = audioset_prepare.prepare_audioset(
        fake_audioset,
        tmp_path / "hf",
        audio,
        train_splits=["balanced_train"],
        split_folders={"balanced_train": "bal_train", "eval": "eval"},
        audio_file_template="{ytid}.flac",
    )
    assert [r["ID"] for r in _read(manifests["train"])] == [BALANCED[0][0]]
    assert "4 of 5 segments skipped: 3 without an audio file" in caplog.text
    assert f"1 unreadable (e.g. {audio / 'bal_train' / BALANCED[1][0]}.flac)" in caplog.text
    assert [r["wav"] for r in _read(manifests["eval"])] == [f"$audio_root/eval/{EVAL[0][0]}.flac"]

    text = (fake_audioset / "eval_segments.csv").read_text().replace("/m/0jbk,", "/m/unknown,")
    (fake_audioset / "eval_segments.csv").write_text(text)
    with pytest.raises(ValueError, match=r"segment 3KjcVKy-sLI: .*unknown: \['/m/unknown'\]"):
        audioset_prepare.prepare_audioset(
            fake_audioset, tmp_path / "bad", fake_audioset / "audios", ["balanced_train"]
        )


def test_recipe_end_to_end_from_scratch(
    fake_audioset, tmp_path, tiny_model_overrides, run_recipe, assert_success
):
    """Balanced sampling + mixup + rolling from scratch: mAP results and a loadable export."""
    output = tmp_path / "out"
    process = run_recipe(
        RECIPE / "train.py",
        RECIPE / "hparams" / "slap_base.yaml",
        f"--data_folder={fake_audioset}",
        f"--output_folder={output}",
        "--pretrained_model=",
        "--n_classes=4",
        "--batch_size=2",
        "--num_workers=0",
        *tiny_model_overrides,
    )
    assert_success(process)
    assert "training from scratch" in process.stderr + process.stdout
    results = json.loads((output / "test_results.json").read_text())
    assert results["metric"] == "mAP" and 0.0 < results["mAP"] <= 1.0
    assert results["n_clips"] == 3  # two debug batches of 2 cover the 3 eval clips
    assert "valid mAP" in (output / "train_log.txt").read_text()

    exported = output / "tagging_model"
    assert 'classifier_output: "sigmoid"' in (exported / "hyperparams.yaml").read_text()
    model = EncoderClassifier.from_hparams(
        source=str(exported), savedir=str(tmp_path / "savedir"), run_opts={"device": "cpu"}
    )
    wav = fake_audioset / "audios" / "eval_segments" / f"Y{EVAL[0][0]}.wav"
    scores, _, _, labels = model.classify_file(str(wav))
    assert scores.shape == (1, 4) and bool(((scores > 0) & (scores < 1)).all())
    assert labels[0] in [name for _, name in CLASSES]
    torch.testing.assert_close(
        torch.load(exported / "classifier.ckpt", weights_only=True)["linear.weight"],
        model.mods.classifier.linear.weight,
    )
