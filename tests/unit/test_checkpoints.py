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

from speechbrain_slap.checkpoints import (
    PARTIAL_PREFIX,
    STALE_PREFIX,
    AtomicCheckpointer,
    RandomState,
)


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


def test_old_checkpoint_is_renamed_before_it_is_deleted(tmp_path, monkeypatch):
    """A removal that dies half way leaves no folder that still looks like a checkpoint."""
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model})
    old = checkpointer.save_checkpoint(meta={"loss": 2.0})
    time.sleep(0.01)

    def dies_half_way(path):
        (path / "model.ckpt").unlink()  # CKPT.yaml is still there
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr("speechbrain_slap.checkpoints.shutil.rmtree", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save_and_keep_only(meta={"loss": 1.0}, min_keys=["loss"])
    monkeypatch.undo()
    (kept,) = checkpointer.list_checkpoints()
    assert kept.meta["loss"] == 1.0
    assert f"{STALE_PREFIX}{old.path.name}" in _names(tmp_path)
    loaded = AtomicCheckpointer(tmp_path, {"model": model}).recover_if_possible()
    assert loaded.meta["loss"] == 1.0
    assert _names(tmp_path) == [kept.path.name]


def test_delete_checkpoints_keeps_what_speechbrain_keeps(tmp_path):
    """Same choice as ``Checkpointer.delete_checkpoints``: best by key plus the newest."""
    model = torch.nn.Linear(2, 2)
    atomic = AtomicCheckpointer(tmp_path / "atomic", {"model": model})
    stock = Checkpointer(tmp_path / "stock", {"model": model})
    for loss in (3.0, 1.0, 2.0, 4.0):
        for checkpointer in (atomic, stock):
            checkpointer.save_checkpoint(meta={"loss": loss})
        time.sleep(0.01)
    atomic.delete_checkpoints(num_to_keep=1, min_keys=["loss"])
    stock.delete_checkpoints(num_to_keep=1, min_keys=["loss"])
    kept = [sorted(c.meta["loss"] for c in cp.list_checkpoints()) for cp in (atomic, stock)]
    assert kept[0] == kept[1] == [1.0, 4.0]


def _random_state_rank(rank, folder, results):
    # SpeechBrain finds the rank in the environment, as torchrun sets it.
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2
    )
    torch.manual_seed(100 + rank)
    random.seed(200 + rank)
    np.random.seed(300 + rank)
    checkpointer = AtomicCheckpointer(folder / "save", {"rng": RandomState()})
    checkpointer.save_checkpoint()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    checkpointer.recover_if_possible()
    restored = (torch.rand(3), random.random(), np.random.rand())
    torch.save({"expected": expected, "restored": restored}, results / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_random_state_keeps_every_rank_s_generators(tmp_path):
    """Under DDP (2 gloo ranks) each rank gets back its own generators, not rank 0's."""
    results = tmp_path / "results"
    results.mkdir()
    torch.multiprocessing.spawn(_random_state_rank, args=(tmp_path, results), nprocs=2)
    ranks = [torch.load(results / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for rank in ranks:
        assert torch.equal(rank["expected"][0], rank["restored"][0])
        assert rank["expected"][1:] == rank["restored"][1:]
    assert not torch.equal(ranks[0]["restored"][0], ranks[1]["restored"][0])


def test_random_state_reads_the_one_process_format(tmp_path):
    """A file of the earlier format (one state, no per-rank list) still loads."""
    torch.manual_seed(5)
    state = torch.get_rng_state()
    version, values, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    torch.save(
        {
            "torch": state,
            "cuda": [],
            "python": [version, list(values), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        },
        tmp_path / "rng.ckpt",
    )
    expected = torch.rand(2)
    torch.manual_seed(6)
    RandomState().load(tmp_path / "rng.ckpt")
    assert torch.equal(torch.rand(2), expected)


def test_swap_cut_between_its_renames_restores_the_old_checkpoint(tmp_path):
    """``.stale-X`` and ``.partial-X`` without ``X``: the old ``X`` comes back, then loads."""
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model})
    with torch.no_grad():
        model.weight.fill_(1.0)
    old = checkpointer.save_checkpoint(meta={"v": 1}, name="latest")
    with torch.no_grad():
        model.weight.fill_(2.0)
    new = checkpointer.save_checkpoint(meta={"v": 2}, name="other")
    # The folder state of a kill after "X -> .stale-X" and before ".partial-X -> X".
    os.replace(old.path, old.path.with_name(STALE_PREFIX + old.path.name))
    os.replace(new.path, old.path.with_name(PARTIAL_PREFIX + old.path.name))
    # A removal cut short (no partial folder beside it) is not restored.
    half_deleted = tmp_path / (STALE_PREFIX + "CKPT+gone")
    half_deleted.mkdir()
    with torch.no_grad():
        model.weight.fill_(0.0)
    fresh = AtomicCheckpointer(tmp_path, {"model": model})
    found = fresh.recover_if_possible()
    assert _names(tmp_path) == [old.path.name]
    assert found.path == old.path and found.meta["v"] == 1
    assert torch.all(model.weight == 1.0)
