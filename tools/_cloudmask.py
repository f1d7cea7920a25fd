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

**Thin haze away from clouds** -- the Haze Optimized Transform (HOT, Zhang, Guindon & Cihlar
2002). Over clear ground the blue and red reflectances of a scene lie close to one line, the
*clear line* ``blue = slope * red + intercept``; haze scatters more blue than red and lifts a
pixel above it. ``HOT = (blue - slope * red - intercept) / sqrt(1 + slope^2)`` is that lift.
:func:`fit_haze_line` fits the clear line once per call on an overview of the scene (a
regression trimmed to the pixels on and below the line, so hazy pixels do not pull it up) and
sets the threshold from the spread of the clear pixels' HOT; :func:`cloud_mask` then marks as
haze, anywhere in the image, the pixels whose HOT -- smoothed over ``HazeLine.sigma_px``
pixels, since haze is spatially smooth and ground texture is not -- exceeds it. It needs some
clear ground in the scene and a blue band; it is skipped (None) otherwise.

Products that carry a quality band (Landsat QA_PIXEL, Sentinel-2 SCL/cloud masks, a cloud mask
GeoTIFF) plug in through ``quality``: pixels it flags are thick cloud whatever their values (the
threshold test still runs and is combined by union). Everything here works on one tile at a time;
the morphology needs :attr:`MaskThresholds.context_px` pixels of context around a tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CLEAR",
    "CLOUD",
    "HAZE",
    "MASK_NODATA",
    "HazeLine",
    "MaskThresholds",
    "cloud_mask",
    "fit_haze_line",
    "spectral_indices",
]

#: Classes of the cloud mask (uint8).
CLEAR: Final = 0
CLOUD: Final = 1
HAZE: Final = 2
#: Value of mask pixels where the source is nodata.
MASK_NODATA: Final = 255

_EPS: Final = 1e-6
#: HOT: smoothing of the HOT map (Gaussian sigma, full-resolution pixels).
HOT_SIGMA_PX: Final = 6.0
#: HOT: threshold = centre of the clear pixels' HOT + this many of their robust spreads ...
HOT_SPREADS: Final = 4.0
#: ... and at least this far above the centre (reflectance): a uniform scene has no spread.
HOT_MIN_MARGIN: Final = 0.02
#: HOT: least mean RGB brightness of haze (dark water lies above the clear line too).
HOT_MIN_BRIGHTNESS: Final = 0.2
#: HOT: least number of clear pixels to fit the clear line on.
HOT_MIN_PIXELS: Final = 500


@dataclass(frozen=True)
class HazeLine:
    """The clear line and threshold of the Haze Optimized Transform, fitted on one scene.

    Attributes:
        slope: Slope of the clear line ``blue = slope * red + intercept`` (reflectance 0-1).
        intercept: Its intercept.
        threshold: HOT (reflectance units) above which a smoothed pixel is haze.
        sigma_px: Gaussian smoothing of the HOT map before the threshold (full-res pixels).
    """

    slope: float
    intercept: float
    threshold: float
    sigma_px: float = HOT_SIGMA_PX

    def hot(self, red: np.ndarray, blue: np.ndarray) -> np.ndarray:
        """``(h, w)`` float32 HOT of ``(h, w)`` red and blue reflectance."""
        import numpy as np

        norm = np.float32(1.0 / np.sqrt(1.0 + self.slope * self.slope))
        lifted = blue - np.float32(self.slope) * red - np.float32(self.intercept)
        return np.asarray(lifted * norm, dtype=np.float32)

    def context_px(self) -> int:
        """Pixels of context the smoothing needs (OpenCV's float kernel reaches 4 sigma)."""
        return int(math.ceil(4.0 * self.sigma_px)) + 1


