"""Atomic writes: a result is either complete under its final name or absent, never half-written."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def partial_path(path: Path) -> Path:
    """The temporary name a result is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 4) -> None:
    """Write JSON the way the v001 files are written (``json.dump``, NaN allowed for empty statistics)."""
    atomic_write_bytes(path, json.dumps(obj, indent=indent).encode("utf-8"))


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
