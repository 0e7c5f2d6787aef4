"""Training-step throughput of the SLAP audio encoder: packed vs padded to 30 s.

Times forward + backward of the encoder on three duration mixes and prints a
table of real audio-seconds per second, model FLOP utilisation (MFU) against a
matmul peak measured on the same device, and peak memory.

Duration mixes (seeded):
  audiocaps  every clip 10 s
  clotho     uniform 15-30 s
  wavcaps    log-normal (median 7 s, sigma 0.9) clipped to 1-30 s

Both modes encode the same clips. ``packed`` drops all padding (one packed
sequence); ``padded`` pads every clip to 30 s (748 tokens) and runs the same
model and attention kernel on the padded tokens, so the gap is the padding
waste alone. MFU counts the useful FLOPs of the real audio only (linear layers
and attention restricted to each clip and, in local blocks, to the band).

Usage:
  python benchmarks/encoder_throughput.py --size tiny                       # CPU
  python benchmarks/encoder_throughput.py --size base --device cuda --dtype bf16 --compile

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder  # noqa: E402
from speechbrain_slap.lobes.packing import (  # noqa: E402
    PATCH_BINS,
    num_tokens_for_duration,
    pack_padded,
)

SIZES = {
    "tiny": dict(embed_dim=128, depth=6, num_heads=4, mlp_hidden=512),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_hidden=3072),
}
MAX_DURATION = 30.0
N_FREQ = 4  # frequency bands at 64 mels


def sample_durations(mix: str, generator: torch.Generator, count: int) -> list[float]:
    """Clip durations in seconds for one of the three mixes."""
    if mix == "audiocaps":
        return [10.0] * count
    if mix == "clotho":
        return (15.0 + 15.0 * torch.rand(count, generator=generator)).tolist()
    if mix == "wavcaps":
        normal = torch.randn(count, generator=generator)
        return torch.exp(math.log(7.0) + 0.9 * normal).clamp(1.0, MAX_DURATION).tolist()
    raise ValueError(f"unknown mix {mix!r}")


def batch_for_budget(mix: str, token_budget: int, seed: int) -> list[float]:
    """Durations of as many clips as fit in ``token_budget`` real tokens."""
    generator = torch.Generator().manual_seed(seed)
    durations, tokens = [], 0
    while True:
        (duration,) = sample_durations(mix, generator, 1)
        need = num_tokens_for_duration(duration)
        if durations and tokens + need > token_budget:
            return durations
        durations.append(duration)
        tokens += need


def local_keys(length: int, window: int) -> int:
    """Sum over queries of the keys a band of +-window allows in one clip."""
    total = 0
    for i in range(length):
        total += min(i + window, length - 1) - max(i - window, 0) + 1
    return total


def useful_flops(encoder: SLAPAudioEncoder, seqlens: list[int]) -> float:
    """Forward + backward FLOPs (3x forward) of the real tokens only."""
    dim = encoder.embed_dim
    tokens = sum(seqlens)
    linear_params_per_block = sum(
        p.numel() for n, p in encoder.blocks[0].named_parameters() if "norm" not in n
    )
    forward = 2 * tokens * PATCH_BINS * PATCH_BINS * dim
    keys_cache: dict[tuple[int, int | None], int] = {}
    for block in encoder.blocks:
        forward += 2 * tokens * linear_params_per_block
        window = block.attn.window
        keys = 0
        for length in seqlens:
            cache_key = (length, window)
            if cache_key not in keys_cache:
                keys_cache[cache_key] = (
                    length * length if window is None else local_keys(length, window)
                )
            keys += keys_cache[cache_key]
        forward += 4 * keys * dim  # QK^T and PV
    return 3.0 * forward


def measure_matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best FLOP/s of a large square matmul on this device and dtype."""
    cuda = device.type == "cuda"
    size, inner = (8192, 10) if cuda else (2048, 3)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    for _ in range(10):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        best = max(best, inner * 2 * size**3 / (time.perf_counter() - start))
    return best


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(encoder, packed, device, dtype, warmup: int, steps: int) -> list[float]:
    """Seconds per forward+backward step, after ``warmup`` untimed steps."""
    times = []
    for step in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = encoder.forward_packed(packed)
        out.float().square().mean().backward()
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    encoder.zero_grad(set_to_none=True)
    return times


def run(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    encoder = SLAPAudioEncoder(**SIZES[args.size], attention_backend=args.backend).to(device)
    if args.compile:
        encoder.compile_blocks()
    peak = measure_matmul_peak(device, dtype)
    rows = []
    for mix in args.mixes:
        durations = batch_for_budget(mix, args.token_budget, seed=1)
        real = [num_tokens_for_duration(d) for d in durations]
        padded_len = num_tokens_for_duration(MAX_DURATION)
        flops = useful_flops(encoder, real)
        for mode in args.modes:
            seqlens = real if mode == "packed" else [padded_len] * len(real)
            patches = torch.randn(len(seqlens), max(seqlens), PATCH_BINS * PATCH_BINS)
            packed = pack_padded(patches.to(device), torch.tensor(seqlens))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                times = time_steps(encoder, packed, device, dtype, args.warmup, args.steps)
            except torch.OutOfMemoryError:
                rows.append(dict(mix=mix, mode=mode, clips=len(real), error="out of memory"))
                torch.cuda.empty_cache()
                continue
            step = statistics.median(times)
            rows.append(
                dict(
                    mix=mix,
                    mode=mode,
                    clips=len(real),
                    audio_s=round(sum(durations), 1),
                    tokens=sum(seqlens),
                    step_ms=round(1000 * step, 2),
                    audio_s_per_s=round(sum(durations) / step, 1),
                    mfu=round(flops / step / peak, 3),
                    peak_mem_gb=(
                        round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                        if device.type == "cuda"
                        else None
                    ),
                )
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    header = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        size=args.size,
        dtype=args.dtype,
        backend=args.backend,
        compile=args.compile,
        token_budget=args.token_budget,
        matmul_peak_tflops=round(peak / 1e12, 1),
    )
    print_table(header, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(header=header, rows=rows), indent=2))
    return rows


def print_table(header: dict, rows: list[dict]):
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    cols = ["mix", "mode", "clips", "audio_s", "tokens", "step_ms", "audio_s_per_s", "mfu"]
    cols += ["peak_mem_gb"] if any(r.get("peak_mem_gb") for r in rows) else []
    print("| " + " | ".join(cols) + " | packed/padded |")
    print("|" + "---|" * (len(cols) + 1))
    speed = {(r["mix"], r["mode"]): r.get("audio_s_per_s") for r in rows}
    for r in rows:
        ratio = ""
        if r["mode"] == "packed" and speed.get((r["mix"], "padded")):
            ratio = f"{r['audio_s_per_s'] / speed[(r['mix'], 'padded')]:.2f}x"
        cells = [str(r.get(c, r.get("error", ""))) for c in cols]
        print("| " + " | ".join(cells) + f" | {ratio} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="real tokens per step (default 32768 on CUDA, 3000 on CPU)",
    )
    parser.add_argument("--mixes", nargs="+", default=["audiocaps", "clotho", "wavcaps"])
    parser.add_argument("--modes", nargs="+", default=["packed", "padded"])
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.token_budget is None:
        args.token_budget = 32768 if cuda else 3000
    if args.warmup is None:
        args.warmup = (5 if args.compile else 2) if cuda else 1
    if args.steps is None:
        args.steps = 10 if cuda else 3
    return run(args)


if __name__ == "__main__":
    main()
