"""Uniform random points on the Earth's surface (WGS84 ellipsoid) inside a lon/lat polygon.

The polygon is cut into triangles (shapely's constrained Delaunay, in lon/lat where the polygon's edges are
straight), a triangle is picked in proportion to its planar area times an upper bound of the surface density
inside it, a point is drawn uniformly in it, and kept with probability density/bound. The surface density of
lon/lat on the ellipsoid is cos(phi) / (1 - e^2 sin^2 phi)^2, so the accepted points are exactly uniform per
unit of surface area: no over-weighting of high latitudes, no projection error, no point-in-polygon test.
"""
from __future__ import annotations

import numpy as np
import shapely

E2 = 0.00669437999014  # WGS84 first eccentricity squared


def surface_density(lat_deg: np.ndarray) -> np.ndarray:
    """Relative surface area per unit lon/lat at latitude ``lat_deg`` (WGS84)."""
    phi = np.radians(lat_deg)
    return np.cos(phi) / (1.0 - E2 * np.sin(phi) ** 2) ** 2


class PolygonDraw:
    """Draws equal-area uniform points inside one (multi)polygon in EPSG:4326."""

    def __init__(self, geom: shapely.Geometry):
        polys = [p for p in shapely.get_parts(geom) if shapely.get_type_id(p) in (3, 6) and not p.is_empty]
        tris = shapely.get_parts(shapely.constrained_delaunay_triangles(shapely.MultiPolygon(
            [q for p in polys for q in shapely.get_parts(p)])))
        coords = shapely.get_coordinates(tris).reshape(len(tris), 4, 2)[:, :3]
        a, b, c = coords[:, 0], coords[:, 1], coords[:, 2]
        area = 0.5 * np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1]))
        keep = area > 0
        self.a, self.b, self.c = a[keep], b[keep], c[keep]
        lat = coords[keep][:, :, 1]
        lo, hi = lat.min(axis=1), lat.max(axis=1)
        abs_min = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
        abs_max = np.maximum(np.abs(lo), np.abs(hi))
        phi_min, phi_max = np.radians(abs_min), np.radians(abs_max)
        self.bound = np.cos(phi_min) / (1.0 - E2 * np.sin(phi_max) ** 2) ** 2
        weights = area[keep] * self.bound
        self.cum = np.cumsum(weights)
        self.acceptance = 0.9  # running estimate, only sizes the next batch

    @property
    def empty(self) -> bool:
        return len(self.cum) == 0 or self.cum[-1] <= 0

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points (lon, lat in degrees) uniform on the surface inside the polygon."""
        lons, lats, got = [], [], 0
        while got < n:
            m = int((n - got) / max(self.acceptance, 0.05) * 1.05) + 8
            t = np.searchsorted(self.cum, rng.random(m) * self.cum[-1], side="right")
            t = np.minimum(t, len(self.cum) - 1)
            r1, r2, u = rng.random(m), rng.random(m), rng.random(m)
            s = np.sqrt(r1)
            p = ((1 - s)[:, None] * self.a[t] + (s * (1 - r2))[:, None] * self.b[t] + (s * r2)[:, None] * self.c[t])
            ok = u * self.bound[t] < surface_density(p[:, 1])
            self.acceptance = max(ok.mean(), 0.05)
            lons.append(p[ok, 0])
            lats.append(p[ok, 1])
            got += int(ok.sum())
        return np.concatenate(lons)[:n], np.concatenate(lats)[:n]
