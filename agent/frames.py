"""Frames of the images a planner sees, and the vision arithmetic of Qwen2.5-VL.

A view is rendered at ``view.width x view.height`` pixels, but a Qwen2.5-VL model does not see
that image: its processor resizes it to multiples of 28 pixels (:func:`qwen_smart_resize`), and
the boxes the model writes (``pixels`` coordinate mode) are in the frame of that *seen* image. A
512 x 307 overview is seen as 504 x 308, so a box drawn at x = 504 is the view's right edge, not
8 pixels short of it. This module holds the pure functions that keep those frames apart:

* :func:`qwen_smart_resize` -- the processor's resize rule, bit for bit (``(height, width)``
  order, like the transformers function it mirrors),
* :func:`seen_size` -- the ``(width, height)`` at which a model sees a view,
* :func:`qwen_visual_tokens` -- image tokens the language model processes for one image,
* :func:`planner_box_to_full` -- a box as the model wrote it (``pixels`` of the seen image,
  ``norm1000`` or ``norm1``) to full-resolution pixels,
* :func:`zoom_region` -- the crop that is actually read: the minimum-crop rule of the reference
  method (:func:`zoomearth.geometry.min_crop_xyxy`), snapped to whole pixels on request (the
  graph's zooms),
* :func:`fit_long_side` -- the pixel size of a rendered view (long side at most N).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from zoomearth.agent.base import CoordMode
from zoomearth.errors import BoxError
from zoomearth.geometry import PixelBox, ViewSpec, min_crop_xyxy, validate_box

__all__ = [
    "QWEN25_VL",
    "QWEN_DEFAULT_MAX_PIXELS",
    "QWEN_MIN_PIXELS",
    "VisionSpec",
    "fit_long_side",
    "planner_box_to_full",
    "qwen_smart_resize",
    "qwen_visual_tokens",
    "seen_size",
    "zoom_region",
]

#: ``min_pixels`` of the Qwen2-VL / Qwen2.5-VL image processors (56 x 56).
QWEN_MIN_PIXELS: Final = 56 * 56
#: ``max_pixels`` in the ``preprocessor_config.json`` of the Qwen2.5-VL checkpoints (and of
#: ZoomEarth-3B): 16384 patches of 28 x 28 pixels.
QWEN_DEFAULT_MAX_PIXELS: Final = 12_845_056

ASPECT_TEMPLATE: Final = (
    "An image of {width}x{height} px has an aspect ratio above 200, which Qwen2.5-VL's processor "
    "refuses; crop it to a less elongated region."
)
SIZE_TEMPLATE: Final = "Image sizes must be positive; got {width}x{height} px."
BAD_BOX_LENGTH_TEMPLATE: Final = "A planner box needs four numbers x1, y1, x2, y2; got {count}."
BAD_SEEN_SIZE_TEMPLATE: Final = (
    "Seen size must be positive (width, height) pixels; got {seen!r} for view {view_id}."
)
UNKNOWN_COORD_MODE_TEMPLATE: Final = (
    "Unknown coordinate mode {mode!r}; use one of 'pixels', 'norm1000', 'norm1'."
)


@dataclass(frozen=True, slots=True)
class VisionSpec:
    """How a Qwen2-VL-family processor sizes images (from its ``preprocessor_config.json``).

    Attributes:
        patch_size: Side of one vision patch in pixels (14).
        merge_size: Patches merged per side into one language-model token (2).
        min_pixels: Smallest pixel count after resizing (``size["shortest_edge"]``).
        max_pixels: Largest pixel count after resizing (``size["longest_edge"]``); None for no cap.
    """

    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int | None = QWEN_DEFAULT_MAX_PIXELS

    @property
    def factor(self) -> int:
        """Seen sizes are multiples of this many pixels (``patch_size * merge_size`` = 28)."""
        return self.patch_size * self.merge_size


#: The image processing of Qwen2.5-VL checkpoints (ZoomEarth-3B included).
QWEN25_VL: Final = VisionSpec()


def qwen_smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: float | None = QWEN_DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Size at which a Qwen2-VL / Qwen2.5-VL processor resizes an image.

    The same arithmetic as ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize``
    (Python's round-half-to-even included): both sides become multiples of ``factor``, the pixel
    count is brought inside ``[min_pixels, max_pixels]``, and the aspect ratio is kept as closely
    as possible.

    Args:
        height: Input height in pixels.
        width: Input width in pixels.
        factor: Both output sides are multiples of this (patch size x merge size = 28).
        min_pixels: Smallest output pixel count.
        max_pixels: Largest output pixel count; None (or ``math.inf``) for no cap, i.e. native
            resolution.

    Returns:
        ``(resized_height, resized_width)`` in pixels -- note the ``(height, width)`` order.

    Raises:
        ValueError: A side is not positive, or the aspect ratio exceeds 200.
    """
    if height <= 0 or width <= 0:
        raise ValueError(SIZE_TEMPLATE.format(width=width, height=height))
    if max(height, width) / min(height, width) > 200:
        raise ValueError(ASPECT_TEMPLATE.format(width=width, height=height))
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if max_pixels is not None and h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def seen_size(view_w: int, view_h: int, vision: VisionSpec = QWEN25_VL) -> tuple[int, int]:
    """Pixel size at which a model with the given image processing sees a view.

    Args:
        view_w: Rendered view width in pixels.
        view_h: Rendered view height in pixels.
        vision: The processor's sizing rules (default: Qwen2.5-VL's).

    Returns:
        ``(seen_width, seen_height)`` in pixels -- ``(width, height)`` order, like
        :attr:`zoomearth.agent.base.PlanReply.seen_sizes`.
    """
    h, w = qwen_smart_resize(view_h, view_w, vision.factor, vision.min_pixels, vision.max_pixels)
    return w, h


