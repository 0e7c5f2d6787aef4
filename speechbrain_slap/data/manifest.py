"""Manifests: the one place where they are read, checked and written.

Every manifest is a SpeechBrain CSV whose first columns are ``ID, duration,
wav`` (``wav`` may start with ``$data_root``, which ``data_folder`` replaces
when the manifest is read; only ``wav`` has it replaced, so a caption may hold
a ``$``). Two kinds:

* **Caption manifests** (``CAPTION_COLUMNS``: ``ID, duration, wav,
  captions``), where ``captions`` holds every caption of a clip joined by
  ``CAPTION_SEPARATOR``; other columns, such as ``sound_type``, are kept.
  Pretraining, the fine-tuning recipes (AudioCaps, Clotho, WavCaps), the
  retrieval and captioning evaluations and the shard writer read them; the
  prepare scripts write them with ``write_caption_manifest``.
* **Labelled manifests** (``LABEL_COLUMNS``: ``ID, duration, wav, label,
  fold``) of the zero-shot classification recipes (``write_labelled_manifest``,
  ``read_labelled_manifest``); the tagging recipes' manifests are written with
  the same ``write_rows``.

Training runs for days over millions of files, so one bad row must not stop
it. ``validate_manifest`` checks every row before a dataset is built: a row
with a missing ID or wav, a missing, non-numeric, non-finite or non-positive
duration, no caption (empty or whitespace), a duplicate ID, the wrong number
of fields, or bytes that are not UTF-8 is left out (the file is decoded with
``errors="surrogateescape"``, so a bad byte spoils its row only);
``load_manifest`` writes the rejected rows with their reasons to a CSV and
logs how many, with the first few IDs. The evaluations read with the same
checks but stop at a bad row (``read_clips``): an evaluation split must be
scored whole. Audio is checked where it is read (``speechbrain_slap.data.audio``).

Nothing here imports torch: the shard writer's processes read manifests too.

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from speechbrain_slap.outputs import write_csv

logger = logging.getLogger(__name__)

# A caption manifest's ``captions`` field holds every caption of a clip joined by this.
CAPTION_SEPARATOR = " | "
CAPTION_COLUMNS = ("ID", "duration", "wav", "captions")
LABEL_COLUMNS = ("ID", "duration", "wav", "label", "fold")
# The fold of every clip of a dataset without official folds.
SINGLE_FOLD = "all"
REJECTED_COLUMNS = ("line", "ID", "reason")
# A preparation's options and per-split counts, beside the manifests it wrote.
REPORT_FILE = "prepare.json"
# What a file starts with when git-lfs left a pointer in place of the audio.
LFS_POINTER = b"version https://git-lfs"
# As SpeechBrain's load_data_csv spells a variable.
_VARIABLE = re.compile(r"\$([\w.]+)")
# Bytes that are not UTF-8 decode to these with errors="surrogateescape".
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# IDs named in the log when rows or items are skipped (all of them go to the CSV).
LOGGED_IDS = 5
# SpeechBrain's CSV reader replaces ``$name`` in every field (load_data_csv).
_CSV_VARIABLE = re.compile(r"\$[\w.]")


def split_captions(captions: str) -> list[str]:
    """The captions of one clip from a manifest's ``captions`` field.

    Example
    -------
    >>> split_captions("A dog barks. | Barking.")
    ['A dog barks.', 'Barking.']
    """
    return [c.strip() for c in captions.split(CAPTION_SEPARATOR) if c.strip()]


# --------------------------------------------------------------------- checking rows


@dataclass
class RejectedRow:
    """A manifest row left out of training, and why.

    Arguments
    ---------
    line : int
        Line of the CSV where the row ends (1 is the header).
    id : str
        The row's ID (undecodable bytes shown as ``\\x..`` escapes; may be empty).
    reason : str
        What was wrong.

    Example
    -------
    >>> RejectedRow(3, "clip_2", "empty caption").reason
    'empty caption'
    """

    line: int
    id: str
    reason: str


def _shown(text: str) -> str:
    """``text`` with undecodable bytes as ``\\x..`` escapes (printable, writable as UTF-8)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _row_problem(row: dict, columns: Sequence[str]) -> str | None:
    """Why a raw CSV row cannot be used, before its values are parsed."""
    if None in row:  # csv.DictReader files surplus fields under None
        return f"{len(columns) + len(row[None])} fields, expected {len(columns)}"
    missing = [name for name in columns if row[name] is None]
    if missing:
        return f"{len(columns) - len(missing)} fields, expected {len(columns)} (no {missing})"
    undecodable = [name for name in columns if _UNDECODABLE.search(row[name])]
    if undecodable:
        return f"bytes that are not UTF-8 in {undecodable}"
    return None


