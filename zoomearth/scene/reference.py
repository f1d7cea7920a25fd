"""Render the overview and crops exactly as the ZoomEarth reference evaluation did, streamed.

The reference (``src/eval/infer.py`` of earth-insights/ZoomEarth) decodes the whole image with
``PIL.Image.open(path).convert("RGB")``, crops it with ``Image.crop`` (black outside the image)
and resizes with ``Image.resize(size, Image.BICUBIC)`` to long side 512 with ``int()`` sizes
(:func:`zoomearth.agent.profiles.reference_resized_size`). ZoomEarth-3B only reproduces its
published numbers when it sees those exact pixels, but a UHR scene must never be decoded whole.
This module gives the same pixels from bounded pieces:

* :func:`pil_bicubic_resize_streamed` -- byte-identical to ``Image.fromarray(full).resize(...,
  BICUBIC)`` while holding only one strip of source rows (or columns) and one intermediate image.
  Pillow's resampling is separable and rounds to uint8 after each pass; every row of the
  horizontal pass depends on that source row alone and every column of the vertical pass on that
  column alone, with coefficients that depend only on the input and output sizes. So resizing
  row strips horizontally (height unchanged: Pillow runs only the horizontal pass), stacking
  them and resizing that vertically (width unchanged: only the vertical pass) reproduces a
  horizontal-first resize exactly; column strips resized vertically, then the stack
  horizontally, reproduce a vertical-first one.
* :func:`render_reference_overview` -- the stage-1 overview: exact and streamed up to a pixel
  budget, else an approximation read through the scene's overviews.
* :func:`render_reference_crop` -- the stage-2 crop of an integer window that may reach outside
  the image (zero-padded there), exact and streamed.

Which pass Pillow runs first depends on its version (see :func:`pillow_pass_order`): up to 12.1
always horizontal first; 12.2 and 12.3 vertical first for images more than 100 times taller than
wide; from 13.0 vertical first whenever the height shrinks by more than twice as many pixels as
the width. The passes round differently, so the order changes some pixels by one or two levels.
``pass_order="auto"`` matches the Pillow installed here; the reference evaluation ran a 2025
Pillow (11.x or 12.0), which is ``pass_order="horizontal_first"`` -- the default of the two render
functions, so their pixels are the reference's whatever Pillow is installed. (The project pins
Pillow below 12.2 so that the image processor's own resize also follows the reference's order.)

Pixels come from :meth:`Scene.render` at full resolution (``max_side=None``), so the project's
band mapping applies (RGB by colour interpretation, 4-band R,G,B,NIR, grey, palette, percentile
stretch for 16-bit and float) and nodata/transparent pixels are 0. For 8-bit RGB files without
nodata or alpha this is exactly the file's pixels, i.e. what the reference's ``convert("RGB")``
gives.

Frames: crop windows are ``(x1, y1, x2, y2)`` integer full-resolution pixels, half-open, as
:func:`zoomearth.agent.profiles.reference_crop_xyxy` returns them. All arrays are uint8
``(height, width, 3)``, row-major, origin at the top-left pixel.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import PIL
from PIL import Image

from zoomearth.errors import BoxError
from zoomearth.geometry import PixelBox, reference_resized_size

if TYPE_CHECKING:
    from zoomearth.scene.scene import Scene

__all__ = [
    "APPROX_FACTOR",
    "DEFAULT_STRIP_BYTES",
    "PassOrder",
    "pil_bicubic_resize_streamed",
    "pillow_pass_order",
    "render_reference_crop",
    "reference_resized_size",
    "render_reference_overview",
]

#: The long side of the reference's overview and crops (pixels).
REFERENCE_SIDE: Final = 512
#: Bytes of RGB pixels in one strip read from the scene (the read itself briefly needs a few
#: times this: GDAL's masked array, the mask, the uint8 conversion).
DEFAULT_STRIP_BYTES: Final = 16 * 1024 * 1024
#: The approximate overview reads a decimated image with long side this many times the target.
APPROX_FACTOR: Final = 4

PassOrder = Literal["auto", "horizontal_first", "vertical_first"]

_PASS_ORDERS: Final = ("auto", "horizontal_first", "vertical_first")

SIZE_TEMPLATE: Final = (
    "Resize sizes must be positive integers; got {width}x{height} -> {out_width}x{out_height} px. "
    "A reference resize of an image this elongated rounds a side to 0: the reference would fail "
    "on it too; crop or pad the image first."
)
STRIP_TEMPLATE: Final = "{name} must be a positive number of pixels; got {value!r}."
PASS_ORDER_TEMPLATE: Final = (
    "Unknown pass_order {value!r}; use auto (the installed Pillow's order), horizontal_first "
    "(Pillow up to 12.1, the reference evaluation's) or vertical_first."
)
READ_SHAPE_TEMPLATE: Final = (
    "{reader} returned an array of shape {shape} and dtype {dtype} for {what}; it must return "
    "uint8 of shape {expected} (rows, columns, RGB). Fix the reader."
)
CROP_TEMPLATE: Final = (
    "A reference crop window needs four integers x1,y1,x2,y2 (full-resolution pixels, "
    "half-open) with x2 > x1 and y2 > y1; got {window!r}. Build it with "
    "zoomearth.agent.profiles.reference_crop_xyxy."
)
EXACT_MAX_TEMPLATE: Final = "exact_max_pixels must be an integer >= 0; got {value!r}."

RowReader = Callable[[int, int], np.ndarray]


def _pillow_version(version: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of a Pillow version string (the installed one when None)."""
    text = PIL.__version__ if version is None else version
    parts = [int(p) for p in re.findall(r"\d+", text)[:2]]
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def pillow_pass_order(
    width: int,
    height: int,
    out_width: int,
    out_height: int,
    *,
    pillow_version: str | None = None,
) -> Literal["horizontal_first", "vertical_first"]:
    """Which pass Pillow's ``Image.resize`` runs first for a resize of these sizes.

    Only matters when both sides change. The rules, read from Pillow's sources:

    * up to 12.1: always horizontal first;
    * 12.2 and 12.3 (``Image.resize`` in Python): vertical first when
      ``height > 100 * width`` and the height shrinks;
    * from 13.0 (``ImagingResampleInner`` in C): vertical first when the height shrinks by more
      than twice as many pixels as the width, ``height - out_height > 2 * (width -
      out_width)``.

    Args:
        width: Source width in pixels.
        height: Source height in pixels.
        out_width: Target width.
        out_height: Target height.
        pillow_version: A Pillow version such as ``"11.3.0"``; None = the installed Pillow.

    Returns:
        ``"horizontal_first"`` or ``"vertical_first"``.
    """
    version = _pillow_version(pillow_version)
    shrink_y = height - out_height
    if version >= (13, 0):
        vertical = shrink_y > 0 and shrink_y > (width - out_width) * 2
    elif version >= (12, 2):
        vertical = height > width * 100 and out_height < height
    else:
        vertical = False
    return "vertical_first" if vertical else "horizontal_first"


