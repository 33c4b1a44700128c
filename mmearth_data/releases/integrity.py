"""Check every file of a release or download against its manifest or recorded SHA-256; ``--fix`` fetches the bad
ones again from where they came from."""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MMEarthError
from ..io_utils import sha256_file
from ..locking import output_lock
from ..manifest import MANIFEST, inside, read_manifest
from .fetch import download_release
from .record import RECORD, Record, full_source
from .variants import download_variant


@dataclass
class Verification:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def line(self) -> str:
        if self.ok:
            return f"verified {self.checked} file(s): all present and intact" + (
                f" (fetched again: {', '.join(self.fixed)})" if self.fixed else "")
        return (f"verified {self.checked} file(s): {len(self.missing)} missing"
                + (f" ({', '.join(self.missing)})" if self.missing else "")
                + f", {len(self.corrupt)} corrupt" + (f" ({', '.join(self.corrupt)})" if self.corrupt else ""))


def expected(out: Path) -> tuple[dict[str, tuple[int | None, str]], Record | None]:
    """name -> (bytes, sha256) of what ``out`` should hold, from its manifest (and selection) or its record."""
    record = Record.load(out)
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out / MANIFEST)
        names = {f.name for f in manifest.files}
        chosen = set(record.doc.get("selected", [])) if record else names
        unknown = sorted(chosen - names)
        if unknown:
            raise MMEarthError(f"{out / RECORD}: selects {', '.join(unknown[:3])}, not in {MANIFEST}; delete "
                               f"{RECORD} and download again")
        want = {f.name: (f.bytes, f.sha256) for f in manifest.files if f.name in chosen}
    elif record and record.doc.get("kind") == "variant":
        sums = record.doc.get("sha256", {})
        want = {n: (None, sums.get(n, "")) for n in record.doc.get("selected", [])}
    else:
        raise MMEarthError(f"{out}: no {MANIFEST} or {RECORD} here; nothing to verify against")
    if not want:   # "0 files: all present and intact" would be a lie
        raise MMEarthError(f"{out / RECORD}: selects no file; nothing to verify (delete it and download again)")
    return want, record


def verify(out: str | os.PathLike, *, fix: bool = False, connections: int = 8, progress: bool = False,
           log: Callable[[str], None] = print, **fetch_options) -> Verification:
    """Check every file against its manifest or recorded SHA-256; with ``fix``, fetch the bad ones again (holding
    the directory's lock: it deletes files and rewrites the record a running download keeps)."""
    out = Path(out)
    if not fix:
        return _verify(out, False, connections, progress, log, fetch_options)
    expected(out)   # nothing to verify against: one line, before the lock creates anything
    with output_lock(out, "verify --fix"):
        return _verify(out, True, connections, progress, log, fetch_options)


def _verify(out: Path, fix: bool, connections: int, progress: bool, log: Callable[[str], None],
            fetch_options: dict) -> Verification:
    want, record = expected(out)
    result = Verification(checked=len(want))

    def check(item) -> tuple[str, str | None]:
        name, (size, sha) = item
        path = inside(out, name)
        if not path.is_file():
            return name, "missing"
        if size is not None and path.stat().st_size != size:
            return name, "corrupt"
        if not sha:
            return name, "missing"   # a variant file whose download never finished
        return name, None if sha256_file(path) == sha else "corrupt"

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:   # hashlib releases the GIL
        for name, problem in pool.map(check, sorted(want.items())):
            if problem:
                getattr(result, problem).append(name)
    if result.ok or not fix:
        return result
    if record is None:
        raise MMEarthError(f"{out}: {RECORD} says nothing about where the files came from; --fix cannot fetch "
                           f"them again (download the release into {out} instead)")
    source = full_source(out, record)   # before anything is deleted
    bad = result.missing + result.corrupt
    sums = record.doc.get("sha256", {})
    for name in bad:
        inside(out, name).unlink(missing_ok=True)
        sums.pop(name, None)
    record.save()
    log(f"fetching again: {', '.join(bad)}")
    if record.doc["kind"] == "release":
        download_release(source, out, connections=connections, progress=progress, log=log, **fetch_options)
    else:
        download_variant(record.doc["variant"], out, mirror=source, connections=connections,
                         progress=progress, log=log, **fetch_options)
    again = verify(out, fix=False, log=log)
    again.fixed = bad
    return again
