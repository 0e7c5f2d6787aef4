"""CREMA-D zero-shot recipe on a tiny fake clone of the CREMA-D repository.

The fake copy has the official layout: ``AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav``
(16 kHz mono) beside ``AudioMP3/`` and the repository's CSV files; 3 of the 6
emotions, 2 actors, and the near-empty ``1076_MTI_SAD_XX.wav`` that the
recipe leaves out.
"""

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

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

RECIPE = REPO / "recipes" / "CREMA-D" / "zeroshot"
# (actor, sentence, emotion, level, seconds)
CLIPS = [
    ("1001", "DFA", "ANG", "XX", 0.9),
    ("1001", "IEO", "HAP", "HI", 0.6),
    ("1001", "TIE", "SAD", "XX", 0.7),
    ("1089", "IEO", "ANG", "LO", 0.5),
    ("1089", "WSI", "HAP", "XX", 0.8),
    ("1089", "ITS", "SAD", "MD", 1.0),
]


@pytest.fixture(scope="module")
def prepare():
    return load_module(RECIPE / "cremad_prepare.py", "cremad_prepare")


@pytest.fixture(scope="module")
def fake_cremad(tmp_path_factory):
    """A CREMA-D folder with the clips of ``CLIPS`` and the near-empty 1076 clip."""
    root = tmp_path_factory.mktemp("cremad") / "CREMA-D"
    for i, (actor, sentence, emotion, level, seconds) in enumerate(CLIPS):
        write_clip(
            root / "AudioWAV" / f"{actor}_{sentence}_{emotion}_{level}.wav", seconds, 16000, seed=i
        )
    soundfile.write(root / "AudioWAV" / "1076_MTI_SAD_XX.wav", np.zeros(800), 16000, "PCM_16")
    (root / "AudioMP3").mkdir()
    (root / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n")
    (root / "SentenceFilenames.csv").write_text("Stimulus_Number,Filename\n")
    return root


def test_prepare_writes_the_manifest(prepare, fake_cremad, tmp_path):
    """One row per clip, emotion code as label, one fold; the near-empty clip left out."""
    manifest = prepare.prepare_cremad(fake_cremad, tmp_path)
    assert manifest == tmp_path / "cremad.csv"
    rows = read_csv(manifest)
    assert list(rows[0]) == ["ID", "duration", "wav", "label", "fold", "actor", "sentence", "level"]
    expected = sorted(CLIPS)
    assert len(rows) == len(expected)
    for row, (actor, sentence, emotion, level, seconds) in zip(rows, expected, strict=True):
        name = f"{actor}_{sentence}_{emotion}_{level}"
        assert (row["ID"], row["wav"]) == (name, f"$data_root/AudioWAV/{name}.wav")
        assert (row["label"], row["fold"]) == (emotion, "all")
        assert (row["actor"], row["sentence"], row["level"]) == (actor, sentence, level)
        assert float(row["duration"]) == pytest.approx(seconds, abs=1e-4)

    kept = prepare.prepare_cremad(fake_cremad, tmp_path / "all", exclude=())
    assert "1076_MTI_SAD_XX" in {r["ID"] for r in read_csv(kept)}


def test_prepare_names_what_is_wrong(prepare, fake_cremad, tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="AudioWAV not found"):
        prepare.prepare_cremad(fake_cremad / "AudioMP3", tmp_path / "a")

    broken = tmp_path / "CREMA-D"
    write_clip(broken / "AudioWAV" / "1001_DFA_XYZ_XX.wav", 0.5, 16000)
    with pytest.raises(ValueError, match=r"1001_DFA_XYZ_XX.wav: emotion 'XYZ' is not one of"):
        prepare.prepare_cremad(broken, tmp_path / "b")

    # A git-lfs pointer (the repository downloaded as a zip) is kept, with a warning.
    (broken / "AudioWAV" / "1001_DFA_XYZ_XX.wav").unlink()
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 52044\n"
    (broken / "AudioWAV" / "1001_DFA_ANG_XX.wav").write_text(pointer)
    with caplog.at_level(logging.WARNING):
        rows = read_csv(prepare.prepare_cremad(broken, tmp_path / "c"))
    assert [(r["ID"], float(r["duration"])) for r in rows] == [("1001_DFA_ANG_XX", 0.0)]
    assert "git-lfs pointer" in caplog.text and "1001_DFA_ANG_XX.wav" in caplog.text


def test_evaluate_end_to_end(fake_cremad, slap_model_folder, tmp_path):
    """All clips in one fold, 'all'; fold mean equals the overall accuracy."""
    output = tmp_path / "out"
    run_evaluate(RECIPE, fake_cremad, output, slap_model_folder)
    manifest = read_csv(output / "save" / "cremad.csv")
    hparams = recipe_hparams(RECIPE, fake_cremad, slap_model_folder)
    results = check_evaluation(output, hparams, manifest, fake_cremad, slap_model_folder)
    assert results["n_clips"] == len(CLIPS)
    assert list(results["fold_accuracy"]) == ["all"]
    assert results["fold_mean_accuracy"] == pytest.approx(results["accuracy"])
    assert results["label_names"] == ["angry", "disgusted", "fearful", "happy", "neutral", "sad"]
