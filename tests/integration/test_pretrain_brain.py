"""``SLAPBrain`` driven step by step on the tiny generated corpus (CPU, fp32).

Each test builds the Brain from ``recipes/pretrain/hparams/pretrain_tiny_synth.yaml``
(small model, frozen MiniLM text encoder) and calls ``fit_batch`` on fixed
batches, incrementing ``brain.step`` first as ``Brain.fit`` does.
"""

import math
import random
import types

import pytest
import speechbrain as sb
import torch

from speechbrain_slap.data.manifest import split_captions
from speechbrain_slap.lobes.caption_decoder import decode_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL_WEIGHTS = {"clap": 1.0, "ssl": 1.0, "cap": 0.5}


def _mean(values):
    return sum(values) / len(values)


def _grad_norm(params):
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


def _teacher_params(hparams):
    return [p.detach().clone() for p in hparams["teacher"].parameters()]


def _forward(brain, batch):
    """TRAIN-stage forward and objectives, as ``fit_batch`` runs them (no step)."""
    brain.modules.train()
    predictions = brain.compute_forward(batch, sb.Stage.TRAIN)
    loss = brain.compute_objectives(predictions, batch, sb.Stage.TRAIN)
    return predictions, loss


def _count_calls(module):
    """Records ``(args, kwargs)`` of every forward call of ``module``."""
    calls = []
    module.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append((args, kwargs)), with_kwargs=True
    )
    return calls


def test_overfits_one_batch_with_all_three_losses(make_brain, make_batch, train_step):
    """40 steps on one fixed batch: all losses finite, CLAP and captioning fall clearly."""
    brain, hparams, datasets = make_brain(spec_augment=[], warmup_steps=5)
    batch = make_batch(datasets["train"])
    brain.on_fit_start()
    history = []
    for _ in range(40):
        loss = train_step(brain, batch)
        assert torch.isfinite(loss), f"step {brain.step}: loss {loss}"
        assert set(brain.loss_stats) == {"clap", "ssl", "cap"}
        assert all(math.isfinite(v) for v in brain.loss_stats.values()), brain.loss_stats
        history.append(dict(brain.loss_stats))
    assert brain.optimizer_step == 40
    assert int(hparams["teacher"].step) == 40
    for key in ("clap", "cap"):
        first = _mean([h[key] for h in history[:5]])
        last = _mean([h[key] for h in history[-5:]])
        assert last < 0.7 * first, f"{key} loss did not fall: {first:.3f} -> {last:.3f}"
    assert all(h["ssl"] > 0 for h in history)
    # Every step was logged for the training curves (log_interval 5 -> 8 lines).
    assert len(brain.step_log) == 40
    with open(f"{hparams['output_folder']}/train_steps.jsonl") as fin:
        assert len(fin.readlines()) == 8


def test_all_losses_on_runs_every_branch(make_brain, make_batch):
    """With every weight on, the teacher runs once and all three losses are reported."""
    brain, hparams, datasets = make_brain(loss_weights=ALL_WEIGHTS)
    batch = make_batch(datasets["train"])
    teacher_calls = _count_calls(hparams["teacher"]["audio_encoder"])
    predictions, loss = _forward(brain, batch)
    assert len(teacher_calls) == 1
    for key in ("audio_emb", "text_emb", "caption_logits", "student_logits", "teacher_logits"):
        assert key in predictions
    assert set(brain.loss_stats) == {"clap", "ssl", "cap"}
    expected = sum(ALL_WEIGHTS[k] * v for k, v in brain.loss_stats.items())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_ssl_weight_zero_never_runs_the_teacher(make_brain, make_batch, train_step):
    """ssl weight 0: no teacher forward, no SSL outputs, no 'ssl' in loss_stats."""
    brain, hparams, datasets = make_brain(loss_weights={"ssl": 0.0})
    batch = make_batch(datasets["train"])
    teacher_calls = _count_calls(hparams["teacher"]["audio_encoder"])
    head_calls = _count_calls(hparams["teacher"]["ssl_head"])
    student_head_calls = _count_calls(hparams["ssl_head"])
    predictions, loss = _forward(brain, batch)
    for key in ("student_logits", "teacher_logits", "masked_clip_id"):
        assert key not in predictions
    assert set(brain.loss_stats) == {"clap", "cap"}
    assert float(loss.detach()) == pytest.approx(
        brain.loss_stats["clap"] + 0.5 * brain.loss_stats["cap"], rel=1e-5
    )
    brain.on_fit_start()
    for _ in range(2):
        train_step(brain, batch)
        assert set(brain.loss_stats) == {"clap", "cap"}
    assert teacher_calls == [] and head_calls == [] and student_head_calls == []


