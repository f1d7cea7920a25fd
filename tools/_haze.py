"""Thin-cloud/haze removal with the dark channel prior (He, Sun & Tang, CVPR 2009 / TPAMI 2011).

Haze model: ``I = J t + A (1 - t)`` with ``I`` the observed reflectance, ``J`` the scene,
``A`` the atmospheric light (per band) and ``t`` the transmission. In haze-free outdoor images,
most patches hold a pixel that is dark in some colour band (shadow, vegetation, water), so the
*dark channel* ``min_patch(min_c I_c / A_c)`` estimates the haze, ``t = 1 - omega * dark``, and
``J = (I - A) / max(t, t0) + A``. The blocky transmission is refined with the guided filter
(He, Sun & Tang, ECCV 2010), implemented here with box filters (``cv2.boxFilter``) because
``cv2.ximgproc`` is not part of the headless OpenCV wheel.

Remote-sensing choices:

* the dark channel uses R, G, B only (vegetation is bright in the NIR, which would hide the haze),
  and the transmission found there is applied to every band with that band's ``A``;
* ``A`` is computed **once** per call from the region's overview (mean of the pixels with the
  0.1 % highest dark channel), then shared by every tile, so tiles of a streamed scene agree;
* the caller blends the result in only where the cloud mask finds haze (feathered): bright bare
  ground has a high dark channel too, and the prior would wrongly darken it.

All arrays are float32 reflectance scaled to ``[0, 1]`` (pixel value / white level). They must
be finite: OpenCV's erosion and box filters spread NaN over whole windows, so nodata pixels are
first given a neutral value with :func:`fill_invalid` (and restored by the caller afterwards).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import numpy as np

__all__ = ["atmospheric_light", "dark_channel", "dehaze", "fill_invalid", "guided_filter"]

#: Side of the dark-channel patch (pixels).
DARK_PATCH: Final = 15
#: Radius and regularisation of the guided filter that refines the transmission.
GUIDED_RADIUS: Final = 24
GUIDED_EPS: Final = 1e-3
#: Haze kept on purpose (1 - omega), so the result keeps depth and does not look over-processed.
OMEGA: Final = 0.95
#: Transmission floor: below it noise would be amplified (thick cloud is inpainted instead).
T_FLOOR: Final = 0.1
#: Share of the brightest dark-channel pixels that define the atmospheric light.
TOP_FRACTION: Final = 0.001
#: Pixels of context a tile needs for the dark channel and the guided filter.
CONTEXT_PX: Final = DARK_PATCH // 2 + 2 * GUIDED_RADIUS


def fill_invalid(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Give nodata and non-finite pixels a neutral value: the band's median of its valid pixels.

    Args:
        image: ``(bands, h, w)`` float array.
        valid: ``(h, w)`` bool, True where the pixel has data.

    Returns:
        ``(bands, h, w)`` float32, finite everywhere (0 in a band with no valid pixel); ``image``
        itself (not a copy) when nothing needs filling.
    """
    import numpy as np

    x = np.asarray(image, dtype=np.float32)
    good = np.isfinite(x) & np.asarray(valid, dtype=bool)[None]
    if good.all():
        return x
    out = x.copy()
    for b in range(out.shape[0]):
        bad = ~good[b]
        if bad.any():
            vals = x[b][good[b]]
            out[b][bad] = np.float32(np.median(vals)) if vals.size else np.float32(0.0)
    return out


def dark_channel(rgb: np.ndarray, patch: int = DARK_PATCH) -> np.ndarray:
    """Dark channel: the minimum over R, G, B and over a ``patch x patch`` window.

    Args:
        rgb: ``(3, h, w)`` float32 in ``[0, 1]`` (already divided by ``A`` when estimating ``t``).
        patch: Window side in pixels (odd).

    Returns:
        ``(h, w)`` float32.
    """
    import cv2
    import numpy as np

    low = np.min(np.asarray(rgb, dtype=np.float32), axis=0)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    return cv2.erode(low, kernel, borderType=cv2.BORDER_REPLICATE)


