"""The algorithms behind the built-in ``denoise`` tool (:mod:`zoomearth.tools.denoise`).

Pure functions over arrays, no tool plumbing: the robust noise estimate, the default optical
filter (band decorrelation + two-stage sliding-DCT shrinkage), joint non-local means (OpenCV; the
previous default, kept for comparison), the Lee speckle filter and its ``Cu^2`` estimate, and the
learned backend (spandrel restoration checkpoints run in padded sub-tiles). The tool module
re-exports the public ones and calls them through its own globals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.tools.base import ToolInputError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "BandTransform",
    "band_transform",
    "dct_denoise",
    "denoise_array",
    "estimate_noise_sigma",
    "estimate_speckle_cu2",
    "lee_filter",
    "load_restoration_model",
    "nlm_denoise",
]

#: Immerkaer's noise-estimation kernel (its response to white noise of std s has std 6 s).
IMMERKAER_KERNEL: Final = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
#: NLM strength per unit of estimated sigma: uint8 data with the L2 distance, 16-bit with L1.
NLM_H_PER_SIGMA_L2: Final = 0.9
NLM_H_PER_SIGMA_L1: Final = 1.6
NLM_TEMPLATE_SIZE: Final = 7
NLM_SEARCH_SIZE: Final = 21
LEE_WINDOW: Final = 7
#: Sliding-DCT filter: block side (px), hard threshold (in units of the noise std) of stage 1,
#: output rows per strip (bounds the memory of the block_side**2 coefficient maps).
DCT_BLOCK: Final = 8
DCT_THRESHOLD: Final = 2.7
DCT_STRIP_ROWS: Final = 64
#: Pixels of context the two DCT stages need around a pixel: (block - 1) per stage.
DCT_CONTEXT: Final = 2 * (DCT_BLOCK - 1)
#: Noise estimation: share of the highest-gradient pixels left out (texture and edges).
EDGE_FRACTION: Final = 0.1
#: Sub-tiles of a learned model and their context.
MODEL_TILE: Final = 512
MODEL_PAD: Final = 32
NOT_IMAGE_MODEL_TEMPLATE = (
    "The checkpoint {path} is a {kind} model ({arch}), not an image-to-image restoration model; "
    "set denoise_model to a denoising/restoration checkpoint (SwinIR, NAFNet, DnCNN, SCUNet ...)."
)
CHANNELS_TEMPLATE = (
    "Tool 'denoise': the model {arch} takes {model} channel(s) and gives {out}; only 1- and "
    "3-channel models (or one matching the image's {bands} bands) can be used. Call it with "
    "backend 'classical', or configure another denoise_model."
)


def _h_factor(dtype: str) -> float:
    return NLM_H_PER_SIGMA_L2 if dtype == "uint8" else NLM_H_PER_SIGMA_L1


# --------------------------------------------------------------------------------------------
# Noise estimation
# --------------------------------------------------------------------------------------------
def _laplacian_response(band: np.ndarray) -> np.ndarray:
    import cv2
    import numpy as np

    kernel = np.asarray(IMMERKAER_KERNEL, np.float32)
    return cv2.filter2D(band.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT)


def _interpolated_median(values: np.ndarray) -> float:
    """Median of non-negative integer-valued data, interpolated within its integer bin.

    The plain median of integers is an integer, which would quantise the noise estimate in
    steps of ``1.4826 / 6 = 0.25``; here every integer ``k`` stands for the interval
    ``[k - 0.5, k + 0.5]`` (``0`` for ``[0, 0.5]``, since the values are absolute) and the median
    is interpolated linearly inside the bin that holds it. Returns 0.0 when more than half the
    values are exactly 0 (no measurable noise).
    """
    import numpy as np

    ints = np.rint(values).astype(np.int64)
    counts = np.bincount(ints)
    half = ints.size / 2.0
    cdf = np.cumsum(counts)
    k = int(np.searchsorted(cdf, half))
    if k == 0:
        return 0.0
    below = float(cdf[k] - counts[k])
    return float(k - 0.5 + (half - below) / float(counts[k]))


def estimate_noise_sigma(
    samples: list[tuple[np.ndarray, np.ndarray]],
    *,
    limits: tuple[float, float] | None = None,
) -> list[float]:
    """Estimate the std of white Gaussian noise per band (robust Immerkaer estimate).

    Immerkaer's 3 x 3 operator removes smooth structure; its response to white noise of std
    ``s`` has std ``6 s``, and ``sigma = 1.4826 median(|response|) / 6``. Three refinements
    keep image structure and clipping out of the estimate: pixels whose 3 x 3 neighbourhood
    touches the dtype's ``limits`` are left out (clipped noise is smaller noise: bright NIR
    vegetation at 255 made sigma 25 read as 22); the ``EDGE_FRACTION`` of pixels with the
    strongest Sobel gradient are left out (edges and texture read as noise); and for
    integer-valued data the median is interpolated inside its integer bin (no 0.25 steps).

    Args:
        samples: ``(pixels, valid)`` pairs: ``pixels`` ``(bands, h, w)`` in native units (any
            numeric dtype), ``valid`` ``(h, w)`` bool, True where every band is valid. Several
            windows of one region may be given; their responses are pooled.
        limits: The source dtype's ``(min, max)`` for integer types (saturated pixels are
            left out), or None (floats: nothing is saturated).

    Returns:
        One sigma per band, in the pixels' native units (0.0 for a band without enough valid
        interior pixels, e.g. a region smaller than 3 x 3, or without measurable noise).
    """
    import cv2
    import numpy as np

    if not samples:
        return []
    count = samples[0][0].shape[0]
    pooled: list[list[np.ndarray]] = [[] for _ in range(count)]
    integral = [True] * count
    box = np.ones((3, 3), np.uint8)
    for pixels, valid in samples:
        if pixels.shape[1] < 3 or pixels.shape[2] < 3:
            continue
        # Only pixels whose whole 3x3 neighbourhood is valid and inside the window.
        inner = cv2.erode(valid.astype(np.uint8), box, borderValue=0) > 0
        if not inner.any():
            continue
        for b in range(count):
            band = pixels[b]
            ok = inner
            if limits is not None:
                clipped = ((band <= limits[0]) | (band >= limits[1])).astype(np.uint8)
                unclipped = inner & (cv2.dilate(clipped, box) == 0)
                # A band that is mostly saturated keeps its pixels rather than none.
                if unclipped.sum() >= 0.05 * inner.sum():
                    ok = unclipped
            f32 = band.astype(np.float32)
            grad = np.hypot(cv2.Sobel(f32, -1, 1, 0), cv2.Sobel(f32, -1, 0, 1))
            g = grad[ok]
            if g.size >= 20:
                ok = ok & (grad <= np.quantile(g, 1.0 - EDGE_FRACTION))
            values = np.abs(_laplacian_response(band)[ok])
            pooled[b].append(values)
            if integral[b] and not np.array_equal(values, np.rint(values)):
                integral[b] = False
    sigmas = []
    for b, parts in enumerate(pooled):
        values = np.concatenate(parts) if parts else np.zeros(0)
        if values.size == 0:
            sigmas.append(0.0)
            continue
        med = _interpolated_median(values) if integral[b] else float(np.median(values))
        sigmas.append(float(1.4826 * med / 6.0))
    return sigmas


# --------------------------------------------------------------------------------------------
# Classical filters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandTransform:
    """Whitening + decorrelation of the bands, fixed for a whole region (all tiles share it).

    Band ``b`` is divided by its noise std ``scales[i]`` (``b = bands[i]``), so the noise is
    white with unit variance in every band; the whitened bands are centred on ``mean`` and
    rotated by the orthonormal ``matrix`` (rows: principal components of the whitened bands,
    strongest first). An orthonormal rotation keeps white unit noise white and unit, while the
    signal concentrates in the first components: the luminance-like first component carries
    the detail, the others (chroma, NIR contrast) are smooth and get shrunk hard. Bands without
    measurable noise are not in ``bands`` and pass unchanged.

    Attributes:
        bands: Indexes of the filtered bands.
        scales: Noise std of each filtered band (native units).
        mean: Mean of each whitened band.
        matrix: ``len(bands)`` rows of ``len(bands)`` floats.
    """

    bands: tuple[int, ...]
    scales: tuple[float, ...]
    mean: tuple[float, ...]
    matrix: tuple[tuple[float, ...], ...]

    def as_key(self) -> dict[str, Any]:
        """JSON-ready form (part of the tile key of a resumable call)."""
        return {
            "bands": list(self.bands),
            "scales": list(self.scales),
            "mean": list(self.mean),
            "matrix": [list(r) for r in self.matrix],
        }


def band_transform(
    samples: list[tuple[np.ndarray, np.ndarray]],
    sigmas: list[float],
    *,
    max_pixels: int = 262_144,
) -> BandTransform:
    """The region's :class:`BandTransform` from sample windows and the per-band noise std.

    Args:
        samples: ``(pixels, valid)`` pairs as for :func:`estimate_noise_sigma` (invalid pixels
            are ignored).
        sigmas: Noise std per band, native units; bands with ``sigma <= 0`` (or not finite)
            are left out of the filter.
        max_pixels: The covariance uses at most this many valid pixels (a regular subsample).

    Returns:
        The transform (empty ``bands`` when no band has measurable noise).
    """
    import numpy as np

    bands = [b for b, s in enumerate(sigmas) if math.isfinite(s) and s > 0]
    if not bands:
        return BandTransform((), (), (), ())
    scales = np.array([sigmas[b] for b in bands], np.float64)
    parts = [p[bands][:, v] for p, v in samples if v.any()]
    if parts:
        z = np.concatenate(parts, axis=1) / scales[:, None]
    else:
        z = np.zeros((len(bands), 1))
    step = max(1, z.shape[1] // max_pixels)
    z = z[:, ::step]
    mean = z.mean(axis=1)
    if len(bands) == 1:
        matrix = np.ones((1, 1))
    else:
        cov = np.atleast_2d(np.cov(z))
        _, vectors = np.linalg.eigh(cov)
        matrix = vectors[:, ::-1].T  # rows: components, strongest first
    return BandTransform(
        tuple(bands),
        tuple(float(s) for s in scales),
        tuple(float(m) for m in mean),
        tuple(tuple(float(v) for v in row) for row in matrix),
    )


def _dct_basis(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``(n, n)`` float32: row ``u`` is the ``u``-th basis vector."""
    import numpy as np

    k = np.arange(n)
    d = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def _block_coefficients(strip: np.ndarray, basis: np.ndarray) -> list[np.ndarray]:
    """DCT coefficients of every ``n x n`` block of ``strip``, one map per frequency.

    Map ``v * n + u`` holds, at ``(i, j)``, coefficient ``(u, v)`` (vertical, horizontal) of the
    block whose top-left pixel is ``(i, j)``; blocks reaching past the strip read zeros (their
    weight is 0 later). Separable: 8 row filters, then 8 column filters on each.
    """
    import cv2

    n = basis.shape[0]
    out = []
    for v in range(n):
        rows = cv2.filter2D(
            strip, cv2.CV_32F, basis[v][None, :], anchor=(0, 0), borderType=cv2.BORDER_CONSTANT
        )
        for u in range(n):
            out.append(
                cv2.filter2D(
                    rows,
                    cv2.CV_32F,
                    basis[u][:, None],
                    anchor=(0, 0),
                    borderType=cv2.BORDER_CONSTANT,
                )
            )
    return out


