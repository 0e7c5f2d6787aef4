"""The contrastive gradient cache (``contrastive_gradient_cache: True``), one process, CPU, fp32.

``SLAPBrain`` is built from ``pretrain_tiny_synth.yaml`` (conftest's
``make_brain``) with ``grad_accumulation_factor=2`` and driven by
``fit_batch`` as ``Brain.fit`` drives it; the gradients are captured when the
optimizer step starts (``optimizers_step``). Checked:

* with the CLAP loss alone, one cached step over two micro-batches has the
  loss and every parameter gradient of one step over the batch twice as
  large (relative error <= 1e-5), and its log record contrasts all 4 clips
  (2 per record without the cache);
* with all three losses, SpecAugment and both SSL views, the gradient is that
  of ``CLAP(both micro-batches) + mean(SSL_k + 0.5 CAP_k)`` computed in one
  graph with the same random draws: the second pass replays the first's
  SpecAugment, token mask and dropout;
* the same under DDP: 2 gloo processes, each with two micro-batches of
  unequal clip counts, have (after DDP's averaging) the gradients of one
  single-process step over all 8 clips;
* a non-finite loss in a cached step skips the whole step, and the next one
  trains; micro-batches an epoch leaves unfinished are dropped.
"""

import datetime
import json
import math
import os
import re
import socket
import time
from pathlib import Path

import pytest
import speechbrain as sb
import torch
import torch.distributed as dist
from brain_fixtures import build_brain, capture_step_gradients, examples, load_recipe, micro_batches
from speechbrain.dataio.batch import PaddedBatch

from speechbrain_slap.gradient_cache import draw_seed, replayed_rng

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLAP_ONLY = {"clap": 1.0, "ssl": 0.0, "cap": 0.0}
ALL_WEIGHTS = {"clap": 1.0, "ssl": 1.0, "cap": 0.5}
CACHE = {"grad_accumulation_factor": 2, "contrastive_gradient_cache": True}


def assert_gradients_match(got: dict, want: dict, tolerance: float = 1e-5):
    """Same parameters have gradients, each within ``tolerance`` relative error (L2)."""
    assert got.keys() == want.keys()
    assert any(name.startswith("audio_encoder.") for name in want)
    assert any(name.startswith("text_encoder.") for name in want)
    for name, grad in want.items():
        error = float((got[name] - grad).norm())
        assert error <= tolerance * max(float(grad.norm()), 1e-12), (name, error)


def test_cached_step_equals_one_batch_twice_as_large(make_brain, train_step, tmp_path):
    """CLAP only: the loss and every gradient of the cached step are the big batch's."""
    cached, _, datasets = make_brain(
        output_folder=tmp_path / "cached",
        loss_weights=CLAP_ONLY,
        spec_augment=[],
        log_interval=1,
        **CACHE,
    )
    big, _, _ = make_brain(output_folder=tmp_path / "big", loss_weights=CLAP_ONLY, spec_augment=[])
    plain, _, _ = make_brain(
        output_folder=tmp_path / "plain",
        loss_weights=CLAP_ONLY,
        spec_augment=[],
        grad_accumulation_factor=2,
    )
    micro, union = micro_batches(datasets["train"])
    for brain in (cached, big, plain):
        brain.on_fit_start()
    cached_grads, big_grads = capture_step_gradients(cached), capture_step_gradients(big)

    first = train_step(cached, micro[0])
    assert math.isnan(float(first)) and not cached_grads  # held until the step is complete
    assert cached.optimizer_step == 0 and not cached.step_log
    loss = train_step(cached, micro[1])
    big_loss = train_step(big, union)

    assert cached.optimizer_step == big.optimizer_step == 1
    assert float(loss) == pytest.approx(float(big_loss), rel=1e-5)
    assert cached.loss_stats["clap"] == pytest.approx(big.loss_stats["clap"], rel=1e-5)
    assert_gradients_match(cached_grads[0], big_grads[0])

    for batch in micro:
        train_step(plain, batch)
    assert [r["clap_negatives"] for r in cached.step_log] == [4]
    assert [r["clap_negatives"] for r in big.step_log] == [4]
    assert [r["clap_negatives"] for r in plain.step_log] == [2, 2]
    with open(tmp_path / "cached" / "train_steps.jsonl") as fin:
        (line,) = fin.readlines()  # one record per optimizer step
    assert json.loads(line)["clap_negatives"] == 4


