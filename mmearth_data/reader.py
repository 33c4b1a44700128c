"""Find and open a v001 dataset directory: ``<stem>.h5`` plus its three JSON side files."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from .errors import MMEarthError
from .writer import SIDE_FILES, side_path


@dataclass
class MMEarthFiles:
    """The files of one v001 dataset; JSON side files are parsed on first access."""

    h5_path: Path
    stem: str
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def directory(self) -> Path:
        return self.h5_path.parent

    def side_path(self, kind: str) -> Path:
        return side_path(self.directory, self.stem, kind)

    def _json(self, kind: str):
        if kind not in self._cache:
            path = self.side_path(kind)
            if not path.is_file():
                raise MMEarthError(f"{path}: missing; a v001 dataset needs <stem>_{kind}.json beside {self.h5_path.name}")
            try:
                self._cache[kind] = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise MMEarthError(f"{path}: not valid JSON ({e})") from None
        return self._cache[kind]

    @property
    def tile_info(self) -> dict:
        return self._json("tile_info")

    @property
    def band_stats(self) -> dict:
        return self._json("band_stats")

    @property
    def splits(self) -> dict:
        return self._json("splits")

    def h5(self, **kwargs) -> h5py.File:
        """Open the HDF5 file read-only (the caller closes it)."""
        try:
            return h5py.File(self.h5_path, "r", **kwargs)
        except OSError as e:
            raise MMEarthError(f"{self.h5_path}: cannot be opened as HDF5 ({e})") from None


def open_dataset(path: str | os.PathLike) -> MMEarthFiles:
    """Locate a v001 dataset from its directory or its ``.h5`` file.

    A directory must hold exactly one ``*.h5`` (hidden ``.partial`` files of an unfinished write are ignored).
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(x for x in p.glob("*.h5") if not x.name.startswith("."))
        if not found:
            unfinished = list(p.glob(".*.partial"))
            hint = " (an unfinished write left a .partial file)" if unfinished else ""
            raise MMEarthError(f"{p}: no .h5 file in this directory{hint}")
        if len(found) > 1:
            raise MMEarthError(f"{p}: holds several .h5 files ({', '.join(x.name for x in found)}); pass one file")
        p = found[0]
    elif not p.exists():
        raise MMEarthError(f"{p}: no such file or directory")
    elif p.suffix != ".h5":
        raise MMEarthError(f"{p}: expected a dataset directory or a .h5 file")
    return MMEarthFiles(h5_path=p, stem=p.stem)


__all__ = ["MMEarthFiles", "open_dataset", "SIDE_FILES"]
