"""Seeded fuzzing of the two untrusted inputs: audio files and model-folder yaml.

* Audio: WAV and FLAC files whose header fields (channels, sample rate, byte
  rate, block size, bits, data size) are set to hostile values, whose bytes
  are flipped or cut anywhere, and whose float samples are set to inf, NaN,
  3e38, 1e20, denormals or just above ``MAX_ABS_SAMPLE``, go through the one
  reader (``decode_audio``, and ``load_audio`` for files) and then the tiny
  model's encoder. Every case ends in a finite, bounded waveform and a finite
  unit-norm embedding, or an ``AudioLoadError`` naming the input.
* Yaml: code-running tags (``!apply:``, ``!name:``, ``!new:``, ``!module:``)
  are placed at random on values, keys, complex keys, flow collections,
  anchors behind aliases and merge keys, among harmless entries. Every file is
  refused by the allow-list (``check_yaml_targets``) and the target module,
  which records its import, is never imported.

The generators are seeded, so a failure names a case that can be replayed;
the case counts keep the whole file to a few seconds on one CPU thread.
"""

import io
import math
import struct
import sys
import textwrap
import time

import numpy as np
import pytest
import soundfile
import torch

from speechbrain_slap.data.audio import (
    MAX_ABS_SAMPLE,
    MAX_DECODED_SAMPLES,
    AudioLoadError,
    decode_audio,
    load_audio,
)
from speechbrain_slap.model_folder import (
    ModelFolderError,
    check_yaml_targets,
    untrusted_yaml_targets,
)

SEED = 17
N_AUDIO_CASES = 400
N_YAML_CASES = 150
RATE = 16000

HOSTILE_INTS = [0, 1, 2, 3, 7, 8, 255, 999, 65535, 2**31 - 1, 2**32 - 1]
HOSTILE_SAMPLES = [
    math.inf,
    -math.inf,
    math.nan,
    3e38,
    -3e38,
    1e20,
    1e-40,
    -0.0,
    MAX_ABS_SAMPLE * 1.5,
]


def _base_file(rng: np.random.Generator) -> tuple[bytes, str]:
    """A valid WAV (16-bit, 24-bit or float) or FLAC of random rate, channels and length."""
    kind = rng.choice(["PCM_16", "PCM_24", "FLOAT", "FLAC"])
    rate = int(rng.choice([8000, 16000, 22050, 44100, 48000]))
    channels = int(rng.integers(1, 4))
    frames = int(rng.integers(1, 4000))
    audio = (0.5 * rng.standard_normal((frames, channels))).clip(-1, 1).astype(np.float32)
    buffer = io.BytesIO()
    if kind == "FLAC":
        soundfile.write(buffer, audio, rate, format="FLAC", subtype="PCM_16")
        return buffer.getvalue(), "flac"
    soundfile.write(buffer, audio, rate, format="WAV", subtype=str(kind))
    return buffer.getvalue(), "wav"


