"""SpeechBrain's ``--compile`` in ``SLAPBrain``: parts compiled in place, with dynamic shapes.

* ``SLAPBrain._compile`` compiles in place (``nn.Module.compile``) the audio
  encoder's and the teacher's blocks, the text encoder's Hugging Face model and
  the caption decoder's layers, or the ``compile_module_keys`` given; no module
  is replaced by a wrapper and no state key changes (no ``_orig_mod.``).
* A compiled training step (inductor on the CPU) has the loss and gradients of
  the eager one.
* ``recipes/pretrain/train.py --debug --compile`` runs end to end (with
  ``--precision=bf16`` and the gradient cache, so that compiled graphs meet
  autocast and the cache's graph-free first pass); the checkpoint it writes
  loads strictly into eager modules, and its export into
  ``SLAP.from_hparams``, with the trained weights.

Inductor compiles with gcc on the CPU, for tens of seconds per graph: the
compiled tests run one tiny step each (and reuse the on-disk compile cache).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from brain_fixtures import capture_step_gradients, micro_batches
from hyperpyyaml import load_hyperpyyaml

from speechbrain_slap.inference import SLAP
from speechbrain_slap.lobes.audio_encoder import RECOMPILE_LIMIT
from speechbrain_slap.model_folder import export_model, find_best_checkpoint

REPO = Path(__file__).resolve().parents[2]
DEFAULT_COMPILED = {
    *(f"audio_encoder.blocks.{i}" for i in range(3)),
    *(f"teacher.modules_ema.audio_encoder.blocks.{i}" for i in range(3)),
    "text_encoder.model",
    *(f"caption_decoder.layers.layers.{i}" for i in range(2)),
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compiled_parts(brain) -> set[str]:
    """Names of the submodules compiled in place (``nn.Module.compile``)."""
    return {
        name
        for name, module in brain.modules.named_modules()
        if getattr(module, "_compiled_call_impl", None) is not None
    }


def state_keys(brain) -> dict[str, list[str]]:
    return {name: list(module.state_dict()) for name, module in brain.modules.items()}


def test_compile_is_in_place_and_keeps_state_keys(make_brain, tmp_path):
    """--compile: the default parts compiled in place; modules and state keys as eager."""
    brain, _, _ = make_brain(output_folder=tmp_path / "c", run_opts={"compile": True})
    modules, keys = dict(brain.modules.items()), state_keys(brain)
    brain._compile()
    assert compiled_parts(brain) == DEFAULT_COMPILED
    assert all(brain.modules[name] is module for name, module in modules.items())
    assert state_keys(brain) == keys
    assert not any("_orig_mod" in key for names in keys.values() for key in names)
    # The block code's variants (window, grad, student/teacher, precision, padding) fit.
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT


def test_compile_module_keys_and_the_yaml_switch(make_brain, tmp_path):
    """compile_module_keys picks the modules (a module without blocks compiles whole);
    an unknown key fails early; the tiny yaml's compile: False compiles nothing."""
    brain, _, _ = make_brain(
        output_folder=tmp_path / "keys",
        run_opts={"compile": True, "compile_module_keys": ["audio_pooling", "audio_encoder"]},
    )
    brain._compile()
    assert compiled_parts(brain) == {"audio_pooling"} | {
        f"audio_encoder.blocks.{i}" for i in range(3)
    }
    brain, _, _ = make_brain(
        output_folder=tmp_path / "unknown",
        run_opts={"compile": True, "compile_module_keys": ["no_such_module"]},
    )
    with pytest.raises(ValueError, match="no_such_module"):
        brain._compile()
    brain, _, _ = make_brain(output_folder=tmp_path / "off")
    assert brain.compile is False  # pretrain_tiny_synth.yaml
    brain._compile()
    assert compiled_parts(brain) == set()


def _no_dropout(brain):
    """Compiled dropout draws other numbers than eager dropout: turn it off to compare."""
    for module in brain.modules.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0


