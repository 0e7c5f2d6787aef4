"""``speechbrain_slap.data.stream``: split, packing, batches, unreadable samples and resuming."""

import io
import json
import logging
import tarfile

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_slap.data.manifest import CAPTION_SEPARATOR, read_manifest, split_captions
from speechbrain_slap.data.shards import write_shards
from speechbrain_slap.data.stream import ShardStream, StreamLoader, expand_shards
from speechbrain_slap.data.synthetic import generate_corpus
from speechbrain_slap.lobes.caption_decoder import encode_captions, train_caption_tokenizer

N_TRAIN = 16
RATE = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """16 generated clips (1 to 3.5 s) in 8 shards of 2, their rows and a char tokenizer."""
    folder = tmp_path_factory.mktemp("stream")
    manifests = generate_corpus(
        folder, n_train=N_TRAIN, n_valid=0, n_test=0, max_duration=3.5, progress=False
    )
    write_shards(
        manifests["train"],
        folder / "shards",
        max_shard_samples=2,
        data_root=folder,
        progress=False,
    )
    rows = {row["ID"]: row for row in read_manifest(manifests["train"], data_root=folder)}
    sp = train_caption_tokenizer(manifests["train"], folder / "tok", model_type="char").sp
    return folder / "shards", rows, sp


def _shard_of(shards_dir):
    """{source id: shard path} from the shards' JSON members."""
    owner = {}
    for shard in expand_shards(shards_dir):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    owner[json.loads(tar.extractfile(member).read())["source_id"]] = shard
    return owner


def _stream(shards, **kwargs):
    defaults = dict(batch_seconds=6.0, max_batch_clips=3, max_duration=3.5, batches_per_epoch=4)
    return ShardStream(shards, **{**defaults, **kwargs})


def _ids(batches):
    return [list(batch.id) for batch in batches]


def test_shards_split_by_rank_and_worker_disjoint_and_complete(corpus):
    shards, *_ = corpus
    for world_size, num_workers in ((1, 1), (2, 2), (4, 2), (3, 2)):
        streams = [_stream(shards, rank=r, world_size=world_size) for r in range(world_size)]
        for epoch in (1, 2):
            parts = [
                s.worker_shards(epoch, w, num_workers) for s in streams for w in range(num_workers)
            ]
            flat = [p for part in parts for p in part]
            assert sorted(flat) == streams[0].shards  # every shard, exactly once
            assert all(parts)
    first = [_stream(shards, rank=r, world_size=2).worker_shards(1) for r in range(2)]
    second = [_stream(shards, rank=r, world_size=2).worker_shards(2) for r in range(2)]
    assert first != second  # each epoch deals the shards anew
    with pytest.raises(ValueError, match="world_size x num_workers"):
        _stream(shards, rank=0, world_size=4).worker_shards(1, 0, 3)
    with pytest.raises(ValueError, match="9 ranks"):
        _stream(shards, rank=0, world_size=9)


def test_ranks_read_disjoint_samples_and_one_pass_covers_all(corpus):
    """Two ranks never read each other's shards; enough batches cover every clip."""
    shards, rows, _ = corpus
    owner = _shard_of(shards)
    seen = []
    for rank in range(2):
        stream = _stream(shards, rank=rank, world_size=2, batches_per_epoch=6)
        ids = [i for batch in _ids(stream) for i in batch]
        assert {owner[i] for i in ids} <= set(stream.worker_shards(1))
        seen.append(set(ids))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(rows)


def test_batches_respect_the_duration_budget_and_carry_the_manifest_keys(corpus):
    shards, rows, sp = corpus
    stream = _stream(shards, tokenizer=sp, max_caption_tokens=40, batches_per_epoch=8)
    batches = list(stream)
    assert len(batches) == len(stream) == 8
    for batch in batches:
        keys = ("id", "sig", "captions", "caption", "tokens_in", "tokens_out")
        assert len(list(batch)) == len(keys) and all(batch[key] is not None for key in keys)
        wavs, lens = batch.sig
        lengths = (lens * wavs.shape[1]).round().long()
        costs = [min(float(rows[i]["duration"]), 3.5) for i in batch.id]
        assert len(batch.id) <= 3 and sum(costs) <= 6.0 + 1e-9
        for k, clip_id in enumerate(batch.id):
            row = rows[clip_id]
            original, _ = soundfile.read(row["wav"], dtype="float32")
            # Uncropped clips are the stored audio, bit for bit.
            torch.testing.assert_close(wavs[k, : lengths[k]], torch.from_numpy(original))
            assert batch.captions[k] == CAPTION_SEPARATOR.join(split_captions(row["captions"]))
            assert batch.caption[k] in split_captions(row["captions"])
            tokens_in, tokens_out = encode_captions(sp, [batch.caption[k]], 40)
            n = tokens_in.shape[1]
            assert torch.equal(batch.tokens_in.data[k, :n], tokens_in[0])
            assert torch.equal(batch.tokens_out.data[k, :n], tokens_out[0])
            assert not batch.tokens_in.data[k, n:].any()  # padded with the pad id 0