def _aggregate_blocks(maps: list[np.ndarray], basis: np.ndarray) -> np.ndarray:
    """Sum over blocks of their inverse DCT: the adjoint of :func:`_block_coefficients`."""
    import cv2

    n = basis.shape[0]
    total: np.ndarray | None = None
    for v in range(n):
        cols: np.ndarray | None = None
        for u in range(n):
            f = cv2.filter2D(
                maps[v * n + u],
                cv2.CV_32F,
                basis[u][::-1].reshape(-1, 1).copy(),
                anchor=(0, n - 1),
                borderType=cv2.BORDER_CONSTANT,
            )
            cols = f if cols is None else cols + f
        assert cols is not None
        r = cv2.filter2D(
            cols,
            cv2.CV_32F,
            basis[v][::-1].reshape(1, -1).copy(),
            anchor=(n - 1, 0),
            borderType=cv2.BORDER_CONSTANT,
        )
        total = r if total is None else total + r
    assert total is not None
    return total


def _dct_stage(
    noisy: np.ndarray, basic: np.ndarray | None, threshold: float, noise: float
) -> np.ndarray:
    """One stage of sliding-DCT shrinkage of one unit-noise component (float32 ``(h, w)``).

    ``basic`` None: hard thresholding of the coefficients of every 8 x 8 block (stride 1) at
    ``threshold``, the DC always kept; blocks are averaged back with weights ``1 / kept`` (BM3D's
    aggregation: sparser blocks are more trustworthy). Otherwise an empirical Wiener filter:
    each coefficient is scaled by ``B^2 / (B^2 + noise^2)`` with ``B`` the coefficient of the same
    block of ``basic``, blocks weighted by ``1 / sum(gain^2)``. The image is mirrored by
    ``block - 1`` px at its edges and processed in strips of ``DCT_STRIP_ROWS`` rows.
    """
    import cv2
    import numpy as np

    n = DCT_BLOCK
    p = n - 1
    basis = _dct_basis(n)
    h, w = noisy.shape
    padded = cv2.copyMakeBorder(noisy, p, p, p, p, cv2.BORDER_REFLECT)
    padded_basic = (
        None if basic is None else cv2.copyMakeBorder(basic, p, p, p, p, cv2.BORDER_REFLECT)
    )
    ones = np.ones((n, n), np.float32)
    out = np.empty((h, w), np.float32)
    for r0 in range(0, h, DCT_STRIP_ROWS):
        r1 = min(h, r0 + DCT_STRIP_ROWS)
        strip = padded[r0 : r1 + 2 * p]
        rows, cols = strip.shape
        coeffs = _block_coefficients(strip, basis)
        inside = np.zeros((rows, cols), np.float32)  # blocks wholly inside the strip
        inside[: rows - n + 1, : cols - n + 1] = 1.0
        if padded_basic is None:
            t = np.float32(threshold)
            kept = np.ones((rows, cols), np.float32)  # the DC
            for c in coeffs[1:]:
                keep = np.abs(c) >= t
                c *= keep
                kept += keep
            weight = inside / kept
        else:
            guide = _block_coefficients(padded_basic[r0 : r1 + 2 * p], basis)
            n2 = np.float32(noise * noise)
            energy = np.zeros((rows, cols), np.float32)
            for c, b in zip(coeffs, guide, strict=True):
                b *= b
                gain = b / (b + n2)
                c *= gain
                gain *= gain
                energy += gain
            weight = inside / np.maximum(energy, np.float32(1e-3))
        for c in coeffs:
            c *= weight
        total = _aggregate_blocks(coeffs, basis)
        norm = cv2.filter2D(weight, cv2.CV_32F, ones, anchor=(p, p), borderType=cv2.BORDER_CONSTANT)
        out[r0:r1] = (total[p : p + r1 - r0] / norm[p : p + r1 - r0])[:, p : p + w]
    return out


