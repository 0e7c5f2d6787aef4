"""Generated "speaking style" data: voiced sounds with one of four pitch contours.

Each clip is one voiced sound (a harmonic source through two vowel-like
formants) whose pitch follows one of four contours, the class label:

* ``flat``: a steady pitch (with a slight random drift);
* ``rising``: a glide up by 4 to 9 semitones;
* ``falling``: a glide down by 4 to 9 semitones;
* ``vibrato``: a steady pitch modulated +-0.7 to 1.5 semitones at 4.5 to 7 Hz.

The base pitch (90 to 300 Hz, log-uniform), the formants, the loudness (-35 to
-12 dBFS) and the duration (``min_duration`` to ``max_duration``, uniform) are
random for every clip; glides are centred on the base pitch, so the mean
pitch says nothing about the class, only its movement does. Classes are
balanced (clip ``i`` has class ``i % 4``).

Layout::

    <data_folder>/audio/<split>/<ID>.wav   16-bit PCM, mono
    <data_folder>/<split>.csv              ID, duration, wav, style
    <data_folder>/style_data.json          the config, written last

``wav`` is ``$data_root/audio/<split>/<ID>.wav``: load the manifests with
``DynamicItemDataset.from_csv(path, replacements={"data_root": data_folder})``.
Every clip has its own RNG seeded by ``(seed, split, index)``, so the same
arguments give the same files.

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import json
import os
from pathlib import Path

import numpy as np
import soundfile

STYLES = ("flat", "rising", "falling", "vibrato")
SPLITS = ("train", "valid", "test")
MANIFEST_FIELDS = ("ID", "duration", "wav", "style")
CONFIG_FILE = "style_data.json"

BASE_PITCH_HZ = (90.0, 300.0)
GLIDE_SEMITONES = (4.0, 9.0)
VIBRATO_SEMITONES = (0.7, 1.5)
VIBRATO_RATE_HZ = (4.5, 7.0)
LEVEL_DBFS = (-35.0, -12.0)
NOISE_DBFS = -60.0


def pitch_contour(style: str, rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Pitch offset in semitones from the base pitch at times ``t`` (seconds).

    Arguments
    ---------
    style : str
        One of ``STYLES``.
    rng : numpy.random.Generator
        Draws the glide size, vibrato depth and rate.
    t : numpy.ndarray
        Sample times, starting at 0.

    Returns
    -------
    numpy.ndarray
        Semitones, same shape as ``t``.

    Example
    -------
    >>> t = np.linspace(0.0, 1.0, 5)
    >>> contour = pitch_contour("rising", np.random.default_rng(0), t)
    >>> bool(np.all(np.diff(contour) > 0)), bool(abs(contour[0] + contour[-1]) < 1e-9)
    (True, True)
    """
    position = t / max(float(t[-1]), 1e-9)  # 0 -> 1 over the clip
    if style == "flat":
        return rng.uniform(-0.3, 0.3) * (position - 0.5)
    if style in ("rising", "falling"):
        glide = rng.uniform(*GLIDE_SEMITONES) * (position - 0.5)
        return glide if style == "rising" else -glide
    if style == "vibrato":
        depth = rng.uniform(*VIBRATO_SEMITONES)
        rate = rng.uniform(*VIBRATO_RATE_HZ)
        return depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def voiced_sound(
    style: str, rng: np.random.Generator, duration: float, sample_rate: int = 16000
) -> np.ndarray:
    """One voiced sound with the pitch contour of ``style``, as float32 in [-1, 1].

    Arguments
    ---------
    style : str
        One of ``STYLES``.
    rng : numpy.random.Generator
        Source of every random choice of the clip.
    duration : float
        Seconds.
    sample_rate : int
        Hz.

    Returns
    -------
    numpy.ndarray
        ``(round(duration * sample_rate),)`` float32 waveform.

    Example
    -------
    >>> wave = voiced_sound("vibrato", np.random.default_rng(0), 0.5)
    >>> wave.shape, wave.dtype
    ((8000,), dtype('float32'))
    """
    n = int(round(duration * sample_rate))
    t = np.arange(n) / sample_rate
    base = np.exp(rng.uniform(*np.log(BASE_PITCH_HZ)))
    f0 = base * 2 ** (pitch_contour(style, rng, t) / 12)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    # Harmonics up to 0.45 x the sample rate at the highest pitch: no aliasing.
    orders = np.arange(1, int(0.45 * sample_rate / f0.max()) + 1)
    # Two formants shape the harmonic amplitudes like a vowel (they follow
    # each harmonic's instantaneous frequency).
    formants = (rng.uniform(300, 850), rng.uniform(900, 2300))
    harmonic_freqs = orders[:, None] * f0[None, :]
    gain = sum(np.exp(-0.5 * ((harmonic_freqs - f) / (0.15 * f)) ** 2) for f in formants)
    wave = np.sum((0.05 + gain) / orders[:, None] * np.sin(orders[:, None] * phase), axis=0)
    # 30 ms attack, 60 ms release: no clicks at the edges.
    envelope = np.minimum(1.0, np.minimum(t / 0.03, (t[-1] - t) / 0.06))
    wave *= np.clip(envelope, 0.0, 1.0)
    level = 10 ** (rng.uniform(*LEVEL_DBFS) / 20)
    wave *= level / np.sqrt(np.mean(wave**2))
    wave += 10 ** (NOISE_DBFS / 20) * rng.standard_normal(n)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def generate_style_data(
    data_folder: str | os.PathLike,
    seed: int = 0,
    n_train: int = 400,
    n_valid: int = 80,
    n_test: int = 80,
    min_duration: float = 0.5,
    max_duration: float = 3.0,
    sample_rate: int = 16000,
) -> dict[str, Path]:
    """Writes the wavs and manifests, or reuses the same data already on disk.

    The config file is written last: a folder holding it with the same config
    is returned at once; a different config raises rather than deleting data.

    Arguments
    ---------
    data_folder : str or path
        Where to write ``audio/``, the manifests and the config file.
    seed : int
        Data seed.
    n_train, n_valid, n_test : int
        Clips per split.
    min_duration, max_duration : float
        Clip duration range in seconds.
    sample_rate : int
        Hz.

    Returns
    -------
    dict
        Split name -> manifest path.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> manifests = generate_style_data(folder, n_train=4, n_valid=4, n_test=4, max_duration=1.0)
    >>> rows = list(csv.DictReader(open(manifests["train"])))
    >>> [row["style"] for row in rows]
    ['flat', 'rising', 'falling', 'vibrato']
    """
    data_folder = Path(data_folder)
    if not 0 < min_duration <= max_duration:
        raise ValueError(
            f"need 0 < min_duration <= max_duration, got {min_duration}, {max_duration}"
        )
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    if min(sizes.values()) < 1:
        raise ValueError(f"every split needs at least one clip, got {sizes}")
    config = {
        "seed": int(seed),
        **{f"n_{split}": int(size) for split, size in sizes.items()},
        "min_duration": float(min_duration),
        "max_duration": float(max_duration),
        "sample_rate": int(sample_rate),
    }
    manifests = {split: data_folder / f"{split}.csv" for split in SPLITS}
    config_path = data_folder / CONFIG_FILE
    if config_path.exists():
        found = json.loads(config_path.read_text())
        if found != config:
            raise ValueError(
                f"{config_path} was written with {found}, not {config}: "
                "delete that folder or choose another data_folder"
            )
        return manifests

    for split_index, split in enumerate(SPLITS):
        audio_folder = data_folder / "audio" / split
        audio_folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for index in range(sizes[split]):
            rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, index]))
            style = STYLES[index % len(STYLES)]
            duration = rng.uniform(min_duration, max_duration)
            wave = voiced_sound(style, rng, duration, sample_rate)
            clip_id = f"{split}_{index:05d}"
            soundfile.write(audio_folder / f"{clip_id}.wav", wave, sample_rate, "PCM_16")
            rows.append(
                {
                    "ID": clip_id,
                    "duration": f"{len(wave) / sample_rate:.4f}",
                    "wav": f"$data_root/audio/{split}/{clip_id}.wav",
                    "style": style,
                }
            )
        with open(manifests[split], "w", newline="", encoding="utf-8") as fout:
            writer = csv.DictWriter(fout, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return manifests
