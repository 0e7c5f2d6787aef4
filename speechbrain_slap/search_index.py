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
from pathlib import Path

import numpy as np

from speechbrain_slap.model_folder.checksums import model_digest
from speechbrain_slap.outputs import write_atomic

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


def write_index(
    path: str | Path,
    embeddings: np.ndarray,
    paths: Sequence[str],
    root: str | Path,
    model_folder: str | Path,
    failed: Sequence[dict] = (),
) -> dict:
    """Writes the index of a folder's audio files (whole, through ``write_atomic``).

    Arguments
    ---------
    path : str or Path
        The ``.npz`` to write.
    embeddings : np.ndarray
        ``(N, D)`` audio embeddings, one row per path.
    paths : sequence of str
        The files, relative to ``root``.
    root : str or Path
        The indexed folder.
    model_folder : str or Path
        The model folder that embedded them (its ``SHA256SUMS`` digest is kept).
    failed : sequence of dict
        ``{"file", "error"}`` of the files that could not be read.

    Returns
    -------
    dict
        The index's ``meta``.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    meta = {
        "root": str(Path(root).resolve()),
        "model": str(Path(model_folder).resolve()),
        "model_digest": model_digest(model_folder),
        "failed": list(failed),
        "embedding_dim": int(embeddings.shape[1]),
    }
    write_atomic(path, lambda fout: save_index(fout, embeddings, paths, meta))
    return meta


def search(model, index: str | Path, queries: Sequence[str], k: int, model_folder: str | Path):
    """The ``k`` indexed files closest to each text query (cosine similarity).

    Arguments
    ---------
    model : speechbrain_slap.inference.SLAP
        Embeds the queries (``retrieve``).
    index : str or Path
        An index written by ``write_index``.
    queries : sequence of str
        Text queries.
    k : int
        Results per query.
    model_folder : str or Path
        The folder of ``model``, compared with the one that built the index.

    Returns
    -------
    results : list of dict
        ``{"query", "matches": [{"path", "score"}]}`` per query, best first.
    meta : dict
        The index's ``meta``.
    warning : str or None
        Set when ``model_folder`` is not the model the index was built with.

    Raises
    ------
    IndexFileError
        ``index`` is not a readable index.
    ValueError
        A query the model cannot embed, or another embedding dimension.
    """
    import torch

    embeddings, paths, meta = load_index(index)
    digest = model_digest(model_folder)
    warning = None
    if meta.get("model_digest") != digest:
        warning = (
            f"{index} was built with another model ({meta.get('model')}, SHA256SUMS digest "
            f"{meta.get('model_digest')}); --model {model_folder} has digest {digest}: the "
            "scores may be meaningless"
        )
    scores, indices = model.retrieve(list(queries), torch.from_numpy(embeddings), k)
    results = [
        {
            "query": query,
            "matches": [
                {"path": paths[i], "score": float(s)}
                for s, i in zip(row_scores.tolist(), row_indices.tolist(), strict=True)
            ],
        }
        for query, row_scores, row_indices in zip(queries, scores, indices, strict=True)
    ]
    return results, meta, warning
