"""Shared fixtures of the pretraining integration tests.

A tiny generated corpus (12/4/4 clips of at most 4 s) is built once per
session, and so is the caption tokenizer; ``make_brain`` builds a ``SLAPBrain``
in-process from ``recipes/pretrain/hparams/pretrain_tiny_synth.yaml`` with a
small model (the frozen MiniLM text encoder stays).

The Brain tests run torch on one thread (``one_torch_thread``): on a 2-core machine that another job
keeps busy, two OpenMP threads are slowed down by two orders of magnitude (each
parallel region waits for a descheduled thread), one thread is not.
"""

import random

import pytest
import torch
from brain_fixtures import CORPUS, build_brain, load_recipe


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Folder of the generated 12/4/4-clip corpus (clips of 1 to 4 s)."""
    from speechbrain_slap.data.synthetic import generate_corpus

    folder = tmp_path_factory.mktemp("slap_synth")
    generate_corpus(folder, seed=0, progress=False, **CORPUS)
    return folder


@pytest.fixture(scope="session")
def recipe():
    """``recipes/pretrain/train.py`` imported as a module (it is not a package)."""
    return load_recipe()


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory):
    """One caption tokenizer for the session (the recipe reuses a trained model)."""
    return tmp_path_factory.mktemp("tokenizer")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Runs torch on one thread (see the module docstring), restored afterwards.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_brain(tiny_corpus, recipe, tokenizer_folder, tmp_path):
    """``make_brain(output_folder=None, opt_class=None, run_opts=None, **overrides)``.

    Returns ``(brain, hparams, datasets)``: a ``SLAPBrain`` built as
    ``train.py`` builds it (``total_steps`` of the LR schedule and the teacher
    set), the loaded hparams and the recipe's train/valid/test datasets.
    ``on_fit_start`` is not called.
    """

    def make(output_folder=None, opt_class=None, run_opts=None, **overrides):
        return build_brain(
            recipe,
            tiny_corpus,
            tokenizer_folder,
            output_folder or tmp_path / "out",
            opt_class=opt_class,
            run_opts=run_opts,
            **overrides,
        )

    return make


@pytest.fixture
def make_batch():
    """``make_batch(dataset, indices=(1, 6, 9, 11))``: a ``PaddedBatch`` of fixed clips.

    The default picks four of the shortest training clips (1.3 to 2.2 s); the
    random caption choice is seeded so every call gives the same batch.
    """
    from speechbrain.dataio.batch import PaddedBatch

    def make(dataset, indices=(1, 6, 9, 11)):
        random.seed(0)
        return PaddedBatch([dataset[i] for i in indices])

    return make


@pytest.fixture
def train_step():
    """``train_step(brain, batch)``: one ``fit_batch`` with the step counter ``fit`` keeps."""

    def step(brain, batch):
        brain.step += 1  # Brain._fit_train increments it before fit_batch
        return brain.fit_batch(batch)

    return step
