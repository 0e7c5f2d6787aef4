"""Checkpoints that survive ``kill -9``, and the random state that makes resume exact.

SpeechBrain's ``Checkpointer`` writes ``CKPT.yaml`` first and the parameter
files after it, straight into ``CKPT+<stamp>``: a run killed while saving leaves
a folder that looks complete and is loaded on the next start, with missing or
truncated files. ``AtomicCheckpointer`` writes every file into a hidden
``.partial-CKPT+<stamp>`` folder, flushes them to disk, and renames the folder
into place only once all ranks have written their files. A rename is atomic on
one filesystem, so a checkpoint folder is either complete or absent. Old
checkpoints are removed only after the new one is in place (SpeechBrain's
``save_and_keep_only`` order), and each is first renamed to a hidden
``.stale-CKPT+<stamp>`` folder, so a kill during the removal cannot leave a
half-deleted folder that still looks like a checkpoint; leftover partial and
stale folders are removed at the next start, except the old checkpoint of a
custom-named save cut between its two renames, which is renamed back.

``RandomState`` is a recoverable holding the torch, Python and NumPy random
generators. With it in the checkpoint, a run resumed from an intra-epoch
checkpoint draws the same crops, captions, masks and augmentations as the run
that was never interrupted, so (on CPU, fixed seed) it reaches the same
parameters. Under DDP each rank's generators are kept (ranks draw different
masks), gathered into the one file the main process writes.

Authors
 * speechbrain-slap contributors 2026
"""

import functools
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    Checkpoint,
    Checkpointer,
    ckpt_recency,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import (
    ddp_barrier,
    ddp_broadcast,
    if_main_process,
    is_distributed_initialized,
)

logger = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
STALE_PREFIX = ".stale-"


def _fsync_tree(folder: Path):
    """Flushes every file of ``folder`` and the folder entry itself to disk."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as fin:
                os.fsync(fin.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AtomicCheckpointer(Checkpointer):
    """A ``Checkpointer`` whose checkpoints appear complete or not at all.

    Same arguments as ``speechbrain.utils.checkpoints.Checkpointer``.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> model = torch.nn.Linear(2, 2)
    >>> checkpointer = AtomicCheckpointer(folder, {"model": model})
    >>> _ = checkpointer.save_checkpoint(meta={"loss": 1.0})
    >>> [p.name.startswith("CKPT+") for p in folder.iterdir()]
    [True]
    >>> sorted(p.name for p in next(folder.iterdir()).iterdir())
    ['CKPT.yaml', 'model.ckpt']
    """

    _partial = False

    def _new_checkpoint_dirpath(self):
        path = super()._new_checkpoint_dirpath()
        return path.with_name(PARTIAL_PREFIX + path.name) if self._partial else path

    def _custom_checkpoint_dirpath(self, name):
        path = super()._custom_checkpoint_dirpath(name)
        return path.with_name(PARTIAL_PREFIX + path.name) if self._partial else path

    def save_checkpoint(self, meta=None, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Saves into a partial folder, then renames it into place (see the module doc).

        Arguments and return value as ``Checkpointer.save_checkpoint``.
        """
        self._partial = True
        try:
            saved = super().save_checkpoint(
                meta=meta or {}, end_of_epoch=end_of_epoch, name=name, verbosity=logging.DEBUG
            )
        finally:
            self._partial = False
        partial = ddp_broadcast(saved.path if saved is not None else None, src=0)
        ddp_barrier()  # every rank has written its files into the partial folder
        final = partial.with_name(partial.name[len(PARTIAL_PREFIX) :])
        if if_main_process():
            _fsync_tree(partial)
            stale = None
            if final.exists():  # a custom name saved again: swap, then drop the old one
                stale = final.with_name(STALE_PREFIX + final.name)
                os.replace(final, stale)
            os.replace(partial, final)
            if stale is not None:
                shutil.rmtree(stale)
            kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
            logger.log(verbosity, "Saved an %s checkpoint in %s", kind, final)
        ddp_barrier()
        if saved is None:
            return None
        return Checkpoint(
            final, saved.meta, {k: final / p.name for k, p in saved.paramfiles.items()}
        )

    def delete_checkpoints(
        self,
        *,
        num_to_keep=1,
        min_keys=None,
        max_keys=None,
        importance_keys=None,
        ckpt_predicate=None,
        verbosity=logging.INFO,
    ):
        """``Checkpointer.delete_checkpoints``, each removal a rename then a delete.

        Arguments as ``Checkpointer.delete_checkpoints`` (the default
        ``importance_keys`` keeps the newest).
        """
        if num_to_keep < 0:
            raise ValueError("Number of checkpoints to keep must be positive.")
        keys = [{"min_key": key} for key in min_keys or []]
        keys += [{"max_key": key} for key in max_keys or []]
        if importance_keys is None:
            importance_keys = [ckpt_recency]
        keys += [{"importance_key": key} for key in importance_keys]
        candidates, protected = set(), set()
        for key in keys:
            candidates.update(self.find_checkpoints(ckpt_predicate=ckpt_predicate, **key))
            protected.update(
                self.find_checkpoints(
                    max_num_checkpoints=num_to_keep, ckpt_predicate=ckpt_predicate, **key
                )
            )
        ddp_barrier()  # no rank may be saving while the main process deletes
        if if_main_process():
            for checkpoint in candidates - protected:
                stale = checkpoint.path.with_name(STALE_PREFIX + checkpoint.path.name)
                os.replace(checkpoint.path, stale)  # gone from the list at once
                shutil.rmtree(stale)
                logger.log(verbosity, "Deleted checkpoint in %s", checkpoint.path)
        ddp_barrier()

    def remove_partial_checkpoints(self) -> list[Path]:
        """Deletes folders left by a save that was interrupted; returns them (main rank).

        A kill between the two renames of a custom-named save (``X`` to
        ``.stale-X``, then ``.partial-X`` to ``X``) leaves ``.stale-X`` and
        ``.partial-X`` without ``X``: the complete old checkpoint is renamed
        back to ``X`` first. A ``.stale-X`` without ``.partial-X`` is a
        removal that was cut short (possibly half deleted) and is removed.
        """
        removed = []
        if if_main_process() and self.checkpoints_dir.is_dir():
            for stale in sorted(self.checkpoints_dir.glob(STALE_PREFIX + "*")):
                name = stale.name[len(STALE_PREFIX) :]
                final = stale.with_name(name)
                partial = stale.with_name(PARTIAL_PREFIX + name)
                if stale.is_dir() and partial.is_dir() and not final.exists():
                    logger.warning("restoring a checkpoint whose replacement was cut: %s", final)
                    os.replace(stale, final)
            for path in sorted(self.checkpoints_dir.iterdir()):
                if path.is_dir() and path.name.startswith((PARTIAL_PREFIX, STALE_PREFIX)):
                    logger.warning("removing an incomplete checkpoint: %s", path)
                    shutil.rmtree(path)
                    removed.append(path)
        ddp_barrier()
        return removed

    def recover_if_possible(self, *args, **kwargs):
        """Removes partial folders, then loads the chosen complete checkpoint."""
        self.remove_partial_checkpoints()
        return super().recover_if_possible(*args, **kwargs)


