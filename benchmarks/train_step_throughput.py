"""Throughput of the full SLAP training step, through the recipe's own code path.

Times optimizer steps of ``SLAPBrain.fit_batch`` (features, SpecAugment, the
student on both views in one pass, the EMA teacher, the text encoder, MAP
pooling, the caption decoder, all three losses, backward, optimizer step and
teacher update), each of ``--accumulation`` micro-batches (default 2, the
``grad_accumulation_factor`` of ``pretrain_base.yaml``), on the duration mixes
of ``encoder_throughput.py`` (AudioCaps-, Clotho- and WavCaps-like), with the
same clips in every variant. A variant is three choices (``--variants``):

- ``eager`` / ``compiled``: SpeechBrain's ``compile`` run option, which
  ``SLAPBrain`` honours by compiling in place, with dynamic shapes, the audio
  encoders' blocks, the text encoder and the caption decoder's layers
  (``SLAPBrain._compile``; ``--compile-module-keys`` picks others), as the
  recipe's ``--compile`` does.
- ``packed`` / ``padded``: the Brain as trained, or with ``packing: false``:
  the audio encoders (student and teacher) run on every clip padded to 30 s
  (748 tokens) with attention masked to the real tokens (dense SDPA, mask from
  the one rule), as models that pad and mask do.
- ``plain`` / ``cache``: ``contrastive_gradient_cache`` off (the CLAP loss
  contrasts one micro-batch) or on (it contrasts all the step's micro-batches;
  each micro-batch is also embedded once without a graph, the cost measured
  here). ``clap_negatives`` is what the step log records.

Reported per variant: real audio-seconds per second, MFU, peak CUDA memory
(the cache also holds the step's micro-batches), and the ratio to the eager
padded plain step. MFU: useful FLOPs of the step over its time, over a matmul
peak measured on the same device and dtype (8192^2 matmuls, as in
``encoder_throughput.py``). Useful FLOPs of a micro-batch: the audio encoders
exactly as ``encoder_throughput.useful_flops`` counts them (real tokens only,
attention inside each clip and band; the student's two views forward and
backward, i.e. 3x forward, the teacher forward only), plus everything else in
the step as ``torch.utils.flop_counter`` counts it on the eager Brain with the
encoders stubbed out (text encoder, pooling, decoder, heads, losses, their
backward); summed over the micro-batches. Every variant of a mix shares that
count, so padding, the cache's extra pass and eager overheads show as lower
MFU. On CUDA the script also searches, eager and without accumulation, the
largest real-token budget per micro-batch that fits (doubling from
``--token-budget``, then 3 bisections, memory cleared between tries).

Models: the pretraining recipe's yaml (``recipes/pretrain/hparams/``):
``tiny`` = ``pretrain_tiny_synth.yaml`` (the ``hparams/slap_tiny.yaml``
encoder, frozen packaged MiniLM text encoder); ``base`` = ``pretrain_base.yaml``
(12 x 768 encoder, 8-layer caption decoder, 8192 prototypes) with its text
encoder, ModernBERT-base, built from its config with random weights and a
word-level tokenizer (same shape and cost; nothing is downloaded). Audio is
random noise and captions random words (6-18 words; as many decoder tokens).

A SIGTERM (``timeout`` in ``gpu_check.sh``) stops the measurements and prints
the rows measured so far; the main table is printed last.

Usage:
  python benchmarks/train_step_throughput.py --arch tiny --device cpu --steps 2   # CPU
  python benchmarks/train_step_throughput.py --arch base --device cuda --dtype bf16

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import functools
import gc
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import typing
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


class Variant(typing.NamedTuple):
    """One configuration of the step: ``eager``/``compiled``, ``packed``/``padded``, cache."""

    compiled: bool
    mode: str
    cache: bool

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """``compile/mode/cache``, e.g. ``compiled/packed/cache`` or ``eager/padded/plain``."""
        parts = text.split("/")
        if (
            len(parts) != 3
            or parts[0] not in ("eager", "compiled")
            or parts[1] not in ("packed", "padded")
            or parts[2] not in ("plain", "cache")
        ):
            raise argparse.ArgumentTypeError(
                f"variant {text!r}: expected eager|compiled / packed|padded / plain|cache"
            )
        return cls(parts[0] == "compiled", parts[1], parts[2] == "cache")

    def row(self) -> dict:
        return dict(
            compile="compiled" if self.compiled else "eager",
            mode=self.mode,
            cache="on" if self.cache else "off",
        )


DEFAULT_VARIANTS = (
    "eager/packed/plain",
    "eager/padded/plain",
    "eager/packed/cache",
    "compiled/packed/plain",
    "compiled/padded/plain",
    "compiled/packed/cache",
)


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


def build_brain(args, workdir: Path, compiled: bool):
    """The recipe's ``SLAPBrain`` for ``args.size`` on ``args.device``; ``(brain, hparams)``.

    ``compiled``: SpeechBrain's ``compile`` run option, which ``SLAPBrain``
    honours by compiling its parts in place (``SLAPBrain._compile``) in
    ``on_fit_start``, as ``--compile`` does in the recipe. ``on_fit_start``
    is not called here.
    """
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
        text_folder = workdir / "text_encoder"
        if not text_folder.is_dir():
            random_modernbert(text_folder)
        overrides["text_source"] = str(text_folder)
    with open(YAMLS[args.size]) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    hparams["lr_schedule"].total_steps = 10**4
    hparams["teacher"].total_steps = 10**4
    run_opts = {
        "device": args.device,
        "precision": args.dtype,
        "noprogressbar": True,
        "compile": compiled,  # overrides the yaml's (pretrain_base.yaml has compile: True)
        "compile_module_keys": args.compile_module_keys,
    }
    brain = SLAPBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
    )
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
    """FLOPs of one step without the audio encoders, counted by ``torch.utils.flop_counter``.

    Run on an eager Brain (compiled kernels are invisible to the counter).
    """
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
        brain.modules.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def encoder_passes(brain) -> tuple[int, int]:
    """Views of each clip the student encodes (1 or 2) and teacher passes (0 or 1) per step."""
    ssl = brain.hparams.loss_weights["ssl"] > 0
    return (2 if ssl and brain.hparams.ssl_view == "dual" else 1), int(ssl)


def step_flops(brain, batch, seqlens: list[int]) -> float:
    """Useful FLOPs of one micro-batch's training step on clips of ``seqlens`` real tokens."""
    views, teacher = encoder_passes(brain)
    audio = useful_flops(brain.modules.audio_encoder, seqlens * views)  # forward + backward
    if teacher:
        audio += useful_flops(brain.modules.teacher["audio_encoder"], seqlens) / 3  # forward
    return audio + other_flops(brain, batch)


