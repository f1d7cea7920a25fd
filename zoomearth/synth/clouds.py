"""Synthetic clouds over real imagery, with their true masks: three cloud models.

For measuring cloud masks and cloud removal on real, clean tiles (the NAIP series in
``../shared/data/naip``): each generator blends a cloud layer over a clean image and returns the
cloudy image and the true mask. The layer is an opacity field ``alpha`` in ``[0, 1]`` and a cloud
colour; ``cloudy = clean (1 - alpha) + colour alpha`` on every band (NIR included: clouds are
bright in the near infrared too), rounded and clipped back to the source dtype.

* :func:`soft_blobs` -- soft Gaussian blobs: round clouds with wide, semi-transparent edges. True
  mask: ``alpha >= 0.5``.
* :func:`thin_haze` -- thin uniform haze: one smooth-edged region of low, constant opacity
  (0.3-0.45) over a large part of the image, bluish grey; no thick cloud at all. True mask:
  ``alpha >= half the haze opacity``.
* :func:`fractal_cumulus` -- sharp-edged cumulus: fractal (fBm) value noise thresholded at the
  coverage quantile, opacity ramping over about 2 px at the edge and thickening inside. True
  mask: ``alpha >= 0.45``. The fBm is the scene synthesiser's own
  (:func:`zoomearth.synth.noise._fbm_grid`).

In every model the true mask is the cloud field above its threshold (the ``coverage`` quantile),
so it covers ``coverage`` of the image (up to ties). Everything is a pure function of the image
shape, the seed and the arguments (deterministic). Colours are given on the 0-255 scale and
scaled by ``white / 255`` (``white`` 255 by default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np

__all__ = ["CLOUD_MODELS", "apply_layer", "fractal_cumulus", "soft_blobs", "thin_haze"]

#: Thick cloud colour (R, G, B, NIR, further bands like NIR), 0-255 scale.
CLOUD_COLOUR: Final = (236.0, 238.0, 242.0, 236.0)
#: Haze colour: bluish grey (scattering is stronger in the blue), 0-255 scale.
HAZE_COLOUR: Final = (196.0, 204.0, 218.0, 200.0)

BAD_IMAGE_TEMPLATE = "clean must be a (bands, h, w) image with h, w >= 8; got shape {shape}."
BAD_COVERAGE_TEMPLATE = "coverage must be in (0, 1); got {coverage}."


def _colour(colour: tuple[float, ...], bands: int, white: float) -> np.ndarray:
    """``(bands, 1, 1)`` float32 colour: the first four values, further bands like the 4th."""
    values = [colour[min(b, len(colour) - 1)] for b in range(bands)]
    return (np.asarray(values, np.float32) * np.float32(white / 255.0))[:, None, None]


def apply_layer(clean: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Blend a cloud layer over a clean image.

    Args:
        clean: ``(bands, h, w)`` image, any numeric dtype (not modified).
        alpha: ``(h, w)`` opacity in ``[0, 1]``.
        colour: ``(bands, 1, 1)`` or ``(bands, h, w)`` cloud colour in the image's units.

    Returns:
        ``(bands, h, w)`` cloudy image in ``clean``'s dtype (integers rounded and clipped).
    """
    a = np.asarray(alpha, np.float32)[None]
    out = clean.astype(np.float32) * (np.float32(1.0) - a) + colour * a
    dt = clean.dtype
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return np.clip(np.rint(out), info.min, info.max).astype(dt)
    return out.astype(dt)


def _check(clean: np.ndarray, coverage: float) -> tuple[int, int, int]:
    if clean.ndim != 3 or clean.shape[1] < 8 or clean.shape[2] < 8:
        raise ValueError(BAD_IMAGE_TEMPLATE.format(shape=clean.shape))
    if not 0.0 < coverage < 1.0:
        raise ValueError(BAD_COVERAGE_TEMPLATE.format(coverage=coverage))
    return int(clean.shape[0]), int(clean.shape[1]), int(clean.shape[2])