def _value_problem(row: dict, clip_id: str, first_line: dict) -> str | None:
    """Why a row's values cannot be trained on (the first problem found)."""
    if not clip_id:
        return "missing ID"
    if clip_id in first_line:
        return f"duplicate ID (first on line {first_line[clip_id]})"
    problem = _duration_problem(row["duration"])
    if problem is not None:
        return problem
    if not row["wav"].strip():
        return "missing wav"
    if not split_captions(row["captions"]):
        return "empty caption"
    return None


def _duration_problem(text: str) -> str | None:
    if not text.strip():
        return "missing duration"
    try:
        duration = float(text)
    except ValueError:
        return f"non-numeric duration {text!r}"
    if not math.isfinite(duration):
        return f"non-finite duration {text!r}"
    if duration <= 0:
        return f"non-positive duration {text!r}"
    return None


def validate_manifest(
    csv_path: str | Path, data_folder: str | Path
) -> tuple[dict[str, dict], list[RejectedRow]]:
    """Reads a caption manifest and leaves out the rows that cannot be trained on.

    See the module docstring for what is checked. A file that cannot be a
    caption manifest at all (missing, no header, a required column missing)
    raises.

    Arguments
    ---------
    csv_path : str or Path
        The manifest (CSV with at least ``ID, duration, wav, captions``).
    data_folder : str or Path
        Replaces ``$data_root`` in the ``wav`` field.

    Returns
    -------
    rows : dict
        ``{ID: {column: value}}`` of the usable rows in file order, ``ID``
        removed and ``duration`` a float (``DynamicItemDataset``'s input).
    rejected : list of RejectedRow
        The rows left out, in file order.

    Raises
    ------
    ValueError
        The file has no header or lacks a required column.

    Example
    -------
    >>> path = getfixture("tmp_path") / "train.csv"
    >>> _ = path.write_bytes(
    ...     b"ID,duration,wav,captions\\n"
    ...     b"a,1.5,$data_root/a.wav,A dog barks. | Barking.\\n"
    ...     b"b,abc,$data_root/b.wav,Rain.\\n"
    ...     b"c,2.0,$data_root/c.wav,   \\n"
    ...     b"d,2.0,$data_root/d.wav,Caf\\xe9 noise.\\n"
    ... )
    >>> rows, rejected = validate_manifest(path, "/data")
    >>> rows
    {'a': {'duration': 1.5, 'wav': '/data/a.wav', 'captions': 'A dog barks. | Barking.'}}
    >>> [(r.line, r.id, r.reason) for r in rejected]  # doctest: +NORMALIZE_WHITESPACE
    [(3, 'b', "non-numeric duration 'abc'"), (4, 'c', 'empty caption'),
     (5, 'd', "bytes that are not UTF-8 in ['captions']")]
    """
    csv_path = Path(csv_path)
    # Bytes that are not UTF-8 become lone surrogates, which mark their row only.
    with open(csv_path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fin:
        return _validate_rows(csv.DictReader(fin, skipinitialspace=True), csv_path, data_folder)


def _validate_rows(reader: csv.DictReader, csv_path: Path, data_folder) -> tuple[dict, list]:
    columns = reader.fieldnames
    if not columns:
        raise ValueError(f"{csv_path}: no header; expected columns {CAPTION_COLUMNS}")
    missing = [name for name in CAPTION_COLUMNS if name not in columns]
    if missing:
        raise ValueError(
            f"{csv_path}: no column {missing}; a caption manifest has {CAPTION_COLUMNS}"
        )
    replacements = {"data_root": str(data_folder)}
    rows, first_line, rejected = {}, {}, []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # e.g. a field over csv.field_size_limit()
            # line_num still counts the lines before the record that failed.
            rejected.append(RejectedRow(reader.line_num + 1, "", f"unreadable CSV row: {error}"))
            continue
        line, clip_id = reader.line_num, (row.get("ID") or "").strip()
        reason = _row_problem(row, columns) or _value_problem(row, clip_id, first_line)
        if reason is None:
            wav = _VARIABLE.sub(
                lambda match: replacements.get(match[1], match[0]), row["wav"].strip()
            )
            unknown = _VARIABLE.search(wav)
            if unknown:
                reason = f"wav holds {unknown[0]!r}; only $data_root is replaced"
        if reason is not None:
            rejected.append(RejectedRow(line, _shown(clip_id), reason))
            continue
        first_line[clip_id] = line
        values = {key: value for key, value in row.items() if key != "ID"}
        values["duration"], values["wav"] = float(row["duration"]), wav
        rows[clip_id] = values
    return rows, rejected


def write_rejected(path: str | Path, rejected: Sequence[RejectedRow]) -> None:
    """Writes ``line, ID, reason`` of each rejected row to a CSV.

    Arguments
    ---------
    path : str or Path
        The CSV to write.
    rejected : sequence of RejectedRow
        The rows (``validate_manifest``).

    Example
    -------
    >>> path = getfixture("tmp_path") / "train_rejected.csv"
    >>> write_rejected(path, [RejectedRow(3, "b", "missing wav")])
    >>> path.read_text().splitlines()
    ['line,ID,reason', '3,b,missing wav']
    """
    write_csv(path, REJECTED_COLUMNS, ((r.line, r.id, r.reason) for r in rejected))


def load_manifest(
    csv_path: str | Path, data_folder: str | Path, rejected_csv: str | Path | None = None
) -> dict[str, dict]:
    """``validate_manifest``, with the rejected rows logged and written to ``rejected_csv``.

    Arguments
    ---------
    csv_path : str or Path
        The manifest.
    data_folder : str or Path
        Replaces ``$data_root`` in the ``wav`` field.
    rejected_csv : str or Path, optional
        Where the main process writes the rejected rows (a file left by an
        earlier run is removed when no row is rejected).

    Returns
    -------
    dict
        The usable rows (``validate_manifest``).

    Raises
    ------
    ValueError
        No usable row.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "m.csv").write_text(
    ...     "ID,duration,wav,captions\\na,1.5,$data_root/a.wav,Rain.\\nb,,b.wav,Wind.\\n"
    ... )
    >>> rows = load_manifest(folder / "m.csv", "/data", folder / "m_rejected.csv")
    >>> list(rows), (folder / "m_rejected.csv").read_text().splitlines()[1]
    (['a'], '3,b,missing duration')
    """
    rows, rejected = validate_manifest(csv_path, data_folder)
    from speechbrain.utils.distributed import if_main_process  # SpeechBrain imports torch

    if rejected_csv is not None and if_main_process():
        if rejected:
            write_rejected(rejected_csv, rejected)
        elif Path(rejected_csv).exists():
            Path(rejected_csv).unlink()
    if rejected:
        first = "; ".join(
            f"{r.id or '(no ID)'} (line {r.line}): {r.reason}" for r in rejected[:LOGGED_IDS]
        )
        logger.warning(
            "%s: %d of %d rows rejected%s; first: %s",
            csv_path,
            len(rejected),
            len(rejected) + len(rows),
            f" (all listed in {rejected_csv})" if rejected_csv is not None else "",
            first,
        )
    if not rows:
        raise ValueError(f"{csv_path}: no usable row ({len(rejected)} rejected)")
    return rows


# --------------------------------------------------------------------- reading


# Stands for $data_root when none is given; no path holds it (validate_manifest then
# finds no unknown variable, and the rows that needed data_root are told apart).
_NO_DATA_ROOT = "\x00data_root\x00"


def check_manifest(
    manifest_csv: str | os.PathLike, data_root: str | None = None
) -> tuple[list[dict], list[dict]]:
    """Usable rows of a pretraining manifest and the rejected ones, with their reasons.

    The checks are the training manifest's
    (``validate_manifest``): missing ID, wav or
    caption, a duration that is missing, non-numeric, non-finite or not
    positive, a duplicate ID, the wrong number of fields, bytes that are not
    UTF-8. Only ``wav`` has ``$data_root`` replaced, so a caption may hold a
    ``$``.

    Arguments
    ---------
    manifest_csv : str or path
        SpeechBrain CSV with at least ``ID, duration, wav, captions``.
    data_root : str, optional
        Replaces ``$data_root`` in the ``wav`` field.

    Returns
    -------
    rows : list of dict
        As ``read_manifest``.
    rejected : list of dict
        ``{"id", "wav", "line", "reason"}`` of each rejected row, in file order.

    Raises
    ------
    FileNotFoundError
        No such manifest.
    ValueError
        A required column is missing, or ``wav`` uses ``$data_root`` and no
        ``data_root`` is given.

    Example
    -------
    >>> path = getfixture("tmp_path") / "m.csv"
    >>> _ = path.write_text(
    ...     "ID,duration,wav,captions\\na,1.5,a.wav,Coins worth $5.\\nb,abc,b.wav,Rain.\\n"
    ... )
    >>> rows, rejected = check_manifest(path)
    >>> rows[0]["captions"], rejected
    ('Coins worth $5.', [{'id': 'b', 'wav': '', 'line': 3, 'reason': "non-numeric duration 'abc'"}])
    """
    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest_csv}")
    try:
        found, rejected = validate_manifest(
            manifest_csv, _NO_DATA_ROOT if data_root is None else data_root
        )
    except ValueError as err:
        raise ValueError(
            f"{err}; a pretraining manifest has {', '.join(CAPTION_COLUMNS)}"
        ) from None
    rows = [{"ID": key, **row} for key, row in found.items()]
    if data_root is None:
        needs_root = [row["ID"] for row in rows if _NO_DATA_ROOT in row["wav"]]
        if needs_root:
            raise ValueError(
                f"{manifest_csv}: wav of {needs_root[0]} uses $data_root; pass data_root "
                "(--data-root on the command line)"
            )
    return rows, [{"id": r.id, "wav": "", "line": r.line, "reason": r.reason} for r in rejected]


