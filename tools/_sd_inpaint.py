"""Diffusion inpainting backend (diffusers ``StableDiffusionInpaintPipeline``) through the pool.

The checkpoint named by the setting ``inpaint_model`` (a local directory written by
``save_pretrained`` or a hub id already in the local cache) is loaded lazily by the shared
:class:`~zoomearth.models.ModelPool` -- the same code for real weights and for the tiny random
pipeline the tests build with :func:`zoomearth.testing_models.build_tiny_sd_inpaint`.

Large holes are filled window by window: the masked pixels' bounding box is cut into squares of
the pipeline's native side (``unet.config.sample_size * vae_scale_factor``: 512 px for Stable
Diffusion inpainting checkpoints, 64 px for the tiny test pipeline); each square holding masked
pixels is passed at that size with its mask, and only the masked pixels of the result are kept
(the VAE round trip alters every pixel slightly). Windows are processed in row-major order,
each seeing the fills of the earlier ones.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from zoomearth.models import ModelSpec

__all__ = ["diffusion_fill", "inpaint_spec", "native_side"]

#: Rough device memory of a Stable Diffusion 1.x/2.x inpainting pipeline in float16 (bytes).
SD_INPAINT_BYTES: Final = 2_600_000_000
#: Smallest window side passed to the pipeline (pixels, a multiple of 8).
MIN_SIDE: Final = 64


def _pipeline_bytes(pipe: Any) -> int | None:
    from zoomearth.models import measure_bytes

    total = 0
    for part in getattr(pipe, "components", {}).values():
        n = measure_bytes(part) if part is not None else None
        total += n or 0
    return total or None


def inpaint_spec(model: str) -> ModelSpec:
    """Model-pool spec of a diffusers inpainting pipeline.

    Args:
        model: Local directory (``save_pretrained`` layout) or hub id (read from the local
            cache only when ``HF_HUB_OFFLINE`` is set).

    Returns:
        A spec whose loader builds ``StableDiffusionInpaintPipeline`` on the requested device
        (float16 on CUDA, float32 elsewhere), progress bars off.
    """
    from zoomearth.models import ModelSpec

    def load(device: str) -> Any:
        import torch
        from diffusers import StableDiffusionInpaintPipeline

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        pipe = StableDiffusionInpaintPipeline.from_pretrained(model, local_files_only=offline)
        pipe.set_progress_bar_config(disable=True)
        if device.startswith("cuda"):
            return pipe.to(device, torch.float16)
        return pipe.to(device)

    return ModelSpec(
        key=f"diffusers-inpaint:{model}",
        load=load,
        size_bytes=None,
        measure=_pipeline_bytes,
        description=f"diffusion inpainting ({model})",
    )


def native_side(pipe: Any) -> int:
    """Side (pixels) the pipeline was trained at, at least :data:`MIN_SIDE`, a multiple of 8."""
    sample = int(getattr(pipe.unet.config, "sample_size", 64) or 64)
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    side = max(MIN_SIDE, sample * factor)
    return side - side % 8


def diffusion_fill(
    pipe: Any,
    rgb: np.ndarray,
    fill: np.ndarray,
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    seed: int,
    check: Callable[[], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Fill the masked pixels of an RGB image with the pipeline, window by window.

    Args:
        pipe: A loaded ``StableDiffusionInpaintPipeline`` (on any device; the seeded generator
            lives on the CPU so results do not depend on the device's random number generator).
        rgb: ``(h, w, 3)`` uint8 image; not modified.
        fill: ``(h, w)`` bool, True where pixels must be invented.
        prompt: Text prompt.
        negative_prompt: Negative prompt.
        steps: Denoising steps per window.
        seed: Seed of the first window (window ``k`` uses ``seed + k``).
        check: Called before each window (cancellation check); may raise.

    Returns:
        ``(filled, windows)``: ``(h, w, 3)`` uint8 copy of ``rgb`` with the masked pixels
        replaced, and the number of windows run.
    """
    import numpy as np
    import torch
    from PIL import Image

    out = np.array(rgb, dtype=np.uint8, copy=True)
    h, w = fill.shape
    side = native_side(pipe)
    windows = 0
    ys_, xs_ = np.nonzero(fill)
    if ys_.size == 0:
        return out, 0
    # The window grid starts at the masked pixels' bounding box, so a small hole needs one window.
    top, left, bottom, right = ys_.min(), xs_.min(), ys_.max() + 1, xs_.max() + 1
    for y0 in range(int(top), int(bottom), side):
        for x0 in range(int(left), int(right), side):
            sub = fill[y0 : y0 + side, x0 : x0 + side]
            if not sub.any():
                continue
            if check is not None:
                check()
            # A full-size square where the image allows it, so the model sees enough context.
            ys, xs = max(0, min(y0, h - side)), max(0, min(x0, w - side))
            ye, xe = min(h, ys + side), min(w, xs + side)
            crop = out[ys:ye, xs:xe]
            msk = fill[ys:ye, xs:xe]
            ch, cw = msk.shape
            img = Image.fromarray(crop).resize((side, side), Image.Resampling.BICUBIC)
            mimg = Image.fromarray(msk.astype(np.uint8) * 255)
            mimg = mimg.resize((side, side), Image.Resampling.NEAREST)
            generator = torch.Generator(device="cpu").manual_seed(seed + windows)
            result = pipe(
                prompt=prompt,
                negative_prompt=negative_prompt,
                image=img,
                mask_image=mimg,
                height=side,
                width=side,
                num_inference_steps=steps,
                generator=generator,
                output_type="np",
            ).images[0]
            res = np.clip(np.rint(np.asarray(result, dtype=np.float32) * 255.0), 0, 255)
            res_img = Image.fromarray(res.astype(np.uint8))
            if (cw, ch) != (side, side):
                res_img = res_img.resize((cw, ch), Image.Resampling.BICUBIC)
            res_arr = np.asarray(res_img, dtype=np.uint8)
            crop[msk] = res_arr[msk]
            windows += 1
    return out, windows
