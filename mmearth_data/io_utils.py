"""Atomic writes and checksums: a result is either complete under its final name or absent, never half-written."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import MMEarthError, disk_full


def partial_path(path: Path) -> Path:
    """The temporary name a result is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a regular file at ``path`` itself, never of what a link planted there (in a shared ``--out``)
    points at: a symbolic link, a hard link (when writing) or a device is refused with one line."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MMEarthError(f"{path}: is a symbolic link; refusing to write through it (remove it)") from None
        if e.errno == errno.EEXIST:
            raise MMEarthError(f"{path}: appeared while it was being created; is another program writing in this "
                               "directory?") from None
        raise
    st = os.fstat(fd)
    writing = flags & (os.O_WRONLY | os.O_RDWR)
    if not stat.S_ISREG(st.st_mode) or (writing and st.st_nlink > 1):
        os.close(fd)
        what = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a regular file"
        raise MMEarthError(f"{path}: is {what}; refusing to use it (remove it)")
    return fd


def read_nofollow(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the small file at ``path`` (at most ``limit``; more is an error), not following a link."""
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise MMEarthError(f"{path}: larger than {limit >> 20} MiB; not one of ours")
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists: what holds it once it is made."""
    return next((p for p in [path, *path.parents] if p.exists()), Path("."))


def check_free_space(root: Path, need: float, what: str, remedy: str) -> None:
    """Refuse at once a write of ``need`` bytes under ``root`` (or its nearest existing parent) that the disk cannot
    hold, instead of failing hours later."""
    free = shutil.disk_usage(nearest_existing(root)).free
    if need > free:
        size = (lambda b: f"{b / 1e9:.1f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB")  # noqa: E731
        raise MMEarthError(f"{root}: needs {size(need)} free for {what}, has {size(free)}; {remedy}")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's bytes to the disk: done before it is renamed into place, so that after a power loss a
    published name never points at a truncated or zero-filled file."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", durable: bool = True) -> Iterator[Path]:
    """A hidden temporary path beside ``path``: write it inside the block; it is fsynced (unless not ``durable``:
    data that can be regenerated bit for bit) and renamed onto ``path`` when the block ends, and removed when it
    raises. ``suffix`` keeps an extension writers dispatch on (``.png``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".partial{suffix}")
    except OSError as e:
        if disk_full(e) is not None:
            raise
        raise MMEarthError(f"{path}: cannot be written there ({e.strerror or e})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 4) -> None:
    """Write JSON the way the v001 files are written (``json.dump``, NaN allowed for empty statistics)."""
    atomic_write_bytes(path, json.dumps(obj, indent=indent).encode("utf-8"))


def sha256_file(path: str | os.PathLike | Iterable[str | os.PathLike], block: int = 1 << 20) -> str:
    """SHA-256 of a file (or of several files read one after the other), in blocks."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(block), b""):
                h.update(chunk)
    return h.hexdigest()


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a directory so that a kill mid-way never leaves a half-deleted tree under its name: it is renamed to
    a hidden trash name first (one atomic step), then removed."""
    path = Path(path)
    if not path.exists():
        return
    trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".trash"))
    try:
        os.replace(path, trash / path.name)
    except FileNotFoundError:
        pass
    shutil.rmtree(trash, ignore_errors=True)
