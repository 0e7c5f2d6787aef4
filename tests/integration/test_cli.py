"""The ``slap`` command, on the tiny exported model (``slap_model_folder``).

Commands run in-process through ``speechbrain_slap.cli.main`` (one real
subprocess checks the installed entry point). Every result is compared with
what the ``SLAP`` Python interface gives for the same file.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from speechbrain_slap import cli, search_index
from speechbrain_slap.inference import SLAP
from speechbrain_slap.model_folder import write_checksums

RATE = 16000
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(slap_model_folder):
    return SLAP.from_hparams(source=str(slap_model_folder), run_opts={"device": "cpu"})


def _sound(seconds: float, freq: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * math.pi * freq * t) * ((t * 3.0) % 1.0 < 0.5)
    return (tone + 0.03 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Good inputs (mp3, 44.1 kHz stereo wav, 75 s flac, short wav) and bad ones."""
    root = tmp_path_factory.mktemp("cli_audio")
    (root / "sub").mkdir()
    good = {
        "mp3": root / "clip.mp3",
        "stereo": root / "sub" / "stereo44k.wav",
        "long": root / "sub" / "long75s.flac",
        "short": root / "short.wav",
    }
    soundfile.write(good["mp3"], _sound(3.0, 500, 22050, seed=1), 22050, format="MP3")
    stereo = np.stack([_sound(2.5, 300, 44100, seed=2), _sound(2.5, 900, 44100, seed=3)], 1)
    soundfile.write(good["stereo"], stereo, 44100, subtype="PCM_16")
    soundfile.write(good["long"], _sound(75.0, 200, seed=4), RATE, subtype="PCM_16")
    soundfile.write(good["short"], _sound(1.2, 1200, seed=5), RATE)
    text = root / "notes.wav"  # a text file with an audio name
    text.write_text("not audio at all\n")
    (root / "readme.txt").write_text("ignored by slap index\n")
    return {"root": root, **good, "text": text, "missing": root / "missing.flac"}


def _files(audio, *names):
    return [str(audio[name]) for name in names]


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- embed ----------------------------------------------------------------------------------
def test_embed_rows_match_encode_file_and_bad_files_are_named(
    slap_model_folder, model, audio, tmp_path, capsys
):
    inputs = _files(audio, "mp3", "missing", "stereo", "text", "long", "short")
    out = tmp_path / "emb.npy"
    # A 10 s budget makes several batches; the 75 s file is a batch of its own.
    code, stdout, stderr = _run(
        capsys, "embed", "--model", slap_model_folder, *inputs, "-o", out, "--batch-seconds", 10
    )

    assert code == 1
    good = _files(audio, "mp3", "stereo", "long", "short")
    errors = [line for line in stderr.splitlines() if line.startswith("slap embed: error:")]
    assert len(errors) == 2
    assert str(audio["missing"]) in errors[0] and "file not found" in errors[0]
    assert str(audio["text"]) in errors[1] and "cannot decode" in errors[1]
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["files"] == good
    assert [f["file"] for f in sidecar["failed"]] == _files(audio, "missing", "text")
    rows = np.load(out, allow_pickle=False)
    assert rows.shape == (4, 64) and rows.dtype == np.float32
    for row, path in zip(rows, good, strict=True):
        assert np.abs(row - model.encode_file(path).numpy()).max() <= 1e-5
    assert "4 embeddings" in stdout


def test_embed_nothing_readable_writes_nothing(slap_model_folder, audio, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    code, stdout, _ = _run(
        capsys, "embed", "--model", slap_model_folder, audio["text"], "-o", out, "--json"
    )
    assert code == 1
    assert not out.exists()
    assert json.loads(stdout)["files"] == []


# -- classify -------------------------------------------------------------------------------
def test_classify_json_matches_classify_file(slap_model_folder, model, audio, capsys):
    labels = ["dog barking", "rain", "church bell", "siren"]
    templates = ["This is a sound of {label}.", "A recording of {label}."]
    inputs = _files(audio, "stereo", "missing", "long")
    code, stdout, stderr = _run(
        capsys,
        *("classify", "--model", slap_model_folder, *inputs, "--labels", ",".join(labels)),
        *("--template", templates[0], "--template", templates[1], "--top-k", 2, "--json"),
    )

    assert code == 1
    assert str(audio["missing"]) in stderr
    document = json.loads(stdout)
    assert document["labels"] == labels and document["templates"] == templates
    assert [r["file"] for r in document["results"]] == _files(audio, "stereo", "long")
    for result in document["results"]:
        scores, best, index, names = model.classify_file(result["file"], labels, templates)
        assert np.allclose(result["scores"], scores[0].numpy(), atol=1e-5)
        assert result["label"] == names[0] == labels[int(index)]
        assert len(result["top_k"]) == 2
        assert result["top_k"][0]["score"] == pytest.approx(float(best), abs=1e-5)
        second = scores[0].topk(2).indices[1]
        assert result["top_k"][1]["label"] == labels[int(second)]


def test_classify_labels_file_and_default_template(
    slap_model_folder, model, audio, tmp_path, capsys
):
    labels = ["water, dripping", "a dog"]  # a comma inside a name: only a labels file allows it
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(labels) + "\n\n")
    code, stdout, _ = _run(
        capsys,
        *("classify", "--model", slap_model_folder, audio["mp3"]),
        *("--labels-file", labels_file, "--json"),
    )
    assert code == 0
    (result,) = json.loads(stdout)["results"]
    scores = model.classify_file(str(audio["mp3"]), labels)[0][0]
    assert np.allclose(result["scores"], scores.numpy(), atol=1e-5)
    assert sum(t["probability"] for t in result["top_k"]) == pytest.approx(1.0, abs=1e-5)


