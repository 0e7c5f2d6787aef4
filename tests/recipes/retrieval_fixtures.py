"""Helpers of the AudioCaps, Clotho and WavCaps recipe tests.

Tiny fake copies of each dataset's official layout (exact file names, CSV
columns and JSON structure, see ``DATASETS.md``), a runner for the recipe
scripts in a subprocess, the command-line overrides that make the fine-tuning
yamls build the tiny model of the ``slap_model_folder`` fixture, and an
independent brute-force retrieval scorer.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[2]

# The architecture of tests/conftest.py's slap_model_folder: pretrain_tiny_synth.yaml
# with TINY_MODEL_OVERRIDES, spelled as the fine-tuning yamls' keys.
TINY_MODEL_ARGS = [
    "--embed_dim=64",
    "--depth=3",
    "--num_heads=4",
    "--mlp_hidden=128",
    "--n_prototypes=32",
    "--ssl_hidden=256",
    "--ssl_bottleneck=64",
    "--text_num_heads=4",
    "--text_freeze=True",
    "--text_max_length=64",
    "--vocab_size=80",
    "--max_caption_tokens=32",
    "--decoder_dim=128",
    "--decoder_layers=2",
    "--decoder_heads=4",
    "--decoder_ffn=256",
]
# A debug fine-tuning run: two epochs of two small batches, few workers.
DEBUG_TRAIN_ARGS = ["--debug", "--batch_seconds=4", "--num_workers=0", "--log_interval=1"]


def tiny_model_args() -> list[str]:
    """``TINY_MODEL_ARGS`` plus the packaged MiniLM as the text encoder source."""
    from speechbrain_slap.lobes.text_encoder import packaged_minilm_path

    return [*TINY_MODEL_ARGS, f"--text_source={packaged_minilm_path()}"]


def run_script(script: str, hparams: str, *args: str, timeout: int = 600):
    """Runs a recipe script from the repository root, one OpenMP thread, hub offline.

    Returns the ``subprocess.CompletedProcess``; asserts nothing.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, script, hparams, "--device=cpu", *args]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def check_exit(process) -> None:
    """Fails with the end of the script's output unless it exited with 0."""
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-6000:]


def import_recipe_module(relative_path: str):
    """A recipe script (e.g. ``recipes/Clotho/clotho_prepare.py``) imported as a module."""
    import importlib.util

    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_folder_with_teacher_step(source: Path, target: Path, step: int) -> Path:
    """A copy of a model folder (weights linked) whose EMA teacher is at ``step``.

    A pretrained teacher has run its whole momentum schedule; fine-tuning must
    restart it, which a teacher at step 0 would not show.
    """
    import torch

    from speechbrain_slap.model_folder import write_checksums

    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name not in ("teacher.ckpt", "SHA256SUMS"):
            (target / path.name).symlink_to(path)
    teacher = torch.load(source / "teacher.ckpt", weights_only=True)
    teacher["step"] = torch.tensor(step)
    torch.save(teacher, target / "teacher.ckpt")
    weights = [line.split()[1] for line in (source / "SHA256SUMS").read_text().splitlines()]
    write_checksums(target, weights)
    return target


def load_model(folder: Path):
    """``SLAP.from_hparams`` on a model folder, on the CPU."""
    from speechbrain_slap.inference import SLAP

    return SLAP.from_hparams(source=str(folder), run_opts={"device": "cpu"})


def captioning_metrics_available() -> bool:
    """pycocoevalcap and Java are both there (the captioning scores need them)."""
    import importlib.util
    import shutil

    return importlib.util.find_spec("pycocoevalcap") is not None and bool(shutil.which("java"))


