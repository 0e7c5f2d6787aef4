"""The ``slap index`` file: audio embeddings of a folder, searchable by text.

An index is one ``.npz`` written with NumPy and read back with
``allow_pickle=False``: ``embeddings`` ``(N, D)`` float32, ``paths`` ``(N,)``
(relative to ``meta["root"]``) and ``meta``, a JSON string (``format``,
``root``, ``model``, ``model_digest``, ``embedding_dim``, ``failed``).

Authors
 * speechbrain-slap contributors 2026
"""

import json
import math
import zipfile
import zlib
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
        The file is not an index of this format (missing, empty, truncated or
        damaged, a zip bomb: ``check_members``), or has non-finite rows; the
        message names the file.
    """
    name = getattr(source, "name", source)
    try:
        start = source.tell() if hasattr(source, "seek") else None
        check_members(source)
        if start is not None:
            source.seek(start)
        with np.load(source, allow_pickle=False) as data:
            embeddings, paths = data["embeddings"], data["paths"].tolist()
            meta = json.loads(str(data["meta"]))
    except IndexFileError as error:
        raise IndexFileError(f"{name}: {error}") from None
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
    ) as error:
        # (a .npy, e.g. what `slap embed` writes, loads as an array: TypeError;
        # a truncated or damaged zip: BadZipFile, EOFError, zlib.error)
        reason = str(error).splitlines()[0] if str(error) else ""
        raise IndexFileError(
            f"{name}: not a slap index ({type(error).__name__}: {reason})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise IndexFileError(f"{name}: not a {INDEX_FORMAT} index")
    if (
        embeddings.ndim != 2
        or embeddings.dtype != np.float32
        or embeddings.shape[:1] != (len(paths),)
        or not all(isinstance(p, str) for p in paths)
    ):
        raise IndexFileError(
            f"{name}: not a {INDEX_FORMAT} index (embeddings {embeddings.dtype} "
            f"{embeddings.shape} for {len(paths)} paths)"
        )
    bad = int((~np.isfinite(embeddings).all(axis=1)).sum())
    if bad:
        raise IndexFileError(f"{name}: {bad} of {len(paths)} embedding rows are not finite")
    return embeddings, paths, meta


# A deflated member may claim at most this many bytes per compressed byte: float
# embeddings and file paths compress far less; a zip bomb of zeros compresses 1000-fold.
MAX_COMPRESSION_RATIO = 100


def check_members(source) -> None:
    """Checks an index's zip members before any is read (a zip bomb is refused).

    Each of ``embeddings``, ``paths`` and ``meta`` must be a ``.npy`` member
    whose declared uncompressed size is what its ``.npy`` header's shape and
    dtype need (nothing more), and a compressed member may not claim more than
    ``MAX_COMPRESSION_RATIO`` times its compressed size. Only the headers
    (a few hundred bytes each) are decompressed.

    Arguments
    ---------
    source : str, Path or file object
        The index file.

    Raises
    ------
    IndexFileError
        Why the members cannot be a ``save_index`` file.
    zipfile.BadZipFile, OSError, EOFError, ValueError
        Not a readable zip, or a damaged member header.

    Example
    -------
    >>> import io
    >>> buffer = io.BytesIO()
    >>> save_index(buffer, np.zeros((2, 4), np.float32), ["a.wav", "b.wav"], {"root": "/"})
    >>> check_members(buffer)
    """
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: info for info in archive.infolist()}
        for key in ("embeddings", "paths", "meta"):
            info = members.get(f"{key}.npy")
            if info is None:
                raise IndexFileError(f"not a slap index (no {key}.npy member)")
            if (
                info.compress_type != zipfile.ZIP_STORED
                and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
            ):
                raise IndexFileError(
                    f"{key}.npy declares {info.file_size} bytes compressed into "
                    f"{info.compress_size}: refused (more than {MAX_COMPRESSION_RATIO}x)"
                )
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise IndexFileError(f"{key}.npy: .npy format {version} not supported")
                shape, _, dtype = read_header(member)
                header = member.tell()
            if dtype.hasobject:
                raise IndexFileError(f"{key}.npy holds Python objects")
            needed = header + math.prod(shape) * dtype.itemsize
            if info.file_size != needed:
                raise IndexFileError(
                    f"{key}.npy declares {info.file_size} bytes; its header "
                    f"{shape} {dtype} needs {needed}"
                )


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
