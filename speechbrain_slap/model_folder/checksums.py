"""``SHA256SUMS``: the digest of every file of a model folder, checked before anything loads.

Authors
 * speechbrain-slap contributors 2026
"""

import hashlib
import re
from pathlib import Path, PureWindowsPath

SUMS_FILE = "SHA256SUMS"
# The only files of a model folder that SHA256SUMS need not list (nothing loads them;
# hidden files such as a hub repository's .gitattributes are left out too).
UNSIGNED_FILES = (SUMS_FILE, "README.md")


class ModelFolderError(ValueError):
    """A model folder or recipe output that cannot be used; the message says why."""


def sha256sum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file.

    Arguments
    ---------
    path : str or Path
        File to hash.
    chunk_size : int
        Bytes read at a time.

    Returns
    -------
    str
        64 hex characters.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "empty"
    >>> path.write_bytes(b"")
    0
    >>> sha256sum(path)[:16]
    'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fin:
        while block := fin.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def folder_files(folder: str | Path) -> list[str]:
    """The files of a model folder that ``SHA256SUMS`` must list (posix names, sorted).

    Every file under ``folder``, sub-folders included, except ``UNSIGNED_FILES``
    and hidden files (a hub repository's ``.gitattributes``).

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "text_encoder").mkdir()
    >>> for name in ["a.ckpt", "README.md", ".gitattributes", "text_encoder/config.json"]:
    ...     _ = (folder / name).write_text("x")
    >>> folder_files(folder)
    ['a.ckpt', 'text_encoder/config.json']
    """
    folder = Path(folder)
    return sorted(
        name
        for name in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if name not in UNSIGNED_FILES and not name.startswith(".") and "/." not in name
    )


def write_checksums(folder: str | Path, names: list[str] | None = None) -> Path:
    """Writes ``SHA256SUMS`` (``sha256sum`` format) for ``names`` inside ``folder``.

    Arguments
    ---------
    folder : str or Path
        Model folder.
    names : list of str, optional
        File names relative to ``folder`` (``text_encoder/config.json`` for a
        file of a sub-folder); default: every file of the folder
        (``folder_files``).

    Returns
    -------
    Path
        The sums file.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.ckpt").write_bytes(b"weights")
    >>> write_checksums(folder, ["a.ckpt"]).read_text().split()[1]
    'a.ckpt'
    """
    folder = Path(folder)
    names = folder_files(folder) if names is None else names
    lines = [f"{sha256sum(folder / name)}  {name}\n" for name in sorted(names)]
    path = folder / SUMS_FILE
    path.write_text("".join(lines))
    return path


def read_checksums(sums: str | Path) -> dict[str, str]:
    """The entries of a ``SHA256SUMS`` file: file name -> expected hex digest.

    Arguments
    ---------
    sums : str or Path
        The sums file.

    Returns
    -------
    dict
        In the file's order.

    Raises
    ------
    ModelFolderError
        The file cannot be read, a line is not ``<sha256>  <file name>``, or a
        name is absolute or leaves the folder (``..``).

    Example
    -------
    >>> import tempfile
    >>> sums = Path(tempfile.mkdtemp()) / "SHA256SUMS"
    >>> _ = sums.write_text("0" * 64 + "  text_encoder/config.json\\n")
    >>> list(read_checksums(sums))
    ['text_encoder/config.json']
    >>> _ = sums.write_text("0" * 64 + "  ../secret\\n")
    >>> read_checksums(sums)
    Traceback (most recent call last):
    ...
    speechbrain_slap.model_folder.checksums.ModelFolderError: ...line 1: file name must be inside...
    """
    sums = Path(sums)
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{sums}: cannot read ({error})") from None
    entries = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise ModelFolderError(f"{sums}, line {number}: expected '<sha256>  <file name>'")
        expected, name = parts[0], parts[1].strip().lstrip("*")
        if (
            Path(name).is_absolute()
            or PureWindowsPath(name).is_absolute()
            or ".." in Path(name).parts
            or "\\" in name
        ):
            raise ModelFolderError(f"{sums}, line {number}: file name must be inside the folder")
        entries[name] = expected
    return entries


def verify_checksums(folder: str | Path) -> list[str]:
    """Checks every file listed in ``folder/SHA256SUMS`` against its digest.

    Arguments
    ---------
    folder : str or Path
        Model folder.

    Returns
    -------
    list of str
        The verified file names.

    Raises
    ------
    ModelFolderError
        No sums file, a malformed line, a listed file missing, a digest
        mismatch, or a file the sums do not list (``hyperparams.yaml``
        above all) other than ``UNSIGNED_FILES`` and hidden files (the
        message names the file).

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.ckpt").write_bytes(b"weights")
    >>> _ = (folder / "hyperparams.yaml").write_text("a: 1")
    >>> _ = write_checksums(folder, ["a.ckpt", "hyperparams.yaml"])
    >>> verify_checksums(folder)
    ['a.ckpt', 'hyperparams.yaml']
    >>> _ = (folder / "a.ckpt").write_bytes(b"tampered")
    >>> verify_checksums(folder)
    Traceback (most recent call last):
    ...
    speechbrain_slap.model_folder.checksums.ModelFolderError: ...a.ckpt: SHA-256 mismatch...
    """
    folder = Path(folder)
    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise ModelFolderError(
            f"{folder}: no {SUMS_FILE} file; a model folder lists the SHA-256 of its weight files "
            "(write one with speechbrain_slap.model_folder.write_checksums if you trust the files)"
        )
    verified = []
    for name, expected in read_checksums(sums).items():
        path = folder / name
        if not path.is_file():
            raise ModelFolderError(f"{path}: listed in {SUMS_FILE} but missing")
        actual = sha256sum(path)
        if actual != expected:
            raise ModelFolderError(
                f"{path}: SHA-256 mismatch (expected {expected}, file has {actual}); "
                "the file is corrupt or was changed"
            )
        verified.append(name)
    unlisted = [name for name in folder_files(folder) if name not in verified]
    if "hyperparams.yaml" in unlisted:
        raise ModelFolderError(
            f"{sums}: does not list hyperparams.yaml; the yaml is executable configuration "
            "and must have its SHA-256 there"
        )
    if unlisted:
        raise ModelFolderError(
            f"{folder}: files not listed in {SUMS_FILE}: {unlisted}; every file a model folder "
            "loads must have its SHA-256 there"
        )
    return verified


def model_digest(model_folder: str | Path) -> str:
    """SHA-256 of a model folder's ``SHA256SUMS``: one digest for all its weights.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "SHA256SUMS").write_text("")
    >>> model_digest(folder)[:12]
    'e3b0c44298fc'
    """
    return sha256sum(Path(model_folder) / SUMS_FILE)
