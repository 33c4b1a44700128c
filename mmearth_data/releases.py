"""Fetch and check prebuilt data: a sharded release by its manifest, or one of the official MMEarth v001 variants.

``download.json`` in the output directory records where the files came from, which were selected and the
SHA-256 of each verified file (for the official variants, whose authors publish no checksums, the one computed
on download), so ``verify`` can check them later and ``verify --fix`` can fetch what is bad again.

URLs with a query (a SAS-signed container, a token): the record and every message show them redacted
(``...?<redacted>``); the full URL is kept only in ``.download-source.json`` (mode 0600), for ``verify --fix``.
Relative names resolve with :func:`urllib.parse.urljoin` semantics, and a base URL's query is carried to every file
fetched from it: a SAS token on a container (or on the manifest, for the files beside it) signs each blob in it.
The manifest's query is never carried to another host.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .catalog import catalog_dir
from .download import Fetcher, Job, Report, disk_full_is_one_line, is_url
from .errors import MMEarthError, redact
from .io_utils import atomic_write_json, read_nofollow, sha256_file
from .locking import output_lock
from .shards import (DOWNLOAD_RECORD, MANIFEST, FileEntry, Manifest, inside, parse_manifest, read_manifest,
                     write_vds)

RECORD = DOWNLOAD_RECORD
SOURCE_FILE = ".download-source.json"   # the source URL in full (its query may be a secret), mode 0600
MAX_MANIFEST = 64 << 20
MANIFEST_ATTEMPTS = 3                   # the first contact: a wrong or unreachable host fails within seconds


# -- where a release comes from ---------------------------------------------------------------------------------
def fetch_manifest(source: str, fetcher: Fetcher) -> tuple[Manifest, str]:
    """The manifest at ``source`` (URL or path) and the base its files are fetched from. A remote manifest can
    only point at http(s): it never makes us read a local file."""
    shown = f"--manifest {redact(source)}"
    if is_url(source):
        def get() -> bytes:
            stream, _ = fetcher.transport.open(source)
            try:
                return stream.read(MAX_MANIFEST + 1)
            finally:
                stream.close()

        try:
            raw = fetcher.retrying(get, shown, Counter(), MANIFEST_ATTEMPTS)
        except MMEarthError as e:   # a message naming the URL (redacted) gets the option's name
            raise MMEarthError(str(e) if str(e).startswith("--manifest") else f"--manifest {e}") from None
        if len(raw) > MAX_MANIFEST:
            raise MMEarthError(f"{shown}: larger than {MAX_MANIFEST >> 20} MiB; not a release manifest")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:   # also UnicodeDecodeError; RecursionError: nested too deeply
            raise MMEarthError(f"{shown}: not valid JSON ({e})") from None
        manifest = parse_manifest(doc, shown)
        base = release_base(source, manifest.base_url)
        if not is_url(base):
            raise MMEarthError(f"{shown}: base_url {redact(manifest.base_url)!r} is not http(s); a remote manifest "
                               "never points at local files")
        return manifest, base
    if source.startswith("file:"):
        raise MMEarthError(f"--manifest {source}: pass a local manifest as a path, not a file:// URL")
    path = Path(source)
    if path.is_dir():
        path = path / MANIFEST
    manifest = read_manifest(path)
    return manifest, manifest.base_url or str(path.parent.resolve())


def release_base(source: str, base_url: str | None) -> str:
    """Where a remote manifest's files are: its ``base_url`` resolved against the manifest's URL (urljoin), else
    the manifest's own directory; a directory either way. A base on the manifest's host without a query of its own
    gets the manifest's query (the signature of a SAS-signed container)."""
    src = urllib.parse.urlsplit(source)
    b = urllib.parse.urlsplit(urllib.parse.urljoin(source, base_url if base_url else "."))
    query = b.query or (src.query if (b.scheme, b.netloc) == (src.scheme, src.netloc) else "")
    return urllib.parse.urlunsplit((b.scheme, b.netloc, b.path, query, ""))


def file_source(base: str, name: str) -> str:
    """``name`` inside the directory ``base`` (a URL, whose query is kept, or a path)."""
    if is_url(base):
        b = urllib.parse.urlsplit(base)
        path = b.path if b.path.endswith("/") else b.path + "/"
        return urllib.parse.urlunsplit((b.scheme, b.netloc, path + urllib.parse.quote(name), b.query, ""))
    return str(Path(base) / name)