@pytest.mark.parametrize(
    ("zero", "absent"),
    [("cap", ("caption_logits",)), ("clap", ("audio_emb", "text_emb"))],
)
def test_zero_weight_skips_its_branch(make_brain, make_batch, zero, absent):
    """cap (clap) weight 0: no caption logits (no embeddings), the other losses stay."""
    brain, hparams, datasets = make_brain(loss_weights={zero: 0.0})
    batch = make_batch(datasets["train"])
    skipped = {"cap": "caption_decoder", "clap": "text_encoder"}[zero]
    calls = _count_calls(hparams[skipped])
    predictions, loss = _forward(brain, batch)
    for key in absent:
        assert key not in predictions
    assert calls == []
    assert set(brain.loss_stats) == {"clap", "ssl", "cap"} - {zero}
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in hparams[skipped].parameters())


@pytest.mark.parametrize("ssl_view", ["dual", "shared"])
def test_ssl_views(make_brain, make_batch, train_step, ssl_view):
    """dual: one student pass over [unmasked ; masked] (2N tokens); shared: one masked pass."""
    brain, hparams, datasets = make_brain(ssl_view=ssl_view)
    batch = make_batch(datasets["train"])
    student_calls = _count_calls(hparams["audio_encoder"])
    brain.on_fit_start()
    for _ in range(2):
        loss = train_step(brain, batch)
        assert torch.isfinite(loss)
        assert set(brain.loss_stats) == {"clap", "ssl", "cap"}
        assert all(math.isfinite(v) for v in brain.loss_stats.values())
    n_tokens = brain.batch_tokens
    assert len(student_calls) == 2  # one student forward per step
    for (packed,), kwargs in student_calls:
        token_mask = kwargs["token_mask"]
        n_masked = int(token_mask.sum())
        assert 0 < n_masked < n_tokens
        if ssl_view == "dual":
            assert int(packed.cu_seqlens[-1]) == 2 * n_tokens
            assert not token_mask[:n_tokens].any()  # view 1 is unmasked
        else:
            assert int(packed.cu_seqlens[-1]) == n_tokens


@pytest.mark.parametrize(
    ("local_attention", "expected"), [(True, [False, False, True]), (False, [True] * 3)]
)
def test_local_attention_switch(make_brain, make_batch, train_step, local_attention, expected):
    """local_attention False makes every encoder block (student and teacher) global."""
    brain, hparams, datasets = make_brain(local_attention=local_attention)
    assert [b.is_global for b in hparams["audio_encoder"].blocks] == expected
    assert [b.is_global for b in hparams["teacher"]["audio_encoder"].blocks] == expected
    brain.on_fit_start()
    assert torch.isfinite(train_step(brain, make_batch(datasets["train"])))


def test_ema_updates_only_on_optimizer_steps(make_brain, make_batch, train_step):
    """grad_accumulation_factor=2: 4 fit_batch calls -> 2 EMA updates; teacher has no grad."""
    brain, hparams, datasets = make_brain(grad_accumulation_factor=2)
    assert brain.grad_accumulation_factor == 2
    teacher = hparams["teacher"]
    batches = [
        make_batch(datasets["train"], indices) for indices in ((1, 6), (9, 11), (0, 5), (7, 10))
    ]
    brain.on_fit_start()
    start = _teacher_params(hparams)
    history = []
    for batch in batches:
        train_step(brain, batch)
        history.append((brain.optimizer_step, int(teacher.step), _teacher_params(hparams)))
        assert all(p.grad is None for p in teacher.parameters())
    assert [h[:2] for h in history] == [(0, 0), (1, 1), (1, 1), (2, 2)]
    assert hparams["lr_schedule"].step == 2

    def changed(before, after):
        return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))

    assert not changed(start, history[0][2])  # accumulation micro-batch: teacher untouched
    assert changed(history[0][2], history[1][2])
    assert not changed(history[1][2], history[2][2])
    assert changed(history[2][2], history[3][2])
    assert all(not p.requires_grad for p in teacher.parameters())


