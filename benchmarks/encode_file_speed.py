"""CPU speed of ``SLAP.encode_file`` for the tiny and base architectures.

For each architecture (``speechbrain_slap/hparams/slap_tiny.yaml``, ``slap_base.yaml``)
a model folder with random weights is built the way ``slap export`` builds one:
``recipes/pretrain/hparams/pretrain_tiny_synth.yaml`` with the architecture
yaml's values (embedding width, depth, heads, ...) goes through
``speechbrain_slap.model_folder.inference_yaml``, every module's state dict is saved
under its model-folder name, with a SentencePiece tokenizer, ``SHA256SUMS``
and a README. The folder is then loaded with ``SLAP.from_hparams`` and
``encode_file`` is timed on generated WAV files (reading, resampling check,
features, encoder, pooling: the path a user runs). Weights do not change the
cost, so random ones give the speed of a trained model.

Reported: seconds of audio encoded per second of wall time (median of
``--repeats`` calls after one warm-up call), with the torch thread count and the
machine's load average before and after, since other jobs on the machine slow
the numbers down.

Usage::

    python benchmarks/encode_file_speed.py                  # tiny and base, 10 s and 30 s
    python benchmarks/encode_file_speed.py --sizes tiny --durations 10 --repeats 3

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import csv
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import soundfile
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from ruamel.yaml import YAML

from speechbrain_slap.data.synthetic import zero_shot_prompts
from speechbrain_slap.demo import generated_clip
from speechbrain_slap.hparams import ARCHITECTURE_KEYS, architecture_file
from speechbrain_slap.inference import SLAP
from speechbrain_slap.lobes.caption_decoder import train_caption_tokenizer
from speechbrain_slap.model_folder import inference_yaml, write_checksums
from speechbrain_slap.model_folder.export import MODEL_KEYS

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURES = {name: architecture_file(f"slap_{name}") for name in ("tiny", "base")}
# The text encoder, caption decoder and CLAP loss come from the pretraining yaml.
TRAINING_YAML = REPO / "recipes/pretrain/hparams/pretrain_tiny_synth.yaml"


def build_model_folder(architecture_yaml: Path, folder: Path, seed: int = 0) -> Path:
    """Writes a SLAP model folder with random weights for an architecture yaml.

    Arguments
    ---------
    architecture_yaml : Path
        ``hparams/slap_*.yaml`` (features, audio encoder, pooling).
    folder : Path
        Model folder to create (must not exist).
    seed : int
        Seed of the random initialisation.

    Returns
    -------
    Path
        ``folder``, loadable with ``SLAP.from_hparams``.
    """
    folder.mkdir(parents=True)
    work = folder.parent / f"{folder.name}_build"
    work.mkdir()

    # A caption tokenizer (characters of the zero-shot prompts): loading needs one.
    captions = work / "captions.csv"
    with open(captions, "w", newline="") as fout:
        csv.writer(fout).writerows([["ID", "caption"], *enumerate(zero_shot_prompts())])
    tokenizer = train_caption_tokenizer(captions, work / "tokenizer", model_type="char")

    # The pretraining yaml with the architecture's values: the yaml a recipe would save.
    yaml = YAML()
    with open(architecture_yaml) as fin:
        architecture = yaml.load(fin)
    overrides = {key: architecture[key] for key in ARCHITECTURE_KEYS if key in architecture}
    overrides.update(
        vocab_size=tokenizer.sp.get_piece_size(),
        data_folder=str(work),
        output_folder=str(work / "output"),
    )
    with open(TRAINING_YAML) as fin:
        resolved = resolve_references(fin, overrides)
    training_yaml = work / "training.yaml"
    training_yaml.write_text(resolved.getvalue())

    text = inference_yaml(training_yaml)
    (folder / "hyperparams.yaml").write_text(text)
    torch.manual_seed(seed)
    hparams = load_hyperpyyaml(text)
    names = []
    for key in MODEL_KEYS[1:]:  # compute_features has no weights
        torch.save(hparams[key].state_dict(), folder / f"{key}.ckpt")
        names.append(f"{key}.ckpt")
    shutil.copyfile(tokenizer.prefix_model_file + ".model", folder / "tokenizer.ckpt")
    names.append("tokenizer.ckpt")
    write_checksums(folder, [*names, "hyperparams.yaml"])
    (folder / "README.md").write_text(
        f"# SLAP model with random weights\n\nArchitecture `{architecture_yaml.name}`, "
        f"seed {seed}: for timing only (`benchmarks/encode_file_speed.py`).\n"
    )
    shutil.rmtree(work)
    return folder


def time_encode_file(model: SLAP, path: Path, repeats: int) -> float:
    """Median wall time in seconds of ``model.encode_file(path)`` after one warm-up call."""
    model.encode_file(path)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode_file(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine is."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wait_for_quiet(threshold: float, patience: float = 600.0) -> None:
    """Sleeps until the 1-minute load average is below ``threshold`` (at most ``patience`` s)."""
    deadline = time.monotonic() + patience
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        time.sleep(10)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(ARCHITECTURES), default=["tiny", "base"])
    parser.add_argument("--durations", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="LOAD",
        help="first wait (up to 10 min) until the 1-minute load average is below LOAD",
    )
    args = parser.parse_args(argv)

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(
        f"torch threads: {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), device {args.device}"
    )
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)
    print(f"load average (1, 5, 15 min) before: {load_average()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = {}
        for i, duration in enumerate(args.durations):
            clips[duration] = tmp / f"clip_{duration:g}s.wav"
            soundfile.write(clips[duration], generated_clip(duration, seed=i), 16000)
        for size in args.sizes:
            folder = build_model_folder(ARCHITECTURES[size], tmp / f"slap_{size}")
            model = SLAP.from_hparams(source=str(folder), run_opts={"device": args.device})
            params = sum(p.numel() for p in model.mods.audio_encoder.parameters())
            for duration, path in clips.items():
                load = os.getloadavg()[0]
                seconds = time_encode_file(model, path, args.repeats)
                rows.append((size, params / 1e6, duration, seconds, duration / seconds, load))
                print(f"  {size}: {duration:g} s clip in {seconds:.3f} s", flush=True)
            del model
    print(f"load average (1, 5, 15 min) after: {load_average()}")
    print()
    print("| architecture | encoder params | clip | encode_file | audio s / s | load avg (1 min) |")
    print("|---|---|---|---|---|---|")
    for size, params, duration, seconds, speed, load in rows:
        print(
            f"| {size} | {params:.1f}M | {duration:g} s | {seconds:.3f} s | {speed:.1f} "
            f"| {load:.2f} |"
        )


if __name__ == "__main__":
    main()
