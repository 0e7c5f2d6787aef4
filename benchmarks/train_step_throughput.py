"""Throughput of the full SLAP training step: packed vs padded to 30 s (``packing: false``).

Times ``SLAPBrain.fit_batch`` (features, SpecAugment, the student on both views
in one pass, the EMA teacher, the text encoder, MAP pooling, the caption
decoder, all three losses, backward, optimizer step and teacher update) on the
duration mixes of ``encoder_throughput.py`` (AudioCaps-, Clotho- and
WavCaps-like), with the same clips in both modes:

- ``packed``: the Brain as trained (padding dropped, one packed sequence).
- ``padded``: the same Brain with ``packing: false``: the audio encoders run on
  every clip padded to 30 s (748 tokens) with attention masked to the real
  tokens (dense SDPA, mask from the one rule), as models that pad and mask do.

Reported: real audio-seconds per second, MFU (useful FLOPs over a matmul peak
measured on the same device and dtype, as in ``encoder_throughput.py``),
peak CUDA memory, and on CUDA the largest token budget whose step fits
(doubling then bisection, memory cleared between tries). Useful FLOPs: the
audio encoders exactly as ``encoder_throughput.useful_flops`` counts them (real
tokens, attention inside each clip and band; the student's two views forward
and backward, the teacher forward only), plus everything else in the step as
counted by ``torch.utils.flop_counter`` with the encoders stubbed out. The same
count serves both modes, so padding only adds time.

Models: the pretraining recipe's yaml (``recipes/pretrain/hparams/``):
``tiny`` = ``pretrain_tiny_synth.yaml`` (the ``hparams/slap_tiny.yaml``
encoder, frozen packaged MiniLM text encoder); ``base`` = ``pretrain_base.yaml``
(12 x 768 encoder, 8-layer caption decoder, 8192 prototypes) with its text
encoder, ModernBERT-base, built from its config with random weights and a
word-level tokenizer (same shape and cost; nothing is downloaded). Audio is
random noise and captions random words (6-18 words; as many decoder tokens).

Usage:
  python benchmarks/train_step_throughput.py --size tiny                        # CPU
  python benchmarks/train_step_throughput.py --size base --device cuda --dtype bf16

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import functools
import gc
import json
import os
import random
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

from speechbrain_slap.lobes.caption_decoder import BOS_INDEX, EOS_INDEX  # noqa: E402
from speechbrain_slap.lobes.packing import num_tokens_for_duration  # noqa: E402

YAMLS = {
    "tiny": REPO / "recipes" / "pretrain" / "hparams" / "pretrain_tiny_synth.yaml",
    "base": REPO / "recipes" / "pretrain" / "hparams" / "pretrain_base.yaml",
}
WORDS = (
    "a dog barks while cars pass by on a wet road and people talk in the distance "
    "birds chirp wind blows through trees rain falls on a metal roof engine idles "
    "loudly then stops a door slams music plays softly water runs from a tap"
).split()


def random_modernbert(folder: Path) -> str:
    """A ModernBERT-base-shaped model folder with random weights and a word-level tokenizer.

    The paper's text encoder is pretrained ModernBERT-base; a throughput
    benchmark needs its shape and cost, not its weights (no hub download).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(WORDS)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(folder)
    config = ModernBertConfig(
        pad_token_id=0, bos_token_id=2, cls_token_id=2, eos_token_id=3, sep_token_id=3
    )
    ModernBertModel(config).save_pretrained(folder)
    return str(folder)


def build_brain(args, workdir: Path):
    """The recipe's ``SLAPBrain`` for ``args.size`` on ``args.device``, fit started."""
    from hyperpyyaml import load_hyperpyyaml

    from speechbrain_slap.brain import SLAPBrain

    overrides = {
        "output_folder": str(workdir),
        "data_folder": str(workdir),
        "train_csv": str(workdir / "unused.csv"),
        "valid_csv": str(workdir / "unused.csv"),
        "test_csv": str(workdir / "unused.csv"),
        "log_interval": 10**9,  # no step log file
    }
    if args.size == "base":
        overrides["text_source"] = random_modernbert(workdir / "text_encoder")
    with open(YAMLS[args.size]) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    hparams["lr_schedule"].total_steps = 10**4
    hparams["teacher"].total_steps = 10**4
    brain = SLAPBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": args.device, "precision": args.dtype, "noprogressbar": True},
    )
    if args.compile:
        brain.modules.audio_encoder.compile_blocks()
        brain.modules.teacher["audio_encoder"].compile_blocks()
    brain.on_fit_start()
    return brain, hparams


