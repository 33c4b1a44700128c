"""The ``synthetic`` backend: each location's sources generated on demand and read through ``LocalBackend``."""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from mmearth_data.io_utils import remove_tree

from ..local import LocalBackend, StaticCatalog
from .catalog import era5_root, safe_name, write_locations
from ..capabilities import Capabilities
from .files import Deferred, build_atomically
from .scenes import Location


class SyntheticBackend:
    """Generates each location's sources on demand (atomically, deterministically) and reads them through
    ``LocalBackend``; the shared ERA5 months are generated once. Sources of a committed tile are deleted unless
    ``keep_sources`` (they can be regenerated bit for bit), so disk use stays bounded by the tiles in flight."""

    name = "synthetic"
    default_threads = 2
    capabilities = Capabilities(per_tile=True)

    def __init__(self, root: str | os.PathLike, seed: int, tile_px: int, keep_sources: bool = False, **local_kwargs):
        self.root, self.seed, self.tile_px = Path(root), seed, tile_px
        self.keep_sources, self.local_kwargs = keep_sources, local_kwargs
        self._era5: StaticCatalog | None = None

    def clear_unfinished(self) -> None:
        """Remove the hidden ``.partial`` / ``.trash`` directories a killed run left (call while holding the lock)."""
        for parent in (self.root, self.root / "tiles"):
            if parent.is_dir():
                for p in parent.glob(".*"):
                    if p.name.endswith((".partial", ".trash")):
                        shutil.rmtree(p, ignore_errors=True)

    def era5_root(self) -> Path:
        return era5_root(self.root, self.seed)

    def _shared(self) -> StaticCatalog:
        if self._era5 is None:
            self._era5 = StaticCatalog([str(self.era5_root())])
        return self._era5

    def for_tile(self, loc: Location) -> LocalBackend:
        target = self.root / "tiles" / safe_name(loc.tile_id)
        deferred: dict[str, Deferred] = {}

        def build(d: Path) -> None:
            deferred.update(write_locations(d, [loc], self.seed, self.tile_px, f"synthetic-{loc.tile_id}",
                                            lazy=not self.keep_sources))
        build_atomically(target, build)
        if not deferred and not self.keep_sources:   # the catalog was written by an earlier (killed) run
            deferred = write_locations(target, [loc], self.seed, self.tile_px, "", dry=True)
        return LazyLocalBackend(target, deferred, shared=[self._shared()], **self.local_kwargs)

    def release(self, tile_id: str) -> None:
        if not self.keep_sources:
            remove_tree(self.root / "tiles" / safe_name(tile_id))


class LazyLocalBackend(LocalBackend):
    """``LocalBackend`` over a location's catalog whose assets are written (atomically) when first read; the
    read itself goes through the same rasterio path as any local catalog."""

    def __init__(self, root: Path, deferred: Mapping[str, Deferred], **kwargs):
        super().__init__(str(root), **kwargs)
        self.root, self.deferred = Path(root).resolve(), deferred

    def _guarded(self, href: str, fn):
        path = Path(href)
        if not path.exists():
            try:
                spec = self.deferred.get(path.relative_to(self.root).as_posix())
            except ValueError:
                spec = None
            if spec is not None:
                spec.write(path)
        return super()._guarded(href, fn)

