"""PNG previews, written atomically (:func:`write_png`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from zoomearth.errors import OutputWriteError
from zoomearth.scene.atomic import atomic_path

PNG_SHAPE_TEMPLATE = (
    "write_png needs an (H, W), (H, W, 3) or (H, W, 4) uint8 array; got shape {shape}, "
    "dtype {dtype}."
)
PNG_ENCODE_TEMPLATE = "Could not encode {output} as PNG (OpenCV imencode failed)."


def write_png(
    path: str | os.PathLike[str], image: np.ndarray, *, protect: Iterable[Any] = ()
) -> Path:
    """Write a preview PNG atomically.

    Args:
        path: Output path.
        image: ``uint8`` array, ``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA.
        protect: Input paths the output must not overwrite.

    Returns:
        The final path.

    Raises:
        ValueError: Wrong shape or dtype.
        OutputWriteError: Encoding failed.
    """
    import cv2

    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise ValueError(PNG_SHAPE_TEMPLATE.format(shape=img.shape, dtype=img.dtype))
    if img.ndim == 3:
        # OpenCV encodes BGR(A).
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OutputWriteError(PNG_ENCODE_TEMPLATE.format(output=path))
    with atomic_path(path, protect=protect) as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)