def dct_denoise(work: np.ndarray, transform: BandTransform, *, strength: float = 1.0) -> np.ndarray:
    """Default optical filter: decorrelated bands, two-stage sliding 8 x 8 DCT shrinkage.

    The bands are whitened and rotated by ``transform`` (unit white noise in every component),
    and each component is filtered alone: stage 1 hard-thresholds the DCT coefficients of every
    8 x 8 block at ``2.7 strength`` (BM3D's first stage without block matching); stage 2 is an
    empirical Wiener filter of the noisy coefficients guided by stage 1's estimate (noise std
    ``strength``). Results are exact whatever the tiling given ``DCT_CONTEXT`` (14) px of context.

    Args:
        work: ``(bands, h, w)`` float pixels in native units, invalid pixels already filled.
        transform: The region's :class:`BandTransform`.
        strength: Multiplier of the threshold and of the Wiener noise level (1.0: calibrated).

    Returns:
        ``(bands, h, w)`` float64 filtered pixels in native units (bands outside the transform
        are returned unchanged).
    """
    import numpy as np

    out = np.array(work, dtype=np.float64, copy=True)
    if not transform.bands:
        return out
    idx = list(transform.bands)
    scales = np.asarray(transform.scales, np.float64)[:, None, None]
    mean = np.asarray(transform.mean, np.float64)[:, None, None]
    matrix = np.asarray(transform.matrix, np.float64)
    z = out[idx] / scales - mean
    comps = np.einsum("kb,bhw->khw", matrix, z).astype(np.float32)
    for k in range(comps.shape[0]):
        y = np.ascontiguousarray(comps[k])
        basic = _dct_stage(y, None, DCT_THRESHOLD * strength, strength)
        comps[k] = _dct_stage(y, basic, DCT_THRESHOLD * strength, strength)
    back = np.einsum("kb,khw->bhw", matrix, comps.astype(np.float64))
    out[idx] = (back + mean) * scales
    return out


