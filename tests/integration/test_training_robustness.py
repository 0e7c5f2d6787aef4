"""Training on bad data and through non-finite losses: skip, count, name, go on.

``SLAPBrain`` is built in process from ``pretrain_tiny_synth.yaml`` (conftest's
``make_brain``: tiny corpus, tiny model, CPU).

* A manifest with hostile rows (no ID, a duplicate ID, missing, non-numeric,
  NaN, infinite, negative and zero durations, no wav, empty and whitespace
  captions, bytes that are not UTF-8, too few and too many fields, a field over
  the CSV size limit) and hostile audio files (missing, empty, text named
  ``.wav``, a truncated FLAC, NaN and Inf samples): the rows are left out and
  listed with their reasons in ``<output_folder>/train_rejected.csv``; one
  epoch of ``fit`` trains on every other clip, names each unusable file in the
  log and counts them in the epoch summary of ``train_log.txt`` (an unusable
  valid clip too). Inputs that are odd but usable (silence, one sample, a
  truncated WAV, 8 / 44.1 / 48 kHz, 6 channels, float samples, a 10-minute
  clip, a 10,000-character caption, a caption with ``$5``) are trained on.
* A batch with no usable item skips its step on one process and is an error
  under DDP.
* A forced NaN loss, or a NaN gradient with a finite loss, skips its optimizer
  step (also when it is one micro-batch of an accumulated step): weights, EMA
  teacher, optimizer and schedule are untouched and the gradients dropped;
  under DDP (2 gloo ranks) a NaN on one rank makes both skip; N skipped steps
  in a row stop the run with ``NonFiniteLossError``, and the newest checkpoint
  loads with finite weights equal to those before the streak.
"""

import csv
import logging
import math
import os
import types

import numpy as np
import pytest
import soundfile
import speechbrain as sb
import torch

from speechbrain_slap.brain import NonFiniteLossError, SLAPBrain
from speechbrain_slap.data.pipelines import UnusableItem, collate_usable, loader_kwargs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 16000
LONG_CAPTION = ("A dog barks and a bell rings. " * 400)[:10_000]
HEADER = b"ID,duration,wav,captions\n"

# Manifest rows left out before training: (raw CSV line, ID in the report, reason).
BAD_ROWS = [
    (b",1.0,$data_root/zeros.wav,A caption.", "", "missing ID"),
    (b"dup,1.0,$data_root/zeros.wav,A caption.", "dup", None),  # the first is kept
    (b"dup,1.0,$data_root/zeros.wav,Again.", "dup", "duplicate ID (first on line"),
    (b"no_duration,,$data_root/zeros.wav,A caption.", "no_duration", "missing duration"),
    (b"text_duration,abc,$data_root/zeros.wav,A caption.", "text_duration", "non-numeric"),
    (b"nan_duration,nan,$data_root/zeros.wav,A caption.", "nan_duration", "non-finite"),
    (b"inf_duration,inf,$data_root/zeros.wav,A caption.", "inf_duration", "non-finite"),
    (b"negative,-1.0,$data_root/zeros.wav,A caption.", "negative", "non-positive"),
    (b"zero,0,$data_root/zeros.wav,A caption.", "zero", "non-positive"),
    (b"no_wav,1.0,,A caption.", "no_wav", "missing wav"),
    (b"empty_caption,1.0,$data_root/zeros.wav,", "empty_caption", "empty caption"),
    (b'blank_caption,1.0,$data_root/zeros.wav,"   "', "blank_caption", "empty caption"),
    (b'separator_only,1.0,$data_root/zeros.wav," | "', "separator_only", "empty caption"),
    (b"latin1,1.0,$data_root/zeros.wav,Caf\xe9 noise.", "latin1", "not UTF-8 in ['captions']"),
    (b"bad_id_\xff,1.0,$data_root/zeros.wav,A caption.", "bad_id_\\xff", "not UTF-8 in ['ID']"),
    (b"few_fields,1.0", "few_fields", "2 fields, expected 4"),
    (b"many_fields,1.0,$data_root/zeros.wav,A dog, a cat.", "many_fields", "5 fields"),
    (b"huge,1.0,$data_root/zeros.wav," + b"x" * 140_000, "", "unreadable CSV row"),
]


