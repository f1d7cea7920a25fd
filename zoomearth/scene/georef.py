"""Georeference checks of a raster header: a georeference that cannot be right.

:func:`georeference_warnings` finds, from the header alone, a degenerate geotransform, metre
bounds labelled as degrees and degree bounds labelled as metres; :class:`~zoomearth.scene.Scene`
keeps the notes and issues them as :class:`SceneWarning` at open.
"""

from __future__ import annotations

import os
from typing import Any

from zoomearth.geometry import is_degenerate_transform

__all__ = [
    "DEGENERATE_GEOREF_TEMPLATE",
    "DEGREES_LOOK_LIKE_METRES_TEMPLATE",
    "GEOGRAPHIC_MARGIN_DEG",
    "METRES_LOOK_LIKE_DEGREES_TEMPLATE",
    "PROJECTED_MIN_PIXEL",
    "SceneWarning",
    "georeference_warnings",
]

DEGENERATE_GEOREF_TEMPLATE = (
    "{path}: the geotransform has a zero pixel size (a={a:g}, e={e:g}, b={b:g}, d={d:g}), so map "
    "coordinates, bounds and areas cannot be computed. Fix the georeference (e.g. gdal_edit.py "
    "-a_ullr ULX ULY LRX LRY {path}), or use pixel boxes."
)
DEGREES_LOOK_LIKE_METRES_TEMPLATE = (
    "{path}: CRS {crs} is geographic (degrees) but the bounds look like metres ({extreme}): the "
    "georeference is probably wrong; areas and coordinates will be wrong. Fix the CRS (e.g. "
    "gdal_edit.py -a_srs EPSG:32633 {path})."
)
METRES_LOOK_LIKE_DEGREES_TEMPLATE = (
    "{path}: CRS {crs} is projected ({unit}) but the bounds look like degrees ({extreme}, pixel "
    "size {pixel:g}): the georeference is probably wrong; areas and coordinates will be wrong. "
    "Fix the CRS (e.g. gdal_edit.py -a_srs EPSG:4326 {path})."
)

#: Degrees beyond the valid longitude range [-180, 360] (0..360 grids exist) and latitude range
#: [-90, 90] that bounds may reach before a geographic CRS is called implausible: at least this
#: much, or two pixels (a coarse global grid centred on the poles reaches 90 + half a pixel).
GEOGRAPHIC_MARGIN_DEG = 1.0
#: A projected raster whose pixel is smaller than this many CRS units (metres: 1 mm) and whose
#: bounds all lie within +-180 / +-90 is taken for degrees labelled as metres.
PROJECTED_MIN_PIXEL = 1e-3

class SceneWarning(UserWarning):
    """A raster opened, but something about it is probably wrong (e.g. its georeference).

    Issued by :class:`Scene` at open (also kept in ``Scene.warnings`` and ``info()["warnings"]``);
    the command line prints it as one line.
    """


def _extreme_text(xs: tuple[float, float], ys: tuple[float, float]) -> str:
    """``x up to 500,032, y up to 4,000,000``: the largest magnitude along each axis."""

    def fmt(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.6g}"

    return f"x up to {fmt(max(xs, key=abs))}, y up to {fmt(max(ys, key=abs))}"


def georeference_warnings(
    path: str | os.PathLike[str], crs: Any, transform: Any, width: int, height: int
) -> list[str]:
    """Notes about a georeference that cannot be right; empty when it looks plausible.

    Three cases, each checked from the header alone:

    * a degenerate geotransform (zero pixel size, NaN; :func:`is_degenerate_transform`);
    * a geographic CRS (degrees) whose bounds leave longitude [-180, 360] or latitude [-90, 90]
      by more than ``max(GEOGRAPHIC_MARGIN_DEG, 2 pixels)``: metre coordinates labelled as
      degrees, e.g. UTM bounds with EPSG:4326;
    * a projected CRS whose pixel is below :data:`PROJECTED_MIN_PIXEL` units and whose bounds
      lie within +-180 / +-90: degrees labelled as metres.

    Args:
        path: The raster (named in the notes).
        crs: ``rasterio.crs.CRS`` or None.
        transform: The pixel->map ``affine.Affine`` (pixel-corner convention).
        width: Raster width in pixels.
        height: Raster height in pixels.

    Returns:
        One line per problem, saying what is wrong and how to fix it.
    """
    if transform is None or (transform.is_identity and crs is None):
        return []
    if is_degenerate_transform(transform):
        a, b, _, d, e, _ = (float(v) for v in list(transform)[:6])
        return [DEGENERATE_GEOREF_TEMPLATE.format(path=path, a=a, e=e, b=b, d=d)]
    if crs is None:
        return []
    corners = [transform @ (c, r) for c in (0, width) for r in (0, height)]
    xs = (min(p[0] for p in corners), max(p[0] for p in corners))
    ys = (min(p[1] for p in corners), max(p[1] for p in corners))
    name = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else (crs.to_string() or "of the file")[:60]
    if crs.is_geographic:
        pixel = max(abs(transform.a), abs(transform.b), abs(transform.d), abs(transform.e))
        margin = max(GEOGRAPHIC_MARGIN_DEG, 2.0 * pixel)
        if (
            xs[0] < -180.0 - margin
            or xs[1] > 360.0 + margin
            or ys[0] < -90.0 - margin
            or ys[1] > 90.0 + margin
        ):
            return [
                DEGREES_LOOK_LIKE_METRES_TEMPLATE.format(
                    path=path, crs=name, extreme=_extreme_text(xs, ys)
                )
            ]
    elif crs.is_projected:
        pixel = max(abs(transform.a), abs(transform.e))
        inside = -180.0 <= xs[0] and xs[1] <= 180.0 and -90.0 <= ys[0] and ys[1] <= 90.0
        if inside and 0.0 < pixel < PROJECTED_MIN_PIXEL:
            unit = getattr(crs, "linear_units", None) or "linear units"
            return [
                METRES_LOOK_LIKE_DEGREES_TEMPLATE.format(
                    path=path, crs=name, unit=unit, extreme=_extreme_text(xs, ys), pixel=pixel
                )
            ]
    return []