def _set(data: bytearray, offset: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if 0 <= offset and offset + size <= len(data):
        data[offset : offset + size] = struct.pack(fmt, value % (1 << (8 * size)))


def _mutate(data: bytes, ext: str, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """1 to 3 random mutations of a file; returns the bytes and what was done."""
    data, done = bytearray(data), []
    for _ in range(int(rng.integers(1, 4))):
        what = rng.choice(["field", "flip", "truncate", "samples"])
        fmt_chunk = data.find(b"fmt ")
        if what == "field" and ext == "wav" and fmt_chunk >= 0:
            # fmt chunk: tag, channels, rate, byte rate, block align, bits per sample
            name, offset, fmt = [
                ("channels", 10, "<H"),
                ("rate", 12, "<I"),
                ("byte rate", 16, "<I"),
                ("block align", 20, "<H"),
                ("bits", 22, "<H"),
            ][int(rng.integers(0, 5))]
            value = int(rng.choice(HOSTILE_INTS))
            _set(data, fmt_chunk + offset, fmt, value)
            done.append(f"{name}={value}")
        elif what == "field" and ext == "wav":
            continue
        elif what == "field":  # FLAC STREAMINFO: rate (20 bits), channels (3), bits (5)
            offset = 18 + int(rng.integers(0, 4))
            value = int(rng.integers(0, 256))
            _set(data, offset, "B", value)
            done.append(f"streaminfo[{offset}]={value}")
        elif what == "flip":
            end = min(len(data), 96)
            for offset in rng.integers(0, end, size=int(rng.integers(1, 6))):
                data[offset] ^= int(rng.integers(1, 256))
            done.append("flipped header bytes")
        elif what == "truncate":
            cut = int(rng.integers(0, len(data) + 1))
            data = data[:cut]
            done.append(f"cut at {cut}")
        elif ext == "wav" and data.find(b"data") >= 0:
            # Float samples (in a 16/24-bit file: arbitrary bit patterns) set to hostile values.
            start = data.find(b"data") + 8
            for _ in range(int(rng.integers(1, 4))):
                value = float(rng.choice(HOSTILE_SAMPLES))
                offset = start + 4 * int(rng.integers(0, max(1, (len(data) - start) // 4)))
                if offset + 4 <= len(data):
                    data[offset : offset + 4] = struct.pack("<f", value)
                done.append(f"sample={value}")
        if what == "field" and ext == "wav" and rng.random() < 0.3:
            data_chunk = data.find(b"data")
            value = int(rng.choice(HOSTILE_INTS))
            _set(data, data_chunk + 4, "<I", value)
            done.append(f"data size={value}")
    return bytes(data), done


def _check_waveform(wav: torch.Tensor, case: str) -> None:
    assert isinstance(wav, torch.Tensor) and wav.dim() == 1 and wav.dtype == torch.float32, case
    assert 0 < wav.numel() <= MAX_DECODED_SAMPLES, case
    assert bool(torch.isfinite(wav).all()), case


@pytest.fixture(scope="module")
def model(slap_model_folder):
    from speechbrain_slap.inference import SLAP

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield SLAP.from_hparams(source=str(slap_model_folder), run_opts={"device": "cpu"})
    torch.set_num_threads(threads)


@pytest.mark.timeout(300)
def test_hostile_audio_ends_in_finite_audio_or_a_named_error(model, tmp_path):
    rng = np.random.default_rng(SEED)
    start, outcomes, decoded = time.perf_counter(), {"read": 0, "refused": 0}, []
    for number in range(N_AUDIO_CASES):
        base, ext = _base_file(rng)
        data, done = _mutate(base, ext, rng)
        source = f"case{number}.{ext}"
        case = f"case {number} (seed {SEED}): {ext} {done}"
        try:
            if number % 8 == 0:  # the path reader too (same decoder, plus the file checks)
                path = tmp_path / source
                path.write_bytes(data)
                source = str(path)
                wav = load_audio(path, RATE)
            else:
                wav = decode_audio(data, source, RATE)
        except AudioLoadError as error:
            assert str(error).startswith(f"{source}: ") and error.reason, case
            outcomes["refused"] += 1
            continue
        _check_waveform(wav, case)
        outcomes["read"] += 1
        decoded.append((wav[: RATE // 2], case))
    # Everything the reader let through is encoded to a finite unit-norm embedding.
    for wav, case in decoded[::2]:
        emb = model.encode_waveforms([wav])[0]
        assert bool(torch.isfinite(emb).all()), case
        assert float(emb.norm()) == pytest.approx(1.0, abs=1e-4), case
    assert outcomes["read"] > 20 and outcomes["refused"] > 20, outcomes  # both paths exercised
    assert time.perf_counter() - start < 240


# -- yaml --------------------------------------------------------------------------------------
TAGS = ["!apply:", "!name:", "!new:", "!module:"]
# Where a tag goes: {t} is the tagged node.
PLACEMENTS = [
    "value: {t}\n",
    "key:\n  {t} : 1\n",
    "? {t}\n: 1\n",
    "flow: {{{t} : 1, k: 2}}\n",
    "flow_value: {{k: {t}}}\n",
    "sequence: [1, {t}]\n",
    "block_sequence:\n  - 1\n  - {t}\n",
    "base: &b\n  q: {t}\nuse: *b\n",
    "merged_base: &m {{q: {t}}}\nmerged:\n  <<: *m\n  r: 1\n",
    "nested:\n  a:\n    b:\n      {t} : 1\n",
    "list_of_maps:\n  - {{x: {t}}}\n",
]
HARMLESS = [
    "sample_rate: 16000\n",
    "name: a model\n",
    "sizes: [1, 2, 3]\n",
    "nested_ok:\n  x: 1\n  y: [a, b]\n",
    "anchor_ok: &ok {a: 1}\nalias_ok: *ok\n",
]


@pytest.fixture
def sentinel(tmp_path, monkeypatch):
    """A module that records being imported (a marker file) and being called."""
    name = f"slap_fuzz_sentinel_{abs(hash(str(tmp_path)))}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            Path({str(marker)!r}).touch()
            class Thing:
                def __init__(self, *args, **kwargs):
                    Path({str(marker)!r}).write_text("called")
            def hit(*args, **kwargs):
                Path({str(marker)!r}).write_text("called")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def _tagged(rng: np.random.Generator, module: str) -> str:
    """A code-running tag on a node, always with a value (a ``]`` after it is part of the tag)."""
    tag = str(rng.choice(TAGS))
    if tag == "!module:":
        return f"{tag}{module} ''"
    target = str(rng.choice(["hit", "Thing", "Thing.__init__", "os.system"]))
    node = f"{tag}{module}.{target}"
    if tag != "!name:" and rng.random() < 0.5:
        return node + str(rng.choice([" []", " {}", " [1, 2]", " {a: 1}"]))
    return node + " ''"


def test_hostile_yaml_is_refused_and_runs_nothing(tmp_path, sentinel):
    module, marker = sentinel
    rng = np.random.default_rng(SEED)
    for number in range(N_YAML_CASES):
        parts = [str(p) for p in rng.choice(HARMLESS, int(rng.integers(0, 3)), replace=False)]
        for index in range(int(rng.integers(1, 3))):
            placement = str(rng.choice(PLACEMENTS))
            # distinct top-level keys, so that a later entry does not replace an earlier one
            text = placement.format(t=_tagged(rng, module))
            text = (
                "\n".join(
                    line.replace(line.split(":")[0], f"{line.split(':')[0]}_{index}", 1)
                    if line and not line[0].isspace() and not line.startswith(("?", ":", "-"))
                    else line
                    for line in text.split("\n")
                )
                .replace("*b", f"*b_{index}")
                .replace("&b", f"&b_{index}")
            )
            text = text.replace("*m", f"*m_{index}").replace("&m", f"&m_{index}")
            parts.insert(int(rng.integers(0, len(parts) + 1)), text)
        path = tmp_path / f"case{number}.yaml"
        path.write_text("".join(parts))
        case = f"case {number} (seed {SEED}):\n{path.read_text()}"
        found = untrusted_yaml_targets(path)
        assert any(module in item for item in found), (case, found)
        with pytest.raises(ModelFolderError, match="outside the allow-list"):
            check_yaml_targets(path)
        assert not marker.exists(), case
        assert module not in sys.modules, case
