"""The worked example ``recipes/examples/encoder_in_your_yaml``: SLAP inside another yaml.

``train.py`` runs end to end in a subprocess twice on a tiny generated data set
(8/4/4 clips, two epochs), starting from the session's tiny SLAP model folder:
once with the encoder frozen and once fine-tuned. In-process tests check that
the yaml's frame features are those of ``SLAPFrameEncoder`` built from the
model folder independently, and that a yaml describing another architecture
is refused before any weight is loaded.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml import YAML

from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder
from speechbrain_slap.lobes.features import SLAPFbank, pad_waveforms
from speechbrain_slap.lobes.frame_encoder import SLAPFrameEncoder

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "recipes" / "examples" / "encoder_in_your_yaml"
YAML_FILE = EXAMPLE / "hparams" / "emotion_style.yaml"
DATA = {"n_train": 8, "n_valid": 4, "n_test": 4, "min_duration": 0.5, "max_duration": 1.5}
EPOCHS = 2


def architecture_overrides(model_folder: Path) -> dict:
    """The example yaml's encoder keys, copied from the model folder's hyperparams.yaml."""
    tree = YAML(typ="rt").load((model_folder / "hyperparams.yaml").read_text())
    encoder, features = tree["audio_encoder"], tree["compute_features"]
    overrides = {
        key: encoder[key]
        for key in ("n_mels", "embed_dim", "depth", "num_heads", "mlp_hidden", "local_attention")
    }
    overrides.update(feature_mean=float(features["mean"]), feature_std=float(features["std"]))
    return overrides


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def recipe():
    """``train.py`` imported as a module (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(
        "encoder_in_your_yaml_train", EXAMPLE / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(slap_model_folder, tmp_path_factory):
    """Output folders of a frozen and a fine-tuned run on the same generated data."""
    root = tmp_path_factory.mktemp("encoder_in_your_yaml")
    arch = architecture_overrides(slap_model_folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    outputs = {}
    for name, freeze in (("frozen", True), ("finetuned", False)):
        output = root / name
        command = [
            sys.executable,
            str(EXAMPLE / "train.py"),
            str(YAML_FILE),
            f"--pretrained_model={slap_model_folder}",
            f"--freeze_encoder={freeze}",
            f"--data_folder={root / 'data'}",
            f"--output_folder={output}",
            f"--number_of_epochs={EPOCHS}",
            "--batch_size=4",
            "--noprogressbar",
            *(f"--{key}={value}" for key, value in {**DATA, **arch}.items()),
        ]
        # cwd: nothing may be written outside the given folders.
        result = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{name} run failed:\n{result.stderr[-4000:]}"
        outputs[name] = output
    assert sorted(p.name for p in root.iterdir()) == ["data", "finetuned", "frozen"]
    return outputs


def only_checkpoint(output: Path) -> Path:
    (checkpoint,) = (output / "save").glob("CKPT+*")
    return checkpoint


@pytest.mark.parametrize("name", ["frozen", "finetuned"])
def test_run_writes_checkpoint_and_logs(runs, name):
    """One kept checkpoint with the encoder and the head; train and test lines in the log."""
    output = runs[name]
    checkpoint = only_checkpoint(output)
    for file in ("audio_encoder.ckpt", "classifier.ckpt", "counter.ckpt", "optimizer.ckpt"):
        assert (checkpoint / file).is_file(), file
    classifier = load_state(checkpoint / "classifier.ckpt")
    assert classifier["w.weight"].shape == (4, 2 * 64)
    labels = (output / "save" / "label_encoder.txt").read_text()
    assert all(f"'{style}'" in labels for style in ("flat", "rising", "falling", "vibrato"))
    log = (output / "train_log.txt").read_text().splitlines()
    epochs = [line for line in log if line.startswith("epoch:")]
    assert len(epochs) == EPOCHS and all("valid error_rate" in line for line in epochs)
    (test_line,) = [line for line in log if "test error_rate" in line]
    error_rate = float(re.search(r"test error_rate: ([0-9.e+-]+)", test_line).group(1))
    assert error_rate in {0.0, 0.25, 0.5, 0.75, 1.0}  # 4 test clips
    assert (output / "log.txt").is_file() and (output / "hyperparams.yaml").is_file()


def test_frozen_encoder_keeps_the_model_folder_weights(runs, slap_model_folder):
    """Frozen: the encoder in the checkpoint is the model folder's, bit for bit."""
    pretrained = load_state(slap_model_folder / "audio_encoder.ckpt")
    trained = load_state(only_checkpoint(runs["frozen"]) / "audio_encoder.ckpt")
    assert trained.keys() == pretrained.keys()
    for key, value in pretrained.items():
        assert torch.equal(trained[key], value), key


def test_fine_tuned_encoder_moves_away_from_the_model_folder(runs, slap_model_folder):
    """Fine-tuned: every weight that gets a gradient (all but the mask token) changed."""
    pretrained = load_state(slap_model_folder / "audio_encoder.ckpt")
    trained = load_state(only_checkpoint(runs["finetuned"]) / "audio_encoder.ckpt")
    assert trained.keys() == pretrained.keys()
    changed = {key for key, value in pretrained.items() if not torch.equal(trained[key], value)}
    weights = {key for key in pretrained if key.endswith("weight")}
    assert weights <= changed
    assert "mask_token" not in changed  # unused outside self-supervised pretraining


def load_example_yaml(model_folder: Path, output: Path, **overrides) -> tuple[dict, dict]:
    """The example hparams, loaded with the model folder's architecture and ``overrides``."""
    values = {
        "pretrained_model": str(model_folder),
        "output_folder": str(output),
        "data_folder": str(output / "data"),
        **architecture_overrides(model_folder),
        **overrides,
    }
    with open(YAML_FILE) as fin:
        return load_hyperpyyaml(fin, values), values


def test_yaml_frame_features_equal_slap_frame_encoder(recipe, slap_model_folder, tmp_path):
    """The yaml pipeline's frames and lengths = SLAPFrameEncoder built from the model folder.

    The batch is padded as SpeechBrain's PaddedBatch pads (to the longest clip,
    not a multiple of the hop); the reference pads with ``pad_waveforms``.
    """
    hparams, overrides = load_example_yaml(slap_model_folder, tmp_path)
    recipe.load_pretrained_encoder(hparams, YAML_FILE, overrides)
    brain = recipe.StyleBrain(
        modules=hparams["modules"], hparams=hparams, run_opts={"device": "cpu"}
    )
    clips = [0.1 * torch.randn(n) for n in (1601, 11687, 24037)]
    wavs = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    wav_lens = torch.tensor([clip.numel() / wavs.shape[1] for clip in clips])
    brain.modules.eval()
    with torch.no_grad():
        frames, frame_lens = brain.compute_frames(wavs, wav_lens)

    tree = YAML(typ="rt").load((slap_model_folder / "hyperparams.yaml").read_text())
    fbank = SLAPFbank(**dict(tree["compute_features"]))
    encoder = SLAPAudioEncoder(**dict(tree["audio_encoder"]))
    encoder.load_state_dict(load_state(slap_model_folder / "audio_encoder.ckpt"))
    reference = SLAPFrameEncoder(encoder, freeze=True).eval()
    ref_wavs, ref_lens = pad_waveforms(clips)
    with torch.no_grad():
        ref_feats = fbank(ref_wavs)
        ref_frames = reference(ref_feats, ref_lens)
    assert frames.shape == ref_frames.shape == (3, 9, 64)
    assert (frames - ref_frames).abs().max() <= 1e-5
    torch.testing.assert_close(frame_lens, reference.output_lengths(ref_feats, ref_lens))


@pytest.mark.parametrize(
    "override, problem",
    [
        ({"num_heads": 2}, "audio_encoder.num_heads: 2 here, 4 in the model folder"),
        ({"feature_std": 10.0}, "compute_features.std: 10.0 here, 12.0 in the model folder"),
        ({"depth": 6}, "audio_encoder.depth: 6 here, 3 in the model folder"),
    ],
)
def test_yaml_of_another_architecture_is_refused(
    recipe, slap_model_folder, tmp_path, override, problem
):
    """A yaml that disagrees with the model folder fails before loading, naming the key."""
    hparams, overrides = load_example_yaml(slap_model_folder, tmp_path, **override)
    before = {k: v.clone() for k, v in hparams["audio_encoder"].state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(problem)):
        recipe.load_pretrained_encoder(hparams, YAML_FILE, overrides)
    after = hparams["audio_encoder"].state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_attention_backend_may_differ(recipe, slap_model_folder, tmp_path):
    """The attention kernel is not part of the model: another backend loads fine."""
    hparams, overrides = load_example_yaml(slap_model_folder, tmp_path, attention_backend="sdpa")
    recipe.load_pretrained_encoder(hparams, YAML_FILE, overrides)
    pretrained = load_state(slap_model_folder / "audio_encoder.ckpt")
    loaded = hparams["audio_encoder"].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in pretrained.items())