def denoise_array(
    pixels: np.ndarray,
    sigmas: list[float] | None = None,
    *,
    valid: np.ndarray | None = None,
    limits: tuple[float, float] | None = None,
    strength: float = 1.0,
) -> tuple[np.ndarray, list[float]]:
    """The tool's default optical denoising of one in-memory image (estimate, transform, filter).

    Args:
        pixels: ``(bands, h, w)`` pixels in native units (any numeric dtype).
        sigmas: Noise std per band; None estimates it (:func:`estimate_noise_sigma`).
        valid: ``(h, w)`` bool valid mask for the statistics (None: all valid).
        limits: Integer dtype range for the estimate (None: derived from ``pixels.dtype``).
        strength: As for :func:`dct_denoise`.

    Returns:
        ``(filtered, sigmas)``: ``(bands, h, w)`` float64 native units, and the sigmas used.
    """
    import numpy as np

    work = np.asarray(pixels, dtype=np.float64)
    if valid is None:
        valid = np.ones(work.shape[1:], bool)
    if limits is None and np.dtype(pixels.dtype).kind in "iu":
        info = np.iinfo(pixels.dtype)
        limits = (float(info.min), float(info.max))
    if sigmas is None:
        sigmas = estimate_noise_sigma([(work, valid)], limits=limits)
    transform = band_transform([(work, valid)], list(sigmas))
    return dct_denoise(work, transform, strength=strength), list(sigmas)


