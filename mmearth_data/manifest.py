"""A release's ``manifest.json``: its identity, shards (rows, bytes, sha256) and side files (sha256), checked
before anything is fetched or written; every name in it stays inside the release directory."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import MMEarthError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mmearth-data release"
MANIFEST_VERSION = 1
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
DOWNLOAD_RECORD = "download.json"   # written by download beside the manifest
#: sane bounds for what a manifest declares (the largest MMEarth release has 1.2 M tiles of 128 px): checked before
#: anything is allocated or fetched
MAX_TILES = 100_000_000
MAX_TILE_PX = 4096


@dataclass(frozen=True)
class FileEntry:
    name: str            # relative POSIX path inside the release
    kind: str            # "shard" or "side"
    bytes: int
    sha256: str
    group: str | None = None
    index: int | None = None
    rows: tuple[int, int] | None = None
    datasets: tuple[str, ...] = ()

    def to_json(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "bytes": self.bytes, "sha256": self.sha256}
        if self.kind == "shard":
            d.update(group=self.group, index=self.index, rows=list(self.rows), datasets=list(self.datasets))
        return d


@dataclass(frozen=True)
class Manifest:
    stem: str
    identity: str
    n_tiles: int
    tile_px: int
    tiles_per_shard: int
    groups: dict[str, list[str]]
    files: tuple[FileEntry, ...]
    base_url: str | None = None

    @property
    def shards(self) -> list[FileEntry]:
        return [f for f in self.files if f.kind == "shard"]

    @property
    def side_files(self) -> list[FileEntry]:
        return [f for f in self.files if f.kind == "side"]

    def to_json(self) -> dict:
        d = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "stem": self.stem, "identity": self.identity,
             "n_tiles": self.n_tiles, "tile_px": self.tile_px, "tiles_per_shard": self.tiles_per_shard,
             "groups": self.groups, "files": [f.to_json() for f in self.files]}
        if self.base_url:
            d["base_url"] = self.base_url
        return d


def safe_relative(name: object, where: str) -> str:
    """A manifest file name that cannot point outside the release: relative, POSIX, no ``..``, plain characters."""
    if not isinstance(name, str) or not name:
        raise MMEarthError(f"{where}: file name {name!r} is not a non-empty string")
    p = PurePosixPath(name)
    if name.startswith(("/", "\\")) or "\\" in name or ":" in name or p.is_absolute():
        raise MMEarthError(f"{where}: file name {name!r} is an absolute path; a manifest names files inside the release")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise MMEarthError(f"{where}: file name {name!r} leaves the release directory (empty, '.' or '..' part)")
    if any(part.startswith(".") for part in name.split("/")):   # our temporary, journal and lock files are hidden
        raise MMEarthError(f"{where}: file name {name!r} has a part starting with '.'; release files are not hidden")
    if not all(SAFE_NAME.match(part) for part in p.parts):
        raise MMEarthError(f"{where}: file name {name!r} has characters other than letters, digits, '.', '_', '-'")
    return name


def parse_manifest(doc: object, where: str) -> Manifest:
    """Check a manifest's shape and every name in it before anything is fetched or written."""
    def need(obj, key, typ, ctx):
        if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], typ) or isinstance(obj[key], bool):
            raise MMEarthError(f"{where}: {ctx}{key!r} is missing or not {getattr(typ, '__name__', typ)}")
        return obj[key]

    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise MMEarthError(f"{where}: not a release manifest (format must be {MANIFEST_FORMAT!r})")
    if doc.get("version") != MANIFEST_VERSION:
        raise MMEarthError(f"{where}: manifest version {doc.get('version')!r}; this mmearth-data reads {MANIFEST_VERSION}")
    stem = need(doc, "stem", str, "")
    if not SAFE_NAME.match(stem):
        raise MMEarthError(f"{where}: stem {stem!r} is not a plain file stem")
    files, seen = [], set()
    for i, f in enumerate(need(doc, "files", list, "")):
        ctx = f"files[{i}]."
        name = safe_relative(need(f, "name", str, ctx), where)
        if name.lower() in seen:
            raise MMEarthError(f"{where}: file name {name!r} appears twice")
        seen.add(name.lower())
        size, sha = need(f, "bytes", int, ctx), need(f, "sha256", str, ctx)
        if size < 0 or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise MMEarthError(f"{where}: {name}: bytes must be >= 0 and sha256 64 lowercase hex digits")
        kind = need(f, "kind", str, ctx)
        if kind == "shard":
            rows = need(f, "rows", list, ctx)
            if len(rows) != 2 or not all(isinstance(r, int) for r in rows) or not 0 <= rows[0] < rows[1]:
                raise MMEarthError(f"{where}: {name}: rows must be [start, stop) with 0 <= start < stop")
            datasets = need(f, "datasets", list, ctx)
            if not datasets or not all(isinstance(d, str) and d for d in datasets):
                raise MMEarthError(f"{where}: {name}: datasets must be a non-empty list of names")
            files.append(FileEntry(name, kind, size, sha, need(f, "group", str, ctx), need(f, "index", int, ctx),
                                   (rows[0], rows[1]), tuple(datasets)))
        elif kind == "side":
            files.append(FileEntry(name, kind, size, sha))
        else:
            raise MMEarthError(f"{where}: {name}: kind {kind!r} is not 'shard' or 'side'")
    for reserved in (MANIFEST, DOWNLOAD_RECORD, f"{stem}.h5"):   # written by us, never fetched over them
        if reserved.lower() in seen:
            raise MMEarthError(f"{where}: file name {reserved!r} is reserved for the release's own files")
    base = doc.get("base_url")
    if base is not None and not isinstance(base, str):
        raise MMEarthError(f"{where}: base_url must be a string")
    groups = need(doc, "groups", dict, "")
    if not all(isinstance(v, list) and v and all(isinstance(d, str) for d in v) for v in groups.values()):
        raise MMEarthError(f"{where}: groups must map each group to a non-empty list of dataset names")
    manifest = Manifest(stem, need(doc, "identity", str, ""), need(doc, "n_tiles", int, ""),
                        need(doc, "tile_px", int, ""), need(doc, "tiles_per_shard", int, ""),
                        {str(k): list(v) for k, v in groups.items()}, tuple(files), base)
    _check_counts(manifest, where)
    return manifest