def _tone(seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * math.pi * 440.0 * t).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def _write_audio(folder):
    """Hostile audio files; returns ``(unusable {ID: reason}, usable IDs)``."""
    soundfile.write(folder / "zeros.wav", np.zeros(RATE, np.float32), RATE, subtype="PCM_16")
    soundfile.write(folder / "one_sample.wav", np.full(1, 0.1, np.float32), RATE)
    soundfile.write(folder / "rate8k.wav", _tone(1.0, 8000), 8000)
    soundfile.write(folder / "rate44k.wav", _tone(1.0, 44100), 44100)
    soundfile.write(folder / "rate48k.flac", _tone(1.0, 48000), 48000)
    soundfile.write(folder / "six_channels.wav", _tone(1.0, RATE, 6), RATE)
    soundfile.write(folder / "float.wav", _tone(1.0, RATE), RATE, subtype="FLOAT")
    soundfile.write(folder / "ten_minutes.wav", _tone(600.0, 8000), 8000, subtype="PCM_16")
    soundfile.write(folder / "full.wav", _tone(2.0, RATE), RATE, subtype="PCM_16")
    data = (folder / "full.wav").read_bytes()
    (folder / "cut.wav").write_bytes(data[: len(data) // 2])  # libsndfile reads what is there
    soundfile.write(folder / "full.flac", _tone(2.0, RATE), RATE)
    data = (folder / "full.flac").read_bytes()
    (folder / "cut.flac").write_bytes(data[: len(data) // 2])
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_bytes(b"this is a text file, not audio\n" * 20)
    nan = _tone(1.0, RATE)
    nan[100] = np.nan
    soundfile.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    inf = _tone(1.0, RATE)
    inf[-1] = np.inf
    soundfile.write(folder / "inf.wav", inf, RATE, subtype="FLOAT")
    unusable = {
        "missing": "file not found",
        "empty": "cannot decode audio",
        "text": "cannot decode audio",
        "cut_flac": "cannot decode audio",
        "nan": "samples are NaN or infinite",
        "inf": "samples are NaN or infinite",
    }
    usable = ["zeros", "one_sample", "rate8k", "rate44k", "rate48k", "six_channels", "float"]
    usable += ["ten_minutes", "cut_wav", "long_caption", "dollar", "dup"]
    return unusable, usable


@pytest.fixture
def hostile_manifests(tiny_corpus, tmp_path):
    """Train and valid manifests of the tiny corpus plus hostile rows and files.

    ``data_folder`` for all three manifests; the test manifest is the tiny
    corpus's. Returns ``(folder, train_csv, bad_rows, unusable, usable, good)``.
    """
    folder = tmp_path / "hostile"
    folder.mkdir()
    unusable, usable = _write_audio(folder)
    files = {
        "zeros": "zeros.wav",
        "one_sample": "one_sample.wav",
        "rate8k": "rate8k.wav",
        "rate44k": "rate44k.wav",
        "rate48k": "rate48k.flac",
        "six_channels": "six_channels.wav",
        "float": "float.wav",
        "ten_minutes": "ten_minutes.wav",
        "cut_wav": "cut.wav",
        "missing": "missing.wav",
        "empty": "empty.wav",
        "text": "text.wav",
        "cut_flac": "cut.flac",
        "nan": "nan.wav",
        "inf": "inf.wav",
    }
    lines = [HEADER.rstrip()]
    with open(tiny_corpus / "train.csv", newline="") as fin:
        good = list(csv.DictReader(fin))
    for row in good:  # the clean clips, by absolute path
        wav = row["wav"].replace("$data_root", str(tiny_corpus))
        lines.append(f'{row["ID"]},{row["duration"]},{wav},"{row["captions"]}"'.encode())
    for clip_id, name in files.items():
        duration = 600.0 if clip_id == "ten_minutes" else 1.0
        lines.append(f"{clip_id},{duration},$data_root/{name},A tone sounds.".encode())
    lines.append(f"long_caption,1.0,$data_root/zeros.wav,{LONG_CAPTION}".encode())
    lines.append(b"dollar,1.0,$data_root/zeros.wav,Coins worth $5 drop.")
    lines += [raw for raw, *_ in BAD_ROWS]
    train_csv = folder / "train.csv"
    train_csv.write_bytes(b"\n".join(lines) + b"\n")
    first = len(lines) - len(BAD_ROWS) + 1  # the CSV line of BAD_ROWS[0] (header: line 1)
    bad_rows = [(first + i, c, reason) for i, (_, c, reason) in enumerate(BAD_ROWS) if reason]

    for split in ("valid", "test"):  # the clean clips, by absolute path
        text = (tiny_corpus / f"{split}.csv").read_text().replace("$data_root", str(tiny_corpus))
        (folder / f"{split}.csv").write_text(text)
    with open(folder / "valid.csv", "a") as fout:
        # The corpus's columns (ID, duration, wav, caption, captions, sound_type, ...).
        columns = (tiny_corpus / "valid.csv").read_text().splitlines()[0].split(",")
        extra = [""] * (len(columns) - 7)
        fout.write(
            ",".join(["valid_missing,1.0,/no/such/clip.wav,A caption.,A caption.,dog,dog"] + extra)
            + "\n"
        )
    return folder, train_csv, bad_rows, unusable, usable, [r["ID"] for r in good]


def test_hostile_rows_and_files_are_skipped_counted_and_named(
    make_brain, hostile_manifests, caplog
):
    folder, train_csv, bad_rows, unusable, usable, good = hostile_manifests
    output = folder / "out"
    with caplog.at_level(logging.WARNING):
        brain, hparams, datasets = make_brain(
            output_folder=output,
            data_folder=str(folder),
            tokenizer_folder=str(folder / "tokenizer"),  # not the session's
            max_duration=8.0,
        )
    # Rows: left out, written with line and reason, counted in a warning.
    assert sorted(datasets["train"].data_ids) == sorted(good + list(unusable) + usable)
    with open(output / "train_rejected.csv", newline="", encoding="utf-8") as fin:
        rejected = list(csv.DictReader(fin))
    assert [(int(r["line"]), r["ID"]) for r in rejected] == [(line, i) for line, i, _ in bad_rows]
    for row, (_, _, reason) in zip(rejected, bad_rows, strict=True):
        assert reason in row["reason"], (row, reason)
    assert f"{len(bad_rows)} of " in caplog.text and "train_rejected.csv" in caplog.text
    assert not (output / "test_rejected.csv").exists()
    train = datasets["train"]
    long_item = train[train.data_ids.index("long_caption")]
    assert long_item["caption"] == LONG_CAPTION.strip()
    assert long_item["tokens_in"].shape == (hparams["max_caption_tokens"],)
    assert train[train.data_ids.index("dollar")]["caption"] == "Coins worth $5 drop."

    # Audio: one epoch of fit; every usable clip is trained on, the others named and counted.
    trained = []
    compute_forward = brain.compute_forward

    def recording_forward(batch, stage):
        if stage == sb.Stage.TRAIN:
            trained.extend(batch.id)
        return compute_forward(batch, stage)

    brain.compute_forward = recording_forward
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        brain.fit(
            hparams["epoch_counter"],
            datasets["train"],
            datasets["valid"],
            train_loader_kwargs=loader_kwargs(datasets["train"], hparams, train=True),
            valid_loader_kwargs=loader_kwargs(datasets["valid"], hparams, train=False),
        )
    assert sorted(trained) == sorted(good + usable)
    for clip_id, reason in unusable.items():
        (message,) = [m for m in caplog.messages if m.startswith(f"skipped item {clip_id}:")]
        assert reason in message, message
    assert "skipped item valid_missing: file not found" in caplog.text
    log = (output / "train_log.txt").read_text()
    assert f"train skipped_items: {len(unusable)}," in log
    assert "train empty_batches: 0" in log and "train nonfinite_steps: 0" in log
    assert "valid skipped_items: 1" in log
    assert brain.optimizer_step > 0
    assert all(torch.isfinite(p).all() for p in brain.modules.parameters())


def test_long_caption_is_truncated_for_the_decoder_and_the_text_encoder(make_brain):
    brain, hparams, _ = make_brain()
    encoder = hparams["text_encoder"]
    tokens = encoder.tokenize([LONG_CAPTION, "A dog barks."])
    assert tokens["input_ids"].shape[1] == encoder.max_length
    assert torch.isfinite(encoder([LONG_CAPTION])).all()


def test_batch_without_a_usable_item_skips_its_step(make_brain, make_batch, train_step):
    brain, hparams, datasets = make_brain()
    brain.on_fit_start()
    train_step(brain, make_batch(datasets["train"]))
    params = [p.detach().clone() for p in brain.modules.parameters()]
    lr_steps = hparams["lr_schedule"].step
    empty = collate_usable([{"id": "a", "sig": UnusableItem("file not found")}])
    loss = train_step(brain, empty)
    assert math.isnan(float(loss))
    assert brain.optimizer_step == 1 and int(hparams["teacher"].step) == 1
    assert hparams["lr_schedule"].step == lr_steps
    assert all(torch.equal(a, b) for a, b in zip(params, brain.modules.parameters(), strict=True))
    assert brain.empty_batches == 1 and brain.skipped_items == ["a"]
    train_step(brain, make_batch(datasets["train"]))
    assert brain.optimizer_step == 2


def test_batch_without_a_usable_item_is_an_error_under_ddp(make_brain, train_step, monkeypatch):
    brain, _, _ = make_brain()
    brain.on_fit_start()
    monkeypatch.setattr(sb.utils.distributed, "is_distributed_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    empty = collate_usable([{"id": "a", "sig": UnusableItem("file not found")}])
    with pytest.raises(RuntimeError, match="rank 1: no item .* Under DDP every rank"):
        train_step(brain, empty)


def _nan_on_calls(brain, calls):
    """Makes ``compute_objectives`` return NaN (with a graph) on the given 1-based calls."""
    compute_objectives = brain.compute_objectives
    count = {"n": 0}

    def objectives(predictions, batch, stage):
        loss = compute_objectives(predictions, batch, stage)
        if stage == sb.Stage.TRAIN:
            count["n"] += 1
            if count["n"] in calls:
                return loss * float("nan")
        return loss

    brain.compute_objectives = objectives


def _snapshot(brain, hparams):
    return {
        "params": [p.detach().clone() for p in brain.modules.parameters()],
        "adam": {k: v.clone() for k, v in brain.optimizer.state_dict()["state"][0].items()},
        "teacher_step": int(hparams["teacher"].step),
        "lr_step": hparams["lr_schedule"].step,
        "optimizer_step": brain.optimizer_step,
    }


def _same(before, after):
    return (
        all(torch.equal(a, b) for a, b in zip(before["params"], after["params"], strict=True))
        and all(torch.equal(before["adam"][k], after["adam"][k]) for k in before["adam"])
        and {k: before[k] for k in ("teacher_step", "lr_step", "optimizer_step")}
        == {k: after[k] for k in ("teacher_step", "lr_step", "optimizer_step")}
    )


def test_nan_loss_skips_its_step(make_brain, make_batch, train_step, caplog):
    """Steps 2 and 3 have a NaN loss: nothing changes; steps 1 and 4 train."""
    brain, hparams, datasets = make_brain()
    _nan_on_calls(brain, {2, 3})
    batch = make_batch(datasets["train"])
    brain.on_fit_start()
    train_step(brain, batch)
    after_first = _snapshot(brain, hparams)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            loss = train_step(brain, batch)
            assert math.isnan(float(loss))
            assert all(p.grad is None for p in brain.modules.parameters())
    assert _same(after_first, _snapshot(brain, hparams))
    assert brain.nonfinite_steps == 2 and brain.nonfinite_in_row == 2
    assert "optimizer step 2 skipped: non-finite loss" in caplog.text
    assert len(brain.step_log) == 1  # the skipped steps stay out of the loss averages
    train_step(brain, batch)
    assert brain.optimizer_step == 2 and int(hparams["teacher"].step) == 2
    assert brain.nonfinite_in_row == 0 and brain.nonfinite_steps == 2
    assert not _same(after_first, _snapshot(brain, hparams))


def test_nan_micro_batch_skips_the_whole_accumulated_step(make_brain, make_batch, train_step):
    """grad_accumulation_factor 2, NaN in the first micro-batch: the step is skipped."""
    brain, hparams, datasets = make_brain(grad_accumulation_factor=2)
    _nan_on_calls(brain, {3})
    batches = [make_batch(datasets["train"], i) for i in ((1, 6), (9, 11))]
    brain.on_fit_start()
    for batch in batches:
        train_step(brain, batch)
    before = _snapshot(brain, hparams)
    for batch in batches:  # NaN, then a good micro-batch that ends the step
        train_step(brain, batch)
    assert all(p.grad is None for p in brain.modules.parameters())
    assert _same(before, _snapshot(brain, hparams))
    assert brain.nonfinite_steps == 1
    for batch in batches:
        train_step(brain, batch)
    assert brain.optimizer_step == 2


def test_nonfinite_steps_in_a_row_stop_the_run_and_keep_a_good_checkpoint(make_brain, tmp_path):
    """From optimizer step 3 every loss is NaN; the third skipped step in a row stops fit."""
    output = tmp_path / "nan_run"
    brain, hparams, datasets = make_brain(
        output_folder=output, max_nonfinite_steps_in_row=3, batch_seconds=5
    )
    brain.ckpt_interval_steps = 1  # a checkpoint after every step, during the streak too
    _nan_on_calls(brain, set(range(3, 100)))
    kwargs = loader_kwargs(datasets["train"], hparams, train=True)
    assert len(kwargs["batch_sampler"]) >= 5
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row") as error:
        brain.fit(hparams["epoch_counter"], datasets["train"], train_loader_kwargs=kwargs)
    assert "max_nonfinite_steps_in_row: 3" in str(error.value)
    assert brain.optimizer_step == 2
    good = {k: v.detach().clone() for k, v in hparams["audio_encoder"].state_dict().items()}
    teacher = {k: v.detach().clone() for k, v in hparams["teacher"].state_dict().items()}

    fresh, fresh_hparams, _ = make_brain(output_folder=output)
    fresh.on_fit_start()  # recovers the newest checkpoint
    assert fresh.optimizer_step == 2
    for name, value in fresh_hparams["audio_encoder"].state_dict().items():
        assert torch.isfinite(value).all() and torch.equal(value, good[name]), name
    for name, value in fresh_hparams["teacher"].state_dict().items():
        assert torch.equal(value, teacher[name]), name


def test_nan_gradient_with_a_finite_loss_skips_its_step(make_brain, make_batch, train_step):
    brain, hparams, datasets = make_brain()
    batch = make_batch(datasets["train"])
    brain.on_fit_start()
    train_step(brain, batch)
    before = _snapshot(brain, hparams)
    hook = hparams["audio_pooling"].probe.register_hook(lambda grad: grad * float("nan"))
    loss = train_step(brain, batch)
    hook.remove()
    assert math.isfinite(float(loss))
    assert not math.isfinite(brain.grad_norm)
    assert _same(before, _snapshot(brain, hparams))
    assert brain.nonfinite_steps == 1


def _skip_reason_rank(rank, folder, results):
    # SpeechBrain finds the rank in the environment, as torchrun sets it.
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2
    )
    # Only rank 0 saw a NaN loss; the gradients are finite everywhere.
    state = types.SimpleNamespace(
        _empty_in_step=False,
        _nonfinite_loss=rank == 0,
        scaler=torch.GradScaler("cpu", enabled=False),
        grad_norm=1.0,
        device="cpu",
    )
    reason = SLAPBrain._skip_reason(state)
    (results / f"rank{rank}.txt").write_text(str(reason))
    torch.distributed.destroy_process_group()


def test_ranks_agree_to_skip_a_step_that_one_of_them_found_non_finite(tmp_path):
    """2 gloo ranks: rank 0's NaN loss makes rank 1 skip the step too."""
    results = tmp_path / "results"
    results.mkdir()
    torch.multiprocessing.spawn(_skip_reason_rank, args=(tmp_path, results), nprocs=2)
    reasons = [(results / f"rank{r}.txt").read_text() for r in range(2)]
    assert reasons == ["non-finite loss", "non-finite loss or gradient on another rank"]


def test_manifest_column_named_like_a_pipeline_output_is_dropped(tmp_path, caplog):
    from speechbrain_slap.data.pipelines import dataio_prepare
    from speechbrain_slap.lobes.caption_decoder import decode_ids, train_caption_tokenizer

    soundfile.write(tmp_path / "a.wav", np.zeros(RATE // 2, np.float32), RATE)
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.csv").write_text(
            "ID,duration,wav,captions,caption\na,0.5,$data_root/a.wav,alpha | beta | gamma,alpha\n"
        )
    (tmp_path / "caps.csv").write_text("id,caption\n0,alpha\n1,beta\n2,gamma\n")
    tokenizer = train_caption_tokenizer(tmp_path / "caps.csv", tmp_path / "tok", model_type="char")
    hparams = {
        "train_csv": tmp_path / "train.csv",
        "valid_csv": tmp_path / "valid.csv",
        "test_csv": tmp_path / "test.csv",
        "data_folder": tmp_path,
        "output_folder": tmp_path,
        "sample_rate": RATE,
        "max_duration": 10.0,
        "max_caption_tokens": 16,
    }
    with caplog.at_level(logging.WARNING):
        datasets = dataio_prepare(hparams, tokenizer)
    assert "['caption']" in caplog.text
    seen = set()
    for _ in range(40):
        item = datasets["train"][0]
        assert item["caption"] == decode_ids(tokenizer.sp, item["tokens_out"].tolist())
        seen.add(item["caption"])
    assert seen == {"alpha", "beta", "gamma"}
    assert datasets["valid"][0]["caption"] == "alpha"