def _groups(count: int, size: int = 4) -> list[list[int]]:
    """Split band indexes 0..count-1 into balanced consecutive groups of at most ``size``."""
    n = max(1, math.ceil(count / size))
    base, extra = divmod(count, n)
    out, start = [], 0
    for i in range(n):
        k = base + (1 if i < extra else 0)
        out.append(list(range(start, start + k)))
        start += k
    return out


def nlm_denoise(
    work: np.ndarray,
    sigmas: list[float],
    *,
    dtype: str,
    offsets: list[float],
    scales: list[float],
    strength: float = 1.0,
) -> np.ndarray:
    """Non-local means on a tile, bands filtered jointly in groups of up to four.

    Args:
        work: ``(bands, h, w)`` float64 pixels in native units, invalid pixels already filled.
        sigmas: Noise std per band, native units.
        dtype: Source dtype name: ``uint8`` uses 8-bit L2 NLM; other types go through 16-bit
            integers ``u = (v - offset) * scale`` with the L1 distance.
        offsets: Per-band offset of the 16-bit mapping (ignored for ``uint8``).
        scales: Per-band scale of the 16-bit mapping (ignored for ``uint8``).
        strength: Multiplier of ``h`` (1.0: calibrated).

    Returns:
        ``(bands, h, w)`` float64 filtered pixels in native units (bands without measurable noise
        are returned unchanged).
    """
    import cv2
    import numpy as np

    out = work.copy()
    eight_bit = dtype == "uint8"
    for group in _groups(work.shape[0]):
        if eight_bit:
            sig = float(np.mean([sigmas[b] for b in group]))
            h = NLM_H_PER_SIGMA_L2 * strength * sig
            if not math.isfinite(h) or h < 0.1:
                continue
            src = np.clip(np.rint(work[group]), 0, 255).astype(np.uint8)
            hwc = np.ascontiguousarray(np.moveaxis(src, 0, -1))
            res = cv2.fastNlMeansDenoising(hwc, None, float(h), NLM_TEMPLATE_SIZE, NLM_SEARCH_SIZE)
            res = res.reshape(hwc.shape)
            out[group] = np.moveaxis(res, -1, 0).astype(np.float64)
        else:
            sig = float(np.mean([sigmas[b] * scales[b] for b in group]))
            h = NLM_H_PER_SIGMA_L1 * strength * sig
            if not math.isfinite(h) or h < 0.1:
                continue
            mapped = np.stack([(work[b] - offsets[b]) * scales[b] for b in group])
            src = np.clip(np.rint(mapped), 0, 65535).astype(np.uint16)
            hwc = np.ascontiguousarray(np.moveaxis(src, 0, -1))
            res = cv2.fastNlMeansDenoising(
                hwc, [float(h)], None, NLM_TEMPLATE_SIZE, NLM_SEARCH_SIZE, cv2.NORM_L1
            )
            res = np.moveaxis(res.reshape(hwc.shape), -1, 0).astype(np.float64)
            for i, b in enumerate(group):
                out[b] = res[i] / scales[b] + offsets[b]
    return out


