"""Vectorise label masks into polygons and GeoJSON (shared by tools that output regions).

Two steps, kept apart so other tools can reuse either:

1. :func:`mask_to_polygons` traces every 4-connected region of a label mask
   (``rasterio.features.shapes``, holes kept), simplifies it in *pixel* units with topology
   preserved (shapely), and returns :class:`RegionPolygon` s whose geometry is in the
   **full-resolution pixel frame of the image** (x to the right, y down, pixel edges at integers;
   the mask's ``(col_off, row_off)`` offset is added).
2. :func:`polygons_to_geojson` maps those polygons to the scene's CRS through its geotransform (or
   to lon/lat, EPSG:4326, on request), measures their area in square metres where it can, and
   builds a GeoJSON ``FeatureCollection``.

Area rules: a projected CRS gives ``area_m2`` from the planar area times the square of the CRS's
linear unit (metres, feet ...); a geographic CRS gives ``area_m2`` after reprojecting to an
equal-area CRS (EPSG:6933, through GDAL); a non-georeferenced image gives ``area_px`` only.
``area_px`` (the number of mask pixels of the region, exact) is always present.

CRS member: RFC 7946 says GeoJSON is WGS84 lon/lat; GIS tools (QGIS, GDAL/OGR) still read the
legacy top-level ``"crs"`` member, so output in the scene's CRS carries
``{"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::<code>"}}`` and output in
EPSG:4326 carries none. Pixel-frame output (images without georeference) carries the foreign
member ``"zoomearth:frame": "pixel"`` instead and no ``"crs"``.

Needs ``shapely>=2`` (imported inside the functions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from affine import Affine
    from rasterio.crs import CRS

__all__ = [
    "GeoJsonResult",
    "RegionPolygon",
    "crs_member",
    "mask_to_polygons",
    "polygons_to_geojson",
]

EQUAL_AREA_CRS = "EPSG:6933"
LONLAT_CRS = "EPSG:4326"
MASK_DTYPE_TEMPLATE = (
    "mask_to_polygons needs a 2-D integer label mask (uint8, uint16, int16 or int32); got shape "
    "{shape} dtype {dtype}. Cast the mask with .astype(np.int32) first."
)
LONLAT_NEEDS_CRS_TEMPLATE = (
    "lon/lat output needs a georeferenced image; this one has no CRS, so polygons are given in "
    "pixel coordinates. Call again without lonlat."
)


@dataclass(frozen=True)
class RegionPolygon:
    """One traced region.

    Attributes:
        label: Mask value of the region (> 0).
        geometry: shapely ``Polygon`` in the full-resolution pixel frame of the image (xy, pixel
            edges at integers), simplified, holes kept.
        area_px: Number of mask pixels in the region (before simplification; exact).
    """

    label: int
    geometry: Any
    area_px: int


@dataclass(frozen=True)
class GeoJsonResult:
    """A FeatureCollection and the facts a summary needs.

    Attributes:
        collection: The GeoJSON ``FeatureCollection`` (a JSON-serialisable dict).
        frame: ``"crs"`` (the scene's CRS), ``"lonlat"`` (EPSG:4326) or ``"pixel"``.
        crs: CRS string of the coordinates (``"EPSG:26914"``, WKT, ``"EPSG:4326"``) or None for
            pixel coordinates.
        areas_m2: Area of each feature in square metres, or None where it cannot be measured
            (pixel frame, CRS without a known unit).
        centroids: Centroid of each feature in the output frame (x, y) / (lon, lat).
        pixel_centroids: Centroid of each feature in full-resolution pixels (x, y).
    """

    collection: dict[str, Any]
    frame: str
    crs: str | None
    areas_m2: list[float | None]
    centroids: list[tuple[float, float]]
    pixel_centroids: list[tuple[float, float]]


def mask_to_polygons(
    mask: np.ndarray,
    *,
    offset: tuple[int, int] = (0, 0),
    simplify_px: float = 1.0,
    min_area_px: int = 0,
    valid: np.ndarray | None = None,
) -> list[RegionPolygon]:
    """Trace the regions of a label mask as polygons in full-resolution pixels.

    Args:
        mask: ``(h, w)`` integer labels; 0 is background, every other value a class/instance.
            Regions are 4-connected (a diagonal touch makes two polygons, so rings stay valid).
        offset: ``(col_off, row_off)`` of the mask in the image (the source window's origin).
        simplify_px: Douglas-Peucker tolerance in pixels (``0`` keeps the pixel staircase);
            topology is preserved, so holes stay inside their shells.
        min_area_px: Regions with fewer pixels are dropped.
        valid: Optional ``(h, w)`` bool; labels where it is False are ignored (e.g. nodata).

    Returns:
        Polygons sorted by ``area_px``, largest first.

    Raises:
        ValueError: ``mask`` is not a 2-D integer array.
    """
    import shapely
    from affine import Affine
    from rasterio import features
    from shapely.geometry import shape

    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise ValueError(MASK_DTYPE_TEMPLATE.format(shape=arr.shape, dtype=arr.dtype))
    if arr.dtype not in (np.uint8, np.uint16, np.int16, np.int32):
        arr = arr.astype(np.int32)
    select = arr > 0
    if valid is not None:
        select &= np.asarray(valid, dtype=bool)
    if not select.any():
        return []
    transform = Affine.translation(float(offset[0]), float(offset[1]))
    out: list[RegionPolygon] = []
    for geom, value in features.shapes(arr, mask=select, connectivity=4, transform=transform):
        poly = shape(geom)
        # Pixel-traced rings have unit edges, so the traced area is the pixel count exactly.
        area_px = int(round(poly.area))
        if area_px < max(1, min_area_px):
            continue
        if simplify_px > 0:
            simple = poly.simplify(float(simplify_px), preserve_topology=True)
            if not simple.is_empty and simple.area > 0:
                poly = simple
        if not poly.is_valid:
            poly = shapely.make_valid(poly)
            if poly.geom_type != "Polygon":  # keep the largest part of a repaired polygon
                parts = [g for g in getattr(poly, "geoms", [poly]) if g.geom_type == "Polygon"]
                if not parts:
                    continue
                poly = max(parts, key=lambda g: g.area)
        out.append(RegionPolygon(label=int(value), geometry=poly, area_px=area_px))
    out.sort(key=lambda r: -r.area_px)
    return out


def crs_member(crs_text: str) -> dict[str, Any] | None:
    """The legacy GeoJSON ``"crs"`` member for ``"EPSG:n"`` (None for WKT-only CRSs)."""
    if crs_text.upper().startswith("EPSG:"):
        code = crs_text.split(":", 1)[1]
        return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{code}"}}
    return None


def _unit_factor(crs: CRS) -> float | None:
    """Metres per linear unit of a projected CRS; None when the CRS defines no linear unit."""
    from rasterio.errors import CRSError

    try:
        _name, factor = crs.linear_units_factor
    except CRSError:  # rasterio's answer for a CRS without linear units; anything else is a bug
        return None
    return float(factor) if factor and math.isfinite(factor) else None


def _round_coords(geom: dict[str, Any], ndigits: int) -> dict[str, Any]:
    def rnd(rings: Any) -> Any:
        if rings and isinstance(rings[0], int | float):
            return [round(float(v), ndigits) for v in rings]
        return [rnd(r) for r in rings]

    return {"type": geom["type"], "coordinates": rnd(geom["coordinates"])}


def polygons_to_geojson(
    regions: list[RegionPolygon],
    *,
    transform: Affine | None,
    crs: CRS | None,
    lonlat: bool = False,
    properties: dict[str, Any] | None = None,
) -> GeoJsonResult:
    """Build a GeoJSON FeatureCollection from pixel-frame polygons.

    Args:
        regions: Polygons from :func:`mask_to_polygons` (full-resolution pixel frame).
        transform: The scene's geotransform (pixel -> CRS); None for images without georeference.
        crs: The scene's CRS; None for images without georeference.
        lonlat: Output EPSG:4326 lon/lat (RFC 7946) instead of the scene's CRS.
        properties: Extra properties copied into every feature (e.g. the backend).

    Returns:
        The collection (``features[i].properties``: ``id`` (1-based), ``label``, ``area_px``,
        ``area_m2`` when measurable, plus ``properties``) and the facts for a summary.

    Raises:
        ValueError: ``lonlat`` was asked for an image without CRS.
    """
    from rasterio.warp import transform_geom
    from shapely import affinity
    from shapely.geometry import mapping, shape

    georef = crs is not None and transform is not None
    if lonlat and not georef:
        raise ValueError(LONLAT_NEEDS_CRS_TEMPLATE)
    crs_text: str | None = None
    if georef:
        assert crs is not None
        epsg = crs.to_epsg()
        crs_text = f"EPSG:{epsg}" if epsg else crs.to_wkt()
    unit = _unit_factor(crs) if georef and crs is not None and crs.is_projected else None

    features: list[dict[str, Any]] = []
    areas: list[float | None] = []
    centroids: list[tuple[float, float]] = []
    pixel_centroids: list[tuple[float, float]] = []
    for i, region in enumerate(regions, start=1):
        poly = region.geometry
        c = poly.centroid
        pixel_centroids.append((float(c.x), float(c.y)))
        props: dict[str, Any] = {"id": i, "label": region.label, "area_px": region.area_px}
        if not georef:
            geom = _round_coords(mapping(poly), 3)
            centroids.append((float(c.x), float(c.y)))
            area_m2 = None
        else:
            assert transform is not None and crs is not None
            a, b, xoff, d, e, yoff = (
                transform.a,
                transform.b,
                transform.c,
                transform.d,
                transform.e,
                transform.f,
            )
            mapped = affinity.affine_transform(poly, [a, b, d, e, xoff, yoff])
            if unit is not None:
                area_m2 = float(mapped.area) * unit * unit
            else:
                ea = shape(transform_geom(crs, EQUAL_AREA_CRS, mapping(mapped)))
                area_m2 = float(ea.area)
            if lonlat:
                ll = transform_geom(crs, LONLAT_CRS, mapping(mapped))
                geom = _round_coords(ll, 8)
                llc = transform_geom(
                    crs,
                    LONLAT_CRS,
                    {"type": "Point", "coordinates": mapping(mapped.centroid)["coordinates"]},
                )["coordinates"]
                centroids.append((float(llc[0]), float(llc[1])))
            else:
                geom = _round_coords(mapping(mapped), 8 if crs.is_geographic else 3)
                mc = mapped.centroid
                centroids.append((float(mc.x), float(mc.y)))
        if area_m2 is not None:
            props["area_m2"] = round(area_m2, 3)
        areas.append(area_m2)
        props.update(properties or {})
        features.append({"type": "Feature", "id": i, "geometry": geom, "properties": props})

    collection: dict[str, Any] = {"type": "FeatureCollection"}
    if not georef:
        frame = "pixel"
        collection["zoomearth:frame"] = "pixel"
        out_crs = None
    elif lonlat:
        frame, out_crs = "lonlat", LONLAT_CRS
    else:
        frame, out_crs = "crs", crs_text
        member = crs_member(crs_text or "")
        if member is not None and crs_text != LONLAT_CRS:
            collection["crs"] = member
    collection["features"] = features
    return GeoJsonResult(
        collection=collection,
        frame=frame,
        crs=out_crs,
        areas_m2=areas,
        centroids=centroids,
        pixel_centroids=pixel_centroids,
    )
