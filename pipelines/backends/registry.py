"""Every backend, registered once: its options, what it needs, how a partition task opens it, what a tile costs.
A new backend is one module (its transport) plus one entry here; nothing else asks which backend it is.
Light to import: each ``open`` imports its backend when called."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BackendSpec:
    name: str
    open: Callable[[Any], Any]
    """The backend for one partition task of an :class:`~pipelines.export.ExportConfig` (shared per process)."""
    source_map: str
    """The source map (``catalogs/sources/<name>.yaml``) it reads without ``--stac-preset``."""
    help: str
    stac: bool = False
    """A STAC API: ``--stac-url`` and ``--sas-token-url`` apply."""
    presets: bool = False
    """``--stac-preset`` applies (an API's source map, or a static mirror of its items)."""
    needs_url: bool = False
    needs_catalog: bool = False
    service: bool = False
    """Reads a remote service (an API): the preflight checks it before a run."""
    compiles: bool = False
    """Every modality goes through one compiling executor (``capabilities.compiles``)."""
    routes: bool = True
    """``--modality-backend`` may take a modality from elsewhere."""
    synthetic: bool = False
    """Generates its own sources under the output (labelled synthetic, CPU-bound: processes by default)."""
    requests_per_tile: float = 0.0
    """Source requests per exported tile, for ``build --dry-run`` (measured by ``benchmarks/bench_export.py``)."""
    prepare_run: Callable[[Any], None] | None = None
    """Run once before the partition tasks start (the caller holds the output directory's lock)."""
    open_route: Callable[[Any, Any, float, Any], Any] | None = None
    """The backend serving one ``--modality-backend`` route ``(route, choice, timeout_s, policy)``; None: this
    backend cannot serve a route."""
    route_arg: str = "none"
    """What a route's ``:ARG`` is: ``required`` (a catalog), ``optional`` (another URL) or ``none``."""
    not_routable: tuple[str, ...] = ()
    """Modalities no route to this backend may take (with the reason in :func:`route_problem`)."""

    def route_map(self, route) -> str:
        """The source map a route to this backend reads (a STAC route names its own)."""
        return route.backend if self.stac else self.source_map


def _open_synthetic(cfg):
    from .synthetic import SyntheticBackend

    return SyntheticBackend(cfg.synthetic_root, cfg.seed, cfg.tile_px, keep_sources=cfg.keep_sources,
                            timeout_s=cfg.timeout_s, policy=cfg.policy())


def _prepare_synthetic(cfg) -> None:
    """Sources shared by every partition (ERA5), made once; what killed runs left half-written is cleared."""
    from .synthetic import SyntheticBackend

    synthetic = SyntheticBackend(cfg.synthetic_root, cfg.seed, cfg.tile_px)
    synthetic.clear_unfinished()
    synthetic.era5_root()


def _open_local(cfg):
    from ..sources import local_backend

    return local_backend(cfg.source.catalog, cfg.timeout_s, cfg.policy(), cfg.source.allow_outside_catalog)


def _open_stac(cfg):
    from ..sources import stac_backend

    return stac_backend(cfg.source.preset, cfg.source.stac_url, cfg.source.sas_token_url, cfg.timeout_s, cfg.policy())


def _open_gee(cfg):
    from ..sources import gee_executor

    return gee_executor(cfg.source, cfg.policy())


def _route_local(route, choice, timeout_s, policy):
    from ..sources import local_backend

    return local_backend(route.arg, timeout_s, policy, choice.allow_outside_catalog)


def _route_stac(route, choice, timeout_s, policy):
    from ..sources import stac_backend

    return stac_backend(route.backend, route.arg, choice.sas_token_url, timeout_s, policy)


def _route_gee(route, choice, timeout_s, policy):
    from ..sources import gee_executor

    return gee_executor(choice, policy)


_STAC = dict(open=_open_stac, stac=True, presets=True, service=True, requests_per_tile=33, open_route=_route_stac,
             route_arg="optional")   # bench_export --backend stac
REGISTRY: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("synthetic", _open_synthetic, "local", "generated sources (offline, labelled synthetic)",
                routes=False, synthetic=True, prepare_run=_prepare_synthetic),
    BackendSpec("local", _open_local, "local", "a static STAC catalog of COGs (--catalog)", presets=True,
                needs_catalog=True, requests_per_tile=28, open_route=_route_local, route_arg="required"),
    BackendSpec("stac", source_map="", help="any STAC API (--stac-url, --stac-preset)", needs_url=True, **_STAC),
    BackendSpec("planetary-computer", source_map="planetary-computer",
                help="Planetary Computer's STAC API with its source map (catalogs/sources/)", **_STAC),
    BackendSpec("earth-search", source_map="earth-search",
                help="Earth Search's STAC API with its source map (catalogs/sources/)", **_STAC),
    # one computePixels per tile with a scene + 2 batched value:compute per 50 tiles (tests/pipelines/test_gee_full.py)
    BackendSpec("gee", _open_gee, "gee",
                "Google Earth Engine, the assets MMEarth used (--gee-project; at most two requests per tile)",
                service=True, compiles=True, requests_per_tile=1.04, open_route=_route_gee,
                not_routable=("sentinel2",)),
)}


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def describe() -> str:
    """One line per backend, for ``--backend``'s help."""
    return "; ".join(f"{name}: {s.help}" for name, s in REGISTRY.items()) + "."


def presets() -> tuple[str, ...]:
    """The backends that are a STAC API with its own source map (``--backend NAME`` = ``--backend stac
    --stac-preset NAME``)."""
    return tuple(n for n, s in REGISTRY.items() if s.stac and s.source_map)


def route_spec(name: str) -> BackendSpec | None:
    """The backend a ``--modality-backend`` target names: a registered backend that serves routes, or any other
    source map of a STAC API (``catalogs/sources/<name>.yaml``, e.g. earth-search-c1); None if neither."""
    from ..recipes.base import source_maps

    found = REGISTRY.get(name)
    if found is not None:
        return found if found.open_route is not None else None
    return REGISTRY["stac"] if name in source_maps() else None


def route_targets() -> list[str]:
    """What ``--modality-backend MOD=`` may name."""
    from ..recipes.base import source_maps

    return sorted({n for n, s in REGISTRY.items() if s.open_route is not None and n != "stac"} | set(source_maps()))


def spec(name: str) -> BackendSpec:
    from mmearth_data.errors import MMEarthError

    try:
        return REGISTRY[name]
    except KeyError:
        raise MMEarthError(f"--backend {name!r}: choose one of {', '.join(REGISTRY)}") from None