@pytest.mark.timeout(400)
def test_compiled_step_equals_eager(make_brain, train_step, tmp_path):
    """One fit_batch with all three losses, compiled vs eager: loss and gradients agree."""
    eager, _, datasets = make_brain(output_folder=tmp_path / "eager", spec_augment=[])
    compiled, _, _ = make_brain(
        output_folder=tmp_path / "compiled", spec_augment=[], run_opts={"compile": True}
    )
    (batch, _), _ = micro_batches(datasets["train"])
    results = []
    for brain in (eager, compiled):
        _no_dropout(brain)
        brain.on_fit_start()  # compiles (the compiled brain)
        captured = capture_step_gradients(brain)
        torch.manual_seed(3)  # the same token mask
        loss = train_step(brain, batch)
        results.append((float(loss), dict(brain.loss_stats), captured[0]))
    assert compiled_parts(compiled) == DEFAULT_COMPILED
    (loss, stats, grads), (compiled_loss, compiled_stats, compiled_grads) = results
    assert compiled_loss == pytest.approx(loss, rel=1e-4)
    for key, value in stats.items():
        assert compiled_stats[key] == pytest.approx(value, rel=1e-4), key
    assert compiled_grads.keys() == grads.keys()
    for name, grad in grads.items():
        error = float((compiled_grads[name] - grad).norm())
        assert error <= 1e-3 * max(float(grad.norm()), 1e-8), (name, error)


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory):
    """``train.py ... --debug --compile`` (bf16, gradient cache) on the tiny corpus; its output."""
    root = tmp_path_factory.mktemp("compiled_recipe")
    output = root / "out"
    command = [
        sys.executable,
        "recipes/pretrain/train.py",
        "recipes/pretrain/hparams/pretrain_tiny_synth.yaml",
        "--debug",
        "--debug_persistently",
        "--compile",
        "--precision=bf16",
        "--grad_accumulation_factor=2",
        "--contrastive_gradient_cache=True",
        "--batch_seconds=10",  # two batches per debug epoch: one step of 2 micro-batches
        f"--data_folder={root / 'corpus'}",
        f"--output_folder={output}",
        "--n_train=12",
        "--n_valid=4",
        "--n_test=4",
        "--corpus_max_duration=4.0",
        "--vocab_size=80",
        "--embed_dim=64",
        "--depth=3",
        "--mlp_hidden=128",
        "--n_prototypes=32",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=540
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-6000:]
    assert "compiled in place (dynamic shapes): audio_encoder, teacher" in process.stdout
    records = [json.loads(line) for line in (output / "train_steps.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2]  # one cached step per debug epoch
    assert all(math.isfinite(r["loss"]) and r["clap_negatives"] >= 2 for r in records)
    return output


@pytest.mark.timeout(600)
def test_compiled_run_checkpoint_loads_into_eager_modules(compiled_run):
    """Every checkpointed module of the compiled run loads strictly into its eager twin."""
    checkpoint = find_best_checkpoint(compiled_run / "save")
    with open(compiled_run / "hyperparams.yaml") as fin:
        hparams = load_hyperpyyaml(fin)  # eager modules of the run's own yaml
    for name in ("audio_encoder", "teacher", "text_encoder", "caption_decoder", "audio_pooling"):
        state = torch.load(checkpoint / f"{name}.ckpt", weights_only=True)
        assert not any("_orig_mod" in key for key in state), name
        hparams[name].load_state_dict(state, strict=True)
        for key, value in hparams[name].state_dict().items():
            assert torch.equal(value, state[key]), (name, key)


@pytest.mark.timeout(600)
def test_compiled_run_exports_to_slap_from_hparams(compiled_run, tmp_path):
    """The export of the compiled run loads with SLAP.from_hparams, with the trained weights."""
    checkpoint = find_best_checkpoint(compiled_run / "save")  # the one export_model takes
    folder = export_model(compiled_run, tmp_path / "model")
    model = SLAP.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    trained = torch.load(checkpoint / "audio_encoder.ckpt", weights_only=True)
    for key, value in model.mods.audio_encoder.state_dict().items():
        assert torch.equal(value, trained[key]), key
    embedding = model.encode_waveforms([torch.randn(16000)])
    assert embedding.shape == (1, 64) and torch.isfinite(embedding).all()
