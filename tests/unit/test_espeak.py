"""Tests for data/espeak.py: eSpeak NG speech through ctypes (the ``asr`` extra).

Rate and pitch are checked on the audio itself (duration, an autocorrelation
pitch estimate), and reproducibility in fresh processes against a process
that synthesised other speech first.
"""

import re

import numpy as np
import pytest

from speechbrain_slap.data.espeak import (
    SAMPLE_RATE,
    load_espeak,
    synthesize_in_new_process,
)

SENTENCE = "a sunny day in the warm month of may"


@pytest.fixture(scope="module")
def espeak():
    return load_espeak()


def median_pitch(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Median f0 (Hz) of the voiced 40 ms frames, by autocorrelation (60-400 Hz)."""
    x = wave.astype(np.float64)
    size, rms = int(0.04 * sample_rate), np.sqrt(np.mean(x**2))
    lo, hi = sample_rate // 400, sample_rate // 60
    pitches = []
    for start in range(0, x.size - size, size // 2):
        frame = x[start : start + size] - x[start : start + size].mean()
        if np.sqrt(np.mean(frame**2)) < 0.1 * rms:
            continue
        autocorrelation = np.correlate(frame, frame, "full")[size - 1 :]
        lag = lo + int(np.argmax(autocorrelation[lo:hi]))
        if autocorrelation[lag] > 0.5 * autocorrelation[0]:  # clearly periodic: voiced
            pitches.append(sample_rate / lag)
    assert len(pitches) >= 10, "too few voiced frames to estimate a pitch"
    return float(np.median(pitches))


def test_speech_is_int16_at_22050_hz_and_not_silent(espeak):
    wave = espeak.synthesize(SENTENCE)
    assert espeak.sample_rate == SAMPLE_RATE == 22050
    assert wave.dtype == np.int16 and wave.ndim == 1
    assert 1.5 < wave.size / SAMPLE_RATE < 4.0  # 9 words at 175 words a minute
    assert np.abs(wave).max() > 3000


def test_rate_sets_the_duration(espeak):
    """Twice the words per minute: about half the duration."""
    slow = espeak.synthesize(SENTENCE, rate=120).size
    fast = espeak.synthesize(SENTENCE, rate=240).size
    assert 1.6 < slow / fast < 2.4


def test_pitch_sets_the_fundamental_frequency(espeak):
    low = median_pitch(espeak.synthesize(SENTENCE, pitch=30, pitch_range=0))
    high = median_pitch(espeak.synthesize(SENTENCE, pitch=80, pitch_range=0))
    assert 60 < low < high < 250
    assert high > 1.3 * low


def test_voices_differ(espeak):
    male = median_pitch(espeak.synthesize(SENTENCE, voice="en-us", pitch_range=0))
    female = median_pitch(espeak.synthesize(SENTENCE, voice="en-us+f2", pitch_range=0))
    assert female > 1.4 * male


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"voice": "xx-nowhere"}, "no voice 'xx-nowhere'"),
        ({"rate": 20}, "rate must lie in [80, 450]"),
        ({"pitch": 101}, "pitch must lie in [0, 100]"),
        ({"pitch_range": -1}, "pitch_range must lie in [0, 100]"),
        ({"text": "  "}, "empty"),
    ],
)
def test_bad_arguments_are_refused(espeak, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        espeak.synthesize(**{"text": SENTENCE, **kwargs})
    assert espeak.synthesize("still working").size > 0


def test_a_new_process_makes_the_same_samples_whatever_came_before(espeak):
    """In one process eSpeak keeps a pitch-flutter phase across utterances; fresh ones agree."""
    utterances = [
        {"text": "the big red dog", "voice": "en-us", "rate": 150, "seed": 3},
        {"text": "the big red dog", "voice": "en+f4", "rate": 190, "pitch": 70, "seed": 4},
        {"text": "a quiet frog", "voice": "en-us+klatt", "pitch_range": 20, "seed": 5},
    ]
    espeak.synthesize("something else first, to move this process's state on")
    first = list(synthesize_in_new_process(utterances))
    second = list(synthesize_in_new_process(utterances))
    assert len(first) == 3
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert first[0].size > first[1].size  # 150 against 190 words a minute
