"""Data preparation for Speech Commands v2 (``speech_commands_v0.02.tar.gz`` unpacked).

The archive unpacks flat into ``data_folder``: 35 word folders of
``<speaker>_nohash_<n>.wav`` clips (1 s, 16 kHz), ``_background_noise_/``,
``validation_list.txt`` and ``testing_list.txt`` (one ``word/file.wav`` per
line). The official 35-class split: the clips of ``validation_list.txt`` are
the validation set, those of ``testing_list.txt`` the test set, every other
clip of a word folder the training set; ``_background_noise_`` is excluded.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` with
``ID, duration, wav, label, speaker``; ``wav`` is ``$data_root/<word>/<file>``.

Authors
 * speechbrain-slap contributors 2026
"""

import json
import logging
from pathlib import Path

from speechbrain_slap.data.audio import probe_duration
from speechbrain_slap.data.manifest import write_rows

logger = logging.getLogger(__name__)

WORDS_V2 = (
    "yes no up down left right on off stop go zero one two three four five six seven eight "
    "nine bed bird cat dog happy house marvin sheila tree wow backward forward follow learn "
    "visual"
).split()
LIST_FILES = {"valid": "validation_list.txt", "test": "testing_list.txt"}
MANIFEST_COLUMNS = ("ID", "duration", "wav", "label", "speaker")


def word_folders(data_folder: str | Path) -> list[str]:
    """The word folders of an unpacked Speech Commands copy, sorted.

    Every folder whose name does not start with ``_`` (``_background_noise_``).

    Arguments
    ---------
    data_folder : str or Path
        The unpacked archive.

    Returns
    -------
    list of str
    """
    return sorted(
        p.name for p in Path(data_folder).iterdir() if p.is_dir() and not p.name.startswith("_")
    )


def prepare_speech_commands(
    data_folder: str | Path, save_folder: str | Path, words: list[str] | None = None
) -> dict[str, Path]:
    """Writes the official train / valid / test manifests.

    Skipped when the three manifests exist and were made with the same options.

    Arguments
    ---------
    data_folder : str or Path
        The unpacked ``speech_commands_v0.02`` folder.
    save_folder : str or Path
        Where the manifests are written.
    words : list of str, optional
        The word folders (classes) to use; None uses every word folder found.

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path}``.
    """
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(f"data_folder {data_folder} is not a folder")
    if not words:
        words = word_folders(data_folder)
        if set(words) != set(WORDS_V2):
            logger.warning(
                "%s: the word folders differ from the 35 of Speech Commands v2 "
                "(extra: %s, missing: %s)",
                data_folder,
                sorted(set(words) - set(WORDS_V2)),
                sorted(set(WORDS_V2) - set(words)),
            )
    words = list(words)
    outputs = {split: save_folder / f"{split}.csv" for split in ("train", "valid", "test")}
    options = {"data_folder": str(data_folder.resolve()), "words": words}
    options_file = save_folder / "speechcommands_prepare.json"
    if all(p.is_file() for p in outputs.values()) and options_file.is_file():
        if json.loads(options_file.read_text()) == options:
            logger.info("Speech Commands manifests in %s exist, skipping preparation", save_folder)
            return outputs

    absent = [word for word in words if not (data_folder / word).is_dir()]
    if absent:
        raise FileNotFoundError(f"{data_folder}: no folder for the words {absent}")
    split_of = {}
    for split, name in LIST_FILES.items():
        path = data_folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (part of the Speech Commands v2 archive)")
        for line in path.read_text().split():
            split_of[line] = split

    rows = {split: [] for split in outputs}
    for word in words:
        for path in sorted((data_folder / word).glob("*.wav")):
            relative = f"{word}/{path.name}"
            rows[split_of.pop(relative, "train")].append(
                {
                    "ID": f"{word}/{path.stem}",
                    "duration": f"{probe_duration(path):.3f}",
                    "wav": f"$data_root/{relative}",
                    "label": word,
                    "speaker": path.stem.split("_nohash_")[0],
                }
            )
    # List entries of the chosen words must exist: a missing one means a broken copy.
    listed_missing = [entry for entry in split_of if entry.split("/")[0] in words]
    if listed_missing:
        raise FileNotFoundError(
            f"{len(listed_missing)} clips of the validation/testing lists are missing in "
            f"{data_folder}, e.g. {listed_missing[:3]}"
        )

    for split, path in outputs.items():
        write_rows(path, rows[split], MANIFEST_COLUMNS)
        logger.info("%s: %d clips", path, len(rows[split]))
    options_file.write_text(json.dumps(options))
    return outputs
