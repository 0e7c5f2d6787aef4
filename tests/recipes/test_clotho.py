"""Clotho v2.1 recipes on a fake copy of the official layout.

File names with spaces and commas, a missing clip in development and in
evaluation. ``clotho_prepare.py`` is checked against the fake dataset; then
zero-shot retrieval, fine-tuning (``--debug``) and captioning each run once in
a subprocess. Captions are written but not scored here (the AudioCaps test
scores them through the same code).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from retrieval_fixtures import (
    DEBUG_TRAIN_ARGS,
    REPO,
    brute_force_recall,
    check_exit,
    import_recipe_module,
    load_model,
    make_fake_clotho,
    read_csv,
    run_script,
    tiny_model_args,
)

from speechbrain_slap.data.manifest import read_clips as read_manifest

FOLDERS = {"train": "development", "valid": "validation", "test": "evaluation"}


@pytest.fixture(scope="module")
def clotho(tmp_path_factory):
    """``(folder, expected)``: the fake Clotho v2.1."""
    folder = tmp_path_factory.mktemp("clotho")
    return folder, make_fake_clotho(folder)


def test_prepare_keeps_names_with_spaces_and_commas(clotho, tmp_path):
    """IDs are the file names, paths resolve, 5 captions each, missing clips listed."""
    data, expected = clotho
    report = import_recipe_module("recipes/Clotho/clotho_prepare.py").prepare_clotho(data, tmp_path)
    for split, folder in FOLDERS.items():
        clips = read_manifest(tmp_path / f"{split}.csv", data)
        present = [e for e in expected[folder] if e[3]]
        assert [c.id for c in clips] == [Path(e[0]).stem for e in present]
        assert [Path(c.wav) for c in clips] == [data / folder / e[0] for e in present]
        assert [c.captions for c in clips] == [e[1] for e in present]
        assert [c.duration for c in clips] == pytest.approx([e[2] for e in present])
        missing = [Path(e[0]).stem for e in expected[folder] if not e[3]]
        assert report[split]["skipped"] == len(missing)
        if missing:
            assert [r["ID"] for r in read_csv(tmp_path / f"{split}_skipped.csv")] == missing
    assert (report["train"]["clips"], report["valid"]["clips"], report["test"]["clips"]) == (
        4,
        2,
        3,
    )


def test_prepare_fails_clearly_on_a_wrong_csv(clotho, tmp_path):
    """A captions CSV without caption_N columns names the file."""
    prepare = import_recipe_module("recipes/Clotho/clotho_prepare.py").prepare_clotho
    (tmp_path / "clotho_captions_evaluation.csv").write_text("file_name,text\na.wav,x\n")
    with pytest.raises(ValueError, match=r"clotho_captions_evaluation\.csv: expected the columns"):
        prepare(tmp_path, tmp_path / "out", splits=["test"])
    with pytest.raises(ValueError, match="unknown Clotho splits"):
        prepare(tmp_path, tmp_path / "out", splits=["evaluation"])


def test_finetuning_never_crops_clotho():
    """Clips are 15-30 s: the fine-tuning yaml's max_duration keeps them whole."""
    from ruamel.yaml import YAML

    yaml = REPO / "recipes" / "Clotho" / "retrieval" / "hparams" / "finetune.yaml"
    assert YAML().load(yaml.read_text())["max_duration"] >= 30.0


@pytest.fixture(scope="module")
def zeroshot(clotho, slap_model_folder, tmp_path_factory):
    """Output folder of ``retrieval/evaluate.py`` with the tiny session model."""
    data, _ = clotho
    output = tmp_path_factory.mktemp("clotho_zeroshot")
    check_exit(
        run_script(
            "recipes/Clotho/retrieval/evaluate.py",
            "recipes/Clotho/retrieval/hparams/zeroshot.yaml",
            f"--pretrained_model={slap_model_folder}",
            f"--data_folder={data}",
            f"--output_folder={output}",
        )
    )
    return output


def test_zeroshot_results_are_the_saved_embeddings_metrics(zeroshot):
    """Gallery sizes and R@k recomputed by brute force from the saved embeddings."""
    results = json.loads((zeroshot / "results.json").read_text())
    for split, n_audios in {"valid": 2, "test": 3}.items():
        metrics = results[split]
        assert (metrics["n_audios"], metrics["n_texts"]) == (n_audios, 5 * n_audios)
        saved = torch.load(zeroshot / f"{split}_embeddings.pt", weights_only=False)
        similarity = (saved["text"] @ saved["audio"].T).double().numpy()
        t2a, a2t = brute_force_recall(similarity, saved["text_to_audio"].numpy(), 1)
        assert (metrics["t2a_R@1"], metrics["a2t_R@1"]) == pytest.approx((t2a, a2t))
    assert results["test"]["n_a2t_queries"] == 3
    assert saved["clip_ids"] == ["Bells of St. Mary", "wind, leaves and a dog", "Typing fast"]
    assert results["prepare"]["test"]["skipped_by_reason"] == {"audio file missing": 1}


@pytest.fixture(scope="module")
def finetune(clotho, slap_model_folder, tmp_path_factory):
    """Output folder of a ``retrieval/train.py --debug`` run."""
    data, _ = clotho
    output = tmp_path_factory.mktemp("clotho_finetune")
    check_exit(
        run_script(
            "recipes/Clotho/retrieval/train.py",
            "recipes/Clotho/retrieval/hparams/finetune.yaml",
            f"--pretrained_model={slap_model_folder}",
            f"--data_folder={data}",
            f"--output_folder={output}",
            *tiny_model_args(),
            *DEBUG_TRAIN_ARGS,
        )
    )
    return output


def test_finetune_tests_and_exports(finetune, slap_model_folder):
    """Consistent test results; the exported folder loads, with trained weights."""
    results = json.loads((finetune / "test_results.json").read_text())
    assert results["n_texts"] == 5 * results["n_audios"]
    assert results["mean_R@1"] == pytest.approx(0.5 * (results["t2a_R@1"] + results["a2t_R@1"]))
    for name in ("audio_encoder", "text_encoder", "caption_decoder"):
        before = torch.load(slap_model_folder / f"{name}.ckpt", weights_only=True)
        after = torch.load(finetune / "model" / f"{name}.ckpt", weights_only=True)
        assert any(not torch.equal(before[k], after[k]) for k in before), name
    model = load_model(finetune / "model")
    audio = torch.from_numpy(np.sin(np.linspace(0, 2000, 16000)).astype(np.float32))
    assert model.encode_waveforms([audio]).shape == (1, 64)


def test_captioning_writes_a_caption_per_clip(finetune, clotho, tmp_path):
    """predictions.csv: the evaluation clips with spaces and commas, their 5 references."""
    data, expected = clotho
    check_exit(
        run_script(
            "recipes/Clotho/captioning/evaluate.py",
            "recipes/Clotho/captioning/hparams/captioning.yaml",
            f"--pretrained_model={finetune / 'model'}",
            f"--data_folder={data}",
            f"--output_folder={tmp_path}",
            "--beam_size=1",
            "--compute_metrics=False",
        )
    )
    rows = read_csv(tmp_path / "predictions.csv")
    present = [e for e in expected["evaluation"] if e[3]]
    assert [r["ID"] for r in rows] == [Path(e[0]).stem for e in present]
    assert [[r[f"reference_{i}"] for i in range(1, 6)] for r in rows] == [e[1] for e in present]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["n_clips"], results["beam_size"]) == (3, 1)
    assert "CIDEr-D" not in results  # not asked for
