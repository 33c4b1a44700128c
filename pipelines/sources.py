"""Which backend serves which modality: ``--backend``, its STAC options and ``--modality-backend``, resolved once.

Shared by ``export`` and ``build`` (options, checks, ``--dry-run``'s per-modality table) and by each partition
task (the backends themselves, cached per process). The science stays in the recipes; what differs per endpoint
is the source map ``catalogs/sources/<preset>.yaml``.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from mmearth_data.errors import MMEarthError, one_line

from .backends.gee.options import GeeOptions
from .backends.registry import BackendSpec, presets, route_spec, route_targets, spec
from .faults import RetryPolicy
from .recipes import BY_NAME, RECIPES
from .recipes.base import Source, SourceMap, load_source_map, source_maps
from .settings import IF_SET, identity_fields, run_setting, setting

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Route:
    """One ``--modality-backend MOD=BACKEND[:ARG]``."""

    modality: str
    backend: str
    arg: str | None
    spec: BackendSpec = field(compare=False)   # the registered backend it goes to (resolved once, by parse)

    @classmethod
    def parse(cls, text: str) -> "Route":
        mod, sep, rest = text.partition("=")
        names = [r.name for r in RECIPES if r.sources]
        if not sep or not rest:
            raise MMEarthError(f"--modality-backend {text!r}: expected MOD=BACKEND[:ARG], e.g. "
                               "canopy_height_eth=local:/data/eth/catalog.json")
        if mod not in names:
            raise MMEarthError(f"--modality-backend {text!r}: unknown modality {mod!r} (one of {', '.join(names)})")
        backend, _, arg = rest.partition(":")
        target = route_spec(backend)
        if target is None:
            raise MMEarthError(f"--modality-backend {text!r}: backend {backend!r} is not one of "
                               f"{', '.join(route_targets())}")
        if mod in target.not_routable:
            raise MMEarthError(f"--modality-backend {text!r}: Sentinel-2 fixes every tile's grid and date; "
                               f"for Sentinel-2 from {backend} use --backend {backend}")
        if target.route_arg == "required" and not arg:
            raise MMEarthError(f"--modality-backend {text!r}: {backend} needs a catalog, e.g. "
                               f"{mod}={backend}:/path/catalog.json")
        return cls(mod, backend, arg or None, target)


@dataclass(frozen=True)
class SourceChoice:
    """Where a run's pixels come from: ``--backend`` and its options, ``--modality-backend`` routes, and the
    Earth Engine options; each field says whether it defines the data (:mod:`pipelines.settings`)."""

    backend: str = "synthetic"
    catalog: str | None = None
    stac_url: str | None = setting(None, identity=IF_SET)
    stac_preset: str | None = setting(None, identity=IF_SET)
    modality_backends: tuple[str, ...] = setting((), identity=IF_SET)
    sas_token_url: str | None = run_setting(None)   # the token endpoint does not change the data
    gee: GeeOptions = field(default_factory=GeeOptions, metadata={"prefix": "gee_"})
    allow_outside_catalog: bool = run_setting(False)   # where a local catalog's files may be, not what they hold

    # -- options -----------------------------------------------------------------------------------------------
    @property
    def spec(self):
        """The registered backend (:mod:`pipelines.backends.registry`)."""
        return spec(self.backend)

    @property
    def stac(self) -> bool:
        return self.spec.stac

    @property
    def remote(self) -> bool:
        """Whether a service reads for this run (a STAC API or Earth Engine): the preflight checks it first."""
        return self.spec.service or any(r.spec.service for r in self.routes())

    def served_remotely(self) -> set[str]:
        """The modalities a service (a STAC API or Earth Engine) serves in this run (those it has a source for)."""
        routed = {r.modality: r for r in self.routes()}
        main = self.spec.service
        plan = self.plan()
        return {r.name for r in RECIPES if r.sources and "missing" not in plan[r.name]
                and (routed[r.name].spec.service if r.name in routed else main)}

    @property
    def uses_gee(self) -> bool:
        """Earth Engine serves some modality (the main backend or a route)."""
        return self.spec.compiles or any(r.spec.compiles for r in self.routes())

    @property
    def preset(self) -> str:
        """The source map read: ``--stac-preset`` where the backend takes one (with local: a static mirror of
        that endpoint's items), else the backend's own."""
        return (self.spec.presets and self.stac_preset) or self.spec.source_map

    def source_map(self) -> SourceMap:
        return load_source_map(self.preset)

    @property
    def url(self) -> str | None:
        if not self.stac:
            return None
        return self.stac_url or self.source_map().endpoint.get("url")

    def routes(self) -> list[Route]:
        return [Route.parse(t) for t in self.modality_backends]

    def check(self) -> None:
        """Option combinations, before anything is opened or written; one line per problem."""
        spec = self.spec   # an unknown backend names the registered ones
        if spec.needs_catalog and not self.catalog:
            raise MMEarthError(f"--backend {self.backend} needs --catalog PATH_OR_URL (a static STAC catalog)")
        if not spec.needs_catalog and self.catalog:
            raise MMEarthError(f"--catalog is for --backend local, not {self.backend}"
                               + (" (the synthetic backend writes its own sources under --out)"
                                  if spec.synthetic else " (use --stac-url for a STAC API)"))
        if not spec.stac and (self.stac_url or self.sas_token_url):
            raise MMEarthError(f"--stac-url/--sas-token-url are for --backend stac, {', '.join(presets())}; "
                               f"not {self.backend}")
        if not spec.presets and self.stac_preset:
            raise MMEarthError("--stac-preset is for --backend stac or local (a static mirror of an endpoint's "
                               f"items), not {self.backend}")
        if spec.needs_url and not self.stac_url:
            raise MMEarthError(f"--backend {self.backend} needs --stac-url URL (a STAC API root)")
        if spec.needs_url and not self.stac_preset:
            raise MMEarthError(f"--backend stac needs --stac-preset NAME, the source map of that endpoint "
                               f"(one of {', '.join(source_maps())}, in catalogs/sources/)")
        if self.stac or self.stac_preset:
            self.source_map()    # a missing preset names the shipped ones
        if not spec.routes and self.modality_backends:
            raise MMEarthError(f"--modality-backend: the {self.backend} backend generates every modality; use it "
                               "with local or a STAC backend")
        seen = set()
        for r in self.routes():
            if r.modality in seen:
                raise MMEarthError(f"--modality-backend: {r.modality} is given twice")
            seen.add(r.modality)
        if self.uses_gee:
            from .backends.gee.session import check

            check(self.gee.project, self.gee.key_file, self.gee.url)   # credentials before anything is written
        elif self.gee.given:
            raise MMEarthError("--gee-* options are for --backend gee or --modality-backend MOD=gee")

    def probe(self, policy: RetryPolicy | None = None, crawl_policy: RetryPolicy | None = None) -> None:
        """Reachability of every catalog and API this run reads (one line naming the one that fails); a static
        catalog is walked whole, each document read with ``crawl_policy`` (the run's: it is the run's first read)."""
        from .backends.local import StaticCatalog

        def crawl(catalog: str) -> None:   # every document and href checked before anything is written
            StaticCatalog.probe(catalog, policy)
            StaticCatalog([catalog], policy=crawl_policy, allow_outside=self.allow_outside_catalog)

        if self.spec.needs_catalog:
            crawl(self.catalog)
        if self.stac:
            from .backends.stac import StacBackend

            StacBackend.probe(self.url, policy)
            routed = {r.modality for r in self.routes()}
            self._warn_accounts(self.preset, self.url, {k for recipe in RECIPES if recipe.name not in routed
                                                       for k in recipe.sources}, policy)
        for r in self.routes():   # Earth Engine: credentials checked by check(); its session starts with a partition
            if r.spec.needs_catalog:
                crawl(r.arg)
            elif r.spec.stac:
                from .backends.stac import StacBackend

                url = r.arg or load_source_map(r.backend).endpoint["url"]
                StacBackend.probe(url, policy)
                self._warn_accounts(r.backend, url, set(BY_NAME[r.modality].sources), policy)

    def _warn_accounts(self, preset: str, url: str, keys: set[str], policy: RetryPolicy | None) -> None:
        """One line at start for each collection of ``keys`` this run signs that the token endpoint refuses (it
        needs a Planetary Computer account); its modality is then recorded as no_source, tile by tile (the run's
        signer keeps the refusal: :func:`signer`). A mirror (another URL, no --sas-token-url) is not asked: only
        Azure blob hrefs are signed, and a mirror's are its own."""
        from .faults import SourceError

        smap = load_source_map(preset)
        signer_cfg = smap.endpoint.get("signer")
        if not signer_cfg or not (self.sas_token_url or url.rstrip("/") == str(smap.endpoint.get("url")).rstrip("/")):
            return
        endpoint = self.sas_token_url or signer_cfg["token_url"]
        collections = tuple(sorted({s.collection for k, s in smap.sources.items() if k in keys}))
        sas = signer(endpoint, bool(self.sas_token_url), policy or RetryPolicy(attempts=2))
        key = (endpoint, collections, sas.subscription_key)
        if key in _ACCOUNTS_CHECKED:   # once per process (the preflight probes again)
            return
        try:
            refused = sas.needs_account(collections)
        except SourceError as e:
            raise MMEarthError(f"SAS token endpoint {endpoint}: no token ({one_line(e, 200)}); check the "
                               "network, or name another with --sas-token-url") from None
        _ACCOUNTS_CHECKED.add(key)
        for collection, why in refused.items():
            log.warning("%s", why)

    def identity(self) -> dict:
        """What of the source defines the data: URLs without their queries (a rotated signature is the same data)."""
        from .faults import redact_all

        return redact_all(self._identity())

    def _identity(self) -> dict:
        d = identity_fields(self)
        if self.stac:   # the endpoint a preset stands for is named, so that two spellings of one source agree
            d.update(stac_url=self.url, stac_preset=self.preset)
        if self.modality_backends:
            d["modality_backends"] = sorted(self.modality_backends)
        return d

    # -- what is read from where ------------------------------------------------------------------------------
    def plan(self) -> dict[str, dict]:
        """Per modality: the backend and collection(s) it reads, or that it has no source (for --dry-run, the
        start-of-run report and the dataset attributes)."""
        main = self.source_map()
        routed = {r.modality: r for r in self.routes()}
        out: dict[str, dict] = {}
        for recipe in RECIPES:
            keys = recipe.sources
            if not keys:
                out[recipe.name] = {"backend": "labels", "collections": ["RESOLVE Ecoregions 2017 (bundled)"],
                                    "describe": ""}
                continue
            r = routed.get(recipe.name)
            smap = load_source_map(r.spec.route_map(r)) if r else main
            name = f"{r.backend}:{r.arg}" if r and r.arg else (r.backend if r else self.backend)
            found = [smap.sources[k] for k in keys if k in smap.sources]
            entry: dict[str, Any] = {"backend": name, "map": smap.name, "collections": [s.collection for s in found],
                                     "describe": "; ".join(s.describe for s in found if s.describe)}
            if not found:
                entry["missing"] = f"no source on {name}"
            elif len(found) < len(keys):
                entry["absent"] = [k for k in keys if k not in smap.sources]
            out[recipe.name] = entry
        return out

    def notes(self) -> dict[str, Any]:
        """File-level attributes that say how this backend's data differ from MMEarth's Earth Engine build."""
        plan = self.plan()
        notes: dict[str, Any] = {}
        if "sentinel2_l1c" in plan["sentinel2"].get("absent", []):
            notes["s2_l1c_fallback"] = ("this endpoint has no Sentinel-2 L1C: tiles whose coin flip chose L1C use "
                                        "L2A (tile_info S2_level_drawn = l1c)")
        return notes


_BACKENDS: dict[tuple, Any] = {}
_ACCOUNTS_CHECKED: set[tuple] = set()   # (token endpoint, collections) whose tokens were asked at start
_LOCK = threading.RLock()   # re-entrant: a backend made under it makes its signer the same way


def _cached(key: tuple, make):
    with _LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = make()
        return _BACKENDS[key]


def signer(token_url: str, every_href: bool, policy: RetryPolicy, timeout_s: float = 20.0):
    """One SAS signer per (token endpoint, signing rule, subscription key) and process: the check at start and the
    reads share its tokens and refusals."""
    import os

    from .backends.signing import SUBSCRIPTION_KEY, SasSigner

    return _cached(("signer", token_url, every_href, os.environ.get(SUBSCRIPTION_KEY)),
                   lambda: SasSigner(token_url, policy=policy, timeout_s=timeout_s, every_href=every_href))


def stac_backend(preset: str, url: str | None, token_url: str | None, timeout_s: float, policy: RetryPolicy):
    """One StacBackend per (endpoint, preset) and process: its search cache and tokens are shared by partitions."""
    from .backends.stac import StacBackend

    smap = load_source_map(preset)
    url = url or smap.endpoint["url"]
    signer_cfg = smap.endpoint.get("signer")

    def make():
        sas = signer(token_url or signer_cfg["token_url"], bool(token_url), policy, timeout_s) if signer_cfg else None
        return StacBackend(url, signer=sas, filter_lang=smap.endpoint.get("filter_lang", "cql2-json"),
                           cell_deg=float(smap.endpoint.get("search_cell_deg", 0.5)), timeout_s=timeout_s,
                           policy=policy, together=tuple(
                               smap.sources[k].collection for k in smap.endpoint.get("search_together", [])
                               if k in smap.sources), s3_public=bool(smap.endpoint.get("s3_public")),
                           assets=sorted({a for s in smap.sources.values() for a in s.bands.values()}),
                           fields=bool(smap.endpoint.get("fields")))

    return _cached(("stac", preset, url, token_url, timeout_s, policy.attempts), make)


def local_backend(catalog: str, timeout_s: float, policy: RetryPolicy, allow_outside: bool = False):
    from .backends.local import LocalBackend

    return _cached(("local", catalog, timeout_s, policy.attempts, allow_outside),
                   lambda: LocalBackend(catalog, timeout_s=timeout_s, policy=policy, allow_outside=allow_outside))


def gee_executor(choice: SourceChoice, policy: RetryPolicy):
    """One Earth Engine executor per process: its limiter is the process's share of the project's quota."""
    from .backends.gee.executor import GeeExecutor

    g = choice.gee
    return _cached(("gee", g, policy.attempts),
                   lambda: GeeExecutor(load_source_map("gee").sources, g.project, key_file=g.key_file, url=g.url,
                                       high_volume=g.high_volume, concurrency=g.concurrency, share=g.processes,
                                       timeout_s=g.timeout_s, policy=policy))


def routes_for(choice: SourceChoice, timeout_s: float, policy: RetryPolicy) -> dict[str, tuple[Any, Source]]:
    """Source key -> (backend, Source) for every ``--modality-backend``, and for every source of ``--backend gee``
    (each recipe then goes through the Earth Engine executor)."""
    out: dict[str, tuple[Any, Source]] = {}
    if choice.spec.compiles:   # every source goes through the executor (Earth Engine)
        executor = gee_executor(choice, policy)
        out.update({k: (executor, src) for k, src in load_source_map("gee").sources.items()})
    for r in choice.routes():
        backend, smap = r.spec.open_route(r, choice, timeout_s, policy), load_source_map(r.spec.route_map(r))
        for key in BY_NAME[r.modality].sources:
            if key in smap.sources:
                out[key] = (backend, smap.sources[key])
    return out


def format_plan(plan: dict[str, dict]) -> list[str]:
    lines = []
    for mod, p in plan.items():
        if "missing" in p:
            lines.append(f"  {mod:<18} {p['missing']}: written as no-data (BANDS null, tile_info missing); "
                         f"name a source with --modality-backend {mod}=BACKEND[:ARG]")
        else:
            extra = f" (no {', '.join(p['absent'])} here)" if p.get("absent") else ""
            lines.append(f"  {mod:<18} {p['backend']}: {', '.join(p['collections'])}{extra}")
    return lines
