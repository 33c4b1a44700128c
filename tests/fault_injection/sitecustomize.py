"""Test-only fault injection for CLI subprocesses: put this directory on ``PYTHONPATH`` and set
``MMEARTH_DATA_TEST_RAISE=<collection>:<tile_id>``; every interpreter started that way (the CLI and the worker
processes it spawns, which inherit the environment) makes the synthetic backend's searches of that collection for
that tile raise an unexpected exception, a bug in a recipe's dependencies, so a test can show that one bad tile
never stops a build. Python imports ``sitecustomize`` at startup; the patch waits until the backend module is
imported, so nothing else is loaded early."""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

FAULT_ENV = "MMEARTH_DATA_TEST_RAISE"
TARGET = "pipelines.backends.synthetic.backend"


def patch(module, collection: str, tile_id: str) -> None:
    """Wrap ``SyntheticBackend.for_tile``: the backend it returns for ``tile_id`` raises in searches of
    ``collection``."""
    for_tile = module.SyntheticBackend.for_tile

    def faulty_for_tile(self, loc):
        backend = for_tile(self, loc)
        if loc.tile_id == tile_id:
            search = backend.search

            def raising(name, *args, **kwargs):
                if name == collection:
                    raise RuntimeError(f"test-only fault: {FAULT_ENV} raises in searches of {name}")
                return search(name, *args, **kwargs)

            backend.search = raising
        return backend

    module.SyntheticBackend.for_tile = faulty_for_tile


class _PatchWhenImported(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it lets the normal finders find ``TARGET`` and patches the module once it has run."""

    def __init__(self, collection: str, tile_id: str):
        self.collection, self.tile_id = collection, tile_id

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module, self.collection, self.tile_id)

        spec.loader.exec_module = exec_module
        return spec


_spec = os.environ.get(FAULT_ENV, "")
_collection, _, _tile = _spec.partition(":")
if _collection and _tile:
    sys.meta_path.insert(0, _PatchWhenImported(_collection, _tile))

