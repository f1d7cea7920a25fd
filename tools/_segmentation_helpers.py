"""Helpers of the built-in ``segmentation`` tool (:mod:`zoomearth.tools.segmentation`).

The working window of a call (:class:`_Work`: the region plus a context margin, seen at a
bounded size, and the resampling back to the region's full-resolution grid), the removal of
small components and holes from a mask, and the one-line summary of the polygons found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zoomearth.geometry import PixelBox

CONTEXT_FRACTION = 0.10
CONTEXT_MIN_PX = 16


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
@dataclass
class _Work:
    """The working window of a call (all boxes full-resolution pixels).

    Attributes:
        region: The region (output grid).
        work: Region + context margin, clipped to the image (what the backend sees).
        rgb: ``(vh, vw, 3)`` uint8 view of ``work``.
        valid_view: ``(vh, vw)`` bool validity of the view.
        sx: View pixels per full-resolution pixel along x (<= 1).
        sy: Same along y.
    """

    region: PixelBox
    work: PixelBox
    rgb: np.ndarray
    valid_view: np.ndarray
    sx: float
    sy: float

    def to_view(self, x: float, y: float) -> tuple[float, float]:
        """Full-resolution pixel coordinates -> view pixel coordinates (continuous)."""
        return (x - self.work.x1) * self.sx, (y - self.work.y1) * self.sy

    def to_region(self, arr: np.ndarray, *, nearest: bool = False) -> np.ndarray:
        """Resample a view-grid array to the region's full-resolution grid.

        Args:
            arr: ``(vh, vw)`` float32 (bilinear) or integer labels (``nearest=True``).
            nearest: Nearest-neighbour instead of bilinear.

        Returns:
            ``(rh, rw)`` array of the same dtype.
        """
        import cv2

        rw, rh = int(self.region.width), int(self.region.height)
        ox = (0.5 + self.region.x1 - self.work.x1) * self.sx - 0.5
        oy = (0.5 + self.region.y1 - self.work.y1) * self.sy - 0.5
        matrix = np.array([[self.sx, 0.0, ox], [0.0, self.sy, oy]], dtype=np.float64)
        flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
        src = arr if arr.dtype != np.uint32 else arr.astype(np.float32)
        return cv2.warpAffine(src, matrix, (rw, rh), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _context_box(region: PixelBox, width: int, height: int) -> PixelBox:
    margin = max(CONTEXT_MIN_PX, round(CONTEXT_FRACTION * max(region.width, region.height)))
    return PixelBox(
        max(0.0, region.x1 - margin),
        max(0.0, region.y1 - margin),
        min(float(width), region.x2 + margin),
        min(float(height), region.y2 + margin),
    )


def _fmt_area(m2: float) -> str:
    text = f"{m2:,.0f} m2" if m2 >= 10 else f"{m2:.1f} m2"
    return text + (f" ({m2 / 10_000:,.2f} ha)" if m2 >= 10_000 else "")


def _remove_small(mask: np.ndarray, min_area: int, region_valid: np.ndarray) -> np.ndarray:
    """Drop object components and fill interior holes smaller than ``min_area`` pixels."""
    import cv2

    if min_area <= 1:
        return mask
    out = mask.copy()
    n, labels, stats, _ = cv2.connectedComponentsWithStats(out.astype(np.uint8), connectivity=4)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area)
    small = small[small > 0]
    if small.size:
        out[np.isin(labels, small)] = False
    background = (~out & region_valid).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    # Background touching the region's edge is open ground, not a hole.
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    holes = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area)
    holes = holes[(holes > 0) & ~np.isin(holes, edge)]
    if holes.size:
        out[np.isin(labels, holes)] = True
    return out


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else round(float(v), 2)


def _summary(gj: Any, polys: list[Any], coverage: float) -> str:
    """``"2 regions, 12,400 m2 total; largest 10,000 m2, centroid (x, y) CRS / pixel (c, r)"``."""
    n = len(polys)
    areas = gj.areas_m2
    cx, cy = gj.pixel_centroids[0]
    pixel = f"pixel ({cx:.0f}, {cy:.0f})"
    if gj.frame == "pixel":
        where = pixel
    elif gj.frame == "lonlat":
        lon, lat = gj.centroids[0]
        where = f"(lon {lon:.6f}, lat {lat:.6f}) / {pixel}"
    else:
        x, y = gj.centroids[0]
        crs = gj.crs if gj.crs and len(gj.crs) < 40 else "scene CRS"
        where = f"({x:.1f}, {y:.1f}) {crs} / {pixel}"
    if all(a is not None for a in areas):
        total = _fmt_area(sum(areas))
        largest = _fmt_area(areas[0])
    else:
        total = f"{sum(p.area_px for p in polys):,} px"
        largest = f"{polys[0].area_px:,} px"
    cover = f"{coverage:.1%} of the valid pixels of the region"
    if n == 1:
        return f"1 region, {total}, centroid {where}; covers {cover}."
    return (
        f"{n} regions, {total} total; largest {largest}, centroid {where}; together they cover "
        f"{cover}."
    )
