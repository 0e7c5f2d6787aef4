"""Embedded, seeded audio-caption corpus: procedural sound scenes with exact captions.

The pretraining recipe trains on this corpus with no download. Every clip is a
*scene* of one or two *event groups* in temporal order; a group is one sound
type repeated ``count`` times at one pitch and one loudness, e.g. "a loud dog
barks twice, then a high bell rings once". Sounds are synthesised in numpy and
the captions are generated from the same scene description, so each caption
says exactly what is audible.

Corpus layout (``generate_corpus``)::

    <output_folder>/audio/<split>/<ID>.wav   16-bit PCM, mono
    <output_folder>/<split>.csv              SpeechBrain manifest
    <output_folder>/corpus.json              config + counts, written last

Manifest columns: ``ID, duration, wav, caption, captions, sound_type,
composition, scene, events``. ``wav`` is ``$data_root/audio/<split>/<ID>.wav``, so load with
``DynamicItemDataset.from_csv(path, replacements={"data_root": folder})``.
``caption`` is the first phrasing (for evaluation); ``captions`` holds all
phrasings joined with ``CAPTION_SEPARATOR`` (``" | "``, which no caption
contains), for training to pick one at random. ``sound_type`` is the type of
the first event (for zero-shot classification with ``zero_shot_prompts()``)
``composition`` the ordered event types joined with
``COMPOSITION_SEPARATOR`` (e.g. ``"dog>bell"``), ``scene`` the groups'
attributes and the background as JSON (``scene_to_json``), and ``events`` when
each event sounds (``"dog@0.512-0.781;..."``, seconds; ``parse_events``), from
which ``frame_labels`` gives the sound type at every 160 ms encoder step.

Splits. A composition is the ordered tuple of the scene's event types. A
seeded 20 of the 90 ordered pairs of distinct types are held out
(``split_compositions``): each type is first in exactly two of them and second
in exactly two, and the reverse of every held-out pair stays in training. The
**test** split holds only held-out pairs, so every test composition is unseen
in training, while every type still appears in training, alone and in pairs.
**valid** has the train distribution (single types and seen pairs only) with
disjoint clips, so it measures in-distribution retrieval; test measures
compositional generalisation.

Reproducibility. Each clip is drawn from its own RNGs, seeded by
``(seed, split, index)`` through ``numpy.random.SeedSequence``, so a clip does
not depend on the order of generation or on the sizes of the other splits, and
the same arguments give a byte-identical corpus.

Authors
 * speechbrain-slap contributors 2026
"""

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from speechbrain_slap.data.manifest import CAPTION_SEPARATOR, write_rows

# Bump whenever a change alters the generated audio, captions or manifests, so that an
# old corpus on disk is not mistaken for the current one (2: events and scene columns).
CORPUS_VERSION = 2

SPLITS = ("train", "valid", "test")
COMPOSITION_SEPARATOR = ">"
PITCHES = ("low", "high")
LOUDNESSES = ("quiet", "loud")
COUNTS = (1, 2, 3)
MAX_GROUPS = 2

# Level of an event's loudest 25 ms frame (RMS, dBFS).
LOUDNESS_DBFS = {"quiet": -30.0, "loud": -12.0}
# Peak limiter of each event: identity up to the knee, smoothly bounded by the peak.
LIMITER_KNEE = 0.6
EVENT_PEAK = 0.9
BACKGROUND_DBFS = -45.0
BACKGROUND_PROB = 0.5
# Fraction of train/valid scenes with a single event group (the rest are pairs).
SINGLE_FRACTION = 0.25
# Held-out ordered pairs are (perm[i], perm[i + shift]) over a seeded permutation.
HELD_OUT_SHIFTS = (1, 3)

# Layout, in seconds: gaps between repetitions of a group, between the two
# groups, and the minimum silence at each end of the clip.
REPEAT_GAP = (0.12, 0.4)
GROUP_GAP = (0.3, 0.9)
EDGE_MARGIN = 0.05


@dataclass(frozen=True)
class _SoundWords:
    """How captions name one sound type.

    ``noun``/``verb`` follow adjectives ("a loud high-pitched dog barks"),
    ``subject``/``gerund`` stand alone ("a dog barking"), ``event``/``events``
    name one or several occurrences ("two dog barks").
    """

    noun: str
    verb: str
    subject: str
    gerund: str
    event: str
    events: str
    countable: bool = True


_WORDS = {
    "dog": _SoundWords("dog", "barks", "a dog", "barking", "dog bark", "dog barks"),
    "bird": _SoundWords("bird", "chirps", "a bird", "chirping", "bird chirp", "bird chirps"),
    "siren": _SoundWords("siren", "wails", "a siren", "wailing", "siren wail", "siren wails"),
    "bell": _SoundWords("bell", "rings", "a bell", "ringing", "bell ring", "bell rings"),
    "drum": _SoundWords("drum", "thumps", "a drum", "thumping", "drum hit", "drum hits"),
    "engine": _SoundWords(
        "engine", "rumbles", "an engine", "rumbling", "engine rumble", "engine rumbles"
    ),
    "rain": _SoundWords(
        "rain", "patters", "rain", "pattering", "rain shower", "rain showers", countable=False
    ),
    "whistle": _SoundWords(
        "whistle", "blows", "a whistle", "blowing", "whistle blast", "whistle blasts"
    ),
    "knock": _SoundWords("knock", "is heard", "someone", "knocking", "knock", "knocks"),
    "buzzer": _SoundWords("buzzer", "buzzes", "a buzzer", "buzzing", "buzzer beep", "buzzer beeps"),
}

