"""Hostile inputs, second round: hangs, memory, silent garbage and late errors.

Each test reproduces one way an input used to hang, exhaust memory, give a
non-finite result reported as success, or end in a traceback, through the
``slap`` command (``speechbrain_slap.cli.main``, or the installed entry point
where a real process is needed) or the ``SLAP`` Python interface, on the tiny
exported model (``slap_model_folder``). Every input ends in a finite result
or one line naming it.
"""

import json
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from speechbrain_slap import cli, search_index
from speechbrain_slap.data.audio import MAX_ABS_SAMPLE, AudioLoadError, load_audio
from speechbrain_slap.inference import SLAP
from speechbrain_slap.outputs import write_atomic

RATE = 16000
pytestmark = pytest.mark.usefixtures("one_torch_thread")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
}


@pytest.fixture(scope="module")
def model(slap_model_folder):
    return SLAP.from_hparams(source=str(slap_model_folder), run_opts={"device": "cpu"})


def _tone(seconds: float = 1.0, rate: int = RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Two ordinary WAVs."""
    root = tmp_path_factory.mktemp("good")
    paths = [root / "a.wav", root / "b.wav"]
    soundfile.write(paths[0], _tone(1.0, freq=300), RATE)
    soundfile.write(paths[1], _tone(1.5, freq=900), RATE, subtype="PCM_16")
    return paths


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _float_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    soundfile.write(path, samples.astype(np.float32), rate, subtype="FLOAT")
    return path


def _slap_command() -> list[str]:
    script = Path(sys.executable).parent / "slap"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "speechbrain_slap.cli"]


# -- hangs and memory --------------------------------------------------------------------------
def test_shards_refuses_a_fifo_without_hanging(tmp_path):
    """A FIFO in a manifest is read by ``load_audio``: refused, not opened (which would block)."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    clip = tmp_path / "ok.wav"
    soundfile.write(clip, _tone(), RATE, subtype="PCM_16")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"ID,duration,wav,captions\nok,1.0,{clip},a tone\nfifo,1.0,{fifo},a pipe\n")
    run = subprocess.run(
        [*_slap_command(), "shards", str(manifest), str(tmp_path / "out"), "--num-workers", "1"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    index = json.loads((tmp_path / "out" / "shards.json").read_text())
    assert index["num_samples"] == 1
    assert [s["id"] for s in index["skipped"]] == ["fifo"]
    assert index["skipped"][0]["reason"].endswith(f"{fifo}: not a file")


def _wav_header(rate: int, frames: int, channels: int = 1, bits: int = 16) -> bytes:
    block = channels * bits // 8
    data = frames * block
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
        + b"data"
        + struct.pack("<I", data)
    )


@pytest.mark.parametrize("rate", [1, 999, 384_001])
def test_absurd_sample_rates_are_refused_before_decoding(tmp_path, rate):
    """A 1 Hz WAV of 10 KB used to make the resampler allocate about a gigabyte."""
    path = tmp_path / f"rate{rate}.wav"
    path.write_bytes(_wav_header(rate, 5000) + bytes(10000))
    with pytest.raises(AudioLoadError, match=rf"rate{rate}\.wav: sample rate {rate} Hz"):
        load_audio(path)


def test_the_good_files_of_a_batch_survive_a_bad_one(slap_model_folder, good, tmp_path, capsys):
    bad = tmp_path / "one_hz.wav"
    bad.write_bytes(_wav_header(1, 15000) + bytes(30000))
    out = tmp_path / "emb.npy"
    code, _, stderr = _run(
        capsys, "embed", "--model", slap_model_folder, good[0], bad, good[1], "-o", out
    )
    assert code == 1
    assert f"slap embed: error: {bad}: sample rate 1 Hz" in stderr
    assert np.load(out).shape == (2, 64)


def test_a_batch_that_runs_out_of_memory_is_retried_file_by_file(model, good, monkeypatch):
    """A MemoryError of a many-file forward loses only the file that fails alone."""
    from speechbrain_slap.evaluation import process_files

    def work(waves):
        if len(waves) > 1 or waves[0].numel() > RATE:
            raise MemoryError
        return [w.numel() for w in waves]

    skipped = []
    results, read, _ = process_files(
        model, [*good, good[0]], work, on_skip=lambda i, e: skipped.append((i, e.reason))
    )
    assert results == [RATE, RATE] and read == [0, 2]
    assert skipped == [(1, "out of memory while processing it")]


def test_a_zip_bomb_index_is_refused_before_it_is_read(tmp_path):
    """A member that declares gigabytes in a small deflated file is refused from its header."""
    bomb = tmp_path / "bomb.npz"
    rows = 200_000
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 64), np.float32))
    header["shape"] = (rows, 64)
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("embeddings.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            zeros = bytes(1 << 20)
            for _ in range(rows * 64 * 4 // len(zeros)):
                member.write(zeros)
        archive.writestr("paths.npy", b"")
        archive.writestr("meta.npy", b"")
    assert bomb.stat().st_size < 200_000
    with pytest.raises(search_index.IndexFileError, match=r"bomb\.npz: .*compressed"):
        search_index.load_index(bomb)


# -- silent garbage ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [3e38, 1e20, -2 * MAX_ABS_SAMPLE])
def test_huge_finite_samples_are_refused(model, tmp_path, value):
    samples = _tone()
    samples[100] = value
    path = _float_wav(tmp_path / "huge.wav", samples)
    with pytest.raises(AudioLoadError, match=r"huge\.wav: 1 of 16000 samples exceed"):
        model.encode_file(path)
    with pytest.raises(AudioLoadError, match="waveform 0: 1 of 16000 samples exceed"):
        model.encode_waveforms([torch.from_numpy(samples)])


def test_loud_but_bounded_samples_give_a_finite_embedding(model, tmp_path):
    """Just under the bound (float files scaled like 32-bit integers) is still audio."""
    path = _float_wav(tmp_path / "loud.wav", _tone() / 0.3 * MAX_ABS_SAMPLE * 0.99)
    emb = model.encode_file(path)
    assert bool(torch.isfinite(emb).all()) and float(emb.norm()) == pytest.approx(1.0, abs=1e-5)


def test_non_finite_outputs_are_reported_as_failures(model, good):
    """The shared path checks every result; a NaN row is a failed file, not a success."""
    from speechbrain_slap.evaluation import process_files

    def work(waves):
        return [torch.full((4,), math.nan if w.numel() == RATE else 0.5) for w in waves]

    skipped = []
    results, read, _ = process_files(
        model, good, work, on_skip=lambda i, e: skipped.append((i, e.reason))
    )
    assert read == [1] and len(results) == 1
    assert skipped == [(0, "the model gave a non-finite result (NaN or infinite)")]


def test_retrieve_refuses_a_non_finite_gallery(model):
    gallery = torch.randn(5, 64)
    gallery[[1, 3]] = math.nan
    with pytest.raises(ValueError, match="gallery: 2 of 5 rows are not finite"):
        model.retrieve(["a dog barks"], gallery)


def test_an_index_of_nan_rows_is_refused(slap_model_folder, tmp_path, capsys):
    path = tmp_path / "nan.npz"
    embeddings = np.full((3, 64), np.nan, np.float32)
    search_index.write_index(path, embeddings, ["a", "b", "c"], tmp_path, slap_model_folder)
    code, _, stderr = _run(capsys, "search", "--model", slap_model_folder, path, "rain")
    assert code == 2
    assert stderr.strip() == f"slap search: error: {path}: 3 of 3 embedding rows are not finite"


def test_concurrent_writers_of_one_file_never_mix(tmp_path):
    """Each writer has its own temporary file: the result is one writer's whole content."""
    target = tmp_path / "index.npz"
    contents = [bytes([i]) * 2_000_000 for i in range(8)]
    threads = [threading.Thread(target=write_atomic, args=(target, c)) for c in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in contents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.npz"]


@pytest.mark.parametrize("command", ["embed", "index"])
def test_output_over_an_input_is_refused(slap_model_folder, good, tmp_path, capsys, command):
    before = good[0].read_bytes()
    if command == "embed":
        argv = ["embed", "--model", slap_model_folder, *good, "-o", good[0]]
    else:
        argv = ["index", "--model", slap_model_folder, good[0].parent, "-o", good[0]]
    code, _, stderr = _run(capsys, *argv)
    assert code == 2
    assert f"-o {good[0]}: is one of the input audio files" in stderr
    assert good[0].read_bytes() == before


# -- errors that came too late or as tracebacks -------------------------------------------------
def _write_small_index(path, folder, model_folder):
    search_index.write_index(
        path, np.eye(3, 64, dtype=np.float32), ["a", "b", "c"], folder, model_folder
    )
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped", "zeros"])
def test_damaged_index_is_one_line(slap_model_folder, tmp_path, capsys, damage):
    data = _write_small_index(tmp_path / "good.npz", tmp_path, slap_model_folder)
    damaged = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "flipped": data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:],
        "zeros": data[:30] + bytes(len(data) - 60) + data[-30:],
    }[damage]
    path = tmp_path / f"{damage}.npz"
    path.write_bytes(damaged)
    with pytest.raises(search_index.IndexFileError, match=rf"{damage}\.npz: "):
        search_index.load_index(path)
    code, _, stderr = _run(capsys, "search", "--model", slap_model_folder, path, "rain")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(f"slap search: error: {path}: ")


def test_non_utf8_query_and_label_name_the_argument(slap_model_folder, good, tmp_path, capsys):
    index = tmp_path / "i.npz"
    _write_small_index(index, tmp_path, slap_model_folder)
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # what argv holds for Latin-1 bytes
    code, _, stderr = _run(capsys, "search", "--model", slap_model_folder, index, "ok", bad)
    assert code == 2
    assert stderr.strip() == "slap search: error: QUERY 2: bytes that are not UTF-8 ('caf\\xe9')"
    code, _, stderr = _run(
        capsys, "classify", "--model", slap_model_folder, good[0], "--labels", f"dog,{bad}"
    )
    assert code == 2
    assert stderr.strip() == "slap classify: error: --labels: bytes that are not UTF-8 ('caf\\xe9')"


def test_broken_pipe_is_quiet(slap_model_folder, good):
    """``slap classify ... | head -1``: no traceback, exit 141 (128 + SIGPIPE)."""
    files = [str(good[i % 2]) for i in range(40)]
    command = [*_slap_command(), "classify", "--model", str(slap_model_folder), *files]
    shell = " ".join(f"'{a}'" for a in [*command, "--labels", "dog,rain", "--quiet"])
    run = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {shell} | head -c 1 >/dev/null"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=240,
    )
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr
    assert run.returncode in (0, 141), run.stderr