def _generator_states() -> dict:
    """This process's generators as tensors and plain Python values (``weights_only``)."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def _set_generator_states(state: dict):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _rank_and_world() -> tuple[int, int]:
    if is_distributed_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@functools.partial(register_checkpoint_hooks, save_on_main_only=False)
class RandomState:
    """The torch (CPU and CUDA), Python and NumPy random generators, as a recoverable.

    The saver runs on every rank (it gathers the ranks' states; the main
    process writes them); each rank restores its own. A checkpoint written by
    a different number of ranks restores rank ``r``'s state on rank ``r`` and
    leaves the others' generators as they are, with a warning.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "rng.ckpt"
    >>> state = RandomState()
    >>> state.save(path)
    >>> first = (torch.rand(1).item(), random.random(), np.random.rand())
    >>> state.load(path)
    >>> (torch.rand(1).item(), random.random(), np.random.rand()) == first
    True
    """

    @mark_as_saver
    def save(self, path):
        """Writes every rank's generator states (tensors and plain Python values only)."""
        rank, world_size = _rank_and_world()
        states = [_generator_states()]
        if world_size > 1:
            states = [None] * world_size
            torch.distributed.all_gather_object(states, _generator_states())
        if rank == 0:
            torch.save({"ranks": states}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restores this rank's generators (``weights_only`` loading)."""
        del end_of_epoch
        saved = torch.load(path, weights_only=True)
        states = saved["ranks"] if "ranks" in saved else [saved]  # one-process format
        rank, world_size = _rank_and_world()
        if len(states) != world_size:
            logger.warning(
                "%s holds the random state of %d ranks, this run has %d: the resumed run "
                "will not draw what the interrupted one would have",
                path,
                len(states),
                world_size,
            )
        if rank < len(states):
            _set_generator_states(states[rank])
