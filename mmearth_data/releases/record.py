"""``download.json``: where a download's files came from, which were selected, the SHA-256 of each verified file;
the full source URL kept apart (mode 0600) when its query is a secret."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

from ..download import Job
from ..errors import MMEarthError, redact
from ..io_utils import atomic_write_json, read_nofollow, sha256_file
from ..manifest import DOWNLOAD_RECORD
from .source import MAX_MANIFEST

RECORD = DOWNLOAD_RECORD
SOURCE_FILE = ".download-source.json"   # the source URL in full (its query may be a secret), mode 0600


class Record:
    """``download.json``, rewritten atomically each time a file is verified."""

    def __init__(self, out: Path, doc: dict):
        self.path, self.doc = out / RECORD, doc
        self._lock = threading.Lock()

    @classmethod
    def load(cls, out: Path) -> "Record | None":
        """The record in ``out`` (None if there is none), checked: a broken one is one line, never a traceback."""
        path = out / RECORD
        if not os.path.lexists(path):
            return None
        try:
            doc = json.loads(read_nofollow(path, MAX_MANIFEST))
        except (ValueError, RecursionError) as e:   # also UnicodeDecodeError; RecursionError: nested too deeply
            raise MMEarthError(f"{path}: not valid JSON ({e}); delete it and download again") from None
        problem = _record_problem(doc)
        if problem:
            raise MMEarthError(f"{path}: {problem}; delete it and download again")
        return cls(out, doc)

    def verified(self, name: str, sha256: str) -> None:
        with self._lock:
            self.doc.setdefault("sha256", {})[name] = sha256
            atomic_write_json(self.path, self.doc, indent=1)

    def save(self) -> None:
        with self._lock:
            atomic_write_json(self.path, self.doc, indent=1)


def _record_problem(doc: object) -> str | None:
    """What is wrong with the shape of a ``download.json``, if anything."""
    def strings(v: object) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("kind") not in ("release", "variant"):
        return "kind must be 'release' or 'variant'"
    if not strings(doc.get("selected", [])):
        return "selected must be a list of file names"
    sums = doc.get("sha256", {})
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        return "sha256 must map file names to checksums"
    for key in ("source", "variant", "identity"):
        if not isinstance(doc.get(key, ""), str):
            return f"{key} must be a string"
    return None


def keep_source(out: Path, source: str) -> str:
    """What the record shows of ``source``: the URL redacted. When that hides something (a query, a password),
    the full URL goes to ``SOURCE_FILE`` (mode 0600, atomically), for ``verify --fix``."""
    shown, path = redact(source), out / SOURCE_FILE
    if shown == source:
        path.unlink(missing_ok=True)
        return shown
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f"{SOURCE_FILE}.", suffix=".partial")   # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"source": source}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return shown


def full_source(out: Path, record: "Record") -> str:
    """The source a record was downloaded from, in full (see :func:`keep_source`); one line saying how to pass
    it again when the kept copy is gone."""
    shown = record.doc.get("source", "")
    if shown and "<redacted>" not in shown:
        return shown
    try:
        source = json.loads(read_nofollow(out / SOURCE_FILE, 1 << 20))["source"]
        if isinstance(source, str) and redact(source) == shown:
            return source
    except (OSError, MMEarthError, ValueError, KeyError, TypeError):
        pass
    again = (f"--variant {record.doc.get('variant')} --mirror URL" if record.doc.get("kind") == "variant"
             else "--manifest URL")
    why = (f"its source {shown} is kept redacted and {out / SOURCE_FILE} (the full URL) is missing or does not "
           "match" if shown else "it records no source")
    raise MMEarthError(f"{out / RECORD}: {why}; pass the full URL again: mmearth-data download {again} --out {out}")


def skip_verified(jobs: list[Job], record: Record) -> list[Job]:
    """The jobs still to fetch: not those whose file is under its final name and verified, by this record (with
    the checksum now expected) or, where a kill came between the rename and the record, by hashing it here (a
    local read instead of fetching it again)."""
    done = record.doc.get("sha256", {})
    todo = []
    for j in jobs:
        sized = j.dest.is_file() and not j.dest.is_symlink() and (j.size is None or j.dest.stat().st_size == j.size)
        if sized and done.get(j.label) and (j.sha256 is None or done[j.label] == j.sha256):
            continue
        if sized and j.sha256 is not None and not done.get(j.label) and sha256_file(j.dest) == j.sha256:
            record.verified(j.label, j.sha256)
            continue
        todo.append(j)
    return todo
