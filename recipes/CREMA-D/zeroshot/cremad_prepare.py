"""Data preparation for CREMA-D (the official GitHub repository's layout).

Reads the 7,442 clips of ``AudioWAV/``, named
``<ActorID>_<Sentence>_<Emotion>_<Level>.wav`` (``1001_DFA_ANG_XX.wav``), and
writes one SpeechBrain CSV manifest:

    ID, duration, wav, label, fold, actor, sentence, level

``label`` is the emotion code of the file name (``ANG, DIS, FEA, HAP, NEU,
SAD``: the intended emotion; rater votes are not used). CREMA-D has no official
split: every clip is in one fold, ``all``.

``1076_MTI_SAD_XX.wav`` is near-empty (no audible speech) and is left out by
default (``exclude``), as common loaders do; the evaluation is then over
7,441 clips. A file whose header cannot be read is kept with duration 0 and a
warning (the evaluation skips it); git-lfs pointer files, what a download of
the repository as a zip gives, are named as such.

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from speechbrain_slap.data.manifest import SINGLE_FOLD, write_labelled_clips

logger = logging.getLogger(__name__)

MANIFEST_NAME = "cremad.csv"
EXTRA_FIELDS = ("actor", "sentence", "level")
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
LEVELS = ("LO", "MD", "HI", "XX")
NEAR_EMPTY = ("1076_MTI_SAD_XX",)
FILE_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


def prepare_cremad(
    data_folder: str | Path, save_folder: str | Path, exclude: Sequence[str] = NEAR_EMPTY
) -> Path:
    """Writes ``<save_folder>/cremad.csv``, the manifest of every clip of ``AudioWAV/``.

    Skipped when the manifest already exists (delete it to prepare again).

    Arguments
    ---------
    data_folder : str or Path
        The CREMA-D folder (holding ``AudioWAV/``).
    save_folder : str or Path
        Where the manifest is written.
    exclude : sequence of str
        Clip IDs (file names without ``.wav``) left out.

    Returns
    -------
    Path
        The manifest.
    """
    data_folder = Path(data_folder)
    clips = _clips(data_folder, exclude)
    return write_labelled_clips(Path(save_folder) / MANIFEST_NAME, clips, data_folder, EXTRA_FIELDS)


def _clips(data_folder: Path, exclude: Sequence[str]):
    """``(file, row)`` of every clip of ``AudioWAV/`` but ``exclude`` (read lazily)."""
    audio_folder = data_folder / "AudioWAV"
    if not audio_folder.is_dir():
        raise FileNotFoundError(
            f"{audio_folder} not found: data_folder must be the CREMA-D folder (with AudioWAV/)"
        )
    files = sorted(audio_folder.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"{audio_folder} holds no .wav file")
    excluded = [path.stem for path in files if path.stem in exclude]
    if excluded:
        logger.info("left out %d clips: %s", len(excluded), ", ".join(excluded))
    for path in files:
        if path.stem in exclude:
            continue
        actor, sentence, emotion, level = _parse_name(path)
        yield (
            path,
            {
                "ID": path.stem,
                "label": emotion,
                "fold": SINGLE_FOLD,
                "actor": actor,
                "sentence": sentence,
                "level": level,
            },
        )


def _parse_name(path: Path) -> tuple[str, str, str, str]:
    """``(actor, sentence, emotion, level)`` of a CREMA-D file name, checked."""
    match = FILE_NAME.match(path.stem)
    if match is None:
        raise ValueError(
            f"{path}: expected a name <ActorID>_<Sentence>_<Emotion>_<Level>.wav "
            "such as 1001_DFA_ANG_XX.wav"
        )
    actor, sentence, emotion, level = match.groups()
    for value, allowed, field in (
        (sentence, SENTENCES, "sentence"),
        (emotion, EMOTIONS, "emotion"),
        (level, LEVELS, "level"),
    ):
        if value not in allowed:
            raise ValueError(f"{path}: {field} {value!r} is not one of {allowed}")
    return actor, sentence, emotion, level
