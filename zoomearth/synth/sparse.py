"""A huge image in a tiny file: the sparse tiled TIFF used to test and measure size budgets.

:func:`sparse_tiff` declares ``side x side`` pixels but writes only its first 512 px block;
GDAL reads the others as zeros (``SPARSE_OK``), so a 40,000 px "scene" (1.6 Gpx) takes under
100 kB on disk. Without overviews, reading it whole would decode every pixel -- the case the
scene engine's preparation budget (``max_prepare_pixels``) must refuse before any work.
"""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["sparse_tiff"]


def sparse_tiff(path: Path, side: int) -> Path:
    """Write a tiled TIFF of ``side x side`` px, 3 bands uint8, no overviews, one written block.

    Args:
        path: Output path (overwritten).
        side: Width and height in pixels (>= 512).

    Returns:
        ``path``. Its block at ``(0, 0)`` holds the value 100; every other pixel reads as 0.
        Not georeferenced (pixel-only).
    """
    import numpy as np
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
        "SPARSE_OK": True,
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.full((3, 512, 512), 100, np.uint8), window=Window(0, 0, 512, 512))
    return path