SOUND_TYPES = tuple(_WORDS)

_COUNT_ADVERB = {1: "once", 2: "twice", 3: "three times"}
_COUNT_TIMES = {1: "one time", 2: "two times", 3: "three times"}
_COUNT_NUMERAL = {1: "a single", 2: "two", 3: "three"}
_LOUDNESS_ADVERB = {"quiet": "quietly", "loud": "loudly"}


@dataclass(frozen=True)
class EventGroup:
    """One sound type repeated ``count`` times at one pitch and loudness.

    Arguments
    ---------
    sound_type : str
        One of ``SOUND_TYPES``.
    pitch : str
        ``"low"`` or ``"high"`` (clearly separate frequency ranges).
    loudness : str
        ``"quiet"`` or ``"loud"`` (see ``LOUDNESS_DBFS``).
    count : int
        Number of repetitions, 1 to 3.

    Example
    -------
    >>> EventGroup("dog", "high", "loud", 2).count
    2
    """

    sound_type: str
    pitch: str
    loudness: str
    count: int

    def __post_init__(self):
        if self.sound_type not in SOUND_TYPES:
            raise ValueError(f"sound_type must be one of {SOUND_TYPES}, got {self.sound_type!r}")
        if self.pitch not in PITCHES:
            raise ValueError(f"pitch must be one of {PITCHES}, got {self.pitch!r}")
        if self.loudness not in LOUDNESSES:
            raise ValueError(f"loudness must be one of {LOUDNESSES}, got {self.loudness!r}")
        if self.count not in COUNTS:
            raise ValueError(f"count must be one of {COUNTS}, got {self.count!r}")


@dataclass(frozen=True)
class Scene:
    """A clip description: event groups in temporal order, duration, background.

    Arguments
    ---------
    groups : tuple of EventGroup
        One or two groups; the second starts after the first ends.
    duration : float
        Clip duration in seconds (at least ``min_scene_duration(groups)``).
    background : bool
        Whether faint background noise plays throughout (and is captioned).

    Example
    -------
    >>> scene = Scene((EventGroup("dog", "high", "loud", 2), EventGroup("bell", "low", "quiet", 1)),
    ...               duration=4.0, background=False)
    >>> scene.composition
    ('dog', 'bell')
    """

    groups: tuple[EventGroup, ...]
    duration: float
    background: bool

    def __post_init__(self):
        if not 1 <= len(self.groups) <= MAX_GROUPS:
            raise ValueError(f"a scene has 1 to {MAX_GROUPS} groups, got {len(self.groups)}")
        if self.duration < min_scene_duration(self.groups) - 1e-9:
            raise ValueError(
                f"duration {self.duration} s is shorter than the "
                f"{min_scene_duration(self.groups):.2f} s these groups need"
            )

    @property
    def composition(self) -> tuple[str, ...]:
        """The ordered tuple of the groups' sound types."""
        return tuple(group.sound_type for group in self.groups)


# --------------------------------------------------------------------------- captions


def _group_clause(group: EventGroup) -> str:
    words = _WORDS[group.sound_type]
    article = "a " if words.countable else ""
    return (
        f"{article}{group.loudness} {group.pitch}-pitched {words.noun} {words.verb} "
        f"{_COUNT_ADVERB[group.count]}"
    )


def _group_noun_phrase(group: EventGroup) -> str:
    words = _WORDS[group.sound_type]
    event = words.event if group.count == 1 else words.events
    return f"{_COUNT_NUMERAL[group.count]} {group.loudness} {group.pitch} {event}"


def _group_gerund(group: EventGroup) -> str:
    words = _WORDS[group.sound_type]
    return (
        f"{words.subject} {words.gerund} {_LOUDNESS_ADVERB[group.loudness]} "
        f"{_COUNT_TIMES[group.count]} at a {group.pitch} pitch"
    )


def _group_sound_of(group: EventGroup) -> str:
    words = _WORDS[group.sound_type]
    return (
        f"the sound of {words.subject} {words.gerund} {_COUNT_ADVERB[group.count]}, "
        f"{group.loudness} and {group.pitch}"
    )


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def scene_captions(scene: Scene) -> list[str]:
    """All phrasings of a scene's caption; the first is the one used for evaluation.

    Every phrasing names each group's sound type (the word in ``SOUND_TYPES``),
    pitch, loudness and count, in temporal order, and mentions the background
    noise when there is one.

    Arguments
    ---------
    scene : Scene
        The scene to describe.

    Returns
    -------
    list of str
        Four phrasings, none containing ``CAPTION_SEPARATOR``.

    Example
    -------
    >>> scene = Scene((EventGroup("dog", "high", "loud", 2), EventGroup("bell", "low", "quiet", 1)),
    ...               duration=4.0, background=False)
    >>> for caption in scene_captions(scene):
    ...     print(caption)
    A loud high-pitched dog barks twice, then a quiet low-pitched bell rings once.
    Two loud high dog barks followed by a single quiet low bell ring.
    First a dog barking loudly two times at a high pitch, then a bell ringing quietly one time at a low pitch.
    The sound of a dog barking twice, loud and high, then the sound of a bell ringing once, quiet and low.
    """  # noqa: E501
    groups = scene.groups
    gerunds = ", then ".join(_group_gerund(group) for group in groups)
    if len(groups) > 1:
        gerunds = "first " + gerunds
    captions = [
        ", then ".join(_group_clause(group) for group in groups),
        " followed by ".join(_group_noun_phrase(group) for group in groups),
        gerunds,
        ", then ".join(_group_sound_of(group) for group in groups),
    ]
    if scene.background:
        suffixes = (
            ", over faint background noise",
            " over faint background noise",
            ", with faint background noise",
            ", with faint background noise",
        )
        captions = [caption + suffix for caption, suffix in zip(captions, suffixes, strict=True)]
    return [_sentence(caption) for caption in captions]