def _local_stats(band: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2
    import numpy as np

    img = band.astype(np.float64)
    mean = cv2.boxFilter(img, -1, (window, window), borderType=cv2.BORDER_REFLECT)
    sq = cv2.boxFilter(img * img, -1, (window, window), borderType=cv2.BORDER_REFLECT)
    return mean, np.maximum(sq - mean * mean, 0.0)


def estimate_speckle_cu2(samples: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """Squared speckle coefficient of variation per band (``1 / ENL``) for the Lee filter.

    Args:
        samples: ``(pixels, valid)`` pairs as for :func:`estimate_noise_sigma` (intensity, >= 0).

    Returns:
        Median of the local ``var / mean^2`` (7 x 7 windows) over valid pixels, per band.
    """
    import numpy as np

    if not samples:
        return []
    count = samples[0][0].shape[0]
    pooled: list[list[np.ndarray]] = [[] for _ in range(count)]
    for pixels, valid in samples:
        for b in range(count):
            mean, var = _local_stats(pixels[b], LEE_WINDOW)
            ok = valid & (mean > 0)
            if ok.any():
                pooled[b].append(var[ok] / (mean[ok] ** 2))
    return [float(np.median(np.concatenate(p))) if p else 0.0 for p in pooled]


def lee_filter(band: np.ndarray, cu2: float, window: int = LEE_WINDOW) -> np.ndarray:
    """Lee filter of one SAR intensity band.

    ``out = m + w (I - m)`` with local mean ``m`` and the weight
    ``w = clip(1 - Cu^2 / Ci^2, 0, 1)``, ``Ci^2 = var / m^2`` the local squared coefficient of
    variation: homogeneous areas (``Ci ~ Cu``) get the local mean, edges and point targets keep
    their values.

    Args:
        band: ``(h, w)`` intensity (>= 0), float.
        cu2: Squared coefficient of variation of the speckle (``1 / ENL``).
        window: Odd window side in pixels.

    Returns:
        ``(h, w)`` float64 filtered band.
    """
    import numpy as np

    img = band.astype(np.float64)
    mean, var = _local_stats(img, window)
    ci2 = np.divide(var, mean * mean, out=np.zeros_like(var), where=mean > 0)
    weight = np.clip(1.0 - np.divide(cu2, ci2, out=np.ones_like(ci2), where=ci2 > 0), 0.0, 1.0)
    weight[ci2 <= 0] = 0.0
    return mean + weight * (img - mean)


# --------------------------------------------------------------------------------------------
# Learned backend
# --------------------------------------------------------------------------------------------
def load_restoration_model(path: str | Path, device: str = "cpu") -> Any:
    """Load an image-to-image restoration checkpoint with spandrel (production loading code).

    Args:
        path: ``.pth``/``.pt``/``.ckpt``/``.safetensors`` checkpoint whose architecture spandrel
            detects from the state dict.
        device: torch device string.

    Returns:
        The ``spandrel.ImageModelDescriptor`` in eval mode on ``device``
        (``descriptor.architecture.id`` names the detected architecture, e.g. ``"DnCNN"``).

    Raises:
        ValueError: The checkpoint is not an image-to-image model (e.g. an inpainting model).
        spandrel.UnsupportedModelError: spandrel does not recognise the architecture.
    """
    from spandrel import ImageModelDescriptor, ModelLoader

    descriptor = ModelLoader(device=device).load_from_file(str(path))
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ValueError(
            NOT_IMAGE_MODEL_TEMPLATE.format(
                path=path, kind=type(descriptor).__name__, arch=descriptor.architecture.id
            )
        )
    descriptor.eval()
    return descriptor


def _model_spec(path: Path) -> Any:
    from zoomearth.models import ModelSpec, measure_bytes

    resolved = path.resolve()
    return ModelSpec(
        key=f"denoise:spandrel:{resolved}",
        load=lambda device: load_restoration_model(resolved, device),
        size_bytes=resolved.stat().st_size if resolved.exists() else None,
        move=lambda model, device: model.to(device),
        measure=lambda model: measure_bytes(model.model),
        description=f"denoise model {resolved.name}",
    )


def _run_model_tiled(descriptor: Any, image: np.ndarray, device: str) -> np.ndarray:
    """Run a spandrel model on ``(c, h, w)`` float32 ``[0, 1]`` in padded sub-tiles."""
    import cv2
    import numpy as np
    import torch

    c, h, w = image.shape
    out = np.empty((descriptor.output_channels, h, w), np.float32)
    dtype = next(descriptor.model.parameters()).dtype
    with torch.inference_mode():
        for y0 in range(0, h, MODEL_TILE):
            for x0 in range(0, w, MODEL_TILE):
                y1, x1 = min(y0 + MODEL_TILE, h), min(x0 + MODEL_TILE, w)
                ry0, rx0 = max(0, y0 - MODEL_PAD), max(0, x0 - MODEL_PAD)
                ry1, rx1 = min(h, y1 + MODEL_PAD), min(w, x1 + MODEL_PAD)
                patch = torch.from_numpy(np.ascontiguousarray(image[:, ry0:ry1, rx0:rx1]))
                res = descriptor(patch[None].to(device=device, dtype=dtype))[0]
                arr = res.float().cpu().numpy()
                if descriptor.scale != 1:
                    # Super-resolution-style models: back to the input grid (documented).
                    arr = np.stack(
                        [
                            cv2.resize(a, (rx1 - rx0, ry1 - ry0), interpolation=cv2.INTER_AREA)
                            for a in arr
                        ]
                    )
                out[:, y0:y1, x0:x1] = arr[:, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
    return out


def _learned_denoise(descriptor: Any, unit: np.ndarray, device: str) -> np.ndarray:
    """Apply the model to ``(bands, h, w)`` float32 ``[0, 1]``; returns the same shape."""
    import numpy as np

    bands = unit.shape[0]
    cin, cout = descriptor.input_channels, descriptor.output_channels
    out = np.empty_like(unit)
    if cin == cout == bands:
        return _run_model_tiled(descriptor, unit, device)
    if cin == cout == 1:
        for b in range(bands):
            out[b] = _run_model_tiled(descriptor, unit[b : b + 1], device)[0]
        return out
    if cin == cout == 3:
        start = 0
        if bands >= 3:
            out[:3] = _run_model_tiled(descriptor, unit[:3], device)
            start = 3
        for b in range(start, bands):
            grey = np.repeat(unit[b : b + 1], 3, axis=0)
            out[b] = _run_model_tiled(descriptor, grey, device).mean(axis=0)
        return out
    raise ToolInputError(
        CHANNELS_TEMPLATE.format(arch=descriptor.architecture.id, model=cin, out=cout, bands=bands),
        code="unsupported_image",
        tool="denoise",
    )
