"""The pack stage: staged tiles -> a finished MMEarth v001 dataset directory.

Dask workers read one staging file each, crop, check dtypes, accumulate exact band statistics and encode every
tile's chunks (shuffle + deflate with libdeflate: a standard gzip chunk, many times faster than zlib) into a
per-partition chunk file. A single writer then appends the chunks in row order with ``write_direct_chunk``,
writes tile_info, band_stats and splits, and renames the HDF5 into place. Row order, statistics merge order and
chunk bytes depend only on the staging input, so the result is byte-identical for any number of workers; a killed
pack leaves only a hidden work directory, and a rerun reuses the partitions it had finished.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmearth_data import __version__
from mmearth_data.card import write_card
from mmearth_data.catalog import load_spec
from mmearth_data.chunks import encode_chunk
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_path, atomic_write_json
from mmearth_data.locking import running_holder
from mmearth_data.stats import BandStats
from mmearth_data.reader import open_dataset
from mmearth_data.tile_index import write_index
from mmearth_data.writer import V001Writer, stem_problem

from .scheduling import dispatch, output_lock
from .splits import spatial_splits
from .staging import CHUNK_LEVEL, TILE_DONE, PartitionStore, tile_stats
from .status import CONFIG_NAME, read_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackConfig:
    export_dir: str
    out: str
    name: str
    tile_px: int | None = None   # None: the staged size; smaller: the centre crop (64 on 128 is MMEarth64)
    level: int = CHUNK_LEVEL   # libdeflate level 1 + shuffle: smaller than v001's zlib 4; staged chunks are copied
    fractions: tuple[float, float, float] = (1.0, 0.0, 0.0)
    seed: int = 0
    block_deg: float = 1.0
    overwrite: bool = False
    subset: int | None = None   # a biome-stratified, seeded subset of this many done tiles (MMEarth100k-style)
    build_hash: str | None = None   # set by `mmearth-data build`: its build.yaml hash goes into the HDF5 attributes
    more_exports: tuple[str, ...] = ()   # later export rounds (replacement tiles), appended in this order
    keep_ids: frozenset[str] | None = None   # pack only these done tiles (build: exactly the size asked for)

    @property
    def exports(self) -> tuple[str, ...]:
        return (self.export_dir, *self.more_exports)

    @property
    def work_dir(self) -> Path:
        return Path(self.out) / f".{self.name}.pack-work"


def staged_exports(cfg: PackConfig) -> tuple[list[dict], list[tuple[str, Path]]]:
    """The export configs and their staging files as (key, path); keys are unique across export rounds and their
    order is the row order of the dataset."""
    configs, parts = [], []
    for j, d in enumerate(cfg.exports):
        c, ps = staged_parts(Path(d))
        configs.append(c)
        parts += [(p.stem if j == 0 else f"r{j:03d}-{p.stem}", p) for p in ps]
    return configs, parts


def staged_parts(export_dir: Path) -> tuple[dict, list[Path]]:
    cfg_path = Path(export_dir) / CONFIG_NAME
    if not cfg_path.is_file():
        raise MMEarthError(f"{export_dir}: not an export directory (no {CONFIG_NAME}); run mmearth-data export first")
    parts = sorted((Path(export_dir) / "staging").glob("part-*.sqlite"))
    if not parts:
        raise MMEarthError(f"{export_dir}: no staged partitions under staging/")
    return read_config(cfg_path), parts


def crop(arr: np.ndarray, tile_px: int) -> np.ndarray:
    """Centre crop of a pixel-level tile (MMEarth64 is the centre 64 x 64 of the 128 px tiles)."""
    if arr.ndim < 3 or arr.shape[-1] == tile_px:
        return arr
    off = (arr.shape[-1] - tile_px) // 2
    return arr[..., off:off + tile_px, off:off + tile_px]


def _fingerprint(path: Path, cfg: PackConfig, keep: list[str] | None) -> str:
    st = path.stat()
    key = [str(path.resolve()), st.st_size, st.st_mtime_ns, cfg.tile_px, cfg.level, __version__, keep]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def encode_partition(part: str, cfg: PackConfig, keep: list[str] | None = None, key: str | None = None) -> dict:
    """Worker task: encode the done tiles of one staging file (only ``keep`` when given) into
    ``<work>/<key>.chunks`` plus ``<key>.index.json`` (tile ids, rows, tile_info, chunk offsets and each tile's band
    statistics, merged later in row order so they do not depend on partitioning); returns a small summary. Reuses
    a finished result."""
    part_path = Path(part)
    key = key or part_path.stem
    work = cfg.work_dir
    index_path = work / f"{key}.index.json"
    chunk_path = work / f"{key}.chunks"
    fp = _fingerprint(part_path, cfg, keep)
    if index_path.is_file() and chunk_path.is_file():
        done = json.loads(index_path.read_text())
        if done.get("fingerprint") == fp:
            return {"part": key, "tiles": len(done["tiles"])}
    spec = load_spec()
    names = list(spec.datasets)
    tiles = []
    with atomic_path(chunk_path) as tmp, PartitionStore(part_path, readonly=True) as store, open(tmp, "wb") as fh:
        rows = list(store.db.execute(
            "SELECT tile_id, row, info FROM tiles WHERE status = ? ORDER BY row", (TILE_DONE,)))
        if keep is not None:
            wanted = set(keep)
            rows = [r for r in rows if r[0] in wanted]
        staged_px = _staged_px(store, rows[0][0]) if rows else None
        if staged_px == cfg.tile_px and cfg.level == CHUNK_LEVEL:
            _copy_tiles(store, rows, fh, spec, names, tiles, part_path)
        else:
            _encode_tiles(store, rows, fh, spec, names, tiles, part_path, cfg)
    result = {"fingerprint": fp, "part": key, "tiles": tiles}
    atomic_write_json(index_path, result, indent=None)
    return {"part": key, "tiles": len(tiles)}  # the index stays on disk: the client holds no tile lists


def _staged_px(store: PartitionStore, tile_id: str) -> int:
    _, shape, _ = store.chunks(tile_id)["sentinel2"]
    return int(shape[-1])


def _check(part_path: Path, tile_id: str, name: str, dtype: np.dtype, shape: tuple, spec, tile_px: int) -> None:
    ds = spec.datasets[name]
    want = ds.tile_shape(tile_px)
    if tuple(shape) != want or np.dtype(dtype) != ds.dtype:
        raise MMEarthError(f"{part_path}: tile {tile_id} {name} is {np.dtype(dtype)}{tuple(shape)}, "
                           f"expected {ds.dtype}{want}")


def _copy_tiles(store, rows, fh, spec, names, tiles, part_path) -> None:
    """Same tile size and chunk encoding as staged: copy the chunks and the tiles' own statistics."""
    for tile_id, row, info_text in rows:
        staged = store.chunks(tile_id)
        offsets = {}
        px = staged["sentinel2"][1][-1] if "sentinel2" in staged else 0
        for name in names:
            if name not in staged:
                raise MMEarthError(f"{part_path}: tile {tile_id} has no {name} array; re-run the export with --resume")
            dtype, shape, blob = staged[name]
            _check(part_path, tile_id, name, dtype, shape, spec, px)
            offsets[name] = [fh.tell(), len(blob)]
            fh.write(blob)
        stats = {k: st.to_state() for k, st in sorted(store.stats(tile_id).items())}
        tiles.append({"tile_id": tile_id, "row": row, "info": json.loads(info_text), "chunks": offsets, "stats": stats})


