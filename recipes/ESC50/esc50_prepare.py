"""Data preparation for ESC-50 (official ``ESC-50-master`` layout).

Reads ``ESC-50-master/meta/esc50.csv`` (columns ``filename, fold, target,
category, esc10, src_file, take``) and the 2,000 clips of ``audio/``, and
writes one SpeechBrain CSV manifest of every clip with its fold, so both the
tagging recipe (5-fold cross-validation) and zero-shot recipes can use it:

    ID, duration, wav, fold, target, category, esc10

``wav`` is ``$data_root/audio/<filename>`` (``data_root`` is replaced by
``data_folder`` when the manifest is loaded). A clip listed in ``esc50.csv``
without its audio file is an error: ESC-50 is a fixed set and a missing file
means an incomplete copy.

Usage (from a recipe)::

    from esc50_prepare import prepare_esc50, esc50_classes
    manifest = prepare_esc50("/data/ESC-50-master", "results/esc50")
    classes = esc50_classes(manifest)     # 50 category names, index = target

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import json
import logging
from pathlib import Path

from speechbrain_slap.data.audio import probe_duration
from speechbrain_slap.data.manifest import write_rows

logger = logging.getLogger(__name__)

META_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
MANIFEST_COLUMNS = ("ID", "duration", "wav", "fold", "target", "category", "esc10")
N_FOLDS = 5


def prepare_esc50(data_folder: str | Path, save_folder: str | Path) -> Path:
    """Writes ``<save_folder>/esc50.csv``, the manifest of every ESC-50 clip.

    Skipped when the manifest exists and was made from the same ``data_folder``.

    Arguments
    ---------
    data_folder : str or Path
        The ``ESC-50-master`` folder (``meta/esc50.csv``, ``audio/``).
    save_folder : str or Path
        Where the manifest is written.

    Returns
    -------
    Path of the manifest.
    """
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    manifest = save_folder / "esc50.csv"
    options_file = save_folder / "esc50_prepare.json"
    options = {"data_folder": str(data_folder.resolve())}
    if manifest.is_file() and options_file.is_file():
        if json.loads(options_file.read_text()) == options:
            logger.info("%s exists, skipping preparation", manifest)
            return manifest

    meta = data_folder / "meta" / "esc50.csv"
    if not meta.is_file():
        raise FileNotFoundError(
            f"{meta} not found: data_folder must be the ESC-50-master folder "
            "(with meta/esc50.csv and audio/)"
        )
    rows = []
    with open(meta, newline="") as fin:
        reader = csv.DictReader(fin)
        missing_columns = set(META_COLUMNS) - set(reader.fieldnames or [])
        if missing_columns:
            raise ValueError(
                f"{meta}: expected columns {META_COLUMNS}, missing {sorted(missing_columns)}"
            )
        for line, record in enumerate(reader, start=2):
            rows.append(_manifest_row(record, data_folder, f"{meta}, line {line}"))
    if not rows:
        raise ValueError(f"{meta} lists no clips")
    _check_classes([(int(r["target"]), r["category"]) for r in rows], str(meta))

    write_rows(manifest, rows, MANIFEST_COLUMNS)
    options_file.write_text(json.dumps(options))
    logger.info("%s: %d clips", manifest, len(rows))
    return manifest


def _manifest_row(record: dict, data_folder: Path, where: str) -> dict:
    """One manifest row from one ``esc50.csv`` record, checked."""
    filename = record["filename"]
    try:
        fold, target = int(record["fold"]), int(record["target"])
    except ValueError:
        raise ValueError(
            f"{where}: fold and target must be integers, got {record['fold']!r}, "
            f"{record['target']!r}"
        ) from None
    if not 1 <= fold <= N_FOLDS:
        raise ValueError(f"{where}: fold must be in 1..{N_FOLDS}, got {fold}")
    path = data_folder / "audio" / filename
    if not path.is_file():
        raise FileNotFoundError(f"{where}: audio file {path} not found")
    return {
        "ID": Path(filename).stem,
        "duration": f"{probe_duration(path):.3f}",
        "wav": f"$data_root/audio/{filename}",
        "fold": fold,
        "target": target,
        "category": record["category"],
        "esc10": record["esc10"],
    }


def _check_classes(pairs: list[tuple[int, str]], source: str) -> list[str]:
    """Category names by target index; each target has one name and indices are 0..K-1."""
    names = {}
    for target, category in pairs:
        if names.setdefault(target, category) != category:
            raise ValueError(
                f"{source}: target {target} is both {names[target]!r} and {category!r}"
            )
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{source}: targets must be 0..{len(names) - 1}, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def esc50_classes(manifest: str | Path) -> list[str]:
    """The category names of a manifest, in target order (index = ``target``).

    Arguments
    ---------
    manifest : str or Path
        A manifest written by ``prepare_esc50``.

    Returns
    -------
    list of str
        ``classes[target]`` is the category of ``target``.
    """
    with open(manifest, newline="") as fin:
        pairs = [(int(r["target"]), r["category"]) for r in csv.DictReader(fin)]
    return _check_classes(pairs, str(manifest))
