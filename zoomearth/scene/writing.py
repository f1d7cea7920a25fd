"""Raster output writing: windowed GeoTIFFs, a streaming tiled writer and PNG previews.

Every output is written **atomically**: GDAL (or the PNG encoder) writes a hidden temporary file
in the destination directory, named for its owner (``.NAME.tmp-HOST-PID-RANDOM.EXT``,
:func:`zoomearth.temporaries.temporary_sibling`), which is renamed onto the final path with
:func:`os.replace` only when everything succeeded. On any exception (``KeyboardInterrupt`` and the
CLI's SIGTERM included) the temporary file and the sidecars GDAL may have created beside it
(``.aux.xml``, ``.ovr``, ``.msk``) are removed, so a failed tool leaves neither a half-written
output nor litter. A process killed with SIGKILL cannot clean up; the next write of the same output
removes the temporaries of it whose owner process is gone. An output path that is the same file as
a protected input (resolved path or :func:`os.path.samefile`) is refused with
:class:`~zoomearth.errors.ProtectedPathError` before anything is written: tools never touch their
input.

Failed writes. GDAL reports a GeoTIFF block it could not write (full disk, quota, file size limit)
only on stderr and carries on, so :class:`TiledRasterWriter` checks the closed file itself: every
tile of every image directory must have bytes that end inside the file
(:func:`tiff_block_problem`); a file that fails is never renamed onto the output. A failure becomes
one :class:`~zoomearth.errors.OutputWriteError` that names the cause -- "No space left on the
device holding DIR", the process's file size limit, or the reason -- and the final output, never
the temporary name (:func:`write_failure`). Before a large raster is started, the free space of
the destination is checked against an upper estimate of its size (:func:`estimate_output_bytes`).

Georeference policy. An output covering a window of a source raster is aligned to it: same CRS,
geotransform = the source's transform of that window (:func:`rasterio.windows.transform`), ground
control points shifted by the window offset. A source *without* georeference (rasterio reports
``crs is None`` and an identity transform -- PNG, JPEG, plain TIFF) gives a *pixel-only* output: no
CRS and no geotransform are written, so GDAL does not invent one. Every windowed output records its
source window in the ``ZOOMEARTH_SOURCE_WINDOW`` tag (``"col_off,row_off,width,height"``, full
resolution pixels of the source) so pixel-only outputs can still be placed back.

Layout: tiled (512 px blocks), compressed, ``BIGTIFF=IF_SAFER``, internal overviews with factors
2, 4, 8, ... while the overview's long side stays >= 256 px. JPEG (YCbCr, lossy) is only used for
3-band ``uint8`` images and only when asked for; everything else is DEFLATE (level 1 by default:
:data:`~zoomearth.scene.profiles.DEFLATE_LEVEL`) with a horizontal (integers) or floating-point
predictor, which keeps values exactly.

Memory: :class:`TiledRasterWriter` hands each tile to GDAL at once and keeps nothing; GDAL's block
cache (``GDAL_CACHEMAX``, set by the caller with :class:`rasterio.Env`) bounds what GDAL holds.
Write tiles in row-major order so a block is complete, and compressed once, before the cache
evicts it.

Modules: :mod:`~zoomearth.scene.atomic` (atomic paths, protected inputs, stale temporaries),
:mod:`~zoomearth.scene.write_failures` (free space, size limits, write-failure errors),
:mod:`~zoomearth.scene.tiff_check` (the TIFF block check), :mod:`~zoomearth.scene.profiles`
(creation profiles, source georeference) and :mod:`~zoomearth.scene.png` (PNG previews); this
module holds the streaming :class:`TiledRasterWriter` and :func:`write_window_array`, and
re-exports the others' names, so ``from zoomearth.scene.writing import ...`` works for all of
them. :class:`TiledRasterWriter` looks its checks up here (``free_bytes``,
``check_free_space``, ``tiff_block_problem``), so patching them on this module reaches the writer;
``check_free_space`` and ``write_failure`` themselves read ``free_bytes`` from
:mod:`~zoomearth.scene.write_failures` (patch it there for them).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetWriter
from rasterio.windows import Window

from zoomearth.errors import OutputWriteError
from zoomearth.scene.atomic import NOTHING_WRITTEN_TEMPLATE as NOTHING_WRITTEN_TEMPLATE
from zoomearth.scene.atomic import PROTECTED_TEMPLATE as PROTECTED_TEMPLATE
from zoomearth.scene.atomic import (
    SIDECAR_SUFFIXES,
    atomic_path,
    check_not_protected,
    sweep_stale_siblings,
)
from zoomearth.scene.png import PNG_ENCODE_TEMPLATE as PNG_ENCODE_TEMPLATE
from zoomearth.scene.png import PNG_SHAPE_TEMPLATE as PNG_SHAPE_TEMPLATE
from zoomearth.scene.png import write_png
from zoomearth.scene.profiles import (
    DEFLATE_LEVEL,
    KEEP,
    OverviewResampling,
    SourceGeoref,
    _Keep,
    output_profile,
    overview_factors,
)
from zoomearth.scene.tiff_check import tiff_block_problem
from zoomearth.scene.write_failures import COMPRESSED_RATIO_BOUND as COMPRESSED_RATIO_BOUND
from zoomearth.scene.write_failures import (
    NEARLY_FULL_BYTES,
    check_free_space,
    estimate_output_bytes,
    file_size_limit,
    format_bytes,
    free_bytes,
    mask_temporary_names,
    write_failure,
)
from zoomearth.scene.write_failures import NO_SPACE_TEMPLATE as NO_SPACE_TEMPLATE
from zoomearth.scene.write_failures import NOT_ENOUGH_SPACE_TEMPLATE as NOT_ENOUGH_SPACE_TEMPLATE
from zoomearth.scene.write_failures import OVERVIEW_SHARE as OVERVIEW_SHARE
from zoomearth.scene.write_failures import QUOTA_TEMPLATE as QUOTA_TEMPLATE
from zoomearth.scene.write_failures import SIZE_LIMIT_TEMPLATE as SIZE_LIMIT_TEMPLATE
from zoomearth.scene.write_failures import SPACE_SAFETY as SPACE_SAFETY
from zoomearth.scene.write_failures import TOO_LARGE_FOR_FS_TEMPLATE as TOO_LARGE_FOR_FS_TEMPLATE
from zoomearth.scene.write_failures import WRITE_FAILED_TEMPLATE as WRITE_FAILED_TEMPLATE

__all__ = [
    "DEFLATE_LEVEL",
    "KEEP",
    "SIDECAR_SUFFIXES",
    "SourceGeoref",
    "TiledRasterWriter",
    "atomic_path",
    "check_free_space",
    "check_not_protected",
    "estimate_output_bytes",
    "file_size_limit",
    "format_bytes",
    "free_bytes",
    "mask_temporary_names",
    "output_profile",
    "overview_factors",
    "sweep_stale_siblings",
    "tiff_block_problem",
    "write_failure",
    "write_png",
    "write_window_array",
]

WINDOW_SHAPE_TEMPLATE = (
    "Array of shape {shape} does not match the window {window} (expected (bands, {height}, "
    "{width}) or ({height}, {width}))."
)
WINDOW_OUTSIDE_TEMPLATE = "Window {window} lies outside the output raster of {width}x{height} px."
DTYPE_LOSS_TEMPLATE = (
    "Array dtype {got} does not fit the output dtype {want} without loss; pass dtype='{got}' to "
    "write it as is, or convert the array first (e.g. np.clip(a, lo, hi).astype('{want}'))."
)
RANGE_TEMPLATE = (
    "Array values do not fit {want} ({lo}..{hi}) or are not finite; clip or rescale them first."
)
NOT_INTEGRAL_TEMPLATE = "Window {window} must have integer offsets and sizes; round it first."
BAND_COUNT_TEMPLATE = "Array has {got} bands but the output was opened with {want}."
NOT_OPEN_TEMPLATE = "TiledRasterWriter for {output} is not open; use it as a context manager."


# --------------------------------------------------------------------------------------------
# Streaming writer
# --------------------------------------------------------------------------------------------


def _as_window(window: Window | Sequence[int]) -> Window:
    win = window if isinstance(window, Window) else Window(*window)
    vals = (win.col_off, win.row_off, win.width, win.height)
    if any(float(v) != int(v) for v in vals):
        raise ValueError(NOT_INTEGRAL_TEMPLATE.format(window=win))
    return Window(*(int(v) for v in vals))


def _as_bands(array: np.ndarray) -> np.ndarray:
    return array[np.newaxis] if array.ndim == 2 else array


def _cast_to(array: np.ndarray, dtype: np.dtype[Any], *, strict: bool) -> np.ndarray:
    """Convert to ``dtype``: lossless casts always; others only when not ``strict``.

    Non-strict conversions round floats to integers and refuse values the target cannot hold
    (NaN, out of range) instead of wrapping them silently.
    """
    if array.dtype == dtype:
        return array
    if np.can_cast(array.dtype, dtype, casting="safe"):
        return array.astype(dtype)
    if strict or array.dtype.kind not in "biuf":
        raise ValueError(DTYPE_LOSS_TEMPLATE.format(got=array.dtype.name, want=dtype.name))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        data = np.rint(array) if array.dtype.kind == "f" else array
        if array.size and (
            not np.isfinite(data).all() or data.min() < info.min or data.max() > info.max
        ):
            raise ValueError(RANGE_TEMPLATE.format(want=dtype.name, lo=info.min, hi=info.max))
        return data.astype(dtype)
    return array.astype(dtype)


class TiledRasterWriter:
    """Stream a large GeoTIFF to disk tile by tile; overviews and atomic rename on close.

    Use as a context manager::

        with TiledRasterWriter(out, width=W, height=H, count=3, dtype="uint8",
                               crs=crs, transform=tr, compress="jpeg") as w:
            for window in windows:
                w.write(make_tile(window), window)

    On a clean exit, overviews are built (``overview_resampling``: ``"average"`` for continuous
    data, ``"nearest"`` or ``"mode"`` for masks and class maps), the file is closed and renamed
    onto ``path``. On an exception the temporary file is removed and ``path`` is untouched.

    Memory: each array passed to :meth:`write` goes straight to GDAL; nothing is accumulated
    here. GDAL's block cache (``GDAL_CACHEMAX``) bounds the rest; set it with
    :class:`rasterio.Env` around the writer. Blocks are compressed by ``num_threads`` GDAL
    threads.

    Disk space: entering refuses with :class:`~zoomearth.errors.OutputWriteError` ("Not enough
    free space in DIR ...") when the destination's device has less free space than
    :attr:`estimated_bytes`, an upper estimate: ``width x height x count x dtype size`` times the
    compression's ratio bound (1.0 lossless, 0.35 JPEG; ``space_ratio`` overrides it), 4/3 with
    overviews and a safety factor of 1.1 (:func:`estimate_output_bytes`). Each :meth:`write`
    checks that the device is not full and the file not at the process's size limit, so a disk
    that fills up meanwhile stops the output at once; on close the file is checked block by
    block (:func:`tiff_block_problem`) before it is renamed. Every failure is one
    ``OutputWriteError`` naming the cause and ``path`` (:func:`write_failure`).

    Attributes:
        path: Final output path.
        profile: Creation profile (see :func:`output_profile`).
        temp_path: Temporary path while open, else None.
        finished: True once the file has been renamed onto ``path``.
        overview_seconds: Wall time spent building overviews (after closing).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        count: int,
        dtype: str | np.dtype[Any] | type,
        crs: CRS | str | None = None,
        transform: Affine | None = None,
        nodata: float | None = None,
        compress: str = "deflate",
        blocksize: int = 512,
        quality: int = 90,
        zlevel: int = DEFLATE_LEVEL,
        photometric: str | None = None,
        overviews: bool = True,
        overview_resampling: OverviewResampling = "average",
        min_overview_size: int = 256,
        gcps: Sequence[GroundControlPoint] = (),
        gcps_crs: CRS | None = None,
        tags: Mapping[str, str] | None = None,
        protect: Iterable[Any] = (),
        progress: bool = False,
        progress_desc: str | None = None,
        space_ratio: float | None = None,
    ) -> None:
        """Prepare the writer (nothing is created until the context is entered).

        Args:
            path: Final output path (``.tif``).
            width: Output width in pixels.
            height: Output height in pixels.
            count: Number of bands.
            dtype: Pixel type.
            crs: Output CRS, or None for pixel-only outputs.
            transform: Output geotransform, or None for pixel-only outputs.
            nodata: Nodata value or None.
            compress: See :func:`output_profile`.
            blocksize: Tile size in pixels.
            quality: JPEG quality.
            zlevel: DEFLATE level (see :func:`output_profile`).
            photometric: See :func:`output_profile`.
            overviews: Build internal overviews on close.
            overview_resampling: GDAL resampling for overviews.
            min_overview_size: See :func:`overview_factors`.
            gcps: Ground control points in the output's pixel frame.
            gcps_crs: CRS of the GCPs.
            tags: Dataset-level metadata tags.
            protect: Input paths the output must not overwrite.
            progress: Show a tqdm bar over the pixels written.
            progress_desc: Label of the bar (default: the file name).
            space_ratio: Bound on compressed / raw bytes for the free-space check, for data
                that compresses far better than the codec's bound (e.g. a 0/1 mask).
        """
        self.path = Path(path)
        self.profile = output_profile(
            width=width,
            height=height,
            count=count,
            dtype=dtype,
            nodata=nodata,
            crs=crs,
            transform=transform,
            blocksize=blocksize,
            compress=compress,
            photometric=photometric,
            quality=quality,
            zlevel=zlevel,
        )
        if gcps:
            self.profile["gcps"] = list(gcps)
            self.profile["crs"] = gcps_crs
        self.dtype = np.dtype(self.profile["dtype"])
        self.overviews = overviews
        self.overview_resampling = Resampling[overview_resampling]
        self.min_overview_size = min_overview_size
        self.tags = dict(tags or {})
        self.protect = tuple(protect)
        self.progress = progress
        self.progress_desc = progress_desc
        #: Upper estimate of the file's size in bytes (the free-space check).
        self.estimated_bytes = estimate_output_bytes(
            self.width,
            self.height,
            int(self.profile["count"]),
            self.dtype,
            compress=self.profile.get("compress"),
            quality=int(self.profile.get("jpeg_quality", quality)),
            overviews=bool(
                overviews and overview_factors(self.width, self.height, min_size=min_overview_size)
            ),
            ratio=space_ratio,
        )
        self.temp_path: Path | None = None
        self.finished = False
        self.overview_seconds = 0.0
        self._atomic: contextlib.AbstractContextManager[Path] | None = None
        self._ds: DatasetWriter | None = None
        self._bar: Any = None

    @classmethod
    def for_window(
        cls,
        path: str | os.PathLike[str],
        source: Any,
        window: Window | Sequence[int],
        *,
        count: int | None = None,
        dtype: str | np.dtype[Any] | type | None = None,
        nodata: float | None | _Keep = KEEP,
        tags: Mapping[str, str] | None = None,
        protect: Iterable[Any] = (),
        **kwargs: Any,
    ) -> TiledRasterWriter:
        """A writer whose output is aligned to ``window`` of ``source``.

        Args:
            path: Final output path.
            source: Anything :meth:`SourceGeoref.coerce` accepts. Its file path is protected.
            window: Integral window of the source (full-resolution pixels).
            count: Bands of the output (default: the source's).
            dtype: Pixel type (default: the source's).
            nodata: Nodata value (default: the source's).
            tags: Extra tags; ``ZOOMEARTH_SOURCE_WINDOW`` is always added.
            protect: Further protected input paths.
            **kwargs: Passed to the constructor (``compress``, ``overview_resampling`` ...).

        Returns:
            An unopened writer.
        """
        src = SourceGeoref.coerce(source)
        win = _as_window(window)
        crs, transform, gcps = src.for_window(win)
        all_tags = {
            "ZOOMEARTH_SOURCE_WINDOW": f"{win.col_off},{win.row_off},{win.width},{win.height}"
        }
        if src.path is not None:
            all_tags["ZOOMEARTH_SOURCE"] = src.path.name
        all_tags.update(tags or {})
        return cls(
            path,
            width=win.width,
            height=win.height,
            count=src.count if count is None else count,
            dtype=src.dtype if dtype is None else dtype,
            crs=crs,
            transform=transform,
            nodata=src.nodata if nodata is KEEP else nodata,
            gcps=gcps,
            gcps_crs=src.gcps_crs,
            tags=all_tags,
            protect=(*protect, src.path),
            **kwargs,
        )

    @property
    def width(self) -> int:
        """Output width in pixels."""
        return int(self.profile["width"])

    @property
    def height(self) -> int:
        """Output height in pixels."""
        return int(self.profile["height"])

    def __enter__(self) -> Self:
        """Check the free space, create the temporary file and open it for writing.

        Raises:
            ProtectedPathError: ``path`` is a protected input.
            OutputWriteError: Not enough free space for :attr:`estimated_bytes`, or the file
                cannot be created; nothing is left behind.
        """
        check_not_protected(self.path, self.protect)
        check_free_space(self.path, self.estimated_bytes)
        self._atomic = atomic_path(self.path, protect=self.protect)
        self.temp_path = self._atomic.__enter__()
        try:
            with warnings.catch_warnings():
                # Opening a pixel-only output warns that it has no geotransform -- on purpose.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = self._gdal(rasterio.open, self.temp_path, "w", **self.profile)
            if self.tags:
                self._ds.update_tags(**self.tags)
            if self.progress:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=self.width * self.height,
                    desc=self.progress_desc or self.path.name,
                    unit="px",
                    unit_scale=True,
                    leave=False,
                )
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def write(
        self,
        array: np.ndarray,
        window: Window | Sequence[int],
        valid: np.ndarray | None = None,
    ) -> None:
        """Write one tile.

        Args:
            array: ``(bands, h, w)`` or ``(h, w)`` array, converted to the output dtype (floats
                rounded for integer outputs; values that do not fit raise ValueError).
            window: Integral window of the output (``Window`` or ``(col_off, row_off, width,
                height)``), fully inside it.
            valid: Optional ``(h, w)`` bool array; when given, it is written as the output's
                per-dataset mask (GDAL mask band: 255 valid, 0 invalid), for sources whose
                invalid pixels are marked by a mask or alpha band rather than a nodata value.

        Raises:
            ValueError: Shape, band count, window or dtype mismatch.
            OutputWriteError: The writer is not open.
        """
        if self._ds is None:
            raise OutputWriteError(NOT_OPEN_TEMPLATE.format(output=self.path))
        win = _as_window(window)
        data = _as_bands(np.asarray(array))
        if data.ndim != 3 or data.shape[1:] != (win.height, win.width):
            raise ValueError(
                WINDOW_SHAPE_TEMPLATE.format(
                    shape=np.shape(array), window=win, height=win.height, width=win.width
                )
            )
        if data.shape[0] != self.profile["count"]:
            raise ValueError(
                BAND_COUNT_TEMPLATE.format(got=data.shape[0], want=self.profile["count"])
            )
        if (
            win.col_off < 0
            or win.row_off < 0
            or win.col_off + win.width > self.width
            or win.row_off + win.height > self.height
        ):
            raise ValueError(
                WINDOW_OUTSIDE_TEMPLATE.format(window=win, width=self.width, height=self.height)
            )
        if valid is not None and np.shape(valid) != (win.height, win.width):
            raise ValueError(
                WINDOW_SHAPE_TEMPLATE.format(
                    shape=np.shape(valid), window=win, height=win.height, width=win.width
                )
            )
        self._gdal(self._ds.write, _cast_to(data, self.dtype, strict=False), window=win)
        if valid is not None:
            mask = np.where(valid, 255, 0).astype(np.uint8)
            self._gdal(self._ds.write_mask, mask, window=win)
        self._check_room()
        if self._bar is not None:
            self._bar.update(win.width * win.height)

    def _finish(self) -> None:
        assert self._ds is not None and self._atomic is not None
        ds, self._ds = self._ds, None
        try:
            factors = (
                overview_factors(self.width, self.height, min_size=self.min_overview_size)
                if self.overviews
                else []
            )
            if factors:
                if self._bar is not None:
                    self._bar.set_postfix_str("overviews")
                block = str(self.profile.get("blockxsize", 512))
                env: dict[str, Any] = {"GDAL_TIFF_OVR_BLOCKSIZE": block}
                if self.profile.get("compress") == "jpeg":
                    # Internal overviews would otherwise use GDAL's default quality (75).
                    env["JPEG_QUALITY_OVERVIEW"] = str(self.profile.get("jpeg_quality", 90))
                t0 = time.perf_counter()
                with rasterio.Env(**env):
                    self._gdal(ds.build_overviews, factors, self.overview_resampling)
                ds.update_tags(ns="rio_overview", resampling=self.overview_resampling.name)
                self.overview_seconds = time.perf_counter() - t0
            self._gdal(ds.close)
            # GDAL reports blocks it could not write only on stderr: check the file itself.
            assert self.temp_path is not None
            problem = tiff_block_problem(self.temp_path)
            if problem is not None:
                raise write_failure(
                    self.path, reason=f"incomplete file: {problem}", temp=self.temp_path
                )
        except BaseException as exc:
            ds.close()
            self._abort(exc)
            raise
        self._close_bar()
        atomic, self._atomic = self._atomic, None
        atomic.__exit__(None, None, None)
        self.temp_path = None
        self.finished = True

    def _gdal(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a GDAL call; its I/O errors become an :class:`OutputWriteError` about ``path``."""
        try:
            return call(*args, **kwargs)
        except (RasterioError, CPLE_BaseError) as exc:
            raise write_failure(
                self.path, reason=str(exc), error_number=None, temp=self.temp_path
            ) from exc

    def _check_room(self) -> None:
        """Stop at once when the device is full or the file at the size limit (see class doc)."""
        tmp = self.temp_path
        if tmp is None:
            return
        limit = file_size_limit()
        if limit is not None:
            try:
                size = tmp.stat().st_size
            except OSError:
                size = 0
            if size >= limit - 65536:
                raise write_failure(self.path, error_number=errno.EFBIG, temp=tmp)
        free = free_bytes(self.path.parent)
        if free is not None and free < NEARLY_FULL_BYTES:
            raise write_failure(self.path, error_number=errno.ENOSPC, temp=tmp)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _abort(self, exc: BaseException) -> None:
        self._close_bar()
        if self._ds is not None:
            ds, self._ds = self._ds, None
            with contextlib.suppress(Exception):  # the original error matters, not this one
                ds.close()
        if self._atomic is not None:
            atomic, self._atomic = self._atomic, None
            with contextlib.suppress(BaseException):
                # Lets atomic_path remove the temporary file and its sidecars.
                atomic.__exit__(type(exc), exc, exc.__traceback__)
        self.temp_path = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Finish (overviews, close, rename) on success; remove the temporary file on error."""
        if exc is None:
            self._finish()
        else:
            self._abort(exc)


# --------------------------------------------------------------------------------------------
# One-shot writers
# --------------------------------------------------------------------------------------------


def write_window_array(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    source: Any,
    window: Window | Sequence[int],
    dtype: str | np.dtype[Any] | type | None = None,
    nodata: float | None | _Keep = KEEP,
    compress: str = "deflate",
    overviews: bool = True,
    overview_resampling: OverviewResampling = "average",
    tags: Mapping[str, str] | None = None,
    protect: Iterable[Any] = (),
    **kwargs: Any,
) -> Path:
    """Write an array covering ``window`` of ``source`` as a new aligned GeoTIFF, atomically.

    The output has the source's CRS and the window's transform (pixel-only when the source has no
    georeference), the source's nodata unless ``nodata`` is given, the array's band count, and the
    source's dtype unless ``dtype`` is given. It is tiled, compressed and overviewed.

    Args:
        path: Output path. Must not be the source file (refused).
        array: Pixels, ``(bands, window.height, window.width)`` or ``(window.height,
            window.width)``, in the window's pixel frame.
        source: Anything :meth:`SourceGeoref.coerce` accepts (open dataset, path, description).
        window: Integral window of the source, full-resolution pixels.
        dtype: Output dtype. Default: the source's, and then only lossless casts are done (a
            float64 array for a uint8 source is refused); a stated dtype converts with range
            checks.
        nodata: Output nodata (default: the source's).
        compress: See :func:`output_profile`.
        overviews: Build internal overviews.
        overview_resampling: ``"average"`` for continuous data, ``"nearest"``/``"mode"`` for
            masks and categorical maps.
        tags: Extra dataset tags.
        protect: Further protected input paths.
        **kwargs: Passed to :class:`TiledRasterWriter` (``blocksize``, ``quality`` ...).

    Returns:
        The final path.
    """
    data = _as_bands(np.asarray(array))
    win = _as_window(window)
    src = SourceGeoref.coerce(source)
    # Keeping the source's dtype must not silently change values; a stated dtype converts.
    data = _cast_to(data, np.dtype(src.dtype if dtype is None else dtype), strict=dtype is None)
    writer = TiledRasterWriter.for_window(
        path,
        src,
        win,
        count=data.shape[0] if data.ndim == 3 else None,
        dtype=dtype,
        nodata=nodata,
        compress=compress,
        overviews=overviews,
        overview_resampling=overview_resampling,
        tags=tags,
        protect=protect,
        **kwargs,
    )
    with writer:
        writer.write(data, Window(0, 0, win.width, win.height))
    return writer.path