def _encode_tiles(store, rows, fh, spec, names, tiles, part_path, cfg: PackConfig) -> None:
    """Cropped or re-levelled: decode, crop, encode, and compute the statistics of what is written."""
    for tile_id, row, info_text in rows:
        info = json.loads(info_text)
        staged = store.arrays(tile_id)
        offsets, arrays = {}, {}
        for name in names:
            if name not in staged:
                raise MMEarthError(f"{part_path}: tile {tile_id} has no {name} array; re-run the export with --resume")
            arr = crop(staged[name], cfg.tile_px)
            _check(part_path, tile_id, name, arr.dtype, arr.shape, spec, cfg.tile_px)
            data = encode_chunk(arr, cfg.level)
            offsets[name] = [fh.tell(), len(data)]
            fh.write(data)
            arrays[name] = arr
        stats = {k: st.to_state() for k, st in sorted(tile_stats(arrays, info["S2_type"]).items())}
        tiles.append({"tile_id": tile_id, "row": row, "info": info, "chunks": offsets, "stats": stats})


def pack(cfg: PackConfig, *, scheduler: str = "auto", workers: int = 2, progress: bool = False) -> Path:
    """Pack an export (and its later rounds) into ``cfg.out``; returns the ``.h5`` path. The bytes depend only on
    the staged data and the pack's own settings, never on paths, partitioning, schedulers or worker counts."""
    if stem_problem(cfg.name):   # before anything is written: the name also names the work directory
        raise MMEarthError(f"--name {cfg.name!r}: {stem_problem(cfg.name)}")
    export_cfgs, parts = staged_exports(cfg)
    staged_px = min(int(c["config"]["tile_px"]) for c in export_cfgs)
    if cfg.tile_px is None:
        cfg = replace(cfg, tile_px=staged_px)
    if cfg.tile_px > staged_px:
        raise MMEarthError(f"--tile-px {cfg.tile_px}: the export staged {staged_px} px tiles; crop only shrinks")
    if cfg.tile_px < 8 or cfg.tile_px % 8:
        raise MMEarthError(f"--tile-px {cfg.tile_px}: use a multiple of 8 up to the staged {staged_px} px")
    if not 1 <= cfg.level <= 9:
        raise MMEarthError(f"--level {cfg.level}: gzip levels are 1..9")
    for d in cfg.exports:
        holder = running_holder(d)
        if holder is not None:   # its staging files change under the pack: what it packs would be a moment's
            raise MMEarthError(f"{d}: in use by {holder}; pack it once that run has finished")
    out = Path(cfg.out)
    existing = out / f"{cfg.name}.h5"
    if existing.exists() and not cfg.overwrite:
        raise MMEarthError(f"{existing} already exists: choose another --out/--name, or --overwrite")
    with output_lock(out, "pack"):
        return _pack(cfg, export_cfgs, parts, scheduler, workers, progress)


