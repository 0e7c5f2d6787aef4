"""Tests for data/synthetic.py: manifests, determinism, splits, captions, audibility."""

import csv
import hashlib
import json
import os
import re

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_slap.data import synthetic
from speechbrain_slap.data.synthetic import (
    CAPTION_SEPARATOR,
    COMPOSITION_SEPARATOR,
    LOUDNESS_DBFS,
    NO_EVENT,
    SOUND_TYPES,
    EventGroup,
    Scene,
    clip_scene,
    frame_labels,
    generate_corpus,
    min_scene_duration,
    parse_events,
    scene_captions,
    split_compositions,
    synthesize_scene,
    zero_shot_prompts,
)
from speechbrain_slap.lobes.features import SLAPFbank

SMALL = dict(n_train=30, n_valid=6, n_test=6, max_duration=5.0, progress=False)
TINY = dict(n_train=4, n_valid=2, n_test=2, max_duration=4.0, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small corpus shared by the read-only tests: (folder, manifests)."""
    folder = tmp_path_factory.mktemp("synthetic")
    return folder, generate_corpus(folder, seed=0, **SMALL)


def _rows(manifest):
    with open(manifest, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def _file_hashes(folder):
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _mel(waves, sample_rate=16000):
    """Log-mel (dB, 64 bins) of equal-length float32 waveforms, in one batched call."""
    return SLAPFbank(sample_rate=sample_rate)(torch.from_numpy(np.stack(waves))).numpy()


def test_manifests_load_with_speechbrain(corpus):
    """Each split loads with DynamicItemDataset.from_csv and the $data_root replacement."""
    folder, manifests = corpus
    assert set(manifests) == {"train", "valid", "test"}
    for split, size in [("train", 30), ("valid", 6), ("test", 6)]:
        with open(manifests[split], encoding="utf-8") as fin:
            assert fin.readline().strip() == (
                "ID,duration,wav,caption,captions,sound_type,composition,scene,events"
            )
        data = DynamicItemDataset.from_csv(manifests[split], replacements={"data_root": folder})
        data.set_output_keys(["id", "wav", "caption", "captions", "sound_type", "composition"])
        assert len(data) == size
        for item in data:
            assert item["wav"] == str(folder / "audio" / split / f"{item['id']}.wav")
            assert os.path.isfile(item["wav"])
            captions = item["captions"].split(CAPTION_SEPARATOR)
            assert len(captions) == 4 and captions[0] == item["caption"]
            assert item["sound_type"] == item["composition"].split(COMPOSITION_SEPARATOR)[0]


def test_wav_format_and_durations(corpus):
    """16 kHz mono int16 WAVs whose lengths equal the CSV durations, inside the range."""
    folder, manifests = corpus
    for manifest in manifests.values():
        for row in _rows(manifest):
            path = row["wav"].replace("$data_root", str(folder))
            info = soundfile.info(path)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (
                16000,
                1,
                "WAV",
                "PCM_16",
            )
            duration = float(row["duration"])
            assert info.frames == round(duration * 16000)
            assert 1.0 <= duration <= 5.0


def test_no_clipping(corpus):
    """No stored sample reaches full scale, and worst-case loud scenes stay inside [-1, 1]."""
    folder, _ = corpus
    for path in (folder / "audio").rglob("*.wav"):
        audio, _ = soundfile.read(path, dtype="int16")
        assert np.abs(audio.astype(np.int32)).max() < 32767
    rng = np.random.default_rng(0)
    for name in SOUND_TYPES:
        group = EventGroup(name, "high", "loud", 3)
        wave = synthesize_scene(Scene((group, group), 3.5, background=True), rng)
        assert np.abs(wave).max() <= 1.0


def test_same_seed_is_byte_identical_and_seed_matters(tmp_path):
    """Two runs with one seed give identical files; another seed gives different audio."""
    hashes = []
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        generate_corpus(tmp_path / name, seed=seed, **TINY)
        hashes.append(_file_hashes(tmp_path / name))
    assert len(hashes[0]) == 4 + 2 + 2 + 4  # wavs, three manifests and corpus.json
    assert hashes[0] == hashes[1]
    audio = [{k: v for k, v in h.items() if k.endswith(".wav")} for h in hashes]
    assert audio[0].keys() == audio[2].keys()
    assert all(audio[0][k] != audio[2][k] for k in audio[0])


def test_clip_does_not_depend_on_split_sizes(tmp_path):
    """Each clip has its own RNG: a shorter corpus starts with the same clips."""
    generate_corpus(tmp_path / "big", **TINY)
    generate_corpus(tmp_path / "small", **{**TINY, "n_train": 2, "n_valid": 0})
    big, small = _file_hashes(tmp_path / "big"), _file_hashes(tmp_path / "small")
    for clip in ["audio/train/train_00000.wav", "audio/train/train_00001.wav"]:
        assert big[clip] == small[clip]
    assert big["audio/test/test_00001.wav"] == small["audio/test/test_00001.wav"]
    assert _rows(tmp_path / "small" / "test.csv") == _rows(tmp_path / "big" / "test.csv")


def test_rerun_short_circuits_and_config_change_raises(corpus):
    """Same config: nothing is rewritten. Different config: a clear error."""
    folder, manifests = corpus
    before = {path: path.stat().st_mtime_ns for path in folder.rglob("*")}
    assert generate_corpus(folder, seed=0, **SMALL) == manifests
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*")} == before
    with pytest.raises(ValueError, match="different|not"):
        generate_corpus(folder, seed=0, **{**SMALL, "n_train": 31})


def test_interrupted_run_is_regenerated(tmp_path):
    """Without corpus.json the folder is an interrupted run: cleaned and generated again."""
    generate_corpus(tmp_path, **TINY)
    reference = _file_hashes(tmp_path)
    (tmp_path / "corpus.json").unlink()
    (tmp_path / "audio" / "train" / "train_00099.wav").write_bytes(b"partial")
    (tmp_path / "audio" / "test" / "test_00000.wav").unlink()
    generate_corpus(tmp_path, **TINY)
    assert _file_hashes(tmp_path) == reference


def test_held_out_pairs_structure():
    """20 held-out ordered pairs, each type twice first and twice second, reverses seen."""
    comps = split_compositions(0)
    held_out, seen = comps["test"], set(comps["train"])
    assert comps["valid"] == comps["train"]
    assert len(held_out) == len(set(held_out)) == 20
    assert all(len(pair) == 2 and pair[0] != pair[1] for pair in held_out)
    for name in SOUND_TYPES:
        assert sum(pair[0] == name for pair in held_out) == 2
        assert sum(pair[1] == name for pair in held_out) == 2
        assert (name,) in seen
    assert all(pair[::-1] in seen for pair in held_out)
    assert len(seen) == 10 + 90 - 20
    assert set(split_compositions(1)["test"]) != set(held_out)


def test_test_compositions_never_seen_in_train():
    """Over 300 train and 200 test scenes: disjoint compositions, every type in train."""
    train = [clip_scene(0, "train", i).composition for i in range(300)]
    test = [clip_scene(0, "test", i).composition for i in range(200)]
    assert set(test).isdisjoint(train)
    assert set(test) == set(split_compositions(0)["test"])  # all 20 held-out pairs used
    singles = {c[0] for c in train if len(c) == 1}
    firsts = {c[0] for c in train if len(c) == 2}
    seconds = {c[1] for c in train if len(c) == 2}
    assert singles == firsts == seconds == set(SOUND_TYPES)
    assert 0.15 < sum(len(c) == 1 for c in train) / len(train) < 0.35


def test_duration_distribution_skews_short():
    """Default range 1-30 s: log-uniform-like, mean near 8.5 s, on a 10 ms grid."""
    durations = np.array([clip_scene(0, "train", i).duration for i in range(2000)])
    assert durations.min() >= 1.0 and durations.max() <= 30.0
    assert 7.0 < durations.mean() < 10.0
    assert 0.4 < (durations < 5.0).mean() < 0.6
    np.testing.assert_allclose(durations * 100, np.round(durations * 100), atol=1e-6)


def test_scene_fits_its_duration():
    """max_duration below the longest scene is refused; every scene fits its duration."""
    with pytest.raises(ValueError, match="max_duration"):
        clip_scene(0, "train", 0, max_duration=3.0)
    for index in range(200):
        scene = clip_scene(0, "train", index, max_duration=synthetic.LONGEST_MIN_DURATION)
        assert scene.duration >= min_scene_duration(scene.groups) - 1e-9


def test_captions_of_hand_constructed_scene():
    """The four phrasings name types, counts, pitch, loudness and order exactly."""
    scene = Scene(
        (EventGroup("dog", "high", "loud", 2), EventGroup("bell", "low", "quiet", 1)),
        duration=4.0,
        background=True,
    )
    assert scene_captions(scene) == [
        "A loud high-pitched dog barks twice, then a quiet low-pitched bell rings once, "
        "over faint background noise.",
        "Two loud high dog barks followed by a single quiet low bell ring "
        "over faint background noise.",
        "First a dog barking loudly two times at a high pitch, then a bell ringing quietly "
        "one time at a low pitch, with faint background noise.",
        "The sound of a dog barking twice, loud and high, then the sound of a bell ringing "
        "once, quiet and low, with faint background noise.",
    ]
    knock = Scene((EventGroup("knock", "low", "quiet", 3),), duration=2.0, background=False)
    assert scene_captions(knock)[0] == "A quiet low-pitched knock is heard three times."
    rain = Scene((EventGroup("rain", "high", "loud", 1),), duration=2.0, background=False)
    assert scene_captions(rain)[1] == "A single loud high rain shower."


def _mentions(words, name):
    return any(word.startswith(name) for word in words)


@pytest.mark.parametrize("name", SOUND_TYPES)
def test_every_phrasing_names_its_attributes(name):
    """Each phrasing names, in order, each group's type, pitch, loudness and count, nothing else."""
    count_words = {1: {"once", "single", "one"}, 2: {"twice", "two"}, 3: {"three"}}
    other = "bell" if name != "bell" else "dog"
    for count in (1, 2, 3):
        groups = (EventGroup(name, "low", "loud", count), EventGroup(other, "high", "quiet", 3))
        for caption in scene_captions(Scene(groups, duration=8.0, background=False)):
            assert CAPTION_SEPARATOR.strip() not in caption and "background" not in caption
            first, second = re.split(r" then | followed by ", caption.lower())
            first, second = set(re.findall(r"[a-z]+", first)), set(re.findall(r"[a-z]+", second))
            # "knock" appears as "knocking" in the gerund phrasings, hence prefixes.
            assert _mentions(first, name) and _mentions(second, other)
            assert not _mentions(first, other)
            assert "low" in first and {"loud", "loudly"} & first
            assert not {"high", "quiet", "quietly"} & first
            assert {"high", "three"} <= second and {"quiet", "quietly"} & second
            assert not {"low", "loud", "loudly"} & second
            assert count_words[count] & first
            assert not set().union(*(count_words[c] for c in (1, 2, 3) if c != count)) & first


def test_zero_shot_prompts():
    """One prompt per type, in SOUND_TYPES order, each naming its type."""
    prompts = zero_shot_prompts()
    assert len(SOUND_TYPES) >= 8 and len(prompts) == len(SOUND_TYPES)
    assert prompts[0] == "The sound of a dog barking."
    for name, prompt in zip(SOUND_TYPES, prompts, strict=True):
        assert name in prompt


def _active_runs(wave, sample_rate=16000):
    """(start, stop) sample indices of the non-silent stretches of a background-free clip."""
    active = np.abs(wave) > 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(int), [0]])))
    runs = edges.reshape(-1, 2)
    # Merge zero crossings inside an event (gaps < 5 ms); repetitions are >= 120 ms apart.
    merged = [list(runs[0])]
    for start, stop in runs[1:]:
        if start - merged[-1][1] < 0.005 * sample_rate:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return merged


