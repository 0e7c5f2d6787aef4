"""AudioCaps preparation: the official caption CSVs and your audio -> caption manifests.

AudioCaps ships captions only (GitHub ``cdjkim/audiocaps``, ``dataset/``):
``train.csv``, ``val.csv`` and ``test.csv`` with the columns
``audiocap_id,youtube_id,start_time,caption``, one row per caption
(``audiocap_id`` numbers captions, not clips). A clip is the 10 s of YouTube
video ``youtube_id`` from ``start_time``; its rows are grouped into one clip
with all its captions (1 per training clip in v1, 5 per val/test clip).

The audio is downloaded by each user and many videos are gone, so clips whose
audio file is missing (or unreadable) are skipped, counted by reason in
``prepare.json`` and listed in ``<split>_skipped.csv``: report these counts
with any result, the official test split has 975 clips.

``audio_pattern`` says where a clip's file is, relative to ``data_folder``
(or absolute), with the fields ``{split}`` (``train``, ``val``, ``test``, the
CSV names), ``{youtube_id}`` and ``{start_time}``:

* aac-datasets (default): ``audio_32000Hz/{split}/{youtube_id}_{start_time}.flac``
* WavCaps' AudioCaps folder: ``waveforms/{split}/Y{youtube_id}.wav``

Manifests (``<save_folder>/{train,valid,test}.csv``, the pretraining
recipe's format): ``ID`` (``<youtube_id>_<start_time>``), ``duration``,
``wav`` (``$data_root/...``) and ``captions`` (joined by ``" | "``).

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from speechbrain_slap.data.manifest import (
    check_audio_pattern,
    earlier_preparation,
    probed_clip,
    save_prepare_report,
    write_caption_manifest,
)

logger = logging.getLogger(__name__)

# Manifest split -> official CSV name.
SPLITS = {"train": "train", "valid": "val", "test": "test"}
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
DEFAULT_AUDIO_PATTERN = "audio_32000Hz/{split}/{youtube_id}_{start_time}.flac"
PATTERN_FIELDS = {"split", "youtube_id", "start_time"}


def prepare_audiocaps(
    data_folder: str | Path,
    save_folder: str | Path,
    splits: Sequence[str] = ("train", "valid", "test"),
    csv_folder: str | Path | None = None,
    audio_pattern: str = DEFAULT_AUDIO_PATTERN,
    skip_prep: bool = False,
) -> dict:
    """Writes the caption manifests of the AudioCaps splits found on disk.

    Arguments
    ---------
    data_folder : str
        The dataset folder (replaces ``$data_root`` in the manifests).
    save_folder : str
        Where ``<split>.csv``, ``<split>_skipped.csv`` and ``prepare.json`` go.
    splits : sequence of str
        Among ``train``, ``valid`` (official ``val``) and ``test``.
    csv_folder : str, optional
        Folder of ``train.csv``, ``val.csv``, ``test.csv`` (default: ``data_folder``).
    audio_pattern : str
        Audio file of a clip (see the module docstring).
    skip_prep : bool
        Do nothing (manifests made elsewhere).

    Returns
    -------
    dict
        ``{split: {"clips", "captions", "skipped", "skipped_by_reason"}}``.
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown AudioCaps splits {unknown}; expected some of {list(SPLITS)}")
    check_audio_pattern(audio_pattern, PATTERN_FIELDS)
    csv_folder = Path(csv_folder or data_folder)
    options = {"data_folder": data_folder, "csv_folder": csv_folder, "audio_pattern": audio_pattern}
    earlier = earlier_preparation(save_folder, splits, options, skip_prep)
    if earlier is not None:
        return earlier

    report = {}
    for split in splits:
        clips, skipped = [], []
        grouped = read_captions(csv_folder / f"{SPLITS[split]}.csv")
        for (youtube_id, start_time), captions in grouped.items():
            clip_id = f"{youtube_id}_{start_time}"
            relative = audio_pattern.format(
                split=SPLITS[split], youtube_id=youtube_id, start_time=start_time
            )
            clip = probed_clip(clip_id, Path(data_folder) / relative, captions, skipped)
            clips += [clip] if clip else []
        report[split] = write_caption_manifest(
            Path(save_folder) / f"{split}.csv", clips, data_folder, skipped
        )
        logger.info("AudioCaps %s: %s", split, report[split])
    save_prepare_report(save_folder, options, report)
    return report


def read_captions(captions_csv: Path) -> dict[tuple[str, str], list[str]]:
    """Groups the rows of an official AudioCaps CSV into clips.

    Arguments
    ---------
    captions_csv : Path
        ``train.csv``, ``val.csv`` or ``test.csv``.

    Returns
    -------
    dict
        ``{(youtube_id, start_time): [captions in file order]}``, clips in
        order of first appearance; ``start_time`` as whole seconds (``"30"``).
    """
    if not captions_csv.is_file():
        raise FileNotFoundError(f"{captions_csv}: AudioCaps caption CSV not found")
    with open(captions_csv, newline="", encoding="utf-8") as fin:
        reader = csv.DictReader(fin)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{captions_csv}: no column {missing}; AudioCaps CSVs have {','.join(COLUMNS)} "
                f"(found {reader.fieldnames})"
            )
        clips = {}
        for line, row in enumerate(reader, start=2):
            youtube_id = row["youtube_id"].strip()
            try:
                start = float(row["start_time"])
            except ValueError:
                start = None
            if not youtube_id or start is None or start < 0:
                raise ValueError(
                    f"{captions_csv}, line {line}: expected a youtube_id and a start_time in "
                    f"seconds, got {row['youtube_id']!r}, {row['start_time']!r}"
                )
            key = (youtube_id, str(int(start)) if start.is_integer() else str(start))
            clips.setdefault(key, []).append(row["caption"].strip())
    return clips
