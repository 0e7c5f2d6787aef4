"""``SLAP.encode_files`` / ``classify_files`` / ``caption_files`` and inference precision.

On the tiny exported model (``slap_model_folder``). The batched methods read
files through the ``slap`` command's reader (``evaluation.process_files``);
each row is compared with the one-file method of the same file.
"""

import math

import numpy as np
import pytest
import soundfile
import torch

from speechbrain_slap import cli
from speechbrain_slap.inference import SLAP
from speechbrain_slap.precision import PRECISIONS, DynamicInt8Linear

RATE = 16000
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sound(seconds: float, freq: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * math.pi * freq * t) * ((t * 3.0) % 1.0 < 0.5)
    return (tone + 0.03 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def model(slap_model_folder):
    # A 20 s budget: several batches, and the 65 s file (three windows) alone in one.
    return SLAP.from_hparams(
        source=str(slap_model_folder), run_opts={"device": "cpu"}, batch_seconds=20.0
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Six readable files of 0.4 to 65 s (one a 22.05 kHz stereo FLAC) and two unreadable."""
    root = tmp_path_factory.mktemp("file_batches")
    good = []
    for i, seconds in enumerate([0.4, 3.0, 12.5, 65.0, 7.0]):
        path = root / f"clip{i}.wav"
        soundfile.write(path, _sound(seconds, 200 + 150 * i, seed=i), RATE, subtype="FLOAT")
        good.append(str(path))
    stereo = root / "stereo.flac"
    wave = _sound(2.0, 700, seed=9)
    soundfile.write(stereo, np.stack([wave, wave[::-1]], 1), 22050)
    good.append(str(stereo))
    text = root / "notes.wav"
    text.write_text("not audio\n")
    return {"good": good, "text": str(text), "missing": str(root / "missing.wav")}


def test_encode_files_equals_encode_file_one_by_one(model, files):
    assert model.window < 65 * RATE  # the 65 s clip is windowed
    embeddings, names, failed = model.encode_files(files["good"])
    assert names == files["good"] and failed == []
    assert embeddings.shape == (len(files["good"]), model.encode_file(files["good"][0]).numel())
    for row, path in zip(embeddings, files["good"], strict=True):
        torch.testing.assert_close(row, model.encode_file(path), atol=1e-5, rtol=0)


def test_interfaces_run_the_inference_layout_with_the_plain_layouts_numbers(model, files):
    encoder = model.mods.audio_encoder
    assert encoder.inference_layout
    fast = model.encode_files(files["good"]).output
    encoder.inference_layout = False
    try:
        plain = model.encode_files(files["good"]).output
    finally:
        encoder.inference_layout = True
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


def test_unreadable_files_are_reported_and_the_others_keep_their_order(model, files, caplog):
    good = files["good"]
    paths = [good[0], files["missing"], good[1], files["text"], good[2]]
    embeddings, names, failed = model.encode_files(paths)
    assert names == [good[0], good[1], good[2]]
    assert [f["file"] for f in failed] == [files["missing"], files["text"]]
    assert failed[0]["error"] == "file not found"
    assert failed[1]["error"].startswith("cannot decode audio")
    # Logged as the slap command prints them: FILE: REASON.
    assert f"{files['missing']}: file not found" in caplog.text
    expected = torch.stack([model.encode_file(p) for p in names])
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=0)
    # Nothing readable: an empty (0, D) result, every file failed.
    embeddings, names, failed = model.encode_files([files["missing"]])
    assert embeddings.shape == (0, expected.shape[1]) and names == [] and len(failed) == 1


def test_a_single_path_is_refused(model, files):
    with pytest.raises(TypeError, match="sequence of files"):
        model.encode_files(files["good"][0])


def test_classify_files_equals_classify_file(model, files):
    labels = ["a dog barks", "rain falls", "a bell rings"]
    paths = [files["good"][1], files["text"], files["good"][3], files["good"][5]]
    (scores, best, index, text_labels), names, failed = model.classify_files(paths, labels)
    assert names == [paths[0], paths[2], paths[3]] and len(failed) == 1
    assert scores.shape == (3, 3)
    for i, path in enumerate(names):
        one_scores, one_best, one_index, one_labels = model.classify_file(path, labels)
        torch.testing.assert_close(scores[i], one_scores[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(best[i], one_best[0], atol=1e-5, rtol=0)
        assert int(index[i]) == int(one_index[0]) and text_labels[i] == one_labels[0]


def test_caption_files_equals_caption_file(model, files):
    paths = [files["good"][0], files["missing"], files["good"][2], files["good"][4]]
    captions, names, failed = model.caption_files(paths, beam_size=2, max_length=8)
    assert names == [paths[0], paths[2], paths[3]] and len(failed) == 1
    assert captions == [model.caption_file(p, beam_size=2, max_length=8) for p in names]


# -- precision -------------------------------------------------------------------------------
def test_bf16_is_within_cosine_0_99_of_fp32_on_cpu(slap_model_folder, model, files):
    half = SLAP.from_hparams(source=str(slap_model_folder), precision="bf16")
    assert half.precision == "bf16"
    fp32 = model.encode_files(files["good"]).output
    bf16 = half.encode_files(files["good"]).output
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32)  # autocast did run in bf16
    cosine = (bf16 * fp32).sum(-1)
    assert bool((cosine > 0.99).all()), cosine
    texts = ["a dog barks", "rain falls on a roof"]
    cosine = (half.encode_text(texts) * model.encode_text(texts)).sum(-1)
    assert bool((cosine > 0.99).all()), cosine


def test_precision_from_run_opts_and_set_precision(slap_model_folder):
    loaded = SLAP.from_hparams(source=str(slap_model_folder), run_opts={"precision": "bf16"})
    assert loaded.precision == "bf16"
    loaded.set_precision("fp32")
    assert loaded.precision == "fp32"
    bad = "precision must be one of fp32, bf16, fp16, int8; got 'half'"
    with pytest.raises(ValueError, match=bad):
        loaded.set_precision("half")


def test_int8_is_within_cosine_0_98_of_fp32_and_switches_back(slap_model_folder, model, files):
    loaded = SLAP.from_hparams(source=str(slap_model_folder), run_opts={"precision": "int8"})
    assert loaded.precision == "int8"
    fp32_encoder = loaded._fp32_modules["audio_encoder"]
    linears = [m for m in loaded.mods.audio_encoder.modules() if type(m) is torch.nn.Linear]
    assert not linears  # every linear layer of the audio encoder is an int8 one
    assert not [m for m in loaded.mods.audio_pooling.modules() if type(m) is torch.nn.Linear]
    assert sum(isinstance(m, DynamicInt8Linear) for m in loaded.mods.audio_encoder.modules()) > 0
    fp32 = model.encode_files(files["good"]).output
    int8 = loaded.encode_files(files["good"]).output
    assert int8.dtype == torch.float32 and not torch.equal(int8, fp32)
    cosine = (int8 * fp32).sum(-1)
    assert bool((cosine > 0.98).all()), cosine
    # The text tower is not quantized.
    texts = ["a dog barks"]
    torch.testing.assert_close(loaded.encode_text(texts), model.encode_text(texts))
    loaded.set_precision("fp32")
    assert loaded.mods.audio_encoder is fp32_encoder
    torch.testing.assert_close(loaded.encode_files(files["good"]).output, fp32)
    loaded.set_precision("int8")  # the int8 copy is made once
    assert loaded.mods.audio_encoder is loaded._int8_modules["audio_encoder"]
    torch.testing.assert_close(loaded.encode_files(files["good"]).output, int8, atol=0, rtol=0)
    loaded.device_type, loaded.device = "cuda", "cuda:0"
    with pytest.raises(ValueError, match="int8 runs on the CPU only; the model is on cuda:0"):
        loaded.set_precision("int8")


@pytest.mark.parametrize("command", ["embed", "classify", "index", "search", "caption"])
def test_every_model_command_takes_precision(command, monkeypatch, capsys):
    argv = {
        "embed": ["embed", "a.wav", "-o", "e.npy"],
        "classify": ["classify", "a.wav", "--labels", "dog"],
        "index": ["index", "folder", "-o", "i.npz"],
        "search": ["search", "i.npz", "a dog"],
        "caption": ["caption", "a.wav"],
    }[command]
    parser = cli.build_parser()
    args = parser.parse_args([*argv, "--model", "m", "--precision", "bf16"])
    assert args.precision == "bf16"
    assert parser.parse_args([*argv, "--model", "m"]).precision == "fp32"
    # A bad value is a usage error naming the choices.
    assert cli.main([*argv, "--model", "m", "--precision", "half"]) == 2
    assert "--precision: invalid choice: 'half' (choose from" in capsys.readouterr().err


def test_every_model_command_is_covered():
    # The commands with --model are the ones the test above checks, and --precision
    # offers the names speechbrain_slap.precision accepts (spelled out in cli.py).
    assert cli.PRECISIONS == PRECISIONS
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    with_model = sorted(
        name
        for name, p in sub.choices.items()
        if any("--model" in a.option_strings for a in p._actions)
    )
    assert with_model == ["caption", "classify", "embed", "index", "search"]


@pytest.mark.parametrize("precision, bound", [("bf16", 0.99), ("int8", 0.98)])
def test_cli_precision_reaches_the_model(
    slap_model_folder, model, files, tmp_path, capsys, precision, bound
):
    out = tmp_path / "emb.npy"
    argv = ["embed", "--model", slap_model_folder, *files["good"][:3], "-o", out, "--quiet"]
    assert cli.main([str(a) for a in [*argv, "--precision", precision]]) == 0
    capsys.readouterr()
    low = torch.from_numpy(np.load(out))
    fp32 = model.encode_files(files["good"][:3]).output
    cosine = (low * fp32).sum(-1)
    assert not torch.equal(low, fp32) and bool((cosine > bound).all()), cosine