def guided_filter(
    guide: np.ndarray, src: np.ndarray, radius: int = GUIDED_RADIUS, eps: float = GUIDED_EPS
) -> np.ndarray:
    """Edge-preserving smoothing of ``src`` guided by ``guide`` (grey-scale guided filter).

    Args:
        guide: ``(h, w)`` float32 guidance image (e.g. the grey-level input).
        src: ``(h, w)`` float32 image to filter (e.g. the raw transmission).
        radius: Window radius in pixels.
        eps: Regularisation; larger smooths more across edges.

    Returns:
        ``(h, w)`` float32 filtered ``src``.
    """
    import cv2
    import numpy as np

    i = np.asarray(guide, dtype=np.float32)
    p = np.asarray(src, dtype=np.float32)
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, size, normalize=True, borderType=cv2.BORDER_REFLECT)

    mean_i = box(i)
    mean_p = box(p)
    cov_ip = box(i * p) - mean_i * mean_p
    var_i = box(i * i) - mean_i * mean_i
    a = cov_ip / (var_i + np.float32(eps))
    b = mean_p - a * mean_i
    return box(a) * i + box(b)


def atmospheric_light(
    image: np.ndarray,
    rgb_index: tuple[int, int, int],
    valid: np.ndarray,
    top_fraction: float = TOP_FRACTION,
) -> np.ndarray | None:
    """Atmospheric light per band: mean of the pixels with the highest dark channel.

    Args:
        image: ``(bands, h, w)`` float32 reflectance in ``[0, 1]`` (an overview of the region).
        rgb_index: Positions of R, G, B among the bands.
        valid: ``(h, w)`` bool, True where the pixel has data.
        top_fraction: Share of valid pixels used (at least 1 pixel).

    Returns:
        ``(bands,)`` float32, clipped to ``[0.05, 1]``; None when no pixel is valid.
    """
    import numpy as np

    valid = np.asarray(valid, dtype=bool) & np.isfinite(image).all(axis=0)
    if not valid.any():
        return None
    image = fill_invalid(image, valid)  # NaN would spread through the dark channel's erosion
    dark = dark_channel(image[list(rgb_index)])
    values = dark[valid]
    n = max(1, int(round(values.size * top_fraction)))
    cut = np.partition(values, values.size - n)[values.size - n]
    pick = valid & (dark >= cut)
    light = np.array([float(image[b][pick].mean()) for b in range(image.shape[0])], np.float32)
    return np.clip(light, 0.05, 1.0).astype(np.float32)


def dehaze(
    image: np.ndarray,
    rgb_index: tuple[int, int, int],
    light: np.ndarray,
    *,
    omega: float = OMEGA,
    t_floor: float = T_FLOOR,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove haze from every band with the dark channel prior and a guided-filter transmission.

    Args:
        image: ``(bands, h, w)`` float32 reflectance in ``[0, 1]``; not modified. Non-finite
            pixels are treated as the atmospheric light (fill nodata with :func:`fill_invalid`
            first for a more neutral context).
        rgb_index: Positions of R, G, B among the bands (the dark channel and the guide use them).
        light: ``(bands,)`` atmospheric light (see :func:`atmospheric_light`).
        omega: Fraction of the haze removed.
        t_floor: Least transmission.

    Returns:
        ``(dehazed, transmission)``: ``(bands, h, w)`` float32 (not clipped) and ``(h, w)``
        float32 in ``[t_floor, 1]``.
    """
    import numpy as np

    a = np.asarray(light, dtype=np.float32).reshape(-1, 1, 1)
    image = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        image = np.where(finite, image, a)  # NaN would spread over the filters' windows
    rgb = image[list(rgb_index)]
    a_rgb = a[list(rgb_index)]
    raw = np.float32(1.0) - np.float32(omega) * dark_channel(rgb / a_rgb)
    grey = rgb.mean(axis=0)
    t = np.clip(guided_filter(grey, raw), t_floor, 1.0).astype(np.float32)
    out = (image - a) / t[None] + a
    return out, t