def read_manifest(manifest_csv: str | os.PathLike, data_root: str | None = None) -> list[dict]:
    """Usable rows of a pretraining manifest, in file order, ``$data_root`` replaced in ``wav``.

    The first result of ``check_manifest`` (same arguments): the rows it
    rejects are left out (``write_shards`` lists them in the index). Each row
    is a dict of all columns as strings, ``ID`` included and ``duration`` a
    float.

    Example
    -------
    >>> path = getfixture("tmp_path") / "m.csv"
    >>> _ = path.write_text("ID,duration,wav,captions\\na,1.5,$data_root/a.wav,A dog.\\n")
    >>> read_manifest(path, data_root="/audio")[0]["wav"]
    '/audio/a.wav'
    """
    return check_manifest(manifest_csv, data_root)[0]


@dataclass
class CaptionedClip:
    """One audio clip and its reference captions.

    Arguments
    ---------
    id : str
        Unique clip ID within its split.
    wav : str
        Audio file path.
    duration : float
        Seconds of audio.
    captions : list of str
        Reference captions (one or more).

    Example
    -------
    >>> clip = CaptionedClip("Santa Motor", "dev/Santa Motor.wav", 17.3, ["A machine whines."])
    >>> clip.captions[0]
    'A machine whines.'
    """

    id: str
    wav: str
    duration: float
    captions: list[str]


