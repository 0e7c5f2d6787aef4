"""Tests for the zero-shot evaluation (evaluation.py): accuracy report, batching, skipping.

``evaluate_zero_shot`` is run with a stand-in model whose embeddings are known
(the class of a clip is coded in its length), so every accuracy has a
hand-computed value.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from speechbrain_slap.data.audio import load_audio
from speechbrain_slap.data.manifest import read_labelled_manifest as read_manifest
from speechbrain_slap.data.manifest import write_labelled_manifest as write_manifest
from speechbrain_slap.evaluation import accuracy_report, confusion_matrix, evaluate_zero_shot
from speechbrain_slap.evaluation import embed_files as embed_clips
from speechbrain_slap.metrics import zero_shot_accuracy
from speechbrain_slap.plots import plot_confusion_matrix

RATE = 1000  # the stand-in model's sample rate
STEP = 0.1  # a clip of class k lasts (k + 1) * STEP seconds


class LengthCodedModel:
    """Stands in for ``SLAP``: the embedding of a clip is the one-hot of its length code.

    A clip of ``(k + 1) * STEP`` seconds embeds to ``e_k``; class ``i`` of the
    label list embeds to ``e_i``. Records every call so tests can check what the
    evaluator passed.
    """

    sample_rate = RATE

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self.groups, self.label_calls = [], []

    def load_audio(self, path):
        return load_audio(path, RATE)

    def encode_waveforms(self, clips):
        self.groups.append([c.numel() for c in clips])
        codes = [round(c.numel() / (RATE * STEP)) - 1 for c in clips]
        return torch.nn.functional.one_hot(torch.tensor(codes), self.n_classes).float()

    def label_embeddings(self, labels, templates):
        self.label_calls.append((list(labels), list(templates)))
        return torch.eye(self.n_classes)[: len(labels)]

    def scores_from_embeddings(self, audio, classes):
        return torch.log_softmax(10.0 * audio @ classes.T, dim=-1)


def write_tone(path: Path, seconds: float, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = int(round(seconds * rate))
    soundfile.write(path, 0.1 * np.sin(np.arange(samples) * 0.3), rate, "PCM_16")
    return path


# -- accuracy_report and confusion_matrix ----------------------------------------------------------
def test_accuracy_report_hand_made():
    """Folds of unequal size: the fold mean differs from the overall accuracy."""
    predictions = [0, 1, 2, 0, 1, 1, 2]
    targets = [0, 1, 2, 1, 0, 2, 2]
    folds = ["2", "2", "2", "2", "10", "10", "10"]
    report = accuracy_report(predictions, targets, folds, ["a", "b", "c", "d"])
    assert report["accuracy"] == pytest.approx(4 / 7)
    assert list(report["fold_accuracy"]) == ["2", "10"]  # numeric order, not "10" < "2"
    assert report["fold_accuracy"] == pytest.approx({"2": 3 / 4, "10": 1 / 3})
    assert report["fold_mean_accuracy"] == pytest.approx((3 / 4 + 1 / 3) / 2)
    assert report["n_per_fold"] == {"2": 4, "10": 3}
    assert report["n_evaluated"] == 7
    per_class = report["per_class_accuracy"]
    assert [per_class[k] for k in "abc"] == pytest.approx([1 / 2, 1 / 2, 2 / 3])
    assert per_class["d"] is None
    assert report["n_per_class"] == {"a": 2, "b": 2, "c": 3, "d": 0}
    assert report["confusion_matrix"] == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 2, 0],
        [0, 0, 0, 0],
    ]


def test_argmax_accuracy_agrees_with_zero_shot_accuracy():
    """On continuous scores (no ties) argmax accuracy is metrics.zero_shot_accuracy."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 7, generator=generator)
    targets = torch.randint(0, 7, (200,), generator=generator)
    report = accuracy_report(scores.argmax(dim=1), targets, ["all"] * 200, list("abcdefg"))
    assert report["accuracy"] == pytest.approx(zero_shot_accuracy(scores, targets))
    assert report["fold_mean_accuracy"] == report["accuracy"]