def _two_groups(encoder):
    """``opt_class``: AdamW with the audio encoder in group 1 and the rest in group 2."""
    encoder_ids = {id(p) for p in encoder.parameters()}

    def opt_class(params):
        params = [p for p in params if p.requires_grad]
        return torch.optim.AdamW(
            [
                {"params": [p for p in params if id(p) in encoder_ids]},
                {"params": [p for p in params if id(p) not in encoder_ids]},
            ],
            lr=1e-3,
        )

    return opt_class


def _capture_grads_before_zero_grad(optimizer):
    """Records the grad norm of each parameter group (and all of them) at ``zero_grad``."""
    captured = []
    zero_grad = optimizer.zero_grad

    def capture(set_to_none=True):
        groups = [g["params"] for g in optimizer.param_groups]
        captured.append(
            {
                "groups": [_grad_norm(params) for params in groups],
                "total": _grad_norm([p for params in groups for p in params]),
            }
        )
        zero_grad(set_to_none=set_to_none)

    optimizer.zero_grad = capture
    return captured


def test_gradient_clipping_covers_all_parameter_groups(make_brain, make_batch, train_step):
    """With a 1e6-scaled loss the clipped norm over BOTH groups is <= max_grad_norm."""
    brain, hparams, datasets = make_brain()
    brain.opt_class = _two_groups(hparams["audio_encoder"])  # init_optimizers uses it
    batch = make_batch(datasets["train"])
    brain.on_fit_start()
    assert len(brain.optimizer.param_groups) == 2
    assert all(len(g["params"]) > 0 for g in brain.optimizer.param_groups)
    compute_objectives = brain.compute_objectives
    brain.compute_objectives = lambda *args: 1e6 * compute_objectives(*args)
    captured = _capture_grads_before_zero_grad(brain.optimizer)
    max_norm = brain.max_grad_norm

    train_step(brain, batch)
    assert len(captured) == 1
    slap = captured[0]
    assert brain.grad_norm > 1e3 * max_norm  # the pre-clipping norm was huge
    assert slap["total"] <= max_norm * (1 + 1e-4)
    assert slap["total"] == pytest.approx(max_norm, rel=1e-3)
    assert all(norm > 0 for norm in slap["groups"])

    # SpeechBrain's stock step clips only param_groups[0]: group 2 stays huge.
    brain.optimizers_step = types.MethodType(sb.Brain.optimizers_step, brain)
    train_step(brain, batch)
    stock = captured[1]
    assert stock["groups"][0] <= max_norm * (1 + 1e-4)
    assert stock["groups"][1] > 1e3 * max_norm
    assert stock["total"] > 1e3 * max_norm


def test_lr_scales_give_a_module_its_own_group_and_rate(make_brain, make_batch, train_step):
    """``lr_scales``: the decoder's parameters alone in group 2, at 3x the schedule's rate."""
    brain, hparams, datasets = make_brain(lr_scales={"caption_decoder": 3.0})
    batch = make_batch(datasets["train"])
    brain.on_fit_start()
    rest, decoder = brain.optimizer.param_groups
    decoder_ids = {id(p) for p in hparams["caption_decoder"].parameters()}
    assert {id(p) for p in decoder["params"]} == decoder_ids
    assert not decoder_ids & {id(p) for p in rest["params"]}
    assert len(rest["params"]) + len(decoder["params"]) == len(list(brain.modules.parameters()))
    assert decoder["lr_scale"] == 3.0 and "lr_scale" not in rest

    before = [p.detach().clone() for p in decoder["params"]]
    train_step(brain, batch)
    step1 = hparams["lr_schedule"].lr_at(1)
    assert step1 > 0
    assert rest["lr"] == pytest.approx(step1)
    assert decoder["lr"] == pytest.approx(3.0 * step1)
    assert any(not torch.equal(p, b) for p, b in zip(decoder["params"], before, strict=True))