@pytest.mark.parametrize("ssl_view", ["dual", "shared"])
def test_second_pass_replays_the_first_one(make_brain, train_step, tmp_path, ssl_view):
    """All losses, SpecAugment on: gradient of CLAP(both) + mean(SSL + 0.5 CAP), one graph."""
    cached, _, datasets = make_brain(
        output_folder=tmp_path / "cached", ssl_view=ssl_view, loss_weights=ALL_WEIGHTS, **CACHE
    )
    reference, _, _ = make_brain(
        output_folder=tmp_path / "reference", ssl_view=ssl_view, loss_weights=ALL_WEIGHTS
    )
    micro, _ = micro_batches(datasets["train"])
    cached.on_fit_start()
    captured = capture_step_gradients(cached)
    torch.manual_seed(11)
    for batch in micro:
        loss = train_step(cached, batch)
    assert set(cached.loss_stats) == {"clap", "ssl", "cap"}

    # The reference draws the seeds the cached step drew, and keeps both graphs.
    torch.manual_seed(11)
    seeds = [draw_seed() for _ in micro]
    reference.modules.train()
    predictions = []
    for seed, batch in zip(seeds, micro, strict=True):
        with replayed_rng(seed):
            predictions.append(reference.compute_forward(batch, sb.Stage.TRAIN))
    audio = torch.cat([p.pop("audio_emb") for p in predictions])
    text = torch.cat([p.pop("text_emb") for p in predictions])
    clap = reference.modules.clap_loss(audio, text)
    others = [
        reference.compute_objectives(p, batch, sb.Stage.TRAIN)
        for p, batch in zip(predictions, micro, strict=True)
    ]
    total = clap + sum(others) / len(micro)
    total.backward()
    want = {name: p.grad for name, p in reference.modules.named_parameters() if p.grad is not None}

    assert float(loss) == pytest.approx(float(total), rel=1e-5)
    assert cached.loss_stats["clap"] == pytest.approx(float(clap), rel=1e-5)
    assert_gradients_match(captured[0], want)


# --------------------------------------------------------------------------- DDP, 2 gloo ranks

WORLD_SIZE = 2
# Unequal clip counts per micro-batch and per rank (3 and 5 clips); 8 in all.
DDP_MICRO_BATCHES = (((1, 6), (9,)), ((11, 0, 5), (7, 10)))


