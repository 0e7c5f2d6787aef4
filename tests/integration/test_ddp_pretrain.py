"""The pretraining recipe under ``torchrun`` on shards: 2 CPU processes (gloo).

The recipe (``recipes/pretrain/train.py``) is launched twice with
``torchrun --standalone --nproc_per_node=2``, through this file's ``__main__``
block, which runs it unchanged after wrapping ``SLAPBrain.fit_batch`` and
``SLAPBrain.fit`` to record, on every rank, each step's clips (ids, captions,
waveforms), the step's CLAP loss and, at the end, the EMA teacher:

1. one epoch of 2 steps: the recipe writes shards of the tiny corpus (2 clips
   per shard) and streams them, 2 clips per rank and step;
2. the same command with ``--number_of_epochs=2``: it resumes from the
   checkpoint of the first launch and trains epoch 2.

The model is trained with the CLAP loss only, without SpecAugment (the frozen
text encoder runs in eval mode; the audio side has no dropout), so a
single-process ``SLAPBrain`` given the union of both ranks' clips of each step
(the global batch) must reproduce the gathered loss step by step: ``ClapLoss``
gathers embeddings with gradients and DDP averages the gradients, which makes
the DDP update the single-process one (see ``test_ddp_clap.py``).
"""

import json
import os
import runpy
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "pretrain" / "train.py"
WORLD_SIZE = 2
STEPS_PER_EPOCH = 2
CLIPS_PER_RANK = 2

# Overrides shared by the DDP runs and the single-process reference (the corpus and the
# model of conftest.py, clips of at most 4 s: batches are always 2 whole clips).
OVERRIDES = {
    "n_train": 12,
    "n_valid": 4,
    "n_test": 4,
    "corpus_max_duration": 4.0,
    "vocab_size": 80,
    "embed_dim": 64,
    "depth": 3,
    "mlp_hidden": 128,
    "n_prototypes": 32,
    "max_caption_tokens": 32,
    "max_duration": 4.0,
    "batch_seconds": 8.0,
    "max_batch_clips": CLIPS_PER_RANK,
    "batches_per_epoch": STEPS_PER_EPOCH,
    "shuffle_buffer": 4,
    "loss_weights": {"clap": 1.0, "ssl": 0.0, "cap": 0.0},
    "spec_augment": [],
    "lr": 0.002,
    "warmup_steps": 1,
    "log_interval": 1,
}


def _yaml_value(value):
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


# --------------------------------------------------------------------------- the DDP worker


def _instrumented_recipe(record_file: str, recipe_args: list[str]):
    """Runs the recipe as ``__main__``, recording what each rank trained on."""
    from speechbrain_slap.brain import SLAPBrain

    rank = int(os.environ["RANK"])
    records = []
    fit_batch, fit = SLAPBrain.fit_batch, SLAPBrain.fit

    def recording_fit_batch(self, batch):
        loss = fit_batch(self, batch)
        wavs, lens = batch.sig
        lengths = (lens * wavs.shape[1]).round().long().tolist()
        records.append(
            {
                "ids": list(batch.id),
                "captions": list(batch.caption),
                "waves": [wavs[k, :n].cpu().clone() for k, n in enumerate(lengths)],
                "loss_clap": self.loss_stats["clap"],
                "optimizer_step": self.optimizer_step,
            }
        )
        return loss

    def recording_fit(self, epoch_counter, train_set, *args, **kwargs):
        fit(self, epoch_counter, train_set, *args, **kwargs)
        teacher = {k: v.detach().clone() for k, v in self.modules.teacher.state_dict().items()}
        result = {"records": records, "teacher": teacher, "stream_epoch": train_set.epoch}
        torch.save(result, f"{record_file}.rank{rank}.pt")

    SLAPBrain.fit_batch, SLAPBrain.fit = recording_fit_batch, recording_fit
    sys.argv = [str(RECIPE), *recipe_args]
    runpy.run_path(str(RECIPE), run_name="__main__")


# --------------------------------------------------------------------------- the launches


