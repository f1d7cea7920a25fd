"""The backends behind the built-in ``edit`` tool (:mod:`zoomearth.tools.edit`).

Mask placement (a mask artifact read onto the grid of the call's region), the classical
backend (OpenCV Telea / Navier-Stokes inpainting, band by band through 16-bit integers) and the
learned one (a diffusers InstructPix2Pix pipeline as a model-pool spec, and one edit with it).
The tool module re-exports the public names and calls them through its own globals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from zoomearth.tools.base import ToolInputError

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.artifacts import Artifact
    from zoomearth.geometry import PixelBox
    from zoomearth.models import ModelSpec

__all__ = [
    "classical_inpaint",
    "instruct_edit_spec",
    "load_mask_for_region",
]

INSET_FRACTION: Final = 0.125
INSET_MIN_PX: Final = 4
INPAINT_RADIUS: Final = 5
#: Rough device memory of a Stable Diffusion 1.x InstructPix2Pix pipeline in float16 (bytes).
PIX2PIX_BYTES: Final = 2_600_000_000
MASK_PLACEMENT_TEMPLATE = (
    "Tool 'edit': cannot tell where mask {ref} lies in the image (no source window tag and no "
    "region); use a mask written by a zoomearth tool such as segmentation."
)
MASK_READ_TEMPLATE = "Tool 'edit': cannot read mask {ref} ({path}): {reason}"


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def load_mask_for_region(art: Artifact, region: PixelBox, scene_size: tuple[int, int]) -> Any:
    """Read a mask artifact onto the grid of ``region``.

    Args:
        art: The mask artifact (a single-band raster; values > 0 and != nodata select pixels).
        region: Full-resolution region (integer edges) of the current call.
        scene_size: ``(width, height)`` of the scene, for masks covering the whole image.

    Returns:
        ``(height, width)`` bool array in the region's pixel frame.

    Raises:
        ToolInputError: The mask cannot be read or placed.
    """
    import warnings

    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.windows import Window

    x0, y0, x1, y1 = (int(v) for v in region.as_list())
    out = np.zeros((y1 - y0, x1 - x0), bool)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(art.path) as ds:
                tag = ds.tags().get("ZOOMEARTH_SOURCE_WINDOW")
                if tag:
                    mc, mr, mw, mh = (float(v) for v in tag.split(","))
                elif art.region_xyxy is not None:
                    ax1, ay1, ax2, ay2 = art.region_xyxy
                    mc, mr, mw, mh = ax1, ay1, ax2 - ax1, ay2 - ay1
                elif (ds.width, ds.height) == tuple(scene_size):
                    mc, mr, mw, mh = 0.0, 0.0, float(ds.width), float(ds.height)
                else:
                    raise ToolInputError(
                        MASK_PLACEMENT_TEMPLATE.format(ref=art.ref),
                        code="unknown_artifact",
                        tool="edit",
                    )
                ox0, oy0 = max(x0, mc), max(y0, mr)
                ox1, oy1 = min(x1, mc + mw), min(y1, mr + mh)
                if ox1 <= ox0 or oy1 <= oy0:
                    return out
                sx, sy = ds.width / mw, ds.height / mh
                window = Window(
                    (ox0 - mc) * sx, (oy0 - mr) * sy, (ox1 - ox0) * sx, (oy1 - oy0) * sy
                )
                shape = (int(round(oy1 - oy0)), int(round(ox1 - ox0)))
                values = ds.read(1, window=window, out_shape=shape, resampling=Resampling.nearest)
                nodata = ds.nodata
    except RasterioError as exc:
        raise ToolInputError(
            MASK_READ_TEMPLATE.format(ref=art.ref, path=art.path, reason=exc),
            code="unknown_artifact",
            tool="edit",
        ) from None
    sel = values > 0
    if nodata is not None and not np.isnan(nodata):
        sel &= values != nodata
    r0, c0 = int(round(oy0 - y0)), int(round(ox0 - x0))
    out[r0 : r0 + sel.shape[0], c0 : c0 + sel.shape[1]] = sel
    return out


def _inset_box(width: int, height: int) -> tuple[int, int, int, int]:
    mx = max(INSET_MIN_PX, int(round(width * INSET_FRACTION)))
    my = max(INSET_MIN_PX, int(round(height * INSET_FRACTION)))
    if width - 2 * mx < 1 or height - 2 * my < 1:
        return 0, 0, 0, 0
    return mx, my, width - mx, height - my


# --------------------------------------------------------------------------------------------
# Classical backend
# --------------------------------------------------------------------------------------------
def classical_inpaint(
    pixels: np.ndarray, fill: np.ndarray, *, method: str = "telea", radius: int = INPAINT_RADIUS
) -> np.ndarray:
    """Inpaint the ``fill`` pixels of every band (OpenCV Telea or Navier-Stokes).

    Args:
        pixels: ``(bands, h, w)`` pixels, any numeric dtype, valid everywhere (fill invalid
            pixels first); not modified.
        fill: ``(h, w)`` bool, True where pixels must be invented.
        method: ``"telea"`` or ``"ns"``.
        radius: Neighbourhood radius in pixels.

    Returns:
        ``(bands, h, w)`` float32 with the ``fill`` pixels replaced (within the range of the
        band's other pixels); other pixels unchanged.
    """
    import cv2
    import numpy as np

    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    mask = fill.astype(np.uint8)
    out = pixels.astype(np.float32)
    known = ~fill
    if not known.any():
        return out
    for b in range(out.shape[0]):
        # OpenCV's inpainting is only reliable on 8/16-bit input (float32 gives garbage), so
        # each band is mapped onto uint16 by the min/max of its known pixels and back.
        lo = float(out[b][known].min())
        hi = float(out[b][known].max())
        if not hi > lo:
            out[b][fill] = np.float32(lo)
            continue
        scale = 65535.0 / (hi - lo)
        u16 = np.clip(np.rint((out[b].astype(np.float64) - lo) * scale), 0, 65535)
        res = cv2.inpaint(u16.astype(np.uint16), mask, float(radius), flag)
        vals = res[fill].astype(np.float64) / scale + lo
        out[b][fill] = np.clip(vals, lo, hi).astype(np.float32)
    return out


def _avoid_nodata(out: np.ndarray, fill: np.ndarray, nodata: float | None) -> None:
    """In place: an invented pixel that equals ``nodata`` is bumped one step away from it."""
    import math

    import numpy as np

    if nodata is None or math.isnan(nodata):
        return
    dt = out.dtype
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        if not info.min <= nodata <= info.max:
            return
        step, top = 1.0, float(info.max)
    else:
        step = float(np.finfo(dt).eps) * max(1.0, abs(nodata))
        top = float(np.finfo(dt).max)
    nd = np.asarray(nodata).astype(dt)
    bumped = np.asarray(nodata + step if nodata < top else nodata - step).astype(dt)
    for b in range(out.shape[0]):
        hit = fill & (out[b] == nd)
        if hit.any():
            out[b][hit] = bumped


# --------------------------------------------------------------------------------------------
# Learned backends
# --------------------------------------------------------------------------------------------
def instruct_edit_spec(model: str) -> ModelSpec:
    """Model-pool spec of a diffusers InstructPix2Pix pipeline (id or ``save_pretrained`` dir).

    The loader builds ``StableDiffusionInstructPix2PixPipeline`` on the requested device (float16
    on CUDA, float32 elsewhere; local files only when ``HF_HUB_OFFLINE`` is set), progress bars
    off.
    """
    from zoomearth.models import ModelSpec
    from zoomearth.tools._sd_inpaint import _pipeline_bytes

    def load(device: str) -> Any:
        import os

        import torch
        from diffusers import StableDiffusionInstructPix2PixPipeline

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            model, dtype=dtype, local_files_only=offline
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    return ModelSpec(
        key=f"diffusers-instruct-pix2pix:{model}",
        load=load,
        measure=_pipeline_bytes,
        description=f"InstructPix2Pix editing ({model})",
    )


def _working_size(pipe: Any, width: int, height: int) -> tuple[int, int]:
    """Region size scaled to the pipeline's native long side, both sides multiples of 8."""
    from zoomearth.tools._sd_inpaint import native_side

    side = native_side(pipe)
    scale = side / max(width, height)
    return max(8, int(round(width * scale / 8)) * 8), max(8, int(round(height * scale / 8)) * 8)


def _instruct_edit(
    pipe: Any,
    rgb: np.ndarray,
    *,
    instruction: str,
    steps: int,
    guidance: float,
    image_guidance: float,
    seed: int,
) -> np.ndarray:
    """Run InstructPix2Pix on ``(h, w, 3)`` uint8; returns the edited ``(h, w, 3)`` uint8."""
    import numpy as np
    import torch
    from PIL import Image

    h, w = rgb.shape[:2]
    ww, wh = _working_size(pipe, w, h)
    image = Image.fromarray(rgb).resize((ww, wh), Image.Resampling.BICUBIC)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = pipe(
        prompt=instruction,
        image=image,
        num_inference_steps=steps,
        guidance_scale=guidance,
        image_guidance_scale=image_guidance,
        generator=generator,
        output_type="np",
    ).images[0]
    res = np.clip(np.rint(np.asarray(result, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(res).resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
