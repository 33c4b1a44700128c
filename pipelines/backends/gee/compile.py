"""A recipe's plan (pipelines/recipes/plan.py) compiled into its part of a tile's merged image: a
:class:`~pipelines.recipes.plan.Composite` into one server-side composite of its source over the tile, a
:class:`~pipelines.recipes.plan.Reads` into its items' bands loaded by id. The pixels that come back get the source
map's conversions, then the recipe's own finish: no modality is known here."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mmearth_data.errors import MMEarthError

from ...faults import NoCoverage
from ...recipes import BY_NAME
from ...recipes.base import Source, TileContext
from ...recipes.plan import Composite, Reads
from . import expressions as ex
from .pixels import Compiled
from .query import ms
from .searches import END_OF_TIME_MS
from .templates import Part


class EmptyScene(NoCoverage):
    """The items a plan read are no-data over the tile (its finish said so): the recipe tries its next candidate,
    as the pixel executor does."""


def band_asset(src: Source, band: str) -> str:
    """The asset a v001 band of ``src`` is read from: the source map's ``<band>_collection`` (the ETH canopy's SD is
    an Image of its own), else its collection."""
    return src.options.get(f"{band}_collection", src.collection)


def assets(src: Source) -> list[str]:
    """Every asset ``src`` reads, its collection first."""
    return list(dict.fromkeys([src.collection, *(band_asset(src, b) for b in src.bands)]))


def compile_recipe(ctx: TileContext, recipe: str) -> Compiled:
    """The v001 bands of ``recipe`` as an image with explicit no-data, and how to turn them into its result.

    Raises:
        MMEarthError: the recipe gives no plan of pixels.
    """
    found = BY_NAME.get(recipe)
    if found is None or found.plan is None:
        compiled = ", ".join(r.name for r in BY_NAME.values() if r.plan is not None)
        raise MMEarthError(f"the Earth Engine executor does not compile {recipe} (it compiles the plans of "
                           f"{compiled}, sentinel2's scenes and era5)")
    return compile_plan(ctx, found.plan(ctx))


def compile_plan(ctx: TileContext, plan: Composite | Reads) -> Compiled:
    """A plan's part of the merged image."""
    return _composite(ctx, plan) if isinstance(plan, Composite) else _reads(ctx, plan)


def _region(ctx: TileContext) -> list[float]:
    """The tile's lon/lat bounds: the coordinates of the region its composites are filtered by."""
    return [float(v) for v in ctx.grid.bbox_lonlat()]


def _converted(src: Source, item, bands: Iterable[str], planes: list[np.ndarray], harmonize: bool = False
               ) -> np.ndarray:
    """Planes of ``bands`` in v001 units (the source map's conversions, as a pixel read applies them)."""
    bands = list(bands)
    return src.apply(item, np.stack(planes), spectral=harmonize, keys=[src.band(b) for b in bands])


def _composite(ctx: TileContext, plan: Composite) -> Compiled:
    """The plan's source over the tile reduced server-side: an Image asset as it is, a collection's images over
    the region (and the search's dates) by the plan's reducer. Nothing is searched, so the ids recorded are the
    assets', and a plan that says so (``void_is_uncovered``) is NoCoverage where its first band is empty."""
    search, src = plan.search, ctx.source(plan.search.source)
    if search.filters or src.select or search.contains is not None or search.nearest is not None:
        raise MMEarthError(f"the Earth Engine executor composites {plan.recipe} by date and region only (its search "
                           "has filters, a footprint or a time to rank by)")
    groups: dict[str, list[str]] = {}
    for b in plan.bands:
        groups.setdefault(band_asset(src, b), []).append(b)
    layers = tuple((asset, tuple(src.band(b) for b in bands), tuple(f"{plan.recipe}_{b}" for b in bands))
                   for asset, bands in groups.items())
    derived = tuple((d, f"{plan.recipe}_{d}") for d in plan.derive)
    dated = search.start is not None or search.end is not None
    slots = {"region": _region(ctx)}
    if dated:
        slots.update(start=ms(search.start) or 0, end=END_OF_TIME_MS if search.end is None else ms(search.end) + 1)
    kind = src.options.get("kind", "collection")
    part = Part(ex.composite, (layers, kind, dated, plan.reducer, derived, plan.resampling), slots)
    names = [f"{plan.recipe}_{b}" for b in (*plan.bands, *plan.derive)]

    def finish(px):
        values = np.stack([px[n] for n in names])
        read = len(plan.bands)
        values[:read] = _converted(src, None, plan.bands, list(values[:read]))
        if plan.void_is_uncovered and not np.isfinite(values[0]).any():   # not searched: the pixels tell
            raise NoCoverage(plan.empty)
        return plan.finish(values, list(groups), None)
    return Compiled(part, names, finish)


def _reads(ctx: TileContext, plan: Reads) -> Compiled:
    """The plan's items loaded by id, each read's bands with its resampling (consecutive reads of one item with the
    same resampling in one selection)."""
    images: dict[str, list[list]] = {}   # image id -> groups [source bands, names, resampling]
    for r in plan.reads:
        src = ctx.source(r.source)
        groups = images.setdefault(f"{src.collection}/{r.item.id}", [])
        names = [f"{r.label}_{b}" for b in r.bands]
        if groups and groups[-1][2] == r.resampling:
            groups[-1][0] += [src.band(b) for b in r.bands]
            groups[-1][1] += names
        else:
            groups.append([[src.band(b) for b in r.bands], names, r.resampling])
    layout = tuple((str(k), tuple((tuple(b), tuple(n), rs) for b, n, rs in groups))
                   for k, groups in enumerate(images.values()))
    part = Part(ex.scenes, (layout,), {str(k): image for k, image in enumerate(images)}) if images else None
    names = [[f"{r.label}_{b}" for b in r.bands] for r in plan.reads]

    def finish(px):
        values = [_converted(ctx.source(r.source), r.item, r.bands, [px[n] for n in read], r.harmonize)
                  for r, read in zip(plan.reads, names)]
        result = plan.finish(values)
        if result is None:
            raise EmptyScene(", ".join(dict.fromkeys(r.item.id for r in plan.reads)))
        return result
    return Compiled(part, [n for read in names for n in read], finish)
