"""``kill -9`` of the pretraining recipe, then the same command again, until it finishes.

``recipes/pretrain/train.py`` runs in a subprocess on a tiny generated corpus
(12 training clips, 5 steps per epoch, 2 epochs), tiny model, CPU, fixed seed,
``num_workers: 0`` and an intra-epoch checkpoint after every step
(``--ckpt_interval_steps=1``). The interrupted run is killed (SIGKILL, the
whole process group) at seeded random moments: a random delay after a random
number of steps has been logged to ``train_steps.jsonl``, and twice as soon
as a checkpoint folder is being written (a hidden ``.partial-CKPT+...``
appears; a checkpoint with its 90 MB of text encoder takes long enough to
write that the kill lands inside the write, and the test checks it did; a
kill during the removal of an old checkpoint leaves a ``.stale-CKPT+...``,
which counts too).

The same is done with the contrastive gradient cache
(``--grad_accumulation_factor=2 --contrastive_gradient_cache=True``, 4 epochs
of 2 optimizer steps: the 5th batch of an epoch is dropped unfinished): a
kill can land while the cache holds a micro-batch, and the resumed run redraws
it from the last step boundary.

Checked:

* every restart loads a checkpoint that was complete when the previous run was
  killed, never a partial one, and removes the partial folder it finds;
* the final parameters of every module (audio encoder, EMA teacher, ...) and
  the loss of every optimizer step are bit-identical (``torch.equal``) to those
  of the same command run without interruption: the checkpoint restores the
  torch/Python/NumPy RNGs (``RandomState``), the DataLoader's position and
  the ``DurationBatchSampler``'s epoch, and iterating a loader draws nothing
  from the global RNG (``manifest.loader_kwargs``).
"""

import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
SEED = 7
# Each variant: extra arguments, epochs, optimizer steps of the run.
VARIANTS = {
    "plain": ((), 2, 10),  # 2 epochs x 5 batches of at most 7 s of the 12 clips (25.3 s)
    "gradient_cache": (
        ("--grad_accumulation_factor=2", "--contrastive_gradient_cache=True"),
        4,
        8,  # 4 epochs x 2 steps of 2 micro-batches
    ),
}
MODULES = (
    "audio_encoder",
    "teacher",
    "ssl_head",
    "caption_decoder",
    "audio_pooling",
    "text_encoder",
    "clap_loss",
    "ssl_loss",
)

pytestmark = pytest.mark.timeout(600)


def _command(data: Path, output: Path, variant: str) -> list[str]:
    extra, epochs, _ = VARIANTS[variant]
    return [
        sys.executable,
        "recipes/pretrain/train.py",
        "recipes/pretrain/hparams/pretrain_tiny_synth.yaml",
        "--device=cpu",
        "--noprogressbar",
        f"--data_folder={data}",
        f"--output_folder={output}",
        f"--seed={SEED}",
        "--n_train=12",
        "--n_valid=2",
        "--n_test=2",
        "--corpus_max_duration=4.0",
        "--vocab_size=80",
        "--embed_dim=64",
        "--depth=3",
        "--mlp_hidden=128",
        "--n_prototypes=32",
        "--max_caption_tokens=32",
        "--batch_seconds=7",
        f"--number_of_epochs={epochs}",
        "--log_interval=1",
        "--ckpt_interval_steps=1",
        "--num_workers=0",
        *extra,
    ]


def _start(data: Path, output: Path, log: Path, variant: str) -> subprocess.Popen:
    # One OpenMP thread: on a busy 2-core machine two threads are ~100x slower.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as fout:
        return subprocess.Popen(
            _command(data, output, variant),
            cwd=REPO,
            env=env,
            stdout=fout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the kill takes the whole group
        )


def _kill(process: subprocess.Popen):
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _complete_checkpoints(save: Path) -> set[str]:
    return {p.name for p in save.glob("CKPT+*") if (p / "CKPT.yaml").is_file()}


def _partial_checkpoints(save: Path) -> set[str]:
    """Hidden folders of a checkpoint being written (``.partial-``) or removed (``.stale-``)."""
    if not save.is_dir():
        return set()
    return {p.name for pattern in (".partial-CKPT+*", ".stale-CKPT+*") for p in save.glob(pattern)}


def _newest_checkpoint(save: Path) -> Path:
    checkpoints = [save / name for name in _complete_checkpoints(save)]
    return max(checkpoints, key=lambda p: yaml.safe_load((p / "CKPT.yaml").read_text())["unixtime"])


