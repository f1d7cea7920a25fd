"""Coordinates written in a question, and their conversion to full-resolution pixels.

:func:`find_coordinates` reads explicit pixel boxes (``box 100,200,612,712``, ``x1=100 ...``,
``from (100, 200) to (612, 712)``), pixel points (``pixel (1200, 3400)``), map points in the
scene CRS or a named one (``at 500123.5, 4999870``, ``EPSG:32633``) and longitude/latitude points
(``lon 12.34 lat 45.6``, ``45.6N 12.34E``) as :class:`CoordinateMention` values. The helpers
below it read a scene's georeference from ``PlanRequest.scene_info`` (:func:`_georef`) and turn
map units into pixels (:func:`_map_to_pixel`, through :func:`zoomearth.geometry.map_to_pixel`,
the one affine inverse) or between CRSs (:func:`_reproject`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from zoomearth.agent.text.masking import _mask
from zoomearth.errors import GeoreferenceError
from zoomearth.geometry import map_to_pixel

__all__ = ["CoordinateMention", "find_coordinates"]

# Every pattern over the question is linear in its length (issue #14), because:
# * whitespace is possessive (``\s*+``): a run is never shared out between two quantifiers;
# * a number is possessive and starts only where no digit precedes it, so no start position
#   inside a digit run rescans the run;
# * a pattern starts at a keyword, a bracket or a number, never inside a whitespace run (a
#   leading "(" is ``(?:\(\s*+)?``, not ``\(?\s*``);
# so each character is scanned from a bounded number of start positions, without backtracking.
# The forms matched are those of the greedy patterns these replace; only a match no longer
# begins with whitespace, so its start is that of its first word and its phrase never includes
# text that an earlier match blanked out.
_WS: Final = r"\s*+"
_NUM: Final = r"[-+]?+(?<!\d)(?:\d++(?:\.\d*+)?+|\.\d++)"
_SEP4: Final = r"(?:\s*+[,;]\s*+|\s++)"
_COMMA: Final = r"\s*+,\s*+"
_OPEN: Final = r"(?:\(\s*+)?"  # an optional "(" a pattern starts with


@dataclass(frozen=True, slots=True)
class CoordinateMention:
    """Coordinates written in a question.

    Attributes:
        kind: ``box`` (four numbers ``x1, y1, x2, y2``) or ``point`` (``x, y``).
        frame: ``pixel`` (full-resolution pixels), ``map`` (map units; of ``crs`` when given, else
            of the scene CRS), ``lonlat`` (degrees; ``values`` are ``lon, lat``) or ``xy`` (a
            point whose frame is not said: map units when that lands inside a georeferenced
            scene, else pixels).
        values: The numbers, in the order named above.
        phrase: The matched text.
        start: Start offset in the question.
        crs: A CRS named in the question (``EPSG:32633``) for ``map`` points, else None.
    """

    kind: str
    frame: str
    values: tuple[float, ...]
    phrase: str
    start: int
    crs: str | None = None


_BOX_PATTERNS: Final = (
    re.compile(
        rf"\b(?:bbox(?:_2d)?|box|rectangle|window|crop|pixels?|px)\b{_WS}[:=]?{_WS}[\[(]?{_WS}"
        rf"({_NUM}){_SEP4}({_NUM}){_SEP4}({_NUM}){_SEP4}({_NUM}){_WS}[\])]?",
        re.I,
    ),
    re.compile(rf"[\[(]{_WS}({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM}){_WS}[\])]"),
    re.compile(
        rf"\bfrom{_WS}\(?{_WS}({_NUM}){_COMMA}({_NUM}){_WS}\)?{_WS}"
        rf"to{_WS}\(?{_WS}({_NUM}){_COMMA}({_NUM}){_WS}\)?",
        re.I,
    ),
)
_KEYED_RE: Final = re.compile(
    rf"\b(x1|y1|x2|y2|x_?min|y_?min|x_?max|y_?max|left|top|right|bottom){_WS}[=:]{_WS}({_NUM})",
    re.I,
)
_KEY_INDEX: Final = {
    "x1": 0, "xmin": 0, "x_min": 0, "left": 0,
    "y1": 1, "ymin": 1, "y_min": 1, "top": 1,
    "x2": 2, "xmax": 2, "x_max": 2, "right": 2,
    "y2": 3, "ymax": 3, "y_max": 3, "bottom": 3,
}  # fmt: skip
_LONLAT_PATTERNS: Final = (
    # (pattern, index of lon group, index of lat group)
    (
        re.compile(
            rf"\b(?:lon|lng|long|longitude){_WS}[:=]?{_WS}({_NUM}){_WS}°?{_WS},?{_WS}(?:and\s++)?"
            rf"(?:lat|latitude){_WS}[:=]?{_WS}({_NUM}){_WS}°?",
            re.I,
        ),
        1,
        2,
    ),
    (
        re.compile(
            rf"\b(?:lat|latitude){_WS}[:=]?{_WS}({_NUM}){_WS}°?{_WS},?{_WS}(?:and\s++)?"
            rf"(?:lon|lng|long|longitude){_WS}[:=]?{_WS}({_NUM}){_WS}°?",
            re.I,
        ),
        2,
        1,
    ),
    (
        re.compile(
            rf"\b(?:lat(?:itude)?{_WS}[/,]{_WS}lon(?:gitude)?){_WS}[:=]?{_WS}\(?{_WS}({_NUM})"
            rf"{_COMMA}({_NUM}){_WS}\)?",
            re.I,
        ),
        2,
        1,
    ),
    (
        re.compile(
            rf"\b(?:lon(?:gitude)?{_WS}[/,]{_WS}lat(?:itude)?){_WS}[:=]?{_WS}\(?{_WS}({_NUM})"
            rf"{_COMMA}({_NUM}){_WS}\)?",
            re.I,
        ),
        1,
        2,
    ),
    (
        re.compile(
            rf"{_OPEN}({_NUM}){_COMMA}({_NUM}){_WS}\)?{_WS}"
            rf"\({_WS}lat(?:itude)?{_COMMA}lon(?:gitude)?{_WS}\)",
            re.I,
        ),
        2,
        1,
    ),
    (
        re.compile(
            rf"{_OPEN}({_NUM}){_COMMA}({_NUM}){_WS}\)?{_WS}"
            rf"\({_WS}lon(?:gitude)?{_COMMA}lat(?:itude)?{_WS}\)",
            re.I,
        ),
        1,
        2,
    ),
)
_HEMI_RE: Final = re.compile(
    rf"({_NUM}){_WS}°?{_WS}([NSEW])\b{_WS}[,;]?{_WS}({_NUM}){_WS}°?{_WS}([NSEW])\b"
)
_EASTING_RE: Final = re.compile(
    rf"\beasting{_WS}[:=]?{_WS}({_NUM}){_WS}m?{_WS},?{_WS}(?:and\s++)?northing{_WS}[:=]?{_WS}"
    rf"({_NUM})",
    re.I,
)
_PIXEL_POINT_PATTERNS: Final = (
    re.compile(
        rf"\b(?:pixel|px){_WS}(?:at{_WS})?[:=]?{_WS}\(?{_WS}({_NUM}){_COMMA}({_NUM}){_WS}\)?",
        re.I,
    ),
    re.compile(rf"{_OPEN}({_NUM}){_COMMA}({_NUM}){_WS}\)?{_WS}(?:px|pixels?)\b", re.I),
    re.compile(
        rf"\b(?:col|column){_WS}[=:]?{_WS}({_NUM}){_WS},?{_WS}(?:and\s++)?row{_WS}[=:]?{_WS}"
        rf"({_NUM})",
        re.I,
    ),
)
_XY_PATTERNS: Final = (
    re.compile(
        rf"\bx{_WS}[=:]{_WS}({_NUM}){_WS},?{_WS}(?:and\s++)?y{_WS}[=:]{_WS}({_NUM})", re.I
    ),
    re.compile(
        r"\b(?:at|near|around|coordinates?|coords?|point|location|position|cent(?:red|ered)\s++on)"
        rf"{_WS}[:=]?{_WS}\(?{_WS}({_NUM}){_COMMA}({_NUM}){_WS}\)?",
        re.I,
    ),
)
_EPSG_RE: Final = re.compile(rf"\bEPSG{_WS}:{_WS}(\d{{4,6}})\b", re.I)
_MAX_COORDINATES: Final = 8


def find_coordinates(text: str) -> list[CoordinateMention]:
    """Find pixel boxes, pixel points, map points and lon/lat points written in a question.

    Each match masks its span, so a number is used once; more specific forms are tried first
    (lon/lat, hemispheres, boxes, pixel points, then bare ``x, y`` points).

    Args:
        text: The question.

    Returns:
        The mentions ordered by position (at most 8).
    """
    work = text
    found: list[CoordinateMention] = []
    spans: list[tuple[int, int]] = []  # taken by the current pattern, masked after its loop
    epsg = _EPSG_RE.search(text)
    named_crs = f"EPSG:{epsg.group(1)}" if epsg else None

    def take(
        m: re.Match[str], kind: str, frame: str, values: Sequence[float], crs: str | None = None
    ) -> None:
        found.append(
            CoordinateMention(
                kind, frame, tuple(values), text[m.start() : m.end()].strip(), m.start(), crs
            )
        )
        spans.append(m.span())

    def masked() -> str:
        out = _mask(work, spans)
        spans.clear()
        return out

    for pattern, lon_i, lat_i in _LONLAT_PATTERNS:
        for m in pattern.finditer(work):
            take(m, "point", "lonlat", (float(m.group(lon_i)), float(m.group(lat_i))))
        work = masked()
    for m in _HEMI_RE.finditer(work):
        a, ha, b, hb = float(m.group(1)), m.group(2), float(m.group(3)), m.group(4)
        pair = {ha: a, hb: b}
        if {ha, hb} in ({"N", "E"}, {"N", "W"}, {"S", "E"}, {"S", "W"}):
            lat = pair.get("N", -pair.get("S", 0.0))
            lon = pair.get("E", -pair.get("W", 0.0))
            if abs(lat) <= 90 and abs(lon) <= 180:
                take(m, "point", "lonlat", (lon, lat))
            elif {ha, hb} == {"N", "E"}:  # UTM-style "500123E 4999870N"
                take(m, "point", "map", (pair["E"], pair["N"]), named_crs)
    work = masked()
    for m in _EASTING_RE.finditer(work):
        take(m, "point", "map", (float(m.group(1)), float(m.group(2))), named_crs)
    work = masked()
    for pattern in _BOX_PATTERNS:
        for m in pattern.finditer(work):
            take(m, "box", "pixel", [float(m.group(i)) for i in range(1, 5)])
        work = masked()
    keyed = list(_KEYED_RE.finditer(work))
    values: dict[int, float] = {}
    for m in keyed:
        values.setdefault(_KEY_INDEX[m.group(1).lower()], float(m.group(2)))
    if len(values) == 4:
        start, end = keyed[0].start(), keyed[-1].end()
        found.append(
            CoordinateMention(
                "box", "pixel", tuple(values[i] for i in range(4)), text[start:end], start
            )
        )
        work = _mask(work, [(start, end)])
    for pattern in _PIXEL_POINT_PATTERNS:
        for m in pattern.finditer(work):
            take(m, "point", "pixel", (float(m.group(1)), float(m.group(2))))
        work = masked()
    for pattern in _XY_PATTERNS:
        for m in pattern.finditer(work):
            frame = "map" if named_crs else "xy"
            take(m, "point", frame, (float(m.group(1)), float(m.group(2))), named_crs)
        work = masked()
    found.sort(key=lambda c: c.start)
    return found[:_MAX_COORDINATES]


def _georef(info: Mapping[str, Any]) -> tuple[str | None, tuple[float, ...] | None]:
    if info.get("georeferenced") is False:
        return None, None
    transform = info.get("transform")
    crs = info.get("crs")
    if not isinstance(transform, Sequence) or len(transform) < 6:
        return (str(crs) if crs else None), None
    try:
        coeffs = tuple(float(v) for v in list(transform)[:6])
    except (TypeError, ValueError):
        return (str(crs) if crs else None), None
    return (str(crs) if crs else None), coeffs


def _map_to_pixel(x: float, y: float, coeffs: tuple[float, ...]) -> tuple[float, float] | None:
    """Map units to full-resolution ``(col, row)``; None when the affine cannot be inverted.

    ``coeffs`` is the scene's pixel->map affine ``x = a*col + b*row + c``, ``y = d*col + e*row +
    f``; a zero pixel size or a NaN coefficient makes it non-invertible
    (:func:`zoomearth.geometry.invert_transform`).
    """
    try:
        return map_to_pixel(x, y, coeffs)
    except GeoreferenceError:
        return None


def _reproject(x: float, y: float, src: str, dst: str) -> tuple[float, float]:
    """Transform one point between CRSs (x/y in the CRSs' traditional GIS order: lon, lat).

    Raises:
        ValueError: When a CRS is unknown or the point cannot be transformed.
    """
    from rasterio.errors import CRSError
    from rasterio.warp import transform

    try:
        xs, ys = transform(src, dst, [x], [y])
    except (CRSError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if not (math.isfinite(xs[0]) and math.isfinite(ys[0])):
        raise ValueError(f"the point does not exist in {dst}")
    return float(xs[0]), float(ys[0])
