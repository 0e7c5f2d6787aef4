"""WavCaps preparation: the JSON metadata and your unzipped audio -> caption manifests.

WavCaps (Hugging Face ``cvssp/WavCaps``, GitHub ``XinhaoMei/WavCaps``) ships
one JSON file per source under ``json_files/``::

    AudioSet_SL/as_final.json          108,317 clips, id "Yb0RFKhbpFJA.wav"
    BBC_Sound_Effects/bbc_final.json    31,201 clips, id "07066104"
    FreeSound/fsd_final.json           262,300 clips, id "180913"
    SoundBible/sb_final.json             1,232 clips, id "2219"

each ``{"num_captions_per_audio": 1, "data": [{"id", "caption", "duration",
"audio": "wav_path", ...source fields}]}``. The audio (``Zip_files/``,
unzipped by the user) is FLAC named after the id, AudioSet ids without their
``.wav``: ``audio_pattern`` (relative to ``data_folder``, or absolute) with
the fields ``{source}`` (the JSON folder name) and ``{id}`` gives each file,
by default ``audio/{source}/{id}.flac``. Durations come from the JSON (the
file header is read only when an item has none), so 400k files are not opened.

Blacklists (``json_files/blacklist/*.json``, keys ``"AudioSet"`` with
AudioSet_SL ids and ``"FreeSound"`` with FreeSound ids) drop the clips that
overlap evaluation sets: ``blacklist_exclude_test_ac.json`` (AudioCaps and
Clotho val/test), ``blacklist_exclude_all_ac.json`` (all of AudioCaps and
Clotho), ``blacklist_exclude_ub8k_esc50_vggsound.json`` (UrbanSound8K, ESC-50,
VGGSound). Blacklisted, duplicated and missing clips are skipped, counted by
reason in ``prepare.json`` and listed in ``train_skipped.csv``.

A held-out ``valid`` split of ``n_valid`` clips, drawn with ``seed``, is kept
for checkpoint selection. Manifests (the pretraining recipe's format):
``<save_folder>/train.csv`` and ``valid.csv`` with ``ID``
(``<source>_<id>``), ``duration``, ``wav`` and ``captions``.

Authors
 * speechbrain-slap contributors 2026
"""

import json
import logging
import random
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

DEFAULT_JSON_FILES = {
    "AudioSet_SL": "json_files/AudioSet_SL/as_final.json",
    "BBC_Sound_Effects": "json_files/BBC_Sound_Effects/bbc_final.json",
    "FreeSound": "json_files/FreeSound/fsd_final.json",
    "SoundBible": "json_files/SoundBible/sb_final.json",
}
DEFAULT_AUDIO_PATTERN = "audio/{source}/{id}.flac"
# Blacklist key -> the source whose ids it lists.
BLACKLIST_SOURCES = {"AudioSet": "AudioSet_SL", "FreeSound": "FreeSound"}
PATTERN_FIELDS = {"source", "id"}


