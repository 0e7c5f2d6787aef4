"""Clotho v2.1 preparation: the official folders and caption CSVs -> caption manifests.

Clotho v2.1 (Zenodo 4783391) unpacks to::

    <data_folder>/development/*.wav        3,839 clips  -> train.csv
    <data_folder>/validation/*.wav         1,045 clips  -> valid.csv
    <data_folder>/evaluation/*.wav         1,045 clips  -> test.csv
    <data_folder>/clotho_captions_{development,validation,evaluation}.csv

Caption CSVs have the columns ``file_name,caption_1,...,caption_5``; file
names are Freesound titles with spaces and commas (``Santa Motor.wav``).
Clips last 15-30 s and are kept whole: the recipes' ``max_duration`` of 30 s
covers every clip, so neither training nor evaluation crops Clotho audio.
The metadata CSVs (``clotho_metadata_*.csv``, ISO-8859-1) are not needed.

Clips whose audio is missing or unreadable are skipped, counted in
``prepare.json`` and listed in ``<split>_skipped.csv``.

Manifests (``<save_folder>/{train,valid,test}.csv``, the pretraining
recipe's format): ``ID`` (the file name without ``.wav``), ``duration``,
``wav`` (``$data_root/<folder>/<file name>``) and ``captions`` (joined by
``" | "``).

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from speechbrain_slap.data.manifest import (
    earlier_preparation,
    probed_clip,
    save_prepare_report,
    write_caption_manifest,
)

logger = logging.getLogger(__name__)

# Manifest split -> official folder and CSV suffix.
SPLITS = {"train": "development", "valid": "validation", "test": "evaluation"}
CAPTION_COLUMN = re.compile(r"caption_(\d+)")


def prepare_clotho(
    data_folder: str | Path,
    save_folder: str | Path,
    splits: Sequence[str] = ("train", "valid", "test"),
    skip_prep: bool = False,
) -> dict:
    """Writes the caption manifests of the Clotho v2.1 splits.

    Arguments
    ---------
    data_folder : str or Path
        The unpacked dataset (see the module docstring).
    save_folder : str or Path
        Where ``<split>.csv``, ``<split>_skipped.csv`` and ``prepare.json`` go.
    splits : sequence of str
        Among ``train`` (development), ``valid`` (validation) and ``test`` (evaluation).
    skip_prep : bool
        Do nothing (manifests made elsewhere).

    Returns
    -------
    dict
        ``{split: {"clips", "captions", "skipped", "skipped_by_reason"}}``.
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown Clotho splits {unknown}; expected some of {list(SPLITS)}")
    options = {"data_folder": data_folder}
    earlier = earlier_preparation(save_folder, splits, options, skip_prep)
    if earlier is not None:
        return earlier

    report = {}
    for split in splits:
        folder = SPLITS[split]
        clips, skipped = [], []
        for file_name, captions in read_captions(
            Path(data_folder) / f"clotho_captions_{folder}.csv"
        ):
            path = Path(data_folder) / folder / file_name
            clip = probed_clip(Path(file_name).stem, path, captions, skipped)
            clips += [clip] if clip else []
        report[split] = write_caption_manifest(
            Path(save_folder) / f"{split}.csv", clips, data_folder, skipped
        )
        logger.info("Clotho %s: %s", split, report[split])
    save_prepare_report(save_folder, options, report)
    return report


def read_captions(captions_csv: Path) -> list[tuple[str, list[str]]]:
    """The ``(file_name, [caption_1, ..., caption_N])`` rows of a Clotho caption CSV.

    Arguments
    ---------
    captions_csv : Path
        ``clotho_captions_<split>.csv``.

    Returns
    -------
    list of (str, list of str)
        In file order; captions in column order, empty cells left out.
    """
    if not captions_csv.is_file():
        raise FileNotFoundError(f"{captions_csv}: Clotho caption CSV not found")
    try:
        text = captions_csv.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{captions_csv}: not UTF-8 text ({error})") from error
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    caption_columns = sorted(
        (c for c in header if CAPTION_COLUMN.fullmatch(c)),
        key=lambda c: int(CAPTION_COLUMN.fullmatch(c).group(1)),
    )
    if "file_name" not in header or not caption_columns:
        raise ValueError(
            f"{captions_csv}: expected the columns file_name,caption_1,...,caption_5, "
            f"found {header}"
        )
    rows = []
    for line, row in enumerate(reader, start=2):
        file_name = row["file_name"]
        if not file_name:
            raise ValueError(f"{captions_csv}, line {line}: empty file_name")
        captions = [row[c].strip() for c in caption_columns if (row[c] or "").strip()]
        rows.append((file_name, captions))
    return rows