def test_confusion_matrix_against_loops():
    generator = torch.Generator().manual_seed(1)
    predictions = torch.randint(0, 5, (300,), generator=generator)
    targets = torch.randint(0, 5, (300,), generator=generator)
    reference = [[0] * 5 for _ in range(5)]
    for p, t in zip(predictions.tolist(), targets.tolist(), strict=True):
        reference[t][p] += 1
    assert confusion_matrix(predictions, targets, 5).tolist() == reference
    with pytest.raises(ValueError, match=r"targets must index \[0, 5\)"):
        confusion_matrix([0, 1], [0, 5], 5)
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix([0, 1], [0], 5)


# -- manifests ----------------------------------------------------------------------------------
def test_manifest_round_trip_and_errors(tmp_path):
    rows = [
        dict(ID="x1", duration=0.5, wav="$data_root/x1.wav", label="dog", fold=1),
        dict(ID="x2", duration=0.7, wav="$data_root/x2.wav", label="cat", fold=2),
    ]
    path = write_manifest(rows, tmp_path / "m.csv")
    read = read_manifest(path, ["cat", "dog"], replacements={"data_root": "/data"})
    assert [(r["ID"], r["target"], r["fold"], r["wav"]) for r in read] == [
        ("x1", 1, "1", "/data/x1.wav"),
        ("x2", 0, "2", "/data/x2.wav"),
    ]
    with pytest.raises(ValueError, match=r"line 3 \(x2\): label 'cat' is not one of"):
        read_manifest(path, ["dog", "cow"])
    with pytest.raises(ValueError, match=r"missing columns \['category'\]"):
        read_manifest(path, ["dog", "cat"], label_field="category")
    with pytest.raises(ValueError, match="labels must be distinct"):
        read_manifest(path, ["dog", "dog"])
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv", ["dog"])
    with pytest.raises(ValueError, match="'x1' appears twice"):
        write_manifest(rows + rows[:1], tmp_path / "twice.csv")
    with pytest.raises(ValueError, match=r"lacks fields \['fold'\]"):
        write_manifest([dict(ID="a", duration=1, wav="a", label="dog")], tmp_path / "f.csv")


# -- embed_clips --------------------------------------------------------------------------------
def test_embed_clips_groups_by_seconds_and_skips_unreadable(tmp_path):
    """Groups close before exceeding the budget; a longer clip is a group of its own."""
    seconds = [0.1, 0.2, 0.1, 0.4, 0.1, 0.1]  # codes 0, 1, 0, 3, 0, 0
    wavs = [write_tone(tmp_path / f"{i}.wav", s) for i, s in enumerate(seconds)]
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    wavs.insert(2, tmp_path / "bad.wav")
    wavs.append(tmp_path / "missing.wav")
    model = LengthCodedModel(4)
    embeddings, read, skipped = embed_clips(model, wavs, batch_seconds=0.3, progress=False)
    assert model.groups == [[100, 200], [100], [400], [100, 100]]
    assert read == [0, 1, 3, 4, 5, 6]
    assert [i for i, _ in skipped] == [2, 7]
    assert "cannot decode audio" in skipped[0][1] and skipped[1][1] == "file not found"
    assert embeddings.argmax(dim=1).tolist() == [0, 1, 0, 3, 0, 0]

    with pytest.raises(ValueError, match="none of the 2 audio files could be read"):
        embed_clips(model, [tmp_path / "bad.wav", tmp_path / "missing.wav"], progress=False)