def _pack(cfg: PackConfig, export_cfgs: list[dict], parts: list[tuple[str, Path]], scheduler: str, workers: int,
          progress: bool) -> Path:
    out = Path(cfg.out)
    if cfg.subset:
        keep = choose_subset(parts, cfg.subset, cfg.seed)
    elif cfg.keep_ids is not None:
        keep = {k: [t for t in done_tile_ids(p) if t in cfg.keep_ids] for k, p in parts}
    else:
        keep = {k: None for k, _ in parts}
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    summaries = _dispatch([(str(p), keep[k], k) for k, p in parts], cfg, scheduler, workers, progress)
    if not sum(r["tiles"] for r in summaries):
        raise MMEarthError(f"{cfg.export_dir}: no tile is done yet (mmearth-data status {cfg.export_dir})")
    names = [k for k, _ in parts]   # row order: export rounds in order, partitions in order within each
    lon, lat, biome = [], [], []
    unlabelled = 0
    for name in names:  # one partition index in memory at a time
        for t in _index(cfg, name)["tiles"]:
            lon.append(t["info"]["lon"])
            lat.append(t["info"]["lat"])
            biome.append(t["info"]["biome"])
            unlabelled += bool(t["info"].get("unlabelled"))
    splits = spatial_splits(lon, lat, biome, cfg.fractions, cfg.seed, cfg.block_deg)
    export_hash = exports_hash(export_cfgs, summaries)
    identity = {"export": export_hash, "tile_px": cfg.tile_px, "level": cfg.level, "subset": cfg.subset,
                "splits": list(cfg.fractions), "seed": cfg.seed, "block_deg": cfg.block_deg,
                "keep": None if cfg.keep_ids is None else hashlib.sha256(
                    "\n".join(sorted(cfg.keep_ids)).encode()).hexdigest()[:16]}
    attrs = {"config_hash": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16],
             "export_config_hash": export_hash, "backend": export_cfgs[0]["identity"]["backend"]}
    if cfg.build_hash:
        attrs["build_config_hash"] = cfg.build_hash
    if unlabelled:   # given locations kept with --allow-unlabelled: validate warns instead of failing
        attrs["unlabelled_tiles"] = unlabelled
    if attrs["backend"] == "synthetic":
        attrs.update(synthetic=True, synthetic_note="SYNTHETIC sources: plausible values, not real data")
    for c in export_cfgs:   # how this backend's data differ from MMEarth's (e.g. no L1C on the endpoint)
        attrs.update(c.get("notes") or {})
    writer = V001Writer(out, cfg.name, tile_px=cfg.tile_px, compression_level=cfg.level, shuffle=True, attrs=attrs,
                        overwrite=cfg.overwrite, dataset_attrs=dataset_sources(export_cfgs[0].get("sources") or {}))
    try:
        _append_all(writer, cfg, names)
        h5 = writer.close(splits)
    except BaseException:
        writer.abort()
        raise
    write_index(open_dataset(h5))   # <stem>_tiles.parquet: the GeoParquet index of the tiles
    write_card(open_dataset(h5), sources=export_cfgs[0].get("sources"))   # README.md: the dataset card
    shutil.rmtree(cfg.work_dir, ignore_errors=True)
    return h5


