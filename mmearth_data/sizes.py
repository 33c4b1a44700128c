"""Tile counts as users write them on the command line: ``500``, ``1k``, ``100k``, ``1.2M``."""
from __future__ import annotations

import re

from .errors import MMEarthError

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}


def parse_size(text: str | int, what: str = "size") -> int:
    """Parse ``1k``/``1.2M``-style counts into a positive int; raise :class:`MMEarthError` otherwise."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(text))
        if not m:
            raise MMEarthError(f"{what} {text!r}: expected a count such as 500, 1k, 100k or 1.2M")
        number = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
        if not number.is_integer():
            raise MMEarthError(f"{what} {text!r}: is not a whole number of tiles")
        value = int(number)
    if value <= 0:
        raise MMEarthError(f"{what} {text!r}: must be at least 1")
    return value
