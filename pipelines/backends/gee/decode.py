"""computePixels answers (NPY) as band planes: read in place when the answer is what was asked for, refused when it
is not, so a truncated or foreign body never becomes pixels."""
from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np

from .transport import EarthEngineError

MASKED = -99999.0       # what every masked pixel is unmasked to before the download (no band has that value)
TRANSPOSE_ROWS = 512    # pixels per block when an answer's records become band planes (a block stays in cache)


def npy_bands(data: bytes, bands: Sequence[str], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Band -> (h, w) float32 plane of a computePixels NPY answer (a structured array, one field per band), with
    :data:`MASKED` as NaN.

    Earth Engine documents the format only as NumPy: fields are matched by band name, in any order and either byte
    order, as 4-byte floats (every band is asked ``toFloat``). Read in place when the answer is the usual
    little-endian fields in request order (``ee``'s NUMPY_NDARRAY conversion copies it record by record).

    Args:
        data: the answer's body.
        bands: the bands asked for, in request order.
        shape: (height, width) of the grid asked for.

    Returns:
        One writable plane per band.

    Raises:
        EarthEngineError: the body is not an NPY array of those bands, that shape and 4-byte floats.
    """
    try:
        offset, (dims, fortran, dtype) = _npy_header(_npy_prefix(data))
    except ValueError as e:
        raise EarthEngineError(f"computePixels: not a NumPy array ({e})") from None
    fields = dtype.fields or {}
    if (tuple(dims) != shape or fortran or sorted(fields) != sorted(bands)
            or any(fields[b][0].kind != "f" or fields[b][0].itemsize != 4 for b in bands)
            or len(data) != offset + dtype.itemsize * shape[0] * shape[1]):
        raise EarthEngineError(f"computePixels: expected {shape} x {len(bands)} float32 bands, got {tuple(dims)} "
                               f"of {dtype} in {len(data)} bytes")
    n = shape[0] * shape[1]
    planes = np.empty((len(bands), n), np.float32)
    if list(dtype.names) == list(bands) and all(fields[b][0] == np.dtype("<f4") for b in bands) \
            and dtype.itemsize == 4 * len(bands):
        pixels = np.frombuffer(data, dtype="<f4", offset=offset).reshape(n, len(bands))
        for start in range(0, n, TRANSPOSE_ROWS):   # in cache-sized blocks: faster than one .T.copy()
            planes[:, start:start + TRANSPOSE_ROWS] = pixels[start:start + TRANSPOSE_ROWS].T
    else:
        records = np.frombuffer(data, dtype=dtype, offset=offset, count=n)
        for k, b in enumerate(bands):
            planes[k] = records[b]   # by name, converted from the field's byte order
    planes[planes == MASKED] = np.nan
    return {b: planes[k].reshape(shape) for k, b in enumerate(bands)}


def _npy_prefix(data: bytes) -> bytes:
    """The magic, version and header of an NPY file (the format's fixed layout: 6 + 2 bytes, then the header's length
    in 2 bytes for version 1, in 4 bytes for versions 2 and 3)."""
    if data[:6] != b"\x93NUMPY" or len(data) < 12 or data[6] not in (1, 2, 3):
        raise ValueError("no NPY magic string and version")
    start = 10 if data[6] == 1 else 12
    return data[:start + int.from_bytes(data[8:start], "little")]


@functools.lru_cache(maxsize=1024)
def _npy_header(head: bytes) -> tuple[int, tuple]:
    """(data offset, (shape, fortran order, dtype)) of an NPY file's magic, version and header; cached: the tiles of
    one band set share their header, which numpy parses with ``ast.literal_eval``."""
    from numpy.lib import format as npy

    buf = io.BytesIO(head)
    version = npy.read_magic(buf)
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    header = read_header(buf)
    return buf.tell(), header