def dataset_sources(plan: dict[str, dict]) -> dict[str, dict]:
    """Per v001 dataset, the ``source`` attribute of what was actually read (the export's per-modality plan);
    modalities read from the sources MMEarth used keep the catalog's text."""
    from .recipes import BY_NAME
    from .recipes.base import load_source_map

    out: dict[str, dict] = {}
    for mod, p in plan.items():
        recipe = BY_NAME.get(mod)
        if recipe is None:
            continue
        if "missing" in p:
            text = f"none: {p['missing']}; the dataset is all no-data"
        elif p.get("describe"):
            text = p["describe"]
        else:
            continue
        for o in recipe.outputs:
            out.setdefault(o, {})["source"] = text
    s2 = plan.get("sentinel2", {})
    if "missing" not in s2 and s2.get("describe"):
        derived = [s for s in load_source_map(s2.get("map", "local")).sources.values()
                   if s.key.startswith("sentinel2") and s.derive.get("QA60") == "SCL"]
        if derived:
            out["sentinel2_cloudmask"] = {"source": "derived from SCL (8, 9 -> bit 10 opaque; 10 -> bit 11 cirrus): "
                                                    "the endpoint has no QA60", "derived": "SCL"}
        out["sentinel2_cloudprod"] = {"source": "cloud probability (MSK_CLDPRB / CLD_20m) where the endpoint "
                                                "serves it, else no-data"}
    return out


def exports_hash(export_cfgs: list[dict], summaries: list[dict]) -> str:
    """The hash of the exports whose tiles the dataset holds: a replacement round that contributed no tile (say,
    one drawn for a tile that then succeeded on retry) leaves the dataset's bytes as they were."""
    def round_of(key: str) -> int:   # keys are part-NNNNN (first export) or rJJJ-part-NNNNN
        return int(key[1:4]) if key.startswith("r") else 0

    used = sorted({round_of(r["part"]) for r in summaries if r["tiles"]}) or [0]
    hashes = [export_cfgs[j]["config_hash"] for j in used]
    return hashes[0] if len(hashes) == 1 else hashlib.sha256(" ".join(hashes).encode()).hexdigest()[:16]