def _white(clean: np.ndarray, white: float | None) -> float:
    if white is not None:
        return float(white)
    return float(np.iinfo(clean.dtype).max) if clean.dtype == np.uint8 else 255.0


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def soft_blobs(
    clean: np.ndarray, *, seed: int = 0, coverage: float = 0.2, white: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Soft Gaussian blobs: round clouds, opaque cores, wide semi-transparent edges.

    Blobs of random radius (3-12 % of the short side) are added as Gaussians of density; the
    density is thresholded at the quantile that leaves ``coverage`` of the image at
    ``alpha >= 0.5``, and opacity ramps from 0 to 1 over about one blob radius.

    Args:
        clean: ``(bands, h, w)`` clean image (R, G, B[, NIR, ...]); not modified.
        seed: Random seed.
        coverage: Share of pixels in the true mask (about).
        white: Pixel value of white (default 255 for ``uint8``, else 255).

    Returns:
        ``(cloudy, mask)``: the image in ``clean``'s dtype and ``(h, w)`` bool true mask.
    """
    bands, h, w = _check(clean, coverage)
    rng = np.random.default_rng([seed, 1])
    side = min(h, w)
    density = np.zeros((h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    count = max(3, int(round(coverage * h * w / (np.pi * (0.08 * side) ** 2))))
    for _ in range(count):
        r = rng.uniform(0.03, 0.12) * side
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        density += np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2.0 * r * r)).astype(np.float32)
    t = float(np.quantile(density, 1.0 - coverage))
    # alpha 0.5 at the threshold, 0 at 0.4 t, 1 at 1.6 t: a soft edge.
    alpha = _smoothstep((density - 0.4 * t) / (1.2 * t))
    colour = _colour(CLOUD_COLOUR, bands, _white(clean, white))
    return apply_layer(clean, alpha, colour), density >= t


def thin_haze(
    clean: np.ndarray,
    *,
    seed: int = 0,
    coverage: float = 0.4,
    opacity: float | None = None,
    white: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Thin uniform haze: one large smooth region of constant low opacity, no thick cloud.

    A very smooth random field (wavelength about the image side) is thresholded at the
    ``coverage`` quantile with a soft edge of about 4 % of the short side; inside, the opacity
    is the constant ``opacity`` (random in 0.3-0.45 when None), the colour bluish grey.

    Args:
        clean: ``(bands, h, w)`` clean image; not modified.
        seed: Random seed.
        coverage: Share of pixels in the true mask (about).
        opacity: Haze opacity inside the region (None: drawn from the seed).
        white: Pixel value of white (default 255).

    Returns:
        ``(cloudy, mask)``: the image in ``clean``'s dtype and the ``(h, w)`` bool true mask
        (``alpha >= opacity / 2``).
    """
    import cv2

    bands, h, w = _check(clean, coverage)
    rng = np.random.default_rng([seed, 2])
    level = float(rng.uniform(0.3, 0.45)) if opacity is None else float(opacity)
    side = min(h, w)
    coarse = rng.standard_normal((4, 4)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    t = float(np.quantile(field, 1.0 - coverage))
    grad = float(np.median(np.hypot(*np.gradient(field)))) or 1e-6
    ramp = 0.04 * side * grad  # field units over ~4 % of the short side
    alpha = level * _smoothstep(0.5 + (field - t) / max(ramp, 1e-6))
    colour = _colour(HAZE_COLOUR, bands, _white(clean, white))
    return apply_layer(clean, alpha, colour), field >= t


def fractal_cumulus(
    clean: np.ndarray, *, seed: int = 0, coverage: float = 0.2, white: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sharp-edged cumulus from thresholded fractal (fBm) value noise.

    Six octaves of value noise (spacings 256 to 8 px) are thresholded at the ``1 - coverage``
    quantile; opacity rises from 0 to 0.9 over a thin band of the field (about 2 px at the
    edge) and towards 1 inside, where the cloud also whitens.

    Args:
        clean: ``(bands, h, w)`` clean image; not modified.
        seed: Random seed.
        coverage: Share of pixels in the true mask (about).
        white: Pixel value of white (default 255).

    Returns:
        ``(cloudy, mask)``: the image in ``clean``'s dtype and the ``(h, w)`` bool true mask
        (``alpha >= 0.45``).
    """
    from zoomearth.synth.noise import _S_CLOUD, _fbm_grid

    bands, h, w = _check(clean, coverage)
    xs = np.arange(w, dtype=np.float64) + 0.5
    ys = np.arange(h, dtype=np.float64) + 0.5
    v = _fbm_grid(seed, _S_CLOUD, xs, ys, (256.0, 128.0, 64.0, 32.0, 16.0, 8.0))
    t = float(np.quantile(v, 1.0 - coverage))
    grad = float(np.median(np.hypot(*np.gradient(v)))) or 1e-6
    edge = 2.0 * grad  # field units over ~2 px: a sharp edge
    alpha = 0.9 * _smoothstep(0.5 + (v - t) / edge) + 0.1 * _smoothstep((v - t) / (20 * edge))
    thick = _smoothstep((v - t) / (20 * edge))[None]
    grey = _colour((206.0, 208.0, 214.0, 206.0), bands, _white(clean, white))
    colour = grey + (_colour(CLOUD_COLOUR, bands, _white(clean, white)) - grey) * thick
    return apply_layer(clean, alpha.astype(np.float32), colour), v >= t


#: The three cloud models by name: ``fn(clean, seed=..., coverage=...) -> (cloudy, mask)``.
CLOUD_MODELS: Final[dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]]] = {
    "blobs": soft_blobs,
    "haze": thin_haze,
    "cumulus": fractal_cumulus,
}