def _ddp_worker(rank, port, corpus, tokenizer_folder, out_dir, compiled):
    """One rank: a cached step over its two micro-batches; gradients saved to ``rank<r>.pt``.

    ``compiled``: the audio encoder's blocks compiled (``--compile``) before DDP wraps it.
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
    )
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=120)
    )
    try:
        brain, _, datasets = build_brain(
            load_recipe(),
            corpus,
            tokenizer_folder,
            Path(out_dir) / f"out{rank}",
            run_opts={
                "distributed_backend": "gloo",
                "find_unused_parameters": True,  # the CLAP-only step leaves the mask token unused
                "compile": compiled,
                "compile_module_keys": ["audio_encoder"],
            },
            loss_weights=CLAP_ONLY,
            spec_augment=[],
            **CACHE,
        )
        brain.on_fit_start()  # wraps the modules in DDP
        captured = capture_step_gradients(brain)
        micro, _ = micro_batches(datasets["train"], DDP_MICRO_BATCHES[rank])
        for batch in micro:
            brain.step += 1
            loss = brain.fit_batch(batch)
        grads = {re.sub(r"^(\w+)\.module\.", r"\1.", n): g for n, g in captured[0].items()}
        result = {"grads": grads, "loss": float(loss), "record": brain.step_log[-1]}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(args, timeout_s=360.0):
    """Runs the workers; kills them (only them) if they do not finish in time."""
    import torch.multiprocessing as mp

    context = mp.spawn(_ddp_worker, args=(_free_port(), *args), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"DDP workers did not finish within {timeout_s} s")


@pytest.mark.timeout(420)
@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is unavailable",
)
# Compiled: per-block torch.compile (inductor on the CPU) inside DDP; fused kernels round
# differently, hence the looser tolerance.
@pytest.mark.parametrize(
    ("compiled", "tolerance"), [(False, 1e-5), (True, 1e-4)], ids=["eager", "compiled"]
)
def test_ddp_cached_step_equals_one_process_on_all_clips(
    make_brain, train_step, tiny_corpus, tokenizer_folder, tmp_path, compiled, tolerance
):
    """2 ranks x 2 micro-batches (8 clips): loss and gradients of one step over all 8."""
    big, _, datasets = make_brain(
        output_folder=tmp_path / "big", loss_weights=CLAP_ONLY, spec_augment=[]
    )  # also trains the tokenizer the workers load
    _spawn((str(tiny_corpus), str(tokenizer_folder), str(tmp_path), compiled))
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    union = PaddedBatch(
        [
            item
            for groups in DDP_MICRO_BATCHES
            for item in sum(examples(datasets["train"], groups), [])
        ]
    )
    big.on_fit_start()
    big_grads = capture_step_gradients(big)
    big_loss = train_step(big, union)
    assert len(union) == 8
    for result in results:
        assert result["record"]["clap_negatives"] == 8
        assert result["loss"] == pytest.approx(float(big_loss), rel=tolerance)
        assert_gradients_match(result["grads"], big_grads[0], tolerance)
    for name, grad in results[0]["grads"].items():
        assert torch.equal(grad, results[1]["grads"][name]), name  # the ranks agree exactly


def test_nonfinite_cached_step_is_skipped_whole(make_brain, train_step, tmp_path):
    """A NaN clip in the first micro-batch: no update, no EMA step; the next step trains."""
    brain, hparams, datasets = make_brain(output_folder=tmp_path / "nan", **CACHE)
    micro, _ = micro_batches(datasets["train"])
    brain.on_fit_start()
    before = [p.detach().clone() for p in brain.modules.parameters()]
    wavs, _ = micro[0].sig
    wavs[0, :100] = float("nan")
    train_step(brain, micro[0])
    loss = train_step(brain, micro[1])
    assert not torch.isfinite(loss)
    assert brain.optimizer_step == 0 and int(hparams["teacher"].step) == 0
    assert brain.nonfinite_steps == 1 and not brain.step_log
    assert all(torch.equal(a, b) for a, b in zip(before, brain.modules.parameters(), strict=True))
    assert all(p.grad is None for p in brain.modules.parameters())

    micro, _ = micro_batches(datasets["train"])
    for batch in micro:
        loss = train_step(brain, batch)
    assert torch.isfinite(loss) and brain.optimizer_step == 1
    assert int(hparams["teacher"].step) == 1 and brain.nonfinite_in_row == 0


def test_epoch_end_drops_an_unfinished_step(make_brain, train_step, tmp_path):
    """A micro-batch held when the epoch ends is dropped; the next epoch starts afresh."""
    brain, _, datasets = make_brain(output_folder=tmp_path / "epochs", **CACHE)
    micro, _ = micro_batches(datasets["train"])
    brain.on_fit_start()
    train_step(brain, micro[0])
    assert len(brain._clap_cache) == 1
    brain.step = 0  # as Brain._fit_train leaves it at the end of an epoch
    brain.on_stage_start(sb.Stage.TRAIN, 2)
    assert brain._clap_cache == []
    for batch in micro:
        train_step(brain, batch)
    assert brain.optimizer_step == 1 and brain.step_log[-1]["clap_negatives"] == 4


def test_cache_needs_the_clap_loss(make_brain, tmp_path):
    brain, _, _ = make_brain(
        output_folder=tmp_path / "no_clap", loss_weights={"clap": 0.0}, **CACHE
    )
    with pytest.raises(ValueError, match="loss_weights.clap is 0"):
        brain.on_fit_start()
