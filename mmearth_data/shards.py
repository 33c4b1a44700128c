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
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from .card import write_card
from .catalog import load_spec
from .errors import MMEarthError
from .identity import dataset_identity
from .io_utils import atomic_path, atomic_write_json, sha256_file
from .locking import output_lock
from .manifest import (DOWNLOAD_RECORD, MANIFEST, FileEntry, Manifest, inside, parse_manifest, read_manifest,
                       safe_relative)
from .reader import open_dataset, parse_side_file
from .streaming import write_release_index
from .tile_index import maybe_write_index
from .vds import write_vds
from .writer import SIDE_FILES

SHARD_DIR = "shards"
#: --split-modalities: what a user fetches separately (Sentinel-2 is most of the bytes, then Sentinel-1)
MODALITY_GROUPS = (("sentinel2", lambda name: name.startswith("sentinel2")),
                   ("sentinel1", lambda name: name.startswith("sentinel1")),
                   ("rest", lambda name: True))


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
    _refuse_a_release(files)
    for kind, p in side.items():   # the input's side files parse (one line naming them) before anything is written
        parse_side_file(p, kind, p.read_bytes())
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


def _refuse_a_release(files) -> None:
    """MMEarthError where the input is itself a release: its ``.h5`` maps shards (virtual datasets, no chunks of
    their own), and shards cut from it would not hold one tile per chunk."""
    with files.h5() as f:
        virtual = any(isinstance(d, h5py.Dataset) and d.is_virtual for d in f.values())
    if virtual:
        raise MMEarthError(f"{files.h5_path}: is a release (a virtual dataset mapping shards), not a dataset to cut; "
                           "shard the dataset it was cut from")


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


__all__ = ["DOWNLOAD_RECORD", "MANIFEST", "Manifest", "FileEntry", "parse_manifest", "read_manifest", "shard",
           "write_vds", "safe_relative", "inside", "dataset_identity"]