def read_clips(manifest_csv: str | Path, data_folder: str | Path) -> list[CaptionedClip]:
    """The clips of a caption manifest for evaluation, checked as for training.

    An evaluation split is scored whole, so a row that training would leave
    out (``validate_manifest``) stops the reading here, naming its line.

    Arguments
    ---------
    manifest_csv : str or Path
        CSV with ``ID, duration, wav, captions``.
    data_folder : str or Path
        Replaces ``$data_root``.

    Returns
    -------
    list of CaptionedClip
        In file order.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> clip = CaptionedClip("x", str(folder / "x.wav"), 3.0, ["A bell rings.", "Ringing."])
    >>> _ = write_caption_manifest(folder / "m.csv", [clip], folder)
    >>> read_clips(folder / "m.csv", folder)[0] == clip
    True
    """
    rows, rejected = validate_manifest(manifest_csv, data_folder)
    if rejected:
        first = rejected[0]
        raise ValueError(f"{manifest_csv}, line {first.line} ({first.id}): {first.reason}")
    if not rows:
        raise ValueError(f"{manifest_csv}: no clip")
    return [
        CaptionedClip(clip_id, row["wav"], row["duration"], split_captions(row["captions"]))
        for clip_id, row in rows.items()
    ]


# --------------------------------------------------------------------- writing


