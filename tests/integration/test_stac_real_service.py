"""The STAC backend against pgstac made to answer as Planetary Computer and Earth Search really do (issue 26): the
proxy in front of it drops the ``next`` link of full pages (PC) or the CQL2 filter (Earth Search). Each test failed
on the code before."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from servers.proxy import FaultProxy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CELL = (27.0, -9.0, 27.5, -8.5)   # one 0.5 degree search cell


def items(n: int, collection: str = "paging-test") -> list[dict]:
    box = {"type": "Polygon", "coordinates": [[[27, -9], [27.5, -9], [27.5, -8.5], [27, -8.5], [27, -9]]]}
    t0 = dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc)
    return [{"type": "Feature", "stac_version": "1.0.0", "id": f"S1A_{k:05d}", "collection": collection,
             "geometry": box, "bbox": list(CELL), "links": [],
             "properties": {"datetime": (t0 + dt.timedelta(hours=12 * k)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "eo:cloud_cover": float(k % 20)},
             "assets": {}} for k in range(n)]


@pytest.fixture(scope="module")
def api(pgstac):
    pgstac.clear()
    pgstac.load(items(600) + items(30, "cloudy-test"))
    with FaultProxy(pgstac.url) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def plain(api):
    yield
    api.strip_next = api.no_filter = False
    api.bodies.clear()


def backend(api, **kw):
    from pipelines.backends.stac import StacBackend

    return StacBackend(api.url, page_limit=250, **kw)


def test_a_full_page_without_a_next_link_is_paged_on_by_id(api):
    """Planetary Computer may answer a full page without ``next`` (microsoft/planetary-computer-apis#274): 600
    matches must come back as 600, never silently 250."""
    api.strip_next = True
    t0, t1 = dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    found = backend(api).search("paging-test", (27.1, -8.9, 27.4, -8.6), t0, t1)   # one search cell
    assert len(found) == 600 and len({it.id for it in found}) == 600
    assert [it.id for it in found] == sorted(it.id for it in found)
    keyset = [json.loads(b) for b in api.bodies if b"paging-test" in b]
    assert len(keyset) == 3 and all("filter" in b for b in keyset[1:])   # ids after the last of each full page


def test_an_api_that_cannot_be_paged_by_id_fails_instead_of_cutting(api):
    from pipelines.faults import SourceError

    api.strip_next = True
    b = backend(api)
    b.sortable = False
    with pytest.raises(SourceError, match="without a link to the next page"):
        b.search("paging-test", CELL, None, None)


def test_earth_search_is_asked_with_query_not_an_ignored_filter(api):
    """Earth Search conforms to ``query`` and ignores CQL2 ``filter``: the backend asks with ``query`` (the source
    map says so, and an API that conforms to ``query`` and not ``filter`` is asked so anyway), so only the
    matching items travel."""
    from pipelines.recipes.base import load_source_map

    api.no_filter = True
    b = backend(api, filter_lang=load_source_map("earth-search").endpoint["filter_lang"])
    found = b.search("cloudy-test", CELL, None, None, {"eo:cloud_cover": ("<", 5.0)})
    assert sorted(it.id for it in found) == sorted(f"S1A_{k:05d}" for k in range(30) if k % 20 < 5)
    bodies = [json.loads(b) for b in api.bodies if b"cloudy-test" in b]
    assert bodies and all("query" in b and "filter" not in b for b in bodies)
    assert backend(api).filter_lang == "query"   # from the conformance alone


def earth_search_dem_item() -> dict:
    """The real Earth Search ``cop-dem-glo-30`` item recorded in pystac-client's cassette (its asset an s3:// href
    in the public bucket copernicus-dem-30m)."""
    import yaml

    from conftest import FIXTURES

    cassette = FIXTURES / "stac/pystac-client_cassettes/test_cli/TestCLISearch.test_save[inprocess].yaml"
    for exchange in yaml.safe_load(cassette.read_text())["interactions"]:
        body = exchange["response"]["body"].get("string", "")
        if '"features"' in body and "cop-dem-glo-30" in body:
            return json.loads(body)["features"][0]
    raise AssertionError("no cop-dem-glo-30 item in the cassette")


def test_earth_search_dem_in_a_public_s3_bucket_is_read_without_credentials(api, pgstac, tmp_path, monkeypatch):
    """Earth Search's cop-dem-glo-30 assets are s3:// hrefs in a public bucket: GDAL's /vsis3/ would ask for AWS
    credentials (and the read fail as permanent); they are read anonymously, here from a real S3-compatible server
    on loopback named by GDAL's AWS_S3_ENDPOINT."""
    import io

    import numpy as np
    import rasterio
    from affine import Affine

    from pipelines.grid import TileGrid
    from servers.s3 import PublicS3

    item = earth_search_dem_item()
    assert item["assets"]["data"]["href"].startswith("s3://copernicus-dem-30m/")
    h, w = item["properties"]["proj:shape"]
    t = item["properties"]["proj:transform"]
    elevation = (2000 + np.arange(h, dtype=np.float32)[:, None] + np.zeros((1, w), np.float32))[None]
    buf = io.BytesIO()
    with rasterio.open(buf, "w", driver="COG", width=w, height=h, count=1, dtype="float32", crs="EPSG:4326",
                       transform=Affine(*t[:6])) as dst:
        dst.write(elevation)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with PublicS3() as s3:
        s3.put(item["assets"]["data"]["href"], buf.getvalue())
        monkeypatch.setenv("AWS_S3_ENDPOINT", s3.endpoint)
        monkeypatch.setenv("AWS_HTTPS", "NO")
        pgstac.load([item])
        b = backend(api, s3_public=False)   # the item itself says storage:requester_pays: false
        lon, lat = item["properties"]["proj:centroid"]["lon"], item["properties"]["proj:centroid"]["lat"]
        found = b.search("cop-dem-glo-30", (lon - 0.01, lat - 0.01, lon + 0.01, lat + 0.01), None, None)
        assert [it.id for it in found] == [item["id"]]
        grid = TileGrid.centred(lon, lat, 3031, 32)   # Antarctic polar stereographic: the tile at 89.5 S
        values = b.read(found[0], ["data"], grid, "bilinear")
    assert np.isfinite(values).all() and 2000 <= values.min() <= values.max() <= 2000 + h


