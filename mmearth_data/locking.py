"""One run per output directory: an OS file lock the kernel drops when its holder dies, so a killed run never
blocks the next one, while a live holder makes a second run fail with one line naming it."""
from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MMEarthError
from .io_utils import open_nofollow

LOCK_NAME = ".mmearth-data.lock"
_HELD: dict[str, list] = {}   # path -> [fd, depth]: the lock is re-entrant within this process (build -> pack)
_HELD_LOCK = threading.Lock()


def lock_holder(directory: str | os.PathLike) -> str:
    """Who holds (or last held) the lock: tasks on a remote cluster compare it with the run that started them and
    stop when a newer run has taken the directory over."""
    try:
        return (Path(directory) / LOCK_NAME).read_text().strip()
    except OSError:
        return ""


def running_holder(directory: str | os.PathLike) -> str | None:
    """Who holds the directory's lock now (a live run), else None; asks without taking the lock or writing
    anything (the directory may be read-only). This process's own lock (build -> pack) is not another run."""
    if str(Path(directory).resolve()) in _HELD:
        return None
    lock = Path(directory) / LOCK_NAME
    try:
        fd = open_nofollow(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return lock_holder(directory) or "another process"
    finally:
        os.close(fd)
    return None


def _acquire(path: Path, command: str) -> int:
    """Lock ``path/LOCK_NAME``; retried when the file was unlinked by a releasing holder between our open and our
    lock (we would otherwise hold a lock on a file nobody else sees)."""
    lock = path / LOCK_NAME
    for _ in range(50):
        fd = _open_lock(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = lock_holder(path) or "another process"
            raise MMEarthError(f"{path}: in use by {holder}; wait for it to finish or stop it "
                               "(one run per output directory)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"mmearth-data {command} (pid {os.getpid()}, "
                         f"run {uuid.uuid4().hex[:12]})\n".encode())
            return fd
        os.close(fd)
    raise MMEarthError(f"{path}: could not lock {lock}")


def _open_lock(lock: Path) -> int:
    """Open (or create) the lock file itself, never what a link planted in a shared ``--out`` points at: it is
    truncated and written once locked."""
    try:
        return open_nofollow(lock, os.O_RDWR | os.O_CREAT)
    except OSError as e:
        raise MMEarthError(f"--out {lock.parent}: cannot write there ({e.strerror})") from None


@contextmanager
def output_lock(directory: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold an OS file lock on ``directory`` for the whole run. The kernel drops it when the holder dies, so a
    killed run never blocks ``--resume``; a live holder makes a second run fail with one line naming its PID."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MMEarthError(f"--out {path}: exists and is not a directory") from None
    except OSError as e:
        raise MMEarthError(f"--out {path}: cannot create it ({e.strerror})") from None
    key = str(path.resolve())
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            fd = _acquire(path, command)
            _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        with _HELD_LOCK:
            entry = _HELD[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[key]
                (path / LOCK_NAME).unlink(missing_ok=True)   # still held: nobody can take it in between
                os.close(entry[0])