# -- index and search -----------------------------------------------------------------------
def test_index_then_search_matches_retrieve(slap_model_folder, model, audio, tmp_path, capsys):
    index = tmp_path / "index.npz"
    code, stdout, stderr = _run(
        capsys, "index", "--model", slap_model_folder, audio["root"], "-o", index, "--json"
    )

    assert code == 1  # notes.wav is a text file
    assert "notes.wav" in stderr and "readme.txt" not in stderr
    relative = ["clip.mp3", "short.wav", "sub/long75s.flac", "sub/stereo44k.wav"]
    with np.load(index, allow_pickle=False) as data:
        paths, embeddings = data["paths"].tolist(), data["embeddings"]
        meta = json.loads(str(data["meta"]))
    assert paths == relative == json.loads(stdout)["files"]
    assert meta["model_digest"] == cli.model_digest(slap_model_folder)
    assert [Path(f["file"]).name for f in meta["failed"]] == ["notes.wav"]
    reference = torch.stack([model.encode_file(audio["root"] / p) for p in relative])
    assert np.abs(embeddings - reference.numpy()).max() <= 1e-5

    query = "a dog barks"
    code, stdout, stderr = _run(
        capsys, "search", "--model", slap_model_folder, index, query, "-k", 2, "--json"
    )
    assert code == 0 and "warning" not in stderr
    (result,) = json.loads(stdout)["results"]
    scores, indices = model.retrieve(query, reference, k=2)
    assert [m["path"] for m in result["matches"]] == [relative[i] for i in indices[0].tolist()]
    assert np.allclose([m["score"] for m in result["matches"]], scores[0].numpy(), atol=1e-5)


def test_search_warns_on_another_model(slap_model_folder, tmp_path, capsys):
    index = tmp_path / "other.npz"
    meta = {"format": search_index.INDEX_FORMAT, "root": str(tmp_path), "model_digest": "0" * 64}
    with open(index, "wb") as fout:
        search_index.save_index(fout, np.eye(2, 64, dtype=np.float32), ["a.wav", "b.wav"], meta)
    code, stdout, stderr = _run(capsys, "search", "--model", slap_model_folder, index, "rain")
    assert code == 0
    assert "built with another model" in stderr
    assert stdout.splitlines()[0] == "rain" and len(stdout.splitlines()) == 3


# -- caption --------------------------------------------------------------------------------
def test_caption_matches_caption_file(slap_model_folder, model, audio, capsys):
    inputs = _files(audio, "mp3", "stereo", "long")
    code, stdout, _ = _run(
        capsys, "caption", "--model", slap_model_folder, *inputs, "--beam-size", 3, "--json"
    )
    assert code == 0
    results = json.loads(stdout)["results"]
    assert [r["file"] for r in results] == inputs
    for result in results:
        assert result["caption"] == model.caption_file(result["file"], beam_size=3)


# -- model folders --------------------------------------------------------------------------
def test_export_writes_a_loadable_model_folder(recipe_output, model, audio, tmp_path, capsys):
    folder = tmp_path / "exported"
    code, stdout, _ = _run(capsys, "export", recipe_output, folder, "--json")
    assert code == 0
    assert json.loads(stdout)["model_folder"] == str(folder)
    exported = SLAP.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    path = str(audio["short"])
    assert torch.allclose(exported.encode_file(path), model.encode_file(path), atol=1e-6)

    code, _, stderr = _run(capsys, "export", recipe_output, folder)
    assert code == 2 and "not empty" in stderr
    assert _run(capsys, "export", recipe_output, folder, "--overwrite")[0] == 0