def write_rows(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """Writes a manifest of ``columns`` (extra keys of a row are not written).

    Every row must have every column and a distinct ``ID``.

    Arguments
    ---------
    path : str or Path
        The manifest (parent folders are created).
    rows : sequence of dict
        One dict per clip.
    columns : sequence of str
        The header, in order (``ID`` first).

    Returns
    -------
    Path
        The manifest written (whole: ``speechbrain_slap.outputs.write_csv``).

    Example
    -------
    >>> rows = [dict(ID="a", duration=1.0, wav="/d/a.wav", label="dog", note="not written")]
    >>> columns = ["ID", "duration", "wav", "label"]
    >>> path = write_rows(getfixture("tmp_path") / "m.csv", rows, columns)
    >>> path.read_text().splitlines()
    ['ID,duration,wav,label', 'a,1.0,/d/a.wav,dog']
    """
    seen = set()
    for i, row in enumerate(rows):
        missing = [f for f in columns if f not in row]
        if missing:
            raise ValueError(f"manifest row {i} ({row.get('ID')!r}) lacks fields {missing}")
        if row["ID"] in seen:
            raise ValueError(f"manifest ID {row['ID']!r} appears twice")
        seen.add(row["ID"])
    return write_csv(path, columns, ([row[c] for c in columns] for row in rows))


def caption_problem(caption: str) -> str | None:
    """Why a caption cannot be stored in a caption manifest, or None if it can.

    Arguments
    ---------
    caption : str
        One caption.

    Returns
    -------
    str or None
        The reason (empty, holds the caption separator, or holds ``$name``,
        which SpeechBrain's CSV reader would try to replace).

    Example
    -------
    >>> caption_problem("A dog barks.") is None
    True
    >>> caption_problem("Coins worth $5 drop.")
    "caption holds '$5', which SpeechBrain's CSV reader takes for a variable"
    """
    if not isinstance(caption, str) or not caption.strip():
        return "empty caption"
    if CAPTION_SEPARATOR.strip() in caption:
        return f"caption holds the caption separator {CAPTION_SEPARATOR.strip()!r}"
    match = _CSV_VARIABLE.search(caption)
    if match:
        return (
            f"caption holds {match.group()!r}, which SpeechBrain's CSV reader takes for a variable"
        )
    return None


def manifest_wav(path: str | Path, data_folder: str | Path) -> str:
    """The ``wav`` field of a file: ``$data_root/<relative path>`` inside ``data_folder``.

    Files outside ``data_folder`` keep their absolute path.

    Arguments
    ---------
    path : str or Path
        The audio file.
    data_folder : str or Path
        The folder that replaces ``$data_root`` when the manifest is read.

    Returns
    -------
    str

    Example
    -------
    >>> manifest_wav("/data/clotho/development/a b.wav", "/data/clotho")
    '$data_root/development/a b.wav'
    >>> manifest_wav("/elsewhere/x.flac", "/data/clotho")
    '/elsewhere/x.flac'
    """
    path = Path(os.path.abspath(path))
    root = Path(os.path.abspath(data_folder))
    if path.is_relative_to(root):
        return "$data_root/" + path.relative_to(root).as_posix()
    return path.as_posix()


def write_caption_manifest(
    manifest_csv: str | Path,
    clips: Sequence[CaptionedClip],
    data_folder: str | Path,
    skipped: Sequence[tuple[str, str]] = (),
) -> dict:
    """Writes a caption manifest; clips it cannot hold are skipped and listed.

    A clip is skipped when one of its captions has a ``caption_problem`` or
    its path holds ``$name``. Skipped clips (these and the ``skipped`` the
    caller found, e.g. missing audio) go to ``<manifest stem>_skipped.csv``
    (``ID, reason``) and are counted by reason; a warning says how many.

    Arguments
    ---------
    manifest_csv : str or Path
        The CSV to write (``ID, duration, wav, captions``).
    clips : sequence of CaptionedClip
        The clips, ``wav`` being the file's path.
    data_folder : str or Path
        The folder that replaces ``$data_root`` when the manifest is read.
    skipped : sequence of (str, str)
        ``(clip ID, reason)`` of clips the caller already left out.

    Returns
    -------
    dict
        ``clips`` and ``captions`` written, ``skipped`` (count) and
        ``skipped_by_reason``.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> clips = [
    ...     CaptionedClip("a", str(folder / "a.wav"), 1.5, ["A dog barks.", "Barking."]),
    ...     CaptionedClip("b", str(folder / "b.wav"), 2.0, ["It costs $5."]),
    ... ]
    >>> report = write_caption_manifest(
    ...     folder / "test.csv", clips, folder, [("c", "audio file missing")]
    ... )
    >>> report["clips"], report["captions"], report["skipped"]
    (1, 2, 2)
    >>> print((folder / "test.csv").read_text().splitlines()[1])
    a,1.5,$data_root/a.wav,A dog barks. | Barking.
    """
    manifest_csv = Path(manifest_csv)
    skipped = list(skipped)
    rows = []
    for clip in clips:
        problems = [caption_problem(c) for c in clip.captions] or ["no caption"]
        problems = [p for p in problems if p]
        wav = manifest_wav(clip.wav, data_folder)
        if _CSV_VARIABLE.search(wav.removeprefix("$data_root")):
            problems.append("the audio path holds '$', which SpeechBrain's CSV reader replaces")
        if problems:
            skipped.append((clip.id, problems[0]))
            continue
        captions = CAPTION_SEPARATOR.join(c.strip() for c in clip.captions)
        rows.append((clip.id, f"{clip.duration:.3f}".rstrip("0").rstrip("."), wav, captions))

    write_csv(manifest_csv, CAPTION_COLUMNS, rows)
    skipped_csv = manifest_csv.with_name(f"{manifest_csv.stem}_skipped.csv")
    if skipped:
        write_csv(skipped_csv, ("ID", "reason"), skipped)
        logger.warning(
            "%s: %d clips skipped (listed in %s), %d written",
            manifest_csv,
            len(skipped),
            skipped_csv,
            len(rows),
        )
    elif skipped_csv.exists():
        skipped_csv.unlink()  # left by an earlier run
    return {
        "clips": len(rows),
        "captions": sum(len(split_captions(row[3])) for row in rows),
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(reason for _, reason in skipped)),
    }


