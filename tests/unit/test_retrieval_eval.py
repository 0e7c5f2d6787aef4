"""Tests of caption manifests (data.manifest), retrieval and captioning evaluation, loading.

The evaluation functions run on a fake model whose embeddings are chosen by
hand, so the expected metrics are known; ``load_pretrained`` runs on the
session's tiny model folder.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from speechbrain_slap.data.audio import probe_audio
from speechbrain_slap.data.manifest import (
    CaptionedClip,
    caption_problem,
    manifest_wav,
    manifests_up_to_date,
    read_prepare_report,
    save_prepare_report,
)
from speechbrain_slap.data.manifest import read_clips as read_manifest
from speechbrain_slap.data.manifest import write_caption_manifest as write_manifest
from speechbrain_slap.evaluation import (
    caption_clips,
    evaluate_captioning,
    evaluate_retrieval,
    evaluate_splits,
)
from speechbrain_slap.metrics import retrieval_metrics
from speechbrain_slap.model_folder import ModelFolderError, load_pretrained, write_checksums


class FakeModel:
    """Stands in for ``SLAP``: a clip's audio is one sample holding its index.

    Audio embeddings are one-hot on that index; a text embedding is one-hot on
    the index written at its start (``"3: ..."``), so a caption retrieves the
    clip it names. Records the batch sizes it was called with.
    """

    def __init__(self, n_clips: int):
        self.n = n_clips
        self.audio_batches, self.files = [], []

    def load_audio(self, path):
        self.files.append(path)
        return torch.tensor([float(Path(path).stem.split("_")[-1])])

    def encode_waveforms(self, clips):
        self.audio_batches.append(len(clips))
        index = torch.stack([c[0] for c in clips]).long()
        return torch.nn.functional.one_hot(index, self.n).float()

    def encode_text(self, texts):
        index = torch.tensor([int(t.split(":")[0]) for t in texts])
        return torch.nn.functional.one_hot(index, self.n).float()

    def caption_waveforms(self, clips, beam_size=4, max_length=None):
        self.audio_batches.append(len(clips))
        return [f"clip {int(c[0])} beam {beam_size}" for c in clips]


def _clips(n: int, captions_per_clip: int = 2, names=None) -> list[CaptionedClip]:
    """Clip i has captions naming clip i, except caption 1 of clip 0, which names clip 1."""
    clips = []
    for i in range(n):
        captions = [f"{i}: caption {j} of clip {i}" for j in range(captions_per_clip)]
        clips.append(CaptionedClip(f"c{i}", f"/audio/clip_{i}.wav", 1.0 + i, captions))
    clips[0].captions[1] = "1: a caption of clip 0 that describes clip 1"
    return clips


def test_caption_problem_finds_what_a_manifest_cannot_hold():
    """Empty captions, the separator and $variables are refused; the rest is kept."""
    assert caption_problem('A dog, a "cat" and 50% rain.') is None
    assert caption_problem("   ") == "empty caption"
    assert "separator" in caption_problem("a dog | a cat")
    assert "$x" in caption_problem("pay $x now")
    assert caption_problem("costs 5$ only") is None  # not followed by a name


def test_manifest_round_trip_with_spaces_commas_and_quotes(tmp_path):
    """write_manifest -> read_manifest gives back IDs, paths, durations and captions."""
    data = tmp_path / "data"
    clips = [
        CaptionedClip("Santa Motor", str(data / "dev" / "Santa Motor.wav"), 17.25, ["A, b.", "C."]),
        CaptionedClip("rain, roof", str(data / "dev" / "rain, roof.wav"), 30.0, ['He says "hi".']),
        CaptionedClip("outside", "/elsewhere/x.flac", 2.5, ["Outside the folder."]),
    ]
    report = write_manifest(tmp_path / "m" / "train.csv", clips, data)
    assert report == {"clips": 3, "captions": 4, "skipped": 0, "skipped_by_reason": {}}
    with open(tmp_path / "m" / "train.csv", newline="") as fin:
        rows = list(csv.DictReader(fin))
    assert [r["wav"] for r in rows] == [
        "$data_root/dev/Santa Motor.wav",
        "$data_root/dev/rain, roof.wav",
        "/elsewhere/x.flac",
    ]
    assert rows[0]["captions"] == "A, b. | C."
    assert read_manifest(tmp_path / "m" / "train.csv", data) == clips
    assert not (tmp_path / "m" / "train_skipped.csv").exists()


def test_write_manifest_skips_and_lists_unusable_clips(tmp_path):
    """Clips with unusable captions or paths go to <split>_skipped.csv with the caller's."""
    clips = [
        CaptionedClip("ok", str(tmp_path / "ok.wav"), 1.0, ["Fine."]),
        CaptionedClip("sep", str(tmp_path / "sep.wav"), 1.0, ["Fine.", "a | b"]),
        CaptionedClip("dollar", str(tmp_path / "$HOME.wav"), 1.0, ["Fine."]),
        CaptionedClip("none", str(tmp_path / "none.wav"), 1.0, []),
    ]
    report = write_manifest(
        tmp_path / "test.csv", clips, tmp_path, [("gone", "audio file missing")]
    )
    assert report["clips"] == 1 and report["skipped"] == 4
    with open(tmp_path / "test_skipped.csv", newline="") as fin:
        skipped = {row["ID"]: row["reason"] for row in csv.DictReader(fin)}
    assert set(skipped) == {"sep", "dollar", "none", "gone"}
    assert "separator" in skipped["sep"] and "'$'" in skipped["dollar"]
    assert skipped["none"] == "no caption"
    assert report["skipped_by_reason"]["audio file missing"] == 1
    # The manifest reads back with SpeechBrain's $-replacing reader.
    assert [c.id for c in read_manifest(tmp_path / "test.csv", tmp_path)] == ["ok"]