def _check_counts(m: Manifest, where: str) -> None:
    """What a manifest declares must be sane and agree with itself: each group's shards cover rows
    ``0..n_tiles`` once, in index order, at most ``tiles_per_shard`` each. A lying ``n_tiles`` would otherwise make
    readers allocate per declared tile (10**12 tiles: terabytes)."""
    if not 1 <= m.n_tiles <= MAX_TILES:
        raise MMEarthError(f"{where}: n_tiles {m.n_tiles} is outside 1-{MAX_TILES}")
    if not 0 <= m.tile_px <= MAX_TILE_PX:
        raise MMEarthError(f"{where}: tile_px {m.tile_px} is outside 0-{MAX_TILE_PX}")
    if not 1 <= m.tiles_per_shard <= MAX_TILES:
        raise MMEarthError(f"{where}: tiles_per_shard {m.tiles_per_shard} is outside 1-{MAX_TILES}")
    if not m.shards:
        raise MMEarthError(f"{where}: lists no shard")
    by_group: dict[str, list[FileEntry]] = {g: [] for g in m.groups}
    for f in m.shards:
        if f.group not in by_group:
            raise MMEarthError(f"{where}: {f.name}: group {f.group!r} is not one of the manifest's groups "
                               f"({', '.join(m.groups)})")
        if sorted(f.datasets) != sorted(m.groups[f.group]):
            raise MMEarthError(f"{where}: {f.name}: datasets differ from those of group {f.group!r}")
        by_group[f.group].append(f)
    for g, shards in by_group.items():
        end = 0
        for k, f in enumerate(sorted(shards, key=lambda f: f.rows)):
            a, b = f.rows
            if a != end or b - a > m.tiles_per_shard or f.index != k:
                raise MMEarthError(f"{where}: {f.name}: rows [{a}, {b}) with index {f.index}; the shards of group "
                                   f"{g!r} must cover rows from 0 in order, index k holding the k-th "
                                   f"{m.tiles_per_shard} (tiles_per_shard), without gaps or overlaps")
            end = b
        if end != m.n_tiles:
            raise MMEarthError(f"{where}: n_tiles {m.n_tiles}, but the shards of group {g!r} cover rows 0-{end}")


def read_manifest(path: str | os.PathLike) -> Manifest:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MMEarthError(f"{path}: no such manifest") from None
    except (ValueError, RecursionError) as e:   # also UnicodeDecodeError; RecursionError: nested too deeply
        raise MMEarthError(f"{path}: not valid JSON ({e})") from None
    return parse_manifest(doc, str(path))


def inside(root: Path, name: str) -> Path:
    """``root/name`` for a checked name, refusing any existing link on the way (a link could lead outside)."""
    target = root / safe_relative(name, str(root))
    p = root
    for part in PurePosixPath(name).parts:
        p = p / part
        if p.is_symlink():
            raise MMEarthError(f"{p}: is a symbolic link; refusing to write through it")
    return target
