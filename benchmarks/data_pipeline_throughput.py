"""Throughput of the audio input pipeline alone: decode, resample, log-mel.

Writes clips with the durations of one of ``encoder_throughput.py``'s mixes as
44.1 kHz (``--file-rate``) 16-bit FLAC and WAV files, then reads them through a PyTorch
``DataLoader`` with 1 and 2 (``--workers``) processes, each clip as the pretraining
recipe's audio pipeline does (``soundfile`` decode, mix to mono,
``torchaudio.functional.resample`` to 16 kHz, then ``SLAPFbank``, which the
Brain itself runs on the training device), stage by stage. Reports
real audio-seconds per second, per worker, and how many workers it takes to
feed a training step at a given rate (``--train-rate``, audio-s/s, e.g. the
``audio_s_per_s`` of ``train_step_throughput.py``).

The clips are band-limited noise with tones (not silence, which FLAC
compresses to nothing). Each worker runs torch on one thread (DataLoader's
default). Worker start-up is not timed: the clock starts at the first clip.

Usage:
  python benchmarks/data_pipeline_throughput.py --train-rate 150 3000

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import soundfile
import torch
import torchaudio

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from encoder_throughput import sample_durations  # noqa: E402

from speechbrain_slap.lobes.features import SLAPFbank  # noqa: E402

SAMPLE_RATE = 16000


def write_clips(
    folder: Path, durations: list[float], fmt: str, file_rate: int, seed: int
) -> list[Path]:
    """Writes one 16-bit mono file at ``file_rate`` per duration; returns their paths."""
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for i, duration in enumerate(durations):
        n = round(duration * file_rate)
        t = torch.arange(n) / file_rate
        noise = torch.randn(n, generator=generator)
        # A one-pole low-pass keeps the noise audio-like (FLAC compresses it somewhat).
        smooth = torchaudio.functional.lfilter(
            noise[None], torch.tensor([1.0, -0.9]), torch.tensor([0.1, 0.0])
        )[0]
        tone = 0.1 * torch.sin(2 * math.pi * (220 + 40 * i) * t)
        audio = (0.3 * smooth + tone).clamp(-1, 1)
        path = folder / f"clip{i:04d}.{fmt}"
        soundfile.write(path, audio.numpy(), file_rate, format=fmt.upper(), subtype="PCM_16")
        paths.append(path)
    return paths


STAGES = ("decode", "decode+resample", "decode+resample+fbank")


class DecodedClips(torch.utils.data.Dataset):
    """Reads a list of audio files as the recipe does, up to ``stage``.

    Arguments
    ---------
    paths : list of Path
        Audio files.
    stage : str
        One of ``STAGES``: decode and mix to mono; then resample to 16 kHz;
        then ``SLAPFbank``.
    """

    def __init__(self, paths: list[Path], stage: str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        self.paths = paths
        self.resample = stage != "decode"
        self.compute_features = SLAPFbank(sample_rate=SAMPLE_RATE) if "fbank" in stage else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        audio, rate = soundfile.read(self.paths[index], dtype="float32", always_2d=True)
        sig = torch.from_numpy(audio).mean(dim=1)
        seconds = sig.numel() / rate
        if self.resample and rate != SAMPLE_RATE:
            sig = torchaudio.functional.resample(sig, rate, SAMPLE_RATE)
        if self.compute_features is not None:
            with torch.no_grad():
                self.compute_features(sig[None])
        return seconds


def measure(paths: list[Path], stage: str, workers: int) -> float:
    """Audio-seconds per second through a DataLoader with ``workers`` processes."""
    loader = torch.utils.data.DataLoader(
        DecodedClips(paths, stage), batch_size=None, num_workers=workers, prefetch_factor=4
    )
    start, seconds = None, 0.0
    for clip_seconds in loader:
        if start is None:  # worker start-up excluded
            start = time.perf_counter()
            continue
        seconds += clip_seconds
    return seconds / (time.perf_counter() - start)


def run(args) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    durations, total = [], 0.0
    # Enough clips that the first (start-up, not timed) is a small share for every worker count.
    while total < args.audio_seconds or len(durations) <= 8 * max(args.workers):
        (duration,) = sample_durations(args.mix, generator, 1)
        durations.append(duration)
        total += duration
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for fmt in args.formats:
            paths = write_clips(Path(folder), durations, fmt, args.file_rate, seed=1)
            for stage in STAGES:
                for workers in args.workers:
                    rate = measure(paths, stage, workers)
                    row = dict(
                        format=fmt,
                        stage=stage,
                        workers=workers,
                        audio_s_per_s=round(rate, 1),
                        per_worker=round(rate / workers, 1),
                    )
                    for train_rate in args.train_rate:
                        row[f"workers_for_{train_rate:g}"] = math.ceil(
                            train_rate / (rate / workers)
                        )
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    header = dict(
        mix=args.mix,
        clips=len(durations),
        audio_s=round(total, 1),
        load_avg_1min=round(os.getloadavg()[0], 2),  # a shared machine's load
        file_rate=args.file_rate,
        torch=torch.__version__,
        soundfile=soundfile.__version__,
        libsndfile=soundfile.__libsndfile_version__,
    )
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(header=header, rows=rows), indent=2))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mix", default="wavcaps", choices=["audiocaps", "clotho", "wavcaps"])
    parser.add_argument("--audio-seconds", type=float, default=1200.0, help="audio per measurement")
    parser.add_argument("--formats", nargs="+", default=["flac", "wav"], choices=["flac", "wav"])
    parser.add_argument(
        "--file-rate",
        type=int,
        default=44100,
        help="sample rate of the files (16000: no resampling)",
    )
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument(
        "--train-rate",
        nargs="*",
        type=float,
        default=[],
        help="training rates in audio-s/s to feed; adds a workers-needed column for each",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if any(w < 1 for w in args.workers):
        parser.error("--workers must be >= 1 (worker processes, not the main process)")
    return run(args)


if __name__ == "__main__":
    main()
