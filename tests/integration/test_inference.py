"""The ``SLAP`` inference interface and model folders, on the tiny exported model.

The model folder comes from the session fixture ``slap_model_folder``
(``tests/conftest.py``): the pretraining recipe's tiny model with seeded
weights, exported with ``speechbrain_slap.model_folder.export_model``.
"""

import math
import os
import shutil

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_slap.data.audio import AudioLoadError
from speechbrain_slap.inference import SLAP, window_starts
from speechbrain_slap.lobes.features import pad_waveforms
from speechbrain_slap.lobes.frame_encoder import time_step_features
from speechbrain_slap.model_folder import (
    ModelFolderError,
    export_model,
    find_best_checkpoint,
    verify_checksums,
    write_checksums,
)

RATE = 16000
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(slap_model_folder):
    return SLAP.from_hparams(source=str(slap_model_folder), run_opts={"device": "cpu"})


def _tone(seconds: float, freq: float = 440.0, rate: int = RATE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    noise = 0.05 * torch.randn(t.numel(), generator=generator)
    return 0.3 * torch.sin(2 * math.pi * freq * t) + noise


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


# -- model folders ----------
def test_model_folder_files_and_card(slap_model_folder):
    names = sorted(p.name for p in slap_model_folder.iterdir())
    assert names == sorted(
        [
            "README.md",
            "SHA256SUMS",
            "hyperparams.yaml",
            "audio_encoder.ckpt",
            "audio_pooling.ckpt",
            "text_encoder.ckpt",
            "caption_decoder.ckpt",
            "clap_loss.ckpt",
            "tokenizer.ckpt",
            "ssl_head.ckpt",
            "teacher.ckpt",
            "text_encoder",
        ]
    )
    text_encoder = sorted(p.name for p in (slap_model_folder / "text_encoder").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(text_encoder)
    assert sorted(verify_checksums(slap_model_folder)) == sorted(
        [n for n in names if n.endswith(".ckpt")]
        + ["hyperparams.yaml"]
        + [f"text_encoder/{n}" for n in text_encoder]
    )
    card = (slap_model_folder / "README.md").read_text()
    assert "| t2a_R@1 | 0.125 |" in card and "| a2t_R@1 | 0.25 |" in card
    assert "embed_dim: 64" in card
    assert "trust" in card


def test_exported_weights_are_the_checkpoint(slap_model_folder, recipe_output):
    checkpoint = find_best_checkpoint(recipe_output / "save")
    for name in ("audio_encoder.ckpt", "caption_decoder.ckpt", "teacher.ckpt"):
        exported = torch.load(slap_model_folder / name, weights_only=True)
        original = torch.load(checkpoint / name, weights_only=True)
        assert exported.keys() == original.keys()
        assert all(torch.equal(exported[k], original[k]) for k in exported)


def test_loaded_modules_hold_the_exported_weights(model, slap_model_folder):
    state = torch.load(slap_model_folder / "audio_encoder.ckpt", weights_only=True)
    loaded = model.mods.audio_encoder.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not any(p.requires_grad for p in model.mods.parameters())


def test_best_checkpoint_is_chosen_by_mean_r1(recipe_output, tmp_path):
    output = tmp_path / "output"
    shutil.copytree(recipe_output, output, symlinks=True)
    from hyperpyyaml import load_hyperpyyaml

    with open(output / "hyperparams.yaml") as fin:
        hparams = load_hyperpyyaml(fin)
    # The saved yaml has its paths resolved (as SpeechBrain saves it): save into the copy.
    checkpointer = Checkpointer(output / "save", hparams["checkpointer"].recoverables)
    encoder = hparams["audio_encoder"]
    for score in (0.5, 0.1):  # the better one is not the newest
        with torch.no_grad():
            encoder.patch_embed.weight.fill_(score)
        checkpointer.save_checkpoint(meta={"mean_R@1": score}, name=f"r1_{score}")
    best = find_best_checkpoint(output / "save")
    assert best.name == "CKPT+r1_0.5"
    folder = export_model(output, tmp_path / "model")
    weights = torch.load(folder / "audio_encoder.ckpt", weights_only=True)
    assert torch.all(weights["patch_embed.weight"] == 0.5)


def test_export_refuses_bad_inputs(recipe_output, tmp_path):
    with pytest.raises(ModelFolderError, match="no hyperparams.yaml"):
        export_model(tmp_path, tmp_path / "model")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "something").write_text("x")
    with pytest.raises(ModelFolderError, match="not empty"):
        export_model(recipe_output, occupied)


def test_tampered_or_unsummed_folder_is_refused(slap_model_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    with open(folder / "clap_loss.ckpt", "ab") as fout:
        fout.write(b"\0")
    with pytest.raises(ModelFolderError, match=r"clap_loss.ckpt: SHA-256 mismatch"):
        SLAP.from_hparams(source=str(folder))
    (folder / "SHA256SUMS").unlink()
    with pytest.raises(ModelFolderError, match="no SHA256SUMS"):
        SLAP.from_hparams(source=str(folder))
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        SLAP.from_hparams(source=str(tmp_path / "nowhere"))


# -- audio embeddings ----------
def test_embeddings_are_unit_norm_and_batch_independent(model):
    clips = [_tone(1.3, 300, seed=1), _tone(4.0, 500, seed=2), _tone(0.05, 700, seed=3)]
    wavs, wav_lens = pad_waveforms(clips)
    batch = model.encode_audio_batch(wavs, wav_lens)
    assert batch.shape == (3, 64)
    assert torch.allclose(batch.norm(dim=-1), torch.ones(3), atol=1e-6)
    for i, clip in enumerate(clips):
        alone = model.encode_audio_batch(clip)
        assert torch.allclose(alone[0], batch[i], atol=1e-5), i
    # Extra padding, another order, run after run: the same embeddings.
    padded = torch.nn.functional.pad(wavs, (0, 4000))
    lens = wav_lens * wavs.shape[1] / padded.shape[1]
    again = model.encode_audio_batch(padded.flip(0), lens.flip(0))
    assert torch.allclose(again.flip(0), batch, atol=1e-5)
    assert torch.equal(model.encode_audio_batch(wavs, wav_lens), batch)


def test_embedding_matches_the_modules_called_directly(model):
    clip = _tone(2.0)
    wavs, wav_lens = pad_waveforms([clip])
    mods = model.mods
    with torch.no_grad():
        tokens = mods.audio_encoder(mods.compute_features(wavs), wav_lens)
        expected = _unit(mods.audio_pooling(tokens, wav_lens))
    assert torch.allclose(model.encode_audio_batch(clip), expected, atol=1e-6)


def test_batch_chunking_does_not_change_embeddings(model):
    clips = [_tone(d, 200 + 100 * i, seed=i) for i, d in enumerate((3.0, 2.0, 5.0, 1.0))]
    whole = model.encode_waveforms(clips)
    budget, model.batch_seconds = model.batch_seconds, 3.0  # one or two clips a forward
    try:
        chunked = model.encode_waveforms(clips)
    finally:
        model.batch_seconds = budget
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_files_any_format_rate_and_channels(model, tmp_path):
    stereo = torch.stack([_tone(2.0, 300, 44100, seed=4), _tone(2.0, 600, 44100, seed=5)], 1)
    soundfile.write(tmp_path / "stereo.wav", stereo.numpy(), 44100, subtype="PCM_16")
    read, _ = soundfile.read(tmp_path / "stereo.wav", dtype="float32")
    expected = torchaudio.functional.resample(torch.from_numpy(read).mean(1), 44100, RATE)
    assert torch.allclose(
        model.encode_file(tmp_path / "stereo.wav"), model.encode_waveforms([expected])[0], atol=1e-6
    )
    mono = _tone(2.0, 440, seed=6)
    soundfile.write(tmp_path / "clip.flac", mono.numpy(), RATE)
    soundfile.write(tmp_path / "clip.mp3", mono.numpy(), RATE, format="MP3")
    flac = model.encode_file(tmp_path / "clip.flac")
    mp3 = model.encode_file(tmp_path / "clip.mp3")
    assert flac.shape == mp3.shape == (64,)
    assert torch.isfinite(mp3).all()
    assert float(flac @ mp3) > 0.9  # lossy, but the same sound
    assert model.load_audio(tmp_path / "clip.mp3").numel() == pytest.approx(2 * RATE, rel=0.05)


def test_bad_audio_raises_one_documented_error(model, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(AudioLoadError, match="notes.wav: cannot decode audio"):
        model.encode_file(text)
    with pytest.raises(AudioLoadError, match="missing.wav: file not found"):
        model.encode_file(tmp_path / "missing.wav")
    bad = _tone(1.0)
    bad[100] = float("nan")
    with pytest.raises(AudioLoadError, match="waveform 0: 1 of 16000 samples are NaN"):
        model.encode_audio_batch(bad)
    with pytest.raises(ValueError, match="relative lengths"):
        model.encode_audio_batch(torch.zeros(2, 1600), torch.tensor([1.0, 0.0]))


# -- long audio ----------
def test_window_rule():
    assert window_starts(75, 30, 30) == [0, 30, 45]
    assert window_starts(60, 30, 30) == [0, 30]
    assert window_starts(61, 30, 15) == [0, 15, 30, 31]
    assert window_starts(30, 30, 30) == [0]
    with pytest.raises(ValueError, match="window hop"):
        window_starts(75, 30, 31)


def test_windows_are_whole_patches(model):
    # 30 s -> 3001 frames -> 187 patches of 16 frames = 2992 frames = 478,560 samples.
    assert model.window == 478_560
    assert model.hop == model.window  # window_hop 30 s is capped at the window
    packed = model.mods.audio_encoder.patchify(
        model.mods.compute_features(torch.zeros(1, model.window))
    )
    assert packed.cu_seqlens[-1] == 187 * 4  # every frame of a window is in a patch


def test_long_audio_is_the_mean_of_its_windows(model):
    clip = torch.cat([_tone(25.0, 300, seed=7), _tone(25.0, 800, seed=8), _tone(25.0, 150, seed=9)])
    starts = window_starts(clip.numel(), model.window, model.hop)
    assert starts == [0, model.window, clip.numel() - model.window]
    parts = [clip[s : s + model.window] for s in starts]
    expected = _unit(model.encode_waveforms(parts).sum(0))
    long = model.encode_waveforms([clip])[0]
    assert torch.allclose(long, expected, atol=1e-5)
    # Nothing is dropped: changing only the last second, or 20 ms at the end of the
    # first window, changes the embedding.
    for start, stop in ((clip.numel() - RATE, clip.numel()), (model.window - 320, model.window)):
        changed = clip.clone()
        changed[start:stop] = torch.linspace(-0.9, 0.9, stop - start)
        assert not torch.allclose(model.encode_waveforms([changed])[0], long, atol=1e-4)
    # Alone or next to a short clip, the same.
    batch = model.encode_waveforms([_tone(1.0), clip])
    assert torch.allclose(batch[1], long, atol=1e-5)


def test_window_hop_is_configurable(slap_model_folder):
    overlapping = SLAP.from_hparams(source=str(slap_model_folder), overrides={"window_hop": 20.0})
    assert overlapping.hop == 20 * RATE
    clip = torch.cat([_tone(40.0, 300, seed=11), _tone(10.0, 900, seed=12)])
    starts = window_starts(clip.numel(), overlapping.window, overlapping.hop)
    assert starts == [0, 20 * RATE, clip.numel() - overlapping.window]
    parts = [clip[s : s + overlapping.window] for s in starts]
    expected = _unit(overlapping.encode_waveforms(parts).sum(0))
    assert torch.allclose(overlapping.encode_waveforms([clip])[0], expected, atol=1e-5)
    # Overlapping windows: each time step once, no gap between windows.
    _, times, _ = overlapping.frame_embeddings(clip)
    steps = times[0]
    assert bool((steps[1:] > steps[:-1]).all())
    assert float((steps[1:] - steps[:-1]).max()) <= 0.16 + 1e-4  # float32 times


# -- text, classification, retrieval ----------
def test_text_embeddings(model):
    texts = ["a dog barks", "rain falls on a roof"]
    emb = model.encode_text(texts)
    with torch.no_grad():
        expected = _unit(model.mods.text_encoder(texts))
    assert emb.shape == (2, 64)
    assert torch.allclose(emb, expected, atol=1e-6)
    assert torch.allclose(model.encode_text("a dog barks")[0], emb[0], atol=1e-6)
    with pytest.raises(ValueError, match="text 1 must be a non-empty string"):
        model.encode_text(["fine", "   "])


def test_classify_batch_and_prompt_ensemble(model, tmp_path):
    labels = ["dog_bark", "rain", "siren"]
    clips = [_tone(1.0, 300, seed=13), _tone(2.0, 900, seed=14)]
    wavs, wav_lens = pad_waveforms(clips)
    scores, best, index, names = model.classify_batch(wavs, wav_lens, labels=labels)
    audio = model.encode_audio_batch(wavs, wav_lens)
    classes = model.encode_text([f"This is a sound of {c.replace('_', ' ')}." for c in labels])
    scale = float(model.mods.clap_loss.scale)
    expected = torch.log_softmax(scale * audio @ classes.T, dim=-1)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert torch.equal(index, expected.argmax(-1))
    assert torch.allclose(best, expected.max(-1).values)
    assert names == [labels[i] for i in index.tolist()]

    templates = ["This is a sound of {label}.", "{label} can be heard"]
    ensemble = model.label_embeddings(labels, templates)
    per_template = [model.encode_text([t.format(label=c.replace("_", " ")) for c in labels])
                    for t in templates]  # fmt: skip
    assert torch.allclose(ensemble, _unit(per_template[0] + per_template[1]), atol=1e-6)

    soundfile.write(tmp_path / "a.wav", clips[1].numpy(), RATE, subtype="FLOAT")
    file_scores, *_, file_names = model.classify_file(tmp_path / "a.wav", labels, templates)
    batch_scores, *_ = model.classify_batch(clips[1], labels=labels, templates=templates)
    assert torch.allclose(file_scores, batch_scores, atol=1e-5)
    with pytest.raises(ValueError, match="no {label} field"):
        model.label_embeddings(labels, "a sound")


def test_retrieve_both_directions(model):
    clips = [_tone(1.0 + i, 200 * (i + 1), seed=20 + i) for i in range(4)]
    gallery = model.encode_waveforms(clips)
    texts = ["a low hum", "a high whistle"]
    scores, indices = model.retrieve(texts, gallery, k=3)
    similarity = model.encode_text(texts) @ gallery.T
    assert indices.shape == (2, 3)
    assert torch.equal(indices[:, 0], similarity.argmax(-1))
    assert torch.allclose(scores, similarity.sort(-1, descending=True).values[:, :3], atol=1e-6)
    a2t_scores, a2t_indices = model.retrieve(gallery, texts, k=5)  # k capped at the gallery
    assert a2t_indices.shape == (4, 2)
    assert torch.equal(a2t_indices[:, 0], similarity.T.argmax(-1))


# -- captions and frames ----------
def test_captions(model, tmp_path):
    clips = [_tone(1.5, 300, seed=30), _tone(3.0, 700, seed=31)]
    wavs, wav_lens = pad_waveforms(clips)
    captions = model.caption_batch(wavs, wav_lens, beam_size=2, max_length=8)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert model.caption_batch(clips[1], beam_size=2, max_length=8) == captions[1:]
    soundfile.write(tmp_path / "c.wav", clips[0].numpy(), RATE, subtype="FLOAT")
    assert model.caption_file(tmp_path / "c.wav", beam_size=2, max_length=8) == captions[0]
    # beam_size=1 is the decoder's greedy search.
    with torch.no_grad():
        tokens = model.mods.audio_encoder(model.mods.compute_features(wavs), wav_lens)
        mask = tokens.abs().sum(-1) > 0
        greedy = model.mods.caption_decoder.greedy_decode(tokens, mask, max_length=8)
    from speechbrain_slap.lobes.caption_decoder import decode_ids

    expected = [decode_ids(model.hparams.tokenizer, ids) for ids in greedy]
    assert model.caption_batch(wavs, wav_lens, beam_size=1, max_length=8) == expected


def test_captions_of_long_audio_place_each_window_at_its_time(model):
    """With memory_time_positions, a long clip's memory is the tokens of all its windows,
    each at its time step in the clip (window start + step in the window)."""
    from speechbrain_slap.lobes.caption_decoder import caption_prompt_ids, decode_ids

    clip = torch.cat([_tone(25.0, 300, seed=50), _tone(12.0, 800, seed=51)])
    starts = window_starts(clip.numel(), model.window, model.hop)
    assert len(starts) == 2
    decoder = model.mods.caption_decoder
    decoder.memory_time_positions = True
    try:
        caption = model.caption_waveforms([clip], beam_size=1, max_length=8)[0]
        tokens, steps, local = [], [], []
        with torch.no_grad():
            for start in starts:
                part = clip[start : start + model.window][None]
                packed = model.mods.audio_encoder.patchify(model.mods.compute_features(part))
                tokens.append(model.mods.audio_encoder(packed))
                local.append(packed.pos_t.float())
                steps.append(local[-1] + start / (0.16 * RATE))
        memory = torch.cat(tokens)[None]
        mask = torch.ones(memory.shape[:2], dtype=torch.bool)
        greedy = decoder.greedy_decode(
            memory, mask, max_length=8, time_index=torch.cat(steps)[None]
        )
        assert caption == decode_ids(model.hparams.tokenizer, greedy[0])
        # The offsets matter: every window placed at time 0 reads differently.
        ids = caption_prompt_ids(model.hparams.tokenizer, ["a low hum"])
        at_time = decoder.prefix_log_likelihoods(memory, mask, ids, torch.cat(steps)[None])
        at_zero = decoder.prefix_log_likelihoods(memory, mask, ids, torch.cat(local)[None])
        assert abs(float(at_time - at_zero)) > 1e-4
    finally:
        decoder.memory_time_positions = False


def test_frame_embeddings_and_timestamps(model):
    clips = [_tone(2.0, 400, seed=40), _tone(0.9, 600, seed=41)]
    wavs, wav_lens = pad_waveforms(clips)
    frames, times, frame_lens = model.frame_embeddings(wavs, wav_lens)
    # 2.0 s -> 201 frames -> 12 time steps; 0.9 s -> 91 frames -> 5.
    assert frames.shape == (2, 12, 64)
    assert torch.allclose(frame_lens, torch.tensor([1.0, 5 / 12]))
    assert torch.allclose(times[0], 0.16 * torch.arange(12))
    assert bool(frames[1, 5:].eq(0).all())
    with torch.no_grad():
        packed = model.mods.audio_encoder.patchify(model.mods.compute_features(wavs), wav_lens)
        expected, _ = time_step_features(model.mods.audio_encoder(packed), packed)
    assert torch.allclose(frames, expected, atol=1e-6)


def test_frame_embeddings_of_long_audio_cover_it_once(model):
    clip = _tone(75.0, 300, seed=42)
    frames, times, _ = model.frame_embeddings(clip)
    steps = times[0]
    assert bool((steps[1:] > steps[:-1]).all())
    assert float(steps[-1]) == pytest.approx(75.0 - 0.16, abs=0.17)
    assert frames.shape[1] == steps.numel() >= 75 / 0.16 - 2
    # The first window's steps come first.
    first, _, _ = model.frame_embeddings(clip[: model.window])
    assert torch.allclose(frames[0, : first.shape[1]], first[0], atol=1e-5)


def test_numpy_inputs_are_accepted(model):
    clip = _tone(1.0)
    assert torch.allclose(
        model.encode_waveforms([clip.numpy().astype(np.float64)]),
        model.encode_waveforms([clip]),
        atol=1e-6,
    )


def test_yaml_outside_the_allow_list_needs_trust(slap_model_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    with open(folder / "hyperparams.yaml", "a") as fout:
        fout.write("\nworking_directory: !apply:os.getcwd []\n")
    write_checksums(folder)
    with pytest.raises(ModelFolderError, match=r"outside the allow-list: \['!apply:os.getcwd'\]"):
        SLAP.from_hparams(source=str(folder))
    trusted = SLAP.from_hparams(source=str(folder), trust_remote_code=True)
    assert trusted.hparams.working_directory == os.getcwd()


def test_tags_on_keys_need_trust_even_with_sums_updated(slap_model_folder, tmp_path):
    # The probe's attack: a tag on a mapping key, the sums rewritten to match.
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    with open(folder / "hyperparams.yaml", "a") as fout:
        fout.write("\nextra:\n  !apply:os.getpid : 1\n")
    write_checksums(folder)
    with pytest.raises(ModelFolderError, match=r"!apply:os.getpid \(on a mapping key\)"):
        SLAP.from_hparams(source=str(folder))
    trusted = SLAP.from_hparams(source=str(folder), trust_remote_code=True)
    assert trusted.hparams.extra == {os.getpid(): 1}


def test_sums_must_cover_the_yaml_and_every_file(slap_model_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    weights = [n for n in verify_checksums(folder) if n != "hyperparams.yaml"]
    write_checksums(folder, weights)  # the yaml left out
    with pytest.raises(ModelFolderError, match="does not list hyperparams.yaml"):
        SLAP.from_hparams(source=str(folder))
    write_checksums(folder, [*weights, "hyperparams.yaml"])
    (folder / "extra_config.json").write_text("{}")
    unlisted = r"not listed in SHA256SUMS: \['extra_config.json'\]"
    with pytest.raises(ModelFolderError, match=unlisted):
        SLAP.from_hparams(source=str(folder))
    (folder / "extra_config.json").unlink()
    (folder / ".gitattributes").write_text("*.ckpt filter=lfs\n")  # a hub repository's
    assert SLAP.from_hparams(source=str(folder)).encode_text("rain").shape == (1, 64)


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        # An allowed module that imports os, and an allowed package reached back to torch.
        ("cwd: !apply:speechbrain_slap.lobes.text_encoder.os.getcwd []", "text_encoder.os"),
        ("ones: !apply:torch.nn.modules.module.torch.ones [2]", "module.torch.ones"),
        ("cwd: !!python/object/apply:os.getcwd []", "python/object/apply:os.getcwd"),
        ("other: !include:other.yaml", "!include:other.yaml"),
        ("os_module: !module:os", "!module:os"),
    ],
)
def test_allow_list_cannot_be_bypassed(slap_model_folder, tmp_path, line, flagged):
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    with open(folder / "hyperparams.yaml", "a") as fout:
        fout.write(f"\n{line}\n")
    with pytest.raises(ModelFolderError, match="outside the allow-list") as error:
        SLAP.from_hparams(source=str(folder))
    assert flagged in str(error.value)


def test_pretrainer_paths_outside_the_sums_are_refused(slap_model_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    text = (folder / "hyperparams.yaml").read_text()
    text += "\n"  # the pretrainer is the last entry
    paths = "    paths:\n        audio_encoder: /elsewhere/x.ckpt\n"
    text = text.replace(
        "        tokenizer: !ref <tokenizer>\n", f"        tokenizer: !ref <tokenizer>\n{paths}"
    )
    (folder / "hyperparams.yaml").write_text(text)
    with pytest.raises(ModelFolderError, match="pretrainer paths: audio_encoder"):
        SLAP.from_hparams(source=str(folder))


def test_changed_yaml_is_caught_by_the_sums(slap_model_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    assert "hyperparams.yaml" in verify_checksums(folder)
    with open(folder / "hyperparams.yaml", "a") as fout:
        fout.write("\n# edited\n")
    with pytest.raises(ModelFolderError, match=r"hyperparams.yaml: SHA-256 mismatch"):
        SLAP.from_hparams(source=str(folder))


def test_export_overwrite_replaces_every_file(recipe_output, slap_model_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    (folder / "old_extra.ckpt").write_bytes(b"from an earlier export")
    (folder / "text_encoder" / "vocab.txt").write_text("an earlier text encoder's file")
    export_model(recipe_output, folder, overwrite=True)
    assert not (folder / "old_extra.ckpt").exists()
    assert not (folder / "text_encoder" / "vocab.txt").exists()
    SLAP.from_hparams(source=str(folder))


def test_unlisted_weight_files_are_refused(slap_model_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    (folder / "SHA256SUMS").write_text(
        "".join(line + "\n" for line in sums if "audio_encoder" not in line)
    )
    with pytest.raises(
        ModelFolderError, match=r"not listed in SHA256SUMS: \['audio_encoder.ckpt'\]"
    ):
        SLAP.from_hparams(source=str(folder))


class _Payload:
    """An object whose unpickling would call a function (here a harmless one)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_weights_that_unpickle_objects_are_refused(slap_model_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(slap_model_folder, folder)
    state = torch.load(folder / "audio_pooling.ckpt", weights_only=True)
    state["payload"] = _Payload()
    torch.save(state, folder / "audio_pooling.ckpt")
    write_checksums(folder)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        SLAP.from_hparams(source=str(folder))


def test_onset_embeddings_pool_each_clips_onset_window(model):
    """Each clip's onset window pooled by the MAP head, as ``lobes/onset.py`` places it on
    the clip's own tokens; its start in seconds; a burst after silence is found."""
    from speechbrain_slap.lobes.onset import onset_steps, onset_windows

    quiet = [0.001 * _tone(3.0, 300, seed=s) for s in (50, 51)]
    quiet[0][16000:20000] += _tone(0.25, 500, seed=52)  # a burst at 1.0 s
    quiet[1][8000:12000] += _tone(0.25, 700, seed=53)  # at 0.5 s, in a shorter clip
    clips = [quiet[0], quiet[1][:32000]]
    wavs, wav_lens = pad_waveforms(clips)
    embeddings, seconds = model.onset_embeddings(wavs, wav_lens)
    assert embeddings.shape == (2, 64)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2))
    for b, clip in enumerate(clips):
        with torch.no_grad():
            one, lens = pad_waveforms([clip])
            packed = model.mods.audio_encoder.patchify(model.mods.compute_features(one), lens)
            tokens = model.mods.audio_encoder(packed)
            window, cu_seqlens = onset_windows(tokens, packed, 0.25, 3)
            expected = _unit(model.mods.audio_pooling(window, cu_seqlens=cu_seqlens))
            step = int(onset_steps(tokens, packed, 0.25)[0])
        assert torch.allclose(embeddings[b], expected[0], atol=1e-5)
        assert float(seconds[b]) == pytest.approx(0.16 * step)
    assert seconds.tolist() == pytest.approx([0.96, 0.48])  # the steps holding 1.0 s and 0.5 s
    with pytest.raises(ValueError, match="onset_window_steps"):
        model.onset_embeddings(wavs, wav_lens, window_steps=0)
