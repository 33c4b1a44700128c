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