def write_audio(path: Path, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """A distinct decaying tone plus noise (mono, float) at ``path``; returns the samples."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = np.sin(2 * np.pi * (200 + 150 * seed) * t) * np.exp(-t)
    audio = (0.3 * tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio, sample_rate)
    return audio


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A CSV as the official files are written (comma separated, quoted when needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fout:
        writer = csv.writer(fout)
        writer.writerow(header)
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV as dicts."""
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


# ---------------------------------------------------------------------------- AudioCaps
# (youtube_id, start_time, duration, has audio) per official split; IDs may start with "-".
AUDIOCAPS_CLIPS = {
    "train": [
        ("--0PQM4-hqg", 30, 1.2, True),
        ("a1B2c3D4e5F", 0, 1.0, True),
        ("x_Y-z0123ab", 70, 1.4, True),
        ("goneGONE000", 10, 1.0, False),
        ("Qw3rTy_uiop", 250, 1.1, True),
        ("zz9Zz9Zz9zz", 5, 0.9, True),
    ],
    "val": [
        ("vAl0000001a", 40, 1.0, True),
        ("vAl0000002b", 0, 1.3, True),
        ("vAlGONE003c", 20, 1.0, False),
    ],
    "test": [
        ("tEst000001a", 15, 1.5, True),
        ("-tEst00002b", 90, 1.1, True),
        ("tEstGONE03c", 30, 1.0, False),
        ("tEst000004d", 0, 1.2, True),
    ],
}


def audiocaps_captions(youtube_id: str, count: int) -> list[str]:
    """The fake captions of a clip; commas and quotes as in the real CSVs."""
    return [f'Sound {i} of {youtube_id}, then a "noise" fades.' for i in range(count)]


def make_fake_audiocaps(root: Path, naming: str = "aac") -> dict:
    """The official CSVs plus audio in the aac-datasets (``aac``) or WavCaps layout.

    Rows of val/test clips are interleaved (rows of a clip are not contiguous
    in the official files) and ``audiocap_id`` numbers captions. Returns
    ``{split: [(clip_id, captions, duration, has_audio)]}`` in first-row order.
    """
    expected, seed = {}, 0
    for split, clips in AUDIOCAPS_CLIPS.items():
        per_clip = 1 if split == "train" else 5
        rows, expected[split] = [], []
        for youtube_id, start, seconds, has_audio in clips:
            captions = audiocaps_captions(youtube_id, per_clip)
            expected[split].append((f"{youtube_id}_{start}", captions, seconds, has_audio))
            if has_audio:
                if naming == "aac":
                    path = root / "audio_32000Hz" / split / f"{youtube_id}_{start}.flac"
                else:
                    path = root / "waveforms" / split / f"Y{youtube_id}.wav"
                write_audio(path, seconds, 32000, seed)
            seed += 1
        # Caption i of every clip, then caption i + 1: clips' rows interleave.
        for i in range(per_clip):
            for youtube_id, start, *_ in clips:
                captions = audiocaps_captions(youtube_id, per_clip)
                rows.append([90000 + len(rows), youtube_id, start, captions[i]])
        write_csv(
            root / f"{split}.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows
        )
    return expected


# ---------------------------------------------------------------------------- Clotho
# (file name, duration, has audio) per official folder; names with spaces and commas.
CLOTHO_CLIPS = {
    "development": [
        ("Santa Motor.wav", 1.5, True),
        ("rain, on a tin roof.wav", 1.2, True),
        ("01 birds at dawn.wav", 1.0, True),
        ("lost file.wav", 1.0, False),
        ("Door  creak (old).wav", 1.3, True),
    ],
    "validation": [
        ("Kitchen sounds, morning.wav", 1.1, True),
        ("train passing by.wav", 1.4, True),
    ],
    "evaluation": [
        ("Bells of St. Mary.wav", 1.6, True),
        ("wind, leaves and a dog.wav", 1.0, True),
        ("missing, evaluation clip.wav", 1.0, False),
        ("Typing fast.wav", 1.2, True),
    ],
}


def clotho_captions(file_name: str) -> list[str]:
    """Five fake captions of a Clotho clip."""
    stem = file_name.removesuffix(".wav")
    return [f"Caption {i} of {stem}, with a comma." for i in range(1, 6)]


def make_fake_clotho(root: Path) -> dict:
    """Clotho v2.1: ``<folder>/<file name>`` WAVs (44.1 kHz) + ``clotho_captions_<folder>.csv``.

    Returns ``{folder: [(file_name, captions, duration, has_audio)]}``.
    """
    expected, seed = {}, 0
    for folder, clips in CLOTHO_CLIPS.items():
        rows, expected[folder] = [], []
        for file_name, seconds, has_audio in clips:
            captions = clotho_captions(file_name)
            expected[folder].append((file_name, captions, seconds, has_audio))
            rows.append([file_name, *captions])
            if has_audio:
                write_audio(root / folder / file_name, seconds, 44100, seed)
            seed += 1
        header = ["file_name", *(f"caption_{i}" for i in range(1, 6))]
        write_csv(root / f"clotho_captions_{folder}.csv", header, rows)
    return expected


# ---------------------------------------------------------------------------- WavCaps
def _wavcaps_items(source: str, ids: list[str]) -> list[dict]:
    """JSON items with each source's documented fields."""
    items = []
    for i, item_id in enumerate(ids):
        caption = f"A {source} sound number {i} is heard."
        if source == "AudioSet_SL":
            item = {"id": item_id, "caption": caption, "audio": "wav_path", "duration": 1.0}
        elif source == "BBC_Sound_Effects":
            item = {
                "id": item_id,
                "description": "Machines: engine",
                "category": "['Machines']",
                "caption": caption,
                "duration": 1.0,
                "audio": "wav_path",
                "download_link": f"https://example.org/{item_id}.wav",
            }
        elif source == "FreeSound":
            item = {
                "id": item_id,
                "file_name": f"{item_id}_fx.wav",
                "href": f"/people/x/sounds/{item_id}/",
                "tags": ["fx", "test"],
                "description": "a sound",
                "author": "x",
                "duration": 1.0,
                "download_link": f"https://example.org/{item_id}",
                "caption": caption,
                "audio": "wav_path",
            }
        else:  # SoundBible
            item = {
                "id": item_id,
                "title": "Bell",
                "description": "a bell",
                "author": "y",
                "href": f"{item_id}-Bell.html",
                "caption": caption,
                "duration": 1.0,
                "audio": "wav_path",
                "download_link": f"https://example.org/{item_id}.wav",
            }
        items.append(item)
    return items


WAVCAPS_IDS = {
    "AudioSet_SL": ["Yb0RFKhbpFJA.wav", "Y-abc_DEF123.wav", "YblackLISTED.wav"],
    "BBC_Sound_Effects": ["07066104", "07066105"],
    "FreeSound": ["180913", "999999", "424242"],  # 999999: blacklisted
    "SoundBible": ["2219", "1234"],
}
WAVCAPS_JSON = {
    "AudioSet_SL": "as_final.json",
    "BBC_Sound_Effects": "bbc_final.json",
    "FreeSound": "fsd_final.json",
    "SoundBible": "sb_final.json",
}
WAVCAPS_BLACKLIST = {"AudioSet": ["YblackLISTED.wav"], "FreeSound": [999999]}
WAVCAPS_MISSING = {("SoundBible", "1234")}


def make_fake_wavcaps(root: Path) -> dict:
    """WavCaps: ``json_files/<Source>/<x>_final.json``, a blacklist, ``audio/<Source>/<id>.flac``.

    Returns ``{(source, id): caption}`` of every item in the JSON files.
    """
    items, seed = {}, 0
    for source, ids in WAVCAPS_IDS.items():
        data = _wavcaps_items(source, ids)
        path = root / "json_files" / source / WAVCAPS_JSON[source]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"num_captions_per_audio": 1, "data": data}))
        for item in data:
            items[(source, item["id"])] = item["caption"]
            if (source, item["id"]) not in WAVCAPS_MISSING:
                stem = item["id"].removesuffix(".wav")
                write_audio(root / "audio" / source / f"{stem}.flac", 1.0, 32000, seed)
            seed += 1
    blacklist = root / "json_files" / "blacklist" / "blacklist_exclude_test_ac.json"
    blacklist.parent.mkdir(parents=True, exist_ok=True)
    blacklist.write_text(json.dumps(WAVCAPS_BLACKLIST))
    return items


# ---------------------------------------------------------------------------- scoring
def brute_force_recall(similarity: np.ndarray, text_to_audio: np.ndarray, k: int):
    """(t2a R@k, a2t R@k) by looping over queries, ties counted against the query."""
    n_texts, n_audios = similarity.shape
    t2a = [np.sum(similarity[t] >= similarity[t, text_to_audio[t]]) - 1 < k for t in range(n_texts)]
    a2t = []
    for a in range(n_audios):
        own = np.flatnonzero(text_to_audio == a)
        best = min(
            np.sum(np.delete(similarity[:, a], own) >= similarity[t, a]) for t in own
        )  # other texts scoring at least as high as this clip's best caption
        a2t.append(best < k)
    return float(np.mean(t2a)), float(np.mean(a2t))