def set_variant(brain, variant: Variant, accumulation: int):
    """Configures the Brain as the recipe would for ``variant`` (packing, cache, accumulation)."""
    brain.hparams.packing = variant.mode == "packed"
    brain.hparams.contrastive_gradient_cache = variant.cache
    brain.grad_accumulation_factor = accumulation
    brain.step = 0  # an optimizer step starts with the next fit_batch
    brain._clap_cache = []


def time_steps(brain, batches, device, warmup: int, steps: int) -> list[float]:
    """Seconds per optimizer step (one ``fit_batch`` per micro-batch), after ``warmup`` steps."""
    times = []
    for step in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            brain.step += 1  # as Brain.fit does before fit_batch
            brain.fit_batch(batch)
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def free_memory(brain, device):
    """Drops gradients, held micro-batches and cached blocks after an out-of-memory step."""
    brain.modules.zero_grad(set_to_none=True)
    brain._clap_cache = []
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fits(brain, hparams, mix: str, token_budget: int, device) -> dict | None:
    """Runs one step of a ``token_budget`` batch; its size and memory, or None on OOM."""
    durations = batch_for_budget(mix, token_budget, seed=2)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        time_steps(brain, [make_batch(durations, hparams, seed=2)], device, 0, 1)
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


def largest_budget(brain, hparams, mix, mode, start, device, doublings=5, bisections=3) -> dict:
    """Largest token budget whose step fits (no accumulation): double from ``start``, bisect."""
    set_variant(brain, Variant(brain.compile, mode, False), accumulation=1)
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
        compile="compiled" if brain.compile else "eager",
        mode=mode,
        max_token_budget=fit_budget,
        first_oom_budget=oom_budget if oom_budget is not None else "none (search cap)",
        **(fit or {}),
    )


