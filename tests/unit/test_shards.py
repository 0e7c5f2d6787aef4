"""``speechbrain_slap.data.shards``: manifest -> WebDataset shards, round trip and resuming."""

import csv
import io
import json
import logging
import os
import tarfile

import numpy as np
import pytest
import soundfile

from speechbrain_slap.data.manifest import read_manifest, split_captions
from speechbrain_slap.data.shards import (
    main,
    parse_size,
    plan_shards,
    write_shards,
)
from speechbrain_slap.data.synthetic import generate_corpus

N_TRAIN = 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A 7-clip generated corpus (16-bit 16 kHz WAVs of 1 to 3.5 s) and its train manifest."""
    folder = tmp_path_factory.mktemp("corpus")
    manifests = generate_corpus(
        folder, n_train=N_TRAIN, n_valid=0, n_test=0, max_duration=3.5, progress=False
    )
    return folder, manifests["train"]


def _members(shard):
    """{name: bytes} of every member of a tar file, in order."""
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def _samples(out_dir):
    """{source_id: (json dict, decoded int16 audio, rate, shard name)} over every shard."""
    samples = {}
    for shard in sorted(out_dir.glob("shard-*.tar")):
        members = _members(shard)
        keys = sorted({name.split(".")[0] for name in members})
        for key in keys:
            meta = json.loads(members[f"{key}.json"])
            audio, rate = soundfile.read(io.BytesIO(members[f"{key}.flac"]), dtype="int16")
            samples[meta["source_id"]] = (meta, audio, rate, shard.name)
    return samples


def _write_manifest(path, rows):
    with open(path, "w", newline="") as fout:
        writer = csv.DictWriter(fout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_round_trip_is_bit_exact_with_every_field(corpus, tmp_path):
    """16-bit 16 kHz sources are stored losslessly; JSON holds captions, duration, id, columns."""
    folder, manifest = corpus
    index = write_shards(manifest, tmp_path, max_shard_samples=3, data_root=folder, progress=False)
    with open(manifest, newline="") as fin:
        rows = {row["ID"]: row for row in csv.DictReader(fin)}
    samples = _samples(tmp_path)
    assert set(samples) == set(rows)
    for clip_id, (meta, audio, rate, _) in samples.items():
        row = rows[clip_id]
        wav = row["wav"].replace("$data_root", str(folder))
        original, original_rate = soundfile.read(wav, dtype="int16")
        assert rate == original_rate == 16000
        np.testing.assert_array_equal(audio, original)
        assert meta["captions"] == split_captions(row["captions"])
        assert meta["duration"] == pytest.approx(len(original) / 16000)
        assert meta["duration"] == pytest.approx(float(row["duration"]), abs=1e-4)
        for column in ("caption", "sound_type", "composition"):
            assert meta[column] == row[column]
        assert meta["wav"] == wav
    # 7 clips, at most 3 per shard: 3, 3, 1; the index adds up.
    assert [s["samples"] for s in index["shards"]] == [3, 3, 1]
    assert index["num_samples"] == N_TRAIN and index["num_skipped"] == 0 and index["complete"]
    total = sum(m["duration"] for m, *_ in samples.values())
    assert index["total_seconds"] == pytest.approx(total, abs=1e-2)
    for entry in index["shards"]:
        in_shard = [m for m, _, _, name in samples.values() if name == entry["name"]]
        assert entry["samples"] == len(in_shard)
        assert entry["seconds"] == pytest.approx(sum(m["duration"] for m in in_shard), abs=1e-3)
        assert entry["bytes"] == (tmp_path / entry["name"]).stat().st_size
    assert json.loads((tmp_path / "shards.json").read_text()) == index


def test_json_precedes_flac_and_keys_have_no_dot(corpus, tmp_path):
    """Readers batch by duration before decoding: every sample's JSON comes first."""
    folder, manifest = corpus
    write_shards(manifest, tmp_path, max_shard_samples=10, data_root=folder, progress=False)
    names = list(_members(tmp_path / "shard-000000.tar"))
    assert len(names) == 2 * N_TRAIN
    for json_name, flac_name in zip(names[::2], names[1::2], strict=True):
        key = json_name.removesuffix(".json")
        assert flac_name == f"{key}.flac" and "." not in key and len(key) == 9