def test_manifest_wav_relative_inside_the_data_folder(tmp_path):
    """Paths inside data_folder become $data_root/..., even given relative to it."""
    assert manifest_wav(tmp_path / "a" / "b.wav", tmp_path) == "$data_root/a/b.wav"
    assert manifest_wav(tmp_path / "a" / ".." / "c.wav", tmp_path) == "$data_root/c.wav"
    assert manifest_wav("/x/y.wav", tmp_path / "x") == "/x/y.wav"


def test_read_manifest_names_the_file_on_bad_input(tmp_path):
    """A manifest without captions column or without clips fails with its name."""
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,duration,wav\na,1.0,x.wav\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*captions"):
        read_manifest(bad, tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("ID,duration,wav,captions\n")
    with pytest.raises(ValueError, match=r"empty\.csv: no clip"):
        read_manifest(empty, tmp_path)


def test_prepare_report_and_up_to_date_check(tmp_path):
    """Up to date only with every manifest and the same options."""
    options = {"data_folder": tmp_path / "data", "splits": ("valid", "test")}
    assert not manifests_up_to_date(tmp_path, ["valid", "test"], options)
    for split in ("valid", "test"):
        (tmp_path / f"{split}.csv").write_text("ID,duration,wav,captions\n")
    save_prepare_report(tmp_path, options, {"test": {"clips": 0}})
    assert manifests_up_to_date(tmp_path, ["valid", "test"], options)
    assert not manifests_up_to_date(tmp_path, ["valid", "test"], {**options, "x": 1})
    assert not manifests_up_to_date(tmp_path, ["train", "test"], options)
    assert read_prepare_report(tmp_path) == {"test": {"clips": 0}}
    assert read_prepare_report(tmp_path / "nothing") == {}


def test_probe_audio_duration_and_problems(tmp_path):
    """Duration from the header; missing, unreadable and empty files give a reason."""
    import soundfile

    soundfile.write(str(tmp_path / "a.flac"), torch.zeros(24000).numpy(), 16000)
    assert probe_audio(tmp_path / "a.flac") == (1.5, None)
    (tmp_path / "junk.wav").write_bytes(b"not audio")
    duration, problem = probe_audio(tmp_path / "junk.wav")
    assert duration is None and problem.startswith("unreadable audio")
    soundfile.write(str(tmp_path / "empty.wav"), torch.zeros(0).numpy(), 16000)
    assert probe_audio(tmp_path / "empty.wav") == (None, "empty audio")


def test_evaluate_retrieval_orders_queries_and_batches(tmp_path):
    """Every caption is a query of its own clip, in order; metrics match a hand count."""
    clips = _clips(5, captions_per_clip=2)
    model = FakeModel(5)
    evaluation = evaluate_retrieval(model, clips, batch_clips=2)
    assert model.audio_batches == [2, 2, 1]
    assert model.files == [c.wav for c in clips]
    assert evaluation.clip_ids == ["c0", "c1", "c2", "c3", "c4"]
    assert evaluation.text_to_audio.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert evaluation.texts[1] == clips[0].captions[1]
    metrics = evaluation.metrics
    # 9 of 10 captions retrieve their clip first; the odd one scores 0 with its
    # clip, behind clip 1 and tied with 3 others (ties count against it): rank 4.
    assert metrics["t2a_R@1"] == pytest.approx(0.9)
    assert metrics["t2a_R@5"] == 1.0 and metrics["t2a_median_rank"] == 1.0
    # Clip 1's captions tie with the odd caption of clip 0: rank 1, not 0.
    assert metrics["a2t_R@1"] == pytest.approx(4 / 5)
    assert (metrics["n_texts"], metrics["n_audios"]) == (10, 5)
    assert metrics["mean_R@1"] == pytest.approx(0.5 * (0.9 + 0.8))
    reference = retrieval_metrics(evaluation.similarity, evaluation.text_to_audio)
    assert {k: metrics[k] for k in reference} == reference


def test_evaluate_splits_writes_results_embeddings_and_plots(tmp_path):
    """results.json per split with extra entries; embeddings reload; PNG written."""
    clips = _clips(4)
    write_manifest(tmp_path / "test.csv", clips, tmp_path)
    results = evaluate_splits(
        FakeModel(4), {"test": tmp_path / "test.csv"}, tmp_path, tmp_path, extra={"model": "m"}
    )
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert results["model"] == "m" and results["test"]["n_audios"] == 4
    saved = torch.load(tmp_path / "test_embeddings.pt", weights_only=False)
    assert saved["clip_ids"] == ["c0", "c1", "c2", "c3"]
    similarity = saved["text"] @ saved["audio"].T
    again = retrieval_metrics(similarity, saved["text_to_audio"])
    assert again["t2a_R@1"] == results["test"]["t2a_R@1"]
    assert (tmp_path / "test_similarity.png").read_bytes()[:4] == b"\x89PNG"


def test_caption_clips_and_predictions_file(tmp_path):
    """One caption per clip, in order, batch by batch; predictions.csv holds the references."""
    clips = _clips(3)
    clips[2].captions.append("2: a third reference")
    model = FakeModel(3)
    assert caption_clips(model, clips, beam_size=3, batch_clips=2) == [
        "clip 0 beam 3",
        "clip 1 beam 3",
        "clip 2 beam 3",
    ]
    assert model.audio_batches == [2, 1]
    write_manifest(tmp_path / "test.csv", clips, tmp_path)
    results = evaluate_captioning(
        FakeModel(3),
        tmp_path / "test.csv",
        tmp_path,
        tmp_path,
        beam_size=2,
        compute_metrics=False,
        extra={"split": "test"},
    )
    assert results == {"split": "test", "beam_size": 2, "n_clips": 3}
    with open(tmp_path / "predictions.csv", newline="") as fin:
        rows = list(csv.DictReader(fin))
    assert [r["prediction"] for r in rows] == ["clip 0 beam 2", "clip 1 beam 2", "clip 2 beam 2"]
    assert rows[2]["reference_3"] == "2: a third reference" and rows[0]["reference_3"] == ""


def _pretrainer(model_folder, **loadables):
    from speechbrain.utils.parameter_transfer import Pretrainer

    paths = {name: str(Path(model_folder) / f"{name}.ckpt") for name in loadables}
    return Pretrainer(loadables=loadables, paths=paths)


def test_load_pretrained_loads_weights_and_the_tokenizer(slap_model_folder, tmp_path):
    """Weights equal the folder's; the tokenizer is the folder's, not a new one."""
    from speechbrain_slap.lobes.pooling import MAPooling

    pooling = MAPooling(64, num_heads=4)
    tokenizer = load_pretrained(
        _pretrainer(slap_model_folder, audio_pooling=pooling), slap_model_folder, tmp_path, 80
    )
    state = torch.load(slap_model_folder / "audio_pooling.ckpt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in pooling.state_dict().items())
    copied = tmp_path / "80_unigram.model"
    assert copied.read_bytes() == (slap_model_folder / "tokenizer.ckpt").read_bytes()
    assert tokenizer.sp.get_piece_size() == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == ["80_unigram.model"]


def test_load_pretrained_refuses_another_architecture(slap_model_folder, tmp_path):
    """A shallower encoder would only get warnings from SpeechBrain: here it fails."""
    from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder

    encoder = SLAPAudioEncoder(embed_dim=64, depth=2, num_heads=4, mlp_hidden=128)
    with pytest.raises(RuntimeError, match=r"hyperparams\.yaml[\s\S]*Unexpected key"):
        load_pretrained(
            _pretrainer(slap_model_folder, audio_encoder=encoder), slap_model_folder, tmp_path, 80
        )
    with pytest.raises(ModelFolderError, match="vocab_size"):
        load_pretrained(_pretrainer(slap_model_folder), slap_model_folder, tmp_path / "t", 100)


def test_load_pretrained_needs_the_training_files(slap_model_folder, tmp_path):
    """A folder without teacher.ckpt cannot continue SSL; the error says so."""
    folder = tmp_path / "model"
    folder.mkdir()
    for path in slap_model_folder.iterdir():
        if path.name not in ("teacher.ckpt", "SHA256SUMS"):
            (folder / path.name).symlink_to(path)
    write_checksums(folder)
    teacher = torch.nn.Linear(1, 1)
    with pytest.raises(ModelFolderError, match=r"teacher\.ckpt.*SSL head and the EMA teacher"):
        load_pretrained(_pretrainer(folder, teacher=teacher), folder, tmp_path / "tok", 80)
    shutil.rmtree(folder)
    with pytest.raises(ModelFolderError, match="must be a SLAP model folder"):
        load_pretrained(_pretrainer(folder), folder, tmp_path / "tok", 80)


def test_unreadable_clips_are_left_out_of_retrieval_and_listed():
    """A clip whose audio cannot be read leaves the gallery; its captions leave the queries."""
    from speechbrain_slap.data.audio import AudioLoadError

    class BrokenClip(FakeModel):
        def load_audio(self, path):
            if path.endswith("clip_2.wav"):
                raise AudioLoadError(path, "cannot decode audio")
            return super().load_audio(path)

    evaluation = evaluate_retrieval(BrokenClip(4), _clips(4), batch_clips=2)
    assert evaluation.clip_ids == ["c0", "c1", "c3"]
    assert evaluation.text_to_audio.tolist() == [0, 0, 1, 1, 2, 2]
    metrics = evaluation.metrics
    assert (metrics["n_audios"], metrics["n_texts"], metrics["n_skipped"]) == (3, 6, 1)
    assert metrics["skipped"] == [
        {"ID": "c2", "wav": "/audio/clip_2.wav", "reason": "cannot decode audio"}
    ]
