"""Inference throughput of ``SLAP.encode_audio_batch`` on the three duration mixes.

Builds a SLAP model folder (the pretraining recipe's yaml, its initial
weights, ``speechbrain_slap.model_folder.export_model``), loads it with
``SLAP.from_hparams`` and times ``encode_audio_batch`` on padded waveform
batches with the durations of ``encoder_throughput.py``'s mixes (AudioCaps-,
Clotho- and WavCaps-like). A call covers everything a user pays for: the copy
to the device, log-mel features, packing, the encoder, MAP pooling and the
normalised embeddings back on the CPU. The interface packs (no compute on
padding) and splits a call into chunks of ``--batch-seconds`` of audio.

Reported: real audio-seconds per second, MFU (the encoder's useful forward
FLOPs, as ``encoder_throughput.useful_flops`` counts them, over the matmul peak
measured on the same device and dtype) and peak CUDA memory. Models as in
``train_step_throughput.py`` (``base``: random weights, nothing downloaded).

Usage:
  python benchmarks/inference_throughput.py --size tiny                         # CPU
  python benchmarks/inference_throughput.py --size base --device cuda --dtype bf16

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from encoder_throughput import (  # noqa: E402
    batch_for_budget,
    measure_matmul_peak,
    synchronize,
    useful_flops,
)
from train_step_throughput import WORDS, YAMLS, random_modernbert  # noqa: E402

from speechbrain_slap.lobes.features import pad_waveforms  # noqa: E402
from speechbrain_slap.lobes.packing import num_tokens_for_duration  # noqa: E402


def make_model_folder(size: str, workdir: Path) -> Path:
    """A model folder of the recipe's ``size`` model with its seeded initial weights.

    Written as a recipe output (resolved ``hyperparams.yaml``, a checkpoint, a
    caption tokenizer) and exported with ``export_model``, as ``slap export``
    does after training.
    """
    from hyperpyyaml import load_hyperpyyaml, resolve_references

    from speechbrain_slap.lobes.caption_decoder import train_caption_tokenizer
    from speechbrain_slap.model_folder import export_model

    output = workdir / "recipe_output"
    output.mkdir(parents=True)
    overrides = {
        "output_folder": str(output),
        "data_folder": str(workdir),
        "train_csv": str(workdir / "captions.csv"),
        "valid_csv": str(workdir / "captions.csv"),
        "test_csv": str(workdir / "captions.csv"),
    }
    if size == "base":
        overrides["text_source"] = random_modernbert(workdir / "text_encoder")
    with open(YAMLS[size]) as fin:
        resolved = resolve_references(fin, overrides)
    (output / "hyperparams.yaml").write_text(resolved.getvalue())
    with open(output / "hyperparams.yaml") as fin:
        hparams = load_hyperpyyaml(fin)
    with open(workdir / "captions.csv", "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(["ID", "caption"])
        writer.writerows((i, " ".join(WORDS[i:] + WORDS[:i])) for i in range(len(WORDS)))
    # A character tokenizer: the caption decoder's vocabulary does not matter here.
    train_caption_tokenizer(
        workdir / "captions.csv", hparams["tokenizer_folder"], model_type="char"
    )
    hparams["checkpointer"].save_checkpoint(meta={"mean_R@1": 0.0})
    return export_model(output, workdir / "model")


def padded_batch(durations: list[float], sample_rate: int, seed: int):
    """Noise waveforms of ``durations`` seconds as a padded batch and relative lengths."""
    generator = torch.Generator().manual_seed(seed)
    waves = [0.1 * torch.randn(round(d * sample_rate), generator=generator) for d in durations]
    return pad_waveforms(waves)


def run(args) -> dict:
    from speechbrain_slap.inference import SLAP

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    cuda = device.type == "cuda"
    peak = measure_matmul_peak(device, dtype)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        folder = make_model_folder(args.size, Path(workdir))
        kwargs = {} if args.batch_seconds is None else {"batch_seconds": args.batch_seconds}
        model = SLAP.from_hparams(
            source=str(folder),
            savedir=str(Path(workdir) / "loaded"),
            run_opts={"device": args.device, "precision": args.dtype},
            **kwargs,
        )
        encoder = model.mods.audio_encoder
        for mix in args.mixes:
            durations = batch_for_budget(mix, args.token_budget, seed=1)
            seqlens = [num_tokens_for_duration(d) for d in durations]
            wavs, wav_lens = padded_batch(durations, model.sample_rate, seed=1)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for step in range(args.warmup + args.steps):
                synchronize(device)
                start = time.perf_counter()
                embeddings = model.encode_audio_batch(wavs, wav_lens)
                synchronize(device)
                if step >= args.warmup:
                    times.append(time.perf_counter() - start)
            assert embeddings.shape[0] == len(durations)
            step = statistics.median(times)
            rows.append(
                dict(
                    mix=mix,
                    clips=len(durations),
                    audio_s=round(sum(durations), 1),
                    tokens=sum(seqlens),
                    call_ms=round(1000 * step, 1),
                    audio_s_per_s=round(sum(durations) / step, 1),
                    mfu=round(useful_flops(encoder, seqlens) / 3 / step / peak, 3),
                    peak_mem_gb=(
                        round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None
                    ),
                )
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        chunk_seconds = model.batch_seconds
    header = dict(
        device=torch.cuda.get_device_name(device) if cuda else "cpu",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        load_avg_1min=round(os.getloadavg()[0], 2),  # a shared machine's load
        size=args.size,
        dtype=args.dtype,
        token_budget=args.token_budget,
        batch_seconds=chunk_seconds,
        matmul_peak_tflops=round(peak / 1e12, 2),
    )
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    cols = [c for c in rows[0] if any(r[c] is not None for r in rows)]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    results = dict(header=header, rows=rows)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(YAMLS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=["bf16", "fp32"], default=None, help="default bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="real audio tokens per call (default 32768 on CUDA, 3000 on CPU)",
    )
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=None,
        help="audio per encoder pass inside a call (default: the interface's)",
    )
    parser.add_argument("--mixes", nargs="+", default=["audiocaps", "clotho", "wavcaps"])
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype is None:
        args.dtype = "bf16" if cuda else "fp32"
    if args.token_budget is None:
        args.token_budget = 32768 if cuda else 3000
    if args.warmup is None:
        args.warmup = 2 if cuda else 1
    if args.steps is None:
        args.steps = 10 if cuda else 3
    return run(args)


if __name__ == "__main__":
    main()