def test_interrupt_during_start_up_is_one_line(slap_model_folder, good, tmp_path):
    """Ctrl-C at any moment of start-up (imports, model loading): one line, exit 130.

    (Not before 0.6 s: the first tens of milliseconds are the interpreter's own
    start-up, before any of the package's code runs.)
    """
    command = [*_slap_command(), "embed", "--model", str(slap_model_folder), str(good[0])]
    for delay in (0.6, 1.5, 3.0):
        process = subprocess.Popen(
            [*command, "-o", str(tmp_path / "e.npy")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=240)
        if process.returncode == 0:  # finished before the signal came
            continue
        assert process.returncode == 130, (delay, stderr)
        assert "Traceback" not in stderr, (delay, stderr)
        assert stderr.strip().endswith("interrupted"), (delay, stderr)


@pytest.mark.parametrize("kind", ["folder", "unwritable", "under a file", "sidecar folder"])
def test_bad_output_is_refused_before_any_file_is_encoded(
    slap_model_folder, good, tmp_path, capsys, monkeypatch, kind
):
    encoded = []
    monkeypatch.setattr(SLAP, "encode_waveforms", lambda self, w: encoded.append(w))
    if kind == "folder":
        out = tmp_path / "out.npy"
        out.mkdir()
        reason = "is a folder"
    elif kind == "unwritable":
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o500)
        out = parent / "e.npy"
        reason = "cannot write in"
    elif kind == "under a file":
        out = good[0] / "e.npy"
        reason = f"{good[0]} is not a folder"
    else:
        out = tmp_path / "x.npy"
        (tmp_path / "x.json").mkdir()
        reason = "is a folder"
    if os.geteuid() == 0 and kind == "unwritable":
        pytest.skip("root writes anywhere")
    code, _, stderr = _run(capsys, "embed", "--model", slap_model_folder, *good, "-o", out)
    assert code == 2 and reason in stderr, stderr
    assert encoded == []
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