def fit_haze_line(
    red: np.ndarray,
    blue: np.ndarray,
    clear: np.ndarray,
    *,
    scale: float = 1.0,
    sigma_px: float = HOT_SIGMA_PX,
) -> HazeLine | None:
    """Fit the HOT clear line and threshold on an overview of the scene.

    The line is a least-squares fit of blue on red, refitted on the 60 % of pixels with the
    lowest residual of the last fit (hazy pixels sit above the line; the trimmed fit follows
    the clear ones). The threshold is the centre of the clear pixels' HOT plus
    :data:`HOT_SPREADS` of their spreads, both estimated from the lower quartile and decile of
    HOT, which haze cannot reach -- and at least :data:`HOT_MIN_MARGIN` above the centre. Both
    are computed on the overview's HOT smoothed like the full-resolution map will be
    (``sigma_px / scale`` overview pixels), so the threshold holds at full resolution.

    Args:
        red: ``(h, w)`` float32 red reflectance of the overview.
        blue: ``(h, w)`` float32 blue reflectance.
        clear: ``(h, w)`` bool, valid pixels that are not cloud.
        scale: Full-resolution pixels per overview pixel (>= 1).
        sigma_px: Smoothing of the full-resolution HOT map (pixels).

    Returns:
        The :class:`HazeLine`, or None when fewer than :data:`HOT_MIN_PIXELS` pixels are clear
        or blue does not follow red (a degenerate scene: the test is skipped).
    """
    import cv2
    import numpy as np

    keep = np.asarray(clear, dtype=bool)
    if int(keep.sum()) < HOT_MIN_PIXELS:
        return None
    r = np.asarray(red, np.float64)
    b = np.asarray(blue, np.float64)
    rk, bk = r[keep], b[keep]
    if float(rk.std()) < 1e-4:
        return None
    sel = np.ones(rk.shape, dtype=bool)
    for _ in range(4):
        slope, intercept = np.polyfit(rk[sel], bk[sel], 1)
        res = bk - (slope * rk + intercept)
        sel = res <= np.quantile(res, 0.6)
    slope, intercept = np.polyfit(rk[sel], bk[sel], 1)
    if not 0.05 <= slope <= 20.0:
        return None  # blue does not follow red: no clear line to measure haze against
    line = HazeLine(float(slope), float(intercept), 0.0, float(sigma_px))
    hot = line.hot(r.astype(np.float32), b.astype(np.float32))
    ov_sigma = sigma_px / max(1.0, float(scale))
    if ov_sigma >= 0.3:
        # Pixels that are not clear take the clear median before smoothing, so cloud and
        # nodata do not bleed into the statistics.
        filled = np.where(keep, hot, np.float32(np.median(hot[keep])))
        hot = cv2.GaussianBlur(filled.astype(np.float32), (0, 0), ov_sigma)
    # Centre and spread of the clear pixels from the lower quartile and decile of HOT, which
    # haze (it only lifts pixels) does not reach while it covers under about 70 % of the scene:
    # for a normal spread, q25 = centre - 0.674 s and q10 = centre - 1.282 s.
    q10, q25 = (float(v) for v in np.quantile(hot[keep], [0.10, 0.25]))
    spread = (q25 - q10) / 0.6071
    centre = q25 + 0.6745 * spread
    threshold = centre + max(HOT_SPREADS * spread, HOT_MIN_MARGIN)
    return HazeLine(float(slope), float(intercept), threshold, float(sigma_px))


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
            (Thin haze away from clouds is found by the HOT test, ``hot``.)
        hot: The scene's HOT clear line (:func:`fit_haze_line`): pixels above its threshold are
            haze anywhere; None skips the test.
    """

    brightness: float = 0.7
    haze_brightness: float = 0.45
    saturation: float = 0.2
    whiteness: float = 0.15
    nir_min: float | None = 0.4
    open_px: int = 2
    dilate_px: int = 2
    haze_px: int | None = 32
    hot: HazeLine | None = None

    @property
    def context_px(self) -> int:
        """Pixels of context a tile needs around it for the morphology to match a whole read."""
        near = max(self.dilate_px, self.haze_px or 0)
        if self.hot is not None:
            near = max(near, self.hot.context_px())
        return 2 * self.open_px + near + 2


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


def _hot_haze(rgb: np.ndarray, use: np.ndarray, bright: np.ndarray, line: HazeLine) -> np.ndarray:
    """``(h, w)`` bool: smoothed HOT above the line's threshold, on bright-enough ``use`` pixels.

    ``use``: valid pixels that are not cloud. The others must not pull their neighbours'
    smoothed HOT (a white cloud lies far above the clear line, and would ring itself with
    haze): they take a value below the threshold (by the least margin) before the smoothing.
    """
    import cv2
    import numpy as np

    hot = line.hot(np.asarray(rgb[0], np.float32), np.asarray(rgb[2], np.float32))
    hot = np.where(use, hot, np.float32(line.threshold - HOT_MIN_MARGIN))
    smooth = cv2.GaussianBlur(hot, (0, 0), line.sigma_px, borderType=cv2.BORDER_REPLICATE)
    return (smooth > line.threshold) & (bright >= HOT_MIN_BRIGHTNESS) & use


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
    if t.hot is not None:
        haze |= _hot_haze(rgb, valid & ~cloud, bright, t.hot)
    out = np.zeros(valid.shape, dtype=np.uint8)
    out[haze] = HAZE
    out[cloud] = CLOUD
    out[~valid] = MASK_NODATA
    return out
