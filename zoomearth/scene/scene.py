"""The UHR scene engine: a lazy raster handle that renders views without decoding whole images.

A :class:`Scene` opens anything rasterio/GDAL reads (GeoTIFF, COG, PNG, JPEG, JPEG2000). Opening
reads only the header; :meth:`Scene.info` converts nothing. Pixels are read through
:meth:`Scene.render` (an RGB uint8 view for planners and people) and :meth:`Scene.read`
(native values for tools), both windowed and -- when downsampling -- served from the smallest
adequate overview level. Rasters that cannot be read by window efficiently (no tiles or no
overviews above ``prepare_min_side`` pixels, e.g. strip TIFF, PNG, JPEG) are transparently read
from a cached tiled, overviewed copy (:mod:`zoomearth.scene.cache`).

Remote scenes. A source may be an ``https://``/``http://``/``s3://`` URL
(:mod:`zoomearth.scene.remote`): a remote COG is read in place through GDAL's ``/vsicurl/`` or
``/vsis3/`` with the project's partial-read options (:meth:`Scene.gdal_env`), a few byte ranges
per view; a remote raster without tiles and overviews is refused above the setting
``remote_max_plain_bytes``, else downloaded once into the scene cache and prepared. Such a scene
has ``is_remote`` True and ``source`` the URL; its ``path`` is only a placeholder naming GDAL's
virtual file (a :class:`~pathlib.Path` cannot hold a URL, it collapses ``//``): it never exists
on disk, so code that stats or protects ``path`` leaves remote scenes alone, and its ``name``
is the URL's file name. :attr:`Scene.identity` names the source's current version (path, size
and mtime; or URL, size, ETag and Last-Modified) for cache keys and fingerprints.

Frames: every box argument is a :class:`~zoomearth.geometry.PixelBox` in full-resolution pixels
(xyxy, half-open). See :mod:`zoomearth.geometry` for the clip/reject policy.

The parts of the engine that need no open raster live beside it: band mapping and display stretch
in :mod:`zoomearth.scene.render`, :class:`View` and view writing in :mod:`zoomearth.scene.view`,
georeference checks in :mod:`zoomearth.scene.georef` and GDAL's quieting in
:mod:`zoomearth.scene.gdal`. Their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoomearth.errors import (
    BandLayoutError,
    BoxError,
    SceneNotFoundError,
    SceneReadError,
    SceneTooLargeError,
)
from zoomearth.geometry import MapBox, PixelBox, ViewSpec, full_to_map, validate_box
from zoomearth.scene import remote

# Moved out of this module; re-exported so that every old import path keeps working.
from zoomearth.scene.gdal import (  # noqa: F401 - some are only re-exported
    RASTERIO_LOGGERS,
    _configure_gdal,
    _gdal_reason,
    capture_gdal_messages,
    quiet_gdal,
)
from zoomearth.scene.georef import (  # noqa: F401 - some are only re-exported
    DEGENERATE_GEOREF_TEMPLATE,
    DEGREES_LOOK_LIKE_METRES_TEMPLATE,
    GEOGRAPHIC_MARGIN_DEG,
    METRES_LOOK_LIKE_DEGREES_TEMPLATE,
    PROJECTED_MIN_PIXEL,
    SceneWarning,
    georeference_warnings,
)
from zoomearth.scene.render import (  # noqa: F401 - some are only re-exported
    BAD_BANDS_TEMPLATE,
    BAND_LAYOUT_TEMPLATE,
    BandMapping,
    alpha_index,
    auto_mapping,
    explicit_mapping,
    palette_lut,
    stretch_range,
    to_uint8,
)
from zoomearth.scene.view import (  # noqa: F401 - some are only re-exported
    FEW_VALID_FRACTION,
    FEW_VALID_PIXELS_TEMPLATE,
    NO_VALID_PIXELS_TEMPLATE,
    VIEW_FORMAT_TEMPLATE,
    VIEW_FORMATS,
    VIEW_JPEG_QUALITY,
    View,
    view_format,
    write_view,
)

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.scene.prepare import ProgressFn

__all__ = [
    "VIEW_FORMATS",
    "BandMapping",
    "Scene",
    "SceneWarning",
    "View",
    "georeference_warnings",
    "quiet_gdal",
    "view_format",
]

log = logging.getLogger(__name__)

NOT_FOUND_TEMPLATE = "No such image: {path}. Check the path (relative paths are from {cwd})."
EMPTY_TEMPLATE = "{path} is empty (0 bytes); re-download or re-export the image."
UNREADABLE_TEMPLATE = (
    "Cannot read {path} as a raster ({reason}). Supported: GeoTIFF/COG, PNG, JPEG, JPEG2000 and "
    "other GDAL formats; if the file is truncated or corrupt, re-download or re-export it."
)
TRUNCATED_TEMPLATE = (
    "{path} appears truncated: its last image block ends at byte {end:,} but the file has "
    "{size:,} bytes. Re-download or re-export the image."
)
TOO_LARGE_TEMPLATE = (
    "{path} declares {width:,} x {height:,} = {pixels:,} pixels, above the limit of {limit:,}. "
    "If the image is genuine, raise the limit (setting max_image_pixels, e.g. "
    "ZOOMEARTH_MAX_IMAGE_PIXELS={suggest})."
)
READ_FAILED_TEMPLATE = (
    "Reading pixels of {path} failed in window {window} ({reason}). The file may be truncated or "
    "corrupt; re-download or re-export it."
)
MAX_SIDE_TEMPLATE = "max_side must be a positive number of pixels; got {value!r}."
#: Words of GDAL messages that say a header fetch of a remote file failed (not just a retry).
FAILED_FETCH_WORDS = ("Failed to read", "Can not read", "Cannot read", "failed")

COMPLEX_TEMPLATE = (
    "{path} holds complex values ({dtype}, e.g. SAR single-look complex), which are not "
    'supported. Convert it to amplitude first, e.g. gdal_calc.py -A {path} --calc "abs(A)" '
    "--type Float32 --outfile amplitude.tif"
)


class Scene:
    """Lazy handle on one raster. Thread-safe for reads (one GDAL handle per thread).

    Use :meth:`open`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bands: tuple[int, ...] | list[int] | None = None,
        settings: Settings | None = None,
        prepare: bool | None = None,
        progress: bool | ProgressFn = True,
    ) -> None:
        """Open ``path`` lazily (headers only).

        Args:
            path: Raster file, or the URL of a remote one (``https://``, ``http://``,
                ``s3://``; see :mod:`zoomearth.scene.remote`).
            bands: Explicit 1-based band mapping (3 for RGB, 1 for grey); None = automatic.
            settings: Effective settings (defaults when None).
            prepare: Force (True) or forbid (False) reading through a cached tiled copy;
                None decides from the layout (:meth:`needs_preparation`).
            progress: When a cached copy must be built: True prints a line on stderr at its
                start and end (and a bar on a terminal); False is silent; a callable
                ``progress(done, total, message)`` receives progress units (see
                :func:`zoomearth.scene.prepare.build_tiled_copy`) -- an exception it raises
                cancels the build and propagates from the pixel read that needed it.

        Raises:
            SceneNotFoundError, SceneReadError, SceneTooLargeError: See messages.
        """
        if settings is None:
            from zoomearth.config import load_settings

            settings = load_settings()
        self.settings = settings
        #: Whether the source is a URL (read through GDAL's network file systems).
        self.is_remote: bool = remote.is_remote(path)
        if self.is_remote:
            #: The source as the user named it: the URL, or the absolute local path.
            self.source: str = remote.normalize_url(str(path))
            #: What GDAL opens: ``/vsicurl/URL``, ``/vsis3/BUCKET/KEY`` or the local path.
            self.gdal_path: str = remote.gdal_path(self.source)
            # A placeholder that never exists on disk (see the module docstring).
            self.path = Path(self.gdal_path)
        else:
            self.path = Path(path).expanduser()
            self.source = str(self.path.resolve())
            self.gdal_path = str(self.path)
        self._prepare_pref = prepare
        self._progress = progress
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stat_lock = threading.Lock()
        self._pixel_path: Path | None = None
        self._stretch: dict[tuple[int, ...], tuple[float, float]] = {}
        _configure_gdal(settings.gdal_cache_mb)
        self._remote_stat: remote.RemoteStat | None = None

        if self.is_remote:
            # What GDAL cached about this URL in this process may be stale (a replaced file).
            remote.clear_cache(self.source, self.settings)
            ds = self._open_dataset(self.path)
            # Every header access may fetch bytes (GDAL reads overview directories lazily): all
            # of it runs with the remote options, and a fetch that failed on the way (GDAL then
            # reports no overviews instead of raising) fails the open with its cause.
            started = time.monotonic()
            with (
                remote.remote_env(self.settings, self.source),
                capture_gdal_messages() as messages,
            ):
                # The size only (known from the open): ETag/Last-Modified cost a request and
                # are fetched when asked for (identity, mtime_ns).
                #: Bytes of the source file (0 for a remote file whose size was withheld).
                self.file_size = remote.stat_remote(self.source, headers=False).size
                self._read_header(ds)
            if any(word in m for m in messages for word in FAILED_FETCH_WORDS):
                failure = self._remote_failure(RuntimeError("header"), messages, started)
                if failure is not None:
                    self.close()
                    raise failure
        else:
            if not self.path.exists():
                raise SceneNotFoundError(
                    NOT_FOUND_TEMPLATE.format(path=self.path, cwd=Path.cwd())
                )
            if self.path.is_dir():
                raise SceneReadError(
                    UNREADABLE_TEMPLATE.format(path=self.path, reason="it is a directory")
                )
            stat = self.path.stat()
            if stat.st_size == 0:
                raise SceneReadError(EMPTY_TEMPLATE.format(path=self.path))
            self.file_size = stat.st_size
            self._mtime_ns = stat.st_mtime_ns
            self._read_header(self._open_dataset(self.path))

        self.band_mapping_override = tuple(bands) if bands else None
        self._mapping: BandMapping | None = None
        if self.band_mapping_override is not None:
            self._mapping = self._explicit_mapping(self.band_mapping_override)

    def _read_header(self, ds: Any) -> None:
        """Read the layout and georeference from the open dataset, and check them (no pixels)."""
        settings = self.settings
        self._local.ds = ds
        self._local.ds_path = self.path
        self.driver: str = ds.driver
        self.width: int = ds.width
        self.height: int = ds.height
        self.count: int = ds.count
        self.dtype: str = ds.dtypes[0]
        self.crs = ds.crs
        self.transform = ds.transform
        self.nodata: float | None = ds.nodata
        self.colorinterp: tuple[str, ...] = tuple(c.name for c in ds.colorinterp)
        self.block_shape: tuple[int, int] = tuple(ds.block_shapes[0]) if ds.count else (0, 0)
        self.overview_factors: tuple[int, ...] = tuple(ds.overviews(1)) if ds.count else ()
        self.descriptions: tuple[str | None, ...] = tuple(ds.descriptions)
        has_geo = not ds.transform.is_identity or ds.crs is not None
        self.georeferenced: bool = bool(has_geo)
        self._colormap: np.ndarray | None = None

        pixels = self.width * self.height
        limit = settings.max_image_pixels
        if pixels > limit:
            self.close()
            raise SceneTooLargeError(
                TOO_LARGE_TEMPLATE.format(
                    path=self.name,
                    width=self.width,
                    height=self.height,
                    pixels=pixels,
                    limit=limit,
                    suggest=10 ** math.ceil(math.log10(pixels + 1)),
                )
            )
        if self.count == 0 or self.width == 0 or self.height == 0:
            self.close()
            raise SceneReadError(UNREADABLE_TEMPLATE.format(path=self.name, reason="no pixels"))
        if self.driver == "GTiff":
            self._check_tiff_complete(ds)
        self._check_values_and_georeference(ds)

    # ------------------------------------------------------------------------------------------
    # opening
    # ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> Scene:
        """Open a raster lazily; see :meth:`__init__` for arguments."""
        return cls(path, **kwargs)

    @property
    def name(self) -> str:
        """How messages name the source: the path as given, or the URL."""
        return self.source if self.is_remote else str(self.path)

    @property
    def remote_stat(self) -> remote.RemoteStat | None:
        """Size, ETag and Last-Modified of a remote source (one HEAD, on first use); else None."""
        if not self.is_remote:
            return None
        if self._remote_stat is None:
            # Its own lock: pixel_path() holds self._lock while preparing, which asks for this.
            with self._stat_lock, remote.remote_env(self.settings, self.source):
                if self._remote_stat is None:
                    stat = remote.stat_remote(self.source)
                    self._remote_stat = stat if stat.size else remote.RemoteStat(
                        self.file_size, stat.etag, stat.last_modified, stat.mtime_ns
                    )
        return self._remote_stat

    @property
    def mtime_ns(self) -> int:
        """Modification time in ns (a remote file's Last-Modified; 0 when it has none)."""
        stat = self.remote_stat
        return stat.mtime_ns if stat is not None else self._mtime_ns

    @property
    def identity(self) -> str:
        """The source's current version: ``path|size|mtime_ns`` or ``URL|size|ETag|Last-Modified``.

        Changes when the file is replaced; cache keys and tile fingerprints use it.
        """
        stat = self.remote_stat
        if stat is not None:
            return stat.identity(self.source)
        return f"{self.source}|{self.file_size}|{self.mtime_ns}"

    def gdal_env(self) -> contextlib.AbstractContextManager[Any]:
        """The GDAL configuration reads of this scene's dataset need (a context manager).

        For a remote scene, ``rasterio.Env`` with :func:`zoomearth.scene.remote.gdal_options`
        (timeouts, retries, range cache, S3 endpoint); for a local one, nothing. Code that reads
        through :meth:`_dataset` directly (warped reads of a time stack) wraps the reads in it.
        """
        if self.is_remote and self.pixel_path() == self.path:
            return remote.remote_env(self.settings, self.source)
        return contextlib.nullcontext()

    def _remote_failure(self, exc: BaseException, messages: list[str], started: float) -> Any:
        """The one-line error naming the HTTP cause of a failed remote open or read, or None."""
        return remote.remote_failure(
            self.source, exc, messages, settings=self.settings, elapsed=time.monotonic() - started
        )

    def _open_dataset(self, path: Path) -> Any:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioError

        if self.is_remote and path == self.path:
            started = time.monotonic()
            with (
                remote.remote_env(self.settings, self.source),
                capture_gdal_messages() as messages,
            ):
                try:
                    with warnings.catch_warnings(), quiet_gdal():
                        warnings.simplefilter("ignore", NotGeoreferencedWarning)
                        return rasterio.open(self.gdal_path)
                except RasterioError as exc:
                    failure = self._remote_failure(exc, messages, started)
                    if failure is not None:
                        raise failure from None
                    reason = str(exc).split("\n")[0].removeprefix(f"{self.gdal_path}: ")
                    if "not recognized as" in reason or "not recognised as" in reason:
                        reason = "not a recognised image format"
                    raise SceneReadError(
                        UNREADABLE_TEMPLATE.format(path=self.source, reason=reason)
                    ) from None
        try:
            with warnings.catch_warnings(), quiet_gdal():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                return rasterio.open(path)
        except RasterioError as exc:
            reason = str(exc).split("\n")[0].removeprefix(f"{path}: ")
            if "not recognized as" in reason or "not recognised as" in reason:
                reason = "not a recognised image format"
            raise SceneReadError(UNREADABLE_TEMPLATE.format(path=path, reason=reason)) from None

    def _check_tiff_complete(self, ds: Any) -> None:
        """Cheap truncation check: the last block of each band must end inside the file."""
        try:
            bh, bw = ds.block_shapes[0]
            last_x = max(0, math.ceil(ds.width / bw) - 1)
            last_y = max(0, math.ceil(ds.height / bh) - 1)
            bidxs = {1, ds.count}
            end = 0
            for b in bidxs:
                off = ds.get_tag_item(f"BLOCK_OFFSET_{last_x}_{last_y}", "TIFF", bidx=b)
                size = ds.get_tag_item(f"BLOCK_SIZE_{last_x}_{last_y}", "TIFF", bidx=b)
                if off and size:
                    end = max(end, int(off) + int(size))
        except Exception:  # noqa: BLE001 - the check is advisory; reads still report corruption
            return
        # A remote server may withhold the size (0): nothing to compare with then.
        if self.file_size and end > self.file_size:
            self.close()
            raise SceneReadError(
                TRUNCATED_TEMPLATE.format(path=self.name, end=end, size=self.file_size)
            )

    def _check_values_and_georeference(self, ds: Any) -> None:
        """Refuse complex-valued rasters; note (and warn about) georeferences that cannot be right.

        Header-only. Complex bands (``complex64``, GDAL's CInt16 ...: SAR single-look complex)
        raise :class:`SceneReadError` with the conversion to amplitude, instead of casting to
        real parts with numpy's ComplexWarning later. Georeference problems
        (:func:`georeference_warnings`) are kept in :attr:`warnings` and issued once as
        :class:`SceneWarning`.
        """
        complex_dtypes = sorted({dt for dt in ds.dtypes if "complex" in dt})
        if complex_dtypes:
            self.close()
            raise SceneReadError(
                COMPLEX_TEMPLATE.format(path=self.name, dtype=", ".join(complex_dtypes))
            )
        #: Notes about the raster found at open (a georeference that cannot be right), one line
        #: each; also in ``info()["warnings"]``.
        self.warnings: list[str] = georeference_warnings(
            self.name, self.crs, self.transform, self.width, self.height
        )
        for text in self.warnings:
            # stacklevel 5: the code that called Scene(...) or Scene.open(...).
            warnings.warn(text, SceneWarning, stacklevel=5)

    def _dataset(self) -> Any:
        """The GDAL handle for pixel reads in this thread (opening the prepared copy if needed)."""
        target = self.pixel_path()
        ds = getattr(self._local, "ds", None)
        if ds is not None and getattr(self._local, "ds_path", None) == target and not ds.closed:
            return ds
        if target != self.path and not target.exists():
            # The cache's size cap removed the prepared copy since; build it again.
            with self._lock:
                self._pixel_path = None
            target = self.pixel_path()
        if ds is not None:
            ds.close()
        ds = self._open_dataset(target)
        self._local.ds = ds
        self._local.ds_path = target
        return ds

    def close(self) -> None:
        """Close this thread's GDAL handle (other threads' handles close when collected)."""
        ds = getattr(self._local, "ds", None)
        if ds is not None:
            ds.close()
            self._local.ds = None

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Scene({self.name!r}, {self.width}x{self.height}x{self.count} {self.dtype})"

    # ------------------------------------------------------------------------------------------
    # layout and preparation
    # ------------------------------------------------------------------------------------------
    @property
    def tiled(self) -> bool:
        """Whether the source is internally tiled (blocks narrower than the image)."""
        bh, bw = self.block_shape
        return bw < self.width and bh > 1

    def needs_preparation(self) -> bool:
        """Whether windowed/decimated reads of the source would be inefficient.

        True for rasters whose long side exceeds ``prepare_min_side`` and that lack internal tiles
        or overviews (strip TIFF, PNG, JPEG): their pixels are then read from a cached tiled,
        overviewed copy built once.
        """
        if self._prepare_pref is not None:
            return self._prepare_pref
        if max(self.width, self.height) <= self.settings.prepare_min_side:
            return False
        return not (self.tiled and self.overview_factors)

    def pixel_path(self) -> Path:
        """The file pixel reads come from: the source, or its prepared copy (built on demand)."""
        if self._pixel_path is None:
            with self._lock:
                if self._pixel_path is None:
                    if self.needs_preparation():
                        self._pixel_path = self.prepare(progress=self._progress)
                    else:
                        self._pixel_path = self.path
        return self._pixel_path

    def prepare(self, progress: bool | ProgressFn = True, *, enforce_budget: bool = True) -> Path:
        """Build (or reuse) the cached tiled, overviewed copy and return its path.

        A copy already in the cache is used whatever its size. Building one runs in a worker
        process for all but small images, so the caller's GIL stays free (an event loop keeps
        answering); see :mod:`zoomearth.scene.prepare`.

        Args:
            progress: See :meth:`__init__`.
            enforce_budget: Refuse, before any work, to build a copy of more than
                ``max_prepare_pixels`` pixels (see :meth:`check_prepare_budget`). False for an
                explicit, one-time preparation the user asked for.

        Raises:
            ScenePrepareBudgetError: Over the budget (nothing was read or written).
            SceneReadError: The source cannot be decoded.
            ScenePrepareError: The copy cannot be written, or the worker process failed.
        """
        from zoomearth.scene.cache import SceneCache

        cache = SceneCache.from_settings(self.settings)
        key = remote.cache_key(self.identity) if self.is_remote else None
        found = cache.lookup(self.path, key=key)
        if found is not None:
            return found
        if enforce_budget:
            self.check_prepare_budget()
        if not self.is_remote:
            return cache.get_or_build(self.path, progress=progress)
        # A remote raster without tiles/overviews: download it once (within the size cap,
        # checked above), then prepare the download like a local strip TIFF.
        text = remote.download_warning(self.source, self.file_size)
        log.warning(text)
        warnings.warn(text, SceneWarning, stacklevel=2)

        def fetch(dest: Path) -> None:
            remote.download(self.source, dest, self.settings)

        return cache.get_or_build(
            Path(remote.display_name(self.source)),
            progress=progress,
            key=key,
            fetch=fetch,
            label=self.source,
        )

    def prepare_reason(self) -> str:
        """Why pixel reads need a prepared copy, in words (e.g. "it has no overviews")."""
        if self._prepare_pref:
            return "a prepared copy was requested"
        if not self.tiled and not self.overview_factors:
            if self.driver != "GTiff":
                return f"{self.driver} images have no internal tiles or overviews"
            return "it has no internal tiles or overviews"
        if not self.tiled:
            return "it is stored in strips, not tiles"
        return "it has no overviews"

    def check_prepare_budget(self) -> None:
        """Refuse (before any work) a preparation larger than the setting ``max_prepare_pixels``.

        Header-only: cheap enough for an upload check. Does nothing when the scene needs no
        preparation or a prepared copy is already cached.

        A remote raster that needs preparing is downloaded first: above the setting
        ``remote_max_plain_bytes`` it is refused too (whatever its pixels).

        Raises:
            ScenePrepareBudgetError: With what to do (convert to a COG, or raise the budget).
            RemoteNotCloudOptimizedError: A remote plain raster above ``remote_max_plain_bytes``.
        """
        from zoomearth.errors import ScenePrepareBudgetError
        from zoomearth.scene.cache import PREPARE_BUDGET_TEMPLATE, SceneCache

        pixels = self.width * self.height
        budget = self.settings.max_prepare_pixels
        if not self.needs_preparation():
            return
        key = remote.cache_key(self.identity) if self.is_remote else None
        if SceneCache.from_settings(self.settings).lookup(self.path, key=key) is not None:
            return
        if self.is_remote:
            # Preparing a remote plain raster means downloading all of it: capped in bytes.
            limit = int(getattr(self.settings, "remote_max_plain_bytes", 256 * 1024**2))
            if self.file_size > limit or not self.file_size:
                raise remote.not_cloud_optimized(
                    self.source, self.file_size, self.prepare_reason(), limit
                )
        if pixels <= budget:
            return
        raise ScenePrepareBudgetError(
            PREPARE_BUDGET_TEMPLATE.format(
                path=self.name,
                width=self.width,
                height=self.height,
                pixels=pixels,
                reason=self.prepare_reason(),
                budget=budget,
                suggest=10 ** math.ceil(math.log10(pixels + 1)),
            )
        )

    # ------------------------------------------------------------------------------------------
    # metadata
    # ------------------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in full-resolution pixels."""
        return self.width, self.height

    @property
    def full_box(self) -> PixelBox:
        """The whole image as a full-resolution box."""
        return PixelBox(0.0, 0.0, float(self.width), float(self.height))

    @property
    def pixel_size_m(self) -> tuple[float, float] | None:
        """Ground sampling distance ``(x, y)`` in CRS units when projected, else None."""
        if self.crs is None or not self.crs.is_projected:
            return None
        return abs(self.transform.a), abs(self.transform.e)

    def band_mapping(self) -> BandMapping:
        """Resolve which bands are shown as RGB (raises BandLayoutError when ambiguous)."""
        if self._mapping is None:
            self._mapping = self._auto_mapping()
        return self._mapping

    def _explicit_mapping(self, bands: tuple[int, ...]) -> BandMapping:
        return explicit_mapping(bands, self.count, self.colorinterp, self.path)

    def _alpha_index(self) -> int | None:
        return alpha_index(self.colorinterp)

    def _auto_mapping(self) -> BandMapping:
        return auto_mapping(self.colorinterp, self.count, self.path)

    def info(self) -> dict[str, Any]:
        """Metadata as a JSON-friendly dict. Reads headers only; never decodes pixels."""
        try:
            mapping = self.band_mapping()
            mapping_info: dict[str, Any] = {
                "rgb": list(mapping.rgb),
                "alpha": mapping.alpha,
                "note": mapping.note,
            }
        except BandLayoutError as exc:
            mapping_info = {"error": str(exc)}
        bounds = full_to_map(self.full_box, self.transform, self.crs_string)
        return {
            "path": self.name,
            "remote": self.is_remote,
            "driver": self.driver,
            "file_size": self.file_size,
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "dtype": self.dtype,
            "nodata": None
            if self.nodata is None
            else ("nan" if math.isnan(self.nodata) else self.nodata),
            "crs": self.crs_string,
            "georeferenced": self.georeferenced,
            "transform": list(self.transform)[:6] if self.georeferenced else None,
            "bounds": bounds.as_list() if self.georeferenced else None,
            "pixel_size": list(self.pixel_size_m) if self.pixel_size_m else None,
            "colorinterp": list(self.colorinterp),
            "descriptions": list(self.descriptions),
            "block_shape": list(self.block_shape),
            "tiled": self.tiled,
            "overviews": list(self.overview_factors),
            "band_mapping": mapping_info,
            "needs_preparation": self.needs_preparation(),
            "warnings": list(self.warnings),
        }

    @property
    def crs_string(self) -> str | None:
        """The CRS as ``EPSG:n`` when it has an EPSG code, else WKT; None when absent."""
        if self.crs is None:
            return None
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.to_wkt()

    def to_map(self, box: PixelBox) -> MapBox | None:
        """Box in map units of the scene's CRS (None for non-georeferenced images)."""
        if not self.georeferenced:
            return None
        return full_to_map(box, self.transform, self.crs_string)

    # ------------------------------------------------------------------------------------------
    # pixels
    # ------------------------------------------------------------------------------------------
    def check_box(self, box: PixelBox | None) -> tuple[PixelBox, list[str]]:
        """Validate a full-resolution box against the image (None = whole image).

        Returns:
            The (clipped) box and any warnings. Raises BoxError for unusable boxes.
        """
        if box is None:
            return self.full_box, []
        clipped, warning = validate_box(box, self.width, self.height)
        return clipped, [warning] if warning else []

    @staticmethod
    def output_size(region: PixelBox, max_side: int | None) -> tuple[int, int]:
        """Pixel size ``(width, height)`` of a view of ``region`` with long side <= max_side.

        Views are never upsampled: a region smaller than ``max_side`` is shown at full resolution.
        """
        rw, rh = region.width, region.height
        if max_side is None:
            return max(1, round(rw)), max(1, round(rh))
        scale = min(1.0, max_side / max(rw, rh))
        return max(1, round(rw * scale)), max(1, round(rh * scale))

    def read(
        self,
        box: PixelBox | None = None,
        out_size: tuple[int, int] | None = None,
        bands: tuple[int, ...] | list[int] | None = None,
        resampling: str = "average",
    ) -> np.ma.MaskedArray:
        """Read native pixel values of a region (windowed; decimated through overviews).

        Args:
            box: Full-resolution box; snapped outwards to integer pixel edges. None = whole image
                (only sensible with a small ``out_size``).
            out_size: ``(width, height)`` of the result; None = full resolution.
            bands: 1-based band indexes; None = all bands.
            resampling: GDAL resampling name used when ``out_size`` differs from the window.

        Returns:
            Masked array of shape ``(bands, height, width)`` in the source dtype; the mask is True
            where nodata, transparent, NaN or +-Inf (no tool or stretch can use an infinite value,
            so it counts as missing, like NaN).

        Raises:
            BoxError: For unusable boxes. SceneReadError: If GDAL cannot decode the window.
        """
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        region, _ = self.check_box(box)
        region = region.snap_out()
        col, row, w, h = region.to_window()
        indexes = list(bands) if bands else list(range(1, self.count + 1))
        shape = None
        if out_size is not None:
            ow, oh = out_size
            if ow <= 0 or oh <= 0:
                raise BoxError(f"out_size must be positive; got {out_size}.")
            shape = (len(indexes), int(oh), int(ow))
        ds = self._dataset()
        started = time.monotonic()
        messages: list[str] = []
        capture = capture_gdal_messages() if self.is_remote else contextlib.nullcontext(messages)
        try:
            with self.gdal_env(), capture as messages, quiet_gdal():
                data = ds.read(
                    indexes,
                    window=Window(col, row, w, h),
                    out_shape=shape,
                    resampling=getattr(Resampling, resampling),
                    masked=True,
                )
        except Exception as exc:
            from rasterio.errors import RasterioError

            if isinstance(exc, RasterioError | OSError):
                failure = (
                    self._remote_failure(exc, messages, started)
                    if self.is_remote and ds.name == self.gdal_path
                    else None
                )
                if failure is not None:
                    raise failure from None
                raise SceneReadError(
                    READ_FAILED_TEMPLATE.format(
                        path=self.name,
                        window=[col, row, col + w, row + h],
                        reason=_gdal_reason(exc),
                    )
                ) from None
            raise
        if np.issubdtype(data.dtype, np.floating):
            not_finite = ~np.isfinite(data.data)
            if not_finite.any():
                data.mask = np.ma.getmaskarray(data) | not_finite
        return data

    def _stretch_for(self, rgb_bands: tuple[int, ...]) -> tuple[float, float]:
        """Display range for non-uint8 data: joint percentiles over the overview's valid pixels."""
        if rgb_bands in self._stretch:
            return self._stretch[rgb_bands]
        w, h = self.output_size(self.full_box, 1024)
        sample = self.read(None, out_size=(w, h), bands=rgb_bands, resampling="nearest")
        values = sample.compressed().astype(np.float64)
        lo, hi = stretch_range(values, self.settings.stretch_percentiles, self.dtype)
        self._stretch[rgb_bands] = (lo, hi)
        return lo, hi

    def render(
        self, box: PixelBox | None = None, max_side: int | None = 512, *, view_id: int = 0
    ) -> View:
        """Render a region as an RGB uint8 view with long side <= ``max_side``.

        Reads through the smallest adequate overview (GDAL picks the level for the decimation) or
        a windowed full-resolution read; never decodes the whole image at full resolution.

        Args:
            box: Full-resolution region; None = the whole image (the overview). Boxes partly
                outside are clipped (warning in ``View.warnings``); unusable ones raise BoxError.
            max_side: Long side of the result in pixels (no upsampling); must be positive.
            view_id: Id recorded in the view's spec.

        Returns:
            The :class:`View` (pixels, validity mask and exact frame).
        """
        if max_side is not None and (
            isinstance(max_side, bool)
            or not isinstance(max_side, int | float)
            or not math.isfinite(max_side)
            or max_side < 1
        ):
            raise BoxError(MAX_SIDE_TEMPLATE.format(value=max_side))
        mapping = self.band_mapping()
        region, notes = self.check_box(box)
        region = region.snap_out()
        ow, oh = self.output_size(region, None if max_side is None else int(max_side))
        bands = mapping.rgb + ((mapping.alpha,) if mapping.alpha else ())
        data = self.read(region, out_size=(ow, oh), bands=bands)
        colour = data[: len(mapping.rgb)]
        valid = ~np.ma.getmaskarray(colour).any(axis=0)
        if mapping.alpha:
            alpha = np.ma.getdata(data[-1])
            valid &= alpha > 0
        rgb = self._to_uint8(colour, mapping)
        if rgb.shape[0] == 1:
            rgb = np.repeat(rgb, 3, axis=0)
        rgb = np.ascontiguousarray(np.moveaxis(rgb, 0, -1))
        rgb[~valid] = 0
        spec = ViewSpec(view_id=view_id, region=region, width=ow, height=oh)
        return View(spec=spec, rgb=rgb, valid=np.asarray(valid, dtype=bool), warnings=notes)

    def _to_uint8(self, colour: np.ma.MaskedArray, mapping: BandMapping) -> np.ndarray:
        raw = np.ma.getdata(colour)
        if raw.dtype == np.uint8:
            if len(mapping.rgb) == 1 and self.colorinterp[mapping.rgb[0] - 1] == "palette":
                return self._apply_palette(raw[0])
            return raw.copy()
        lo, hi = self._stretch_for(mapping.rgb)
        return to_uint8(raw, lo, hi)

    def write_view(
        self, view: View, path: str | os.PathLike[str], *, protect: Iterable[Any] = ()
    ) -> Path:
        """Write a view rendered from this scene; returns the path written.

        The extension names the format (:data:`VIEW_FORMATS`): PNG, JPEG, or a GeoTIFF
        georeferenced to the view with this scene's CRS and transform (pixel-only without one).
        Invalid pixels are black; written atomically (:func:`zoomearth.scene.view.write_view`).
        ``protect`` names inputs that must not be overwritten (this scene's file always is).

        Raises:
            OutputWriteError: Unsupported extension (before anything is written).
            ProtectedPathError: ``path`` is this scene or another protected input.
        """
        return write_view(
            view,
            path,
            protect=[self.path, *protect],
            crs=self.crs,
            transform=self.transform if self.georeferenced else None,
        )

    def _apply_palette(self, index: np.ndarray) -> np.ndarray:
        if self._colormap is None:
            self._colormap = palette_lut(self._dataset().colormap(1))
        return np.moveaxis(self._colormap[index], -1, 0)