class Interrupted(Exception):
    """SIGTERM (``timeout`` in ``gpu_check.sh``): stop measuring, print what was measured."""


def _interrupt(signum, frame):
    raise Interrupted()


def measure(brain, hparams, args, variant: Variant, mix: dict, device, peak: float) -> dict:
    """One table row: an optimizer step of ``args.accumulation`` micro-batches of ``mix``."""
    set_variant(brain, variant, args.accumulation)
    per_clip = (
        mix["seqlens"]
        if variant.mode == "packed"
        else [brain.padded_length()] * len(mix["seqlens"])
    )
    row = dict(mix=mix["name"], **variant.row(), clips=len(mix["seqlens"]))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        times = time_steps(brain, mix["batches"], device, args.warmup, args.steps)
    except torch.OutOfMemoryError:
        free_memory(brain, device)
        return dict(row, error="out of memory")
    step = statistics.median(times)
    # The records of the step's last fit_batch calls: one with the cache, else one per call.
    records = brain.step_log[-(1 if variant.cache else args.accumulation) :]
    return dict(
        row,
        audio_s=round(mix["audio_s"], 1),
        tokens=sum(mix["seqlens"]),
        # Tokens the audio encoders compute per step: student views + teacher (+ the
        # cache's first pass over view 1).
        encoder_tokens=(sum(encoder_passes(brain)) + variant.cache) * sum(per_clip),
        clap_negatives=round(statistics.mean(r["clap_negatives"] for r in records), 1),
        step_ms=round(1000 * step, 1),
        audio_s_per_s=round(mix["audio_s"] / step, 1),
        mfu=round(mix["flops"] / step / peak, 3),
        peak_mem_gb=(
            round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda"
            else None
        ),
    )


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    cuda = device.type == "cuda"
    signal.signal(signal.SIGTERM, _interrupt)
    peak = measure_matmul_peak(device, dtype)
    rows, search_rows, mixes = [], [], []
    header = dict(
        device=torch.cuda.get_device_name(device) if cuda else "cpu",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        load_avg_1min=round(os.getloadavg()[0], 2),  # a shared machine's load
        size=args.size,
        dtype=args.dtype,
        token_budget=args.token_budget,
        accumulation=args.accumulation,
        matmul_peak_tflops=round(peak / 1e12, 2),
    )
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for compiled in (False, True):
                variants = [v for v in args.variants if v.compiled == compiled]
                if not variants and (compiled or mixes):
                    continue
                brain, hparams = build_brain(args, Path(workdir), compiled)
                if not mixes:  # the FLOP count, on the first (eager, uncompiled) Brain
                    header["padded_length"] = brain.padded_length()
                    mixes = prepare_mixes(brain, hparams, args)
                brain.on_fit_start()  # compiles, with compile
                for mix in mixes:
                    for variant in variants:
                        rows.append(measure(brain, hparams, args, variant, mix, device, peak))
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                if cuda and not compiled:
                    for mix in args.search_mixes:
                        for mode in args.modes_searched:
                            search_rows.append(
                                largest_budget(brain, hparams, mix, mode, args.token_budget, device)
                            )
                            print(json.dumps(search_rows[-1]), file=sys.stderr, flush=True)
                del brain, hparams  # hparams holds the modules too
                free_memory_all(device)
    except Interrupted:
        header["interrupted"] = "SIGTERM: the rows measured before it"
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    if search_rows:
        print_table(search_rows)
        print()
    print_table(rows, ratio_of="audio_s_per_s")  # last: the table gpu_check.sh ends with
    results = dict(header=header, rows=rows, largest_budget=search_rows)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def prepare_mixes(brain, hparams, args) -> list[dict]:
    """Each mix's micro-batches (``args.accumulation``, seeds 1, 2, ...) and useful FLOPs.

    The FLOPs are those of the step without the cache (the cache's first
    pass is overhead, not useful work), summed over the micro-batches.
    """
    mixes = []
    brain.hparams.packing = True
    for name in args.mixes:
        batches, seqlens, audio_s, flops = [], [], 0.0, 0.0
        for seed in range(1, args.accumulation + 1):
            durations = batch_for_budget(name, args.token_budget, seed=seed)
            batch = make_batch(durations, hparams, seed=seed)
            lens = [num_tokens_for_duration(d) for d in durations]
            flops += step_flops(brain, batch, lens)
            batches.append(batch)
            seqlens += lens
            audio_s += sum(durations)
        mixes.append(
            dict(name=name, batches=batches, seqlens=seqlens, audio_s=audio_s, flops=flops)
        )
    return mixes