def test_bad_model_folders_exit_2(slap_model_folder, audio, tmp_path, capsys):
    code, stdout, stderr = _run(
        capsys, "embed", "--model", tmp_path / "nowhere", audio["short"], "-o", tmp_path / "e.npy"
    )
    assert code == 2 and stdout == ""
    assert stderr.startswith("slap embed: error:") and "nowhere" in stderr

    broken = tmp_path / "broken"
    shutil.copytree(slap_model_folder, broken)
    (broken / "hyperparams.yaml").write_text("modules: [\n")
    code, _, stderr = _run(capsys, "classify", "--model", broken, audio["short"], "--labels", "a")
    assert code == 2 and f"{broken}: cannot load this model folder" in stderr

    tampered = tmp_path / "tampered"
    shutil.copytree(slap_model_folder, tampered)
    weights = bytearray((tampered / "audio_pooling.ckpt").read_bytes())
    weights[-20] ^= 0xFF
    (tampered / "audio_pooling.ckpt").write_bytes(bytes(weights))
    code, _, stderr = _run(
        capsys, "caption", "--model", tampered, audio["short"], "--json", "--quiet"
    )
    assert code == 2
    assert "audio_pooling.ckpt" in stderr and "SHA-256 mismatch" in stderr


def test_yaml_outside_the_allow_list_needs_trust_remote_code(
    slap_model_folder, audio, tmp_path, capsys
):
    folder = tmp_path / "custom"
    shutil.copytree(slap_model_folder, folder)
    with open(folder / "hyperparams.yaml", "a") as fout:
        fout.write("\nworking_directory: !apply:os.getcwd []\n")
    write_checksums(folder)  # every file, the changed yaml included
    argv = ("embed", "--model", folder, audio["short"], "-o", tmp_path / "e.npy", "--quiet")
    code, _, stderr = _run(capsys, *argv)
    assert code == 2
    assert "!apply:os.getcwd" in stderr and "--trust-remote-code" in stderr
    assert not (tmp_path / "e.npy").exists()
    assert _run(capsys, *argv, "--trust-remote-code")[0] == 0
    assert np.load(tmp_path / "e.npy").shape == (1, 64)


def test_usage_errors_exit_2(slap_model_folder, audio, tmp_path, capsys):
    model_args = ("--model", slap_model_folder)
    assert _run(capsys, "transcribe", audio["short"])[0] == 2
    assert _run(capsys, "classify", *model_args, audio["short"])[0] == 2  # no labels
    code, _, stderr = _run(capsys, "classify", *model_args, audio["short"], "--labels", "a,b,a")
    assert code == 2 and "repeated" in stderr
    code, _, stderr = _run(
        capsys, "classify", *model_args, audio["short"], "--labels", "a", "--template", "{x}"
    )
    assert code == 2 and "{x}" in stderr
    assert (
        _run(capsys, "embed", *model_args, audio["short"], "-o", "e.npy", "--device", "tpu")[0] == 2
    )
    code, _, stderr = _run(capsys, "index", *model_args, tmp_path / "none", "-o", tmp_path / "i")
    assert code == 2 and "not a folder" in stderr
    code, _, stderr = _run(capsys, "index", *model_args, tmp_path, "-o", tmp_path / "i.npz")
    assert code == 2 and "no audio file" in stderr
    code, _, stderr = _run(capsys, "search", *model_args, audio["short"], "rain")
    assert code == 2 and "not a slap index" in stderr
    np.save(tmp_path / "emb.npy", np.zeros((2, 64), np.float32))  # what `embed` writes
    code, _, stderr = _run(capsys, "search", *model_args, tmp_path / "emb.npy", "rain")
    assert code == 2 and "not a slap index" in stderr
    assert _run(capsys, "--help")[0] == 0


def test_shards_is_forwarded(tmp_path, capsys):
    code, _, stderr = _run(capsys, "shards", tmp_path / "missing.csv", tmp_path / "out")
    assert code == 2 and "slap shards: error" in stderr and "missing.csv" in stderr
    code, stdout, _ = _run(capsys, "shards", "--help")
    assert code == 0 and "--max-shard-size" in stdout


def test_demo_still_works(tmp_path, capsys):
    code, stdout, _ = _run(
        capsys, "demo", "--durations", 1.3, 3.0, "--output-folder", tmp_path, "--json"
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["packed_vs_alone_max_abs_diff"] <= 1e-5
    assert np.load(tmp_path / "embeddings.npy").shape == (2, summary["embedding_dim"])


# -- the installed entry point --------------------------------------------------------------
def test_installed_slap_command(slap_model_folder, model, audio, tmp_path):
    script = Path(sys.executable).parent / "slap"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "speechbrain_slap.cli"]
    out = tmp_path / "emb.npy"
    inputs = _files(audio, "short", "missing")
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [*command, "embed", "--model", str(slap_model_folder), *inputs, "-o", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert run.returncode == 1, run.stderr
    assert f"slap embed: error: {audio['missing']}: file not found" in run.stderr
    document = json.loads(run.stdout)  # stdout is one JSON document
    assert document["files"] == inputs[:1]
    row = np.load(out, allow_pickle=False)[0]
    assert np.abs(row - model.encode_file(inputs[0]).numpy()).max() <= 1e-5
