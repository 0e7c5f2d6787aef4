"""GTZAN zero-shot recipe on a tiny fake copy of the Kaggle and original layouts.

The Kaggle copy: ``Data/genres_original/<genre>/<genre>.000NN.wav`` (22,050 Hz
mono) for the 10 genres beside ``Data/images_original/`` and the feature
CSVs; clips in 3 genres, and a corrupt ``jazz.00054.wav`` that must be
skipped, counted and named. The original archive: ``genres/<genre>/*.au``.
"""

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

RECIPE = REPO / "recipes" / "GTZAN" / "zeroshot"
GENRES = [
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
]
# (genre, number, seconds)
CLIPS = [
    ("blues", 0, 0.7),
    ("blues", 1, 0.5),
    ("jazz", 53, 0.9),
    ("jazz", 55, 0.6),
    ("rock", 98, 1.0),
    ("rock", 99, 0.8),
]
CORRUPT = "jazz.00054"


@pytest.fixture(scope="module")
def prepare():
    return load_module(RECIPE / "gtzan_prepare.py", "gtzan_prepare")


@pytest.fixture(scope="module")
def fake_gtzan(tmp_path_factory):
    """The unpacked Kaggle archive (``Data/...``); returns its root."""
    root = tmp_path_factory.mktemp("gtzan") / "gtzan-dataset"
    genres = root / "Data" / "genres_original"
    for genre in GENRES:
        (genres / genre).mkdir(parents=True)
        (root / "Data" / "images_original" / genre).mkdir(parents=True)
    for i, (genre, number, seconds) in enumerate(CLIPS):
        write_clip(genres / genre / f"{genre}.{number:05d}.wav", seconds, 22050, seed=i)
    (genres / "jazz" / f"{CORRUPT}.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64))
    for name in ("features_30_sec.csv", "features_3_sec.csv"):
        (root / "Data" / name).write_text("filename,length,label\n")
    return root


def test_prepare_writes_the_manifest(prepare, fake_gtzan, tmp_path):
    """Every clip, the corrupt one with duration 0; the genre folder is the label."""
    manifest = prepare.prepare_gtzan(fake_gtzan, tmp_path)
    assert manifest == tmp_path / "gtzan.csv"
    rows = read_csv(manifest)
    assert list(rows[0]) == ["ID", "duration", "wav", "label", "fold"]
    expected = sorted(CLIPS + [("jazz", 54, 0.0)])
    assert len(rows) == len(expected)
    for row, (genre, number, seconds) in zip(rows, expected, strict=True):
        stem = f"{genre}.{number:05d}"
        assert (row["ID"], row["label"], row["fold"]) == (stem, genre, "all")
        assert row["wav"] == f"$data_root/Data/genres_original/{genre}/{stem}.wav"
        assert float(row["duration"]) == pytest.approx(seconds, abs=1e-4)

    # data_folder may also be the Data/ folder itself.
    rows = read_csv(prepare.prepare_gtzan(fake_gtzan / "Data", tmp_path / "data"))
    assert rows[0]["wav"] == "$data_root/genres_original/blues/blues.00000.wav"


def test_prepare_reads_the_original_archive(prepare, tmp_path):
    root = tmp_path / "GTZAN"
    for i, (genre, number, seconds) in enumerate(CLIPS):
        path = root / "genres" / genre / f"{genre}.{number:05d}.au"
        write_clip(path, seconds, 22050, seed=i, file_format="AU")
    (root / "genres" / "bl.mf").write_text("blues/blues.00000.au\tblues\n")
    rows = read_csv(prepare.prepare_gtzan(root, tmp_path / "save"))
    assert [(r["ID"], r["wav"]) for r in rows[:1]] == [
        ("blues.00000", "$data_root/genres/blues/blues.00000.au")
    ]
    assert [float(r["duration"]) for r in rows] == pytest.approx([c[2] for c in sorted(CLIPS)])


def test_prepare_names_what_is_wrong(prepare, tmp_path):
    with pytest.raises(FileNotFoundError, match="genres_original"):
        prepare.prepare_gtzan(tmp_path, tmp_path / "a")
    root = tmp_path / "GTZAN"
    write_clip(root / "genres_original" / "rock" / "pop.00001.wav", 0.5, 22050)
    with pytest.raises(ValueError, match=r"pop.00001.wav: expected a name rock.000NN.wav"):
        prepare.prepare_gtzan(root, tmp_path / "b")


def test_evaluate_end_to_end(fake_gtzan, slap_model_folder, tmp_path):
    """The corrupt clip is skipped, counted and named; the others are all evaluated."""
    output = tmp_path / "out"
    run_evaluate(RECIPE, fake_gtzan, output, slap_model_folder)
    manifest = read_csv(output / "save" / "gtzan.csv")
    hparams = recipe_hparams(RECIPE, fake_gtzan, slap_model_folder)
    results = check_evaluation(
        output, hparams, manifest, fake_gtzan, slap_model_folder, skipped_ids=(CORRUPT,)
    )
    assert results["n_clips"] == len(CLIPS) + 1 and results["n_evaluated"] == len(CLIPS)
    (skipped,) = results["skipped"]
    assert skipped["wav"].endswith("Data/genres_original/jazz/jazz.00054.wav")
    assert "cannot decode audio" in skipped["reason"]
    assert "jazz.00054" in (output / "log.txt").read_text()
    assert results["n_per_class"]["jazz"] == 2
    assert results["label_names"][4] == "hip hop"
