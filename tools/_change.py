"""Array algorithms of the built-in ``change_detection`` tool.

The tool itself is :mod:`zoomearth.tools.change_detection`.

Everything here works on numpy arrays on one common grid (the reference grid of a time stack):
``(bands, h, w)`` float32 pixels of two dates and an ``(h, w)`` bool validity map. No I/O.

Change magnitude
----------------
1. Each date is smoothed with a small Gaussian (:data:`SMOOTH_SIGMA` px) so that sensor noise
   and sub-pixel misregistration between dates do not read as change.
2. **Radiometric normalisation**: every channel of every date becomes a robust z-score
   ``(x - median) / (1.4826 MAD)`` with the median and MAD of that date over the valid pixels
   of the region (:func:`channel_stats`). A global gain/offset between dates (another sensor,
   sun angle, processing) cancels; what remains is *local* change of a pixel relative to its
   own date's radiometry.
3. **Spectral magnitude**: the RMS over the bands of the per-band z-score differences.
4. **NDVI magnitude** (when a NIR band exists): ``|z(NDVI_after) - z(NDVI_before)|``, the NDVI of
   each date z-scored like a band. Vegetation gained or lost shows strongly here even where the
   visible bands barely change.
5. The **magnitude** combines the two with equal weight: ``sqrt((spectral^2 + ndvi^2) / 2)``
   (the spectral magnitude alone without NIR, the NDVI one alone for ``method="ndvi"``).

Threshold and clean-up
----------------------
The default threshold is Otsu's (:func:`otsu_threshold`) on the magnitude histogram over the
region's valid pixels (:data:`HIST_BINS` bins over ``[0, HIST_MAX]``: a fixed range, so tiles'
histograms add up exactly). The binary map is cleaned with a 3 x 3 opening (drops isolated
pixels) and a 3 x 3 closing (joins pixels of one object), then connected components smaller than
the minimum area are removed (:func:`clean_mask`).
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = [
    "HIST_BINS",
    "HIST_MAX",
    "SMOOTH_SIGMA",
    "ChannelStats",
    "change_magnitude",
    "channel_stats",
    "clean_mask",
    "magnitude_histogram",
    "ndvi",
    "otsu_threshold",
]

#: Gaussian smoothing of each date before differencing (pixels).
SMOOTH_SIGMA: Final = 1.0
#: Histogram of the magnitude: bins over [0, HIST_MAX] z-units (larger values go to the last bin).
HIST_BINS: Final = 2048
HIST_MAX: Final = 16.0
#: Smallest robust scale of a channel (a constant channel must not divide by zero).
MIN_SCALE: Final = 1e-6
#: MAD -> standard deviation of a normal distribution.
MAD_TO_STD: Final = 1.4826


class ChannelStats:
    """Robust centre and scale of each channel of one date over a region.

    Attributes:
        center: ``(channels,)`` float64 medians.
        scale: ``(channels,)`` float64 robust standard deviations (1.4826 MAD, or the standard
            deviation where the MAD is zero), at least :data:`MIN_SCALE`.
    """

    def __init__(self, center: np.ndarray, scale: np.ndarray) -> None:
        self.center = np.asarray(center, dtype=np.float64)
        self.scale = np.maximum(np.asarray(scale, dtype=np.float64), MIN_SCALE)

    def as_lists(self) -> list[list[float]]:
        """``[center, scale]`` as plain floats (JSON, tile keys)."""
        return [
            [round(float(v), 6) for v in self.center],
            [round(float(v), 6) for v in self.scale],
        ]


def smooth(x: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """Gaussian-smooth each channel of ``(channels, h, w)`` float32 (reflected borders)."""
    import cv2

    if sigma <= 0:
        return x
    return np.stack([cv2.GaussianBlur(c, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for c in x])


def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """``(nir - red) / (nir + red)`` as float32, 0 where both are 0 (``(h, w)`` arrays)."""
    r = red.astype(np.float32)
    n = nir.astype(np.float32)
    den = n + r
    out = np.zeros_like(den)
    np.divide(n - r, den, out=out, where=np.abs(den) > 1e-12)
    return out


def with_ndvi(x: np.ndarray, red: int | None, nir: int | None) -> np.ndarray:
    """The channels of one date: its bands, plus NDVI as a last channel when ``nir`` is given.

    Args:
        x: ``(bands, h, w)`` float32 pixels.
        red: 0-based red band, or None.
        nir: 0-based NIR band, or None (no NDVI channel).

    Returns:
        ``(bands [+1], h, w)`` float32.
    """
    if nir is None or red is None:
        return x
    return np.concatenate([x, ndvi(x[red], x[nir])[None]], axis=0)


def channel_stats(x: np.ndarray, valid: np.ndarray) -> ChannelStats:
    """Median and robust scale of each channel over the valid pixels.

    Args:
        x: ``(channels, h, w)`` float32 (already smoothed, NDVI channel included).
        valid: ``(h, w)`` bool.

    Returns:
        The statistics (centre 0, scale 1 for channels without a valid pixel).
    """
    n = x.shape[0]
    center = np.zeros(n)
    scale = np.ones(n)
    if not valid.any():
        return ChannelStats(center, scale)
    for c in range(n):
        v = x[c][valid].astype(np.float64)
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med))) * MAD_TO_STD
        if mad <= MIN_SCALE:  # mostly constant (a flat or saturated band): fall back to the std
            mad = float(v.std())
        center[c], scale[c] = med, mad
    return ChannelStats(center, scale)


def change_magnitude(
    before: np.ndarray,
    after: np.ndarray,
    stats_before: ChannelStats,
    stats_after: ChannelStats,
    *,
    bands: int,
    use_spectral: bool = True,
    use_ndvi: bool = False,
) -> np.ndarray:
    """Per-pixel change magnitude between two dates, in robust z-units.

    Args:
        before: ``(channels, h, w)`` float32 smoothed channels of the earlier date (its bands
            first, then NDVI when ``use_ndvi``).
        after: Same for the later date, on the same grid.
        stats_before: :func:`channel_stats` of ``before`` over the region.
        stats_after: Same for ``after``.
        bands: How many of the channels are spectral bands (the rest is the NDVI channel).
        use_spectral: Include the RMS of the band differences.
        use_ndvi: Include the NDVI difference (the channel after the bands).

    Returns:
        ``(h, w)`` float32 magnitude >= 0 (see the module docstring).
    """
    zb = (before - stats_before.center[:, None, None]) / stats_before.scale[:, None, None]
    za = (after - stats_after.center[:, None, None]) / stats_after.scale[:, None, None]
    d = (za - zb).astype(np.float32)
    parts: list[np.ndarray] = []
    if use_spectral:
        parts.append(np.mean(d[:bands] ** 2, axis=0))
    if use_ndvi:
        parts.append(d[bands] ** 2)
    if not parts:
        raise ValueError("change_magnitude needs the spectral or the NDVI part")
    return np.sqrt(sum(parts) / len(parts)).astype(np.float32)


def magnitude_histogram(magnitude: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Counts of the valid magnitudes in :data:`HIST_BINS` bins over ``[0, HIST_MAX]``.

    Values above :data:`HIST_MAX` count in the last bin, so histograms of tiles add up to the
    region's exactly. Returns ``(HIST_BINS,)`` int64.
    """
    v = np.clip(magnitude[valid], 0.0, HIST_MAX)
    idx = np.minimum((v * (HIST_BINS / HIST_MAX)).astype(np.int64), HIST_BINS - 1)
    return np.bincount(idx, minlength=HIST_BINS).astype(np.int64)


