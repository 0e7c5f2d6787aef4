"""Shared fixtures for the speechbrain-slap test suite.

Everything here is CPU, fp32 and seeded; the tiny encoder shape matches the
``SLAPAudioEncoder`` docstring example so the whole suite stays fast.
Helpers are exposed as fixtures that return functions, so test modules never
import from ``conftest``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

HOP = 160


def _load_yaml(name: str) -> dict:
    """Loads the shipped architecture ``speechbrain_slap/hparams/<name>.yaml``."""
    from hyperpyyaml import load_hyperpyyaml

    from speechbrain_slap.hparams import architecture_file

    with open(architecture_file(name)) as fin:
        return load_hyperpyyaml(fin)


def _pad_batch(waves, extra: int = 0):
    """Zero-pads 1-D waveforms to a batch whose length is a multiple of the hop.

    ``extra`` adds more zero samples at the end (a multiple of the hop keeps the
    batch length a multiple of the hop). Returns ``(wavs, wav_lens)`` with
    ``wav_lens = n / S`` in float32, as SpeechBrain data loaders produce.
    """
    longest = max(w.numel() for w in waves)
    total = -(-longest // HOP) * HOP + extra
    wavs = torch.zeros(len(waves), total)
    for i, w in enumerate(waves):
        wavs[i, : w.numel()] = w
    lens = torch.tensor([w.numel() / total for w in waves], dtype=torch.float32)
    return wavs, lens


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)


@pytest.fixture
def load_yaml():
    """``load_yaml(name)`` loads ``hparams/<name>.yaml``."""
    return _load_yaml


@pytest.fixture(scope="session")
def base_hparams():
    """The base model (113M-parameter encoder), built once per session."""
    torch.manual_seed(0)
    return _load_yaml("slap_base")


@pytest.fixture
def pad_batch():
    """``pad_batch(waves, extra=0) -> (wavs, wav_lens)``, S a multiple of 160."""
    return _pad_batch


@pytest.fixture
def make_encoder():
    """Factory for a seeded tiny ``SLAPAudioEncoder`` (fp32, eval mode, sdpa)."""
    from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder

    def make(depth=3, local_attention=True, backend="sdpa", seed=0):
        torch.manual_seed(seed)
        encoder = SLAPAudioEncoder(
            embed_dim=64,
            depth=depth,
            num_heads=4,
            mlp_hidden=128,
            local_attention=local_attention,
            attention_backend=backend,
        )
        return encoder.eval()

    return make


# Small enough for a fast suite, big enough to exercise every part of the model.
TINY_MODEL_OVERRIDES = {
    "embed_dim": 64,
    "depth": 3,
    "mlp_hidden": 128,
    "n_prototypes": 32,
    "vocab_size": 80,
    "max_caption_tokens": 32,
}


def _make_recipe_output(root: Path, metrics: dict | None = None) -> Path:
    """A pretraining recipe output folder, as ``recipes/pretrain/train.py`` leaves it.

    The tiny model of ``pretrain_tiny_synth.yaml`` (``TINY_MODEL_OVERRIDES``)
    with its seeded initial weights, the recipe's caption tokenizer trained on a
    generated 12-clip corpus, one checkpoint (meta ``mean_R@1``) and, when
    ``metrics`` is given, ``test_results.json``.
    """
    import importlib.util
    import json

    from hyperpyyaml import load_hyperpyyaml, resolve_references

    from speechbrain_slap.data.synthetic import generate_corpus

    repo = Path(__file__).resolve().parents[1]
    yaml_file = repo / "recipes" / "pretrain" / "hparams" / "pretrain_tiny_synth.yaml"
    spec = importlib.util.spec_from_file_location(
        "slap_pretrain_recipe_for_export", repo / "recipes" / "pretrain" / "train.py"
    )
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)

    corpus, output = root / "corpus", root / "output"
    generate_corpus(
        corpus, seed=0, n_train=12, n_valid=2, n_test=2, max_duration=4.0, progress=False
    )
    overrides = {"data_folder": str(corpus), "output_folder": str(output), **TINY_MODEL_OVERRIDES}
    output.mkdir(parents=True)
    with open(yaml_file) as fin:
        resolved = resolve_references(fin, overrides)
    (output / "hyperparams.yaml").write_text(resolved.getvalue())
    torch.manual_seed(0)
    with open(output / "hyperparams.yaml") as fin:
        hparams = load_hyperpyyaml(fin)
    recipe.prepare_tokenizer(hparams)
    hparams["checkpointer"].save_checkpoint(meta={"mean_R@1": 0.25})
    if metrics is not None:
        (output / "test_results.json").write_text(json.dumps(metrics))
    return output


@pytest.fixture(scope="session")
def recipe_output(tmp_path_factory):
    """A tiny pretraining recipe output (see ``_make_recipe_output``)."""
    return _make_recipe_output(
        tmp_path_factory.mktemp("recipe_output"), metrics={"t2a_R@1": 0.125, "a2t_R@1": 0.25}
    )


@pytest.fixture(scope="session")
def slap_model_folder(recipe_output, tmp_path_factory):
    """A SLAP model folder exported from ``recipe_output`` with ``export_model``."""
    from speechbrain_slap.model_folder import export_model

    return export_model(recipe_output, tmp_path_factory.mktemp("models") / "slap_tiny")
