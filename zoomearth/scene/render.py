"""Band mapping and display stretch: how a raster's bands become an RGB uint8 view.

:class:`BandMapping` says which source bands are shown as RGB (and which is alpha);
:func:`explicit_mapping` checks a mapping the user chose and :func:`auto_mapping` chooses one from
the colour interpretation and band count. :func:`stretch_range` computes the display range of
non-uint8 data from a sample of valid values; :func:`to_uint8` scales values into 0-255;
:func:`palette_lut` turns a GDAL colour table into a lookup table.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoomearth.errors import BandLayoutError

__all__ = [
    "BAD_BANDS_TEMPLATE",
    "BAND_LAYOUT_TEMPLATE",
    "BandMapping",
    "alpha_index",
    "auto_mapping",
    "explicit_mapping",
    "palette_lut",
    "stretch_range",
    "to_uint8",
]

BAND_LAYOUT_TEMPLATE = (
    "{path} has {count} bands (colour interpretation: {interp}); which to show as RGB is "
    "ambiguous. Choose bands explicitly: Scene.open(path, bands=(R, G, B)) or on the command "
    "line --bands R,G,B (1-based, e.g. --bands 3,2,1), or a single band for grey."
)
BAD_BANDS_TEMPLATE = (
    "Band mapping {bands} is invalid for {path} with {count} bands: give 1 or 3 band numbers "
    "between 1 and {count}."
)


@dataclass(frozen=True)
class BandMapping:
    """Which source bands form the displayed image.

    Attributes:
        rgb: 1-based band indexes shown as (R, G, B), or a 1-tuple for grey.
        alpha: 1-based index of an alpha band, or None.
        note: How the mapping was chosen (shown by ``info``).
    """

    rgb: tuple[int, ...]
    alpha: int | None = None
    note: str = ""



def alpha_index(colorinterp: tuple[str, ...]) -> int | None:
    """1-based index of the first band interpreted as alpha, or None."""
    for i, name in enumerate(colorinterp, start=1):
        if name == "alpha":
            return i
    return None


def explicit_mapping(
    bands: tuple[int, ...], count: int, colorinterp: tuple[str, ...], path: str | os.PathLike[str]
) -> BandMapping:
    """The mapping the user chose (1 or 3 band numbers in 1..count), with the alpha band if any.

    Raises:
        BandLayoutError: Not 1 or 3 bands, or a band outside the raster.
    """
    if len(bands) not in (1, 3) or any(not 1 <= b <= count for b in bands):
        raise BandLayoutError(
            BAD_BANDS_TEMPLATE.format(bands=list(bands), path=path, count=count)
        )
    alpha = alpha_index(colorinterp)
    return BandMapping(tuple(int(b) for b in bands), alpha, "explicit band mapping")


def auto_mapping(
    colorinterp: tuple[str, ...], count: int, path: str | os.PathLike[str]
) -> BandMapping:
    """The mapping chosen from the colour interpretation and the band count.

    Raises:
        BandLayoutError: Which bands to show as RGB is ambiguous (the message says how to choose).
    """
    interp = colorinterp
    alpha = alpha_index(interp)
    if all(c in interp for c in ("red", "green", "blue")):
        rgb = (interp.index("red") + 1, interp.index("green") + 1, interp.index("blue") + 1)
        return BandMapping(rgb, alpha, "RGB by colour interpretation")
    n_colour = count - (1 if alpha else 0)
    if n_colour == 1:
        return BandMapping((1,), alpha, "single band shown as grey")
    if n_colour == 3:
        return BandMapping((1, 2, 3), alpha, "3 bands assumed R,G,B")
    if count == 4 and alpha is None:
        return BandMapping(
            (1, 2, 3), None, "4 bands assumed R,G,B,NIR; pass bands= for other orders"
        )
    raise BandLayoutError(
        BAND_LAYOUT_TEMPLATE.format(path=path, count=count, interp=", ".join(interp) or "none")
    )


def stretch_range(
    values: np.ndarray, percentiles: tuple[float, float], dtype: str
) -> tuple[float, float]:
    """Display range ``(lo, hi)`` for non-uint8 data: joint percentiles of the valid values.

    Args:
        values: The valid sample values as float64, shape ``(n,)``; non-finite ones are ignored.
        percentiles: ``(low, high)`` percentiles (setting ``stretch_percentiles``).
        dtype: The source dtype: a constant image is placed within an integer dtype's range.

    Returns:
        ``lo < hi``; ``(0.0, 1.0)`` when there is no finite value.
    """
    values = values[np.isfinite(values)]
    lo_p, hi_p = percentiles
    if values.size == 0:
        lo, hi = 0.0, 1.0
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            lo, hi = (float(v) for v in np.percentile(values, [lo_p, hi_p]))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            # Interpolating between values near the float64 limits overflowed.
            lo, hi = float(values.min()), float(values.max())
        if hi <= lo:  # constant image: place it within the dtype's range instead of at 0
            dt = np.dtype(dtype)
            if np.issubdtype(dt, np.integer):
                lo, hi = float(min(0, lo)), float(max(np.iinfo(dt).max, hi + 1))
            else:
                lo, hi = lo - 0.5, lo + 0.5
                if hi <= lo:  # |lo| above 2**53: the 0.5 was lost to rounding
                    lo, hi = math.nextafter(lo, -math.inf), lo
    return lo, hi


def to_uint8(raw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scale ``raw`` linearly so that ``lo`` -> 0 and ``hi`` -> 255; uint8, same shape.

    NaN becomes 0, +Inf 255 and -Inf 0; values outside ``[lo, hi]`` are clipped.
    """
    # float32 as always, except for float64 sources: their values beyond 3.4e38 would
    # overflow in the cast. Whatever overflow is left only produces values that nan_to_num
    # maps on purpose, so numpy's warnings about it are silenced rather than shown to users.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        span = hi - lo
        if math.isfinite(span):
            wide = raw.dtype == np.float64
            values = raw.astype(np.float64) if wide else raw.astype(np.float32)
            scaled = (values - lo) * (255.0 / span)
        else:  # a range near the float64 limits: halved, so that the span cannot overflow
            half_span = hi * 0.5 - lo * 0.5
            scaled = (raw.astype(np.float64) * 0.5 - lo * 0.5) * (255.0 / half_span)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def palette_lut(cmap: dict[int, Any]) -> np.ndarray:
    """A GDAL colour table (``{index: (r, g, b, a)}``) as a lookup table: ``(256, 3)`` uint8."""
    lut = np.zeros((256, 3), np.uint8)
    for k, rgba in cmap.items():
        if 0 <= k < 256:
            lut[k] = rgba[:3]
    return lut
