"""Writing output files whole: every command, evaluation and export writes through here.

``write_atomic`` writes to a temporary file of a unique name beside the target
and renames it into place, so a reader (or a rerun after a crash) never sees
a partial file, and two writers of the same file never share a temporary.

Authors
 * speechbrain-slap contributors 2026
"""

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

# mkstemp creates files readable by their owner only; outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Writes ``path`` through a temporary file and a rename: never a partial file.

    Arguments
    ---------
    path : str or Path
        The file to write (its folder is created).
    data : bytes, str or callable
        The content (``str`` is written as UTF-8), or ``write(fout)`` that
        writes it to a binary file object.

    Returns
    -------
    Path
        ``path``.

    Example
    -------
    >>> path = write_atomic(getfixture("tmp_path") / "out" / "a.txt", "done\\n")
    >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('done\\n', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as fout:
            if callable(data):
                data(fout)
            else:
                fout.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, document, indent: int = 2) -> Path:
    """Writes ``document`` as indented UTF-8 JSON with ``write_atomic``.

    Arguments
    ---------
    path : str or Path
        Where the document goes.
    document : JSON-serialisable
        What to write.
    indent : int
        Spaces per level.

    Returns
    -------
    Path
        The JSON file.

    Example
    -------
    >>> write_json(getfixture("tmp_path") / "r.json", {"R@1": 0.5}).read_text()
    '{\\n  "R@1": 0.5\\n}\\n'
    """
    text = json.dumps(document, indent=indent, ensure_ascii=False) + "\n"
    # A file name that is not UTF-8 holds lone surrogates: written as the JSON escape
    # ``\\udcXX`` (what ``ensure_ascii`` would write), which reads back as the same str.
    return write_atomic(path, text.encode("utf-8", "backslashreplace"))


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Writes a UTF-8 CSV (a header, then the rows) with ``write_atomic``.

    Arguments
    ---------
    path : str or Path
        Where the table goes.
    header : sequence of str
        Column names.
    rows : iterable of sequences
        One sequence of values per row.

    Returns
    -------
    Path
        The CSV file.

    Example
    -------
    >>> write_csv(getfixture("tmp_path") / "p.csv", ["ID", "x"], [["a", 1]]).read_bytes()
    b'ID,x\\r\\na,1\\r\\n'
    """
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    # A file name that is not UTF-8 is written as the bytes it is (as ``ls`` prints it).
    return write_atomic(path, buffer.getvalue().encode("utf-8", "surrogateescape"))
