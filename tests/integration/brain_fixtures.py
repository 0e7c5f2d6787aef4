"""The tiny ``SLAPBrain`` of the pretraining integration tests, as plain functions.

``conftest.py`` turns them into fixtures (``make_brain``); processes that
pytest does not run (the DDP workers of ``test_gradient_cache.py``) call them
directly. The Brain is built from
``recipes/pretrain/hparams/pretrain_tiny_synth.yaml`` with a small model (the
frozen MiniLM text encoder stays) on the tiny generated corpus. Also the
helpers that feed it fixed micro-batches and capture its step's gradients.
"""

import importlib.util
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "pretrain" / "train.py"
TINY_YAML = REPO / "recipes" / "pretrain" / "hparams" / "pretrain_tiny_synth.yaml"

# The tiny corpus, as generate_corpus and the recipe's overrides spell it.
CORPUS = {"n_train": 12, "n_valid": 4, "n_test": 4, "max_duration": 4.0}
# SentencePiece accepts at most 104 pieces on this corpus's captions.
VOCAB_SIZE = 80
SMALL_MODEL = {"embed_dim": 64, "depth": 3, "mlp_hidden": 128, "n_prototypes": 32}
RUN_OPTS = {"device": "cpu", "noprogressbar": True}
TOTAL_STEPS = 100


def load_recipe():
    """``recipes/pretrain/train.py`` imported as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("slap_pretrain_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_brain(
    recipe, corpus, tokenizer_folder, output_folder, /, opt_class=None, run_opts=None, **overrides
):
    """A ``SLAPBrain`` built as ``train.py`` builds it; ``(brain, hparams, datasets)``.

    ``total_steps`` of the LR schedule and the teacher are set;
    ``on_fit_start`` is not called. ``overrides`` win over the defaults, also
    ``data_folder`` and ``tokenizer_folder`` (the positional arguments are
    positional-only for that).
    """
    from hyperpyyaml import load_hyperpyyaml

    output = Path(output_folder)
    output.mkdir(parents=True, exist_ok=True)
    config = {
        "data_folder": str(corpus),
        "output_folder": str(output),
        "tokenizer_folder": str(tokenizer_folder),
        "n_train": CORPUS["n_train"],
        "n_valid": CORPUS["n_valid"],
        "n_test": CORPUS["n_test"],
        "corpus_max_duration": CORPUS["max_duration"],
        "vocab_size": VOCAB_SIZE,
        "number_of_epochs": 1,
        "batch_seconds": 20,
        "max_caption_tokens": 32,
        **SMALL_MODEL,
        **overrides,
    }
    with open(TINY_YAML) as fin:
        hparams = load_hyperpyyaml(fin, config)
    tokenizer = recipe.prepare_tokenizer(hparams)
    datasets = recipe.dataio_prepare(hparams, tokenizer)
    hparams["lr_schedule"].total_steps = TOTAL_STEPS
    hparams["teacher"].total_steps = TOTAL_STEPS
    brain = recipe.SLAPBrain(
        modules=hparams["modules"],
        opt_class=opt_class or hparams["opt_class"],
        hparams=hparams,
        run_opts={**RUN_OPTS, **(run_opts or {})},
        checkpointer=hparams["checkpointer"],
    )
    return brain, hparams, datasets


def examples(dataset, groups) -> list[list[dict]]:
    """The items of each group of indices (the random caption choice seeded)."""
    random.seed(0)
    return [[dataset[i] for i in group] for group in groups]


def micro_batches(dataset, groups=((1, 6), (9, 11))):
    """One ``PaddedBatch`` per group of indices, and one of their union (the same items)."""
    from speechbrain.dataio.batch import PaddedBatch

    items = examples(dataset, groups)
    return [PaddedBatch(group) for group in items], PaddedBatch(sum(items, []))


def capture_step_gradients(brain) -> list[dict]:
    """Records every parameter's gradient when each optimizer step starts."""
    captured = []
    optimizers_step = brain.optimizers_step

    def capture():
        captured.append(
            {
                name: p.grad.detach().clone()
                for name, p in brain.modules.named_parameters()
                if p.grad is not None
            }
        )
        optimizers_step()

    brain.optimizers_step = capture
    return captured