@pytest.mark.parametrize(
    "scales, message",
    [
        ({"decoder": 2.0}, r"lr_scales names \['decoder'\]"),
        ({"caption_decoder": 0}, "positive"),
        ({"caption_decoder": "fast"}, "caption_decoder must be a positive number, got 'fast'"),
    ],
)
def test_lr_scales_reject_unknown_modules_and_bad_factors(make_brain, scales, message):
    brain, _, _ = make_brain(lr_scales=scales)
    with pytest.raises(ValueError, match=message):
        brain.on_fit_start()


def test_decoder_captions_train_the_decoder_on_several_captions_per_clip(
    make_brain, make_batch, recipe
):
    """decoder_captions=3: the training split gives (3, U) ids per clip, the CLAP caption
    first; the decoder reads each clip's memory three times; evaluation keeps one caption."""
    brain, hparams, datasets = make_brain(
        decoder_captions=3, spec_augment=[], max_caption_tokens=128
    )
    sp = recipe.prepare_tokenizer(hparams).sp
    batch = make_batch(datasets["train"])
    tokens_out, _ = batch.tokens_out
    assert tokens_out.shape == (4, 3, 128)
    lengths = tokens_out.ne(hparams["pad_index"]).sum(dim=-1)
    assert len(set(lengths.flatten().tolist())) > 1 and int(lengths.max()) < 128
    for k, captions in enumerate(batch.captions):
        rows = [decode_ids(sp, row.tolist()) for row in tokens_out[k]]  # cut at max length
        assert batch.caption[k].startswith(rows[0])
        owners = [[c for c in split_captions(captions) if c.startswith(row)] for row in rows]
        assert all(len(owner) == 1 for owner in owners), (rows, captions)
        assert len({owner[0] for owner in owners}) == 3
    predictions, loss = _forward(brain, batch)
    assert predictions["caption_logits"].shape[:2] == (12, int(lengths.max()))  # cut
    assert torch.isfinite(loss) and brain.loss_stats["cap"] > 0
    assert datasets["valid"][0]["tokens_in"].dim() == 1


def test_checkpoint_resume_gives_identical_next_step(make_brain, make_batch, train_step, tmp_path):
    """Save after 3 steps; step 4 after recovery in a fresh Brain reproduces loss and state."""
    output = tmp_path / "resume"
    brain, hparams, datasets = make_brain(output_folder=output)
    batches = [make_batch(datasets["train"], indices) for indices in ((0, 5), (7, 10), (2, 3))]
    step4 = make_batch(datasets["train"])
    brain.on_fit_start()
    for batch in batches:
        train_step(brain, batch)
    # Sinkhorn centering never moves the centre: give it a value to restore.
    hparams["ssl_loss"].center.copy_(torch.randn_like(hparams["ssl_loss"].center))
    saved = {
        "center": hparams["ssl_loss"].center.clone(),
        "logit_scale": float(hparams["clap_loss"].logit_scale.detach()),
        "teacher": _teacher_params(hparams),
        "lr": brain.optimizer.param_groups[0]["lr"],
    }
    brain.checkpointer.save_checkpoint()

    def run_step4(brain):
        torch.manual_seed(7)
        random.seed(7)
        loss = train_step(brain, step4)
        return float(loss), dict(brain.loss_stats)

    loss, stats = run_step4(brain)

    fresh, fresh_hparams, _ = make_brain(output_folder=output)
    assert int(fresh_hparams["teacher"].step) == 0
    fresh.on_fit_start()  # recovers the checkpoint
    assert fresh.step == 3 and fresh.optimizer_step == 3
    assert int(fresh_hparams["teacher"].step) == 3
    assert fresh_hparams["lr_schedule"].step == 3
    assert torch.equal(fresh_hparams["ssl_loss"].center, saved["center"])
    assert float(fresh_hparams["clap_loss"].logit_scale.detach()) == saved["logit_scale"]
    assert fresh.optimizer.param_groups[0]["lr"] == saved["lr"]
    for restored, expected in zip(_teacher_params(fresh_hparams), saved["teacher"], strict=True):
        assert torch.equal(restored, expected)

    fresh_loss, fresh_stats = run_step4(fresh)
    assert abs(fresh_loss - loss) <= 1e-6
    assert fresh_stats.keys() == stats.keys() == {"clap", "ssl", "cap"}
    for key, value in stats.items():
        assert abs(fresh_stats[key] - value) <= 1e-6, key
    assert int(fresh_hparams["teacher"].step) == int(hparams["teacher"].step) == 4
    assert fresh_hparams["lr_schedule"].step == hparams["lr_schedule"].step == 4


