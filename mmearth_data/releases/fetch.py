"""Download a sharded release: the side files and the chosen shards, resumably, each checked against the
manifest's sha256, then the virtual dataset over what is here."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..download import Fetcher, Job, Report, disk_full_is_one_line, is_url
from ..errors import MMEarthError, redact
from ..io_utils import atomic_write_json
from ..locking import output_lock
from ..manifest import MANIFEST, FileEntry, Manifest, inside
from ..vds import write_vds
from .record import Record, keep_source, skip_verified
from .source import fetch_manifest, file_source


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
    from ..tile_index import TileFilter, read_index, rows_of

    entry = next((f for f in manifest.side_files if f.name == f"{manifest.stem}_tiles.parquet"), None)
    if entry is None:
        raise MMEarthError(f"{manifest.stem}: this release has no tile index ({manifest.stem}_tiles.parquet) to "
                           "select tiles by; use --shards")
    source = file_source(base, entry.name)
    if is_url(source):
        from ..remote import Client

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
        todo = skip_verified(jobs, record)
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