def probed_clip(
    clip_id: str,
    path: str | Path,
    captions: list[str],
    skipped: list,
    duration: float | None = None,
) -> "CaptionedClip | None":
    """The ``CaptionedClip`` of an audio file; None, the reason added to ``skipped``, if unusable.

    The duration is read from the file's header
    (``speechbrain_slap.data.audio.probe_audio``) unless given.

    Arguments
    ---------
    clip_id : str
        The clip's ID.
    path : str or Path
        Its audio file.
    captions : list of str
        Its captions.
    skipped : list
        Collects ``(clip_id, reason)`` of a missing, unreadable or empty file.
    duration : float, optional
        Seconds, when the dataset gives them.

    Returns
    -------
    CaptionedClip or None

    Example
    -------
    >>> skipped = []
    >>> probed_clip("a", "/no/such/a.wav", ["Rain."], skipped), skipped
    (None, [('a', 'audio file missing')])
    """
    from speechbrain_slap.data.audio import probe_audio  # audio imports torch

    path = Path(path)
    problem = None if path.is_file() or duration is None else "audio file missing"
    if duration is None:
        duration, problem = probe_audio(path)
    if problem:
        skipped.append((clip_id, problem))
        return None
    return CaptionedClip(clip_id, str(path), duration, captions)


def check_audio_pattern(audio_pattern: str, fields: set[str]) -> str:
    """Checks that a file-name pattern (``str.format``) uses only ``fields``.

    Arguments
    ---------
    audio_pattern : str
        E.g. ``"audio/{source}/{id}.flac"``.
    fields : set of str
        The fields a dataset fills in.

    Returns
    -------
    str
        ``audio_pattern``.

    Example
    -------
    >>> check_audio_pattern("{split}/{name}.wav", {"split", "id"})
    Traceback (most recent call last):
    ...
    ValueError: audio_pattern '{split}/{name}.wav' uses ['name']; the fields are ['id', 'split']
    """
    import string

    used = {name for _, name, _, _ in string.Formatter().parse(audio_pattern) if name}
    if not used <= fields:
        raise ValueError(
            f"audio_pattern {audio_pattern!r} uses {sorted(used - fields)}; "
            f"the fields are {sorted(fields)}"
        )
    return audio_pattern