def test_float_stereo_and_other_rates_are_mixed_resampled_and_quantised(tmp_path):
    """A float stereo 16 kHz source is stored within 16-bit quantisation of its mono mix;
    a 32 kHz source comes back at 16 kHz with its tone where it was."""
    t = np.arange(16000) / 16000
    left, right = 0.6 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 97 * t)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    t32 = np.arange(32000) / 32000
    soundfile.write(tmp_path / "hi.wav", 0.5 * np.sin(2 * np.pi * 1000 * t32), 32000)
    manifest = _write_manifest(
        tmp_path / "m.csv",
        [
            {"ID": "st", "duration": 1.0, "wav": str(tmp_path / "stereo.wav"), "captions": "A"},
            {"ID": "hi", "duration": 1.0, "wav": str(tmp_path / "hi.wav"), "captions": "B"},
        ],
    )
    write_shards(manifest, tmp_path / "out", shuffle_seed=None, progress=False)
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        stereo = soundfile.read(io.BytesIO(tar.extractfile("000000000.flac").read()))
        high = soundfile.read(io.BytesIO(tar.extractfile("000000001.flac").read()))
    assert stereo[1] == high[1] == 16000
    mono = (left + right) / 2
    assert np.abs(stereo[0] - mono).max() <= 0.5 / 32768 + 1e-7
    spectrum = np.abs(np.fft.rfft(high[0]))
    assert len(high[0]) == 16000 and int(spectrum.argmax()) == 1000  # 1 Hz bins


