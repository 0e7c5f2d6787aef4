"""Speech Commands v2 tagging recipe on a tiny fake ``speech_commands_v0.02`` (3 words).

The fake copy has the official flat layout: word folders of
``<speaker>_nohash_<n>.wav``, ``_background_noise_/`` (excluded),
``validation_list.txt`` and ``testing_list.txt``, ``README.md``, ``LICENSE``.
The recipe runs from a tiny pretrained SLAP folder with ``lr=0``, so the
exported encoder must be exactly the pretrained one.
"""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "SpeechCommands" / "tagging"
WORDS = ["dog", "no", "yes"]
SPEAKERS = ["0a7c2a8d", "1b4c9b89", "2c6d3e2f", "3d8e4a1b"]
VALID = ["dog/1b4c9b89_nohash_0.wav", "no/1b4c9b89_nohash_0.wav", "yes/1b4c9b89_nohash_0.wav"]
TEST = ["dog/2c6d3e2f_nohash_0.wav", "no/2c6d3e2f_nohash_0.wav", "yes/2c6d3e2f_nohash_1.wav"]


@pytest.fixture(scope="module")
def speechcommands_prepare():
    path = RECIPE / "speechcommands_prepare.py"
    spec = importlib.util.spec_from_file_location("speechcommands_prepare", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_speech_commands(tmp_path, write_clip):
    root = tmp_path / "speech_commands_v0.02"
    for w, word in enumerate(WORDS):
        for s, speaker in enumerate(SPEAKERS):
            takes = (0, 1) if (word, speaker) == ("yes", "2c6d3e2f") else (0,)
            for take in takes:
                duration = 1.0 if s % 2 == 0 else 0.8  # a few clips are shorter than 1 s
                write_clip(root / word / f"{speaker}_nohash_{take}.wav", 250.0 * (w + 1), duration)
    write_clip(root / "_background_noise_" / "white_noise.wav", 1000.0, 1.0)
    (root / "_background_noise_" / "README.md").write_text("background noise\n")
    (root / "validation_list.txt").write_text("\n".join(VALID) + "\n")
    (root / "testing_list.txt").write_text("\n".join(TEST) + "\n")
    (root / "README.md").write_text("Speech Commands v0.02\n")
    (root / "LICENSE").write_text("CC BY 4.0\n")
    return root


def _read(path):
    with open(path, newline="") as fin:
        return list(csv.DictReader(fin))


def test_prepare_splits_by_the_official_lists(
    speechcommands_prepare, fake_speech_commands, tmp_path
):
    """valid/test = the lists, train = every other word clip, background noise excluded."""
    assert speechcommands_prepare.word_folders(fake_speech_commands) == WORDS
    manifests = speechcommands_prepare.prepare_speech_commands(fake_speech_commands, tmp_path / "p")
    rows = {split: _read(path) for split, path in manifests.items()}
    assert list(rows["train"][0]) == ["ID", "duration", "wav", "label", "speaker"]
    assert [r["wav"] for r in rows["valid"]] == [f"$data_root/{e}" for e in VALID]
    assert [r["wav"] for r in rows["test"]] == [f"$data_root/{e}" for e in TEST]
    assert len(rows["train"]) == 3 * 4 + 1 - 6
    assert {r["speaker"] for r in rows["train"]} == {"0a7c2a8d", "2c6d3e2f", "3d8e4a1b"}
    listed = set(VALID) | set(TEST)
    for row in rows["train"]:
        assert row["wav"].removeprefix("$data_root/") not in listed
        assert row["label"] == row["ID"].split("/")[0]
        assert float(row["duration"]) in (0.8, 1.0)
    assert not any("_background_noise_" in r["wav"] for split in rows.values() for r in split)
    assert rows["test"][0]["ID"] == "dog/2c6d3e2f_nohash_0"


def test_prepare_word_subset_and_broken_copy(
    speechcommands_prepare, fake_speech_commands, tmp_path
):
    manifests = speechcommands_prepare.prepare_speech_commands(
        fake_speech_commands, tmp_path / "sub", words=["no", "yes"]
    )
    assert {r["label"] for r in _read(manifests["test"])} == {"no", "yes"}
    (fake_speech_commands / TEST[1]).unlink()
    with pytest.raises(FileNotFoundError, match="1 clips of the validation/testing lists"):
        speechcommands_prepare.prepare_speech_commands(fake_speech_commands, tmp_path / "bad")


def test_recipe_end_to_end_keeps_the_pretrained_encoder(
    fake_speech_commands,
    tmp_path,
    make_slap_model_folder,
    tiny_model_overrides,
    run_recipe,
    assert_success,
):
    """From a pretrained folder with lr = 0 (augmenting log-mels): the export holds its weights."""
    model, modules = make_slap_model_folder(tmp_path / "slap_model", seed=7)
    output = tmp_path / "out"
    process = run_recipe(
        RECIPE / "train.py",
        RECIPE / "hparams" / "slap_base.yaml",
        f"--data_folder={fake_speech_commands}",
        f"--output_folder={output}",
        f"--pretrained_model={model}",
        "--n_classes=3",
        "--batch_size=4",
        "--num_workers=0",
        "--lr=0.0",
        "--augment_on=features",
        *tiny_model_overrides,
    )
    assert_success(process)
    results = json.loads((output / "test_results.json").read_text())
    assert results["metric"] == "accuracy" and results["n_clips"] == 3
    assert results["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)

    exported = torch.load(output / "tagging_model" / "embedding_model.ckpt", weights_only=True)
    for part in ("audio_encoder", "audio_pooling"):
        for key, value in modules[part].state_dict().items():
            torch.testing.assert_close(exported[f"{part}.{key}"], value, rtol=0, atol=0)
    encoder_file = output / "save" / "pretrained_model" / "audio_encoder.ckpt"
    assert encoder_file.resolve() == (model / "audio_encoder.ckpt").resolve()
    assert "Speech Commands v2 (3 words)" in (output / "tagging_model" / "README.md").read_text()
