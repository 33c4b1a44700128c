"""``mmearth-data build``: sample -> export -> replace what was dropped -> pack, resumable, exactly the size asked.

Layout of ``--out``: ``build.yaml`` (the identity of the data and its hash, plus the run settings),
``<name>.h5`` with the three v001 JSON files, ``build_report.json`` (per biome and ecoregion: target, sampled,
dropped by reason, replaced, final) and ``work/`` (locations and the export of every round). Tiles are exported at
128 px; ``--tile-px 64`` packs their centre 64 x 64, which is how MMEarth64 relates to MMEarth.

Exactly N: a tile dropped after sampling (no usable Sentinel-2 scene, a permanent or internal failure) is replaced
by a new location from the same ecoregion, drawn from a further seeded stream of that ecoregion and never
overlapping any tile drawn before (the sampler with a :class:`~sampling.sampler.Continuation`). Replacements are
exported in further rounds until every ecoregion has its count; an ecoregion that runs out of room moves its
shortfall as the sampler's saturation policy does. Each round's locations depend only on the rounds before, so
the result is the same bytes however often the build is killed and resumed.

Modules: :mod:`.config`, :mod:`.rounds`, :mod:`.run`.
"""
from .config import BuildConfig, check_backend, format_plan, plan, size_label, write_config
from .rounds import build_report, format_report
from .run import dataset_bytes, given_outcomes, run_build

__all__ = ["BuildConfig", "check_backend", "format_plan", "plan", "size_label", "write_config", "build_report",
           "format_report", "dataset_bytes", "given_outcomes", "run_build"]
