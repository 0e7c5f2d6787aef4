"""CPU speed: ``SLAP.encode_files`` (base model) beside LAION-CLAP's HTSAT-tiny audio tower.

Both models get random weights (weights do not change the cost) and the same
variable-duration audio: ``--clips`` clips of seeded durations drawn uniformly
in ``[--min-seconds, --max-seconds]`` (``speechbrain_slap.demo.generated_clip``
sounds), written as 16 kHz WAV files.

* **SLAP base**: a model folder built from ``speechbrain_slap/hparams/slap_base.yaml``
  (``encode_file_speed.build_model_folder``), loaded with ``SLAP.from_hparams``;
  timed is ``encode_files(paths)``, the whole path a user runs: reading the
  files, log-mel features, the packed encoder (no padding; clips over 29.91 s
  in windows) and pooling, batches of ``batch_seconds`` of audio.
* **HTSAT-tiny**: ``transformers.ClapAudioModelWithProjection`` built from
  the default ``ClapAudioConfig`` (the HTSAT-tiny tower of
  ``laion/clap-htsat-unfused``, no fusion; nothing is downloaded). HTSAT
  takes fixed 10 s inputs at 48 kHz, so each clip is resampled to 48 kHz and
  cut into 10 s windows, the last one zero-padded: nothing is dropped, and a
  1 s clip costs a whole window. The clip embedding is the mean of its window
  embeddings. Timed is the tower alone (``input_features`` -> embeddings, in
  batches of ``--htsat-batch`` windows); its log-mel features are computed
  before the clock starts (``ClapFeatureExtractor``), which favours HTSAT.

The two run side by side in one process, alternating (SLAP, HTSAT, SLAP, ...)
with the same torch thread count, ``--repeats`` times each after one warm-up
call; the table gives the median of each, the ratio of SLAP's speed to
HTSAT's at the same precision (above 1: SLAP is faster), and the ratio to
HTSAT in fp32, the way LAION-CLAP runs it (for bf16 and int8 rows HTSAT in
fp32 is timed in the same rounds); ratios are medians of per-round ratios.
``--precision`` adds rows of SLAP and HTSAT under bf16 autocast, or with int8
linear layers (``speechbrain_slap.precision.int8_copy``, applied to both
models). The warm-up call also counts each model's FLOPs of the matmuls
(``torch.utils.flop_counter``; not those inside SDPA, and int8 kernels are not
counted: the same matmuls as fp32) per second of audio, which is what the
speeds follow.

Usage::

    python benchmarks/cpu_vs_htsat.py --threads 1
    python benchmarks/cpu_vs_htsat.py --precision fp32 bf16 --slap-attention blocked sdpa

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_file_speed import build_model_folder, cpu_name, load_average  # noqa: E402

from speechbrain_slap.demo import generated_clip  # noqa: E402
from speechbrain_slap.hparams import architecture_file  # noqa: E402
from speechbrain_slap.inference import SLAP  # noqa: E402
from speechbrain_slap.precision import inference_context, int8_copy  # noqa: E402

RATE = 16000
HTSAT_RATE = 48000
HTSAT_WINDOW_SECONDS = 10
HTSAT_FP32 = "HTSAT-tiny tower, fp32"


def clip_durations(n: int, low: float, high: float, seed: int) -> list[float]:
    """``n`` seeded durations, uniform in ``[low, high]`` seconds (rounded to 10 ms)."""
    rng = np.random.default_rng(seed)
    return [round(float(d), 2) for d in rng.uniform(low, high, n)]


def htsat_windows(wav: torch.Tensor) -> list[np.ndarray]:
    """A 16 kHz clip -> 10 s windows at 48 kHz, the last one zero-padded."""
    wav48 = torchaudio.functional.resample(wav, RATE, HTSAT_RATE).numpy()
    size = HTSAT_WINDOW_SECONDS * HTSAT_RATE
    windows = []
    for start in range(0, wav48.size, size):
        window = wav48[start : start + size]
        windows.append(np.pad(window, (0, size - window.size)))
    return windows


class HTSATTower:
    """HTSAT-tiny (``ClapAudioModelWithProjection``, random weights) over 10 s windows."""

    def __init__(self, clips: list[torch.Tensor], batch_windows: int):
        from transformers import ClapAudioConfig, ClapAudioModelWithProjection, ClapFeatureExtractor

        torch.manual_seed(0)
        self.model = ClapAudioModelWithProjection(ClapAudioConfig()).eval()
        self.params = sum(p.numel() for p in self.model.audio_model.parameters())
        extractor = ClapFeatureExtractor()
        windows, self.owner = [], []
        for index, clip in enumerate(clips):
            for window in htsat_windows(clip):
                windows.append(window)
                self.owner.append(index)
        self.n_clips = len(clips)
        self.batches = []
        for start in range(0, len(windows), batch_windows):
            features = extractor(
                windows[start : start + batch_windows],
                sampling_rate=HTSAT_RATE,
                return_tensors="pt",
                padding="repeatpad",
                truncation="rand_trunc",
            )
            self.batches.append(features["input_features"])
        self.n_windows = len(windows)

    @functools.cached_property
    def int8_model(self):
        """Its int8 copy, made when int8 is first timed: linear layers; convolutions stay fp32."""
        return int8_copy(self.model)

    @torch.no_grad()
    def encode(self, precision: str) -> torch.Tensor:
        """``(n_clips, 512)`` clip embeddings: the mean of each clip's window embeddings."""
        out = []
        model = self.int8_model if precision == "int8" else self.model
        with inference_context(precision, "cpu"):
            for features in self.batches:
                out.append(model(input_features=features).audio_embeds.float())
        embeds = torch.nn.functional.normalize(torch.cat(out), dim=-1)
        sums = torch.zeros(self.n_clips, embeds.shape[1])
        return sums.index_add_(0, torch.tensor(self.owner), embeds)


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both models)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-seconds", type=float, default=300.0, help="SLAP's batch budget")
    parser.add_argument("--htsat-batch", type=int, default=8, help="HTSAT windows per forward")
    parser.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "int8"]
    )
    parser.add_argument(
        "--slap-attention",
        nargs="+",
        default=["blocked"],
        choices=["blocked", "sdpa"],
        help="SLAP attention backends to time (blocked: what auto picks on the CPU; sdpa: "
        "the padded reference it replaced)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    durations = clip_durations(args.clips, args.min_seconds, args.max_seconds, args.seed)
    audio_seconds = sum(durations)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"torch threads: {torch.get_num_threads()}; load average before: {load_average()}")
    print(f"{len(durations)} clips, {audio_seconds:.1f} s of audio, durations {durations}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths, clips = [], []
        for i, seconds in enumerate(durations):
            clip = generated_clip(seconds, seed=i)
            paths.append(tmp / f"clip{i:03d}.wav")
            soundfile.write(paths[-1], clip, RATE, subtype="FLOAT")
            clips.append(torch.as_tensor(clip, dtype=torch.float32))
        folder = build_model_folder(architecture_file("slap_base"), tmp / "slap_base")
        slap = SLAP.from_hparams(
            source=str(folder), run_opts={"device": "cpu"}, batch_seconds=args.batch_seconds
        )
        slap_params = sum(p.numel() for p in slap.mods.audio_encoder.parameters())
        slap_params += sum(p.numel() for p in slap.mods.audio_pooling.parameters())
        htsat = HTSATTower(clips, args.htsat_batch)
        print(
            f"SLAP base audio encoder + pooling: {slap_params / 1e6:.1f}M parameters; "
            f"HTSAT-tiny audio tower: {htsat.params / 1e6:.1f}M parameters, "
            f"{htsat.n_windows} windows of 10 s ({htsat.n_windows * 10} s of input)"
        )

        rows = []
        for precision in args.precision:
            slap.set_precision(precision)
            runs = {}
            for backend in args.slap_attention:

                def run_slap(backend=backend):
                    slap.mods.audio_encoder.attention_backend = backend
                    embeddings, _, failed = slap.encode_files(paths)
                    assert not failed and embeddings.shape[0] == len(paths)

                runs[f"SLAP base, encode_files, {backend} attention"] = run_slap

            def run_htsat(precision=precision):
                assert htsat.encode(precision).shape[0] == len(paths)

            runs["HTSAT-tiny tower"] = run_htsat
            if precision != "fp32":  # the way LAION-CLAP runs it, timed in the same rounds
                runs[HTSAT_FP32] = functools.partial(run_htsat, "fp32")
            # The warm-up pass also counts the FLOPs of the matmuls (not those inside SDPA).
            for name, run in runs.items():
                with FlopCounterMode(display=False) as counter:
                    run()
                if precision != "int8":  # the counter does not see int8 kernels
                    gflops = counter.get_total_flops() / 1e9 / audio_seconds
                    print(f"  {precision}, {name}: {gflops:.2f} matmul GFLOP per second of audio")
            times = {name: [] for name in runs}
            for _ in range(args.repeats):  # alternating, so load changes hit every model
                for name, run in runs.items():
                    times[name].append(timed(run))
                print(
                    f"  {precision}: "
                    + ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items()),
                    flush=True,
                )
            htsat_times = times.pop("HTSAT-tiny tower")
            htsat_fp32_times = times.pop(HTSAT_FP32, htsat_times)

            def ratio(slap_times, htsat_times):
                return statistics.median(
                    h / s for s, h in zip(slap_times, htsat_times, strict=True)
                )

            for name, slap_times in times.items():
                rows.append(
                    (
                        precision,
                        name,
                        statistics.median(slap_times),
                        ratio(slap_times, htsat_times),
                        ratio(slap_times, htsat_fp32_times),
                    )
                )
            rows.append(
                (
                    precision,
                    "HTSAT-tiny tower",
                    statistics.median(htsat_times),
                    None,
                    ratio(htsat_times, htsat_fp32_times),
                )
            )
    print(f"load average after: {load_average()}")
    print()
    print(
        "| precision | model | seconds | clips / s | audio s / s | speed / HTSAT's, same "
        "precision | speed / HTSAT's in fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    n = len(durations)
    for precision, name, seconds, same, to_fp32 in rows:
        print(
            f"| {precision} | {name} | {seconds:.2f} | {n / seconds:.2f} "
            f"| {audio_seconds / seconds:.1f} | {'' if same is None else f'{same:.2f}x'} "
            f"| {to_fp32:.2f}x |"
        )


if __name__ == "__main__":
    main()