@pytest.mark.parametrize("name", SOUND_TYPES)
def test_events_are_placed_in_order_with_their_counts(name):
    """Without background, a clip has exactly count_1 + count_2 events, inside the margins."""
    rng = np.random.default_rng(1)
    for count in (1, 2, 3):
        groups = (EventGroup(name, "high", "loud", count), EventGroup("whistle", "low", "loud", 2))
        duration = min_scene_duration(groups) + 0.5
        wave = synthesize_scene(Scene(groups, duration, background=False), rng)
        runs = _active_runs(wave)
        assert len(runs) == count + 2
        assert runs[0][0] >= 0.05 * 16000 - 1 and runs[-1][1] <= len(wave) - 0.05 * 16000 + 1


def test_pitch_and_loudness_are_audible():
    """High events sit higher in the mel scale than low ones; loud is ~18 dB above quiet."""
    rng = np.random.default_rng(0)
    waves = []
    for name in SOUND_TYPES:
        for pitch, loudness in [("low", "loud"), ("high", "loud"), ("low", "quiet")]:
            group = EventGroup(name, pitch, loudness, 1)
            waves.append(synthesize_scene(Scene((group,), 2.0, background=False), rng))
    mels = _mel(waves).reshape(len(SOUND_TYPES), 3, -1, 64)
    bins = np.arange(64)
    for name, (low, high, quiet) in zip(SOUND_TYPES, mels, strict=True):
        profile_low, profile_high = 10 ** (low.max(0) / 10), 10 ** (high.max(0) / 10)
        centroid_low = (bins * profile_low).sum() / profile_low.sum()
        centroid_high = (bins * profile_high).sum() / profile_high.sum()
        assert centroid_high > centroid_low + 3, name
        gap = low.max() - quiet.max()
        expected = LOUDNESS_DBFS["loud"] - LOUDNESS_DBFS["quiet"]
        assert expected - 3 < gap < expected + 3, name


