"""The ``slap`` command: embed, classify, search and caption audio with a SLAP model folder.

Subcommands (``slap SUBCOMMAND --help`` lists every option)::

    slap embed    --model M FILE... -o emb.npy         embeddings + emb.json (row order)
    slap classify --model M FILE... --labels "dog barking,rain"   zero-shot top-k labels
    slap index    --model M DIR -o index.npz           embed every audio file under DIR
    slap search   --model M index.npz "a dog barks" -k 5           text -> audio search
    slap caption  --model M FILE... --beam-size 4      captions
    slap export   RECIPE_OUTPUT MODEL_FOLDER           recipe checkpoint -> model folder
    slap shards   MANIFEST OUT_DIR                     WebDataset shards for training
    slap demo                                          packed encoding of generated clips

Model commands share ``--model FOLDER`` (a folder written by ``slap export``, or
its Hugging Face hub id ``org/name`` once uploaded, fetched into the Hugging Face
cache; its SHA-256 sums are checked before anything is loaded), ``--device cpu|cuda[:i]``,
``--precision fp32|bf16|fp16|int8`` (``speechbrain_slap.precision``),
``--batch-seconds`` (seconds of audio loaded and encoded per forward: the
memory bound), ``--json`` (one JSON document on stdout instead of the human
output) and ``--quiet`` (no progress bar). Progress bars, warnings and errors
go to stderr. Files are read in batches of about ``--batch-seconds`` of audio
and each batch is encoded with one packed forward.

Bad inputs. Each input file that cannot be used (missing, not a file,
undecodable, empty, NaN/Inf or out-of-range samples, a sample rate outside
1-384 kHz) raises
``speechbrain_slap.data.audio.AudioLoadError``; the command prints
``slap CMD: error: FILE: REASON`` on stderr, lists the file under ``failed``
in its output, and goes on with the other files. A model folder that cannot be
used raises ``speechbrain_slap.model_folder.ModelFolderError`` and a bad argument
``CommandError``; both stop the command before any file is processed.

Exit codes:

* 0: every input was processed;
* 1: some inputs failed (each named on stderr); the others were processed and
  their results written (no output file is written when none succeeded);
* 2: usage error, bad argument or unusable model folder: nothing was processed;
* 130: interrupted (Ctrl-C), at any moment (one line on stderr, no partial file);
* 141: stdout was closed by its reader (``slap ... | head``): the output files
  were written, the rest of the printed output is dropped quietly (128 +
  SIGPIPE, what a shell reports for a program killed by a closed pipe).

Arguments are checked before anything is loaded: ``-o`` must not be a folder,
an input file or a path whose folder cannot be written; queries, labels and
templates must be UTF-8 text. A result that is not finite (NaN or infinite)
is never printed as a success: the file is reported as failed.

Authors
 * speechbrain-slap contributors 2026
"""

import os
import signal
import sys

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


_STARTING = {"command": None}


def _interrupted_at_start_up(signum, frame):
    """Ctrl-C while ``slap`` imports its modules and loads the model: one line, exit 130.

    Nothing has been written yet, so the process ends at once: a KeyboardInterrupt
    raised inside a library's import can come out as another error (SciPy's
    NumPy wrapper turns it into a RecursionError).
    """
    command = _STARTING["command"]
    os.write(2, f"slap{f' {command}' if command else ''}: interrupted\n".encode())
    os._exit(EXIT_INTERRUPTED)


def _start_up_done() -> None:
    """From here Ctrl-C raises KeyboardInterrupt (outputs are cleaned up, one line, 130)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_at_start_up:
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "slap":
    # Run as the program (not imported): during start-up Ctrl-C ends it at once.
    signal.signal(signal.SIGINT, _interrupted_at_start_up)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from speechbrain_slap import __version__  # noqa: E402
from speechbrain_slap.outputs import write_atomic  # noqa: E402

# Parsing arguments and answering --help import nothing heavy: torch, SpeechBrain
# and the model code are imported by the subcommand that needs them.
# speechbrain_slap.precision.PRECISIONS, spelled out here so that --help imports no torch.
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# What ``slap index`` looks for (case-insensitive): the formats libsndfile decodes.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


class CommandError(ValueError):
    """An argument a ``slap`` subcommand cannot use (exit code 2); the message says why.

    Example
    -------
    >>> str(CommandError("--labels: no label given"))
    '--labels: no label given'
    """


def model_digest(folder: str | Path) -> str:
    """``speechbrain_slap.model_folder.model_digest`` (imported when first needed)."""
    from speechbrain_slap.model_folder import model_digest as digest

    return digest(folder)


def check_text(value: str, name: str) -> str:
    """Refuses an argument holding bytes that are not UTF-8 (kept by Python as surrogates).

    Arguments
    ---------
    value : str
        The argument as ``sys.argv`` holds it.
    name : str
        Names it in the message (``--labels``, ``QUERY 2``).

    Returns
    -------
    str
        ``value``.

    Example
    -------
    >>> check_text("café", "--labels")
    'café'
    >>> check_text(b"caf\\xe9".decode("utf-8", "surrogateescape"), "QUERY 1")
    Traceback (most recent call last):
    ...
    speechbrain_slap.cli.CommandError: QUERY 1: bytes that are not UTF-8 ('caf\\xe9')
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise CommandError(f"{name}: bytes that are not UTF-8 ('{shown}')") from None
    return value