def test_the_search_cache_is_bounded_in_items(api):
    """An item is ~40-70 KiB of metadata on the real services: the cache is bounded by items, not only searches
    (the latest search is kept whatever its size)."""
    b = backend(api, cache_items=500)
    b.search("paging-test", (27.1, -8.9, 27.4, -8.6), None, None)     # 600 items
    assert b._cached_items == 600
    b.search("cloudy-test", (27.1, -8.9, 27.4, -8.6), None, None)     # 30 more: the 600 go
    held = sum(len(v) for found in b._cache.values() for v in found.values())
    assert held == b._cached_items == 30


def test_paging_by_id_is_refused_where_the_filter_would_be_ignored(api):
    """An API that drops `next` and ignores CQL2 (Earth Search's conformance) cannot be paged by id: asking again
    would return the same page for ever; it is an error instead."""
    from pipelines.faults import SourceError

    api.strip_next = api.no_filter = True
    with pytest.raises(SourceError, match="cannot be paged by id"):
        backend(api).search("paging-test", (27.1, -8.9, 27.4, -8.6), None, None)


def test_an_s3_href_from_a_catalog_never_names_another_host(monkeypatch):
    """Bucket and storage:region come from a (possibly hostile) catalog and go into the URL's host: only S3's own
    names are taken; anything else is one line, and nothing is fetched."""
    from pipelines.backends.local import public_s3_url
    from pipelines.faults import MissingAsset

    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    assert public_s3_url("s3://copernicus-dem-30m/a b.tif", "eu-central-1") == \
        "https://copernicus-dem-30m.s3.eu-central-1.amazonaws.com/a%20b.tif"
    assert public_s3_url("s3://my.bucket/k.tif") == "https://s3.amazonaws.com/my.bucket/k.tif"   # path-style
    for href, region in (("s3://copernicus-dem-30m/k", "x.evil.example#"), ("s3://a@evil.example/k", None),
                         ("s3://Bad_Bucket/k", None)):
        with pytest.raises(MissingAsset, match="not an S3 bucket name or region") as e:
            public_s3_url(href, region)
        assert "\n" not in str(e.value)
