"""WavCaps continued pretraining on a fake copy of WavCaps' JSON metadata layout.

Four sources with their documented fields, a blacklist with an AudioSet and a
FreeSound item (whose audio exists), a SoundBible item without audio.
``wavcaps_prepare.py`` is checked against that ground truth; ``train.py``
runs once in ``--debug`` mode and its export must load.
"""

import json

import pytest
from retrieval_fixtures import (
    DEBUG_TRAIN_ARGS,
    WAVCAPS_BLACKLIST,
    WAVCAPS_MISSING,
    check_exit,
    import_recipe_module,
    load_model,
    make_fake_wavcaps,
    read_csv,
    run_script,
    tiny_model_args,
)

from speechbrain_slap.data.manifest import read_clips as read_manifest
from speechbrain_slap.model_folder import verify_checksums

PREPARE = "recipes/WavCaps/finetune/wavcaps_prepare.py"
BLACKLIST = "json_files/blacklist/blacklist_exclude_test_ac.json"


@pytest.fixture(scope="module")
def wavcaps(tmp_path_factory):
    """``(folder, items)``: the fake WavCaps and ``{(source, id): caption}``."""
    folder = tmp_path_factory.mktemp("WavCaps")
    return folder, make_fake_wavcaps(folder)


@pytest.fixture(scope="module")
def prepare():
    """``prepare_wavcaps``."""
    return import_recipe_module(PREPARE).prepare_wavcaps


def _clip_id(source, item_id):
    return f"{source}_{item_id.removesuffix('.wav')}"


def test_prepare_drops_blacklisted_and_missing_items(wavcaps, prepare, tmp_path):
    """Every usable item once, with its caption and file; the rest skipped by reason."""
    data, items = wavcaps
    report = prepare(data, tmp_path, blacklist_files=[BLACKLIST], n_valid=2, seed=0)
    blacklisted = {("AudioSet_SL", i) for i in WAVCAPS_BLACKLIST["AudioSet"]}
    blacklisted |= {("FreeSound", str(i)) for i in WAVCAPS_BLACKLIST["FreeSound"]}
    usable = {_clip_id(*key): caption for key, caption in items.items()}
    for key in blacklisted | WAVCAPS_MISSING:
        del usable[_clip_id(*key)]

    train = read_manifest(tmp_path / "train.csv", data)
    valid = read_manifest(tmp_path / "valid.csv", data)
    assert len(valid) == 2 and len(train) == len(usable) - 2
    clips = train + valid
    assert {c.id: c.captions for c in clips} == {k: [v] for k, v in usable.items()}
    files = {
        _clip_id(source, i): str(data / "audio" / source / f"{i.removesuffix('.wav')}.flac")
        for source, i in items
    }
    assert all(clip.wav == files[clip.id] for clip in clips)
    assert all(clip.duration == 1.0 for clip in clips)  # from the JSON
    skipped = {r["ID"]: r["reason"] for r in read_csv(tmp_path / "train_skipped.csv")}
    assert skipped == {
        **{_clip_id(*key): "blacklisted" for key in blacklisted},
        **{_clip_id(*key): "audio file missing" for key in WAVCAPS_MISSING},
    }
    assert report["train"]["skipped_by_reason"] == {"blacklisted": 2, "audio file missing": 1}

    # Without a blacklist, the blacklisted items (their audio exists) are kept;
    # the held-out draw depends on the seed only.
    report = prepare(data, tmp_path / "all", n_valid=2, seed=0)
    assert report["train"]["clips"] + report["valid"]["clips"] == len(usable) + 2


def test_prepare_fails_clearly_on_bad_input(wavcaps, prepare, tmp_path):
    """An unknown blacklist key, a malformed JSON file and too large a held-out split."""
    data, _ = wavcaps
    bad = tmp_path / "bad_blacklist.json"
    bad.write_text(json.dumps({"VGGSound": ["x"]}))
    with pytest.raises(ValueError, match=r"bad_blacklist\.json: unknown blacklist keys"):
        prepare(data, tmp_path / "a", blacklist_files=[str(bad)])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"data": [{"id": "1", "description": "no caption"}]}))
    with pytest.raises(ValueError, match=r'broken\.json: data\[0\] has no "id" and string'):
        prepare(data, tmp_path / "b", json_files={"SoundBible": str(broken)})
    with pytest.raises(ValueError, match="leaves no training clip"):
        prepare(data, tmp_path / "c", n_valid=100)


@pytest.fixture(scope="module")
def finetune(wavcaps, slap_model_folder, tmp_path_factory):
    """Output folder of a ``train.py --debug`` run on the fake WavCaps."""
    data, _ = wavcaps
    output = tmp_path_factory.mktemp("wavcaps_finetune")
    check_exit(
        run_script(
            "recipes/WavCaps/finetune/train.py",
            "recipes/WavCaps/finetune/hparams/wavcaps_finetune.yaml",
            f"--pretrained_model={slap_model_folder}",
            f"--data_folder={data}",
            f"--output_folder={output}",
            f"--blacklist_files=[{BLACKLIST}]",
            "--n_valid=2",
            *tiny_model_args(),
            *DEBUG_TRAIN_ARGS,
        )
    )
    return output


def test_continued_pretraining_exports_a_loadable_model(finetune):
    """The held-out split is re-scored; the export verifies and loads."""
    results = json.loads((finetune / "test_results.json").read_text())
    assert (results["n_audios"], results["n_texts"]) == (2, 2)  # 1 caption per WavCaps clip
    prepared = json.loads((finetune / "manifests" / "prepare.json").read_text())
    assert prepared["splits"]["valid"]["clips"] == 2
    assert prepared["splits"]["train"]["skipped_by_reason"]["blacklisted"] == 2
    assert "ssl_head.ckpt" in verify_checksums(finetune / "model")
    model = load_model(finetune / "model")
    assert model.encode_text(["A FreeSound sound number 0 is heard."]).shape == (1, 64)
