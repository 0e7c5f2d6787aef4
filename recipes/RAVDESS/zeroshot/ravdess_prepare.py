"""Data preparation for RAVDESS speech, audio-only (``Audio_Speech_Actors_01-24.zip``).

Reads ``Actor_01/`` ... ``Actor_24/`` (60 WAV each, 1,440 in all, 48 kHz),
named ``MM-CC-EE-II-SS-RR-AA.wav``: modality (03 audio-only), vocal channel
(01 speech), emotion, intensity, statement, repetition, actor. The Kaggle copy
repeats the actor folders under ``audio_speech_actors_01-24/``: when
``data_folder`` holds ``Actor_*`` folders those are used, otherwise the ones
of that sub-folder, so no clip is counted twice.

Writes one SpeechBrain CSV manifest:

    ID, duration, wav, label, fold, actor, intensity, statement, repetition

``label`` is the emotion name of the dataset's documentation (``neutral,
calm, happy, sad, angry, fearful, disgust, surprised`` for codes 01-08).
RAVDESS has no official split: every clip is in one fold, ``all``. Song
files (vocal channel 02) or other modalities found in the actor folders are
left out with a log line. A file whose header cannot be read is kept with duration
0 and a warning (the evaluation skips it).

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import re
from pathlib import Path

from speechbrain_slap.data.manifest import SINGLE_FOLD, write_labelled_clips

logger = logging.getLogger(__name__)

MANIFEST_NAME = "ravdess.csv"
EXTRA_FIELDS = ("actor", "intensity", "statement", "repetition")
KAGGLE_SUBFOLDER = "audio_speech_actors_01-24"
EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
AUDIO_ONLY, SPEECH = "03", "01"
FILE_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(0[12])-(0[12])-(0[12])-(\d\d)$")
ACTOR_FOLDER = re.compile(r"^Actor_(\d\d)$")


def prepare_ravdess(data_folder: str | Path, save_folder: str | Path) -> Path:
    """Writes ``<save_folder>/ravdess.csv``, the manifest of every speech clip.

    Skipped when the manifest already exists (delete it to prepare again).

    Arguments
    ---------
    data_folder : str or Path
        The folder holding ``Actor_01`` ... ``Actor_24`` (or, as in the Kaggle
        copy, ``audio_speech_actors_01-24/Actor_01`` ...).
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
    """``(file, row)`` of every audio-only speech clip of the actor folders (read lazily)."""
    root, actors = _actor_folders(data_folder)
    found, left_out = 0, []
    for actor_folder in actors:
        actor = ACTOR_FOLDER.match(actor_folder.name).group(1)
        for path in sorted(actor_folder.glob("*.wav")):
            modality, channel, emotion, intensity, statement, repetition = _parse_name(path, actor)
            if (modality, channel) != (AUDIO_ONLY, SPEECH):
                left_out.append(path.name)
                continue
            found += 1
            yield (
                path,
                {
                    "ID": path.stem,
                    "label": EMOTIONS[emotion],
                    "fold": SINGLE_FOLD,
                    "actor": actor,
                    "intensity": intensity,
                    "statement": statement,
                    "repetition": repetition,
                },
            )
    if left_out:
        logger.info(
            "left out %d clips that are not audio-only speech: %s",
            len(left_out),
            ", ".join(left_out),
        )
    if not found:
        raise FileNotFoundError(f"no audio-only speech clip (03-01-*.wav) under {root}")
    logger.info("RAVDESS: %d clips of %d actors from %s", found, len(actors), root)


def _actor_folders(data_folder: Path) -> tuple[Path, list[Path]]:
    """The folder holding the ``Actor_NN`` folders, and those folders in order."""
    for root in (data_folder, data_folder / KAGGLE_SUBFOLDER):
        actors = sorted(
            p for p in root.glob("Actor_*") if p.is_dir() and ACTOR_FOLDER.match(p.name)
        )
        if actors:
            return root, actors
    raise FileNotFoundError(
        f"no Actor_01 ... Actor_24 folders in {data_folder} or "
        f"{data_folder / KAGGLE_SUBFOLDER}: data_folder must hold the unpacked "
        "Audio_Speech_Actors_01-24.zip"
    )


def _parse_name(path: Path, actor: str) -> tuple[str, ...]:
    """The first six fields of a RAVDESS file name, checked against its actor folder."""
    match = FILE_NAME.match(path.stem)
    if match is None:
        raise ValueError(
            f"{path}: expected a name MM-CC-EE-II-SS-RR-AA.wav such as 03-01-06-01-02-01-12.wav"
        )
    *fields, file_actor = match.groups()
    if fields[2] not in EMOTIONS:
        raise ValueError(f"{path}: emotion code {fields[2]!r} is not one of {sorted(EMOTIONS)}")
    if file_actor != actor:
        raise ValueError(f"{path}: actor {file_actor} in the name, but in folder Actor_{actor}")
    return tuple(fields)