def test_float_audio_beyond_full_scale_is_clipped_counted_and_named(tmp_path, caplog):
    """Float samples beyond +-1 are stored at int16 full scale; the clip is named, not hidden."""
    loud = np.full(1600, 0.25, dtype=np.float32)
    loud[[10, 20, 30]] = [1.5, -2.0, 1.0 + 1e-6]  # 1 + 1e-6 rounds to 32768: clipped too
    soundfile.write(tmp_path / "loud.wav", loud, 16000, subtype="FLOAT")
    quiet = np.full(1600, 0.25, dtype=np.float32)
    soundfile.write(tmp_path / "quiet.wav", quiet, 16000, subtype="FLOAT")
    manifest = _write_manifest(
        tmp_path / "m.csv",
        [
            {"ID": "loud", "duration": 0.1, "wav": str(tmp_path / "loud.wav"), "captions": "A"},
            {"ID": "quiet", "duration": 0.1, "wav": str(tmp_path / "quiet.wav"), "captions": "B"},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="speechbrain_slap.data.shards"):
        index = write_shards(manifest, tmp_path / "out", shuffle_seed=None, progress=False)
    assert index["num_clipped"] == 1 and index["num_samples"] == 2
    assert index["clipped"] == [
        {"id": "loud", "wav": str(tmp_path / "loud.wav"), "samples": 3, "of": 1600, "peak": 2.0}
    ]
    assert "clipped loud" in caplog.text and "3 of 1600 samples beyond full scale" in caplog.text
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        stored = soundfile.read(io.BytesIO(tar.extractfile("000000000.flac").read()), dtype="int16")
        meta = json.loads(tar.extractfile("000000000.json").read())
    assert stored[0][[10, 20, 30]].tolist() == [32767, -32768, 32767]
    assert meta["pcm16_clipped"] == {"samples": 3, "of": 1600, "peak": 2.0}
    # A rerun reads the complete shard back and still names the clip.
    again = write_shards(manifest, tmp_path / "out", shuffle_seed=None, progress=False)
    assert again["num_clipped"] == 1 and again["clipped"] == index["clipped"]


def test_rerun_keeps_complete_shards_and_replaces_partial_ones(corpus, tmp_path):
    """A complete shard is not rewritten (mtime), a missing one is rewritten identically and
    a leftover temporary file is replaced."""
    folder, manifest = corpus
    kwargs = dict(max_shard_samples=3, data_root=folder, progress=False)
    first = write_shards(manifest, tmp_path, **kwargs)
    kept, lost = tmp_path / "shard-000000.tar", tmp_path / "shard-000001.tar"
    original = lost.read_bytes()
    os.utime(kept, (1_000_000, 1_000_000))
    lost.unlink()
    partial = tmp_path / "shard-000001.tar.tmp"
    partial.write_bytes(b"half a shard")
    second = write_shards(manifest, tmp_path, **kwargs)
    assert kept.stat().st_mtime == 1_000_000
    assert lost.read_bytes() == original  # same plan, same bytes
    assert not partial.exists()
    assert second == first


def test_rerun_with_other_settings_raises(corpus, tmp_path):
    folder, manifest = corpus
    write_shards(manifest, tmp_path, max_shard_samples=3, data_root=folder, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        write_shards(manifest, tmp_path, max_shard_samples=4, data_root=folder, progress=False)


def test_unreadable_rows_are_skipped_counted_and_named(corpus, tmp_path, caplog):
    folder, manifest = corpus
    rows = read_manifest(manifest, data_root=folder)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really audio")
    bad = [
        {**rows[0], "ID": "missing", "wav": str(tmp_path / "nowhere.wav")},
        {**rows[0], "ID": "garbage", "wav": str(tmp_path / "garbage.wav")},
        {**rows[0], "ID": "uncaptioned", "captions": ""},
    ]
    manifest = _write_manifest(tmp_path / "m.csv", rows + bad)
    with caplog.at_level(logging.WARNING, logger="speechbrain_slap.data.shards"):
        index = write_shards(manifest, tmp_path / "out", max_shard_samples=4, progress=False)
    assert index["num_samples"] == N_TRAIN and index["num_skipped"] == 3
    assert {item["id"] for item in index["skipped"]} == {"missing", "garbage", "uncaptioned"}
    assert all(item["reason"] for item in index["skipped"])
    for name in ("missing", "garbage", "uncaptioned"):
        assert name in caplog.text
    assert set(_samples(tmp_path / "out")) == {row["ID"] for row in rows}
    # A rerun keeps the shards and still reports the rows they lack.
    again = write_shards(manifest, tmp_path / "out", max_shard_samples=4, progress=False)
    assert {item["id"] for item in again["skipped"]} == {"missing", "garbage", "uncaptioned"}


def test_parallel_writing_gives_the_same_shards(corpus, tmp_path):
    folder, manifest = corpus
    kwargs = dict(max_shard_samples=2, data_root=folder, progress=False)
    write_shards(manifest, tmp_path / "one", num_workers=1, **kwargs)
    write_shards(manifest, tmp_path / "two", num_workers=2, **kwargs)
    names = sorted(p.name for p in (tmp_path / "one").glob("*.tar"))
    assert names == sorted(p.name for p in (tmp_path / "two").glob("*.tar")) and len(names) == 4
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_plan_respects_both_limits():
    """Shards close at the sample count or the byte budget of 16-bit audio, whichever first."""
    one_second = 16000 * 2 + 3 * 512
    plan = plan_shards([1.0] * 10, max_shard_size=3 * one_second, max_shard_samples=4)
    assert [len(shard) for shard in plan] == [3, 3, 3, 1]
    assert sorted(i for shard in plan for i in shard) == list(range(10))
    assert plan != plan_shards([1.0] * 10, 3 * one_second, 4, shuffle_seed=None)
    assert plan_shards([1.0] * 10, 10**9, 4, shuffle_seed=None)[0] == [0, 1, 2, 3]
    # A clip larger than the budget gets a shard of its own.
    assert plan_shards([100.0, 1.0], one_second, 10, shuffle_seed=None) == [[0], [1]]


@pytest.mark.parametrize(
    "text, expected",
    [("500MB", 500 * 10**6), ("1GB", 10**9), ("1.5GiB", int(1.5 * 2**30)), ("64 kB", 64000)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1XB", "GB", "-1GB", "0", ""])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_manifest_errors_name_the_file_and_what_is_expected(tmp_path):
    no_captions = tmp_path / "a.csv"
    no_captions.write_text("ID,duration,wav\nx,1.0,x.wav\n")
    with pytest.raises(ValueError, match=r"a\.csv.*captions"):
        read_manifest(no_captions)
    needs_root = tmp_path / "b.csv"
    needs_root.write_text("ID,duration,wav,captions\nx,1.0,$data_root/x.wav,A\n")
    with pytest.raises(ValueError, match=r"b\.csv.*data_root"):
        read_manifest(needs_root)
    with pytest.raises(FileNotFoundError, match="c.csv"):
        read_manifest(tmp_path / "c.csv")


def test_command_line(corpus, tmp_path, capsys):
    folder, manifest = corpus
    out = tmp_path / "out"
    code = main(
        [
            str(manifest),
            str(out),
            "--max-shard-size",
            "100kB",
            "--num-workers",
            "1",
            "--data-root",
            str(folder),
            "--no-progress",
        ]
    )
    assert code == 0
    index = json.loads((out / "shards.json").read_text())
    assert index["config"]["max_shard_size"] == 100_000
    assert all(entry["bytes"] < 100_000 for entry in index["shards"])
    assert (
        index["num_samples"] == N_TRAIN
        and f"{index['num_shards']} shards" in capsys.readouterr().out
    )
    assert main([str(tmp_path / "none.csv"), str(out)]) == 2
    assert "none.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(manifest), str(out), "--max-shard-size", "lots"])
    assert "lots" in capsys.readouterr().err


def test_bad_rows_and_nonfinite_audio_are_skipped_not_fatal(corpus, tmp_path):
    """A ``$`` in a caption is kept; a bad duration and NaN/Inf audio go to ``skipped``."""
    folder, manifest = corpus
    rows = read_manifest(manifest, data_root=folder)
    tone = np.sin(np.arange(1600) / 5.0).astype(np.float32)
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        audio = tone.copy()
        audio[10] = value
        soundfile.write(tmp_path / f"{name}.wav", audio, 16000, subtype="FLOAT")
    extra = [
        {**rows[0], "ID": "dollar", "captions": "Coins worth $5 drop."},
        {**rows[0], "ID": "bad_duration", "duration": "abc"},
        {**rows[0], "ID": "nan", "wav": str(tmp_path / "nan.wav")},
        {**rows[0], "ID": "inf", "wav": str(tmp_path / "inf.wav")},
    ]
    manifest = _write_manifest(tmp_path / "m.csv", rows + extra)
    index = write_shards(manifest, tmp_path / "out", progress=False)
    reasons = {item["id"]: item["reason"] for item in index["skipped"]}
    assert reasons.keys() == {"bad_duration", "nan", "inf"}
    assert "non-numeric duration" in reasons["bad_duration"]
    assert "NaN or infinite" in reasons["nan"] and "NaN or infinite" in reasons["inf"]
    samples = _samples(tmp_path / "out")
    assert samples["dollar"][0]["captions"] == ["Coins worth $5 drop."]
    assert index["num_samples"] == N_TRAIN + 1


def test_shards_written_by_webdataset_are_plain_tar_files(tmp_path):
    """The ``webdataset.TarWriter`` shard is, byte for byte, the tar of the documented format."""
    from speechbrain_slap.data.shards import write_shard

    rows = []
    for i, seconds in enumerate([0.5, 1.25]):
        wav = tmp_path / f"clip{i}.wav"
        audio = (np.random.default_rng(i).standard_normal(int(seconds * 16000)) * 3000).astype(
            "int16"
        )
        soundfile.write(wav, audio, 16000)
        rows.append(
            (40 + i, {"ID": f"c{i}", "duration": seconds, "wav": str(wav), "captions": "A."})
        )
    write_shard(tmp_path / "s.tar", rows, 16000)

    # Read back with the standard library alone: plain regular members, JSON then FLAC.
    with tarfile.open(tmp_path / "s.tar") as tar:
        infos = tar.getmembers()
        data = {m.name: tar.extractfile(m).read() for m in infos}
    assert [m.name for m in infos] == [
        "000000040.json", "000000040.flac", "000000041.json", "000000041.flac"
    ]  # fmt: skip
    assert all(m.isreg() and m.mode == 0o444 and m.mtime == 0 for m in infos)
    for (_, row), key in zip(rows, ["000000040", "000000041"], strict=True):
        meta = json.loads(data[f"{key}.json"])
        assert meta["source_id"] == row["ID"] and meta["duration"] == row["duration"]
        audio, rate = soundfile.read(io.BytesIO(data[f"{key}.flac"]), dtype="int16")
        expected, _ = soundfile.read(row["wav"], dtype="int16")
        assert rate == 16000 and np.array_equal(audio, expected)

    # The same members written with tarfile directly give the same bytes.
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in data.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(payload), 0o444, 0
            tar.addfile(info, io.BytesIO(payload))
    assert (tmp_path / "s.tar").read_bytes() == reference.getvalue()
