"""GeoTIFF creation profiles and the georeference of a source window.

:func:`output_profile` builds the creation profile of a tiled, compressed GeoTIFF (JPEG only for
3-band ``uint8``; DEFLATE with a predictor otherwise) with :func:`overview_factors`;
:class:`SourceGeoref` describes a source raster and gives the CRS, transform and GCPs of an output
covering one of its windows (pixel-only for sources without georeference). :data:`KEEP` marks
settings taken from the source.
"""

from __future__ import annotations

import enum
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader, DatasetWriter
from rasterio.windows import Window

#: DEFLATE level of the outputs (GDAL's default is 6). Level 1 compresses 2.3x (real NAIP,
#: 4-band uint8) to 4.5x (synthetic RGB) faster for files 0.7 % (NAIP) to 12 % (synthetic)
#: larger; the one writer of a whole-scene tool compresses every output pixel, so at level 6 it
#: cost about a fifth of a tiled run's CPU (``benchmarks/tools.py --parts parallel``).
DEFLATE_LEVEL = 1

#: Overview resampling names accepted by the writers (GDAL's names).
OverviewResampling = Literal["average", "nearest", "mode", "bilinear", "cubic", "gauss", "rms"]


class _Keep(enum.Enum):
    """Sentinel type: "take this setting from the source" (``None`` is a real value)."""

    KEEP = "keep"


#: Default of settings that are taken from the source unless a caller says otherwise.
KEEP = _Keep.KEEP


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------


def overview_factors(width: int, height: int, *, min_size: int = 256) -> list[int]:
    """Overview decimation factors 2, 4, 8, ... while the overview's long side stays >= min_size.

    Args:
        width: Full-resolution width in pixels.
        height: Full-resolution height in pixels.
        min_size: Smallest long side (pixels) an overview level may have.

    Returns:
        Increasing powers of two; empty for images whose half size is below ``min_size``.
    """
    long_side = max(width, height)
    factors: list[int] = []
    f = 2
    while math.ceil(long_side / f) >= min_size:
        factors.append(f)
        f *= 2
    return factors


def _is_pixel_only(crs: CRS | None, transform: Affine | None) -> bool:
    return crs is None and (transform is None or transform.is_identity)


