"""Where each tile's chunk lies in an HDF5 file (offset, size, filter mask; a release's: shard and CRC32 too),
walked once from the file's chunk B-tree and saved as ``.npz``."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..chunks import H5Z_DEFLATE, H5Z_SHUFFLE, filter_pipeline
from ..errors import MMEarthError, redact
from ..reader import MIN_CHUNK_BYTES


@dataclass
class ChunkTable:
    """Where each row's chunk of one dataset lies; ``sizes`` 0 where a row has no chunk. ``files``: the index of
    the file holding each row (a release's shards; None: one file); ``crcs``: each chunk's CRC32 where the index
    records it (a release's), checked before the bytes are decoded or cached."""

    offsets: np.ndarray
    sizes: np.ndarray
    masks: np.ndarray
    filters: list[int]
    dtype: np.dtype
    shape: tuple[int, ...]
    files: np.ndarray | None = None
    crcs: np.ndarray | None = None


def chunk_table(d: h5py.Dataset) -> ChunkTable | None:
    """The table of a one-tile-per-chunk dataset with deflate/shuffle filters, else None (read through h5py)."""
    filters = filter_pipeline(d)
    if d.chunks is None or d.chunks != (1, *d.shape[1:]) or not set(filters) <= {H5Z_DEFLATE, H5Z_SHUFFLE}:
        return None
    n = d.shape[0]
    if n * MIN_CHUNK_BYTES > d.file.id.get_filesize():   # a header may declare rows no file holds: size nothing by it
        raise MMEarthError(f"{redact(str(d.file.filename))}: {d.name} declares {n} rows, more than its file of "
                           f"{d.file.id.get_filesize()} bytes can hold")
    offsets, sizes, masks = np.zeros(n, np.uint64), np.zeros(n, np.uint32), np.zeros(n, np.uint32)

    def visit(info) -> None:
        row = info.chunk_offset[0]
        offsets[row], sizes[row], masks[row] = info.byte_offset, info.size, info.filter_mask

    if hasattr(d.id, "chunk_iter"):
        d.id.chunk_iter(visit)
    else:   # pragma: no cover - HDF5 before 1.12.3
        for k in range(d.id.get_num_chunks()):
            visit(d.id.get_chunk_info(k))
    return ChunkTable(offsets, sizes, masks, filters, d.dtype, tuple(d.shape[1:]))


def save_tables(path: Path, tables: dict[str, ChunkTable | None], extra: dict | None = None) -> None:
    arrays, meta = {}, {"__extra__": extra} if extra else {}
    for name, t in tables.items():
        if t is None:
            meta[name] = None
            continue
        arrays.update({f"{name}/offsets": t.offsets, f"{name}/sizes": t.sizes, f"{name}/masks": t.masks})
        arrays.update({f"{name}/{k}": v for k, v in (("files", t.files), ("crcs", t.crcs)) if v is not None})
        fields = [[f, t.dtype.fields[f][0].str, t.dtype.fields[f][1]] for f in t.dtype.names or ()]
        meta[name] = {"filters": t.filters, "dtype": {"fields": fields, "itemsize": t.dtype.itemsize} if fields
                      else t.dtype.str,
                      "shape": list(t.shape)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    os.replace(tmp, path)


def load_tables(source) -> dict[str, ChunkTable | None] | None:
    """Tables saved by :func:`save_tables` (a path or a file object); None if absent or damaged."""
    try:
        with np.load(source) as z:
            meta = json.loads(z["__meta__"].tobytes())
            out = {"__extra__": meta.pop("__extra__", None)} if "__extra__" in meta else {}
            for name, m in meta.items():
                if m is None:
                    out[name] = None
                    continue
                d = m["dtype"]
                dtype = np.dtype({"names": [f[0] for f in d["fields"]], "formats": [f[1] for f in d["fields"]],
                                  "offsets": [f[2] for f in d["fields"]], "itemsize": d["itemsize"]}) \
                    if isinstance(d, dict) else np.dtype(d)
                extra = {k: z[f"{name}/{k}"] for k in ("files", "crcs") if f"{name}/{k}" in z.files}
                out[name] = ChunkTable(z[f"{name}/offsets"], z[f"{name}/sizes"], z[f"{name}/masks"],
                                       list(m["filters"]), dtype, tuple(m["shape"]), **extra)
            return out
    except (OSError, ValueError, KeyError, TypeError, RecursionError):   # absent or damaged
        return None