def earlier_preparation(
    save_folder: str | Path, splits: Sequence[str], options: dict, skip_prep: bool = False
) -> dict | None:
    """The report of manifests already prepared with ``options`` (or ``skip_prep``), else None.

    Dataset preparation is skipped then, as SpeechBrain recipes do.

    Arguments
    ---------
    save_folder, splits, options
        As for ``manifests_up_to_date``.
    skip_prep : bool
        Prepare nothing (manifests made elsewhere).

    Returns
    -------
    dict or None
        ``read_prepare_report``, or None when the manifests must be written.
    """
    if skip_prep:
        return read_prepare_report(save_folder)
    if manifests_up_to_date(save_folder, splits, options):
        logger.info("manifests in %s are up to date, preparation skipped", save_folder)
        return read_prepare_report(save_folder)
    return None


def manifests_up_to_date(save_folder: str | Path, splits: Sequence[str], options: dict) -> bool:
    """True when every ``<split>.csv`` exists and ``prepare.json`` has the same options.

    Dataset preparation is skipped then, as SpeechBrain recipes do.

    Arguments
    ---------
    save_folder : str or Path
        Where the manifests are.
    splits : sequence of str
        Manifest names without ``.csv``.
    options : dict
        JSON-serialisable options of the preparation.

    Returns
    -------
    bool

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "test.csv").write_text("ID,duration,wav,captions\\n")
    >>> manifests_up_to_date(folder, ["test"], {"data_folder": "/data"})
    False
    >>> _ = save_prepare_report(folder, {"data_folder": "/data"}, {"test": {"clips": 0}})
    >>> manifests_up_to_date(folder, ["test"], {"data_folder": "/data"})
    True
    """
    save_folder = Path(save_folder)
    report = save_folder / REPORT_FILE
    if not report.is_file() or not all((save_folder / f"{s}.csv").is_file() for s in splits):
        return False
    return json.loads(report.read_text()).get("options") == _jsonable(options)


def save_prepare_report(save_folder: str | Path, options: dict, splits: dict) -> Path:
    """Writes ``prepare.json``: the preparation's options and per-split counts.

    Arguments
    ---------
    save_folder : str or Path
        Where the manifests are.
    options : dict
        Options of the preparation (compared by ``manifests_up_to_date``).
    splits : dict
        ``{split: write_caption_manifest(...) report}``.

    Returns
    -------
    Path
    """
    path = Path(save_folder) / REPORT_FILE
    path.write_text(json.dumps({"options": _jsonable(options), "splits": splits}, indent=2))
    return path


def read_prepare_report(save_folder: str | Path) -> dict:
    """The per-split counts of ``prepare.json`` (``{}`` when there is none)."""
    path = Path(save_folder) / REPORT_FILE
    return json.loads(path.read_text())["splits"] if path.is_file() else {}


