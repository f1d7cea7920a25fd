"""The algorithms behind the built-in ``denoise`` tool (:mod:`zoomearth.tools.denoise`).

Pure functions over arrays, no tool plumbing: the robust Immerkaer noise estimate, joint
non-local means (OpenCV), the Lee speckle filter and its ``Cu^2`` estimate, and the learned
backend (spandrel restoration checkpoints run in padded sub-tiles). The tool module re-exports
the public ones and calls them through its own globals.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.tools.base import ToolInputError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
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


def estimate_noise_sigma(
    samples: list[tuple[np.ndarray, np.ndarray]],
) -> list[float]:
    """Estimate the std of white Gaussian noise per band (robust Immerkaer estimate).

    Args:
        samples: ``(pixels, valid)`` pairs: ``pixels`` ``(bands, h, w)`` in native units (any
            numeric dtype), ``valid`` ``(h, w)`` bool, True where every band is valid. Several
            windows of one region may be given; their responses are pooled.

    Returns:
        One sigma per band, in the pixels' native units (0.0 for a band without enough valid
        interior pixels, e.g. a region smaller than 3 x 3).
    """
    import cv2
    import numpy as np

    if not samples:
        return []
    count = samples[0][0].shape[0]
    pooled: list[list[np.ndarray]] = [[] for _ in range(count)]
    for pixels, valid in samples:
        if pixels.shape[1] < 3 or pixels.shape[2] < 3:
            continue
        # Only pixels whose whole 3x3 neighbourhood is valid and inside the window.
        inner = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0) > 0
        if not inner.any():
            continue
        for b in range(count):
            pooled[b].append(np.abs(_laplacian_response(pixels[b])[inner]))
    sigmas = []
    for parts in pooled:
        if not parts:
            sigmas.append(0.0)
            continue
        values = np.concatenate(parts)
        sigmas.append(float(1.4826 * np.median(values) / 6.0))
    return sigmas


# --------------------------------------------------------------------------------------------
# Classical filters
# --------------------------------------------------------------------------------------------
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
