"""AudioCaps recipes on a fake copy of the official layout.

``audiocaps_prepare.py`` is checked against the fake dataset's ground truth
(clips grouped from interleaved caption rows, missing audio skipped and
counted, both audio namings). Then each script runs once in a subprocess:
zero-shot retrieval (``retrieval/evaluate.py``) on the tiny session model,
fine-tuning (``retrieval/train.py --debug``) from a copy of it whose EMA
teacher is far along its schedule, and captioning
(``captioning/evaluate.py``) with the fine-tuned export.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from retrieval_fixtures import (
    DEBUG_TRAIN_ARGS,
    brute_force_recall,
    captioning_metrics_available,
    check_exit,
    import_recipe_module,
    load_model,
    make_fake_audiocaps,
    model_folder_with_teacher_step,
    read_csv,
    run_script,
    tiny_model_args,
)

from speechbrain_slap.data.manifest import read_clips as read_manifest
from speechbrain_slap.model_folder import verify_checksums

PREPARE = "recipes/AudioCaps/audiocaps_prepare.py"
MANIFEST_SPLITS = {"train": "train", "valid": "val", "test": "test"}
PRETRAINED_TEACHER_STEP = 5000


@pytest.fixture(scope="module")
def prepare():
    """``prepare_audiocaps``."""
    return import_recipe_module(PREPARE).prepare_audiocaps


@pytest.fixture(scope="module")
def audiocaps(tmp_path_factory):
    """``(folder, expected)``: the fake dataset in the aac-datasets layout."""
    folder = tmp_path_factory.mktemp("AUDIOCAPS")
    return folder, make_fake_audiocaps(folder)


def _check_manifests(folder, data_folder, expected):
    """Each manifest holds the clips with audio, in order, with all their captions."""
    for split, official in MANIFEST_SPLITS.items():
        clips = read_manifest(folder / f"{split}.csv", data_folder)
        present = [e for e in expected[official] if e[3]]
        assert [c.id for c in clips] == [e[0] for e in present]
        assert [c.captions for c in clips] == [e[1] for e in present]
        assert [c.duration for c in clips] == pytest.approx([e[2] for e in present])
        assert all(Path(c.wav).is_file() and data_folder in Path(c.wav).parents for c in clips)
        missing = [e[0] for e in expected[official] if not e[3]]
        skipped = read_csv(folder / f"{split}_skipped.csv")
        assert [(r["ID"], r["reason"]) for r in skipped] == [
            (m, "audio file missing") for m in missing
        ]


def test_prepare_groups_caption_rows_into_clips(prepare, audiocaps, tmp_path):
    """5 interleaved rows -> one clip with its 5 captions; missing audio skipped and counted."""
    data, expected = audiocaps
    report = prepare(data, tmp_path)
    _check_manifests(tmp_path, data, expected)
    assert report["test"] == {
        "clips": 3,
        "captions": 15,
        "skipped": 1,
        "skipped_by_reason": {"audio file missing": 1},
    }
    assert report["train"]["clips"] == 5 and report["valid"]["clips"] == 2
    assert json.loads((tmp_path / "prepare.json").read_text())["splits"] == report


def test_prepare_reads_the_wavcaps_naming(prepare, tmp_path):
    """waveforms/{split}/Y{youtube_id}.wav finds the same clips."""
    data = tmp_path / "AudioCaps"
    expected = make_fake_audiocaps(data, naming="wavcaps")
    prepare(data, tmp_path / "manifests", audio_pattern="waveforms/{split}/Y{youtube_id}.wav")
    _check_manifests(tmp_path / "manifests", data, expected)


def test_prepare_is_skipped_when_up_to_date(prepare, audiocaps, tmp_path):
    """Same options: nothing rewritten; another audio pattern: prepared again."""
    data, _ = audiocaps
    prepare(data, tmp_path, splits=["test"])
    stamp = (tmp_path / "test.csv").stat().st_mtime_ns
    prepare(data, tmp_path, splits=["test"])
    assert (tmp_path / "test.csv").stat().st_mtime_ns == stamp
    report = prepare(data, tmp_path, splits=["test"], audio_pattern="nowhere/{youtube_id}.flac")
    assert report["test"]["clips"] == 0 and report["test"]["skipped"] == 4


def test_prepare_fails_clearly_on_bad_input(prepare, audiocaps, tmp_path):
    """Unknown pattern fields, missing columns and missing CSVs name what is wrong."""
    data, _ = audiocaps
    with pytest.raises(ValueError, match=r"\['ytid'\]"):
        prepare(data, tmp_path, audio_pattern="{split}/{ytid}.wav")
    (tmp_path / "test.csv").write_text("youtube_id,start_time,caption\nabc,0,a dog\n")
    with pytest.raises(ValueError, match=r"test\.csv: no column \['audiocap_id'\]"):
        prepare(data, tmp_path / "out", splits=["test"], csv_folder=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"val\.csv"):
        prepare(data, tmp_path / "out", splits=["valid"], csv_folder=tmp_path)


# ------------------------------------------------------------------ zero-shot retrieval
@pytest.fixture(scope="module")
def zeroshot(audiocaps, slap_model_folder, tmp_path_factory):
    """Output folder of ``retrieval/evaluate.py`` with the tiny session model."""
    data, _ = audiocaps
    output = tmp_path_factory.mktemp("zeroshot")
    process = run_script(
        "recipes/AudioCaps/retrieval/evaluate.py",
        "recipes/AudioCaps/retrieval/hparams/zeroshot.yaml",
        f"--pretrained_model={slap_model_folder}",
        f"--data_folder={data}",
        f"--output_folder={output}",
        "--batch_clips=2",
    )
    check_exit(process)
    return output


def test_zeroshot_results_are_the_saved_embeddings_metrics(zeroshot):
    """Gallery sizes, skipped counts and R@k recomputed by brute force from the embeddings."""
    results = json.loads((zeroshot / "results.json").read_text())
    sizes = {"valid": 2, "test": 3}
    for split, n_audios in sizes.items():
        metrics = results[split]
        assert (metrics["n_audios"], metrics["n_texts"]) == (n_audios, 5 * n_audios)
        saved = torch.load(zeroshot / f"{split}_embeddings.pt", weights_only=False)
        similarity = (saved["text"] @ saved["audio"].T).double().numpy()
        text_to_audio = saved["text_to_audio"].numpy()
        np.testing.assert_array_equal(text_to_audio, np.repeat(np.arange(n_audios), 5))
        for k in (1, 5):
            t2a, a2t = brute_force_recall(similarity, text_to_audio, k)
            assert metrics[f"t2a_R@{k}"] == pytest.approx(t2a)
            assert metrics[f"a2t_R@{k}"] == pytest.approx(a2t)
        assert (zeroshot / f"{split}_similarity.png").read_bytes()[:4] == b"\x89PNG"
        assert results["prepare"][split]["skipped_by_reason"] == {"audio file missing": 1}
    assert "train" not in results["prepare"]  # zero-shot prepares val and test only


def test_zeroshot_embeddings_are_the_models(zeroshot, audiocaps, slap_model_folder):
    """The saved embeddings equal what the SLAP interface gives for the files and captions."""
    data, expected = audiocaps
    saved = torch.load(zeroshot / "test_embeddings.pt", weights_only=False)
    first = next(e for e in expected["test"] if e[3])
    assert saved["clip_ids"][0] == first[0] and saved["texts"][:5] == first[1]
    model = load_model(slap_model_folder)
    path = data / "audio_32000Hz" / "test" / f"{first[0]}.flac"
    assert torch.allclose(model.encode_file(path), saved["audio"][0], atol=1e-5)
    assert torch.allclose(model.encode_text(first[1][:2]), saved["text"][:2], atol=1e-5)


# ------------------------------------------------------------------ fine-tuning
@pytest.fixture(scope="module")
def finetune(audiocaps, slap_model_folder, tmp_path_factory):
    """``(output_folder, pretrained_folder)`` of a ``retrieval/train.py --debug`` run."""
    data, _ = audiocaps
    root = tmp_path_factory.mktemp("finetune")
    pretrained = model_folder_with_teacher_step(
        slap_model_folder, root / "pretrained", PRETRAINED_TEACHER_STEP
    )
    output = root / "out"
    process = run_script(
        "recipes/AudioCaps/retrieval/train.py",
        "recipes/AudioCaps/retrieval/hparams/finetune.yaml",
        f"--pretrained_model={pretrained}",
        f"--data_folder={data}",
        f"--output_folder={output}",
        *tiny_model_args(),
        *DEBUG_TRAIN_ARGS,
    )
    check_exit(process)
    return output, pretrained


def test_finetune_tests_the_best_checkpoint(finetune):
    """test_results.json: 5 captions per test clip, metrics ordered and consistent."""
    output, _ = finetune
    results = json.loads((output / "test_results.json").read_text())
    assert results["n_texts"] == 5 * results["n_audios"]
    assert 1 <= results["n_audios"] <= 3  # --debug evaluates at most two batches
    for direction in ("t2a", "a2t"):
        recalls = [results[f"{direction}_R@{k}"] for k in (1, 5, 10)]
        assert 0.0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1.0
    assert results["mean_R@1"] == pytest.approx(0.5 * (results["t2a_R@1"] + results["a2t_R@1"]))
    steps = [json.loads(line) for line in (output / "train_steps.jsonl").read_text().splitlines()]
    assert steps and all({"loss_clap", "loss_ssl", "loss_cap"} <= r.keys() for r in steps)


def test_finetune_exports_a_model_folder_that_loads(finetune):
    """The export verifies, loads, keeps the pretrained tokenizer and holds trained weights."""
    output, pretrained = finetune
    model_folder = output / "model"
    assert "teacher.ckpt" in verify_checksums(model_folder)
    # The pretrained tokenizer was reused, not a new one trained.
    assert (model_folder / "tokenizer.ckpt").read_bytes() == (
        pretrained / "tokenizer.ckpt"
    ).read_bytes()
    assert [p.name for p in (output / "save" / "tokenizer").iterdir()] == ["80_unigram.model"]
    # The encoder started from the pretrained weights and was trained.
    before = torch.load(pretrained / "audio_encoder.ckpt", weights_only=True)
    after = torch.load(model_folder / "audio_encoder.ckpt", weights_only=True)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # The EMA schedule restarted: the teacher counts the fine-tuning steps only.
    n_steps = len((output / "train_steps.jsonl").read_text().splitlines())
    teacher = torch.load(model_folder / "teacher.ckpt", weights_only=True)
    assert int(teacher["step"]) == n_steps < PRETRAINED_TEACHER_STEP

    model = load_model(model_folder)
    assert model.encode_text(["a dog barks"]).shape == (1, 64)
    assert isinstance(model.caption_waveforms([torch.zeros(16000)], beam_size=2)[0], str)


# ------------------------------------------------------------------ captioning
def test_captioning_scores_the_finetuned_model(finetune, audiocaps, tmp_path):
    """predictions.csv has one caption per test clip with its 5 references; metrics in range."""
    output, _ = finetune
    data, expected = audiocaps
    scored = captioning_metrics_available()
    process = run_script(
        "recipes/AudioCaps/captioning/evaluate.py",
        "recipes/AudioCaps/captioning/hparams/captioning.yaml",
        f"--pretrained_model={output / 'model'}",
        f"--data_folder={data}",
        f"--output_folder={tmp_path}",
        "--beam_size=2",
        f"--compute_metrics={scored}",
    )
    check_exit(process)
    rows = read_csv(tmp_path / "predictions.csv")
    present = [e for e in expected["test"] if e[3]]
    assert [r["ID"] for r in rows] == [e[0] for e in present]
    assert [[r[f"reference_{i}"] for i in range(1, 6)] for r in rows] == [e[1] for e in present]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["n_clips"], results["beam_size"], results["split"]) == (3, 2, "test")
    if not scored:
        pytest.skip("pycocoevalcap or Java missing: captions written, not scored")
    assert results["CIDEr-D"] >= 0.0 and 0.0 <= results["METEOR"] <= 1.0
    assert "SPICE" not in results