def _last_logged_step(output: Path) -> int:
    try:
        lines = (output / "train_steps.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # a line being written
            pass
    return max(steps)


def _wait(process: subprocess.Popen, condition, timeout: float = 120.0) -> bool:
    """Polls ``condition`` every 2 ms; False if the process ends first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if condition():
            return True
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)
    return False


def _run_until_killed(data, output, log, plan, rng, variant) -> dict:
    """One launch of the command, killed as ``plan`` says; what happened."""
    save = output / "save"
    process = _start(data, output, log, variant)
    # Training has started (and train_steps.jsonl was cut back) once the epoch loop runs.
    if not _wait(process, lambda: "Going into epoch" in log.read_text()):
        return {"finished": process.returncode}
    start_step = _last_logged_step(output)
    if plan == "during_save":
        new_partial = lambda: _partial_checkpoints(save) and _last_logged_step(output) > start_step  # noqa: E731
        if not _wait(process, new_partial):
            return {"finished": process.returncode}
    else:
        steps = rng.randint(1, 3)
        if not _wait(process, lambda: _last_logged_step(output) >= start_step + steps):
            return {"finished": process.returncode}
        time.sleep(rng.uniform(0.0, 0.3))
    if process.poll() is not None:
        return {"finished": process.returncode}
    _kill(process)
    return {
        "complete": _complete_checkpoints(save),
        "partial": _partial_checkpoints(save),
        "step": _last_logged_step(output),
    }


def _loaded_checkpoints(log: Path) -> list[str]:
    return [Path(p).name for p in re.findall(r"Loading a checkpoint from (\S+)", log.read_text())]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def runs(request, tmp_path_factory):
    """The uninterrupted run and the killed-and-restarted one: their output folders."""
    variant = request.param
    root = tmp_path_factory.mktemp(f"kill_resume_{variant}")
    data = root / "corpus"
    reference = root / "reference"
    process = _start(data, reference, root / "reference.log", variant)
    assert process.wait(timeout=240) == 0, (root / "reference.log").read_text()[-6000:]

    interrupted = root / "interrupted"
    rng = random.Random(SEED)
    plans = ["after_steps", "during_save", "after_steps", "during_save"]
    launches = []
    for attempt in range(12):
        log = root / f"interrupted_{attempt}.log"
        plan = plans[attempt] if attempt < len(plans) else "to_the_end"
        if plan == "to_the_end":
            process = _start(data, interrupted, log, variant)
            outcome = {"finished": process.wait(timeout=240)}
        else:
            outcome = _run_until_killed(data, interrupted, log, plan, rng, variant)
        launches.append({"plan": plan, "log": log, **outcome})
        if "finished" in outcome:
            assert outcome["finished"] == 0, log.read_text()[-6000:]
            break
    return reference, interrupted, launches, VARIANTS[variant][2]


def test_the_run_was_killed_during_training_and_during_a_checkpoint_write(runs):
    _, _, launches, steps = runs
    killed = [launch for launch in launches if "finished" not in launch]
    assert len(killed) >= 3, [launch["plan"] for launch in launches]
    # At least one kill left a checkpoint half written (its folder still hidden).
    assert any(launch["partial"] for launch in killed), killed
    assert max(launch["step"] for launch in killed) < steps
    assert "finished" in launches[-1]


def test_restarts_load_only_complete_checkpoints_and_remove_partial_ones(runs):
    _, interrupted, launches, _ = runs
    for before, after in itertools.pairwise(launches):
        loaded = _loaded_checkpoints(after["log"])
        if before["complete"]:
            assert loaded, after["log"].read_text()[-3000:]
            # The first load resumes training (later ones pick the best one for testing).
            assert loaded[0] in before["complete"], (loaded[0], before)
        text = after["log"].read_text()
        for partial in before["partial"]:
            assert "removing an incomplete checkpoint" in text and partial in text
            assert partial not in loaded
    assert not _partial_checkpoints(interrupted / "save")


def test_final_parameters_equal_an_uninterrupted_run(runs):
    reference, interrupted, _, steps = runs
    expected = _newest_checkpoint(reference / "save")
    resumed = _newest_checkpoint(interrupted / "save")
    for name in MODULES:
        want = torch.load(expected / f"{name}.ckpt", weights_only=True)
        got = torch.load(resumed / f"{name}.ckpt", weights_only=True)
        assert want.keys() == got.keys(), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}.{key} differs"
    brain = yaml.safe_load((resumed / "brain.ckpt").read_text())
    assert brain["optimizer_step"] == steps


def test_every_step_has_the_loss_of_the_uninterrupted_run(runs):
    """train_steps.jsonl was cut back at each restart: each step once, same losses."""
    reference, interrupted, _, steps = runs

    def losses(output):
        records = [json.loads(line) for line in (output / "train_steps.jsonl").open()]
        return [
            (r["step"], r["loss"], r["loss_clap"], r["loss_ssl"], r["loss_cap"]) for r in records
        ]

    expected = losses(reference)
    assert [r[0] for r in expected] == list(range(1, steps + 1))
    assert losses(interrupted) == expected
