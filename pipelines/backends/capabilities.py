"""What a backend does beyond ``search`` and ``read``, declared by each backend class as ``capabilities`` (typed,
so the export asks a declared flag, never probes for attributes)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    compiles: bool = False
    """Takes a tile's recipes whole (``run(ctx, names)``) and compiles them into its own requests; its searches
    apply containment and time ranking themselves (Earth Engine)."""
    ranks_nearest: bool = False
    """``search(..., nearest=t)`` returns only the acquisitions nearest to ``t`` (ties included)."""
    counts_searches: bool = False
    """``thread_searches()``: search requests the calling thread has sent (for status' per-tile figure)."""
    per_tile: bool = False
    """``for_tile(location)`` gives the tile's own backend (its sources made on demand); ``release(tile_id)`` once
    the tile is committed."""
    batch_size: int = 0
    """``prepare(contexts)`` locates this many tiles in one request (0: no batching)."""
    meters_requests: bool = False
    """``take_requests()`` and ``limiter.summary()``: requests sent and adaptive concurrency, for status."""


PLAIN = Capabilities()