def parse_shards(text: str | None, n: int) -> set[int] | None:
    """``0-9``, ``3``, ``0,4,10-12`` -> shard indices (checked against the ``n`` the release has)."""
    if not text:
        return None
    out: set[int] = set()
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b) if sep else int(a)
        except ValueError:
            raise MMEarthError(f"--shards {text!r}: use indices and ranges such as 0-9 or 0,4,10-12") from None
        if not 0 <= lo <= hi < n:
            raise MMEarthError(f"--shards {text!r}: {part.strip()} is outside 0-{n - 1} (the release has {n} shards)")
        out.update(range(lo, hi + 1))
    return out


def shards_holding(manifest: Manifest, base: str, tiles) -> set[int]:
    """Indices of the shards whose rows hold a tile that ``tiles`` selects, from the release's tile index."""
    from .tile_index import TileFilter, read_index, rows_of

    entry = next((f for f in manifest.side_files if f.name == f"{manifest.stem}_tiles.parquet"), None)
    if entry is None:
        raise MMEarthError(f"{manifest.stem}: this release has no tile index ({manifest.stem}_tiles.parquet) to "
                           "select tiles by; use --shards")
    source = file_source(base, entry.name)
    if is_url(source):
        from .remote import Client

        data = Client().get_all(source, 1 << 30)
    else:
        data = Path(source).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise MMEarthError(f"{redact(source)}: does not match the manifest's sha256")
    rows = rows_of(read_index(data), TileFilter.of(tiles), manifest.stem)
    if not rows.size:
        raise MMEarthError(f"{manifest.stem}: no tile matches the selection")
    return {f.index for f in manifest.shards if np.any((rows >= f.rows[0]) & (rows < f.rows[1]))}


def select(manifest: Manifest, modalities: Sequence[str] | None, shards: set[int] | None,
           log: Callable[[str], None]) -> list[FileEntry]:
    """The files a download fetches: the side files, and the shards of the chosen indices whose group holds a
    chosen modality."""
    known = sorted({d for g in manifest.groups.values() for d in g} - {"metadata"})
    groups = set(manifest.groups)
    if modalities:
        unknown = [m for m in modalities if m not in known]
        if unknown:
            raise MMEarthError(f"--modalities: {', '.join(unknown)} not in this release (has {', '.join(known)})")
        groups = {g for g, names in manifest.groups.items() if set(names) & set(modalities)}
        if len(manifest.groups) == 1:
            log("this release is not split by modality (shard --split-modalities): every shard holds all of them")
    chosen = [f for f in manifest.shards if f.group in groups and (shards is None or f.index in shards)]
    return manifest.side_files + chosen


# -- the record ----------------------------------------------------------------------------------------------------
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


def _skip_verified(jobs: list[Job], record: Record) -> list[Job]:
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


# -- download a sharded release ----------------------------------------------------------------------------------
def download_release(manifest_source: str, out: str | os.PathLike, *, modalities: Sequence[str] | None = None,
                     shards: str | None = None, connections: int = 8, allow_redirects: bool = False,
                     progress: bool = False, log: Callable[[str], None] = print, retries: int = 8,
                     backoff: float = 1.0, timeout: float = 60.0, tiles=None) -> Report:
    """``tiles``: only the shards holding these tiles (ids or a :class:`~mmearth_data.tile_index.TileFilter`:
    bbox, biomes, ecoregions, dates, split), found in the release's ``<stem>_tiles.parquet``."""
    out = Path(out)
    fetcher = Fetcher(connections, retries=retries, backoff=backoff, timeout=timeout,
                      allow_redirects=allow_redirects, progress=progress)
    manifest, base = fetch_manifest(manifest_source, fetcher)
    chosen = parse_shards(shards, len({f.index for f in manifest.shards}))
    if tiles is not None:
        holding = shards_holding(manifest, base, tiles)
        chosen = holding if chosen is None else chosen & holding
        log(f"{len(holding)} shard index(es) hold the tiles asked for")
    files = select(manifest, modalities, chosen, log)
    with output_lock(out, "download"), disk_full_is_one_line(out):
        jobs = [Job(file_source(base, f.name), inside(out, f.name), f.bytes, f.sha256, f.name) for f in files]
        old = Record.load(out)
        if old and old.doc.get("identity") not in (None, manifest.identity):
            raise MMEarthError(f"{out}: holds a download of another release ({old.doc.get('source')}); "
                               "choose another --out")
        shown = keep_source(out, manifest_source)
        record = Record(out, {"kind": "release", "source": shown, "identity": manifest.identity,
                              "selected": sorted(set((old.doc.get("selected", []) if old else [])) |
                                                 {f.name for f in files}),
                              "sha256": old.doc.get("sha256", {}) if old else {}})
        todo = _skip_verified(jobs, record)
        fetcher.check_space(todo, out)
        kept = manifest.to_json()
        if manifest.base_url:
            kept["base_url"] = redact(manifest.base_url)
        atomic_write_json(out / MANIFEST, kept, indent=1)
        record.save()
        log(f"{manifest.stem}: {len(files)} file(s), {sum(f.bytes for f in files) / 1e6:.1f} MB selected; "
            f"{len(todo)} to fetch over {connections} connection(s)")
        report = fetcher.fetch(todo, on_done=lambda job, sha: record.verified(job.label, sha))
        report.files = len(files)
        selected = {f.name for f in manifest.files if f.name in record.doc["selected"]}
        write_vds(out, manifest, present=lambda f: f.name in selected and (out / f.name).is_file())
    return report


