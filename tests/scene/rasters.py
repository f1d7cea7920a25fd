"""Factory for tiny rasters with a known pattern, so tests can check where pixels land."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

UTM = "EPSG:32633"
ORIGIN = Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000)


def pattern(width: int, height: int, count: int, dtype: str = "uint8") -> np.ndarray:
    """Band b at (x, y) = (x + 3*y + 50*b) mod 251 (scaled x16 for uint16): position-coded."""
    y, x = np.mgrid[0:height, 0:width]
    bands = [((x + 3 * y + 50 * b) % 251) for b in range(count)]
    arr = np.stack(bands).astype(np.float64)
    if dtype == "uint16":
        arr = arr * 16
    return arr.astype(dtype)


def write_raster(
    path: Path,
    width: int = 64,
    height: int = 48,
    count: int = 3,
    dtype: str = "uint8",
    *,
    data: np.ndarray | None = None,
    georef: bool = True,
    tiled: bool = True,
    block: int = 16,
    overviews: list[int] | None = None,
    nodata: float | None = None,
    colorinterp: list[str] | None = None,
    driver: str = "GTiff",
    **extra: Any,
) -> Path:
    """Write a raster (pattern data unless ``data`` is given) and return its path."""
    from rasterio.enums import ColorInterp, Resampling

    arr = pattern(width, height, count, dtype) if data is None else data
    profile: dict[str, Any] = {
        "driver": driver,
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        **extra,
    }
    if driver == "GTiff":
        profile.update(tiled=tiled)
        if tiled:
            profile.update(blockxsize=block, blockysize=block)
    if nodata is not None:
        profile["nodata"] = nodata
    if georef:
        profile.update(crs=UTM, transform=ORIGIN)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        if colorinterp:
            dst.colorinterp = [getattr(ColorInterp, c) for c in colorinterp]
        if overviews:
            dst.build_overviews(overviews, Resampling.average)
    return path