def prepare_wavcaps(
    data_folder: str | Path,
    save_folder: str | Path,
    json_files: dict | None = None,
    audio_pattern: str = DEFAULT_AUDIO_PATTERN,
    blacklist_files: Sequence[str] = (),
    n_valid: int = 1000,
    seed: int = 0,
    skip_prep: bool = False,
) -> dict:
    """Writes ``train.csv`` and a held-out ``valid.csv`` from the WavCaps JSON files.

    Arguments
    ---------
    data_folder : str or Path
        The WavCaps folder (replaces ``$data_root`` in the manifests).
    save_folder : str or Path
        Where ``train.csv``, ``valid.csv``, ``train_skipped.csv`` and
        ``prepare.json`` go.
    json_files : dict, optional
        ``{source: JSON file}`` relative to ``data_folder`` (default: the four
        sources of ``DEFAULT_JSON_FILES``).
    audio_pattern : str
        Audio file of an item, with ``{source}`` and ``{id}``.
    blacklist_files : sequence of str
        Blacklist JSON files (relative to ``data_folder``) whose items are dropped.
    n_valid : int
        Clips held out for validation (drawn at random with ``seed``).
    seed : int
        Seed of the held-out draw.
    skip_prep : bool
        Do nothing (manifests made elsewhere).

    Returns
    -------
    dict
        ``{"train": counts, "valid": counts}`` as ``write_caption_manifest`` reports them.
    """
    json_files = dict(json_files or DEFAULT_JSON_FILES)
    check_audio_pattern(audio_pattern, PATTERN_FIELDS)
    options = {
        "data_folder": data_folder,
        "json_files": json_files,
        "audio_pattern": audio_pattern,
        "blacklist_files": list(blacklist_files),
        "n_valid": n_valid,
        "seed": seed,
    }
    earlier = earlier_preparation(save_folder, ["train", "valid"], options, skip_prep)
    if earlier is not None:
        return earlier

    data_folder = Path(data_folder)
    blacklist = read_blacklists([data_folder / f for f in blacklist_files])
    clips, skipped, seen = [], [], set()
    for source, json_file in json_files.items():
        for item_id, caption, duration in read_items(data_folder / json_file):
            clip_id = f"{source}_{item_id.removesuffix('.wav')}"
            path = data_folder / audio_pattern.format(
                source=source, id=item_id.removesuffix(".wav")
            )
            if item_id in blacklist.get(source, ()):
                skipped.append((clip_id, "blacklisted"))
            elif clip_id in seen:
                skipped.append((clip_id, "duplicate id"))
            else:
                clip = probed_clip(clip_id, path, [caption], skipped, duration)
                clips += [clip] if clip else []
            seen.add(clip_id)

    if n_valid >= len(clips):
        raise ValueError(
            f"n_valid={n_valid} leaves no training clip: {len(clips)} WavCaps clips found"
        )
    held_out = set(random.Random(seed).sample(range(len(clips)), n_valid))
    valid = [clip for i, clip in enumerate(clips) if i in held_out]
    train = [clip for i, clip in enumerate(clips) if i not in held_out]
    report = {
        "train": write_caption_manifest(
            Path(save_folder) / "train.csv", train, data_folder, skipped
        ),
        "valid": write_caption_manifest(Path(save_folder) / "valid.csv", valid, data_folder),
    }
    logger.info("WavCaps: %s", report)
    save_prepare_report(save_folder, options, report)
    return report


def read_items(json_file: Path) -> list[tuple[str, str, float | None]]:
    """``(id, caption, duration or None)`` of every item of a WavCaps JSON file.

    Arguments
    ---------
    json_file : Path
        e.g. ``json_files/FreeSound/fsd_final.json``.

    Returns
    -------
    list of (str, str, float or None)
        Ids as strings; the duration is None when the item has no positive one.
    """
    if not json_file.is_file():
        raise FileNotFoundError(f"{json_file}: WavCaps JSON file not found")
    with open(json_file, encoding="utf-8") as fin:
        content = json.load(fin)
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise ValueError(f'{json_file}: expected {{"num_captions_per_audio": 1, "data": [...]}}')
    items = []
    for index, item in enumerate(content["data"]):
        if (
            not isinstance(item, dict)
            or "id" not in item
            or not isinstance(item.get("caption"), str)
        ):
            raise ValueError(f'{json_file}: data[{index}] has no "id" and string "caption"')
        duration = item.get("duration")
        valid_duration = isinstance(duration, int | float) and duration > 0
        items.append(
            (str(item["id"]), item["caption"], float(duration) if valid_duration else None)
        )
    return items


def read_blacklists(blacklist_files: Sequence[Path]) -> dict[str, set[str]]:
    """``{source: ids to drop}`` from WavCaps blacklist files.

    Arguments
    ---------
    blacklist_files : sequence of Path
        JSON files ``{"AudioSet": ["Y<ytid>.wav", ...], "FreeSound": [id, ...]}``.

    Returns
    -------
    dict
        Ids as strings, keyed by source (``AudioSet_SL``, ``FreeSound``).
    """
    blacklist = {}
    for path in blacklist_files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: WavCaps blacklist not found")
        with open(path, encoding="utf-8") as fin:
            content = json.load(fin)
        unknown = [key for key in content if key not in BLACKLIST_SOURCES]
        if unknown:
            raise ValueError(
                f"{path}: unknown blacklist keys {unknown}; expected {list(BLACKLIST_SOURCES)}"
            )
        for key, ids in content.items():
            blacklist.setdefault(BLACKLIST_SOURCES[key], set()).update(str(i) for i in ids)
    return blacklist