def _jsonable(options: dict) -> dict:
    """Options as they read back from JSON (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(options, default=str))


# --------------------------------------------------------------------- labelled manifests


def write_labelled_manifest(
    rows: Sequence[dict], path: str | Path, extra_fields: Sequence[str] = ()
) -> Path:
    """Writes a zero-shot manifest: ``ID, duration, wav, label, fold`` and extra columns.

    Arguments
    ---------
    rows : sequence of dict
        One dict per clip with every field of ``LABEL_COLUMNS`` and ``extra_fields``.
    path : str or Path
        CSV file to write (parent folders are created).
    extra_fields : sequence of str
        Dataset-specific columns written after the standard ones.

    Returns
    -------
    Path
        The manifest (``write_rows``).

    Example
    -------
    >>> rows = [dict(ID="a", duration=1.0, wav="/d/a.wav", label="dog", fold=1, take="A")]
    >>> path = write_labelled_manifest(
    ...     rows, getfixture("tmp_path") / "m.csv", extra_fields=["take"]
    ... )
    >>> path.read_text().splitlines()
    ['ID,duration,wav,label,fold,take', 'a,1.0,/d/a.wav,dog,1,A']
    """
    return write_rows(path, rows, [*LABEL_COLUMNS, *extra_fields])


def write_labelled_clips(
    manifest: str | Path,
    clips: Iterable[tuple[Path, dict]],
    data_folder: str | Path,
    extra_fields: Sequence[str] = (),
) -> Path:
    """Writes the labelled manifest of a dataset's clips, unless it exists already.

    The zero-shot prepare scripts give the clips they find; this fills in
    ``duration`` from each file's header (``probe_audio``) and ``wav`` as
    ``$data_root/<path inside data_folder>``. A file whose header cannot be
    read is kept with duration 0 (the evaluation skips it and says why) and
    named in a warning, git-lfs pointer files (a repository downloaded without
    its audio) as such.

    Arguments
    ---------
    manifest : str or Path
        The manifest to write. When it exists, ``clips`` is not read at all.
    clips : iterable of (Path, dict)
        Each clip's audio file and its row: every field of ``LABEL_COLUMNS``
        and ``extra_fields`` but ``duration`` and ``wav``.
    data_folder : str or Path
        The dataset folder (``$data_root``).
    extra_fields : sequence of str
        Dataset-specific columns written after the standard ones.

    Returns
    -------
    Path
        The manifest.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "a.wav").write_text("not audio")
    >>> manifest = write_labelled_clips(
    ...     folder / "m.csv", [(folder / "a.wav", dict(ID="a", label="dog", fold=1))], folder
    ... )
    >>> manifest.read_text().splitlines()[1]
    'a,0.0,$data_root/a.wav,dog,1'
    """
    from speechbrain_slap.data.audio import probe_audio  # audio imports torch

    manifest, data_folder = Path(manifest), Path(data_folder)
    if manifest.is_file():
        logger.info("%s exists, skipping preparation", manifest)
        return manifest
    rows, unreadable = [], []
    for path, row in clips:
        duration, _ = probe_audio(path)
        if duration is None:
            unreadable.append(path)
        wav = f"$data_root/{path.relative_to(data_folder).as_posix()}"
        rows.append({**row, "duration": 0.0 if duration is None else duration, "wav": wav})
    if unreadable:
        logger.warning(
            "%d files whose header cannot be read (kept, skipped by the evaluation): %s",
            len(unreadable),
            ", ".join(str(p) for p in unreadable),
        )
        pointers = [p for p in unreadable if p.read_bytes()[: len(LFS_POINTER)] == LFS_POINTER]
        if pointers:
            logger.warning(
                "%d of them are git-lfs pointer files, not audio: fetch the audio with "
                "`git lfs pull` in the dataset's clone",
                len(pointers),
            )
    write_labelled_manifest(rows, manifest, extra_fields)
    logger.info("%s: %d clips", manifest, len(rows))
    return manifest


def read_labelled_manifest(
    path: str | Path,
    labels: Sequence[str],
    label_field: str = "label",
    replacements: dict | None = None,
) -> list[dict]:
    """Reads a manifest and gives each row its class index (``target``) in ``labels``.

    Arguments
    ---------
    path : str or Path
        CSV with at least the columns ``ID, wav, fold`` and ``label_field``.
    labels : sequence of str
        The class names, in class-index order; every label must be one of them.
    label_field : str
        The column holding the class name (``label`` in the manifests of
        ``write_labelled_manifest``, ``category`` in the ESC-50 one).
    replacements : dict, optional
        ``{"data_root": folder}`` turns ``$data_root`` in ``wav`` into
        ``folder``, as SpeechBrain's ``DynamicItemDataset.from_csv`` does.

    Returns
    -------
    list of dict
        The rows (all values strings, ``wav`` with the replacements made) with
        an added int ``target``.

    Example
    -------
    >>> rows = [dict(ID="a", duration=1.0, wav="$data_root/a.wav", label="cat", fold=2)]
    >>> path = write_labelled_manifest(rows, getfixture("tmp_path") / "m.csv")
    >>> row = read_labelled_manifest(path, ["dog", "cat"], replacements={"data_root": "/data"})[0]
    >>> row["target"], row["fold"], row["wav"]
    (1, '2', '/data/a.wav')
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels}")
    index = {label: i for i, label in enumerate(labels)}
    with open(path, newline="") as fin:
        reader = csv.DictReader(fin)
        required = ("ID", "wav", label_field, "fold")
        missing = [f for f in required if f not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (header {reader.fieldnames})")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no clips")
    for line, row in enumerate(rows, start=2):
        label = row[label_field]
        if label not in index:
            raise ValueError(
                f"{path}, line {line} ({row['ID']}): {label_field} {label!r} is not one of "
                f"the {len(labels)} class labels {labels}"
            )
        row["target"] = index[label]
        for key, value in (replacements or {}).items():
            row["wav"] = row["wav"].replace(f"${key}", str(value))
    return rows