def check_output(output: str | Path, inputs: Sequence[str | Path] = (), option: str = "-o") -> Path:
    """Refuses an output path before any input is processed.

    A folder, a path whose nearest existing folder cannot be written (or is a
    file), and a path that is one of ``inputs`` (which the output would
    overwrite) are refused.

    Arguments
    ---------
    output : str or Path
        The output file.
    inputs : sequence of str or Path
        The input files of the command.
    option : str
        Names the option in the message.

    Returns
    -------
    Path

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> check_output(folder / "new" / "emb.npy").name
    'emb.npy'
    >>> check_output(folder)
    Traceback (most recent call last):
    ...
    speechbrain_slap.cli.CommandError: -o ...: is a folder
    """
    output = Path(output)
    if output.is_dir():
        raise CommandError(f"{option} {output}: is a folder")
    existing = output.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CommandError(f"{option} {output}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {output}: cannot write in {existing}")
    if output.exists():
        for path in inputs:
            try:
                same = os.path.samefile(output, path)
            except OSError:  # a missing input: reported when it is read
                same = False
            if same:
                raise CommandError(f"{option} {output}: is one of the input audio files")
    return output


# ------------------------------------------------------------------------- argument types


def device_name(text: str) -> str:
    """Checks a ``--device`` value: ``cpu``, ``cuda`` or ``cuda:<index>``.

    Arguments
    ---------
    text : str
        The value given.

    Returns
    -------
    str

    Example
    -------
    >>> device_name("cuda:1")
    'cuda:1'
    """
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:<index>, got {text!r}")
    return text


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0.

    Example
    -------
    >>> positive_float("2.5"), positive_float("1e-3")
    (2.5, 0.001)
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1.

    Example
    -------
    >>> positive_int("4")
    4
    """
    if not re.fullmatch(r"\d+", text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def parse_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """Class names from ``--labels "a,b,c"`` or ``--labels-file`` (one per line).

    Arguments
    ---------
    labels : str, optional
        Comma-separated class names.
    labels_file : str, optional
        UTF-8 text file, one class name per line (blank lines ignored); use it
        for names that contain commas.

    Returns
    -------
    list of str
        Stripped, non-empty, distinct names in the order given.

    Example
    -------
    >>> parse_labels("dog barking, rain,siren", None)
    ['dog barking', 'rain', 'siren']
    """
    if labels_file is not None:
        try:
            text = Path(labels_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"--labels-file {labels_file}: cannot read ({error})") from None
        names, source = text.splitlines(), f"--labels-file {labels_file}"
    else:
        names, source = (labels or "").split(","), "--labels"
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise CommandError(f"{source}: no class name given")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CommandError(f"{source}: repeated class names {repeated}")
    return names


def check_templates(templates: Sequence[str]) -> list[str]:
    """``--template`` values checked by ``speechbrain_slap.prompts.check_templates``.

    Example
    -------
    >>> check_templates(["a sound of {label}", "{label} can be heard"])
    ['a sound of {label}', '{label} can be heard']
    """
    from speechbrain_slap import prompts

    try:
        return prompts.check_templates(templates)
    except ValueError as error:
        raise CommandError(f"--template: {error}") from None


def find_audio_files(root: str | Path, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Audio files under ``root`` (recursive), by extension, sorted.

    Arguments
    ---------
    root : str or Path
        Folder to search.
    extensions : sequence of str
        File name endings, e.g. ``.wav`` (compared case-insensitively).

    Returns
    -------
    list of Path
        Paths relative to ``root``, in sorted order.

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "b").mkdir()
    >>> for name in ["b/x.FLAC", "a.wav", "notes.txt"]:
    ...     _ = (root / name).write_bytes(b"")
    >>> [p.as_posix() for p in find_audio_files(root)]
    ['a.wav', 'b/x.FLAC']
    """
    root = Path(root)
    if not root.is_dir():
        raise CommandError(f"{root}: not a folder")
    wanted = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    found = [p for p in root.rglob("*") if p.name.lower().endswith(wanted) and p.is_file()]
    return sorted(p.relative_to(root) for p in found)