# -- the official variants -------------------------------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    stem: str
    tile_px: int
    approx_gb: float
    files: list[str]
    sha256: dict[str, str] = field(default_factory=dict)


def variants() -> dict[str, Variant]:
    doc = yaml.safe_load((catalog_dir() / "releases.yaml").read_text())
    return {name: Variant(name, v["stem"], int(v["tile_px"]), float(v["approx_gb"]),
                          list(v["files"]), dict(v.get("sha256") or {})) for name, v in doc["variants"].items()}


def download_variant(name: str, out: str | os.PathLike, *, mirror: str | None = None, connections: int = 8,
                     allow_redirects: bool = False, progress: bool = False, log: Callable[[str], None] = print,
                     retries: int = 8, backoff: float = 1.0, timeout: float = 60.0, check_layout: bool = True
                     ) -> Report:
    """One of the published v001 directories (MMEarth, MMEarth64, MMEarth100k), from ``mirror`` (a URL or a
    directory)."""
    table = variants()
    if name not in table:
        raise MMEarthError(f"--variant {name!r}: choose one of {', '.join(table)}")
    v, out = table[name], Path(out)
    if not mirror:
        raise MMEarthError(f"--variant {name}: pass --mirror URL, the share link of {name} from the MMEarth-data "
                           "README (https://github.com/vishalned/MMEarth-data) or a copy of its four files; no "
                           "download URL ships with mmearth-data")
    if not is_url(mirror) and not Path(mirror).is_dir():
        raise MMEarthError(f"--mirror {mirror}: neither an http(s) URL nor a directory")
    fetcher = Fetcher(connections, retries=retries, backoff=backoff, timeout=timeout,
                      allow_redirects=allow_redirects, progress=progress)
    with output_lock(out, "download"), disk_full_is_one_line(out):
        old = Record.load(out)
        record = Record(out, {"kind": "variant", "variant": name, "source": keep_source(out, mirror),
                              "selected": list(v.files),
                              "published_sha256": bool(v.sha256), "sha256": old.doc.get("sha256", {}) if old else {}})
        jobs = [Job(file_source(mirror, f), inside(out, f), None, v.sha256.get(f), f) for f in v.files]
        todo = _skip_verified(jobs, record)
        fetcher.sizes(todo)   # the authors publish no byte sizes: ask the server
        fetcher.check_space(todo, out)
        record.save()
        log(f"{name}: {len(v.files)} file(s) from {redact(mirror)}, {sum(j.size for j in todo) / 1e9:.2f} GB to "
            f"fetch (the release notes say about {v.approx_gb:g} GB)")
        report = fetcher.fetch(todo, on_done=lambda job, sha: record.verified(job.label, sha))
        report.files = len(jobs)
        if not v.sha256:
            log(f"no checksums are published for {name}: the SHA-256 computed on download is recorded in "
                f"{out / RECORD} and checked by mmearth-data verify {out}")
        if check_layout:
            from .validate import validate

            rep = validate(out, layout_only=True)
            if not rep.ok:
                raise MMEarthError(f"{out}: downloaded, but validate --layout-only fails: "
                                   + "; ".join(str(e) for e in rep.errors[:3]))
            log(f"validate --layout-only: ok ({len(rep.warnings)} warning(s))")
    return report


# -- verify ----------------------------------------------------------------------------------------------------------
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
    """Check every file against its manifest or recorded SHA-256; with ``fix``, fetch the bad ones again."""
    out = Path(out)
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
