"""The ``slap index`` file: audio embeddings of a folder, searchable by text.

An index is one ``.npz`` written with NumPy and read back with
``allow_pickle=False``: ``embeddings`` ``(N, D)`` float32, ``paths`` ``(N,)``
(relative to ``meta["root"]``) and ``meta``, a JSON string (``format``,
``root``, ``model``, ``model_digest``, ``embedding_dim``, ``failed``).

Authors
 * speechbrain-slap contributors 2026
"""

import json
from collections.abc import Sequence

import numpy as np

INDEX_FORMAT = "slap-index/1"


class IndexFileError(ValueError):
    """A file that is not a readable ``slap index``; the message names it and says why.

    Example
    -------
    >>> str(IndexFileError("x.npz: not a slap index"))
    'x.npz: not a slap index'
    """


def save_index(fout, embeddings: np.ndarray, paths: Sequence[str], meta: dict) -> None:
    """Writes an index: ``embeddings`` (N, D) float32, ``paths`` (N,) and ``meta`` (JSON).

    Only numeric and unicode arrays: ``np.load(..., allow_pickle=False)`` reads it.

    Arguments
    ---------
    fout : file object or path
        Where to write.
    embeddings : np.ndarray
        ``(N, D)`` float32, one row per path.
    paths : sequence of str
        Paths relative to ``meta["root"]``.
    meta : dict
        JSON-serialisable; ``format`` is set to ``INDEX_FORMAT``.

    Example
    -------
    >>> import io
    >>> buffer = io.BytesIO()
    >>> save_index(buffer, np.zeros((1, 4), np.float32), ["a.wav"], {"root": "/data"})
    >>> _ = buffer.seek(0)
    >>> load_index(buffer)[1]
    ['a.wav']
    """
    np.savez(
        fout,
        embeddings=np.asarray(embeddings, dtype=np.float32),
        paths=np.array(list(paths), dtype=np.str_),
        meta=np.array(json.dumps({**meta, "format": INDEX_FORMAT})),
    )


def load_index(source) -> tuple[np.ndarray, list[str], dict]:
    """Reads what ``save_index`` wrote (no pickle).

    Arguments
    ---------
    source : str, Path or file object
        The index file.

    Returns
    -------
    embeddings : np.ndarray
        ``(N, D)`` float32.
    paths : list of str
        Paths relative to ``meta["root"]``.
    meta : dict

    Raises
    ------
    IndexFileError
        The file is not an index of this format.
    """
    name = getattr(source, "name", source)
    try:
        with np.load(source, allow_pickle=False) as data:
            embeddings, paths = data["embeddings"], data["paths"].tolist()
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        # (a .npy, e.g. what `slap embed` writes, loads as an array: TypeError)
        raise IndexFileError(
            f"{name}: not a slap index ({type(error).__name__}: {error})"
        ) from None
    if meta.get("format") != INDEX_FORMAT or embeddings.shape[:1] != (len(paths),):
        raise IndexFileError(f"{name}: not a {INDEX_FORMAT} index")
    return embeddings, paths, meta
