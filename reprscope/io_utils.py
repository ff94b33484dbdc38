"""Small file helpers: atomic writes and content hashes."""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name ends in ``.partial`` so an interrupted write never looks like a finished file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


#: Leading bytes of files people hand to the wrong command, with what to call them.
_MAGIC = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (an embedding store: give it to `analyze` as a SOURCE)"),
    (b"PAR1", "a Parquet file (a table)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"PK\x03\x04", "a zip archive (torch.save writes one: a checkpoint?)"),
    (b"\x80", "a pickle (a legacy torch.save checkpoint?)"),
)


def describe_file(head: bytes) -> str:
    """What the first bytes of a file say it is (for an error that names what was given), or ""."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    sample = head[:512]
    if sample and all(b in b"\t\n\r" or 32 <= b < 127 or b >= 128 for b in sample):
        try:
            text = sample.decode("utf-8")
        except UnicodeDecodeError:
            return ""
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        if first.startswith(("{", "[")):
            return "a JSON text file"
        if first.count(",") >= 2:
            return "a text file of comma-separated values (a CSV table?)"
        return "a text file"
    return ""
