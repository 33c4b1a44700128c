"""A release's ``<stem>.h5``: one HDF5 virtual dataset (VDS) file that presents its shards as a single v001
file, by relative path (the directory can be moved); after a partial download it maps only the shards present."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py

from .catalog import load_spec
from .errors import MMEarthError
from .io_utils import atomic_path
from .manifest import FileEntry, Manifest


class _UntimedLayout(h5py.VirtualLayout):
    """A virtual layout whose dataset records no modification time: HDF5 stamps one by default, and the file's
    bytes would then depend on when it was written (h5py's ``create_virtual_dataset`` has no ``track_times``)."""

    def _get_dcpl(self, dst_filename):
        dcpl = super()._get_dcpl(dst_filename)
        dcpl.set_obj_track_times(False)
        return dcpl


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
                layout = _UntimedLayout(shape=(manifest.n_tiles, *tail), dtype=dtype)
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