def test_first_optimizer_step_uses_warmup_lr(make_brain, make_batch, train_step):
    """Optimizer step k runs at lr_schedule.lr_at(k) (warm-up from 0), including step 1."""
    brain, hparams, datasets = make_brain(warmup_steps=10)
    batch = make_batch(datasets["train"])
    brain.on_fit_start()
    used = []
    step = brain.optimizer.step

    def record(*args, **kwargs):
        used.append(brain.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    brain.optimizer.step = record
    for _ in range(3):
        train_step(brain, batch)
    schedule = hparams["lr_schedule"]
    assert used == pytest.approx([schedule.lr_at(k) for k in (1, 2, 3)])


def test_train_stage_start_resets_per_epoch_state(make_brain, make_batch, train_step):
    """Each epoch's loss components average that epoch's steps; stale skip marks are dropped."""
    brain, hparams, datasets = make_brain()
    batch = make_batch(datasets["train"])
    brain.on_fit_start()
    epoch_losses = []
    for epoch in (1, 2):
        brain.on_stage_start(sb.Stage.TRAIN, epoch)
        train_step(brain, batch)
        epoch_losses.append(dict(brain.loss_stats))
        brain.on_stage_end(sb.Stage.TRAIN, 0.0, epoch)
    assert epoch_losses[0]["clap"] != epoch_losses[1]["clap"]
    for key, value in epoch_losses[1].items():
        assert brain.train_stats[f"loss_{key}"] == pytest.approx(value)
    # A skip mark left by an unfinished step of the last epoch does not skip the next one.
    brain._nonfinite_loss = brain._empty_in_step = True
    brain.on_stage_start(sb.Stage.TRAIN, 3)
    before = brain.optimizer_step
    train_step(brain, batch)
    assert brain.optimizer_step == before + 1


def test_zero_shot_leaves_out_clips_without_a_zero_shot_class(make_brain):
    """Label -1 (sound_type not a zero-shot class) is counted, not scored, and never raises."""
    from speechbrain_slap.metrics import zero_shot_accuracy

    brain, hparams, _ = make_brain()
    prompts = list(hparams["zeroshot_prompts"])
    dim = brain._embed_texts(prompts[:1]).shape[1]
    audio = torch.randn(4, dim)
    brain.eval_audio = [audio]
    brain.eval_captions = [["a dog barks"], ["rain"], ["wind"], ["a bell"]]
    brain.eval_labels = [torch.tensor([0, -1, 1, -1])]
    metrics, _, _ = brain.evaluate_retrieval()
    assert metrics["zeroshot_unlabelled"] == 2
    normed = torch.nn.functional.normalize(audio, dim=-1)
    text = torch.nn.functional.normalize(brain._embed_texts(prompts), dim=-1)
    expected = zero_shot_accuracy(normed[[0, 2]] @ text.T, [0, 1])
    assert metrics["zeroshot_accuracy"] == pytest.approx(expected)

    brain.eval_labels = [torch.full((4,), -1)]
    metrics, _, _ = brain.evaluate_retrieval()
    assert metrics["zeroshot_unlabelled"] == 4 and "zeroshot_accuracy" not in metrics


@pytest.mark.parametrize("positions", [False, True])
def test_test_stage_scores_zero_shot_by_the_caption_decoder(make_brain, make_batch, positions):
    """With prompt ids, the test stage scores each clip x prompt by the decoder, clip by
    clip as ``prefix_log_likelihoods`` gives it (time steps from the packing), and
    ``zeroshot_caption_accuracy`` is the accuracy of those scores; valid stays as it was."""
    from speechbrain_slap.metrics import zero_shot_accuracy

    brain, hparams, datasets = make_brain(decoder_time_positions=positions)
    prompts = torch.tensor([[5, 6, 7], [8, 9, 0], [10, 0, 0]])
    brain.hparams.zeroshot_prompt_ids = prompts
    batch = make_batch(datasets["test"], indices=(0, 1, 2))
    brain.modules.eval()
    with torch.no_grad():
        out = brain.compute_forward(batch, sb.Stage.TEST)
        assert "caption_prompt_scores" not in brain.compute_forward(batch, sb.Stage.VALID)
        packed = out["packed"]
        tokens = brain.modules.audio_encoder(packed)
        decoder = brain.modules.caption_decoder
        for b in range(len(batch)):
            start, end = packed.cu_seqlens[b], packed.cu_seqlens[b + 1]
            alone = decoder.prefix_log_likelihoods(
                tokens[None, start:end],
                torch.ones(1, end - start, dtype=torch.bool),
                prompts,
                packed.pos_t[None, start:end].float(),
            )
            torch.testing.assert_close(out["caption_prompt_scores"][b : b + 1], alone)
    assert decoder.memory_time_positions == positions
    brain.on_stage_start(sb.Stage.TEST)
    brain._collect_eval(out, batch)
    labels = torch.tensor([0, 2, 1])
    brain.eval_labels = [labels]
    metrics, _, _ = brain.evaluate_retrieval()
    expected = zero_shot_accuracy(out["caption_prompt_scores"], labels)
    assert metrics["zeroshot_caption_accuracy"] == pytest.approx(expected)


def test_valid_and_test_stages_score_zero_shot_on_the_onset_windows(make_brain, make_batch):
    """With prompts, valid and test pool each clip's onset window (``lobes/onset.py``)
    with the MAP head, and ``zeroshot_onset_accuracy`` scores those embeddings against the
    prompts; the train monitor keeps the stage's windows; bad settings name the field."""
    from speechbrain_slap.lobes.onset import onset_windows
    from speechbrain_slap.metrics import zero_shot_accuracy

    brain, hparams, datasets = make_brain()
    assert brain.onset_settings() == (hparams["onset_threshold"], hparams["onset_window_steps"])
    batch = make_batch(datasets["test"], indices=(0, 1, 2))
    brain.modules.eval()
    with torch.no_grad():
        out = brain.compute_forward(batch, sb.Stage.VALID)
        packed = out["packed"]
        tokens = brain.modules.audio_encoder(packed)
        window, cu_seqlens = onset_windows(tokens, packed, *brain.onset_settings())
        for b in range(len(batch)):
            alone = window[cu_seqlens[b] : cu_seqlens[b + 1]]
            expected = brain.modules.audio_pooling(alone, cu_seqlens=torch.tensor([0, len(alone)]))
            torch.testing.assert_close(out["onset_emb"][b : b + 1], expected)
    assert not torch.allclose(out["onset_emb"], out["audio_emb"])
    brain.on_stage_start(sb.Stage.VALID)
    brain._collect_eval(out, batch)
    labels = torch.tensor([0, -1, 3])
    brain.eval_labels = [labels]
    metrics, _, _ = brain.evaluate_retrieval()
    prompts = torch.nn.functional.normalize(
        brain._embed_texts(list(hparams["zeroshot_prompts"])), dim=-1
    )
    onset = torch.nn.functional.normalize(out["onset_emb"], dim=-1)
    expected = zero_shot_accuracy(onset[[0, 2]] @ prompts.T, [0, 3])
    assert metrics["zeroshot_onset_accuracy"] == pytest.approx(expected)
    kept = brain.eval_onset
    brain.hparams.train_monitor = datasets["test"]
    assert "train_zeroshot_onset_accuracy" in brain.monitor_train_retrieval()
    assert brain.eval_onset is kept and len(kept) == 1

    brain.hparams.onset_window_steps = 0
    with pytest.raises(ValueError, match="onset_window_steps"):
        brain.compute_forward(batch, sb.Stage.TEST)
