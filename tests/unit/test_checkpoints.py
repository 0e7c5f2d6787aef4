"""``AtomicCheckpointer`` and ``RandomState`` (``speechbrain_slap/checkpoints.py``)."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_slap.checkpoints import PARTIAL_PREFIX, AtomicCheckpointer, RandomState


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_saves_complete_checkpoints_and_reloads_them(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model, "rng": RandomState()})
    saved = checkpointer.save_checkpoint(meta={"score": 1.0})
    assert saved.path.name.startswith("CKPT+") and saved.path.is_dir()
    assert sorted(saved.paramfiles) == ["model", "rng"]
    assert all(p.is_file() and p.parent == saved.path for p in saved.paramfiles.values())
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.zero_()
    # A plain SpeechBrain Checkpointer reads what the atomic one wrote.
    found = Checkpointer(tmp_path, {"model": model}).recover_if_possible()
    assert found.meta["score"] == 1.0
    assert torch.equal(model.weight, expected["weight"])


def test_failed_save_leaves_no_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model})
    first = checkpointer.save_checkpoint(meta={"step": 1})

    def broken_saver(obj, path):
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    checkpointer.add_recoverable("broken", object(), custom_save_hook=broken_saver)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save_checkpoint(meta={"step": 2})
    assert [c.path for c in checkpointer.list_checkpoints()] == [first.path]
    assert any(name.startswith(PARTIAL_PREFIX) for name in _names(tmp_path))
    assert checkpointer.remove_partial_checkpoints()
    assert _names(tmp_path) == [first.path.name]


def test_custom_name_is_replaced_whole(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model})
    checkpointer.save_checkpoint(meta={"v": 1}, name="latest")
    with torch.no_grad():
        model.weight.fill_(3.0)
    saved = checkpointer.save_checkpoint(meta={"v": 2}, name="latest")
    assert _names(tmp_path) == ["CKPT+latest"]
    assert saved.meta["v"] == 2
    state = torch.load(saved.paramfiles["model"], weights_only=True)
    assert torch.all(state["weight"] == 3.0)


def test_keep_only_removes_old_checkpoints_after_the_new_one(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model})
    checkpointer.save_and_keep_only(meta={"loss": 2.0}, min_keys=["loss"])
    time.sleep(0.01)
    checkpointer.save_and_keep_only(meta={"loss": 1.0}, min_keys=["loss"])
    (kept,) = checkpointer.list_checkpoints()
    assert kept.meta["loss"] == 1.0
    assert _names(tmp_path) == [kept.path.name]


SLOW_SAVE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from speechbrain_slap.checkpoints import AtomicCheckpointer

    folder, flag = Path(sys.argv[1]), Path(sys.argv[2])

    def slow_saver(obj, path):
        path.write_bytes(b"partial")
        flag.write_text("saving")
        time.sleep(60)

    checkpointer = AtomicCheckpointer(folder, {"model": torch.nn.Linear(2, 2)})
    checkpointer.save_checkpoint(meta={"step": 1})
    checkpointer.add_recoverable("slow", object(), custom_save_hook=slow_saver)
    checkpointer.save_checkpoint(meta={"step": 2})
    """
)


def test_kill_9_while_saving_keeps_the_previous_checkpoint(tmp_path):
    folder, flag = tmp_path / "save", tmp_path / "flag"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, str(folder), str(flag)],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never started its second save"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(folder, {"model": model})
    loaded = checkpointer.recover_if_possible()
    assert loaded.meta["step"] == 1  # the interrupted save is invisible
    assert all(not name.startswith(PARTIAL_PREFIX) for name in _names(folder))
    assert len(_names(folder)) == 1


def test_random_state_round_trip(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    RandomState().save(tmp_path / "rng.ckpt")
    expected = (torch.randn(4), [random.random() for _ in range(4)], np.random.rand(4))
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    RandomState().load(tmp_path / "rng.ckpt")
    assert torch.equal(torch.randn(4), expected[0])
    assert [random.random() for _ in range(4)] == expected[1]
    assert np.array_equal(np.random.rand(4), expected[2])