def test_python_api_arguments_raise_value_errors_naming_them(model, tmp_path):
    wavs = torch.from_numpy(np.stack([_tone(), _tone(freq=900)]))
    reference = model.encode_audio_batch(wavs, torch.tensor([1.0, 0.5]))
    # A list of relative lengths and a numpy batch are what they obviously mean.
    assert torch.allclose(model.encode_audio_batch(wavs, [1.0, 0.5]), reference, atol=1e-6)
    assert torch.allclose(model.encode_audio_batch(wavs.numpy(), [1.0, 0.5]), reference, atol=1e-6)
    with pytest.raises(ValueError, match="wav_lens must be"):
        model.encode_audio_batch(wavs, "all")
    with pytest.raises(ValueError, match="wavs must be"):
        model.encode_audio_batch("a.wav")
    with pytest.raises(ValueError, match=r"path must be a str or os\.PathLike, got bytes"):
        model.encode_file(b"a.wav")
    with pytest.raises(ValueError, match="text 1: not valid Unicode"):
        model.encode_text(["fine", "caf\udce9"])
    with pytest.raises(ValueError, match=r"template 'a \{x\}' has no \{label\} field"):
        model.label_embeddings(["dog"], "a {x}")


def test_a_non_utf8_file_name_is_read(model, tmp_path, capsys, slap_model_folder):
    name = os.fsdecode(b"caf\xe9.wav")
    path = tmp_path / name
    soundfile.write(os.fsencode(path), _tone(), RATE, subtype="FLOAT")
    reference = model.encode_waveforms([torch.from_numpy(_tone())])[0]
    assert torch.allclose(model.encode_file(path), reference, atol=1e-5)
    code, stdout, _ = _run(
        capsys, "embed", "--model", slap_model_folder, path, "-o", tmp_path / "e.npy"
    )
    assert code == 0


def test_outputs_keep_a_non_utf8_file_name(tmp_path):
    from speechbrain_slap.outputs import write_csv, write_json

    name = os.fsdecode(b"caf\xe9.wav")
    assert json.loads(write_json(tmp_path / "r.json", {"file": name}).read_text()) == {"file": name}
    assert (
        write_csv(tmp_path / "r.csv", ["file"], [[name]]).read_bytes() == b"file\r\ncaf\xe9.wav\r\n"
    )