def done_tile_ids(part: Path) -> list[str]:
    with PartitionStore(part, readonly=True) as store:
        return [t for (t,) in store.db.execute("SELECT tile_id FROM tiles WHERE status = ? ORDER BY row", (TILE_DONE,))]


def choose_subset(parts: list[tuple[str, Path]], size: int, seed: int) -> dict[str, list[str]]:
    """``size`` done tiles, split among biomes in proportion to the build (largest remainder), drawn at random
    (seeded) within each biome; returned per partition."""
    from sampling.quotas import largest_remainder

    tiles = []
    for key, p in parts:
        with PartitionStore(p, readonly=True) as store:
            for tile_id, info in store.db.execute("SELECT tile_id, info FROM tiles WHERE status = ? ORDER BY row",
                                                  (TILE_DONE,)):
                tiles.append((key, tile_id, int(json.loads(info)["biome"])))
    if size > len(tiles):
        raise MMEarthError(f"--subset {size}: the export has only {len(tiles)} finished tiles")
    biomes = np.array([t[2] for t in tiles])
    present = np.unique(biomes)
    quota = largest_remainder(size, np.array([(biomes == b).sum() for b in present]))
    rng = np.random.default_rng([seed, 100])
    keep: dict[str, list[str]] = {k: [] for k, _ in parts}
    for b, q in zip(present, quota):
        idx = np.flatnonzero(biomes == b)
        for i in sorted(rng.choice(idx, size=int(q), replace=False)):
            keep[tiles[i][0]].append(tiles[i][1])
    return keep


def _index(cfg: PackConfig, part: str) -> dict:
    return json.loads((cfg.work_dir / f"{part}.index.json").read_text())


def _staged_tiles(cfg: PackConfig, names: list[str]):
    """Every packed tile in row order with its chunks, one partition index and chunk file open at a time."""
    for name in names:
        result = _index(cfg, name)
        with open(cfg.work_dir / f"{result['part']}.chunks", "rb") as fh:
            for t in result["tiles"]:
                chunks = {}
                for ds, (off, length) in t["chunks"].items():
                    fh.seek(off)
                    chunks[ds] = fh.read(length)
                yield t, chunks


def _append_all(writer: V001Writer, cfg: PackConfig, names: list[str], batch: int = 256) -> None:
    """Append in fixed batches of rows, whatever the partitions: the HDF5 file's internal layout follows the
    sequence of resizes and writes, so it must not depend on how the export was cut."""
    datasets = list(writer.spec.datasets)

    def flush(group: list) -> None:
        writer.append_chunks({ds: [c[ds] for _, c in group] for ds in datasets},
                             [(t["tile_id"], t["info"]) for t, _ in group])
        for t, _ in group:   # tile by tile in row order: the same floats for any partitioning
            for key, state in t["stats"].items():
                st = BandStats.from_state(state)
                writer.stats.setdefault(key, BandStats(st.channels)).merge(st)

    group: list = []
    for item in _staged_tiles(cfg, names):
        group.append(item)
        if len(group) == batch:
            flush(group)
            group = []
    if group:
        flush(group)


def _dispatch(parts: list[tuple[str, list[str] | None, str]], cfg: PackConfig, scheduler: str, workers: int,
              progress: bool) -> list[dict]:
    from tqdm import tqdm

    if scheduler == "auto":  # encoding is CPU-bound: one process per core
        scheduler = "processes" if workers > 1 and len(parts) > 1 else "threads"
    with tqdm(total=len(parts), desc="pack", unit="partition", disable=not progress) as bar:
        def tick(result) -> None:
            if isinstance(result, dict) and "tiles" in result:
                bar.update(1)

        return dispatch(encode_partition, [(p, cfg, k, key) for p, k, key in parts], scheduler, workers, on_result=tick)
