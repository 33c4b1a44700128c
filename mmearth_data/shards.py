"""Sharded releases: a v001 dataset cut into HDF5 shards of the identical layout, a checksummed ``manifest.json``,
and one HDF5 virtual dataset (VDS) file that presents the shards as a single v001 file.

A release directory is itself a v001 dataset directory that every existing reader opens unchanged::

    RELEASE/<stem>.h5                  the VDS: every v001 dataset, mapped onto the shards
    RELEASE/<stem>_{tile_info,band_stats,splits}.json
    RELEASE/manifest.json              identity, shards (rows, bytes, sha256), side files (sha256)
    RELEASE/README.md                  the dataset card (mmearth_data.card), listed as a side file
    RELEASE/shards/<stem>[-<group>]-00000.h5

Shards copy the source's compressed chunks as they are (``read_direct_chunk`` -> ``write_direct_chunk``), so a
shard holds the same bytes per tile, dtypes, filters and attributes as the file it came from. The VDS refers to
the shards by relative path (HDF5 looks for them beside the VDS file), so the directory can be moved; after a
partial download it maps only the shards present, and :class:`~mmearth_data.MMEarthDataset` reads only their rows.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import h5py
import numpy as np

from .card import write_card
from .catalog import load_spec
from .errors import MMEarthError
from .identity import dataset_identity
from .io_utils import atomic_path, atomic_write_json, sha256_file
from .locking import output_lock
from .reader import open_dataset
from .writer import SIDE_FILES
from .streaming import write_release_index
from .tile_index import maybe_write_index

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mmearth-data release"
MANIFEST_VERSION = 1
SHARD_DIR = "shards"
#: --split-modalities: what a user fetches separately (Sentinel-2 is most of the bytes, then Sentinel-1)
MODALITY_GROUPS = (("sentinel2", lambda name: name.startswith("sentinel2")),
                   ("sentinel1", lambda name: name.startswith("sentinel1")),
                   ("rest", lambda name: True))
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
DOWNLOAD_RECORD = "download.json"   # written by download beside the manifest
#: sane bounds for what a manifest declares (the largest MMEarth release has 1.2 M tiles of 128 px): checked before
#: anything is allocated or fetched
MAX_TILES = 100_000_000
MAX_TILE_PX = 4096


# -- manifest ----------------------------------------------------------------------------------------------------
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


# -- shard -------------------------------------------------------------------------------------------------------
def modality_groups(names: Sequence[str], split: bool) -> dict[str, list[str]]:
    """Datasets per shard group; ``metadata`` (tile ids and S2 types) goes into every group, so each group alone
    is readable."""
    data = [n for n in names if n != "metadata"]
    if not split:
        return {"all": data + ["metadata"]}
    groups: dict[str, list[str]] = {}
    for n in data:
        g = next(g for g, match in MODALITY_GROUPS if match(n))
        groups.setdefault(g, []).append(n)
    return {g: groups[g] + ["metadata"] for g, _ in MODALITY_GROUPS if g in groups}


def shard_name(stem: str, group: str, index: int) -> str:
    return f"{SHARD_DIR}/{stem}-{index:05d}.h5" if group == "all" else f"{SHARD_DIR}/{stem}-{group}-{index:05d}.h5"


def _copy_rows(src: h5py.Dataset, dst: h5py.Dataset, start: int, stop: int) -> None:
    """Rows ``start:stop`` of ``src`` into ``dst`` from row 0: raw chunks when one row is one chunk, else values."""
    tail = (0,) * (src.ndim - 1)
    if src.chunks is not None and src.chunks[0] == 1 and src.chunks[1:] == src.shape[1:]:
        for i in range(start, stop):
            try:
                mask, data = src.id.read_direct_chunk((i, *tail))
            except (KeyError, OSError, ValueError):   # an unallocated chunk: write the fill value as values
                dst[i - start] = src[i]
                continue
            dst.id.write_direct_chunk((i - start, *tail), data, mask)
    else:
        step = max(1, (64 << 20) // max(1, int(np.prod(src.shape[1:])) * src.dtype.itemsize))
        for a in range(start, stop, step):
            b = min(stop, a + step)
            dst[a - start:b - start] = src[a:b]


def _write_shard(src: h5py.File, path: Path, datasets: Sequence[str], rows: tuple[int, int], release: dict) -> None:
    start, stop = rows
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as dst:
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            dst.attrs["release"] = json.dumps(release, sort_keys=True)
            for name in datasets:
                s = src[name]
                chunks = s.chunks if s.chunks is not None and s.chunks[0] == 1 else None
                d = dst.create_dataset(name, shape=(stop - start, *s.shape[1:]), dtype=s.dtype,
                                       maxshape=(None, *s.shape[1:]), chunks=chunks or True,
                                       compression=s.compression, compression_opts=s.compression_opts,
                                       shuffle=s.shuffle, fletcher32=s.fletcher32, track_times=False)
                for k, v in s.attrs.items():
                    d.attrs[k] = v
                _copy_rows(s, d, start, stop)


def shard(source: str | os.PathLike, out: str | os.PathLike, *, tiles_per_shard: int = 10_000,
          split_modalities: bool = False, progress: bool = False, log: Callable[[str], None] = lambda s: None
          ) -> Manifest:
    """Cut the v001 dataset at ``source`` into a release at ``out``; a rerun after a kill writes only the shards
    that are missing. Returns the manifest (written last)."""
    if tiles_per_shard < 1:
        raise MMEarthError(f"--tiles-per-shard {tiles_per_shard}: must be at least 1")
    files = open_dataset(source)
    out = Path(out)
    if out.resolve() == files.directory.resolve():
        raise MMEarthError(f"--out {out}: is the source dataset's directory; choose a new directory for the release")
    side = {k: files.side_path(k) for k in SIDE_FILES}
    for p in side.values():
        if not p.is_file():
            raise MMEarthError(f"{p}: missing; a v001 dataset needs its three JSON side files to be released")
    identity = dataset_identity(files.h5_path, side)
    with output_lock(out, "shard"):
        existing = out / MANIFEST
        if existing.is_file():
            old = read_manifest(existing)
            if old.identity != identity:
                raise MMEarthError(f"{out}: holds the release of another dataset ({old.stem}, identity {old.identity}); "
                                   "choose another --out")
        with files.h5() as src:
            n = src["metadata"].shape[0]
            if n == 0:
                raise MMEarthError(f"{files.h5_path}: holds no tiles")
            names = [k for k in load_spec().datasets if k in src] + ["metadata"]
            tile_px = int(src.attrs.get("tile_px", src["sentinel2"].shape[-1] if "sentinel2" in src else 0))
            groups = modality_groups(names, split_modalities)
            ranges = [(a, min(n, a + tiles_per_shard)) for a in range(0, n, tiles_per_shard)]
            todo = [(g, k, r) for g in groups for k, r in enumerate(ranges)]
            entries = _write_shards(src, out, files.stem, identity, groups, todo, progress, log)
        for kind, p in side.items():   # byte copies: the manifest's checksums are the source's
            dst = out / p.name
            if not dst.is_file() or sha256_file(dst) != sha256_file(p):
                with atomic_path(dst) as tmp:
                    tmp.write_bytes(p.read_bytes())
            entries.append(FileEntry(p.name, "side", dst.stat().st_size, sha256_file(dst)))
        manifest = Manifest(files.stem, identity, n, tile_px, tiles_per_shard, groups, tuple(entries))
        vds = write_vds(out, manifest)
        index = maybe_write_index(open_dataset(vds), log)   # which shard holds which tile, as GeoParquet
        chunks = write_release_index(out, manifest)          # where each chunk is, with its CRC32: for streaming
        card = write_card(open_dataset(vds), release={"tiles_per_shard": tiles_per_shard, "shards": {
            g: len(ranges) for g in groups}}, origin=files)   # README.md: the dataset card, a release file too
        for p in (index, chunks, card):
            if p is not None:
                entries.append(FileEntry(p.name, "side", p.stat().st_size, sha256_file(p)))
        manifest = Manifest(files.stem, identity, n, tile_px, tiles_per_shard, groups, tuple(entries))
        atomic_write_json(existing, manifest.to_json(), indent=1)
    return manifest


def _write_shards(src, out: Path, stem: str, identity: str, groups, todo, progress: bool, log) -> list[FileEntry]:
    """Each shard once, under a temporary name until complete; a shard whose record (bytes, sha256, identity)
    matches the file already there is kept."""
    from tqdm import tqdm

    entries = []
    work = out / ".shard-work"
    work.mkdir(parents=True, exist_ok=True)
    for d in (out, out / SHARD_DIR, work):   # what a killed run left half-written (we hold the lock)
        for stale in d.glob(".*.partial"):
            stale.unlink()
    kept = 0
    for g, k, rows in tqdm(todo, desc="shard", unit="shard", disable=not progress):
        name = shard_name(stem, g, k)
        path, record = out / name, work / (Path(name).name + ".json")
        want = {"identity": identity, "rows": list(rows), "datasets": groups[g]}
        done = json.loads(record.read_text()) if record.is_file() and path.is_file() else None
        if done and all(done.get(key) == v for key, v in want.items()) and done["bytes"] == path.stat().st_size:
            kept += 1
        else:
            release = {"identity": identity, "group": g, "index": k, "rows": list(rows)}
            _write_shard(src, path, groups[g], rows, release)
            done = {**want, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
            atomic_write_json(record, done)
        entries.append(FileEntry(name, "shard", done["bytes"], done["sha256"], g, k, rows, tuple(groups[g])))
    if kept:
        log(f"kept {kept} shard(s) finished by an earlier run")
    return entries


# -- the virtual dataset ---------------------------------------------------------------------------------------
def write_vds(root: Path, manifest: Manifest, present: Callable[[FileEntry], bool] | None = None) -> Path:
    """``root/<stem>.h5``: every dataset of the shards present (default: the files that exist), full length,
    mapped onto its shards by relative path; rows whose shard is absent read as the fill value, and the file
    attribute ``rows_present`` (``[[start, stop], ...]`` per dataset) says which rows are real."""
    present = present or (lambda f: (root / f.name).is_file())
    shards = [f for f in manifest.shards if present(f)]
    if not shards:
        raise MMEarthError(f"{root}: none of the release's shards is present; nothing to map")
    by_dataset: dict[str, list[FileEntry]] = {}
    for f in shards:
        for d in f.datasets:
            by_dataset.setdefault(d, []).append(f)
    for f in shards:   # the files must hold what the manifest says: the VDS would pad a short shard with fill values
        with h5py.File(root / f.name, "r") as s:
            for d in f.datasets:
                n = s[d].shape[0] if isinstance(s.get(d), h5py.Dataset) else None
                if n != f.rows[1] - f.rows[0]:
                    held = "no such dataset" if n is None else f"{n} row(s)"
                    raise MMEarthError(f"{root / f.name}: holds {held} of {d}, the manifest declares "
                                       f"{f.rows[1] - f.rows[0]} (rows {f.rows[0]}-{f.rows[1]}); the release is "
                                       "inconsistent: ask its publisher for a corrected manifest")
    target = root / f"{manifest.stem}.h5"
    with h5py.File(root / shards[0].name, "r") as first:
        file_attrs = {k: v for k, v in first.attrs.items() if k != "release"}
    covered: dict[str, list[list[int]]] = {}
    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w", libver=("earliest", "v110")) as vds:
            for name in [d for d in load_spec().datasets if d in by_dataset] + ["metadata"]:
                files = sorted(by_dataset.get(name, []), key=lambda f: f.rows)
                if not files:
                    continue
                with h5py.File(root / files[0].name, "r") as s:
                    ds = s[name]
                    dtype, tail, attrs = ds.dtype, ds.shape[1:], dict(ds.attrs)
                layout = h5py.VirtualLayout(shape=(manifest.n_tiles, *tail), dtype=dtype)
                for f in files:
                    a, b = f.rows
                    layout[a:b] = h5py.VirtualSource(f.name, name, shape=(b - a, *tail))
                d = vds.create_virtual_dataset(name, layout)
                for k, v in attrs.items():
                    d.attrs[k] = v
                covered[name] = [list(f.rows) for f in files]
            for k, v in file_attrs.items():
                vds.attrs[k] = v
            vds.attrs["release"] = json.dumps({"identity": manifest.identity, "rows_present": covered},
                                              sort_keys=True)
    return target


__all__ = ["MANIFEST", "Manifest", "FileEntry", "parse_manifest", "read_manifest", "shard", "write_vds",
           "safe_relative", "inside"]
