"""Data preparation for GTZAN (the Kaggle copy or the original ``genres.tar.gz``).

Reads the 1,000 30-second clips (10 genres x 100, 22,050 Hz mono) of

* ``genres_original/<genre>/<genre>.000NN.wav`` (Kaggle; also under ``Data/``), or
* ``genres/<genre>/<genre>.000NN.au`` (the original archive; ``.wav`` accepted too),

and writes one SpeechBrain CSV manifest:

    ID, duration, wav, label, fold

``label`` is the genre folder. Zero-shot uses every clip, so there is one
fold, ``all`` (the fault-filtered split of torchaudio is for training).
``jazz.00054.wav`` of the Kaggle copy is corrupt: like any file whose header
cannot be read, it is kept with duration 0 and a warning, and the evaluation
skips it and lists it in its results (999 clips evaluated).

Authors
 * speechbrain-slap contributors 2026
"""

import logging
import re
from pathlib import Path

from speechbrain_slap.data.manifest import SINGLE_FOLD, write_labelled_clips

logger = logging.getLogger(__name__)

MANIFEST_NAME = "gtzan.csv"
GENRE_ROOTS = ("genres_original", "Data/genres_original", "genres")
AUDIO_SUFFIXES = (".wav", ".au")
FILE_NAME = re.compile(r"^([a-z]+)\.(\d{5})$")


def prepare_gtzan(data_folder: str | Path, save_folder: str | Path) -> Path:
    """Writes ``<save_folder>/gtzan.csv``, the manifest of every clip.

    Skipped when the manifest already exists (delete it to prepare again).

    Arguments
    ---------
    data_folder : str or Path
        The folder holding ``genres_original/`` (Kaggle), ``Data/genres_original/``
        or ``genres/`` (original archive).
    save_folder : str or Path
        Where the manifest is written.

    Returns
    -------
    Path
        The manifest.
    """
    data_folder = Path(data_folder)
    return write_labelled_clips(Path(save_folder) / MANIFEST_NAME, _clips(data_folder), data_folder)


def _clips(data_folder: Path):
    """``(file, row)`` of every clip of the genre folders, in name order (read lazily)."""
    root = _genre_root(data_folder)
    found = 0
    for genre_folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in genre_folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        for path in files:
            match = FILE_NAME.match(path.stem)
            if match is None or match.group(1) != genre_folder.name:
                raise ValueError(
                    f"{path}: expected a name {genre_folder.name}.000NN{path.suffix} "
                    f"in the genre folder {genre_folder.name}/"
                )
            found += 1
            yield path, {"ID": path.stem, "label": genre_folder.name, "fold": SINGLE_FOLD}
    if not found:
        raise FileNotFoundError(
            f"no {' or '.join(AUDIO_SUFFIXES)} clip in the genre folders of {root}"
        )
    logger.info("GTZAN: %d clips from %s", found, root)


def _genre_root(data_folder: Path) -> Path:
    """The folder whose sub-folders are the genres."""
    for name in GENRE_ROOTS:
        if (data_folder / name).is_dir():
            return data_folder / name
    tried = ", ".join(str(data_folder / name) for name in GENRE_ROOTS)
    raise FileNotFoundError(f"no GTZAN genre folder found: tried {tried}")