def test_decoder_captions_give_each_clip_several_distinct_caption_rows(corpus):
    """decoder_captions=3: rows of the CLAP caption then two other captions of the clip."""
    shards, rows, sp = corpus
    stream = _stream(shards, tokenizer=sp, max_caption_tokens=300, decoder_captions=3)
    for batch in stream:  # captions of several lengths, in fixed (3, 300) blocks
        assert batch.tokens_in.data.shape == (len(batch.id), 3, 300)
        for k, clip_id in enumerate(batch.id):
            captions = split_captions(rows[clip_id]["captions"])
            expected = {c: encode_captions(sp, [c], 300) for c in captions}
            found = []
            for row in range(3):
                for caption, (tokens_in, tokens_out) in expected.items():
                    n = tokens_in.shape[1]
                    if torch.equal(batch.tokens_in.data[k, row, :n], tokens_in[0]):
                        assert torch.equal(batch.tokens_out.data[k, row, :n], tokens_out[0])
                        assert not batch.tokens_in.data[k, row, n:].any()
                        found.append(caption)
                        break
            assert found[0] == batch.caption[k] and len(set(found)) == 3, (clip_id, found)
    with pytest.raises(ValueError, match="decoder_captions must be an int >= 1"):
        _stream(shards, tokenizer=sp, decoder_captions=0)


def _find(part, whole):
    """First offset at which ``part`` occurs in ``whole`` exactly, or None."""
    anchor = int(np.flatnonzero(part)[0])  # the clips start with silence: anchor on sound
    for position in np.flatnonzero(whole == part[anchor]).tolist():
        start = position - anchor
        if 0 <= start <= len(whole) - len(part) and np.array_equal(
            whole[start : start + len(part)], part
        ):
            return start
    return None


def test_long_clips_are_cropped_at_random_offsets(corpus):
    shards, rows, _ = corpus
    stream = _stream(shards, max_duration=1.0, batch_seconds=3.0, batches_per_epoch=8)
    offsets = []
    for batch in stream:
        wavs, lens = batch.sig
        assert wavs.shape[1] <= RATE
        for k, clip_id in enumerate(batch.id):
            original, _ = soundfile.read(rows[clip_id]["wav"], dtype="float32")
            crop = wavs[k, : int(round(float(lens[k]) * wavs.shape[1]))].numpy()
            assert len(crop) == min(len(original), RATE)
            offset = _find(crop, original)
            assert offset is not None, clip_id
            offsets.append(offset)
    assert len(set(offsets)) > 3  # not always the start


def test_the_epoch_and_the_seed_decide_the_stream(corpus):
    shards, *_ = corpus
    a, b = _stream(shards, seed=3), _stream(shards, seed=3)
    assert _ids(a) == _ids(b)
    b.set_epoch(2)
    assert _ids(a) != _ids(b)
    assert _ids(_stream(shards, seed=4)) != _ids(a)
    evaluation = _stream(shards, train=False, batches_per_epoch=2)
    assert _ids(evaluation) == _ids(evaluation)


def test_batches_per_epoch_defaults_to_one_pass_from_the_index(corpus):
    shards, rows, _ = corpus
    index = json.loads((shards / "shards.json").read_text())
    seconds = sum(entry["seconds"] for entry in index["shards"])
    for world_size in (1, 2):
        stream = ShardStream(shards, 6.0, 3, max_duration=3.5, rank=0, world_size=world_size)
        expected = max(seconds / 6.0, len(rows) / 3) / world_size
        assert len(stream) == int(np.ceil(expected))


def test_shards_without_an_index_need_batches_per_epoch(corpus, tmp_path):
    shards, *_ = corpus
    unindexed = tmp_path / "shard-000000.tar"
    unindexed.write_bytes((shards / "shard-000000.tar").read_bytes())
    with pytest.raises(ValueError, match="batches_per_epoch"):
        ShardStream(expand_shards(shards) + [str(unindexed)], 6.0, 3, max_duration=3.5)
    assert len(ShardStream(unindexed, 6.0, 3, max_duration=3.5, batches_per_epoch=7)) == 7


