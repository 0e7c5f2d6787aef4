"""WebDataset tar shards from a SpeechBrain manifest (``slap shards``).

Training at scale reads audio sequentially from large tar files instead of
opening one file per clip. ``write_shards`` turns a pretraining manifest (CSV
with ``ID, duration, wav, captions``; ``$data_root`` is replaced in ``wav``
only, and rows are checked as for training) into::

    <out_dir>/shard-000000.tar          {key}.json then {key}.flac, per clip
    <out_dir>/shard-000001.tar
    ...
    <out_dir>/shards.json               the index: config, shards, skipped rows

Shards are written with ``webdataset.TarWriter``. Each sample is a pair of
members sharing a ``key`` (the row's position in the
manifest, 9 digits: unique and free of dots, which WebDataset reserves for
extensions):

* ``{key}.json``: ``{"captions": [...], "duration": seconds, "source_id": ID,
  ...}`` plus every other manifest column (``wav`` keeps the source path);
  ``duration`` is that of the audio actually stored. The JSON comes first, so
  a reader can batch by duration before decoding any audio.
* ``{key}.flac``: 16-bit FLAC, mono, **resampled to 16 kHz** (the model's
  input rate; ``sample_rate`` changes it), read with
  ``speechbrain_slap.data.audio.load_audio`` as training and inference read
  files. Decoding and resampling the source once here saves doing it every
  epoch, and a 16-bit 16 kHz source (as the embedded corpus) is stored
  bit-exactly.

Rows are shuffled with a seeded permutation before they are cut into shards
(``shuffle_seed``; ``None`` keeps the manifest order), so every shard mixes the
manifest's sources and a reader's shuffle buffer only has to mix nearby clips.
A shard closes before it would exceed ``max_shard_samples`` clips or
``max_shard_size`` bytes of uncompressed 16-bit audio (FLAC shards come out
smaller). The plan depends only on the manifest and these settings, so a second
run writes the same shards.

Resuming. Shards are written in parallel (one process per shard), each to
``shard-000123.tar.tmp`` (its six-digit number) then renamed: a ``.tar`` is always complete. A rerun
keeps every complete shard (it is read, not rewritten) and rewrites the
missing ones, replacing leftover ``.tmp`` files. ``shards.json`` is written at
the start with ``"complete": false`` and the settings, and again at the end;
a rerun with other settings (or another manifest) raises instead of mixing
two plans in one folder.

Rows the manifest check rejects (``speechbrain_slap.data.manifest.check_manifest``:
no caption, a bad duration, ...) and rows whose audio cannot be read, is empty, or holds NaN or
Inf samples are skipped; each is named in the log and in the index
(``skipped``, with the reason). Float audio beyond full scale (``|x| > 1``,
which a float WAV can hold) is clipped to 16 bits; each clip that lost samples
that way is named in the log and in the index (``clipped``: the count and the
peak), as in its JSON member (``pcm16_clipped``).

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import io
import json
import logging
import multiprocessing
import os
import re
import sys
import tarfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from speechbrain_slap.data.manifest import check_manifest, split_captions
from speechbrain_slap.model_folder.checksums import sha256sum
from speechbrain_slap.outputs import write_json

logger = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
SHARD_PATTERN = "shard-{:06d}.tar"
# Key of the clipping record in a sample's JSON (named so that no manifest column clashes).
CLIPPED_KEY = "pcm16_clipped"
INDEX_VERSION = 1
# A tar member costs a 512-byte header and is padded to 512 bytes; with the
# JSON, a sample costs about this much on top of its audio.
SAMPLE_OVERHEAD_BYTES = 3 * 512

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: str | int) -> int:
    """Bytes from a size such as ``"500MB"``, ``"1GB"``, ``"1.5GiB"`` or ``4096``.

    ``kB/MB/GB/TB`` are powers of 1000, ``KiB/MiB/GiB/TiB`` powers of 1024.

    Arguments
    ---------
    size : str or int
        The size; a bare number is a count of bytes.

    Returns
    -------
    int
        The size in bytes (positive).

    Example
    -------
    >>> parse_size("500MB"), parse_size("1 GiB"), parse_size(4096)
    (500000000, 1073741824, 4096)
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(size))
        unit = match[2].upper() if match else None
        if unit not in _SIZE_UNITS:
            raise ValueError(
                f"size {size!r} is not understood: expected a number and an optional unit "
                "(B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 500MB or 1GB"
            )
        value = int(float(match[1]) * _SIZE_UNITS[unit])
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value


# --------------------------------------------------------------------------- planning