def free_memory_all(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def print_table(rows: list[dict], ratio_of: str | None = None):
    """Markdown table of ``rows``; with ``ratio_of``, that column over the eager padded row's."""
    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "error"]
    cols = [c for c in cols if any(r.get(c) is not None for r in rows)]
    extra = ["vs eager padded"] if ratio_of else []
    print("| " + " | ".join(cols + extra) + " |")
    print("|" + "---|" * (len(cols) + len(extra)))
    baseline = {
        r["mix"]: r.get(ratio_of)
        for r in rows
        if ratio_of
        and (r.get("compile"), r.get("mode"), r.get("cache")) == ("eager", "padded", "off")
    }
    for r in rows:
        cells = [str(r.get(c, r.get("error", ""))) for c in cols]
        if ratio_of:
            base, value = baseline.get(r["mix"]), r.get(ratio_of)
            cells.append(f"{value / base:.2f}x" if base and value else "")
        print("| " + " | ".join(cells) + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", "--arch", choices=sorted(YAMLS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=["bf16", "fp32"], default=None, help="default bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        type=Variant.parse,
        default=None,
        help="compile/mode/cache triples (default: " + " ".join(DEFAULT_VARIANTS) + ")",
    )
    parser.add_argument(
        "--compile-module-keys",
        nargs="*",
        default=None,
        help="modules the compiled variants compile (default: SLAPBrain.COMPILED_MODULES)",
    )
    parser.add_argument(
        "--accumulation",
        type=int,
        default=2,
        help="micro-batches per optimizer step (grad_accumulation_factor), every variant",
    )
    parser.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="real audio tokens per micro-batch (default 16384 on CUDA, 1500 on CPU); "
        "also where the largest-budget search starts",
    )
    parser.add_argument("--mixes", nargs="+", default=["audiocaps", "clotho", "wavcaps"])
    parser.add_argument(
        "--search-mixes",
        nargs="*",
        default=None,
        help="mixes for the largest-budget search (CUDA only, eager, no accumulation; default all)",
    )
    parser.add_argument(
        "--search-modes", dest="modes_searched", nargs="+", default=["packed", "padded"]
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed optimizer steps")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variants is None:
        args.variants = [Variant.parse(v) for v in DEFAULT_VARIANTS]
    if args.dtype is None:
        args.dtype = "bf16" if cuda else "fp32"
    if args.token_budget is None:
        args.token_budget = 16384 if cuda else 1500
    if args.search_mixes is None:
        args.search_mixes = list(args.mixes) if cuda else []
    if args.warmup is None:
        args.warmup = 3 if cuda else 1
    if args.steps is None:
        args.steps = 3 if cuda else 2
    return run(args)


if __name__ == "__main__":
    main()