# -- evaluate_zero_shot --------------------------------------------------------------------------
def test_evaluate_zero_shot_known_accuracy(tmp_path):
    """8 clips in 2 folds, 2 mislabelled, 1 unreadable: every number known in advance."""
    labels = ["dog_bark", "siren", "rain"]
    # (ID, class coded in the audio, label in the manifest, fold)
    clips = [
        ("a", 0, "dog_bark", "1"),
        ("b", 1, "siren", "1"),
        ("c", 2, "rain", "1"),
        ("d", 2, "siren", "1"),  # predicted rain
        ("e", 0, "dog_bark", "2"),
        ("f", 1, "rain", "2"),  # predicted siren
        ("g", 1, "siren", "2"),
    ]
    rows = []
    for clip_id, code, label, fold in clips:
        write_tone(tmp_path / "audio" / f"{clip_id}.wav", (code + 1) * STEP, rate=2 * RATE)
        rows.append(dict(ID=clip_id, duration=0, wav=f"$root/audio/{clip_id}.wav", category=label,
                         fold=fold))  # fmt: skip
    (tmp_path / "audio" / "h.wav").write_bytes(b"not audio at all")
    rows.append(dict(ID="h", duration=0, wav="$root/audio/h.wav", category="rain", fold="2"))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fout:
        writer = csv.DictWriter(fout, fieldnames=["ID", "duration", "wav", "category", "fold"])
        writer.writeheader()
        writer.writerows(rows)

    model = LengthCodedModel(len(labels))
    templates = ["This is a sound of {label}.", "{label} can be heard."]
    output = tmp_path / "out"
    results = evaluate_zero_shot(
        model,
        manifest,
        labels,
        templates,
        output,
        label_names=["dog barking", "siren", "rain"],
        label_field="category",
        replacements={"root": tmp_path},
        progress=False,
        info={"dataset": "toy"},
    )
    assert model.label_calls == [(["dog barking", "siren", "rain"], templates)]
    assert results["accuracy"] == pytest.approx(5 / 7)
    assert results["fold_accuracy"] == pytest.approx({"1": 3 / 4, "2": 2 / 3})
    assert results["fold_mean_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert (results["n_clips"], results["n_evaluated"], results["n_skipped"]) == (8, 7, 1)
    assert results["skipped"][0]["ID"] == "h"
    assert results["skipped"][0]["wav"] == str(tmp_path / "audio" / "h.wav")
    assert results["confusion_matrix"] == [[2, 0, 0], [0, 2, 1], [0, 1, 1]]
    assert results["info"] == {"dataset": "toy"}

    assert json.loads((output / "results.json").read_text()) == results
    with open(output / "predictions.csv", newline="") as fin:
        predictions = list(csv.DictReader(fin))
    assert [(p["ID"], p["fold"], p["label"], p["prediction"]) for p in predictions] == [
        ("a", "1", "dog_bark", "dog_bark"),
        ("b", "1", "siren", "siren"),
        ("c", "1", "rain", "rain"),
        ("d", "1", "siren", "rain"),
        ("e", "2", "dog_bark", "dog_bark"),
        ("f", "2", "rain", "siren"),
        ("g", "2", "siren", "siren"),
    ]
    best = torch.log_softmax(torch.tensor([10.0, 0.0, 0.0]), dim=0)[0].item()
    assert float(predictions[0]["log_prob"]) == pytest.approx(best, abs=1e-6)
    assert (output / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    with pytest.raises(ValueError, match="got 2 label names for 3 labels"):
        evaluate_zero_shot(model, manifest, labels, templates, output, label_names=["a", "b"])


def test_plot_confusion_matrix_many_classes(tmp_path):
    """50 classes (ESC-50) plot without cell annotations; a wrong shape is refused."""
    matrix = torch.eye(50, dtype=torch.int64) * 8
    png = plot_confusion_matrix(matrix, [f"class {i}" for i in range(50)], tmp_path / "c.png")
    assert png.stat().st_size > 10000
    with pytest.raises(ValueError, match=r"matrix must be \(3, 3\)"):
        plot_confusion_matrix(matrix, ["a", "b", "c"], tmp_path / "d.png")
