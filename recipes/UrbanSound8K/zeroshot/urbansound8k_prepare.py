"""Data preparation for UrbanSound8K (official ``UrbanSound8K`` layout).

Reads ``metadata/UrbanSound8K.csv`` (columns ``slice_file_name, fsID, start,
end, salience, fold, classID, class``) and the 8,732 slices of
``audio/fold1`` ... ``audio/fold10``, and writes one SpeechBrain CSV manifest
of every slice with its fold:

    ID, duration, wav, label, fold, class_id, fsID, salience

``label`` is the ``class`` column (``dog_bark``), ``wav`` is
``$data_root/audio/fold<fold>/<slice_file_name>`` (``$data_root`` is replaced
by ``data_folder`` when the manifest is read). A slice listed in the CSV
without its audio file is an error (an incomplete copy); a file whose header
cannot be read is kept with duration 0 and a warning, and the evaluation skips it.

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import logging
from pathlib import Path

from speechbrain_slap.data.manifest import write_labelled_clips

logger = logging.getLogger(__name__)

MANIFEST_NAME = "urbansound8k.csv"
META_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
EXTRA_FIELDS = ("class_id", "fsID", "salience")
N_FOLDS = 10


def prepare_urbansound8k(data_folder: str | Path, save_folder: str | Path) -> Path:
    """Writes ``<save_folder>/urbansound8k.csv``, the manifest of every slice.

    Skipped when the manifest already exists (delete it to prepare again).

    Arguments
    ---------
    data_folder : str or Path
        The ``UrbanSound8K`` folder (``metadata/UrbanSound8K.csv``, ``audio/fold1..10``).
    save_folder : str or Path
        Where the manifest is written.

    Returns
    -------
    Path
        The manifest.
    """
    data_folder = Path(data_folder)
    clips = _clips(data_folder)
    return write_labelled_clips(Path(save_folder) / MANIFEST_NAME, clips, data_folder, EXTRA_FIELDS)


def _clips(data_folder: Path):
    """``(file, row)`` of every slice of ``metadata/UrbanSound8K.csv``, checked (read lazily)."""
    meta = data_folder / "metadata" / "UrbanSound8K.csv"
    if not meta.is_file():
        raise FileNotFoundError(
            f"{meta} not found: data_folder must be the UrbanSound8K folder "
            "(with metadata/UrbanSound8K.csv and audio/fold1 ... audio/fold10)"
        )
    with open(meta, newline="") as fin:
        reader = csv.DictReader(fin)
        missing = [c for c in META_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{meta}: expected columns {META_COLUMNS}, missing {missing}")
        records = list(enumerate(reader, start=2))
    if not records:
        raise ValueError(f"{meta} lists no slices")
    class_names = {}
    for line, record in records:
        where = f"{meta}, line {line}"
        fold = _fold(record["fold"], where)
        class_id, name = record["classID"], record["class"]
        if class_names.setdefault(class_id, name) != name:
            raise ValueError(
                f"{where}: classID {class_id} is both {class_names[class_id]!r} and {name!r}"
            )
        path = data_folder / "audio" / f"fold{fold}" / record["slice_file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"{where}: audio file {path} not found")
        yield (
            path,
            {
                "ID": Path(record["slice_file_name"]).stem,
                "label": name,
                "fold": fold,
                "class_id": class_id,
                "fsID": record["fsID"],
                "salience": record["salience"],
            },
        )


def _fold(value: str, where: str) -> int:
    """The fold number of a CSV record, checked to be in ``1..N_FOLDS``."""
    try:
        fold = int(value)
    except ValueError:
        raise ValueError(f"{where}: fold must be an integer, got {value!r}") from None
    if not 1 <= fold <= N_FOLDS:
        raise ValueError(f"{where}: fold must be in 1..{N_FOLDS}, got {fold}")
    return fold
