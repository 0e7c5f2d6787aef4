"""``slap demo``: packed encoding of generated clips of several durations.

Builds the features, audio encoder and pooling of an architecture file
(``speechbrain_slap/hparams/slap_tiny.yaml`` by default) with random weights,
writes a few generated clips, embeds them packed into one sequence and one at
a time, and reports the largest difference: packing must not change a clip's
embedding.

Authors
 * speechbrain-slap contributors 2026
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_slap.data.audio import load_audio
from speechbrain_slap.lobes.features import pad_waveforms
from speechbrain_slap.lobes.packing import num_tokens_for_duration

MODULE_KEYS = ("compute_features", "audio_encoder", "audio_pooling")


def generated_clip(duration: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """A deterministic test sound: a rising chirp, tone bursts and soft noise.

    Example
    -------
    >>> generated_clip(0.5, seed=0).shape
    (8000,)
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration * sample_rate))) / sample_rate
    f0, f1 = 200.0 + 300.0 * rng.random(), 1500.0 + 2000.0 * rng.random()
    phase = 2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(duration, 1e-3)))
    chirp = 0.2 * np.sin(phase)
    burst_freq = 300.0 + 700.0 * rng.random()
    bursts = 0.3 * np.sin(2 * math.pi * burst_freq * t) * ((t * 2.0) % 1.0 < 0.25)
    noise = 0.02 * rng.standard_normal(t.shape)
    return (chirp + bursts + noise).astype(np.float32)


def load_architecture(hparams_file: str | Path, device: str = "cpu"):
    """Builds ``compute_features``, ``audio_encoder`` and ``audio_pooling`` of a yaml.

    Returns
    -------
    hparams : dict
    modules : list of torch.nn.Module
        The three modules, on ``device``, in eval mode.
    """
    hparams_file = Path(hparams_file)
    if not hparams_file.is_file():
        raise FileNotFoundError(f"hparams file not found: {hparams_file}")
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin)
    missing = [key for key in MODULE_KEYS if key not in hparams]
    if missing:
        raise ValueError(f"{hparams_file} does not define {', '.join(missing)}")
    return hparams, [hparams[key].to(device).eval() for key in MODULE_KEYS]


@torch.no_grad()
def embed(modules, waveforms: Sequence[torch.Tensor], device: str) -> torch.Tensor:
    """Packed embedding of 1-D waveforms, one row per clip."""
    compute_features, encoder, pooling = modules
    wavs, wav_lens = pad_waveforms(list(waveforms))
    wavs, wav_lens = wavs.to(device), wav_lens.to(device)
    return pooling(encoder(compute_features(wavs), wav_lens), wav_lens).cpu()


def run_demo(
    hparams_file: str | Path,
    durations: Sequence[float],
    output_folder: str | Path,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Writes generated clips, embeds them packed and alone; returns the summary.

    Arguments
    ---------
    hparams_file : str or Path
        Architecture yaml (defines the three modules of ``MODULE_KEYS``).
    durations : sequence of float
        Clip durations in seconds (> 0).
    output_folder : str or Path
        Where the clips and ``embeddings.npy`` go.
    seed : int
        Seed of the weights and the clips.
    device : str
        Torch device.

    Returns
    -------
    dict
        ``clips`` (file, seconds, tokens, embedding norm), ``embedding_dim``,
        ``packed_tokens``, ``tokens_if_padded_to_30s``,
        ``packed_vs_alone_max_abs_diff`` and ``embeddings`` (the ``.npy``).

    Example
    -------
    >>> from speechbrain_slap.hparams import architecture_file
    >>> summary = run_demo(architecture_file("slap_tiny"), [0.5, 2.0], getfixture("tmp_path"))
    >>> [clip["tokens"] for clip in summary["clips"]], summary["embedding_dim"]
    ([12, 48], 128)
    >>> summary["packed_vs_alone_max_abs_diff"] < 1e-5
    True
    """
    bad = [d for d in durations if not (math.isfinite(d) and d > 0)]
    if bad or not durations:
        raise ValueError(f"durations must be positive seconds, got {list(durations)}")
    torch.manual_seed(seed)
    hparams, modules = load_architecture(hparams_file, device)
    sample_rate = hparams.get("sample_rate", 16000)
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    waveforms, rows = [], []
    for i, duration in enumerate(durations):
        path = out / f"clip_{i}_{duration:g}s.wav"
        soundfile.write(path, generated_clip(duration, seed + i, sample_rate), sample_rate)
        waveforms.append(load_audio(path, sample_rate))
        rows.append(
            dict(file=str(path), duration_s=duration, tokens=num_tokens_for_duration(duration))
        )
    packed = embed(modules, waveforms, device)
    alone = torch.cat([embed(modules, [w], device) for w in waveforms])
    np.save(out / "embeddings.npy", packed.numpy())
    for row, emb in zip(rows, packed, strict=True):
        row["embedding_norm"] = round(float(emb.norm()), 4)
    return dict(
        clips=rows,
        embedding_dim=int(packed.shape[1]),
        packed_tokens=sum(r["tokens"] for r in rows),
        tokens_if_padded_to_30s=len(rows) * num_tokens_for_duration(30.0),
        packed_vs_alone_max_abs_diff=float((packed - alone).abs().max()),
        embeddings=str(out / "embeddings.npy"),
    )
