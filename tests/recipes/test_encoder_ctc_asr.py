"""The worked example ``recipes/examples/encoder_ctc_asr``: character CTC on the SLAP encoder.

``train.py --debug`` runs end to end in a subprocess twice on a small eSpeak NG
corpus (8/4/4 utterances, two epochs of two batches) from the session's tiny
SLAP model folder: once with the encoder frozen, once fine-tuned. The data
generator is checked in process: held-out sentences, known words, the
manifest columns, reproducibility.
"""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "recipes" / "examples" / "encoder_ctc_asr"
YAML_FILE = EXAMPLE / "hparams" / "ctc_char.yaml"
DATA = {"n_train": 8, "n_valid": 4, "n_test": 4}


@pytest.fixture(scope="module")
def generate_data():
    """``generate_data.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location(
        "encoder_ctc_asr_data", EXAMPLE / "generate_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def architecture_overrides(model_folder: Path) -> list[str]:
    """The recipe's encoder keys, copied from the model folder's hyperparams.yaml."""
    tree = YAML(typ="rt").load((model_folder / "hyperparams.yaml").read_text())
    encoder, features = tree["audio_encoder"], tree["compute_features"]
    values = {
        key: encoder[key]
        for key in ("n_mels", "embed_dim", "depth", "num_heads", "mlp_hidden", "local_attention")
    }
    values.update(feature_mean=float(features["mean"]), feature_std=float(features["std"]))
    return [f"--{key}={value}" for key, value in values.items()]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(slap_model_folder, tmp_path_factory):
    """Output folders of a frozen and a fine-tuned ``--debug`` run on the same data."""
    root = tmp_path_factory.mktemp("encoder_ctc_asr")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    outputs = {}
    for name, freeze in (("frozen", True), ("finetuned", False)):
        output = root / name
        command = [
            sys.executable,
            str(EXAMPLE / "train.py"),
            str(YAML_FILE),
            "--debug",
            "--debug_persistently",  # checkpoints in <output>/save, not a temporary folder
            f"--pretrained_model={slap_model_folder}",
            f"--freeze_encoder={freeze}",
            f"--data_folder={root / 'data'}",
            f"--output_folder={output}",
            "--batch_size=4",
            "--noprogressbar",
            *(f"--{key}={value}" for key, value in DATA.items()),
            *architecture_overrides(slap_model_folder),
        ]
        # cwd: nothing may be written outside the given folders.
        result = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{name} run failed:\n{result.stderr[-4000:]}"
        outputs[name] = output
    assert sorted(p.name for p in root.iterdir()) == ["data", "finetuned", "frozen"]
    return outputs


def only_checkpoint(output: Path) -> Path:
    (checkpoint,) = (output / "save").glob("CKPT+*")
    return checkpoint


@pytest.mark.parametrize("name", ["frozen", "finetuned"])
def test_debug_run_writes_cer_and_wer(runs, name):
    """test_results.json holds finite CER and WER; the log has two epochs and a test line."""
    output = runs[name]
    results = json.loads((output / "test_results.json").read_text())
    assert results["utterances"] == DATA["n_test"]
    assert results["freeze_encoder"] is (name == "frozen")
    for key in ("CER", "WER"):
        assert math.isfinite(results[key]) and results[key] >= 0.0, (key, results)
    log = (output / "train_log.txt").read_text().splitlines()
    epochs = [line for line in log if line.startswith("epoch:")]
    assert len(epochs) == 2 and all("valid CER" in line and "valid WER" in line for line in epochs)
    assert any("test CER" in line for line in log)
    assert (output / "wer_test.txt").is_file()
    # Blank first, then space and the letters of the training transcripts.
    labels = (output / "save" / "label_encoder.txt").read_text()
    assert "'<blank>' => 0" in labels and "' ' =>" in labels
    checkpoint = only_checkpoint(output)
    for file in ("audio_encoder", "substep_projection", "enc", "ctc_lin", "counter"):
        assert (checkpoint / f"{file}.ckpt").is_file(), file
    projection = load_state(checkpoint / "substep_projection.ckpt")["proj.weight"]
    assert projection.shape == (8 * 256, 4 * 64)  # 8 sub-steps of 256 from 4 bands of 64


def test_frozen_encoder_keeps_the_model_folder_weights(runs, slap_model_folder):
    """Frozen: the encoder in the checkpoint is the model folder's, bit for bit."""
    pretrained = load_state(slap_model_folder / "audio_encoder.ckpt")
    trained = load_state(only_checkpoint(runs["frozen"]) / "audio_encoder.ckpt")
    assert trained.keys() == pretrained.keys()
    for key, value in pretrained.items():
        assert torch.equal(trained[key], value), key


def test_fine_tuned_encoder_moves_away_from_the_model_folder(runs, slap_model_folder):
    """Fine-tuned: every weight that gets a gradient (all but the mask token) changed."""
    pretrained = load_state(slap_model_folder / "audio_encoder.ckpt")
    trained = load_state(only_checkpoint(runs["finetuned"]) / "audio_encoder.ckpt")
    changed = {key for key, value in pretrained.items() if not torch.equal(trained[key], value)}
    assert {key for key in pretrained if key.endswith("weight")} <= changed
    assert "mask_token" not in changed


def test_generated_speech_and_manifests(generate_data, tmp_path):
    """16 kHz mono speech, durations as written, held-out sentences of known words."""
    manifests = generate_data.generate_speech_data(tmp_path, n_train=12, n_valid=4, n_test=6)
    rows = {split: read_rows(path) for split, path in manifests.items()}
    assert list(rows["train"][0]) == ["ID", "duration", "wav", "voice", "rate", "pitch", "wrd"]
    assert [len(rows[s]) for s in ("train", "valid", "test")] == [12, 4, 6]
    sentences = {split: [row["wrd"] for row in split_rows] for split, split_rows in rows.items()}
    assert all(len(set(s)) == len(s) for s in sentences.values())
    assert not set(sentences["test"]) & (set(sentences["train"]) | set(sentences["valid"]))
    assert not set(sentences["valid"]) & set(sentences["train"])
    train_words = {word for sentence in sentences["train"] for word in sentence.split()}
    for split in ("valid", "test"):
        assert {w for s in sentences[split] for w in s.split()} <= train_words
    for row in rows["test"]:
        info = soundfile.info(row["wav"].replace("$data_root", str(tmp_path)))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames / 16000 == pytest.approx(float(row["duration"]), abs=1e-4)
        assert 0.8 < float(row["duration"]) < 6.0
        assert row["voice"] in generate_data.VOICES
        assert 130 <= int(row["rate"]) <= 200 and 30 <= int(row["pitch"]) <= 70
    assert len({row["voice"] for split_rows in rows.values() for row in split_rows}) >= 4


def test_same_arguments_give_the_same_files(generate_data, tmp_path):
    """Byte-identical wavs and manifests; a folder with another config is refused."""
    first = generate_data.generate_speech_data(
        tmp_path / "a", seed=3, n_train=3, n_valid=1, n_test=2
    )
    second = generate_data.generate_speech_data(
        tmp_path / "b", seed=3, n_train=3, n_valid=1, n_test=2
    )
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 3 + 1 + 2 + 3 + 1  # wavs, manifests, config
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    assert first["train"].read_text() == second["train"].read_text()
    with pytest.raises(ValueError, match="delete that folder or choose another data_folder"):
        generate_data.generate_speech_data(tmp_path / "a", seed=4, n_train=3, n_valid=1, n_test=2)
