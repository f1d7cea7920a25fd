"""Boxes that carry their frame, and the pure functions that convert between frames.

Conventions, everywhere in the project:

* Boxes are ``xyxy`` with **half-open pixel edges**: a box ``(0, 0, 512, 512)`` covers pixel
  columns 0..511. Floats are allowed (a planner box is rarely integral).
* Three frames exist, each with its own frozen type:

  - :class:`PixelBox` -- full-resolution pixels of the source raster (column x, row y, origin at the
    top-left corner of the top-left pixel). Every command-line ``--box`` is in this frame.
  - :class:`ViewBox` -- pixels of one rendered view (the exact image a planner saw, after any resize
    the model's processor applies), identified by ``view_id``.
  - :class:`MapBox` -- map units of the scene's CRS (``minx, miny, maxx, maxy``; y grows north).

* :class:`ViewSpec` records which full-resolution region a view shows and its pixel size, which is
  everything needed to convert between the view frame and the full-resolution frame.

Map conversions go through the raster's pixel->map affine transform (rasterio's coefficient
order ``a, b, c, d, e, f``). A transform with a zero pixel size (determinant 0) or NaN coefficients
cannot be inverted: :func:`invert_transform`, :func:`map_to_pixel` and :func:`map_to_full` raise
:class:`~zoomearth.errors.GeoreferenceError` with a message saying how to fix it, never a bare
``TransformNotInvertibleError`` or a division by zero.

Policy for boxes given by users or planners (:func:`validate_box`): NaN/inf, inverted (x2 < x1 or
y2 < y1), empty (zero width or height) and entirely-outside boxes are **rejected** with
:class:`~zoomearth.errors.BoxError`; boxes that are partly outside the image are **clipped** to it
and a warning string says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zoomearth.errors import (
    BoxError,
    BoxOutsideImageError,
    GeoreferenceError,
    InvertedBoxError,
)

if TYPE_CHECKING:  # rasterio is only needed for the map conversions' type hints
    from affine import Affine

__all__ = [
    "MapBox",
    "PixelBox",
    "ViewBox",
    "ViewSpec",
    "full_to_map",
    "full_to_view",
    "invert_transform",
    "is_degenerate_transform",
    "map_to_full",
    "map_to_pixel",
    "min_crop_xyxy",
    "parse_box",
    "reference_resized_size",
    "validate_box",
    "view_to_full",
]

BOX_NEEDS_FOUR_TEMPLATE = (
    "A box needs four numbers x1,y1,x2,y2 (full-resolution pixels); got {got!r}."
)
BOX_NOT_FINITE_TEMPLATE = "Box {box} contains NaN or infinity; give four finite numbers."
BOX_INVERTED_TEMPLATE = (
    "Box {box} is inverted (x2 < x1 or y2 < y1); boxes are x1,y1,x2,y2 with x1 <= x2 and y1 <= y2."
)
BOX_EMPTY_TEMPLATE = "Box {box} is empty (zero width or height); give a box with positive size."
BOX_OUTSIDE_TEMPLATE = (
    "Box {box} lies entirely outside the image (size {width}x{height} px); "
    "coordinates are full-resolution pixels with the origin at the top-left corner."
)
BOX_CLIPPED_TEMPLATE = (
    "Box {box} extends beyond the image ({width}x{height} px); clipped to {clipped}."
)
DEGENERATE_TRANSFORM_TEMPLATE = (
    "The geotransform (a={a:g}, b={b:g}, d={d:g}, e={e:g}) has a zero pixel size or is not finite, "
    "so it cannot be inverted and map coordinates cannot be placed on pixels; fix the "
    "georeference (e.g. gdal_edit.py -a_ullr ULX ULY LRX LRY IMAGE) or use pixel boxes."
)


def _fmt(v: float) -> str:
    return f"{v:g}"


@dataclass(frozen=True, slots=True)
class PixelBox:
    """A box in full-resolution pixels of the source raster (xyxy, half-open, floats allowed).

    No validation happens on construction so that any value can be represented and reported;
    use :func:`validate_box` on untrusted input.
    """

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        """Width in pixels (may be negative for an inverted box)."""
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        """Height in pixels (may be negative for an inverted box)."""
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        """Area in square pixels; 0 for empty or inverted boxes."""
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        """Centre ``(x, y)`` in full-resolution pixels."""
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def as_list(self) -> list[float]:
        """Return ``[x1, y1, x2, y2]`` (JSON friendly)."""
        return [self.x1, self.y1, self.x2, self.y2]

    def is_finite(self) -> bool:
        """Whether all four coordinates are finite numbers."""
        return all(math.isfinite(v) for v in (self.x1, self.y1, self.x2, self.y2))

    def intersection(self, other: PixelBox) -> PixelBox | None:
        """Return the overlap of two boxes, or None when they do not overlap (touching = none)."""
        x1, y1 = max(self.x1, other.x1), max(self.y1, other.y1)
        x2, y2 = min(self.x2, other.x2), min(self.y2, other.y2)
        if x2 <= x1 or y2 <= y1:
            return None
        return PixelBox(x1, y1, x2, y2)

    def iou(self, other: PixelBox) -> float:
        """Intersection over union in [0, 1]; 0 when either box is empty."""
        inter = self.intersection(other)
        if inter is None:
            return 0.0
        union = self.area + other.area - inter.area
        return inter.area / union if union > 0 else 0.0

    def clip(self, width: float, height: float) -> PixelBox:
        """Clip to the image ``[0, width) x [0, height)``; the result may be empty."""
        return PixelBox(
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
            min(max(self.x2, 0.0), width),
            min(max(self.y2, 0.0), height),
        )

    def snap_out(self) -> PixelBox:
        """Expand to integer pixel edges (floor the start, ceil the end)."""
        return PixelBox(
            float(math.floor(self.x1)),
            float(math.floor(self.y1)),
            float(math.ceil(self.x2)),
            float(math.ceil(self.y2)),
        )

    def to_window(self) -> tuple[int, int, int, int]:
        """Integer ``(col_off, row_off, width, height)`` covering the box (snapped outwards)."""
        s = self.snap_out()
        return int(s.x1), int(s.y1), int(s.x2 - s.x1), int(s.y2 - s.y1)

    def __str__(self) -> str:
        return f"[{_fmt(self.x1)}, {_fmt(self.y1)}, {_fmt(self.x2)}, {_fmt(self.y2)}]"


@dataclass(frozen=True, slots=True)
class ViewBox:
    """A box in the pixel frame of one rendered view (xyxy, half-open, floats allowed).

    Attributes:
        view_id: Id of the :class:`ViewSpec` whose pixels the coordinates refer to.
    """

    view_id: int
    x1: float
    y1: float
    x2: float
    y2: float

    def as_list(self) -> list[float]:
        """Return ``[x1, y1, x2, y2]``."""
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True, slots=True)
class MapBox:
    """A box in map units of a CRS: ``minx, miny, maxx, maxy`` (y grows north for projected CRSs).

    Attributes:
        crs: The CRS as a string (``EPSG:32633``, WKT ...), or None when unknown.
    """

    minx: float
    miny: float
    maxx: float
    maxy: float
    crs: str | None = None

    def as_list(self) -> list[float]:
        """Return ``[minx, miny, maxx, maxy]``."""
        return [self.minx, self.miny, self.maxx, self.maxy]


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """What one rendered view shows: a full-resolution region resampled to ``width x height``.

    The region is snapped to integer pixel edges by the renderer, so the mapping between the view
    frame and the full-resolution frame is an exact affine scale + offset per axis.

    Attributes:
        view_id: Identifier within a run (0 is the first overview).
        region: The full-resolution region shown (PixelBox, integer edges).
        width: View width in pixels (the image exactly as the planner saw it).
        height: View height in pixels.
    """

    view_id: int
    region: PixelBox
    width: int
    height: int

    @property
    def scale_x(self) -> float:
        """Full-resolution pixels per view pixel along x."""
        return self.region.width / self.width

    @property
    def scale_y(self) -> float:
        """Full-resolution pixels per view pixel along y."""
        return self.region.height / self.height

    def resized(self, width: int, height: int) -> ViewSpec:
        """The same region seen at another pixel size (e.g. after a processor's resize)."""
        return ViewSpec(self.view_id, self.region, int(width), int(height))

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly representation."""
        return {
            "view_id": self.view_id,
            "region_xyxy": self.region.as_list(),
            "width": self.width,
            "height": self.height,
        }


def view_to_full(box: ViewBox, view: ViewSpec) -> PixelBox:
    """Map a box from a view's pixel frame to full-resolution pixels.

    Args:
        box: Box in the frame of ``view`` (its ``view_id`` must match).
        view: The view the box refers to.

    Returns:
        The same box in full-resolution pixels (not clipped, not expanded).

    Raises:
        BoxError: If the box names another view.
    """
    if box.view_id != view.view_id:
        raise BoxError(f"Box refers to view {box.view_id} but view {view.view_id} was given.")
    ox, oy = view.region.x1, view.region.y1
    sx, sy = view.scale_x, view.scale_y
    return PixelBox(ox + box.x1 * sx, oy + box.y1 * sy, ox + box.x2 * sx, oy + box.y2 * sy)


def full_to_view(box: PixelBox, view: ViewSpec) -> ViewBox:
    """Map a full-resolution box into a view's pixel frame (inverse of :func:`view_to_full`)."""
    ox, oy = view.region.x1, view.region.y1
    sx, sy = view.scale_x, view.scale_y
    return ViewBox(
        view.view_id, (box.x1 - ox) / sx, (box.y1 - oy) / sy, (box.x2 - ox) / sx, (box.y2 - oy) / sy
    )


def full_to_map(box: PixelBox, transform: Affine, crs: str | None = None) -> MapBox:
    """Map a full-resolution pixel box to map units through the raster's affine transform.

    Works for north-up and rotated/flipped transforms (the four corners are transformed and their
    envelope is returned).
    """
    corners = [
        transform @ (box.x1, box.y1),
        transform @ (box.x2, box.y1),
        transform @ (box.x1, box.y2),
        transform @ (box.x2, box.y2),
    ]
    xs = [c[0] for c in corners]
    ys = [c[1] for c in corners]
    return MapBox(min(xs), min(ys), max(xs), max(ys), crs)


def _coefficients(transform: Affine | Sequence[float]) -> tuple[float, ...]:
    """The coefficients ``a, b, c, d, e, f`` of an Affine or a sequence, in rasterio's order.

    That is ``list(affine)[:6]``; GDAL's own order (``c, a, b, f, d, e``) is not accepted.
    """
    return tuple(float(v) for v in list(transform)[:6])


def is_degenerate_transform(transform: Affine | Sequence[float]) -> bool:
    """Whether a pixel->map affine transform cannot be inverted.

    True when its determinant ``a*e - b*d`` is 0 (a zero pixel size: ``a = 0`` or ``e = 0`` on a
    north-up raster, or collinear axes on a rotated one) or when any coefficient is NaN or
    infinite. Such a transform maps every pixel onto a line (or nowhere), so map coordinates
    cannot be converted back to pixels, and bounds and areas are meaningless.

    Args:
        transform: An :class:`affine.Affine` or its six coefficients ``a, b, c, d, e, f``
            (``x = a*col + b*row + c``, ``y = d*col + e*row + f``; rasterio's order).
    """
    coeffs = _coefficients(transform)
    if len(coeffs) < 6 or not all(math.isfinite(v) for v in coeffs):
        return True
    a, b, _, d, e, _ = coeffs
    det = a * e - b * d
    return det == 0.0 or not math.isfinite(det) or not math.isfinite(1.0 / det)


def invert_transform(transform: Affine | Sequence[float]) -> Affine:
    """The map->pixel inverse of a pixel->map affine transform.

    Args:
        transform: An :class:`affine.Affine` or its six coefficients ``a, b, c, d, e, f``
            (rasterio's order; map units per full-resolution pixel, pixel-corner convention).

    Returns:
        The inverse: ``inverse @ (x, y)`` is ``(col, row)`` in full-resolution pixels (floats).

    Raises:
        GeoreferenceError: The transform is degenerate (:func:`is_degenerate_transform`); the
            message says so and what to do.
    """
    from affine import Affine

    coeffs = _coefficients(transform)
    if is_degenerate_transform(coeffs):
        padded = (*coeffs, *([math.nan] * 6))[:6]
        raise GeoreferenceError(
            DEGENERATE_TRANSFORM_TEMPLATE.format(a=padded[0], b=padded[1], d=padded[3], e=padded[4])
        )
    return ~Affine(*coeffs)


def map_to_pixel(x: float, y: float, transform: Affine | Sequence[float]) -> tuple[float, float]:
    """Convert one point from map units of the raster's CRS to full-resolution pixels.

    Args:
        x: Map x (easting, or longitude for a geographic CRS), in CRS units.
        y: Map y (northing, or latitude), in CRS units.
        transform: The raster's pixel->map transform (Affine or six coefficients, rasterio's
            order).

    Returns:
        ``(col, row)`` as floats in full-resolution pixels (pixel-corner frame; may lie outside
        the image).

    Raises:
        GeoreferenceError: The transform cannot be inverted (zero pixel size, NaN).
    """
    col, row = invert_transform(transform) @ (x, y)
    return float(col), float(row)


def map_to_full(box: MapBox, transform: Affine) -> PixelBox:
    """Map a box in map units to full-resolution pixels (envelope of the transformed corners).

    Raises:
        GeoreferenceError: The transform cannot be inverted (zero pixel size, NaN).
    """
    inv = invert_transform(transform)
    corners = [
        inv @ (box.minx, box.miny),
        inv @ (box.maxx, box.miny),
        inv @ (box.minx, box.maxy),
        inv @ (box.maxx, box.maxy),
    ]
    xs = [c[0] for c in corners]
    ys = [c[1] for c in corners]
    return PixelBox(min(xs), min(ys), max(xs), max(ys))


def min_crop_xyxy(box: PixelBox, width: int, height: int, min_side: int = 512) -> PixelBox:
    """Apply the reference method's minimum-crop rule.

    The crop is at least ``min_side x min_side`` full-resolution pixels (or the whole image side
    when the image is smaller), centred on the box, shifted (not shrunk) to stay inside the image.
    A box larger than ``min_side`` keeps its own extent along that axis (clipped to the image).

    Args:
        box: Requested box in full-resolution pixels (assumed finite and non-inverted).
        width: Image width in pixels.
        height: Image height in pixels.
        min_side: Minimum crop side in full-resolution pixels.

    Returns:
        The crop box, inside ``[0, width] x [0, height]``.
    """

    def axis(lo: float, hi: float, size: int) -> tuple[float, float]:
        extent = min(max(hi - lo, float(min_side)), float(size))
        centre = (lo + hi) / 2.0
        start = centre - extent / 2.0
        start = min(max(start, 0.0), size - extent)
        return start, start + extent

    x1, x2 = axis(box.x1, box.x2, width)
    y1, y2 = axis(box.y1, box.y2, height)
    return PixelBox(x1, y1, x2, y2)


def validate_box(box: PixelBox, width: int, height: int) -> tuple[PixelBox, str | None]:
    """Check an untrusted full-resolution box against an image; clip or reject.

    Args:
        box: The box as given.
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        ``(box, warning)``: the box clipped to the image, and a warning text when clipping changed
        it (None otherwise).

    Raises:
        BoxError: For NaN/inf, inverted, empty or entirely-outside boxes.
    """
    if not box.is_finite():
        raise BoxError(BOX_NOT_FINITE_TEMPLATE.format(box=box))
    if box.x2 < box.x1 or box.y2 < box.y1:
        raise InvertedBoxError(BOX_INVERTED_TEMPLATE.format(box=box))
    if box.x2 == box.x1 or box.y2 == box.y1:
        raise BoxError(BOX_EMPTY_TEMPLATE.format(box=box))
    clipped = box.clip(width, height)
    if clipped.area <= 0:
        raise BoxOutsideImageError(BOX_OUTSIDE_TEMPLATE.format(box=box, width=width, height=height))
    if clipped != box:
        return clipped, BOX_CLIPPED_TEMPLATE.format(
            box=box, width=width, height=height, clipped=clipped
        )
    return box, None


def parse_box(text: str) -> PixelBox:
    """Parse a command-line box ``"x1,y1,x2,y2"`` (commas and/or spaces; brackets allowed).

    Raises:
        BoxError: Unless the text holds exactly four numbers.
    """
    cleaned = text.strip().strip("[]()")
    parts = [p for p in cleaned.replace(",", " ").split() if p]
    if len(parts) != 4:
        raise BoxError(BOX_NEEDS_FOUR_TEMPLATE.format(got=text))
    try:
        x1, y1, x2, y2 = (float(p) for p in parts)
    except ValueError:
        raise BoxError(BOX_NEEDS_FOUR_TEMPLATE.format(got=text)) from None
    return PixelBox(x1, y1, x2, y2)


REFERENCE_SIZE_TEMPLATE = "Image sizes must be positive; got {width}x{height} px."


def reference_resized_size(
    width: int, height: int, max_size: int = 512
) -> tuple[int, int]:
    """Size of an image after the reference's ``resize_image`` (long side ``max_size``).

    ``scale = max_size / max(w, h)``; when ``scale < 1`` the image is resized bicubically to
    ``(int(w * scale), int(h * scale))`` -- truncated, so 5000 x 3000 becomes 512 x 307 --,
    otherwise it is left as it is (never upsampled). Lives in the scene engine (the core), which
    renders these sizes and the planner side (:mod:`zoomearth.agent.profiles`) maps boxes with.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        max_size: Long side after resizing.

    Returns:
        ``(width, height)`` after resizing.
    """
    if width <= 0 or height <= 0:
        raise ValueError(REFERENCE_SIZE_TEMPLATE.format(width=width, height=height))
    scale = max_size / max(width, height)
    if scale < 1:
        return int(width * scale), int(height * scale)
    return width, height
