"""Generated read speech for ASR: eSpeak NG sentences from a small grammar, seeded.

Sentences follow one template over a vocabulary of 47 words and 23 letters
(uppercase, as in SpeechBrain's LibriSpeech manifests)::

    DETERMINER [ADJECTIVE] NOUN VERB DETERMINER [ADJECTIVE] NOUN [ENDING]

e.g. ``THE SLEEPY FROG FOLLOWS A BLUE GOAT IN THE PARK`` (each bracketed slot
filled with probability 1/2; 5 to 10 words, 1.2 to 4 s of speech). Every
utterance is spoken by eSpeak NG (``speechbrain_slap.data.espeak``, the
``asr`` extra) with one of the eight ``VOICES`` (six English accents:
American, New York, British, British RP, Scottish and Caribbean; four male and
four female variants), a speaking rate of 130 to 200 words a minute, a base pitch of 30 to
70 and a pitch range of 30 to 80 (eSpeak's 0-100 scales), then resampled from
22,050 Hz to 16 kHz, scaled to a peak level of -20 to -3 dBFS, padded with
0 to 0.2 s of silence at each end and mixed with faint white noise (-70 dBFS).

Held-out sentences. The train sentences are drawn first. Valid and test
sentences are drawn from the words that train uses in each slot, so every
test word and character is known, and are never a train sentence nor each
other's: test measures recognition of new sentences of known words, not
memorised ones. Voices, rates and pitches are drawn the same way in all
splits.

Layout::

    <data_folder>/audio/<split>/<ID>.wav   16-bit PCM, mono, 16 kHz
    <data_folder>/<split>.csv              ID, duration, wav, voice, rate, pitch, wrd
    <data_folder>/speech_data.json         the config, written last

``wav`` is ``$data_root/audio/<split>/<ID>.wav``: load the manifests with
``DynamicItemDataset.from_csv(path, replacements={"data_root": data_folder})``.

Reproducibility. Sentences come from one RNG per split seeded by ``(seed,
split)``; the voice, rate, pitch, level, padding and noise of a clip from its
own RNG seeded by ``(seed, split, index)``; eSpeak NG is reseeded from that RNG
for every clip, and all clips are spoken in order in a fresh process
(``synthesize_in_new_process``), so the same arguments give the same files.

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import json
import os
from pathlib import Path

import numpy as np
import soundfile
import torch

from speechbrain_slap.data.audio import resample
from speechbrain_slap.data.espeak import SAMPLE_RATE as ESPEAK_SAMPLE_RATE
from speechbrain_slap.data.espeak import synthesize_in_new_process

SPLITS = ("train", "valid", "test")
MANIFEST_FIELDS = ("ID", "duration", "wav", "voice", "rate", "pitch", "wrd")
CONFIG_FILE = "speech_data.json"

# The template, slot by slot: (slot name, probability that it is filled).
TEMPLATE = (
    ("determiner", 1.0),
    ("adjective", 0.5),
    ("noun", 1.0),
    ("verb", 1.0),
    ("determiner", 1.0),
    ("adjective", 0.5),
    ("noun", 1.0),
    ("ending", 0.5),
)
VOCABULARY = {
    "determiner": ("THE", "A", "MY", "YOUR", "ONE", "EVERY"),
    "adjective": (
        "BIG",
        "SMALL",
        "RED",
        "GREEN",
        "BLUE",
        "BROWN",
        "HAPPY",
        "SLEEPY",
        "FUNNY",
        "QUIET",
    ),
    "noun": (
        "CAT",
        "DOG",
        "BIRD",
        "FISH",
        "HORSE",
        "MOUSE",
        "FROG",
        "DUCK",
        "GOAT",
        "SHEEP",
        "BEAR",
        "WOLF",
    ),
    "verb": (
        "SEES",
        "LIKES",
        "FINDS",
        "CHASES",
        "FOLLOWS",
        "HELPS",
        "WATCHES",
        "CALLS",
        "FEEDS",
        "MEETS",
    ),
    "ending": ("TODAY", "AGAIN", "AT NIGHT", "IN THE PARK", "NEAR THE RIVER", "EVERY MORNING"),
}
VOICES = (
    "en-us",
    "en-us+f2",
    "en+m3",
    "en+f4",
    "en-gb-scotland+m2",
    "en-gb-x-rp+f1",
    "en-029+m4",
    "en-us-nyc+f3",
)
RATE_WPM = (130, 200)
PITCH = (30, 70)
PITCH_RANGE = (30, 80)
PEAK_DBFS = (-20.0, -3.0)
PAD_SECONDS = (0.0, 0.2)
NOISE_DBFS = -70.0
# Draws per sentence before giving up on finding a new one.
MAX_DRAWS = 1000


Sentence = tuple[tuple[str, str], ...]  # (slot, word) of each filled slot


def sentence_text(sentence: Sentence) -> str:
    """The words of a sentence, space-separated.

    Example
    -------
    >>> sentence_text((("determiner", "THE"), ("noun", "CAT"), ("ending", "AT NIGHT")))
    'THE CAT AT NIGHT'
    """
    return " ".join(word for _, word in sentence)


def draw_sentence(rng: np.random.Generator, words: dict[str, list[str]]) -> Sentence:
    """One sentence of ``TEMPLATE``, each slot's word drawn from ``words[slot]``.

    Arguments
    ---------
    rng : numpy.random.Generator
        Decides the optional slots and the words.
    words : dict
        Slot name -> the words it may take (``VOCABULARY`` or a subset).

    Returns
    -------
    tuple
        ``(slot, word)`` of each filled slot (an ending may hold several words);
        an optional slot without words stays empty.

    Example
    -------
    >>> sentence = draw_sentence(np.random.default_rng(0), VOCABULARY)
    >>> 5 <= len(sentence_text(sentence).split()) <= 10
    True
    >>> sentence = draw_sentence(np.random.default_rng(0), {**VOCABULARY, "adjective": []})
    >>> any(slot == "adjective" for slot, _ in sentence)
    False
    """
    sentence = []
    for slot, probability in TEMPLATE:
        if probability < 1.0 and rng.random() >= probability:
            continue
        if not words[slot]:
            if probability >= 1.0:
                raise ValueError(f"no word to fill the required slot {slot!r}")
            continue
        sentence.append((slot, words[slot][rng.integers(len(words[slot]))]))
    return tuple(sentence)


def draw_split_sentences(
    rng: np.random.Generator, count: int, words: dict, excluded: set[str]
) -> list[Sentence]:
    """``count`` sentences whose texts are distinct and not in ``excluded``.

    Arguments
    ---------
    rng : numpy.random.Generator
        The split's sentence RNG.
    count : int
        Sentences to draw.
    words : dict
        Slot name -> the words it may take.
    excluded : set of str
        Sentence texts that must not be drawn (updated with the new ones).

    Returns
    -------
    list of sentences

    Example
    -------
    >>> seen = set()
    >>> first = draw_split_sentences(np.random.default_rng(0), 3, VOCABULARY, seen)
    >>> second = draw_split_sentences(np.random.default_rng(0), 3, VOCABULARY, seen)
    >>> len(seen), {sentence_text(s) for s in first} & {sentence_text(s) for s in second}
    (6, set())
    """
    sentences = []
    for _ in range(count):
        for _ in range(MAX_DRAWS):
            sentence = draw_sentence(rng, words)
            if sentence_text(sentence) not in excluded:
                break
        else:
            raise ValueError(
                f"found no new sentence in {MAX_DRAWS} draws after {len(excluded)} sentences: "
                "the vocabulary is too small for this many sentences"
            )
        excluded.add(sentence_text(sentence))
        sentences.append(sentence)
    return sentences


def slot_words(sentences: list[Sentence]) -> dict[str, list[str]]:
    """The words each slot takes in ``sentences``, in ``VOCABULARY`` order.

    Arguments
    ---------
    sentences : list of sentences
        As drawn by ``draw_sentence``.

    Returns
    -------
    dict
        Slot name -> words (empty for a slot no sentence fills).

    Example
    -------
    >>> slot_words([(("determiner", "THE"), ("noun", "DOG"), ("noun", "CAT"))])["noun"]
    ['CAT', 'DOG']
    """
    used = {(slot, word) for sentence in sentences for slot, word in sentence}
    return {
        slot: [word for word in VOCABULARY[slot] if (slot, word) in used] for slot in VOCABULARY
    }


def clip_settings(rng: np.random.Generator) -> dict:
    """Voice, rate, pitch, pitch range, eSpeak seed, level and padding of one clip.

    Example
    -------
    >>> settings = clip_settings(np.random.default_rng(0))
    >>> settings["voice"] in VOICES, RATE_WPM[0] <= settings["rate"] <= RATE_WPM[1]
    (True, True)
    """
    return {
        "voice": VOICES[rng.integers(len(VOICES))],
        "rate": int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
        "pitch": int(rng.integers(PITCH[0], PITCH[1] + 1)),
        "pitch_range": int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
        "seed": int(rng.integers(2**31)),
        "peak_dbfs": float(rng.uniform(*PEAK_DBFS)),
        "pad_seconds": tuple(float(x) for x in rng.uniform(*PAD_SECONDS, size=2)),
    }


def finish_clip(
    samples: np.ndarray,
    espeak_rate: int,
    settings: dict,
    rng: np.random.Generator,
    sample_rate: int = 16000,
) -> np.ndarray:
    """eSpeak's int16 output -> the clip: resampled, levelled, padded, with faint noise.

    Arguments
    ---------
    samples : numpy.ndarray
        int16 samples from eSpeak NG.
    espeak_rate : int
        Their sample rate (22,050 Hz).
    settings : dict
        ``clip_settings`` of the clip (``peak_dbfs``, ``pad_seconds``).
    rng : numpy.random.Generator
        The clip's RNG (draws the noise).
    sample_rate : int
        Output rate in Hz.

    Returns
    -------
    numpy.ndarray
        float32 waveform in [-1, 1].

    Example
    -------
    >>> settings = {"peak_dbfs": -6.0, "pad_seconds": (0.1, 0.0)}
    >>> tone = (8000 * np.sin(np.arange(22050) / 5)).astype(np.int16)
    >>> wave = finish_clip(tone, 22050, settings, np.random.default_rng(0))
    >>> wave.shape, round(float(np.abs(wave).max()), 2)
    ((17600,), 0.5)
    """
    wave = resample(torch.from_numpy(samples.astype(np.float32) / 32768), espeak_rate, sample_rate)
    wave = wave.numpy()
    wave *= 10 ** (settings["peak_dbfs"] / 20) / max(float(np.abs(wave).max()), 1e-9)
    before, after = (int(round(s * sample_rate)) for s in settings["pad_seconds"])
    wave = np.pad(wave, (before, after))
    wave += 10 ** (NOISE_DBFS / 20) * rng.standard_normal(wave.size)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def generate_speech_data(
    data_folder: str | os.PathLike,
    seed: int = 0,
    n_train: int = 1000,
    n_valid: int = 100,
    n_test: int = 100,
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
        Utterances per split.
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
    >>> manifests = generate_speech_data(folder, n_train=4, n_valid=2, n_test=2)
    >>> rows = {s: list(csv.DictReader(open(manifests[s]))) for s in SPLITS}
    >>> [len(rows[s]) for s in SPLITS]
    [4, 2, 2]
    >>> train = {row["wrd"] for row in rows["train"]}
    >>> any(row["wrd"] in train for row in rows["test"])
    False
    """
    data_folder = Path(data_folder)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    if min(sizes.values()) < 1:
        raise ValueError(f"every split needs at least one utterance, got {sizes}")
    config = {
        "seed": int(seed),
        **{f"n_{split}": int(size) for split, size in sizes.items()},
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

    drawn: set[str] = set()
    sentences = {}
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_index]))
        words = VOCABULARY if split == "train" else slot_words(sentences["train"])
        sentences[split] = draw_split_sentences(rng, sizes[split], words, drawn)

    clips = []  # (split, index, sentence, settings, rng)
    for split_index, split in enumerate(SPLITS):
        for index, sentence in enumerate(sentences[split]):
            rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, index]))
            clips.append((split, index, sentence_text(sentence), clip_settings(rng), rng))
    utterances = [
        {
            "text": sentence.lower(),
            **{key: settings[key] for key in ("voice", "rate", "pitch", "pitch_range", "seed")},
        }
        for _, _, sentence, settings, _ in clips
    ]
    rows = {split: [] for split in SPLITS}
    waves = synthesize_in_new_process(utterances)
    for (split, index, sentence, settings, rng), samples in zip(clips, waves, strict=True):
        wave = finish_clip(samples, ESPEAK_SAMPLE_RATE, settings, rng, sample_rate)
        clip_id = f"{split}_{index:05d}"
        audio_folder = data_folder / "audio" / split
        audio_folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(audio_folder / f"{clip_id}.wav", wave, sample_rate, "PCM_16")
        rows[split].append(
            {
                "ID": clip_id,
                "duration": f"{wave.size / sample_rate:.4f}",
                "wav": f"$data_root/audio/{split}/{clip_id}.wav",
                "voice": settings["voice"],
                "rate": settings["rate"],
                "pitch": settings["pitch"],
                "wrd": sentence,
            }
        )
    for split in SPLITS:
        with open(manifests[split], "w", newline="", encoding="utf-8") as fout:
            writer = csv.DictWriter(fout, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows[split])
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return manifests