def make_batch(durations: list[float], hparams: dict, seed: int):
    """A ``PaddedBatch`` as the recipe's pipeline gives it: noise audio, random captions."""
    from speechbrain.dataio.batch import PaddedBatch

    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    items = []
    for i, duration in enumerate(durations):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
        n_pieces = min(len(words), hparams["max_caption_tokens"] - 1)
        pieces = torch.randint(4, hparams["vocab_size"], (n_pieces,), generator=generator)
        items.append(
            {
                "id": str(i),
                "sig": 0.1
                * torch.randn(round(duration * hparams["sample_rate"]), generator=generator),
                "caption": " ".join(words),
                "tokens_in": torch.cat([torch.tensor([BOS_INDEX]), pieces]),
                "tokens_out": torch.cat([pieces, torch.tensor([EOS_INDEX])]),
            }
        )
    return PaddedBatch(items)


def _zero_flop_encoder(encoder, packed, token_mask=None, pad_to=None):
    """Stands in for an audio encoder: output of the right shape, no matmul."""
    return encoder.mask_token.expand(packed.tokens.shape[0], -1) * 1.0


def other_flops(brain, batch) -> float:
    """FLOPs of one step without the audio encoders, counted by ``torch.utils.flop_counter``."""
    import speechbrain as sb
    from torch.utils.flop_counter import FlopCounterMode

    encoders = [brain.modules.audio_encoder, brain.modules.teacher["audio_encoder"]]
    for encoder in encoders:
        encoder.forward = functools.partial(_zero_flop_encoder, encoder)
    try:
        with FlopCounterMode(display=False) as counter:
            with brain.training_ctx:
                predictions = brain.compute_forward(batch, sb.Stage.TRAIN)
                loss = brain.compute_objectives(predictions, batch, sb.Stage.TRAIN)
            loss.backward()
    finally:
        for encoder in encoders:
            del encoder.forward
        brain.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def encoder_passes(brain) -> tuple[int, int]:
    """Views of each clip the student encodes (1 or 2) and teacher passes (0 or 1) per step."""
    ssl = brain.hparams.loss_weights["ssl"] > 0
    return (2 if ssl and brain.hparams.ssl_view == "dual" else 1), int(ssl)


def step_flops(brain, batch, seqlens: list[int]) -> float:
    """Useful FLOPs of one training step on clips of ``seqlens`` real tokens."""
    views, teacher = encoder_passes(brain)
    audio = useful_flops(brain.modules.audio_encoder, seqlens * views)  # forward + backward
    if teacher:
        audio += useful_flops(brain.modules.teacher["audio_encoder"], seqlens) / 3  # forward
    return audio + other_flops(brain, batch)


def time_steps(brain, batch, device, warmup: int, steps: int) -> list[float]:
    """Seconds per ``fit_batch`` after ``warmup`` untimed steps."""
    times = []
    for step in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        brain.step += 1  # as Brain.fit does before fit_batch
        brain.fit_batch(batch)
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def free_memory(brain, device):
    """Drops gradients and cached blocks after an out-of-memory step."""
    brain.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fits(brain, hparams, mix: str, token_budget: int, device) -> dict | None:
    """Runs one step of a ``token_budget`` batch; its size and memory, or None on OOM."""
    durations = batch_for_budget(mix, token_budget, seed=2)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        time_steps(brain, make_batch(durations, hparams, seed=2), device, 0, 1)
        result = dict(
            tokens=sum(num_tokens_for_duration(d) for d in durations),
            audio_s=round(sum(durations), 1),
            clips=len(durations),
            peak_mem_gb=round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
        )
    except torch.OutOfMemoryError:
        result = None
    free_memory(brain, device)
    return result