def qwen_visual_tokens(seen_w: int, seen_h: int, patch_size: int = 14, merge_size: int = 2) -> int:
    """Image tokens the language model processes for one image seen at ``seen_w x seen_h``.

    ``(seen_h / 14) * (seen_w / 14) / 4``: one token per ``merge_size x merge_size`` group of
    ``patch_size``-pixel patches (the ``<|image_pad|>`` count of the Qwen2.5-VL processor).

    Args:
        seen_w: Seen width in pixels (a multiple of ``patch_size * merge_size``).
        seen_h: Seen height in pixels (a multiple of ``patch_size * merge_size``).
        patch_size: Vision patch side in pixels.
        merge_size: Patches merged per side into one token.

    Returns:
        The token count.
    """
    grid_h, grid_w = seen_h // patch_size, seen_w // patch_size
    return (grid_h * grid_w) // (merge_size * merge_size)


def planner_box_to_full(
    box4: Sequence[float],
    coord_mode: CoordMode,
    view: ViewSpec,
    seen: tuple[int, int] | None = None,
) -> PixelBox:
    """Map a box as the planner wrote it to full-resolution pixels.

    The box is in the frame of the image the model saw for ``view``:

    * ``pixels``: pixels of the *seen* image ``seen = (seen_w, seen_h)`` (for Qwen2.5-VL the
      multiple-of-28 size, see :func:`seen_size`); x is scaled by ``region.width / seen_w``,
    * ``norm1000``: 0..1000 across the image; x is scaled by ``region.width / 1000``,
    * ``norm1``: 0..1 across the image; x is scaled by ``region.width``,

    then offset by the view's region origin. The result is neither clipped nor validated.

    Args:
        box4: ``(x1, y1, x2, y2)`` as the model wrote it.
        coord_mode: The frame of ``box4``.
        view: The view the box was drawn on (its full-resolution region).
        seen: ``(width, height)`` at which the model saw ``view``; needed for ``pixels``
            (None means the view's own rendered size, for models that see it unresized).

    Returns:
        The box in full-resolution pixels (xyxy, floats).

    Raises:
        BoxError: ``box4`` does not have four numbers, or ``seen`` is not a positive size.
        ValueError: Unknown ``coord_mode``.
    """
    if len(box4) != 4:
        raise BoxError(BAD_BOX_LENGTH_TEMPLATE.format(count=len(box4)))
    x1, y1, x2, y2 = (float(v) for v in box4)
    if coord_mode == "pixels":
        seen_w, seen_h = seen if seen is not None else (view.width, view.height)
        if seen_w <= 0 or seen_h <= 0:
            raise BoxError(BAD_SEEN_SIZE_TEMPLATE.format(seen=seen, view_id=view.view_id))
        unit_x, unit_y = float(seen_w), float(seen_h)
    elif coord_mode == "norm1000":
        unit_x = unit_y = 1000.0
    elif coord_mode == "norm1":
        unit_x = unit_y = 1.0
    else:
        raise ValueError(UNKNOWN_COORD_MODE_TEMPLATE.format(mode=coord_mode))
    region = view.region
    sx, sy = region.width / unit_x, region.height / unit_y
    return PixelBox(
        region.x1 + x1 * sx, region.y1 + y1 * sy, region.x1 + x2 * sx, region.y1 + y2 * sy
    )


def zoom_region(
    box: PixelBox, image_w: int, image_h: int, min_side: int = 512, *, snap: bool = False
) -> tuple[PixelBox, str | None]:
    """The full-resolution region to read for a zoom box: validated, clipped, minimum crop.

    The reference method's rule: the crop is at least ``min_side x min_side`` full-resolution
    pixels (the whole side when the image is smaller), centred on the box, shifted -- not shrunk --
    to stay inside the image; a larger box keeps its extent. With ``snap`` the crop is then
    expanded to whole pixels and clipped to the image again: the region the graph's ``zoom`` node
    records and reads (:func:`zoomearth.graphs.regions.zoom_request_region`).

    Args:
        box: The requested box in full-resolution pixels (e.g. from :func:`planner_box_to_full`).
        image_w: Full-resolution image width in pixels.
        image_h: Full-resolution image height in pixels.
        min_side: Minimum crop side in full-resolution pixels (setting ``min_crop``).
        snap: Snap the crop out to integer pixel edges (:meth:`PixelBox.snap_out`) and clip it
            to ``[0, image_w] x [0, image_h]``.

    Returns:
        ``(crop, warning)``: the crop box inside ``[0, image_w] x [0, image_h]`` (xyxy, floats;
        whole numbers with ``snap``), and a warning text when the box had to be clipped to the
        image first (None otherwise).

    Raises:
        BoxError: The box is NaN/infinite, inverted, empty or entirely outside the image.
    """
    clipped, warning = validate_box(box, image_w, image_h)
    crop = min_crop_xyxy(clipped, image_w, image_h, min_side)
    if snap:
        crop = crop.snap_out().clip(image_w, image_h)
    return crop, warning


def fit_long_side(width: float, height: float, long_side: int) -> tuple[int, int]:
    """Pixel size of a region rendered with its long side at most ``long_side`` (never upscaled).

    Args:
        width: Region width in full-resolution pixels.
        height: Region height in full-resolution pixels.
        long_side: Largest rendered side (settings ``overview_side`` / ``view_side``).

    Returns:
        ``(width, height)`` in whole pixels, each at least 1.
    """
    if width <= 0 or height <= 0:
        raise ValueError(SIZE_TEMPLATE.format(width=width, height=height))
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))
