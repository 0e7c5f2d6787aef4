"""Hostile audio inputs for the inference interface.

Each input gives either a correct result (a finite unit-norm embedding,
checked against a reference where one exists) or
``speechbrain_slap.data.audio.AudioLoadError`` whose message names the input
and says what was wrong. The same files go through the ``slap`` command in
``test_cli.py``.
"""

import math

import numpy as np
import pytest
import soundfile
import torch

from speechbrain_slap.data.audio import AudioLoadError
from speechbrain_slap.inference import SLAP

RATE = 16000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(slap_model_folder):
    return SLAP.from_hparams(source=str(slap_model_folder))


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def _assert_embedding(emb: torch.Tensor):
    assert emb.shape == (64,)
    assert bool(torch.isfinite(emb).all())
    assert float(emb.norm()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.wav", b"", "cannot decode audio"),
        ("notes.wav", b"this is a text file, not audio\n" * 10, "cannot decode audio"),
        ("garbage.flac", bytes(range(256)) * 8, "cannot decode audio"),
        ("headerless.raw", bytes(range(256)) * 8, "cannot decode audio"),
    ],
)
def test_undecodable_files(model, tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioLoadError, match=f"{name}: {reason}") as error:
        model.encode_file(path)
    assert error.value.source == str(path)


def test_missing_file_and_folder(model, tmp_path):
    with pytest.raises(AudioLoadError, match="nothing.wav: file not found"):
        model.encode_file(tmp_path / "nothing.wav")
    with pytest.raises(AudioLoadError, match="not a file"):
        model.encode_file(tmp_path)


def test_header_without_samples(model, tmp_path):
    soundfile.write(tmp_path / "zero_frames.wav", np.zeros((0, 1), np.float32), RATE)
    with pytest.raises(AudioLoadError, match="zero_frames.wav: no audio samples"):
        model.encode_file(tmp_path / "zero_frames.wav")


def test_truncated_file_gives_the_audio_that_is_there_or_an_error(model, tmp_path):
    soundfile.write(tmp_path / "full.wav", _tone(2.0, RATE), RATE, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    try:
        emb = model.encode_file(tmp_path / "cut.wav")
    except AudioLoadError as error:
        assert "cut.wav" in str(error)
    else:
        _assert_embedding(emb)
        # What is there is the first second of the tone.
        half = model.encode_waveforms([torch.from_numpy(_tone(2.0, RATE))[: RATE - 22]])[0]
        assert float(emb @ half) > 0.99


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples(model, tmp_path, bad):
    audio = _tone(1.0, RATE)
    audio[100:103] = bad
    soundfile.write(tmp_path / "bad.wav", audio, RATE, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="bad.wav: 3 of 16000 samples are NaN or infinite"):
        model.encode_file(tmp_path / "bad.wav")


def test_silence_and_one_sample(model, tmp_path):
    soundfile.write(tmp_path / "silence.wav", np.zeros(RATE, np.float32), RATE)
    soundfile.write(tmp_path / "one.wav", np.full(1, 0.5, np.float32), RATE, subtype="FLOAT")
    _assert_embedding(model.encode_file(tmp_path / "silence.wav"))
    one = model.encode_file(tmp_path / "one.wav")
    _assert_embedding(one)
    assert torch.allclose(one, model.encode_waveforms([torch.tensor([0.5])])[0], atol=1e-6)


def test_sample_rates_channels_and_sample_formats(model, tmp_path):
    reference = model.encode_waveforms([torch.from_numpy(_tone(2.0, RATE))])[0]
    for rate in (8000, 44100, 48000, 44101):  # 44,101 Hz: polyphase resampling
        soundfile.write(tmp_path / f"r{rate}.wav", _tone(2.0, rate), rate, subtype="FLOAT")
        emb = model.encode_file(tmp_path / f"r{rate}.wav")
        _assert_embedding(emb)
        assert float(emb @ reference) > 0.97, rate
    six = np.stack([_tone(2.0, RATE)] * 6, axis=1)
    six[:, 3:] *= -1  # channels cancel: the mono mix is silence
    soundfile.write(tmp_path / "six.wav", six, RATE, subtype="FLOAT")
    silence = model.encode_waveforms([torch.zeros(2 * RATE)])[0]
    assert torch.allclose(model.encode_file(tmp_path / "six.wav"), silence, atol=1e-5)
    soundfile.write(tmp_path / "int16.wav", _tone(2.0, RATE), RATE, subtype="PCM_16")
    soundfile.write(tmp_path / "float.wav", _tone(2.0, RATE), RATE, subtype="FLOAT")
    int16 = model.encode_file(tmp_path / "int16.wav")
    assert torch.allclose(model.encode_file(tmp_path / "float.wav"), reference, atol=1e-5)
    assert float(int16 @ reference) > 0.99  # 16-bit quantisation noise only


def test_ten_minute_clip(model, tmp_path):
    soundfile.write(tmp_path / "long.flac", _tone(600.0, RATE, freq=220.0), RATE)
    emb = model.encode_file(tmp_path / "long.flac")
    _assert_embedding(emb)
    # 600 s = 20 windows of 30 s with the same content: their mean is one window.
    window = model.encode_waveforms([torch.from_numpy(_tone(30.0, RATE, freq=220.0))])[0]
    assert float(emb @ window) > 0.999