def plan_shards(
    durations: Sequence[float],
    max_shard_size: int,
    max_shard_samples: int,
    sample_rate: int = 16000,
    shuffle_seed: int | None = 0,
) -> list[list[int]]:
    """Cuts rows into shards; returns each shard's row indices.

    A shard closes before adding a row would exceed ``max_shard_samples`` rows
    or ``max_shard_size`` bytes, counting 16-bit PCM audio at ``sample_rate``
    plus ``SAMPLE_OVERHEAD_BYTES`` per row (a row larger than the limit gets a
    shard of its own).

    Arguments
    ---------
    durations : sequence of float
        Manifest duration of each row, in seconds.
    max_shard_size : int
        Byte budget of one shard.
    max_shard_samples : int
        Most rows in one shard.
    sample_rate : int
        Sample rate of the stored audio.
    shuffle_seed : int, optional
        Seed of the row permutation; ``None`` keeps the manifest order.

    Returns
    -------
    list of list of int

    Example
    -------
    >>> plan_shards([1.0, 1.0, 1.0], max_shard_size=10**9, max_shard_samples=2,
    ...             shuffle_seed=None)
    [[0, 1], [2]]
    """
    if max_shard_samples < 1:
        raise ValueError(f"max_shard_samples must be >= 1, got {max_shard_samples}")
    order = np.arange(len(durations))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(durations))
    shards, current, size = [], [], 0
    for index in order.tolist():
        cost = int(max(float(durations[index]), 0.0) * sample_rate) * 2 + SAMPLE_OVERHEAD_BYTES
        if current and (len(current) >= max_shard_samples or size + cost > max_shard_size):
            shards.append(current)
            current, size = [], 0
        current.append(index)
        size += cost
    if current:
        shards.append(current)
    return shards


# --------------------------------------------------------------------------- one shard


def sample_key(row_index: int) -> str:
    """The tar key of manifest row ``row_index`` (9 digits, no dot).

    Example
    -------
    >>> sample_key(42)
    '000000042'
    """
    return f"{row_index:09d}"


def quantize_pcm16(audio: np.ndarray) -> tuple[np.ndarray, int]:
    """Float audio in [-1, 1] to int16, the inverse of soundfile's ``int / 32768``.

    Returns the int16 samples and how many were beyond full scale (clipped).

    Example
    -------
    >>> quantize_pcm16(np.array([0.5, -1.0, 2.0, -1.5], dtype=np.float32))
    (array([ 16384, -32768,  32767, -32768], dtype=int16), 2)
    """
    scaled = np.round(audio * 32768.0)
    clipped = int(np.count_nonzero((scaled > 32767) | (scaled < -32768)))
    return np.clip(scaled, -32768, 32767).astype(np.int16), clipped


def duration_bins(durations: Sequence[float]) -> dict[str, list]:
    """Clip count and seconds per whole second of duration (an index entry's ``duration_bins``).

    With them a reader finds the seconds of a shard with every clip capped at
    any whole number of seconds (``speechbrain_slap.data.stream.capped_seconds``).

    Arguments
    ---------
    durations : sequence of float
        Seconds of each clip.

    Returns
    -------
    dict
        ``{str(floor(seconds)): [clips, seconds]}``, sorted by bin.

    Example
    -------
    >>> duration_bins([0.5, 1.25, 1.5, 12.0])
    {'0': [1, 0.5], '1': [2, 2.75], '12': [1, 12.0]}
    """
    bins = {}
    for duration in durations:
        entry = bins.setdefault(int(duration), [0, 0.0])
        entry[0] += 1
        entry[1] += float(duration)
    return {str(b): [bins[b][0], round(bins[b][1], 3)] for b in sorted(bins)}


def _shard_writer(path: Path):
    """A ``webdataset.TarWriter`` of plain tar members: read-only, no owner, time 0.

    ``mtime=0`` makes identical input give byte-identical shards (a rerun and
    the parallel writer are compared byte for byte).
    """
    # Imported here: webdataset imports torch, and `slap shards --help` must not.
    import webdataset

    return webdataset.TarWriter(
        str(path), encoder=False, user="", group="", mode=0o444, mtime=0, format="PAX_FORMAT"
    )


