"""Read one tile of a one-tile-per-chunk dataset by inflating its raw chunk with libdeflate.

The files stay standard HDF5 (gzip + optional shuffle, readable everywhere); only the reading side is faster:
``read_direct_chunk`` skips HDF5's filter pipeline and libdeflate inflates about twice as fast as zlib.
Datasets with another layout or filter fall back to plain h5py indexing.
"""
from __future__ import annotations

import zlib
from bisect import bisect_right
from pathlib import Path

import h5py
import numpy as np

from .errors import MMEarthError, one_line

try:  # libdeflate; optional so that a broken wheel never stops reading
    from deflate import DeflateError
    from deflate import zlib_compress as _deflate
    from deflate import zlib_decompress as _inflate
except ImportError:  # pragma: no cover - exercised only without the deflate wheel
    DeflateError = zlib.error

    def _inflate(data: bytes, size: int) -> bytes:
        return zlib.decompress(data)

    def _deflate(data: bytes, level: int) -> bytes:
        return zlib.compress(data, level)

H5Z_DEFLATE = 1
H5Z_SHUFFLE = 2


def filter_pipeline(dset: h5py.Dataset) -> list[int]:
    """The filter ids of ``dset`` in the order they were applied on write."""
    plist = dset.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


class TileReader:
    """Reads row ``i`` of one dataset; uses the raw-chunk fast path when the layout allows it."""

    def __init__(self, dset: h5py.Dataset):
        self.dset = dset
        self.dtype = dset.dtype
        self.tile_shape = dset.shape[1:]
        self.nbytes = int(np.prod(self.tile_shape, dtype=np.int64)) * self.dtype.itemsize
        filters = filter_pipeline(dset)
        self.fast = (
            dset.chunks is not None
            and dset.chunks == (1, *self.tile_shape)
            and self.dtype.kind in "uif"
            and set(filters) <= {H5Z_DEFLATE, H5Z_SHUFFLE}
        )
        self.filters = filters
        self._offset_tail = (0,) * len(self.tile_shape)
        self._where = f"{dset.file.filename}: a chunk of {dset.name}"   # once: dset.file builds a File object

    def fetch(self, i: int) -> tuple[int, bytes] | np.ndarray:
        """Raw chunk ``(filter_mask, bytes)`` of row ``i`` (cheap; holds h5py's lock), or the decoded array
        when the fast path does not apply."""
        if self.fast:
            try:
                return self.dset.id.read_direct_chunk((i, *self._offset_tail))
            except (KeyError, OSError, ValueError):  # unallocated chunk (fill value) or odd file: let HDF5 decide
                pass
        try:
            return self.dset[i]
        except OSError as e:   # a corrupt chunk, an unknown filter
            raise MMEarthError(f"{self.dset.file.filename}: {self.dset.name} row {i} cannot be read "
                               f"({one_line(e, 200)})") from None

    def decode(self, fetched: tuple[int, bytes] | np.ndarray) -> np.ndarray:
        """Inflate and unshuffle a fetched chunk (releases the GIL, so it can run in a thread)."""
        if not isinstance(fetched, tuple):   # decoded already (an array, or one compound row)
            return fetched
        return decode_raw(fetched, self.filters, self.dtype, self.tile_shape, self._where)

    def read(self, i: int) -> np.ndarray:
        return self.decode(self.fetch(i))


def decode_raw(fetched: tuple[int, bytes], filters: list[int], dtype: np.dtype, shape: tuple[int, ...],
               where: str) -> np.ndarray:
    """One raw chunk ``(filter_mask, bytes)`` of a one-tile-per-chunk dataset with ``filters`` (deflate and/or
    shuffle, in the order applied on write) as the tile array; local files and streamed ones share it."""
    mask, data = fetched
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        for pos in range(len(filters) - 1, -1, -1):  # undo in reverse order of application
            if mask & (1 << pos):
                continue
            if filters[pos] == H5Z_DEFLATE:
                data = _inflate(data, nbytes)
            else:
                data = unshuffle(data, dtype.itemsize)
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except (DeflateError, zlib.error, ValueError) as e:   # corrupt or truncated chunk bytes
        raise MMEarthError(f"{where} does not decode to a {dtype} tile of shape {shape} ({one_line(e, 120)})") \
            from None