def output_profile(
    like: Mapping[str, Any] | None = None,
    *,
    width: int | _Keep = KEEP,
    height: int | _Keep = KEEP,
    count: int | _Keep = KEEP,
    dtype: str | np.dtype[Any] | type | _Keep = KEEP,
    nodata: float | None | _Keep = KEEP,
    crs: CRS | str | None | _Keep = KEEP,
    transform: Affine | None | _Keep = KEEP,
    tiled: bool = True,
    blocksize: int = 512,
    compress: str = "deflate",
    photometric: str | None = None,
    quality: int = 90,
    num_threads: str | int | None = "ALL_CPUS",
    zlevel: int = DEFLATE_LEVEL,
) -> dict[str, Any]:
    """Creation profile of a tiled, compressed GeoTIFF for :func:`rasterio.open` (mode ``"w"``).

    Settings not given are taken from ``like`` (a rasterio profile or any mapping with the same
    keys). ``crs`` None together with an identity or missing transform means a pixel-only output:
    both keys are then left out so GDAL writes no georeference.

    Compression: ``"jpeg"`` is honoured only for 3-band ``uint8`` data (written as YCbCr, lossy,
    ``quality`` 1-100); for anything else a :class:`UserWarning` is issued and DEFLATE is used,
    because JPEG would corrupt masks, nodata and 16-bit or float values. DEFLATE/LZW/ZSTD get
    predictor 2 (integers) or 3 (floats). ``"none"`` writes uncompressed tiles.

    Args:
        like: Profile to take unspecified settings from, or None.
        width: Width in pixels.
        height: Height in pixels.
        count: Number of bands.
        dtype: Pixel type (numpy name, e.g. ``"uint8"``, ``"float32"``).
        nodata: Nodata value (NaN allowed for floats) or None for none.
        crs: CRS of the output or None.
        transform: Geotransform (pixel -> CRS) or None.
        tiled: Write tiles (True) or strips.
        blocksize: Tile size in pixels (multiple of 16).
        compress: ``"deflate"``, ``"jpeg"``, ``"lzw"``, ``"zstd"`` or ``"none"``.
        photometric: GeoTIFF photometric interpretation; by default YCbCr for JPEG and RGB for
            other 3-band ``uint8`` outputs, so viewers show colour.
        quality: JPEG quality (only for JPEG).
        num_threads: GDAL compression threads (``"ALL_CPUS"``, an int or None for one).
        zlevel: DEFLATE level, 1 (fastest) to 9 (smallest); see :data:`DEFLATE_LEVEL`.

    Returns:
        A profile dict: ``driver``, ``width``, ``height``, ``count``, ``dtype``, ``nodata``,
        optionally ``crs``/``transform``, and the GTiff creation options.

    Raises:
        ValueError: A required setting is missing, or ``blocksize`` is not a multiple of 16.
    """
    like = dict(like or {})

    def pick(name: str, value: Any) -> Any:
        if value is not KEEP:
            return value
        if name in like:
            return like[name]
        if name in ("nodata", "crs", "transform"):
            return None
        raise ValueError(f"output_profile needs '{name}' (not given and not in the like-profile)")

    w, h, n = int(pick("width", width)), int(pick("height", height)), int(pick("count", count))
    dt = np.dtype(pick("dtype", dtype))
    nd = pick("nodata", nodata)
    crs_v = pick("crs", crs)
    tr = pick("transform", transform)
    if isinstance(crs_v, str):
        crs_v = CRS.from_user_input(crs_v)
    if not 1 <= int(zlevel) <= 9:
        raise ValueError(f"zlevel must be 1 to 9 (DEFLATE levels); got {zlevel}")
    if blocksize % 16:
        raise ValueError(f"blocksize must be a multiple of 16 (GeoTIFF tiles); got {blocksize}")

    comp = (compress or "none").lower()
    if comp == "jpeg" and not (dt == np.uint8 and n == 3):
        warnings.warn(
            f"JPEG compression needs 3-band uint8 data (got {n} band(s) of {dt}); using DEFLATE "
            "so values are kept exactly.",
            UserWarning,
            stacklevel=2,
        )
        comp = "deflate"

    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": n,
        "dtype": dt.name,
        "nodata": nd,
        "BIGTIFF": "IF_SAFER",
    }
    if not _is_pixel_only(crs_v, tr):
        profile["crs"] = crs_v
        profile["transform"] = tr if tr is not None else Affine.identity()
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if comp == "jpeg":
        profile.update(compress="jpeg", jpeg_quality=int(quality), photometric="YCBCR")
    elif comp != "none":
        profile["compress"] = comp
        profile["predictor"] = 3 if dt.kind == "f" else 2
        if comp == "deflate":
            profile["zlevel"] = int(zlevel)
    if photometric is not None:
        profile["photometric"] = photometric
    elif "photometric" not in profile and dt == np.uint8 and n == 3:
        profile["photometric"] = "RGB"
    elif "photometric" not in profile and n != 3:
        # GDAL would tag a 4-band uint8 file as RGBA, turning a NIR band into an alpha mask;
        # bands other than plain RGB are written as independent grey bands.
        profile["photometric"] = "MINISBLACK"
    if n > 1:
        profile["interleave"] = "pixel"
    if num_threads is not None and comp != "none":
        profile["num_threads"] = str(num_threads)
    return profile


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceGeoref:
    """What a windowed output needs to know about its source raster.

    Attributes:
        crs: CRS of the source, or None.
        transform: Source geotransform (full-resolution pixel -> CRS units); identity when the
            source has none.
        nodata: Source nodata value (NaN allowed) or None.
        dtype: Source pixel type (numpy name).
        count: Number of source bands.
        path: Source file path, protected from being overwritten; None for in-memory sources.
        gcps: Ground control points (full-resolution pixel frame of the source), if any.
        gcps_crs: CRS of the GCPs' map coordinates.
    """

    crs: CRS | None = None
    transform: Affine = field(default_factory=Affine.identity)
    nodata: float | None = None
    dtype: str = "uint8"
    count: int = 1
    path: Path | None = None
    gcps: tuple[GroundControlPoint, ...] = ()
    gcps_crs: CRS | None = None

    def __post_init__(self) -> None:
        # Normalise the look-alike inputs (CRS strings, numpy dtypes) once, here.
        if isinstance(self.crs, str):
            object.__setattr__(self, "crs", CRS.from_user_input(self.crs))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)

    @property
    def is_georeferenced(self) -> bool:
        """True unless the source has neither a CRS nor a non-identity transform nor GCPs."""
        return not _is_pixel_only(self.crs, self.transform) or bool(self.gcps)

    @classmethod
    def from_dataset(cls, ds: DatasetReader | DatasetWriter) -> SourceGeoref:
        """Describe an open rasterio dataset.

        Args:
            ds: Open dataset.

        Returns:
            Its georeference, pixel type and (for files) path.
        """
        name = str(ds.name)
        path = None if name.startswith("/vsi") or not name else Path(name)
        with warnings.catch_warnings():
            # Reading crs/transform of a pixel-only file warns; pixel-only is a supported case.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            gcps, gcps_crs = ds.gcps
            return cls(
                crs=ds.crs,
                transform=ds.transform,
                nodata=ds.nodata,
                dtype=ds.dtypes[0],
                count=ds.count,
                path=path,
                gcps=tuple(gcps or ()),
                gcps_crs=gcps_crs,
            )

    @classmethod
    def coerce(cls, source: Any) -> SourceGeoref:
        """Build from a :class:`SourceGeoref`, an open dataset, a path, or a look-alike object.

        Args:
            source: A :class:`SourceGeoref`; a rasterio dataset; a path to a raster (opened
                to read its metadata only); or any object with ``crs``, ``transform`` and
                optionally ``nodata``, ``dtype``, ``count``, ``path`` attributes.

        Returns:
            The source description.
        """
        if isinstance(source, SourceGeoref):
            return source
        if isinstance(source, DatasetReader | DatasetWriter):
            return cls.from_dataset(source)
        if isinstance(source, str | os.PathLike):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(source) as ds:
                    return cls.from_dataset(ds)
        path = getattr(source, "path", None)
        return cls(
            crs=getattr(source, "crs", None),
            transform=getattr(source, "transform", None) or Affine.identity(),
            nodata=getattr(source, "nodata", None),
            dtype=np.dtype(getattr(source, "dtype", "uint8")).name,
            count=int(getattr(source, "count", 1)),
            path=Path(path) if path is not None else None,
        )

    def for_window(self, window: Window) -> tuple[CRS | None, Affine | None, list[Any]]:
        """Georeference of an output covering ``window`` of this source.

        Args:
            window: Integral window in the source's full-resolution pixel frame.

        Returns:
            ``(crs, transform, gcps)``: the source CRS and window transform, or ``(None, None,
            [])`` for a pixel-only source; GCPs shifted into the window's pixel frame.
        """
        gcps = [
            GroundControlPoint(
                row=g.row - window.row_off,
                col=g.col - window.col_off,
                x=g.x,
                y=g.y,
                z=g.z,
                id=g.id,
                info=g.info,
            )
            for g in self.gcps
        ]
        if _is_pixel_only(self.crs, self.transform):
            return None, None, gcps
        # A geotransform wins over GCPs (GDAL keeps only one of them in a GeoTIFF).
        t = self.transform
        col, row = window.col_off, window.row_off
        shifted = Affine(
            t.a, t.b, t.c + t.a * col + t.b * row, t.d, t.e, t.f + t.d * col + t.e * row
        )
        return self.crs, shifted, []