def largest_budget(brain, hparams, mix, start, device, doublings=5, bisections=3) -> dict:
    """Largest token budget whose step fits: double from ``start``, then bisect."""
    fit, fit_budget, oom_budget = None, 0, None
    budget = start
    for _ in range(doublings + 1):
        result = fits(brain, hparams, mix, budget, device)
        if result is None:
            oom_budget = budget
            break
        fit, fit_budget, budget = result, budget, 2 * budget
    while fit is None and oom_budget > 256:  # even the start did not fit: halve
        budget = oom_budget // 2
        result = fits(brain, hparams, mix, budget, device)
        if result is None:
            oom_budget = budget
        else:
            fit, fit_budget = result, budget
    for _ in range(bisections if oom_budget is not None and fit is not None else 0):
        budget = (fit_budget + oom_budget) // 2
        result = fits(brain, hparams, mix, budget, device)
        if result is None:
            oom_budget = budget
        else:
            fit, fit_budget = result, budget
    return dict(
        mix=mix,
        mode="packed" if brain.hparams.packing else "padded",
        max_token_budget=fit_budget,
        first_oom_budget=oom_budget if oom_budget is not None else "none (search cap)",
        **(fit or {}),
    )


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    cuda = device.type == "cuda"
    peak = measure_matmul_peak(device, dtype)
    rows, search_rows = [], []
    with tempfile.TemporaryDirectory() as workdir:
        brain, hparams = build_brain(args, Path(workdir))
        padded_length = brain.padded_length()
        for mix in args.mixes:
            durations = batch_for_budget(mix, args.token_budget, seed=1)
            seqlens = [num_tokens_for_duration(d) for d in durations]
            batch = make_batch(durations, hparams, seed=1)
            brain.hparams.packing = True
            flops = step_flops(brain, batch, seqlens)
            passes = sum(encoder_passes(brain))
            for mode in args.modes:
                brain.hparams.packing = mode == "packed"
                per_clip = seqlens if mode == "packed" else [padded_length] * len(seqlens)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    times = time_steps(brain, batch, device, args.warmup, args.steps)
                except torch.OutOfMemoryError:
                    rows.append(dict(mix=mix, mode=mode, clips=len(seqlens), error="out of memory"))
                    free_memory(brain, device)
                    continue
                step = statistics.median(times)
                rows.append(
                    dict(
                        mix=mix,
                        mode=mode,
                        clips=len(seqlens),
                        audio_s=round(sum(durations), 1),
                        tokens=sum(seqlens),
                        # Tokens the audio encoders compute: student views + teacher.
                        encoder_tokens=passes * sum(per_clip),
                        step_ms=round(1000 * step, 1),
                        audio_s_per_s=round(sum(durations) / step, 1),
                        mfu=round(flops / step / peak, 3),
                        peak_mem_gb=(
                            round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                            if cuda
                            else None
                        ),
                    )
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if cuda:
            for mix in args.search_mixes:
                for mode in args.modes:
                    brain.hparams.packing = mode == "packed"
                    search_rows.append(
                        largest_budget(brain, hparams, mix, args.token_budget, device)
                    )
                    print(json.dumps(search_rows[-1]), file=sys.stderr, flush=True)
    header = dict(
        device=torch.cuda.get_device_name(device) if cuda else "cpu",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        load_avg_1min=round(os.getloadavg()[0], 2),  # a shared machine's load
        size=args.size,
        dtype=args.dtype,
        compile=args.compile,
        token_budget=args.token_budget,
        padded_length=padded_length,
        matmul_peak_tflops=round(peak / 1e12, 2),
    )
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    print_table(rows, ratio_of="audio_s_per_s")
    if search_rows:
        print()
        print_table(search_rows)
    results = dict(header=header, rows=rows, largest_budget=search_rows)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def print_table(rows: list[dict], ratio_of: str | None = None):
    """Markdown table of ``rows``; with ``ratio_of``, packed / padded of that column."""
    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "error"]
    cols = [c for c in cols if any(r.get(c) is not None for r in rows)]
    extra = ["packed/padded"] if ratio_of else []
    print("| " + " | ".join(cols + extra) + " |")
    print("|" + "---|" * (len(cols) + len(extra)))
    value = {(r["mix"], r["mode"]): r.get(ratio_of) for r in rows} if ratio_of else {}
    for r in rows:
        cells = [str(r.get(c, r.get("error", ""))) for c in cols]
        if ratio_of:
            padded = value.get((r["mix"], "padded"))
            ratio = r.get(ratio_of) / padded if r["mode"] == "packed" and padded else None
            cells.append(f"{ratio:.2f}x" if ratio else "")
        print("| " + " | ".join(cells) + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(YAMLS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=["bf16", "fp32"], default=None, help="default bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile encoder blocks")
    parser.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="real audio tokens per step (default 16384 on CUDA, 1500 on CPU); "
        "also where the largest-budget search starts",
    )
    parser.add_argument("--mixes", nargs="+", default=["audiocaps", "clotho", "wavcaps"])
    parser.add_argument(
        "--modes", nargs="+", choices=["packed", "padded"], default=["packed", "padded"]
    )
    parser.add_argument(
        "--search-mixes",
        nargs="*",
        default=None,
        help="mixes for the largest-budget search (CUDA only; default all)",
    )
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
        args.token_budget = 16384 if cuda else 1500
    if args.search_mixes is None:
        args.search_mixes = list(args.mixes) if cuda else []
    if args.warmup is None:
        args.warmup = (5 if args.compile else 2) if cuda else 1
    if args.steps is None:
        args.steps = 5 if cuda else 2
    return run(args)


if __name__ == "__main__":
    main()
