"""A partial download of a release as ``validate`` judges it: ``download --shards`` (or a modality or tile filter)
fetches some shards, and the release's ``<stem>.h5`` (a virtual dataset file) then maps only those, declaring
every row of the release. Such a directory is legitimate when its own records agree with its files: the shards
``download.json`` selects (rows from ``manifest.json``), the ``rows_present`` of the VDS's ``release`` attribute,
and the rows the shard files really hold. Rows any record claims but no shard file holds stay an error (a shard
deleted or replaced, a forged manifest or record)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import h5py

from ..errors import MMEarthError, one_line
from ..manifest import DOWNLOAD_RECORD, MANIFEST, read_manifest
from ..reader import MMEarthFiles, covered, stored_rows

Ranges = list[tuple[int, int]]


@dataclass
class PartialDownload:
    """What a downloaded release's records say it holds."""

    n_tiles: int                 # rows of the whole release (manifest.json)
    rows: dict[str, Ranges]      # per dataset: the rows of the shards download.json selects, merged
    absent: tuple[str, ...]      # datasets of the release none of whose shards was downloaded
    problem: str | None = None   # why the records cannot vouch for missing rows (then those are errors)

    def held(self, d: h5py.Dataset, name: str, why: str) -> tuple[Ranges | None, str]:
        """(the rows ``d`` holds, "") where its shards hold exactly the rows the records say were downloaded;
        else (None, the error for ``d``, ``why`` being :func:`rows_problem`'s)."""
        if self.problem:
            return None, f"{why}; {self.problem}"
        if not d.is_virtual or d.shape[0] != self.n_tiles:
            return None, why
        try:
            held = stored_rows(d, exact=True)   # opens every shard: each must hold the rows mapped onto it
        except MMEarthError:
            return None, why                   # why says which shard
        want = self.rows.get(name, [])
        if held != want:
            return None, (f"declares {d.shape[0]} rows, but its shards hold only {covered(held)}, not the "
                          f"{covered(want)} that {DOWNLOAD_RECORD} records as downloaded (a shard deleted or "
                          "replaced, or a forged manifest or record: mmearth-data verify --fix)")
        return held, ""


def read_download(files, f: h5py.File) -> PartialDownload | None:
    """The records of the downloaded release ``files`` (None where it is not one: no ``download.json`` of kind
    ``release`` beside a ``manifest.json``)."""
    if not isinstance(files, MMEarthFiles):
        return None
    root = files.directory
    if not (root / DOWNLOAD_RECORD).is_file() or not (root / MANIFEST).is_file():
        return None
    from ..releases.record import Record

    try:
        record = Record.load(root)
        manifest = read_manifest(root / MANIFEST)
    except MMEarthError as e:
        return PartialDownload(0, {}, (), one_line(e, 300))
    if record is None or record.doc.get("kind") != "release":
        return None
    try:
        attr = json.loads(str(f.attrs.get("release", "")))
    except ValueError:
        attr = None
    vds = files.h5_path.name
    if not isinstance(attr, dict) or not isinstance(attr.get("rows_present"), dict):
        return PartialDownload(0, {}, (), f"{vds} has no release attribute with rows_present")
    for where, identity in ((DOWNLOAD_RECORD, record.doc.get("identity")), (vds, attr.get("identity"))):
        if identity != manifest.identity:
            return PartialDownload(0, {}, (), f"{where}: identity {identity!r} is not the manifest's "
                                              f"({manifest.identity})")
    selected = set(record.doc.get("selected", []))
    rows: dict[str, list] = {}
    for s in manifest.shards:
        if s.name in selected:
            for name in s.datasets:
                rows.setdefault(name, []).append(s.rows)
    merged = {name: _merged(r) for name, r in rows.items()}
    present = attr["rows_present"]
    try:
        recorded = {str(k): _merged(tuple(map(int, r)) for r in v) for k, v in present.items()}
    except (TypeError, ValueError):
        recorded = None
    if recorded != merged:
        return PartialDownload(0, {}, (), f"the rows_present of {vds} disagree with the shards {DOWNLOAD_RECORD} "
                                          "selects")
    every = {name for names in manifest.groups.values() for name in names}
    return PartialDownload(manifest.n_tiles, merged, tuple(sorted(every - merged.keys())))


def _merged(ranges) -> Ranges:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]
