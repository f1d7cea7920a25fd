"""Cloud and haze masks from pixel values: spectral thresholds plus morphology.

Used by the built-in ``cloud_removal`` tool; kept apart so it can be tested (and reused) alone.

The test is the classical one of Fmask-style cloud screening reduced to what an RGB(N) aerial or
satellite image carries. On reflectance scaled to ``[0, 1]`` (pixel value / white level):

* **brightness** ``b = mean(R, G, B)`` -- clouds are bright;
* **whiteness** ``w = mean(|R - b|, |G - b|, |B - b|) / b`` (Zhu & Woodcock 2012) -- clouds are
  grey/white, so their bands are flat;
* **saturation** ``s = (max - min) / max`` of R, G, B (HSV) -- clouds are unsaturated;
* **NIR** (4-band images) -- clouds are bright in the near infrared too, which rejects bright
  water glint and pale, wet surfaces.

A pixel is *thick cloud* when ``b >= brightness`` and ``s <= saturation`` and ``w <= whiteness``
(and ``NIR >= nir_min``); it is *haze* (thin cloud) with the lower ``haze_brightness`` and the
same colour tests, within ``haze_px`` pixels of thick cloud (spectral tests cannot tell thin haze
from pale bare ground on their own). Morphology then cleans the map: an opening removes isolated
bright specks (roofs, cars, glints) smaller than ``2 * open_px + 1`` pixels, a closing fills pin
holes, and the cloud class is dilated by ``dilate_px`` pixels to take in the soft,
semi-transparent cloud edge.
Haze is what remains of the (opened) haze test outside the dilated cloud.

Products that carry a quality band (Landsat QA_PIXEL, Sentinel-2 SCL/cloud masks, a cloud mask
GeoTIFF) plug in through ``quality``: pixels it flags are thick cloud whatever their values (the
threshold test still runs and is combined by union). Everything here works on one tile at a time;
the morphology needs :attr:`MaskThresholds.context_px` pixels of context around a tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CLEAR",
    "CLOUD",
    "HAZE",
    "MASK_NODATA",
    "MaskThresholds",
    "cloud_mask",
    "spectral_indices",
]

#: Classes of the cloud mask (uint8).
CLEAR: Final = 0
CLOUD: Final = 1
HAZE: Final = 2
#: Value of mask pixels where the source is nodata.
MASK_NODATA: Final = 255

_EPS: Final = 1e-6


@dataclass(frozen=True)
class MaskThresholds:
    """Thresholds of the spectral cloud test, on reflectance scaled to ``[0, 1]``.

    Attributes:
        brightness: Least mean RGB brightness of thick cloud.
        haze_brightness: Least mean RGB brightness of haze (thin cloud); above it and below
            ``brightness`` a grey pixel is haze.
        saturation: Largest HSV saturation of cloud and haze.
        whiteness: Largest whiteness (mean absolute deviation of R, G, B over their mean).
        nir_min: Least NIR reflectance of cloud (4-band images only; None skips the test).
        open_px: Radius of the opening that removes bright specks (0: none).
        dilate_px: Dilation of the cloud class, pixels (takes in the soft cloud edge).
        haze_px: Haze is only looked for within this distance (pixels) of thick cloud, where
            thin cloud surrounds the cores; None looks everywhere. Spectral tests alone cannot
            tell thin haze over vegetation from pale bare ground (their brightness, whiteness
            and saturation overlap), so the default keeps bare fields out of the haze class.
    """

    brightness: float = 0.7
    haze_brightness: float = 0.45
    saturation: float = 0.2
    whiteness: float = 0.15
    nir_min: float | None = 0.4
    open_px: int = 2
    dilate_px: int = 2
    haze_px: int | None = 32

    @property
    def context_px(self) -> int:
        """Pixels of context a tile needs around it for the morphology to match a whole read."""
        return 2 * self.open_px + max(self.dilate_px, self.haze_px or 0) + 2


def spectral_indices(
    rgb: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brightness, whiteness and saturation of RGB reflectance.

    Args:
        rgb: ``(3, h, w)`` float32 reflectance scaled to ``[0, 1]`` (R, G, B).

    Returns:
        ``(brightness, whiteness, saturation)``, each ``(h, w)`` float32 (brightness in
        ``[0, 1]``, whiteness >= 0, saturation in ``[0, 1]``).
    """
    import numpy as np

    r, g, b = (np.asarray(c, dtype=np.float32) for c in rgb[:3])
    bright = (r + g + b) / np.float32(3.0)
    denom = np.maximum(bright, np.float32(_EPS))
    white = (np.abs(r - bright) + np.abs(g - bright) + np.abs(b - bright)) / (3.0 * denom)
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    sat = (mx - mn) / np.maximum(mx, np.float32(_EPS))
    return bright, white.astype(np.float32), sat.astype(np.float32)


def _disk(radius: int) -> np.ndarray:
    import cv2

    side = 2 * radius + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))


def cloud_mask(
    rgb: np.ndarray,
    valid: np.ndarray,
    thresholds: MaskThresholds,
    *,
    nir: np.ndarray | None = None,
    quality: np.ndarray | None = None,
) -> np.ndarray:
    """Classify pixels as clear, cloud or haze.

    Args:
        rgb: ``(3, h, w)`` float32 reflectance in ``[0, 1]`` (R, G, B); values under nodata
            pixels are ignored.
        valid: ``(h, w)`` bool, True where the source has data.
        thresholds: The spectral and morphology settings.
        nir: ``(h, w)`` float32 NIR reflectance, or None (RGB images).
        quality: ``(h, w)`` bool, True where a quality band flags cloud; or None.

    Returns:
        ``(h, w)`` uint8: :data:`CLEAR` (0), :data:`CLOUD` (1), :data:`HAZE` (2), and
        :data:`MASK_NODATA` (255) where ``valid`` is False. The input arrays are not modified.
    """
    import cv2
    import numpy as np

    t = thresholds
    bright, white, sat = spectral_indices(rgb)
    grey = (sat <= t.saturation) & (white <= t.whiteness) & valid
    if nir is not None and t.nir_min is not None:
        grey &= np.asarray(nir) >= t.nir_min
    core = grey & (bright >= t.brightness)
    hazy = grey & (bright >= t.haze_brightness)

    def clean(m: np.ndarray) -> np.ndarray:
        u8: np.ndarray = m.astype(np.uint8)
        if t.open_px > 0:
            k = _disk(t.open_px)
            u8 = cv2.morphologyEx(u8, cv2.MORPH_OPEN, k, borderType=cv2.BORDER_REPLICATE)
            u8 = cv2.morphologyEx(u8, cv2.MORPH_CLOSE, k, borderType=cv2.BORDER_REPLICATE)
        return u8.astype(bool)

    cloud = clean(core)
    if quality is not None:
        cloud |= np.asarray(quality, dtype=bool) & valid
    if t.dilate_px > 0 and cloud.any():
        cloud = cv2.dilate(
            cloud.astype(np.uint8), _disk(t.dilate_px), borderType=cv2.BORDER_REPLICATE
        ).astype(bool)
    haze = clean(hazy) & ~cloud
    if t.haze_px is not None and haze.any():
        if cloud.any():
            # Distance (px) of every pixel to the nearest cloud pixel.
            far = cv2.distanceTransform((~cloud).astype(np.uint8), cv2.DIST_L2, 3)
            haze &= far <= t.haze_px
        else:
            haze[:] = False
    out = np.zeros(valid.shape, dtype=np.uint8)
    out[haze] = HAZE
    out[cloud] = CLOUD
    out[~valid] = MASK_NODATA
    return out