def otsu_threshold(hist: np.ndarray, *, lo: float = 0.0, hi: float = HIST_MAX) -> float:
    """Otsu's threshold of a histogram (maximum between-class variance).

    Args:
        hist: ``(bins,)`` counts over ``[lo, hi]`` in equal bins.
        lo: Value of the first bin's lower edge.
        hi: Value of the last bin's upper edge.

    Returns:
        The threshold value (a bin edge): values above it form the upper class. ``hi`` when the
        histogram is empty or holds a single value (nothing can be separated).
    """
    h = np.asarray(hist, dtype=np.float64)
    total = h.sum()
    n = h.size
    if total <= 0 or np.count_nonzero(h) < 2:
        return float(hi)
    width = (hi - lo) / n
    centers = lo + (np.arange(n) + 0.5) * width
    w0 = np.cumsum(h)  # pixels in bins 0..k (the lower class)
    w1 = total - w0
    m0 = np.cumsum(h * centers)
    mu_t = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 / total - m0) ** 2 / (w0 * w1 / total)
    between[(w0 == 0) | (w1 == 0)] = -1.0
    k = int(np.argmax(between))
    return float(lo + (k + 1) * width)


def clean_mask(
    changed: np.ndarray,
    valid: np.ndarray,
    *,
    min_area_px: int = 0,
    keep_edge: bool = True,
) -> np.ndarray:
    """Morphological clean-up of a binary change map.

    Args:
        changed: ``(h, w)`` bool, magnitude above the threshold.
        valid: ``(h, w)`` bool; invalid pixels are never changed.
        min_area_px: Connected components (8-connected) with fewer pixels are removed.
        keep_edge: Keep small components touching the array's edge (a streamed tile cannot
            tell their true size: they may continue in the next tile).

    Returns:
        ``(h, w)`` bool.
    """
    import cv2

    m = (changed & valid).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    m = (m.astype(bool) & valid).astype(np.uint8)
    if min_area_px > 1 and m.any():
        _n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA]
        small = area < min_area_px
        small[0] = False
        if keep_edge:
            h, w = m.shape
            x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
            bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
            edge = (x == 0) | (y == 0) | (x + bw >= w) | (y + bh >= h)
            small &= ~edge
        if small.any():
            m[small[labels]] = 0
    return m.astype(bool)