def _launch(record_file, data, output, shards, epochs, timeout_s=240):
    """``torchrun`` of this file; kills the launcher's process group on timeout."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        __file__,
        str(record_file),
        "recipes/pretrain/hparams/pretrain_tiny_synth.yaml",
        "--device=cpu",
        "--distributed_backend=gloo",
        "--find_unused_parameters",  # the CLAP-only step leaves the mask token unused
        "--noprogressbar",
        f"--data_folder={data}",
        f"--output_folder={output}",
        "--generate_shards=True",
        f"--shard_folder={shards}",
        "--shard_max_samples=2",
        f"--train_shards={shards}",
        f"--number_of_epochs={epochs}",
        *(f"--{key}={_yaml_value(value)}" for key, value in OVERRIDES.items()),
    ]
    # The fault handler prints each thread's stack if a rank aborts.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"torchrun did not finish within {timeout_s} s:\n{log[-6000:]}")
    assert process.returncode == 0, log[-8000:]
    return [torch.load(f"{record_file}.rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def ddp_runs(tiny_corpus, tmp_path_factory):
    """Both launches: ``(first, second, output folder, shard folder)``; per-rank results."""
    root = tmp_path_factory.mktemp("ddp")
    output, shards = root / "out", root / "shards"
    first = _launch(root / "first", tiny_corpus, output, shards, epochs=1)
    # The stream's state in each checkpoint of the first launch (the second may delete it).
    checkpoints = [
        json.loads((path / "train_stream.ckpt").read_text())
        for path in sorted((output / "save").glob("CKPT+*"))
    ]
    second = _launch(root / "second", tiny_corpus, output, shards, epochs=2)
    return {
        "first": first,
        "second": second,
        "checkpoints_after_first": checkpoints,
        "output": output,
        "shards": shards,
    }


def _shard_of(shards):
    owner = {}
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    owner[json.loads(tar.extractfile(member).read())["source_id"]] = path.name
    return owner


pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="torch.distributed with the gloo backend is unavailable",
    ),
]


# --------------------------------------------------------------------------- the checks


def test_ranks_read_disjoint_samples_from_disjoint_shards(ddp_runs):
    owner = _shard_of(ddp_runs["shards"])
    assert len(set(owner.values())) == 6  # 12 clips, 2 per shard
    for launch in ("first", "second"):
        per_rank = [
            [i for record in result["records"] for i in record["ids"]]
            for result in ddp_runs[launch]
        ]
        for ids in per_rank:
            assert len(ids) == STEPS_PER_EPOCH * CLIPS_PER_RANK
            assert len(set(ids)) == len(ids)
        assert not set(per_rank[0]) & set(per_rank[1])
        shards = [{owner[i] for i in ids} for ids in per_rank]
        assert not shards[0] & shards[1]


def test_loss_matches_a_single_process_run_on_the_global_batch(ddp_runs, make_brain):
    """Every step's gathered CLAP loss equals the single-process loss on both ranks' clips,
    across the resume; so do the teachers at the end."""
    from speechbrain.dataio.batch import PaddedBatch

    brain, hparams, _ = make_brain(**OVERRIDES)
    brain.on_fit_start()
    steps = [
        list(zip(*(result["records"] for result in ddp_runs[launch]), strict=True))
        for launch in ("first", "second")
    ]
    for epoch, per_step in enumerate(steps, start=1):
        # total_steps as train.py sets it for a run of `epoch` epochs
        hparams["lr_schedule"].total_steps = STEPS_PER_EPOCH * epoch
        hparams["teacher"].total_steps = STEPS_PER_EPOCH * epoch
        for records in per_step:
            examples = [
                {"id": i, "sig": wave, "caption": caption}
                for record in records
                for i, wave, caption in zip(
                    record["ids"], record["waves"], record["captions"], strict=True
                )
            ]
            brain.step += 1
            brain.fit_batch(PaddedBatch(examples))
            assert len(examples) == WORLD_SIZE * CLIPS_PER_RANK
            for record in records:
                assert record["optimizer_step"] == brain.optimizer_step
                assert record["loss_clap"] == pytest.approx(brain.loss_stats["clap"], abs=2e-5)
        brain.step = 0
    # The updates were not negligible: the loss moved.
    losses = [r[0]["loss_clap"] for per_step in steps for r in per_step]
    assert max(losses) - min(losses) > 1e-3
    for name, value in hparams["teacher"].state_dict().items():
        torch.testing.assert_close(
            ddp_runs["second"][0]["teacher"][name], value, atol=2e-5, rtol=1e-4, msg=name
        )


def test_teachers_are_identical_on_every_rank(ddp_runs):
    for launch in ("first", "second"):
        rank0, rank1 = (result["teacher"] for result in ddp_runs[launch])
        assert rank0.keys() == rank1.keys()
        for name in rank0:
            assert torch.equal(rank0[name], rank1[name]), (launch, name)
        assert int(rank0["step"]) == STEPS_PER_EPOCH * (1 if launch == "first" else 2)


def test_one_checkpoint_and_logs_written_once(ddp_runs):
    (state,) = ddp_runs["checkpoints_after_first"]
    assert state == {"epoch": 1, "batches_done": STEPS_PER_EPOCH}
    # Written once per epoch by the main process, then pruned to what SpeechBrain keeps:
    # the newest and the best by valid mean R@1 (one folder when the newest is the best).
    kept = sorted((ddp_runs["output"] / "save").glob("CKPT+*"))
    metas = [yaml.safe_load((folder / "CKPT.yaml").read_text()) for folder in kept]
    assert len(kept) in (1, 2)
    if len(kept) == 2:
        assert metas[0]["mean_R@1"] > metas[1]["mean_R@1"]
    log = (ddp_runs["output"] / "train_log.txt").read_text().splitlines()
    epochs = [line.split(",")[0] for line in log if line.startswith("epoch")]
    assert epochs == ["epoch: 1", "epoch: 2"]
    with open(ddp_runs["output"] / "train_steps.jsonl") as fin:
        steps = [json.loads(line)["step"] for line in fin]
    assert steps == [1, 2, 3, 4]  # once each, from the main process only


def test_second_launch_resumes_the_stream_and_the_optimizer(ddp_runs):
    for result in ddp_runs["second"]:
        assert [r["optimizer_step"] for r in result["records"]] == [3, 4]
        assert result["stream_epoch"] == 2
    for result in ddp_runs["first"]:
        assert [r["optimizer_step"] for r in result["records"]] == [1, 2]
        assert result["stream_epoch"] == 1


if __name__ == "__main__":  # one rank under torchrun (see _launch)
    _instrumented_recipe(sys.argv[1], sys.argv[2:])
