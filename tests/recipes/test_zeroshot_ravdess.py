"""RAVDESS zero-shot recipe on a tiny fake copy of the speech audio-only set.

The fake copy has the official layout, ``Actor_NN/MM-CC-EE-II-SS-RR-AA.wav``
(48 kHz, 16-bit): 2 actors, 3 of the 8 emotions (neutral only at normal
intensity, as in RAVDESS). The end-to-end run uses the Kaggle layout, which
repeats the actor folders under ``audio_speech_actors_01-24/``; each clip
must be evaluated once.
"""

import shutil
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

RECIPE = REPO / "recipes" / "RAVDESS" / "zeroshot"
# (emotion code, intensity, statement, repetition, seconds) for each actor
CLIPS = [
    ("01", "01", "01", "01", 0.6),
    ("01", "01", "02", "01", 0.7),
    ("03", "01", "01", "02", 0.8),
    ("03", "02", "02", "01", 0.5),
    ("05", "02", "01", "01", 0.9),
    ("05", "01", "02", "02", 1.0),
]
ACTORS = ("01", "02")
NAMES = {"01": "neutral", "03": "happy", "05": "angry"}


def _write_actors(root):
    for a, actor in enumerate(ACTORS):
        for i, (emotion, intensity, statement, repetition, seconds) in enumerate(CLIPS):
            name = f"03-01-{emotion}-{intensity}-{statement}-{repetition}-{actor}.wav"
            write_clip(root / f"Actor_{actor}" / name, seconds, 48000, seed=10 * a + i)


@pytest.fixture(scope="module")
def prepare():
    return load_module(RECIPE / "ravdess_prepare.py", "ravdess_prepare")


@pytest.fixture(scope="module")
def fake_ravdess(tmp_path_factory):
    """The unpacked Audio_Speech_Actors_01-24.zip: Actor_01 and Actor_02."""
    root = tmp_path_factory.mktemp("ravdess") / "RAVDESS"
    _write_actors(root)
    return root


@pytest.fixture(scope="module")
def fake_ravdess_kaggle(fake_ravdess, tmp_path_factory):
    """The Kaggle copy: the actor folders, and again under audio_speech_actors_01-24/."""
    root = tmp_path_factory.mktemp("ravdess_kaggle") / "ravdess-emotional-speech-audio"
    for actor in ACTORS:
        folder = fake_ravdess / f"Actor_{actor}"
        shutil.copytree(folder, root / folder.name)
        shutil.copytree(folder, root / "audio_speech_actors_01-24" / folder.name)
    return root


def test_prepare_writes_the_manifest(prepare, fake_ravdess, tmp_path):
    """One row per clip, emotion names from the EE field, one fold."""
    manifest = prepare.prepare_ravdess(fake_ravdess, tmp_path)
    assert manifest == tmp_path / "ravdess.csv"
    rows = read_csv(manifest)
    assert list(rows[0]) == [
        "ID",
        "duration",
        "wav",
        "label",
        "fold",
        "actor",
        "intensity",
        "statement",
        "repetition",
    ]
    expected = [(actor, *clip) for actor in ACTORS for clip in CLIPS]
    assert len(rows) == len(expected)
    for row, (actor, emotion, intensity, statement, repetition, seconds) in zip(
        rows, sorted(expected), strict=True
    ):
        stem = f"03-01-{emotion}-{intensity}-{statement}-{repetition}-{actor}"
        assert (row["ID"], row["wav"]) == (stem, f"$data_root/Actor_{actor}/{stem}.wav")
        assert (row["label"], row["fold"]) == (NAMES[emotion], "all")
        assert (row["actor"], row["intensity"]) == (actor, intensity)
        assert (row["statement"], row["repetition"]) == (statement, repetition)
        assert float(row["duration"]) == pytest.approx(seconds, abs=1e-4)


def test_prepare_reads_the_nested_copy_alone(prepare, fake_ravdess, tmp_path):
    nested = tmp_path / "kaggle"
    shutil.copytree(fake_ravdess, nested / "audio_speech_actors_01-24")
    rows = read_csv(prepare.prepare_ravdess(nested, tmp_path / "save"))
    assert len(rows) == len(ACTORS) * len(CLIPS)
    assert rows[0]["wav"] == f"$data_root/audio_speech_actors_01-24/Actor_01/{rows[0]['ID']}.wav"


def test_prepare_leaves_out_song_and_names_errors(prepare, tmp_path):
    with pytest.raises(FileNotFoundError, match="no Actor_01 ... Actor_24 folders"):
        prepare.prepare_ravdess(tmp_path, tmp_path / "a")

    root = tmp_path / "RAVDESS"
    write_clip(root / "Actor_03" / "03-01-08-02-01-01-03.wav", 0.5, 48000)
    write_clip(root / "Actor_03" / "03-02-03-01-01-01-03.wav", 0.5, 48000)  # song
    rows = read_csv(prepare.prepare_ravdess(root, tmp_path / "b"))
    assert [(r["ID"], r["label"]) for r in rows] == [("03-01-08-02-01-01-03", "surprised")]

    write_clip(root / "Actor_03" / "03-01-08-02-01-01-04.wav", 0.5, 48000)
    with pytest.raises(ValueError, match="actor 04 in the name, but in folder Actor_03"):
        prepare.prepare_ravdess(root, tmp_path / "c")


def test_evaluate_end_to_end(fake_ravdess_kaggle, slap_model_folder, tmp_path):
    """The Kaggle copy: every clip once (top-level actor folders), one fold 'all'."""
    output = tmp_path / "out"
    run_evaluate(RECIPE, fake_ravdess_kaggle, output, slap_model_folder)
    manifest = read_csv(output / "save" / "ravdess.csv")
    assert len(manifest) == len(ACTORS) * len(CLIPS)
    hparams = recipe_hparams(RECIPE, fake_ravdess_kaggle, slap_model_folder)
    results = check_evaluation(output, hparams, manifest, fake_ravdess_kaggle, slap_model_folder)
    assert list(results["fold_accuracy"]) == ["all"]
    assert results["n_per_class"] == {
        "neutral": 4,
        "calm": 0,
        "happy": 4,
        "sad": 0,
        "angry": 4,
        "fearful": 0,
        "disgust": 0,
        "surprised": 0,
    }