def _broken_shard(shards, path):
    """A copy of the first shard's two samples plus three broken ones."""
    with tarfile.open(expand_shards(shards)[0]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    good_json = members[0][1]
    broken = [
        ("100000000.json", good_json),  # no audio
        ("100000001.json", b"{not json"),
        ("100000001.flac", members[1][1]),
        ("100000002.json", good_json),
        ("100000002.flac", b"fLaC but not really"),
    ]
    with tarfile.open(path, "w") as tar:
        for name, data in [(m.name, d) for m, d in members] + broken:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unreadable_samples_are_skipped_counted_and_logged(corpus, tmp_path, caplog):
    shards, *_ = corpus
    path = _broken_shard(shards, tmp_path / "shard-000000.tar")
    (tmp_path / "shard-000001.tar").write_bytes(b"truncated" * 100)
    stream = ShardStream(
        [str(path), str(tmp_path / "shard-000001.tar")],
        100.0,
        2,
        max_duration=3.5,
        batches_per_epoch=2,
        train=False,
    )
    with caplog.at_level(logging.INFO, logger="speechbrain_slap.data.stream"):
        first, second = list(StreamLoader(stream))
    # The good pair; then the sample whose FLAC does not decode and, after the truncated
    # shard, the first good sample again (the second pass): one clip.
    assert len(first.id) == 2 and list(second.id) == list(first.id[:1])
    assert first.skipped == []
    reasons = dict(second.skipped)
    assert set(reasons) == {
        "shard-000000.tar/100000000",
        "shard-000000.tar/100000001",
        "shard-000000.tar/100000002",
        "shard-000001.tar",
    }
    assert "incomplete" in reasons["shard-000000.tar/100000000"]
    assert "JSON" in reasons["shard-000000.tar/100000001"]
    assert "flac" in reasons["shard-000000.tar/100000002"].lower()
    assert "unreadable shard" in reasons["shard-000001.tar"]
    for name in reasons:
        assert f"skipped {name}" in caplog.text
    assert "4 unreadable samples skipped" in caplog.text
    assert "epoch 1, rank 0: 2 batches, 3 clips" in caplog.text


def test_loader_counts_epochs_and_resumes_intra_epoch_checkpoints(corpus, tmp_path):
    """Interrupted after 3 of 5 batches, a new loader yields exactly batches 4 and 5, then
    epoch 2 as the uninterrupted run does; an end-of-epoch checkpoint starts the next."""
    shards, *_ = corpus
    make = lambda: StreamLoader(_stream(shards, batches_per_epoch=5))  # noqa: E731
    reference = make()
    epochs = [_ids(reference), _ids(reference)]
    assert reference.epoch == 2 and epochs[0] != epochs[1]

    loader = make()
    checkpointer = Checkpointer(tmp_path / "ckpt", {"train_stream": loader})
    consumed = []
    for batch in loader:
        consumed.append(list(batch.id))
        if len(consumed) == 3:
            checkpointer.save_checkpoint(end_of_epoch=False)
            break
    resumed = make()
    Checkpointer(tmp_path / "ckpt", {"train_stream": resumed}).recover_if_possible()
    tail = _ids(resumed)
    assert consumed + tail == epochs[0] and resumed.batches_done == 5
    assert _ids(resumed) == epochs[1]

    checkpointer.save_checkpoint(end_of_epoch=True)  # loader: epoch 1, 3 batches done
    after_epoch = make()
    Checkpointer(tmp_path / "ckpt", {"train_stream": after_epoch}).recover_if_possible()
    assert _ids(after_epoch) == epochs[1]


def test_loader_workers_split_shards_and_resume(corpus, tmp_path):
    """Two loader workers: the batches come from both, none twice, and a resume after
    3 batches yields the uninterrupted run's last batches."""
    shards, *_ = corpus
    make = lambda: StreamLoader(_stream(shards, batches_per_epoch=5), num_workers=2)  # noqa: E731
    owner = _shard_of(shards)
    batches = _ids(make())
    assert len(batches) == 5
    stream = _stream(shards)
    by_worker = [set(stream.worker_shards(1, w, 2)) for w in range(2)]
    for number, ids in enumerate(batches):  # batch i comes from worker i % 2
        assert {owner[i] for i in ids} <= by_worker[number % 2]
    loader = make()
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"epoch": 1, "batches_done": 3}))
    loader._recover(path, end_of_epoch=False)
    assert _ids(loader) == batches[3:]
    with pytest.raises(ValueError, match="world_size x num_workers"):
        StreamLoader(_stream(expand_shards(shards)[:1]), num_workers=2)


def _stored_durations(shards_dir):
    """Seconds of every stored clip, from the shards' JSON members."""
    durations = []
    for shard in expand_shards(shards_dir):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    durations.append(json.loads(tar.extractfile(member).read())["duration"])
    return durations


@pytest.mark.parametrize("max_duration", [1.0, 2.0, 1.5])
def test_one_pass_estimate_charges_clips_at_most_max_duration(corpus, max_duration):
    """Clips longer than max_duration count max_duration, as packing counts them."""
    shards, *_ = corpus
    durations = _stored_durations(shards)
    assert max(durations) > 2.0  # the cap matters
    stream = ShardStream(shards, 3.0, 100, max_duration=max_duration, rank=0, world_size=1)
    capped = sum(min(d, max_duration) for d in durations)
    if max_duration == int(max_duration):  # exact
        assert len(stream) == int(np.ceil(capped / 3.0))
    else:  # a fractional cap may count its straddling bin's clips at their mean
        ceiling = sum(min(d, np.ceil(max_duration)) for d in durations)
        assert int(np.ceil(capped / 3.0)) <= len(stream) <= int(np.ceil(ceiling / 3.0))
    assert len(stream) < np.ceil(sum(durations) / 3.0)  # the uncapped seconds over-count
