"""The ``slap`` command.

``slap demo`` writes a few generated clips of different durations to WAV
files, reads them back and encodes them with a SLAP model built from an
hparams file, packed in one batch, then checks that each clip gives the same
embedding when encoded alone.

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch

from speechbrain_slap.lobes.features import pad_waveforms
from speechbrain_slap.lobes.packing import num_tokens_for_duration

REPO_HPARAMS = Path(__file__).resolve().parents[1] / "hparams"


def generated_clip(duration: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """A deterministic test sound: a rising chirp, tone bursts and soft noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration * sample_rate))) / sample_rate
    f0, f1 = 200.0 + 300.0 * rng.random(), 1500.0 + 2000.0 * rng.random()
    phase = 2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(duration, 1e-3)))
    chirp = 0.2 * np.sin(phase)
    burst_freq = 300.0 + 700.0 * rng.random()
    bursts = 0.3 * np.sin(2 * math.pi * burst_freq * t) * ((t * 2.0) % 1.0 < 0.25)
    noise = 0.02 * rng.standard_normal(t.shape)
    return (chirp + bursts + noise).astype(np.float32)


def load_model(hparams_file: Path, device: str):
    """Builds ``compute_features``, ``audio_encoder`` and ``audio_pooling``."""
    from hyperpyyaml import load_hyperpyyaml

    if not hparams_file.is_file():
        raise FileNotFoundError(f"hparams file not found: {hparams_file}")
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin)
    missing = [
        k for k in ("compute_features", "audio_encoder", "audio_pooling") if k not in hparams
    ]
    if missing:
        raise KeyError(f"{hparams_file} does not define {', '.join(missing)}")
    modules = [
        hparams[k].to(device).eval() for k in ("compute_features", "audio_encoder", "audio_pooling")
    ]
    return hparams, modules


@torch.no_grad()
def embed(modules, waveforms: list[torch.Tensor], device: str) -> torch.Tensor:
    """Packed embedding of 1-D waveforms, one row per clip."""
    compute_features, encoder, pooling = modules
    wavs, wav_lens = pad_waveforms(waveforms)
    wavs, wav_lens = wavs.to(device), wav_lens.to(device)
    return pooling(encoder(compute_features(wavs), wav_lens), wav_lens).cpu()


def demo(args) -> int:
    torch.manual_seed(args.seed)
    hparams, modules = load_model(Path(args.hparams), args.device)
    sample_rate = hparams.get("sample_rate", 16000)
    out = Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    waveforms, rows = [], []
    for i, duration in enumerate(args.durations):
        if not 0 < duration:
            raise ValueError(f"--durations must be positive, got {duration}")
        path = out / f"clip_{i}_{duration:g}s.wav"
        soundfile.write(path, generated_clip(duration, args.seed + i, sample_rate), sample_rate)
        audio, rate = soundfile.read(path, dtype="float32")
        if rate != sample_rate:
            raise ValueError(f"{path}: expected {sample_rate} Hz, read {rate} Hz")
        waveforms.append(torch.from_numpy(audio))
        rows.append(
            dict(file=str(path), duration_s=duration, tokens=num_tokens_for_duration(duration))
        )
    packed = embed(modules, waveforms, args.device)
    alone = torch.cat([embed(modules, [w], args.device) for w in waveforms])
    max_diff = float((packed - alone).abs().max())
    np.save(out / "embeddings.npy", packed.numpy())
    padded_tokens = len(rows) * num_tokens_for_duration(30.0)
    packed_tokens = sum(r["tokens"] for r in rows)
    for row, emb in zip(rows, packed, strict=True):
        row["embedding_norm"] = round(float(emb.norm()), 4)
    summary = dict(
        clips=rows,
        embedding_dim=int(packed.shape[1]),
        packed_tokens=packed_tokens,
        tokens_if_padded_to_30s=padded_tokens,
        packed_vs_alone_max_abs_diff=max_diff,
        embeddings=str(out / "embeddings.npy"),
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{'file':40s} {'seconds':>8s} {'tokens':>7s} {'|emb|':>8s}")
        for r in rows:
            norm = r["embedding_norm"]
            print(f"{r['file']:40s} {r['duration_s']:8.2f} {r['tokens']:7d} {norm:8.4f}")
        print(
            f"{len(rows)} clips packed into {packed_tokens} tokens "
            f"(padding to 30 s would need {padded_tokens}); embeddings {tuple(packed.shape)} "
            f"-> {summary['embeddings']}"
        )
        print(f"packed batch vs one clip at a time: max abs difference {max_diff:.2e}")
    return 0 if max_diff <= args.tolerance else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slap", description="SLAP for SpeechBrain")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="encode generated clips of several durations, packed")
    p.add_argument(
        "--hparams",
        default=str(REPO_HPARAMS / "slap_tiny.yaml"),
        help="model hparams file (default: the tiny architecture)",
    )
    p.add_argument("--durations", type=float, nargs="+", default=[1.3, 10.0, 27.5])
    p.add_argument("--output-folder", default="results/demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="largest allowed packed-vs-alone difference (exit 1 above it)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable output")
    p.set_defaults(func=demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"slap {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