class VirtualTileReader:
    """Reads row ``i`` of an HDF5 virtual dataset (a sharded release) from the shard that holds it, with each
    shard's own raw-chunk fast path: reading through HDF5's virtual mapping would decode in its filter pipeline."""

    def __init__(self, dset: h5py.Dataset):
        self.dset = dset
        self.directory = Path(dset.file.filename).parent
        spans = virtual_spans(dset)
        self.starts = [s[0] for s in spans]
        self.spans = spans
        self._readers: dict[int, TileReader] = {}
        self._files: list[h5py.File] = []
        self.fast = True

    def _locate(self, i: int) -> tuple[TileReader, int]:
        k = bisect_right(self.starts, i) - 1
        if k < 0 or i >= self.spans[k][1]:
            raise MMEarthError(f"{self.dset.file.filename}: row {i} of {self.dset.name} is in no shard present here "
                               "(a partial download; fetch its shard or read the rows it holds)")
        if k not in self._readers:
            f, d = open_source(self.dset, self.spans[k])
            self._files.append(f)
            self._readers[k] = TileReader(d)
        return self._readers[k], i - self.spans[k][0]

    def fetch(self, i: int):
        reader, j = self._locate(i)
        return reader, reader.fetch(j)

    def decode(self, fetched) -> np.ndarray:
        reader, data = fetched
        return reader.decode(data)

    def read(self, i: int) -> np.ndarray:
        return self.decode(self.fetch(i))

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files, self._readers = [], {}


Span = tuple[int, int, str, str]   # rows [start, stop) of a virtual dataset, the source file and dataset


def virtual_spans(dset: h5py.Dataset) -> list[Span]:
    """The rows each source of a virtual dataset maps, sorted by first row (from the mapping, not the sources)."""
    spans = []
    for m in dset.virtual_sources():
        lo, hi = m.vspace.get_select_bounds()
        spans.append((int(lo[0]), int(hi[0]) + 1, m.file_name, m.dset_name))
    return sorted(spans)


def open_source(dset: h5py.Dataset, span: Span) -> tuple[h5py.File, h5py.Dataset]:
    """The open source file and dataset of ``span``, checked to hold the rows the mapping gives it: a forged
    release can map billions of rows onto a shard of ten."""
    start, stop, name, dset_name = span
    path = Path(name) if Path(name).is_absolute() else Path(dset.file.filename).parent / name
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise MMEarthError(f"{path}: shard cannot be opened ({one_line(e, 200)}); mmearth-data verify --fix") from None
    d = f.get(dset_name)
    if not isinstance(d, h5py.Dataset) or not d.shape or d.shape[0] < stop - start:
        f.close()
        held = "no such dataset" if not isinstance(d, h5py.Dataset) else f"{d.shape[0] if d.shape else 0} rows"
        raise MMEarthError(f"{path}: {dset_name} holds {held}, but {dset.file.filename} maps rows {start}..{stop - 1} "
                           f"({stop - start} rows) onto it; mmearth-data verify --fix")
    return f, d


def tile_reader(dset: h5py.Dataset) -> TileReader | VirtualTileReader:
    return VirtualTileReader(dset) if dset.is_virtual else TileReader(dset)


def shuffle(data: bytes | np.ndarray, itemsize: int) -> bytes:
    """HDF5's shuffle filter: interleaved elements -> byte planes (byte k of every element, then k + 1)."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else \
        np.ascontiguousarray(data).view(np.uint8).ravel()
    if itemsize == 1:
        return raw.tobytes()
    return np.ascontiguousarray(raw.reshape(-1, itemsize).T).tobytes()


def encode_chunk(tile: np.ndarray, level: int = 4, shuffled: bool = True) -> bytes:
    """One tile as the bytes HDF5 stores for a shuffle + deflate chunk: a standard zlib stream that every HDF5
    reader inflates, written by libdeflate, several times faster than zlib.

    libdeflate's output is a pure function of the input and the level. ISA-L, faster still, is not: a
    SIGKILL-and-resume test caught it encoding one identical tile to two different streams in two runs, and a
    machine without it would write other bytes again."""
    tile = np.ascontiguousarray(tile)
    data = shuffle(tile, tile.dtype.itemsize) if shuffled else tile.tobytes()
    return _deflate(data, level)


def decode_chunk(data: bytes, dtype: np.dtype, shape: tuple[int, ...], shuffled: bool = True) -> np.ndarray:
    """Inverse of :func:`encode_chunk`."""
    dtype = np.dtype(dtype)
    raw = _inflate(data, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    if shuffled:
        raw = unshuffle(raw, dtype.itemsize)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def unshuffle(data: bytes | np.ndarray, itemsize: int) -> bytes | np.ndarray:
    """Undo HDF5's shuffle filter (byte planes -> interleaved elements).

    One contiguous copy per byte plane into a strided column: a transposed copy walks memory across the planes."""
    if itemsize == 1:
        return data
    planes = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1)
    out = np.empty((planes.shape[1], itemsize), dtype=np.uint8)
    for k in range(itemsize):
        out[:, k] = planes[k]
    return out