# ------------------------------------------------------------------------------ model and files


def open_model(args: argparse.Namespace):
    """The ``SLAP`` model of ``--model`` (folder or hub id) on ``--device`` (``load_slap``).

    For a hub id, ``args.model`` becomes the local folder its files were
    fetched into, whose ``SHA256SUMS`` digest the commands record.

    Raises
    ------
    ModelFolderError
        The folder is missing, fails its SHA-256 check or cannot be built.
    CommandError
        The CUDA device does not exist.
    """
    import torch

    from speechbrain_slap.model_folder import is_hub_id, load_slap

    if args.device.startswith("cuda"):
        index = int(args.device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise CommandError(f"--device {args.device}: no such CUDA device")
    if not progress_enabled(args):
        # transformers draws its own bar while it loads the text encoder
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model = load_slap(
        args.model,
        run_opts={"device": args.device, "precision": args.precision},
        batch_seconds=args.batch_seconds,
        trust_remote_code=args.trust_remote_code,
    )
    # A hub id's files are in a local folder now: what the commands record (SHA256SUMS digest).
    args.model = model.model_folder if is_hub_id(args.model) else args.model
    _start_up_done()
    return model


def progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bars unless ``--quiet`` or stderr is not a terminal."""
    return not args.quiet and sys.stderr.isatty()


def run_files(model, files: Sequence[str | Path], work, args: argparse.Namespace):
    """``evaluation.process_files`` with ``--batch-seconds``, the progress bar and failures named.

    A file that raises ``AudioLoadError`` is reported on stderr as ``slap CMD:
    error: FILE: REASON`` and listed as ``{"file", "error"}``.

    Returns
    -------
    results : list
        One result of ``work`` per readable file.
    names : list of str
        Their files.
    failed : list of dict
        The files that could not be read.
    """
    from tqdm import tqdm

    from speechbrain_slap.evaluation import process_files

    failed = []

    def report(_, error):
        tqdm.write(f"slap {args.command}: error: {error}", file=sys.stderr)
        failed.append({"file": error.source, "error": error.reason})

    results, read, _ = process_files(
        model, files, work, args.batch_seconds, progress=progress_enabled(args), on_skip=report
    )
    return results, [str(files[i]) for i in read], failed


def exit_code(failed: list) -> int:
    """0 if nothing failed, 1 otherwise."""
    return EXIT_INPUT_FAILED if failed else EXIT_OK


def emit(args: argparse.Namespace, document: dict, lines: Sequence[str]) -> None:
    """Prints ``document`` as JSON (``--json``) or the human ``lines``."""
    if args.json:
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        for line in lines:
            print(line)


# ------------------------------------------------------------------------------ subcommands


def cmd_embed(args: argparse.Namespace) -> int:
    """``slap embed``: one embedding row per readable file, in argument order."""
    output = check_output(args.output, args.files)
    sidecar = output.with_suffix(".json")
    if sidecar == output:
        raise CommandError(f"-o {output}: the row list goes to {sidecar}; name the array .npy")
    check_output(sidecar, args.files, option=f"-o {output}: the row list")
    model = open_model(args)
    rows, names, failed = run_files(model, args.files, model.encode_waveforms, args)
    document = {
        "embeddings": str(output) if rows else None,
        "files": names,
        "failed": failed,
        "model": str(args.model),
        "model_digest": model_digest(args.model),
    }
    if rows:
        import numpy as np
        import torch

        embeddings = torch.stack(rows).numpy().astype(np.float32)
        document["embedding_dim"] = int(embeddings.shape[1])
        write_atomic(output, lambda fout: np.save(fout, embeddings, allow_pickle=False))
        write_atomic(sidecar, json.dumps(document, indent=2) + "\n")
        summary = f"{len(names)} embeddings -> {output} (row order in {sidecar})"
    else:
        summary = f"no file could be read; {output} not written"
    emit(args, document, [summary + (f"; {len(failed)} failed" if failed else "")])
    return exit_code(failed)


def cmd_classify(args: argparse.Namespace) -> int:
    """``slap classify``: zero-shot top-k classes of each file (prompt ensemble)."""
    labels = [
        check_text(label, "--labels") for label in parse_labels(args.labels, args.labels_file)
    ]
    for template in args.template or ():
        check_text(template, "--template")
    from speechbrain_slap.prompts import DEFAULT_TEMPLATE

    templates = check_templates(args.template or [DEFAULT_TEMPLATE])
    top_k = min(args.top_k, len(labels))
    model = open_model(args)
    classes = model.label_embeddings(labels, templates)

    def scores(waves):
        return model.scores_from_embeddings(model.encode_waveforms(waves), classes)

    rows, names, failed = run_files(model, args.files, scores, args)
    results = []
    for name, row in zip(names, rows, strict=True):
        best, index = row.topk(top_k)
        top = [
            {"label": labels[i], "score": float(s), "probability": math.exp(float(s))}
            for s, i in zip(best.tolist(), index.tolist(), strict=True)
        ]
        results.append(dict(file=name, label=top[0]["label"], top_k=top, scores=row.tolist()))
    document = {"labels": labels, "templates": templates, "results": results, "failed": failed}
    lines = [
        f"{r['file']}: " + ", ".join(f"{t['label']} ({t['probability']:.3f})" for t in r["top_k"])
        for r in results
    ]
    emit(args, document, lines)
    return exit_code(failed)


def cmd_index(args: argparse.Namespace) -> int:
    """``slap index``: embeds every audio file under a folder into one ``.npz`` index."""
    root = Path(args.folder)
    extensions = [e.strip() for e in args.extensions.split(",") if e.strip()]
    relative = find_audio_files(root, extensions)
    if not relative:
        raise CommandError(f"{root}: no audio file ({', '.join(extensions)}) found")
    output = check_output(args.output, [root / p for p in relative])
    model = open_model(args)
    rows, names, failed = run_files(
        model, [root / p for p in relative], model.encode_waveforms, args
    )
    paths = [Path(name).relative_to(root).as_posix() for name in names]
    meta = {
        "root": str(root.resolve()),
        "model": str(Path(args.model).resolve()),
        "model_digest": model_digest(args.model),
        "failed": failed,
    }
    if rows:
        import torch

        from speechbrain_slap.search_index import write_index

        meta = write_index(output, torch.stack(rows).numpy(), paths, root, args.model, failed)
        summary = f"{len(paths)} files indexed -> {output}"
    else:
        summary = f"no file could be read; {output} not written"
    document = {"index": str(output) if rows else None, "files": paths, **meta}
    emit(args, document, [summary + (f"; {len(failed)} failed" if failed else "")])
    return exit_code(failed)


def cmd_search(args: argparse.Namespace) -> int:
    """``slap search``: the ``k`` indexed files closest to each text query."""
    from speechbrain_slap.search_index import IndexFileError, load_index, search

    for number, query in enumerate(args.queries, start=1):
        check_text(query, f"QUERY {number}")
    try:
        load_index(args.index)  # a bad index is a usage error, before the model loads
    except IndexFileError as error:
        raise CommandError(str(error)) from None
    model = open_model(args)
    try:
        results, meta, warning = search(model, args.index, args.queries, args.k, args.model)
    except ValueError as error:  # e.g. another embedding dimension, an empty query
        raise CommandError(f"{args.index}: {error}") from None
    if warning:
        print(f"slap search: warning: {warning}", file=sys.stderr)
    root, lines = Path(meta.get("root", "")), []
    for result in results:
        lines.append(result["query"])
        lines += [
            f"  {rank}. {m['score']:.4f}  {root / m['path']}"
            for rank, m in enumerate(result["matches"], start=1)
        ]
    emit(args, {"index": str(args.index), "root": meta.get("root"), "results": results}, lines)
    return EXIT_OK


def cmd_caption(args: argparse.Namespace) -> int:
    """``slap caption``: a caption of each file (beam search)."""
    model = open_model(args)

    def captions(waves):
        return model.caption_waveforms(waves, args.beam_size, args.max_length)

    rows, names, failed = run_files(model, args.files, captions, args)
    results = [{"file": n, "caption": c} for n, c in zip(names, rows, strict=True)]
    emit(
        args,
        {"results": results, "failed": failed},
        [f"{r['file']}: {r['caption']}" for r in results],
    )
    return exit_code(failed)


def cmd_export(args: argparse.Namespace) -> int:
    """``slap export``: a recipe output's best (or given) checkpoint -> model folder."""
    from speechbrain_slap.model_folder import export_model, verify_checksums

    _start_up_done()

    folder = export_model(args.recipe_output, args.model_folder, args.checkpoint, args.overwrite)
    files = sorted(verify_checksums(folder))
    document = {"model_folder": str(folder), "files": files, "model_digest": model_digest(folder)}
    emit(args, document, [f"model folder written to {folder} ({len(files)} weight files)"])
    return EXIT_OK


def run_shards(argv: Sequence[str]) -> int:
    """``slap shards ARGS...``: forwards ``ARGS`` to ``speechbrain_slap.data.shards.main``."""
    from speechbrain_slap.data import shards

    _start_up_done()
    return shards.main(list(argv))


def cmd_demo(args: argparse.Namespace) -> int:
    """``slap demo``: packed vs one-at-a-time embeddings of generated clips."""
    from speechbrain_slap.demo import run_demo
    from speechbrain_slap.hparams import architecture_file

    _start_up_done()

    try:
        summary = run_demo(
            args.hparams or architecture_file("slap_tiny"),
            args.durations,
            args.output_folder,
            seed=args.seed,
            device=args.device,
        )
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None
    rows, max_diff = summary["clips"], summary["packed_vs_alone_max_abs_diff"]
    lines = [f"{'file':40s} {'seconds':>8s} {'tokens':>7s} {'|emb|':>8s}"]
    lines += [
        f"{r['file']:40s} {r['duration_s']:8.2f} {r['tokens']:7d} {r['embedding_norm']:8.4f}"
        for r in rows
    ]
    lines += [
        f"{len(rows)} clips packed into {summary['packed_tokens']} tokens "
        f"(padding to 30 s would need {summary['tokens_if_padded_to_30s']}); embeddings "
        f"({len(rows)}, {summary['embedding_dim']}) -> {summary['embeddings']}",
        f"packed batch vs one clip at a time: max abs difference {max_diff:.2e}",
    ]
    emit(args, summary, lines)
    return EXIT_OK if max_diff <= args.tolerance else EXIT_INPUT_FAILED


# ------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The ``slap`` argument parser (every subcommand).

    Returns
    -------
    argparse.ArgumentParser

    Example
    -------
    >>> argv = ["search", "--model", "m", "index.npz", "a dog", "-k", "3"]
    >>> args = build_parser().parse_args(argv)
    >>> args.queries, args.k, args.device
    (['a dog'], 3, 'cpu')
    """
    parser = argparse.ArgumentParser(
        prog="slap",
        description="SLAP for SpeechBrain: embed, classify, search and caption audio.",
        epilog="Exit codes: 0 ok, 1 some inputs failed (named on stderr; the others were "
        "processed), 2 usage error or unusable model folder, 130 interrupted, 141 stdout "
        "closed by its reader.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="one JSON document on stdout")
    output.add_argument("--quiet", action="store_true", help="no progress bar")
    output.add_argument(
        "--device", type=device_name, default="cpu", help="cpu (default), cuda or cuda:<index>"
    )
    model = argparse.ArgumentParser(add_help=False, parents=[output])
    model.add_argument(
        "--model",
        required=True,
        metavar="FOLDER",
        help="SLAP model folder (slap export) or Hugging Face hub id org/name",
    )
    model.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load a model folder whose hyperparams.yaml builds or calls code outside the "
        "allow-list (hyperparams.yaml is executable configuration: trusted sources only)",
    )
    model.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default), bf16 (faster on CPUs with AVX-512 BF16 or AMX, and on GPUs), "
        "fp16 (GPUs): the autocast dtype of the encoders and the caption decoder; or int8 "
        "(CPUs, fastest there): int8 linear layers in the audio encoder",
    )
    model.add_argument(
        "--batch-seconds",
        type=positive_float,
        default=300.0,
        help="seconds of audio read and encoded per forward; bounds memory (default 300)",
    )
    files_help = "audio files (any format libsndfile reads, any rate and channel count)"

    p = sub.add_parser("embed", parents=[model], help="audio embeddings to a .npy file")
    p.add_argument("files", nargs="+", metavar="FILE", help=files_help)
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT.npy",
        help="(N, D) float32 array, one row per readable file in argument order; "
        "OUT.json lists the rows' files and the failed files",
    )
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("classify", parents=[model], help="zero-shot classification")
    p.add_argument("files", nargs="+", metavar="FILE", help=files_help)
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help='comma-separated class names, "dog barking,rain"')
    labels.add_argument("--labels-file", help="text file, one class name per line")
    p.add_argument(
        "--template",
        action="append",
        help="prompt with a {label} field; repeat for a prompt ensemble "
        "(default: the interface's DEFAULT_TEMPLATE, 'This is a sound of {label}.')",
    )
    p.add_argument("--top-k", type=positive_int, default=5, help="classes shown per file")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("index", parents=[model], help="embed every audio file under a folder")
    p.add_argument("folder", metavar="DIR", help="searched recursively")
    p.add_argument("-o", "--output", required=True, metavar="INDEX.npz", help="index file")
    p.add_argument(
        "--extensions",
        default=",".join(AUDIO_EXTENSIONS),
        help="comma-separated file endings to index (default %(default)s)",
    )
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[model], help="search an index with text queries")
    p.add_argument("index", metavar="INDEX.npz", help="written by slap index")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="text queries")
    p.add_argument("-k", type=positive_int, default=5, help="results per query (default 5)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("caption", parents=[model], help="caption audio files")
    p.add_argument("files", nargs="+", metavar="FILE", help=files_help)
    p.add_argument("--beam-size", type=positive_int, default=4, help="1 is greedy (default 4)")
    p.add_argument("--max-length", type=positive_int, default=None, help="most caption tokens")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("export", parents=[output], help="recipe output -> model folder")
    p.add_argument("recipe_output", metavar="RECIPE_OUTPUT_FOLDER")
    p.add_argument("model_folder", metavar="MODEL_FOLDER")
    p.add_argument("--checkpoint", help="a CKPT+... folder (default: best by mean_R@1)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty MODEL_FOLDER")
    p.set_defaults(func=cmd_export)

    # Parsed by speechbrain_slap.data.shards; listed here for `slap --help`.
    sub.add_parser(
        "shards",
        add_help=False,
        help="write WebDataset shards from a manifest (slap shards --help)",
    )

    p = sub.add_parser(
        "demo", parents=[output], help="encode generated clips of several durations, packed"
    )
    p.add_argument(
        "--hparams",
        default=None,
        help="architecture yaml (default: the tiny architecture shipped with the package, "
        "speechbrain_slap/hparams/slap_tiny.yaml)",
    )
    p.add_argument("--durations", type=float, nargs="+", default=[1.3, 10.0, 27.5])
    p.add_argument("--output-folder", default="results/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="largest allowed packed-vs-alone difference (exit 1 above it)",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``slap`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Arguments
    ---------
    argv : sequence of str, optional
        Command-line arguments after ``slap``.

    Returns
    -------
    int
        0 ok, 1 some inputs failed, 2 usage or model folder error, 130 interrupted,
        141 stdout closed by its reader (``slap ... | head``).

    Example
    -------
    >>> main(["classify", "--model", "no/such/folder", "a.wav", "--labels", " , "])
    2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in _COMMANDS else None
    _STARTING["command"] = command
    try:
        _printable_file_names()
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except KeyboardInterrupt:
        print(f"slap{f' {command}' if command else ''}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `slap ... | head`: the reader has gone. Exit as a program killed by SIGPIPE
        # would (128 + 13), quietly; stdout goes to /dev/null so that the
        # interpreter's final flush does not complain either.
        _silence_stdout()
        return EXIT_BROKEN_PIPE


_COMMANDS = ("embed", "classify", "index", "search", "caption", "export", "shards", "demo")


def _run(argv: list[str]) -> int:
    try:
        if argv[:1] == ["shards"]:
            return run_shards(argv[1:])
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: usage error (2) or --help (0); return, don't exit
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if not logging.getLogger().handlers:
        # Warnings and errors of the libraries on stderr; their INFO chatter is not for users.
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        logging.basicConfig(handlers=[handler], format="%(name)s: %(levelname)s: %(message)s")
    from speechbrain_slap.model_folder import ModelFolderError

    try:
        return args.func(args)
    except (CommandError, ModelFolderError) as error:
        print(f"slap {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _printable_file_names() -> None:
    """File names that are not UTF-8 are printed as the bytes they are (as ``ls`` does)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="surrogateescape")
        except (ValueError, OSError):  # a stream that cannot be reconfigured
            pass


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation: no file descriptor
        pass


if __name__ == "__main__":
    sys.exit(main())