def test_sound_types_are_spectrally_distinct():
    """Nearest centroid over per-bin peak log-mel profiles separates all type x pitch pairs."""
    rng = np.random.default_rng(0)
    classes = [(name, pitch) for name in SOUND_TYPES for pitch in ("low", "high")]
    waves = []
    for name, pitch in classes:
        for _ in range(10):
            group = EventGroup(name, pitch, "loud", int(rng.integers(1, 4)))
            waves.append(synthesize_scene(Scene((group,), 2.0, background=False), rng))
    profiles = _mel(waves).max(axis=1)
    profiles = (profiles - profiles.max(axis=1, keepdims=True)).reshape(len(classes), 10, 64)
    centroids = profiles[:, :5].mean(axis=1)
    distances = ((profiles[:, 5:, None] - centroids[None, None]) ** 2).sum(-1)
    accuracy = (distances.argmin(-1) == np.arange(len(classes))[:, None]).mean()
    assert accuracy > 0.8


def test_events_and_scene_columns_describe_the_audio(corpus):
    """``events`` gives each event's span (matching the audible runs), ``scene`` the attributes."""
    folder, manifests = corpus
    with open(manifests["train"], encoding="utf-8") as fin:
        rows = list(csv.DictReader(fin))
    checked = 0
    for row in rows:
        scene = json.loads(row["scene"])
        events = parse_events(row["events"])
        assert [e.sound_type for e in events] == [
            g[0] for g in scene["groups"] for _ in range(g[3])
        ]
        assert all(0 <= e.onset < e.offset <= float(row["duration"]) + 1e-3 for e in events)
        assert row["composition"] == COMPOSITION_SEPARATOR.join(g[0] for g in scene["groups"])
        if scene["background"]:
            continue
        wave, rate = soundfile.read(folder / "audio" / "train" / f"{row['ID']}.wav")
        # Quiet fade-ins quantise to zero in 16 bits: each run starts at an onset, within 3 ms.
        starts = [start / rate for start, _ in _active_runs(wave, rate)]
        assert len(starts) == len(events)
        assert np.allclose(starts, [e.onset for e in events], atol=3e-3)
        checked += 1
    assert checked >= 5
    steps = frame_labels(events, n_steps=int(float(row["duration"]) / 0.16))
    assert set(steps) <= set(range(len(SOUND_TYPES) + 1)) and NO_EVENT in steps