def zero_shot_prompts() -> list[str]:
    """One text prompt per sound type, in ``SOUND_TYPES`` order.

    Returns
    -------
    list of str
        E.g. ``"The sound of a dog barking."``.

    Example
    -------
    >>> zero_shot_prompts()[:2]
    ['The sound of a dog barking.', 'The sound of a bird chirping.']
    >>> len(zero_shot_prompts()) == len(SOUND_TYPES)
    True
    """
    return [f"The sound of {_WORDS[name].subject} {_WORDS[name].gerund}." for name in SOUND_TYPES]


# --------------------------------------------------------------------------- synthesis
# Each synthesiser maps (rng, num_samples, sample_rate, high) to a float64 waveform of
# arbitrary scale; ``_set_level`` then sets its loudness.


def _time(num_samples: int, sample_rate: int) -> np.ndarray:
    return np.arange(num_samples) / sample_rate


def _fade(wave: np.ndarray, sample_rate: int, attack: float, release: float) -> np.ndarray:
    """Linear fade-in and fade-out (seconds), so no event starts or stops with a click."""
    n = len(wave)
    n_attack = min(n // 2, max(1, int(attack * sample_rate)))
    n_release = min(n // 2, max(1, int(release * sample_rate)))
    wave[:n_attack] *= np.linspace(0.0, 1.0, n_attack, endpoint=False)
    wave[n - n_release :] *= np.linspace(1.0, 0.0, n_release)
    return wave


def _filter(wave: np.ndarray, sample_rate: int, gain: Callable) -> np.ndarray:
    """Zero-phase filter: multiplies the spectrum by ``gain(frequencies_hz)``."""
    size = 1 << max(1, (len(wave) - 1).bit_length())  # power of two: fast FFT
    spectrum = np.fft.rfft(wave, size)
    spectrum *= gain(np.fft.rfftfreq(size, 1.0 / sample_rate))
    return np.fft.irfft(spectrum, size)[: len(wave)]


def _band(low: float, high: float) -> Callable:
    """Smooth band-pass gain (fourth-order skirts) between ``low`` and ``high`` Hz."""

    def gain(freqs):
        freqs = np.maximum(freqs, 1.0)
        return 1.0 / ((1.0 + (low / freqs) ** 4) * (1.0 + (freqs / high) ** 4))

    return gain


def _harmonics(phase: np.ndarray, amplitudes: Sequence[float]) -> np.ndarray:
    """Sum of ``amplitudes[k - 1] * sin(k * phase)``."""
    orders = np.arange(1, len(amplitudes) + 1)[:, None]
    return np.asarray(amplitudes) @ np.sin(orders * phase[None, :])


def _phase(freqs: np.ndarray, sample_rate: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freqs) / sample_rate


def _num_harmonics(max_freq: float, sample_rate: int, limit: int) -> int:
    return max(1, min(limit, int(0.45 * sample_rate / max_freq)))


def _dog(rng, n, sr, high):
    """Noisy harmonic bark, pitch rising then falling, through a formant-like band."""
    f0 = rng.uniform(550, 750) if high else rng.uniform(220, 320)
    t = _time(n, sr)
    freqs = f0 * (0.8 + 0.35 * np.sin(np.pi * t / t[-1]))
    k = _num_harmonics(1.15 * f0, sr, 10)
    wave = _harmonics(_phase(freqs, sr), 1.0 / np.arange(1, k + 1))
    wave += 0.5 * wave.std() * rng.standard_normal(n)
    formant = 3.0 * f0
    wave = _filter(wave, sr, lambda f: 0.3 + np.exp(-0.5 * ((f - formant) / (0.6 * formant)) ** 2))
    wave *= np.exp(-t / (0.4 * t[-1]))
    return _fade(wave, sr, 0.008, 0.01)


def _bird(rng, n, sr, high):
    """Fast, exponential upward frequency sweep."""
    start = rng.uniform(3800, 4300) if high else rng.uniform(1700, 2100)
    end = start * rng.uniform(1.5, 1.7)
    t = _time(n, sr)
    freqs = start * (end / start) ** (t / t[-1])
    return np.sin(_phase(freqs, sr)) * np.sin(np.pi * t / t[-1]) ** 2


def _siren(rng, n, sr, high):
    """Slow up-then-down frequency sweep of a tone with two overtones."""
    base = rng.uniform(1300, 1500) if high else rng.uniform(450, 550)
    t = _time(n, sr)
    freqs = base * (1.0 + 0.6 * np.sin(np.pi * t / t[-1]))
    k = _num_harmonics(1.6 * base, sr, 3)
    wave = _harmonics(_phase(freqs, sr), [1.0, 0.35, 0.15][:k])
    return _fade(wave, sr, 0.03, 0.03)


# Risset's bell: inharmonic partial ratios, relative amplitudes and decay times.
_BELL_RATIOS = np.array([0.56, 0.92, 1.19, 1.71, 2.0, 2.74, 3.0, 3.76, 4.07])
_BELL_AMPLITUDES = np.array([1.0, 0.67, 1.0, 1.8, 2.67, 1.67, 1.46, 1.33, 1.33])
_BELL_DECAYS = np.array([1.0, 0.9, 0.65, 0.55, 0.325, 0.35, 0.25, 0.2, 0.15])


def _bell(rng, n, sr, high):
    """Inharmonic partials, each decaying exponentially (higher ones faster)."""
    f0 = rng.uniform(900, 1150) if high else rng.uniform(250, 350)
    t = _time(n, sr)
    freqs = f0 * _BELL_RATIOS
    keep = freqs < 0.45 * sr
    tau = 0.45 * t[-1] * _BELL_DECAYS[keep, None]
    partials = np.sin(
        2 * np.pi * freqs[keep, None] * t + rng.uniform(0, 2 * np.pi, (keep.sum(), 1))
    )
    wave = _BELL_AMPLITUDES[keep] @ (partials * np.exp(-t / tau))
    return _fade(wave, sr, 0.002, 0.02)


def _drum(rng, n, sr, high):
    """Low sine thump with a fast downward pitch glide and a short noise click."""
    f0 = rng.uniform(180, 230) if high else rng.uniform(50, 70)
    t = _time(n, sr)
    freqs = f0 * (1.0 + 1.5 * np.exp(-t / 0.02))
    wave = np.sin(_phase(freqs, sr)) * np.exp(-t / (0.25 * t[-1]))
    click = _filter(rng.standard_normal(n), sr, _band(20.0, 8 * f0))
    wave += 0.5 * click / click.std() * np.exp(-t / 0.004)
    return _fade(wave, sr, 0.001, 0.01)


def _engine(rng, n, sr, high):
    """Low-passed sawtooth hum, amplitude-modulated at the firing rate."""
    f0 = rng.uniform(140, 180) if high else rng.uniform(35, 50)
    t = _time(n, sr)
    freqs = f0 * (1.0 + 0.02 * np.sin(2 * np.pi * 0.7 * t))
    cycles = np.cumsum(freqs) / sr
    wave = 2.0 * (cycles % 1.0) - 1.0
    wave *= 1.0 + 0.7 * np.sin(2 * np.pi * rng.uniform(8, 12) * t)
    cutoff = 10 * f0
    wave = _filter(wave, sr, lambda f: 1.0 / (1.0 + (f / cutoff) ** 2))
    return _fade(wave, sr, 0.06, 0.06)


def _rain(rng, n, sr, high):
    """Dense random droplet impulses over a noise bed, band-passed."""
    low, top = (2500.0, 7000.0) if high else (300.0, 1500.0)
    drops = (rng.random(n) < 400.0 / sr) * rng.standard_normal(n) * 3.0
    wave = _filter(drops + 0.5 * rng.standard_normal(n), sr, _band(low, top))
    return _fade(wave, sr, 0.06, 0.06)


def _whistle(rng, n, sr, high):
    """Pure steady tone with a slight vibrato."""
    f0 = rng.uniform(2200, 2700) if high else rng.uniform(700, 900)
    t = _time(n, sr)
    freqs = f0 * (1.0 + 0.01 * np.sin(2 * np.pi * 5.0 * t))
    return _fade(np.sin(_phase(freqs, sr)), sr, 0.02, 0.02)


def _knock(rng, n, sr, high):
    """Broadband click exciting two fast-decaying resonances."""
    f1 = rng.uniform(1800, 2400) if high else rng.uniform(250, 400)
    f2 = f1 * (1.6 if high else 2.3)
    tau = 0.012 if high else 0.02
    t = _time(n, sr)
    wave = np.sin(2 * np.pi * f1 * t) * np.exp(-t / tau)
    wave += 0.6 * np.sin(2 * np.pi * f2 * t) * np.exp(-t / (0.7 * tau))
    wave += 0.8 * rng.standard_normal(n) * np.exp(-t / 0.002)
    return _fade(wave, sr, 0.0005, 0.005)


def _buzzer(rng, n, sr, high):
    """Square wave."""
    f0 = rng.uniform(650, 850) if high else rng.uniform(220, 280)
    wave = np.sign(np.sin(2 * np.pi * f0 * _time(n, sr)))
    return _fade(wave, sr, 0.01, 0.01)


@dataclass(frozen=True)
class _SoundSpec:
    synthesize: Callable
    min_length: float  # seconds
    max_length: float


_SOUNDS = {
    "dog": _SoundSpec(_dog, 0.15, 0.3),
    "bird": _SoundSpec(_bird, 0.08, 0.15),
    "siren": _SoundSpec(_siren, 0.4, 1.5),
    "bell": _SoundSpec(_bell, 0.4, 1.2),
    "drum": _SoundSpec(_drum, 0.2, 0.4),
    "engine": _SoundSpec(_engine, 0.4, 1.8),
    "rain": _SoundSpec(_rain, 0.4, 1.8),
    "whistle": _SoundSpec(_whistle, 0.3, 1.0),
    "knock": _SoundSpec(_knock, 0.05, 0.09),
    "buzzer": _SoundSpec(_buzzer, 0.3, 0.9),
}
assert tuple(_SOUNDS) == SOUND_TYPES


def _set_level(wave: np.ndarray, dbfs: float, sample_rate: int) -> np.ndarray:
    """Scales ``wave`` so its loudest 25 ms frame has RMS ``dbfs``, then limits its peaks.

    Samples above ``LIMITER_KNEE`` are compressed smoothly towards
    ``EVENT_PEAK``: only the rare spikes of impulsive sounds (rain drops, knock
    clicks) are touched, so loud events stay loud instead of being scaled down.
    """
    frame = min(len(wave), int(0.025 * sample_rate))
    frames = wave[: len(wave) // frame * frame].reshape(-1, frame)
    wave = wave * (10 ** (dbfs / 20) / np.sqrt((frames**2).mean(axis=1).max()))
    magnitude = np.abs(wave)
    over = magnitude > LIMITER_KNEE
    if over.any():
        headroom = EVENT_PEAK - LIMITER_KNEE
        limited = LIMITER_KNEE + headroom * np.tanh((magnitude[over] - LIMITER_KNEE) / headroom)
        wave[over] = np.sign(wave[over]) * limited
    return wave


def _background(rng, num_samples: int, sample_rate: int) -> np.ndarray:
    """Faint pink-ish noise (1/f power above 50 Hz) at ``BACKGROUND_DBFS`` RMS."""
    noise = _filter(
        rng.standard_normal(num_samples), sample_rate, lambda f: 1.0 / np.sqrt(np.maximum(f, 50.0))
    )
    return noise * (10 ** (BACKGROUND_DBFS / 20) / noise.std())


def min_scene_duration(groups: Sequence[EventGroup]) -> float:
    """Shortest clip (seconds) that fits these groups at their minimum lengths and gaps.

    Arguments
    ---------
    groups : sequence of EventGroup
        The scene's groups in order.

    Returns
    -------
    float
        Minimum duration in seconds.

    Example
    -------
    >>> round(min_scene_duration([EventGroup("knock", "low", "loud", 1)]), 2)
    0.15
    """
    events = sum(group.count * _SOUNDS[group.sound_type].min_length for group in groups)
    repeat_gaps = sum(group.count - 1 for group in groups) * REPEAT_GAP[0]
    return events + repeat_gaps + (len(groups) - 1) * GROUP_GAP[0] + 2 * EDGE_MARGIN


# The longest minimum over all scenes: max_duration must be at least this.
_LONGEST_TYPES = sorted(SOUND_TYPES, key=lambda name: _SOUNDS[name].min_length)[-MAX_GROUPS:]
LONGEST_MIN_DURATION = min_scene_duration(
    [EventGroup(name, "low", "loud", max(COUNTS)) for name in _LONGEST_TYPES]
)


def _layout(scene: Scene, rng, sample_rate: int) -> list[tuple[int, list[int]]]:
    """Event length and onsets (samples) of each group, in order, inside the clip.

    Lengths and gaps are drawn between their minimum and maximum, shrunk
    towards the minimum when they do not fit; the remaining silence is split at
    random between the start, the gap between the groups and the end.
    """
    groups = scene.groups
    specs = [_SOUNDS[group.sound_type] for group in groups]
    lengths = [rng.uniform(spec.min_length, spec.max_length) for spec in specs]
    min_lengths = [spec.min_length for spec in specs]
    repeat_gaps = [rng.uniform(*REPEAT_GAP) for _ in groups]
    group_gap = rng.uniform(*GROUP_GAP)

    def total(lengths, repeat_gaps, group_gap):
        spans = zip(groups, lengths, repeat_gaps, strict=True)
        events = sum(group.count * (length + gap) - gap for group, length, gap in spans)
        return events + (len(groups) - 1) * group_gap + 2 * EDGE_MARGIN

    wanted = total(lengths, repeat_gaps, group_gap)
    least = min_scene_duration(groups)
    if wanted > scene.duration:
        shrink = (scene.duration - least) / (wanted - least)
        lengths = [lo + shrink * (x - lo) for x, lo in zip(lengths, min_lengths, strict=True)]
        repeat_gaps = [REPEAT_GAP[0] + shrink * (x - REPEAT_GAP[0]) for x in repeat_gaps]
        group_gap = GROUP_GAP[0] + shrink * (group_gap - GROUP_GAP[0])
        wanted = total(lengths, repeat_gaps, group_gap)
    slack = rng.dirichlet(np.ones(len(groups) + 1)) * max(0.0, scene.duration - wanted)

    layout = []
    position = EDGE_MARGIN + slack[0]
    for i, (group, length, gap) in enumerate(zip(groups, lengths, repeat_gaps, strict=True)):
        if i > 0:
            position += group_gap + slack[i]
        onsets = [
            int(round((position + k * (length + gap)) * sample_rate)) for k in range(group.count)
        ]
        layout.append((int(round(length * sample_rate)), onsets))
        position += group.count * (length + gap) - gap
    return layout


@dataclass(frozen=True)
class Event:
    """One occurrence of a sound in a clip: its type and when it sounds (seconds).

    Example
    -------
    >>> Event("dog", 0.5, 0.75).offset
    0.75
    """

    sound_type: str
    onset: float
    offset: float


def render_scene(
    scene: Scene, rng: np.random.Generator, sample_rate: int = 16000
) -> tuple[np.ndarray, list[Event]]:
    """Renders a scene; returns the waveform (as ``synthesize_scene``) and its events.

    Arguments
    ---------
    scene : Scene
        What to render.
    rng : numpy.random.Generator
        Source of all randomness.
    sample_rate : int
        Output sample rate in Hz (at least 16000).

    Returns
    -------
    wave : numpy.ndarray
        ``(round(scene.duration * sample_rate),)`` float32 in [-1, 1].
    events : list of Event
        Every placed event, in temporal order.

    Example
    -------
    >>> scene = Scene((EventGroup("bell", "high", "loud", 2),), duration=3.0, background=False)
    >>> wave, events = render_scene(scene, np.random.default_rng(0))
    >>> [event.sound_type for event in events], events[0].offset < events[1].onset
    (['bell', 'bell'], True)
    """
    if sample_rate < 16000:
        raise ValueError(f"sample_rate must be at least 16000 Hz, got {sample_rate}")
    num_samples = int(round(scene.duration * sample_rate))
    wave = _background(rng, num_samples, sample_rate) if scene.background else np.zeros(num_samples)
    events = []
    for group, (length, onsets) in zip(scene.groups, _layout(scene, rng, sample_rate), strict=True):
        event = _SOUNDS[group.sound_type].synthesize(
            rng, length, sample_rate, group.pitch == "high"
        )
        event = _set_level(event, LOUDNESS_DBFS[group.loudness], sample_rate)
        for onset in onsets:
            end = min(onset + length, num_samples)
            wave[onset:end] += event[: end - onset]
            events.append(Event(group.sound_type, onset / sample_rate, end / sample_rate))
    peak = np.abs(wave).max()
    if peak > 1.0:  # not reached with the levels above; kept so the contract always holds
        wave /= peak
    return wave.astype(np.float32), events


def synthesize_scene(
    scene: Scene, rng: np.random.Generator, sample_rate: int = 16000
) -> np.ndarray:
    """Renders a scene to a float32 waveform in [-1, 1].

    Each group's event is synthesised once, set to the group's loudness and
    placed ``count`` times; optional background noise spans the whole clip.

    Arguments
    ---------
    scene : Scene
        What to render.
    rng : numpy.random.Generator
        Source of all randomness (event lengths, placement, pitches, noise).
    sample_rate : int
        Output sample rate in Hz (at least 16000, so every band fits).

    Returns
    -------
    numpy.ndarray
        Shape ``(round(scene.duration * sample_rate),)``, dtype float32.

    Example
    -------
    >>> scene = Scene((EventGroup("bell", "high", "loud", 2),), duration=3.0, background=True)
    >>> wave = synthesize_scene(scene, np.random.default_rng(0))
    >>> wave.dtype, bool(np.abs(wave).max() <= 1.0)
    (dtype('float32'), True)
    >>> wave.shape
    (48000,)
    """
    return render_scene(scene, rng, sample_rate)[0]


EVENT_SEPARATOR = ";"
# A frame label for the steps where no event sounds (after the sound types' indices).
NO_EVENT = len(SOUND_TYPES)


def format_events(events: Sequence[Event]) -> str:
    """The manifest's ``events`` field: ``type@onset-offset`` joined by ``;`` (ms precision).

    Example
    -------
    >>> format_events([Event("dog", 0.5, 0.75), Event("bell", 1.0, 2.25)])
    'dog@0.500-0.750;bell@1.000-2.250'
    """
    return EVENT_SEPARATOR.join(f"{e.sound_type}@{e.onset:.3f}-{e.offset:.3f}" for e in events)


def parse_events(text: str) -> list[Event]:
    """Inverse of ``format_events``; a field naming an unknown type is a ``ValueError``.

    Example
    -------
    >>> parse_events("dog@0.500-0.750;bell@1.000-2.250")[1]
    Event(sound_type='bell', onset=1.0, offset=2.25)
    """
    events = []
    for item in filter(None, text.split(EVENT_SEPARATOR)):
        name, _, span = item.partition("@")
        onset, _, offset = span.partition("-")
        if name not in SOUND_TYPES or not onset or not offset:
            raise ValueError(f"bad event {item!r}: expected 'type@onset-offset'")
        events.append(Event(name, float(onset), float(offset)))
    return events


def frame_labels(events: Sequence[Event], n_steps: int, step_seconds: float = 0.16) -> list[int]:
    """The sound at the centre of each encoder time step: a ``SOUND_TYPES`` index or ``NO_EVENT``.

    Arguments
    ---------
    events : sequence of Event
        A clip's events (``parse_events`` of its manifest row).
    n_steps : int
        Time steps of the clip's frame features.
    step_seconds : float
        Duration of a step (16 frames of 10 ms).

    Returns
    -------
    list of int

    Example
    -------
    >>> frame_labels([Event("bird", 0.20, 0.40)], n_steps=4)  # centres 0.08, 0.24, 0.40, 0.56
    [10, 1, 10, 10]
    """
    labels = [NO_EVENT] * n_steps
    for step in range(n_steps):
        centre = (step + 0.5) * step_seconds
        for event in events:
            if event.onset <= centre < event.offset:
                labels[step] = SOUND_TYPES.index(event.sound_type)
    return labels


def scene_to_json(scene: Scene) -> str:
    """The manifest's ``scene`` field: groups (type, pitch, loudness, count) and background.

    Example
    -------
    >>> scene_to_json(Scene((EventGroup("dog", "high", "loud", 2),), 2.0, background=True))
    '{"groups": [["dog", "high", "loud", 2]], "background": true}'
    """
    groups = [[g.sound_type, g.pitch, g.loudness, g.count] for g in scene.groups]
    return json.dumps({"groups": groups, "background": scene.background})


# --------------------------------------------------------------------------- scenes & splits


@lru_cache
def split_compositions(seed: int) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Compositions each split draws from, with a seeded set of held-out pairs.

    Arguments
    ---------
    seed : int
        Corpus seed; it also chooses the held-out pairs.

    Returns
    -------
    dict
        ``"train"`` and ``"valid"``: every single type and the 70 seen ordered
        pairs; ``"test"``: the 20 held-out ordered pairs.

    Example
    -------
    >>> comps = split_compositions(0)
    >>> len(comps["test"]), len(comps["train"])
    (20, 80)
    >>> set(comps["test"]).isdisjoint(comps["train"])
    True
    """
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))).permutation(
        len(SOUND_TYPES)
    )
    names = [SOUND_TYPES[i] for i in order]
    held_out = sorted(
        (names[i], names[(i + shift) % len(names)])
        for i in range(len(names))
        for shift in HELD_OUT_SHIFTS
    )
    pairs = [(a, b) for a in SOUND_TYPES for b in SOUND_TYPES if a != b]
    seen = tuple((name,) for name in SOUND_TYPES) + tuple(p for p in pairs if p not in held_out)
    return {"train": seen, "valid": seen, "test": tuple(held_out)}


def _clip_seeds(seed: int, split: str, index: int) -> list[np.random.SeedSequence]:
    """Two independent seeds for one clip: its scene and its audio."""
    return np.random.SeedSequence(seed, spawn_key=(1 + SPLITS.index(split), index)).spawn(2)


def sample_scene(
    rng: np.random.Generator,
    composition: Sequence[str],
    min_duration: float = 1.0,
    max_duration: float = 30.0,
) -> Scene:
    """Draws attributes, background and duration for a given composition.

    The duration is log-uniform in ``[min_duration, max_duration]`` (mean
    about 8.5 s for 1-30 s), raised when needed to fit the events, and
    rounded up to 10 ms.

    Arguments
    ---------
    rng : numpy.random.Generator
        Source of randomness.
    composition : sequence of str
        Sound types of the groups, in order.
    min_duration : float
        Shortest clip in seconds.
    max_duration : float
        Longest clip in seconds (at least ``LONGEST_MIN_DURATION``).

    Returns
    -------
    Scene

    Example
    -------
    >>> scene = sample_scene(np.random.default_rng(0), ("dog", "bell"), 1.0, 30.0)
    >>> scene.composition, 1.0 <= scene.duration <= 30.0
    (('dog', 'bell'), True)
    """
    groups = tuple(
        EventGroup(
            sound_type,
            PITCHES[rng.integers(len(PITCHES))],
            LOUDNESSES[rng.integers(len(LOUDNESSES))],
            COUNTS[rng.integers(len(COUNTS))],
        )
        for sound_type in composition
    )
    background = bool(rng.random() < BACKGROUND_PROB)
    drawn = math.exp(rng.uniform(math.log(min_duration), math.log(max_duration)))
    duration = math.ceil(max(drawn, min_scene_duration(groups)) * 100 - 1e-6) / 100
    return Scene(groups, min(duration, max_duration), background)


def clip_scene(
    seed: int, split: str, index: int, min_duration: float = 1.0, max_duration: float = 30.0
) -> Scene:
    """The scene of clip ``index`` of ``split``, without rendering any audio.

    Train and valid draw a single type with probability ``SINGLE_FRACTION``
    and a seen pair otherwise; test draws a held-out pair. Used by
    ``generate_corpus``; cheap enough to inspect thousands of clips.

    Arguments
    ---------
    seed : int
        Corpus seed.
    split : str
        ``"train"``, ``"valid"`` or ``"test"``.
    index : int
        Clip index within the split.
    min_duration : float
        Shortest clip in seconds.
    max_duration : float
        Longest clip in seconds.

    Returns
    -------
    Scene

    Example
    -------
    >>> clip_scene(0, "test", 0).composition in split_compositions(0)["test"]
    True
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check_durations(min_duration, max_duration)
    rng = np.random.default_rng(_clip_seeds(seed, split, index)[0])
    compositions = split_compositions(seed)[split]
    if split == "test":
        composition = compositions[rng.integers(len(compositions))]
    else:
        singles = [c for c in compositions if len(c) == 1]
        pairs = [c for c in compositions if len(c) == 2]
        pool = singles if rng.random() < SINGLE_FRACTION else pairs
        composition = pool[rng.integers(len(pool))]
    return sample_scene(rng, composition, min_duration, max_duration)


def _check_durations(min_duration: float, max_duration: float):
    if min_duration <= 0:
        raise ValueError(f"min_duration must be positive, got {min_duration}")
    if max_duration < max(min_duration, LONGEST_MIN_DURATION):
        raise ValueError(
            f"max_duration must be >= min_duration ({min_duration}) and >= "
            f"{LONGEST_MIN_DURATION:.2f} s (the longest scene), got {max_duration}"
        )


# --------------------------------------------------------------------------- corpus

MANIFEST_FIELDS = (
    "ID",
    "duration",
    "wav",
    "caption",
    "captions",
    "sound_type",
    "composition",
    "scene",
    "events",
)


def _clip_row(seed: int, split: str, index: int, sample_rate, min_duration, max_duration):
    """(manifest row, int16 audio) of one clip."""
    scene = clip_scene(seed, split, index, min_duration, max_duration)
    audio_rng = np.random.default_rng(_clip_seeds(seed, split, index)[1])
    wave, events = render_scene(scene, audio_rng, sample_rate)
    captions = scene_captions(scene)
    assert not any(CAPTION_SEPARATOR.strip() in caption for caption in captions)
    clip_id = f"{split}_{index:05d}"
    row = {
        "ID": clip_id,
        "duration": repr(len(wave) / sample_rate),
        "wav": f"$data_root/audio/{split}/{clip_id}.wav",
        "caption": captions[0],
        "captions": CAPTION_SEPARATOR.join(captions),
        "sound_type": scene.composition[0],
        "composition": COMPOSITION_SEPARATOR.join(scene.composition),
        "scene": scene_to_json(scene),
        "events": format_events(events),
    }
    return row, np.round(wave * 32767).astype(np.int16)


def _write_json(path: Path, content: dict):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def generate_corpus(
    output_folder: str | os.PathLike,
    seed: int = 0,
    n_train: int = 2000,
    n_valid: int = 200,
    n_test: int = 200,
    sample_rate: int = 16000,
    min_duration: float = 1.0,
    max_duration: float = 30.0,
    progress: bool = True,
) -> dict[str, Path]:
    """Writes the synthetic corpus (audio + manifests), or reuses an identical one.

    ``corpus.json`` is written last, so a folder without it is an interrupted
    run: its ``audio/<split>`` folders and manifests are deleted and the
    corpus is generated again. With a ``corpus.json`` of the same config this
    returns at once without touching any file (a recipe can call it on every
    run); with a different config it raises ``ValueError`` rather than
    deleting a corpus someone may be using.

    Arguments
    ---------
    output_folder : str or path
        Where to write ``audio/``, ``<split>.csv`` and ``corpus.json``.
    seed : int
        Corpus seed (held-out pairs and every clip).
    n_train, n_valid, n_test : int
        Number of clips per split.
    sample_rate : int
        Audio sample rate in Hz (at least 16000).
    min_duration, max_duration : float
        Clip duration range in seconds (log-uniform, see ``sample_scene``).
    progress : bool
        Show a tqdm progress bar per split.

    Returns
    -------
    dict
        Split name -> path of its CSV manifest.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> manifests = generate_corpus(folder, n_train=4, n_valid=2, n_test=2,
    ...                             max_duration=4.0, progress=False)
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> data = DynamicItemDataset.from_csv(manifests["test"], replacements={"data_root": folder})
    >>> data.set_output_keys(["id", "wav", "caption"])
    >>> data[0]["wav"] == str(folder / "audio" / "test" / "test_00000.wav")
    True
    >>> len(data)
    2
    """
    output_folder = Path(output_folder)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for split, size in sizes.items():
        if size < 0:
            raise ValueError(f"n_{split} must be >= 0, got {size}")
    if sample_rate < 16000:
        raise ValueError(f"sample_rate must be at least 16000 Hz, got {sample_rate}")
    _check_durations(min_duration, max_duration)
    config = {
        "version": CORPUS_VERSION,
        "seed": int(seed),
        "n_train": int(n_train),
        "n_valid": int(n_valid),
        "n_test": int(n_test),
        "sample_rate": int(sample_rate),
        "min_duration": float(min_duration),
        "max_duration": float(max_duration),
    }
    manifests = {split: output_folder / f"{split}.csv" for split in SPLITS}
    info_path = output_folder / "corpus.json"
    if info_path.exists():
        found = json.loads(info_path.read_text())["config"]
        if found != config:
            raise ValueError(
                f"{info_path} was generated with config {found}, not {config}. "
                "Delete that folder or choose another output_folder."
            )
        return manifests

    for split in SPLITS:  # leftovers of an interrupted run
        shutil.rmtree(output_folder / "audio" / split, ignore_errors=True)
        manifests[split].unlink(missing_ok=True)
    stats = {}
    for split in SPLITS:
        audio_folder = output_folder / "audio" / split
        audio_folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for index in tqdm(range(sizes[split]), desc=f"synthetic {split}", disable=not progress):
            row, audio = _clip_row(seed, split, index, sample_rate, min_duration, max_duration)
            soundfile.write(audio_folder / f"{row['ID']}.wav", audio, sample_rate, "PCM_16")
            rows.append(row)
        write_rows(manifests[split], rows, MANIFEST_FIELDS)  # whole or not at all
        durations = [float(row["duration"]) for row in rows]
        stats[split] = {
            "clips": len(rows),
            "hours": round(sum(durations) / 3600, 4),
            "mean_duration": round(float(np.mean(durations)), 3) if rows else 0.0,
            "compositions": len({row["composition"] for row in rows}),
        }
    _write_json(
        info_path,
        {
            "config": config,
            "splits": stats,
            "sound_types": list(SOUND_TYPES),
            "held_out_pairs": [
                COMPOSITION_SEPARATOR.join(pair) for pair in split_compositions(seed)["test"]
            ],
            "caption_separator": CAPTION_SEPARATOR,
            "composition_separator": COMPOSITION_SEPARATOR,
        },
    )
    return manifests