def _positive(name: str, value: int | None, default: int) -> int:
    if value is None:
        return max(1, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(STRIP_TEMPLATE.format(name=name, value=value))
    return value


def _checked(
    array: np.ndarray, expected: tuple[int, int, int], reader: str, what: str
) -> np.ndarray:
    arr = np.asarray(array)
    if arr.shape != expected or arr.dtype != np.uint8:
        raise ValueError(
            READ_SHAPE_TEMPLATE.format(
                reader=reader, shape=arr.shape, dtype=arr.dtype, what=what, expected=expected
            )
        )
    return np.ascontiguousarray(arr)


def _columns_from_rows(
    read_rows: RowReader, width: int, height: int, strip_rows: int
) -> Callable[[int, int], np.ndarray]:
    """A column reader built on a row reader: each call streams all rows once."""

    def read_columns(x0: int, x1: int) -> np.ndarray:
        out = np.empty((height, x1 - x0, 3), np.uint8)
        for y0 in range(0, height, strip_rows):
            y1 = min(height, y0 + strip_rows)
            rows = _checked(read_rows(y0, y1), (y1 - y0, width, 3), "read_rows", f"rows {y0}:{y1}")
            out[y0:y1] = rows[:, x0:x1]
        return out

    return read_columns


def pil_bicubic_resize_streamed(
    read_rows: RowReader,
    width: int,
    height: int,
    out_width: int,
    out_height: int,
    *,
    strip_rows: int | None = None,
    read_columns: Callable[[int, int], np.ndarray] | None = None,
    strip_columns: int | None = None,
    pass_order: PassOrder = "auto",
) -> np.ndarray:
    """PIL's bicubic resize of an RGB image, pixel for pixel, from strips of the source.

    Equals ``np.asarray(Image.fromarray(full).resize((out_width, out_height), Image.BICUBIC))``
    (with the installed Pillow when ``pass_order="auto"``) where ``full`` is the whole source,
    but holds at most one strip of source rows (or columns) plus the intermediate image: the
    source after the first pass, ``height x out_width`` pixels for a horizontal-first resize,
    ``out_height x width`` for a vertical-first one (Pillow stores RGB in 4 bytes a pixel).

    A horizontal-first resize (or one where only the width changes) streams row strips through
    ``read_rows``. A vertical-first resize (or one where only the height changes) streams column
    strips through ``read_columns``; without one, each column strip is gathered from row strips
    (every source row read once per column strip: correct, bounded memory, but slower).

    Args:
        read_rows: ``read_rows(y0, y1)`` returns source rows ``y0:y1``, uint8
            ``(y1 - y0, width, 3)``.
        width: Source width in pixels.
        height: Source height in pixels.
        out_width: Target width (positive).
        out_height: Target height (positive).
        strip_rows: Rows per read; None = about :data:`DEFAULT_STRIP_BYTES` of pixels.
        read_columns: ``read_columns(x0, x1)`` returns source columns ``x0:x1``, uint8
            ``(height, x1 - x0, 3)``; optional.
        strip_columns: Columns per read; None = about :data:`DEFAULT_STRIP_BYTES` of pixels.
        pass_order: ``"auto"`` (the installed Pillow's order, :func:`pillow_pass_order`),
            ``"horizontal_first"`` (Pillow up to 12.1) or ``"vertical_first"``.

    Returns:
        uint8 array ``(out_height, out_width, 3)``.

    Raises:
        ValueError: Non-positive sizes or strips, an unknown pass order, or a reader returning
            the wrong shape or dtype.
    """
    bad_sizes = ValueError(
        SIZE_TEMPLATE.format(width=width, height=height, out_width=out_width, out_height=out_height)
    )
    try:
        if any(isinstance(v, bool) for v in (width, height, out_width, out_height)):
            raise TypeError
        width, height = operator.index(width), operator.index(height)
        out_width, out_height = operator.index(out_width), operator.index(out_height)
    except TypeError:
        raise bad_sizes from None
    if min(width, height, out_width, out_height) < 1:
        raise bad_sizes
    if pass_order not in _PASS_ORDERS:
        raise ValueError(PASS_ORDER_TEMPLATE.format(value=pass_order))
    rows_per = _positive("strip_rows", strip_rows, DEFAULT_STRIP_BYTES // (3 * width))
    cols_per = _positive("strip_columns", strip_columns, DEFAULT_STRIP_BYTES // (3 * height))
    order = (
        pillow_pass_order(width, height, out_width, out_height)
        if pass_order == "auto"
        else pass_order
    )
    need_h = out_width != width
    need_v = out_height != height
    columns_first = need_v and (not need_h or order == "vertical_first")

    if not columns_first:
        # Horizontal pass row strip by row strip (height unchanged: Pillow runs that pass only).
        inter = Image.new("RGB", (out_width, height))
        for y0 in range(0, height, rows_per):
            y1 = min(height, y0 + rows_per)
            rows = _checked(read_rows(y0, y1), (y1 - y0, width, 3), "read_rows", f"rows {y0}:{y1}")
            part = Image.fromarray(rows)
            if need_h:
                part = part.resize((out_width, y1 - y0), Image.Resampling.BICUBIC)
            inter.paste(part, (0, y0))
            del rows, part
    else:
        # Vertical pass column strip by column strip (width unchanged: that pass only).
        columns = read_columns or _columns_from_rows(read_rows, width, height, rows_per)
        reader = "read_columns" if read_columns is not None else "read_rows"
        inter = Image.new("RGB", (width, out_height))
        for x0 in range(0, width, cols_per):
            x1 = min(width, x0 + cols_per)
            cols = _checked(columns(x0, x1), (height, x1 - x0, 3), reader, f"columns {x0}:{x1}")
            part = Image.fromarray(cols).resize((x1 - x0, out_height), Image.Resampling.BICUBIC)
            inter.paste(part, (x0, 0))
            del cols, part
    # The second pass (Pillow returns a copy when the size is unchanged).
    out = inter.resize((out_width, out_height), Image.Resampling.BICUBIC)
    return np.array(out, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# scene readers
# ---------------------------------------------------------------------------------------------


def _check_out_size(width: int, height: int, out_width: int, out_height: int) -> None:
    if out_width < 1 or out_height < 1:
        raise ValueError(
            SIZE_TEMPLATE.format(
                width=width, height=height, out_width=out_width, out_height=out_height
            )
        )


def _window_reader(
    scene: Scene, window: tuple[int, int, int, int]
) -> Callable[[int, int, int, int], np.ndarray]:
    """Read a part of an integer window of the scene, zero outside the image.

    The returned function takes window-relative ``(cx0, cy0, cx1, cy1)`` and returns uint8
    ``(cy1 - cy0, cx1 - cx0, 3)``; only the part inside the image is rendered (full resolution,
    one :meth:`Scene.render` call).
    """
    wx1, wy1, _, _ = window
    width, height = scene.width, scene.height

    def read(cx0: int, cy0: int, cx1: int, cy1: int) -> np.ndarray:
        out = np.zeros((cy1 - cy0, cx1 - cx0, 3), np.uint8)
        gx0, gy0, gx1, gy1 = wx1 + cx0, wy1 + cy0, wx1 + cx1, wy1 + cy1
        ix0, iy0 = max(gx0, 0), max(gy0, 0)
        ix1, iy1 = min(gx1, width), min(gy1, height)
        if ix1 > ix0 and iy1 > iy0:
            rgb = scene.render(PixelBox(ix0, iy0, ix1, iy1), max_side=None).rgb
            out[iy0 - gy0 : iy1 - gy0, ix0 - gx0 : ix1 - gx0] = rgb
        return out

    return read


def _render_window_resized(
    scene: Scene,
    window: tuple[int, int, int, int],
    out_size: tuple[int, int],
    strip_bytes: int,
    pass_order: PassOrder,
) -> np.ndarray:
    x1, y1, x2, y2 = window
    cw, ch = x2 - x1, y2 - y1
    read = _window_reader(scene, window)
    if out_size == (cw, ch):
        return read(0, 0, cw, ch)
    return pil_bicubic_resize_streamed(
        lambda r0, r1: read(0, r0, cw, r1),
        cw,
        ch,
        out_size[0],
        out_size[1],
        strip_rows=max(1, strip_bytes // (3 * cw)),
        read_columns=lambda c0, c1: read(c0, 0, c1, ch),
        strip_columns=max(1, strip_bytes // (3 * ch)),
        pass_order=pass_order,
    )


def render_reference_overview(
    scene: Scene,
    *,
    exact_max_pixels: int,
    approx_side: int | None = None,
    max_size: int = REFERENCE_SIDE,
    strip_bytes: int = DEFAULT_STRIP_BYTES,
    pass_order: PassOrder = "horizontal_first",
) -> tuple[np.ndarray, bool]:
    """The reference's stage-1 overview: the whole image resized bicubically to long side 512.

    The size is :func:`~zoomearth.agent.profiles.reference_resized_size` of the scene's size. An
    image not larger than ``max_size`` on its long side is returned unchanged (the reference
    does not resize it). Otherwise:

    * ``width * height <= exact_max_pixels``: exact -- full-resolution strips of the scene are
      streamed through :func:`pil_bicubic_resize_streamed`;
    * else approximate -- a decimated rendering with long side ``approx_side`` (GDAL ``average``
      through the scene's overview levels) is resized bicubically by PIL to the same size.

    Args:
        scene: The open scene.
        exact_max_pixels: Largest image (in pixels) rendered exactly; 0 forces the approximation.
        approx_side: Long side of the decimated rendering of the approximation; None =
            :data:`APPROX_FACTOR` times the target's long side. Never more than the image's.
        max_size: The overview's long side.
        strip_bytes: RGB bytes per strip read for the exact path.
        pass_order: See :func:`pil_bicubic_resize_streamed`.

    Returns:
        ``(rgb, exact)``: uint8 ``(out_height, out_width, 3)`` and whether the pixels are exact.

    Raises:
        ValueError: ``exact_max_pixels`` negative, or sizes a resize cannot have.
    """
    try:
        if isinstance(exact_max_pixels, bool):
            raise TypeError
        budget = operator.index(exact_max_pixels)
    except TypeError:
        raise ValueError(EXACT_MAX_TEMPLATE.format(value=exact_max_pixels)) from None
    if budget < 0:
        raise ValueError(EXACT_MAX_TEMPLATE.format(value=exact_max_pixels))
    width, height = scene.width, scene.height
    out_w, out_h = reference_resized_size(width, height, max_size)
    _check_out_size(width, height, out_w, out_h)
    if (out_w, out_h) == (width, height):
        return scene.render(None, max_side=None).rgb, True
    if width * height <= budget:
        rgb = _render_window_resized(
            scene, (0, 0, width, height), (out_w, out_h), strip_bytes, pass_order
        )
        return rgb, True
    side = APPROX_FACTOR * max(out_w, out_h) if approx_side is None else int(approx_side)
    side = max(1, min(side, max(width, height)))
    small = scene.render(None, max_side=side).to_pil()
    if small.size == (out_w, out_h):
        return np.array(small, dtype=np.uint8), False
    resized = small.resize((out_w, out_h), Image.Resampling.BICUBIC)
    return np.array(resized, dtype=np.uint8), False


def render_reference_crop(
    scene: Scene,
    crop_xyxy: Sequence[int],
    *,
    max_size: int = REFERENCE_SIDE,
    strip_bytes: int = DEFAULT_STRIP_BYTES,
    pass_order: PassOrder = "horizontal_first",
) -> np.ndarray:
    """The reference's stage-2 image: ``img.crop(crop_xyxy)`` resized to long side 512, exactly.

    Only the part of the window inside the image is read (full resolution, in strips when the
    window is larger than ``strip_bytes``); outside the image the crop is black, as PIL's
    ``Image.crop`` pads it. A crop whose long side exceeds ``max_size`` is resized with
    :func:`pil_bicubic_resize_streamed` to :func:`~zoomearth.agent.profiles.reference_resized_size`;
    a window entirely outside the image gives zeros of that size without reading anything.

    Args:
        scene: The open scene.
        crop_xyxy: Integer window ``(x1, y1, x2, y2)`` in full-resolution pixels, half-open; may
            reach outside the image (:func:`zoomearth.agent.profiles.reference_crop_xyxy`).
        max_size: The crop's long side after resizing.
        strip_bytes: RGB bytes per strip read.
        pass_order: See :func:`pil_bicubic_resize_streamed`.

    Returns:
        uint8 ``(out_height, out_width, 3)``.

    Raises:
        BoxError: The window is not four integers with positive width and height.
    """
    try:
        if len(crop_xyxy) != 4:
            raise TypeError
        x1, y1, x2, y2 = (operator.index(v) for v in crop_xyxy)
    except TypeError:
        raise BoxError(CROP_TEMPLATE.format(window=crop_xyxy)) from None
    if x2 <= x1 or y2 <= y1:
        raise BoxError(CROP_TEMPLATE.format(window=crop_xyxy))
    window = (int(x1), int(y1), int(x2), int(y2))
    out_w, out_h = reference_resized_size(x2 - x1, y2 - y1, max_size)
    _check_out_size(x2 - x1, y2 - y1, out_w, out_h)
    if x2 <= 0 or y2 <= 0 or x1 >= scene.width or y1 >= scene.height:
        return np.zeros((out_h, out_w, 3), np.uint8)
    return _render_window_resized(scene, window, (out_w, out_h), strip_bytes, pass_order)
