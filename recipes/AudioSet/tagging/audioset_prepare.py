"""Data preparation for AudioSet tagging (official segment CSVs + locally stored audio).

Metadata, as Google distributes it, in ``data_folder``:

* ``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
  ``eval_segments.csv``: three ``#`` header lines, then
  ``YTID, start_seconds, end_seconds, "mid1,mid2,..."`` (fields separated by
  ``", "``, the label list quoted);
* ``class_labels_indices.csv``: ``index,mid,display_name`` (527 classes).

Audio is not distributed; each copy names files its own way. A split's files
are looked up recursively under ``<audio_folder>/<split folder>`` by the name
``audio_file_template.format(ytid=..., start_ms=...)``: ``Y{ytid}.wav`` (PANNs,
the default), ``Y{ytid}.flac`` (WavCaps), ``{ytid}.flac`` (Hugging Face
``agkphysics/AudioSet``, split folders ``bal_train``, ``unbal_train``,
``eval``) or ``{ytid}_{start_ms}.wav``. Segments whose file is missing (videos
taken down) or unreadable are skipped and counted, with one warning per split.

Writes ``train.csv`` (the segments of every split in ``train_splits``) and
``eval.csv``, SpeechBrain manifests with ``ID, duration, wav, labels``:
``wav`` is ``$audio_root/<path under audio_folder>`` and ``labels`` the
comma-joined MIDs of the segment.

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import json
import logging
import os
from pathlib import Path

from speechbrain_slap.data.audio import probe_audio
from speechbrain_slap.data.manifest import write_rows

logger = logging.getLogger(__name__)

SEGMENT_FILES = {
    "balanced_train": "balanced_train_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
    "eval": "eval_segments.csv",
}
# Audio folder of each split in the PANNs layout (unbalanced audio may sit in
# part subfolders below it: the search is recursive).
DEFAULT_SPLIT_FOLDERS = {
    "balanced_train": "balanced_train_segments",
    "unbalanced_train": "unbalanced_train_segments",
    "eval": "eval_segments",
}
CLASS_FILE = "class_labels_indices.csv"
MANIFEST_COLUMNS = ("ID", "duration", "wav", "labels")


def read_class_labels(path: str | Path) -> list[tuple[str, str]]:
    """``(mid, display_name)`` of every class, in index order.

    Display names that occur more than once are made unique by appending the
    MID (``"Name (/m/0abc)"``), so they can serve as labels.

    Arguments
    ---------
    path : str or Path
        ``class_labels_indices.csv`` (``index,mid,display_name``).

    Returns
    -------
    list of (str, str)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (AudioSet's class_labels_indices.csv)")
    with open(path, newline="") as fin:
        reader = csv.DictReader(fin)
        if reader.fieldnames != ["index", "mid", "display_name"]:
            raise ValueError(
                f"{path}: expected the header index,mid,display_name, got {reader.fieldnames}"
            )
        rows = [(int(r["index"]), r["mid"], r["display_name"]) for r in reader]
    if [index for index, _, _ in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: class indices must be 0..{len(rows) - 1} in order")
    names = [name for _, _, name in rows]
    return [(mid, name if names.count(name) == 1 else f"{name} ({mid})") for _, mid, name in rows]


def read_segments(path: str | Path) -> list[tuple[str, float, float, list[str]]]:
    """``(ytid, start_seconds, end_seconds, mids)`` of every segment of a segment CSV.

    Arguments
    ---------
    path : str or Path
        An official segment CSV (``#`` header lines, ``", "`` separators).

    Returns
    -------
    list of tuples
    """
    segments = []
    with open(path, newline="") as fin:
        lines = ((n, line) for n, line in enumerate(fin, start=1) if not line.startswith("#"))
        numbered = [(n, line) for n, line in lines if line.strip()]
    reader = csv.reader((line for _, line in numbered), skipinitialspace=True)
    for (number, _), fields in zip(numbered, reader, strict=True):
        if len(fields) != 4:
            raise ValueError(
                f"{path}, line {number}: expected YTID, start_seconds, end_seconds, "
                f'"labels", got {len(fields)} fields'
            )
        ytid, start, end, labels = fields
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise ValueError(f"{path}, line {number}: bad times {start!r}, {end!r}") from None
        segments.append((ytid, start_s, end_s, [m for m in labels.split(",") if m]))
    return segments


def index_audio_files(folder: Path) -> dict[str, Path]:
    """File name -> path of every file below ``folder`` (recursive)."""
    files = {}
    for root, _, names in os.walk(folder, followlinks=True):
        for name in names:
            files.setdefault(name, Path(root) / name)
    return files


def prepare_audioset(
    data_folder: str | Path,
    save_folder: str | Path,
    audio_folder: str | Path,
    train_splits: list[str],
    split_folders: dict[str, str] | None = None,
    audio_file_template: str = "Y{ytid}.wav",
) -> dict[str, Path]:
    """Writes the ``train.csv`` and ``eval.csv`` manifests of the audio found on disk.

    Skipped when both exist and were made with the same options.

    Arguments
    ---------
    data_folder : str or Path
        Folder of the segment CSVs and ``class_labels_indices.csv``.
    save_folder : str or Path
        Where the manifests are written.
    audio_folder : str or Path
        Root of the audio; ``$audio_root`` in the manifests.
    train_splits : list of str
        ``balanced_train`` (AudioSet-20K) and/or ``unbalanced_train`` (AS-2M adds it).
    split_folders : dict, optional
        Audio subfolder of each split (default: ``DEFAULT_SPLIT_FOLDERS``).
    audio_file_template : str
        File name of a segment, with ``{ytid}`` and optionally ``{start_ms}``.

    Returns
    -------
    dict
        ``{"train": path, "eval": path}``.
    """
    data_folder, save_folder, audio_folder = map(Path, (data_folder, save_folder, audio_folder))
    split_folders = {**DEFAULT_SPLIT_FOLDERS, **(split_folders or {})}
    unknown = set(train_splits) - {"balanced_train", "unbalanced_train"}
    if not train_splits or unknown:
        raise ValueError(
            f"train_splits must name balanced_train and/or unbalanced_train, got {train_splits}"
        )
    outputs = {"train": save_folder / "train.csv", "eval": save_folder / "eval.csv"}
    options = {
        "data_folder": str(data_folder.resolve()),
        "audio_folder": str(audio_folder.resolve()),
        "train_splits": list(train_splits),
        "split_folders": split_folders,
        "audio_file_template": audio_file_template,
    }
    options_file = save_folder / "audioset_prepare.json"
    if all(p.is_file() for p in outputs.values()) and options_file.is_file():
        if json.loads(options_file.read_text()) == options:
            logger.info("AudioSet manifests in %s exist, skipping preparation", save_folder)
            return outputs

    known_mids = {mid for mid, _ in read_class_labels(data_folder / CLASS_FILE)}
    rows = {"train": [], "eval": []}
    for split in [*train_splits, "eval"]:
        found = _split_rows(
            data_folder / SEGMENT_FILES[split],
            audio_folder,
            audio_folder / split_folders[split],
            audio_file_template,
            known_mids,
        )
        if not found:
            raise FileNotFoundError(
                f"{split}: no audio file of {SEGMENT_FILES[split]} found under "
                f"{audio_folder / split_folders[split]} (named like "
                f"{audio_file_template!r}); check audio_folder, split_folders and "
                "audio_file_template"
            )
        rows["train" if split != "eval" else "eval"] += found

    for name, path in outputs.items():
        write_rows(path, rows[name], MANIFEST_COLUMNS)
        logger.info("%s: %d segments", path, len(rows[name]))
    options_file.write_text(json.dumps(options))
    return outputs


def _split_rows(segment_csv, audio_root, split_folder, template, known_mids) -> list[dict]:
    """Manifest rows of one split's segments whose audio is present and readable."""
    segments = read_segments(segment_csv)
    files = index_audio_files(split_folder)
    rows, missing, unreadable = [], [], []
    for ytid, start, _, mids in segments:
        unknown = [mid for mid in mids if mid not in known_mids]
        if unknown or not mids:
            raise ValueError(
                f"{segment_csv}, segment {ytid}: labels {mids} not in {CLASS_FILE} "
                f"(unknown: {unknown})"
            )
        name = template.format(ytid=ytid, start_ms=int(round(start * 1000)))
        path = files.get(name)
        if path is None:
            missing.append(name)
            continue
        duration, problem = probe_audio(path)
        if problem:
            unreadable.append(str(path))
            continue
        rows.append(
            {
                "ID": ytid,
                "duration": f"{duration:.3f}",
                "wav": f"$audio_root/{path.relative_to(audio_root).as_posix()}",
                "labels": ",".join(mids),
            }
        )
    if missing or unreadable:
        reasons = []
        if missing:
            reasons.append(
                f"{len(missing)} without an audio file under {split_folder} "
                f"(e.g. {', '.join(missing[:3])})"
            )
        if unreadable:
            reasons.append(f"{len(unreadable)} unreadable (e.g. {', '.join(unreadable[:3])})")
        logger.warning(
            "%s: %d of %d segments skipped: %s",
            segment_csv.name,
            len(missing) + len(unreadable),
            len(segments),
            "; ".join(reasons),
        )
    return rows
