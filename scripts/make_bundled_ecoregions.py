"""Convert the simplified RESOLVE Ecoregions 2017 shapefile into the bundled GeoParquet default.

    python scripts/make_bundled_ecoregions.py ../shared/fixtures/ecoregions/resolve_ecoregions2017_simplified/Ecoregions2017.shp \
        catalogs/ecoregions/resolve_ecoregions2017_simplified.parquet
"""
import sys

import geopandas as gpd


def main(src: str, dst: str) -> None:
    g = gpd.read_file(src)
    g = g[["ECO_ID", "ECO_NAME", "BIOME_NUM", "BIOME_NAME", "REALM", "LICENSE", "geometry"]].copy()
    g["ECO_ID"] = g["ECO_ID"].astype(int)
    g["BIOME_NUM"] = g["BIOME_NUM"].astype(int)
    g.sort_values("ECO_ID").reset_index(drop=True).to_parquet(dst, compression="zstd", index=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