def _sample_members(row: dict, sample_rate: int) -> tuple[bytes, bytes, float, dict | None]:
    """(json bytes, flac bytes, seconds, clipping) of one row; raises ValueError if unusable.

    ``clipping`` is None, or ``{"id", "wav", "samples", "of", "peak"}`` when samples
    beyond full scale were clipped to 16 bits.
    """
    # Imported here: `slap shards --help` imports this module and must not import torch.
    from speechbrain_slap.data.audio import load_audio

    captions = split_captions(row["captions"])
    if not captions:
        raise ValueError("no caption")
    # Mono, resampled, non-empty and finite (NaN would be quantised to arbitrary int16).
    audio = load_audio(row["wav"], sample_rate).numpy()
    flac = io.BytesIO()
    pcm, clipped = quantize_pcm16(audio)
    soundfile.write(flac, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    seconds = audio.size / sample_rate
    extra = {k: v for k, v in row.items() if k not in ("ID", "duration", "captions")}
    meta = {"captions": captions, "duration": seconds, "source_id": row["ID"], **extra}
    clipping = None
    if clipped:
        peak = round(float(np.abs(audio).max()), 4)
        meta[CLIPPED_KEY] = {"samples": clipped, "of": audio.size, "peak": peak}
        clipping = _clipping_entry(meta)
    return (
        json.dumps(meta, ensure_ascii=False).encode("utf-8"),
        flac.getvalue(),
        seconds,
        clipping,
    )


def _clipping_entry(meta: dict) -> dict:
    """The index's ``clipped`` entry of a sample from its JSON member."""
    return {"id": meta["source_id"], "wav": meta.get("wav"), **meta[CLIPPED_KEY]}


def write_shard(path: str | os.PathLike, rows: Sequence[tuple[int, dict]], sample_rate: int):
    """Writes one shard (via ``<path>.tmp``, renamed when complete).

    Arguments
    ---------
    path : str or path
        The ``.tar`` to write.
    rows : sequence of (int, dict)
        ``(row index, manifest row)`` of every clip of the shard.
    sample_rate : int
        Sample rate of the stored audio.

    Returns
    -------
    dict
        ``{"name", "samples", "seconds", "bytes", "duration_bins" (see
        ``duration_bins``), "skipped": [{"id", "wav", "reason"}], "clipped":
        [{"id", "wav", "samples", "of", "peak"}]}``.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> soundfile.write(folder / "a.wav", np.zeros(1600, dtype="int16"), 16000)
    >>> row = {"ID": "a", "duration": 0.1, "wav": str(folder / "a.wav"), "captions": "Silence."}
    >>> stats = write_shard(folder / "shard-000000.tar", [(0, row)], 16000)
    >>> stats["samples"], stats["seconds"], stats["skipped"], stats["clipped"]
    (1, 0.1, [], [])
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    skipped, clipped, durations = [], [], []
    with _shard_writer(tmp) as sink:
        for index, row in rows:
            key = sample_key(index)
            try:
                meta, flac, duration, clipping = _sample_members(row, sample_rate)
            except Exception as err:  # any unreadable row is skipped, not fatal
                reason = f"{type(err).__name__}: {err}"
                skipped.append({"id": row["ID"], "wav": row["wav"], "reason": reason})
                continue
            # TarWriter writes a sample's members in sorted order (flac, json); two
            # writes with one key put the JSON first, so readers see the duration
            # before the audio. Consecutive members with one key are one sample.
            sink.write({"__key__": key, "json": meta})
            sink.write({"__key__": key, "flac": flac})
            durations.append(duration)
            if clipping is not None:
                clipped.append(clipping)
    os.replace(tmp, path)
    return _shard_stats(path, durations, skipped, clipped)


def scan_shard(path: str | os.PathLike, rows: Sequence[tuple[int, dict]]) -> dict:
    """The statistics of an existing complete shard, as ``write_shard`` returns them.

    Only the JSON members are read (audio members are skipped by seeking, which
    ``tarfile`` does on a local file; WebDataset's iterators read every member).
    Planned rows absent from the shard were skipped when it was written.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> gone = {"ID": "a", "duration": 1.0, "wav": str(folder / "gone.wav"), "captions": "Rain."}
    >>> _ = write_shard(folder / "s.tar", [(0, gone)], 16000)
    >>> scan_shard(folder / "s.tar", [(0, gone)])["skipped"][0]["reason"]
    'skipped when the shard was written'
    """
    path = Path(path)
    keys, durations, clipped = set(), [], []
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if member.name.endswith(".json"):
                meta = json.loads(tar.extractfile(member).read())
                durations.append(float(meta["duration"]))
                keys.add(member.name.split(".", 1)[0])
                if CLIPPED_KEY in meta:
                    clipped.append(_clipping_entry(meta))
    skipped = [
        {"id": row["ID"], "wav": row["wav"], "reason": "skipped when the shard was written"}
        for index, row in rows
        if sample_key(index) not in keys
    ]
    return _shard_stats(path, durations, skipped, clipped)


def _shard_stats(path: Path, durations: list[float], skipped: list[dict], clipped: list[dict]):
    """A shard's index entry (``write_shard``'s return value)."""
    return {
        "name": path.name,
        "samples": len(durations),
        "seconds": round(sum(durations), 3),
        "bytes": path.stat().st_size,
        "duration_bins": duration_bins(durations),
        "skipped": skipped,
        "clipped": clipped,
    }


# --------------------------------------------------------------------------- all shards


def _worker_init():
    # One process per shard already uses every core; torch (imported to read audio) would
    # oversubscribe them with its own threads.
    os.environ["OMP_NUM_THREADS"] = "1"


def write_shards(
    manifest_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_shard_size: int | str = "1GB",
    max_shard_samples: int = 10000,
    num_workers: int = 1,
    data_root: str | os.PathLike | None = None,
    sample_rate: int = 16000,
    shuffle_seed: int | None = 0,
    progress: bool = True,
) -> dict:
    """Writes WebDataset shards of a manifest, in parallel and resumably.

    See the module docstring for the layout, the plan and what a rerun does.

    Arguments
    ---------
    manifest_csv : str or path
        Pretraining manifest (``ID, duration, wav, captions`` + any columns).
    out_dir : str or path
        Folder of the shards and of ``shards.json`` (created).
    max_shard_size : int or str
        Byte budget of a shard's uncompressed 16-bit audio, e.g. ``"1GB"``.
    max_shard_samples : int
        Most clips in one shard.
    num_workers : int
        Shards written at the same time (processes); 1 writes in this process.
    data_root : str or path, optional
        Replaces ``$data_root`` in the manifest.
    sample_rate : int
        Sample rate of the stored FLAC audio (16 kHz, the model's).
    shuffle_seed : int, optional
        Seed of the row permutation before sharding; ``None`` keeps the order.
    progress : bool
        Show a tqdm progress bar (clips).

    Returns
    -------
    dict
        The index written to ``<out_dir>/shards.json``.

    Example
    -------
    >>> from speechbrain_slap.data.synthetic import generate_corpus
    >>> folder = getfixture("tmp_path")
    >>> manifests = generate_corpus(folder / "corpus", n_train=3, n_valid=0, n_test=0,
    ...                             max_duration=4.0, progress=False)
    >>> index = write_shards(manifests["train"], folder / "shards", max_shard_samples=2,
    ...                      data_root=folder / "corpus", progress=False)
    >>> [shard["name"] for shard in index["shards"]], index["num_samples"]
    (['shard-000000.tar', 'shard-000001.tar'], 3)
    """
    manifest_csv, out_dir = Path(manifest_csv), Path(out_dir)
    max_shard_size = parse_size(max_shard_size)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    rows, rejected = check_manifest(manifest_csv, data_root)
    plan = plan_shards(
        [row["duration"] for row in rows],
        max_shard_size,
        max_shard_samples,
        sample_rate,
        shuffle_seed,
    )
    config = {
        "manifest_sha256": sha256sum(manifest_csv),
        "max_shard_size": max_shard_size,
        "max_shard_samples": int(max_shard_samples),
        "sample_rate": int(sample_rate),
        "shuffle_seed": shuffle_seed,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / INDEX_NAME
    if index_path.exists():
        found = json.loads(index_path.read_text()).get("config")
        if found != config:
            raise ValueError(
                f"{out_dir} holds shards written with other settings or another manifest "
                f"({found}, now {config}); delete the folder or choose another out_dir"
            )
    index = {
        "version": INDEX_VERSION,
        "complete": False,
        "config": config,
        "manifest": str(manifest_csv.resolve()),
        "data_root": None if data_root is None else str(data_root),
        "sample_rate": int(sample_rate),
    }
    write_json(index_path, index, indent=1)

    jobs = [
        (out_dir / SHARD_PATTERN.format(i), [(r, rows[r]) for r in shard])
        for i, shard in enumerate(plan)
    ]
    results = {}
    bar = tqdm(total=len(rows), unit="clip", desc="shards", disable=not progress)
    pending = []
    for path, shard_rows in jobs:
        if path.exists():  # complete (written under a temporary name, then renamed)
            results[path.name] = scan_shard(path, shard_rows)
            bar.update(len(shard_rows))
        else:
            pending.append((path, shard_rows))
    if pending:
        logger.info(
            "writing %d of %d shards to %s (%d kept)",
            len(pending),
            len(jobs),
            out_dir,
            len(jobs) - len(pending),
        )
    if num_workers == 1:
        for path, shard_rows in pending:
            results[path.name] = write_shard(path, shard_rows, sample_rate)
            bar.update(len(shard_rows))
    elif pending:
        # spawn: the parent may hold torch's OpenMP threads, which fork does not survive.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_worker_init) as pool:
            futures = {
                pool.submit(write_shard, path, shard_rows, sample_rate): len(shard_rows)
                for path, shard_rows in pending
            }
            for future in as_completed(futures):
                stats = future.result()
                results[stats["name"]] = stats
                bar.update(futures[future])
    bar.close()

    shards = [results[path.name] for path, _ in jobs]
    skipped = rejected + [item for stats in shards for item in stats.pop("skipped")]
    for item in skipped:
        logger.warning("skipped %s (%s): %s", item["id"], item["wav"], item["reason"])
    clipped = [item for stats in shards for item in stats.pop("clipped")]
    for item in clipped:
        logger.warning(
            "clipped %s (%s): %d of %d samples beyond full scale (peak %s) stored at int16 "
            "full scale",
            item["id"],
            item["wav"],
            item["samples"],
            item["of"],
            item["peak"],
        )
    index.update(
        complete=True,
        num_shards=len(shards),
        num_samples=sum(s["samples"] for s in shards),
        total_seconds=round(sum(s["seconds"] for s in shards), 3),
        num_skipped=len(skipped),
        num_clipped=len(clipped),
        shards=shards,
        skipped=skipped,
        clipped=clipped,
    )
    write_json(index_path, index, indent=1)
    logger.info(
        "%d shards, %d clips, %.1f h of audio in %s; %d rows skipped, %d clipped",
        len(shards),
        index["num_samples"],
        index["total_seconds"] / 3600,
        out_dir,
        len(skipped),
        len(clipped),
    )
    return index


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the ``slap shards`` arguments to ``parser`` (for a subcommand).

    Example
    -------
    >>> args = add_arguments(argparse.ArgumentParser()).parse_args(["m.csv", "out"])
    >>> args.max_shard_size, args.num_workers >= 1
    (1000000000, True)
    """

    def size(text):
        try:
            return parse_size(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parser.add_argument("manifest", help="pretraining manifest (CSV: ID, duration, wav, captions)")
    parser.add_argument("out_dir", help="folder of the shards and shards.json")
    parser.add_argument(
        "--max-shard-size",
        type=size,
        default="1GB",
        help="byte budget of a shard's uncompressed 16-bit audio, e.g. 500MB, 1GB (default 1GB)",
    )
    parser.add_argument(
        "--max-shard-samples", type=int, default=10000, help="most clips per shard (10000)"
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=max(1, os.cpu_count() or 1),
        help="shards written in parallel (default: the number of CPUs)",
    )
    parser.add_argument("--data-root", default=None, help="replaces $data_root in the manifest")
    parser.add_argument(
        "--sample-rate", type=int, default=16000, help="stored sample rate (default 16000)"
    )
    parser.add_argument(
        "--shuffle-seed",
        type=int,
        default=0,
        help="seed of the row permutation before sharding (default 0; -1 keeps the order)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Runs ``slap shards`` with parsed arguments; prints a one-line summary.

    Returns
    -------
    int
        0 (errors raise ``FileNotFoundError`` or ``ValueError``).
    """
    index = write_shards(
        args.manifest,
        args.out_dir,
        max_shard_size=args.max_shard_size,
        max_shard_samples=args.max_shard_samples,
        num_workers=args.num_workers,
        data_root=args.data_root,
        sample_rate=args.sample_rate,
        shuffle_seed=None if args.shuffle_seed < 0 else args.shuffle_seed,
        progress=not args.no_progress,
    )
    print(
        f"{index['num_shards']} shards, {index['num_samples']} clips, "
        f"{index['total_seconds'] / 3600:.2f} h of audio, {index['num_skipped']} rows skipped, "
        f"{index['num_clipped']} clipped -> {Path(args.out_dir) / INDEX_NAME}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``slap shards MANIFEST OUT_DIR [--max-shard-size 1GB] [--num-workers N] ...``.

    Arguments
    ---------
    argv : sequence of str, optional
        Arguments after ``shards`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code: 0, or 2 with a message on stderr for a bad input.

    Example
    -------
    >>> main(["missing.csv", str(getfixture("tmp_path"))])
    2
    """
    parser = add_arguments(
        argparse.ArgumentParser(
            prog="slap shards", description="Write WebDataset shards from a manifest"
        )
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"slap shards: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
