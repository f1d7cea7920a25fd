"""The UHR scene engine: a lazy raster handle that renders views without decoding whole images.

A :class:`Scene` opens anything rasterio/GDAL reads (GeoTIFF, COG, PNG, JPEG, JPEG2000). Opening
reads only the header; :meth:`Scene.info` converts nothing. Pixels are read through
:meth:`Scene.render` (an RGB uint8 view for planners and people) and :meth:`Scene.read`
(native values for tools), both windowed and -- when downsampling -- served from the smallest
adequate overview level. Rasters that cannot be read by window efficiently (no tiles or no
overviews above ``prepare_min_side`` pixels, e.g. strip TIFF, PNG, JPEG) are transparently read
from a cached tiled, overviewed copy (:mod:`zoomearth.scene.cache`).

Frames: every box argument is a :class:`~zoomearth.geometry.PixelBox` in full-resolution pixels
(xyxy, half-open). See :mod:`zoomearth.geometry` for the clip/reject policy.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoomearth.errors import (
    BandLayoutError,
    BoxError,
    OutputWriteError,
    SceneNotFoundError,
    SceneReadError,
    SceneTooLargeError,
)
from zoomearth.geometry import (
    MapBox,
    PixelBox,
    ViewSpec,
    full_to_map,
    is_degenerate_transform,
    validate_box,
)

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.scene.cache import ProgressFn

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
BAND_LAYOUT_TEMPLATE = (
    "{path} has {count} bands (colour interpretation: {interp}); which to show as RGB is "
    "ambiguous. Choose bands explicitly: Scene.open(path, bands=(R, G, B)) or on the command "
    "line --bands R,G,B (1-based, e.g. --bands 3,2,1), or a single band for grey."
)
BAD_BANDS_TEMPLATE = (
    "Band mapping {bands} is invalid for {path} with {count} bands: give 1 or 3 band numbers "
    "between 1 and {count}."
)
READ_FAILED_TEMPLATE = (
    "Reading pixels of {path} failed in window {window} ({reason}). The file may be truncated or "
    "corrupt; re-download or re-export it."
)
MAX_SIDE_TEMPLATE = "max_side must be a positive number of pixels; got {value!r}."
COMPLEX_TEMPLATE = (
    "{path} holds complex values ({dtype}, e.g. SAR single-look complex), which are not "
    'supported. Convert it to amplitude first, e.g. gdal_calc.py -A {path} --calc "abs(A)" '
    "--type Float32 --outfile amplitude.tif"
)
DEGENERATE_GEOREF_TEMPLATE = (
    "{path}: the geotransform has a zero pixel size (a={a:g}, e={e:g}, b={b:g}, d={d:g}), so map "
    "coordinates, bounds and areas cannot be computed. Fix the georeference (e.g. gdal_edit.py "
    "-a_ullr ULX ULY LRX LRY {path}), or use pixel boxes."
)
DEGREES_LOOK_LIKE_METRES_TEMPLATE = (
    "{path}: CRS {crs} is geographic (degrees) but the bounds look like metres ({extreme}): the "
    "georeference is probably wrong; areas and coordinates will be wrong. Fix the CRS (e.g. "
    "gdal_edit.py -a_srs EPSG:32633 {path})."
)
METRES_LOOK_LIKE_DEGREES_TEMPLATE = (
    "{path}: CRS {crs} is projected ({unit}) but the bounds look like degrees ({extreme}, pixel "
    "size {pixel:g}): the georeference is probably wrong; areas and coordinates will be wrong. "
    "Fix the CRS (e.g. gdal_edit.py -a_srs EPSG:4326 {path})."
)

VIEW_FORMAT_TEMPLATE = (
    "Cannot tell the image format from {path!r}: name the output with one of the extensions "
    "{supported} (e.g. -o view.png)."
)
NO_VALID_PIXELS_TEMPLATE = (
    "{path} has no valid pixels in the requested region {region} (all NaN / Inf / nodata / "
    "transparent); nothing to show. Choose another region (--box), or check the nodata value "
    "with 'zoomearth info'."
)
FEW_VALID_PIXELS_TEMPLATE = (
    "only {percent} of the pixels in region {region} are valid; the rest (NaN / Inf / nodata / "
    "transparent) are black in the output."
)

#: ``zoomearth view`` warns when fewer than this fraction of a view's pixels are valid. Nodata
#: collars of reprojected scenes commonly take 10-40 % of an overview, which needs no warning;
#: a view that is mostly black does.
FEW_VALID_FRACTION = 0.5

#: Output formats of a rendered view, by lower-case file extension -> GDAL/Pillow format name.
VIEW_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "GTiff",
    ".tiff": "GTiff",
}
#: JPEG quality of views written as .jpg (Pillow's scale 1-95; 90 keeps edges crisp).
VIEW_JPEG_QUALITY = 90

#: Degrees beyond the valid longitude range [-180, 360] (0..360 grids exist) and latitude range
#: [-90, 90] that bounds may reach before a geographic CRS is called implausible: at least this
#: much, or two pixels (a coarse global grid centred on the poles reaches 90 + half a pixel).
GEOGRAPHIC_MARGIN_DEG = 1.0
#: A projected raster whose pixel is smaller than this many CRS units (metres: 1 mm) and whose
#: bounds all lie within +-180 / +-90 is taken for degrees labelled as metres.
PROJECTED_MIN_PIXEL = 1e-3


def view_format(path: str | os.PathLike[str]) -> str:
    """The format a view is written in, from the output's extension (case-insensitive).

    Returns:
        ``"PNG"``, ``"JPEG"`` or ``"GTiff"`` (see :data:`VIEW_FORMATS`).

    Raises:
        OutputWriteError: The extension names no supported format (nothing is written).
    """
    fmt = VIEW_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OutputWriteError(
            VIEW_FORMAT_TEMPLATE.format(path=str(path), supported=", ".join(VIEW_FORMATS))
        )
    return fmt


class SceneWarning(UserWarning):
    """A raster opened, but something about it is probably wrong (e.g. its georeference).

    Issued by :class:`Scene` at open (also kept in ``Scene.warnings`` and ``info()["warnings"]``);
    the command line prints it as one line.
    """


def _extreme_text(xs: tuple[float, float], ys: tuple[float, float]) -> str:
    """``x up to 500,032, y up to 4,000,000``: the largest magnitude along each axis."""

    def fmt(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.6g}"

    return f"x up to {fmt(max(xs, key=abs))}, y up to {fmt(max(ys, key=abs))}"


def georeference_warnings(
    path: str | os.PathLike[str], crs: Any, transform: Any, width: int, height: int
) -> list[str]:
    """Notes about a georeference that cannot be right; empty when it looks plausible.

    Three cases, each checked from the header alone:

    * a degenerate geotransform (zero pixel size, NaN; :func:`is_degenerate_transform`);
    * a geographic CRS (degrees) whose bounds leave longitude [-180, 360] or latitude [-90, 90]
      by more than ``max(GEOGRAPHIC_MARGIN_DEG, 2 pixels)``: metre coordinates labelled as
      degrees, e.g. UTM bounds with EPSG:4326;
    * a projected CRS whose pixel is below :data:`PROJECTED_MIN_PIXEL` units and whose bounds
      lie within +-180 / +-90: degrees labelled as metres.

    Args:
        path: The raster (named in the notes).
        crs: ``rasterio.crs.CRS`` or None.
        transform: The pixel->map ``affine.Affine`` (pixel-corner convention).
        width: Raster width in pixels.
        height: Raster height in pixels.

    Returns:
        One line per problem, saying what is wrong and how to fix it.
    """
    if transform is None or (transform.is_identity and crs is None):
        return []
    if is_degenerate_transform(transform):
        a, b, _, d, e, _ = (float(v) for v in list(transform)[:6])
        return [DEGENERATE_GEOREF_TEMPLATE.format(path=path, a=a, e=e, b=b, d=d)]
    if crs is None:
        return []
    corners = [transform @ (c, r) for c in (0, width) for r in (0, height)]
    xs = (min(p[0] for p in corners), max(p[0] for p in corners))
    ys = (min(p[1] for p in corners), max(p[1] for p in corners))
    name = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else (crs.to_string() or "of the file")[:60]
    if crs.is_geographic:
        pixel = max(abs(transform.a), abs(transform.b), abs(transform.d), abs(transform.e))
        margin = max(GEOGRAPHIC_MARGIN_DEG, 2.0 * pixel)
        if (
            xs[0] < -180.0 - margin
            or xs[1] > 360.0 + margin
            or ys[0] < -90.0 - margin
            or ys[1] > 90.0 + margin
        ):
            return [
                DEGREES_LOOK_LIKE_METRES_TEMPLATE.format(
                    path=path, crs=name, extreme=_extreme_text(xs, ys)
                )
            ]
    elif crs.is_projected:
        pixel = max(abs(transform.a), abs(transform.e))
        inside = -180.0 <= xs[0] and xs[1] <= 180.0 and -90.0 <= ys[0] and ys[1] <= 90.0
        if inside and 0.0 < pixel < PROJECTED_MIN_PIXEL:
            unit = getattr(crs, "linear_units", None) or "linear units"
            return [
                METRES_LOOK_LIKE_DEGREES_TEMPLATE.format(
                    path=path, crs=name, unit=unit, extreme=_extreme_text(xs, ys), pixel=pixel
                )
            ]
    return []


@dataclass(frozen=True)
class BandMapping:
    """Which source bands form the displayed image.

    Attributes:
        rgb: 1-based band indexes shown as (R, G, B), or a 1-tuple for grey.
        alpha: 1-based index of an alpha band, or None.
        note: How the mapping was chosen (shown by ``info``).
    """

    rgb: tuple[int, ...]
    alpha: int | None = None
    note: str = ""


@dataclass
class View:
    """One rendered view.

    Attributes:
        spec: Frame of the view: the full-resolution region shown and the pixel size.
        rgb: Pixels, shape ``(height, width, 3)``, dtype uint8, 0-255. Invalid pixels are 0.
        valid: Shape ``(height, width)``, bool; False where the source is nodata, NaN, +-Inf or
            transparent.
        warnings: Human-readable notes (for example a box that was clipped).
    """

    spec: ViewSpec
    rgb: np.ndarray
    valid: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def valid_fraction(self) -> float:
        """Fraction of the view's pixels that are valid, in [0, 1] (0.0 for an empty view)."""
        return float(self.valid.mean()) if self.valid.size else 0.0

    def to_pil(self) -> Any:
        """The view as a ``PIL.Image.Image`` (RGB)."""
        from PIL import Image

        return Image.fromarray(self.rgb, mode="RGB")


def _gdal_reason(exc: BaseException) -> str:
    """The most specific message in an exception chain (rasterio wraps GDAL's own text)."""
    reasons: list[str] = []
    while exc is not None and len(reasons) < 5:
        text = str(exc).split("\n")[0].strip()
        if text and "See previous exception" not in text:
            reasons.append(text)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return reasons[-1] if reasons else "unknown GDAL error"


#: The loggers rasterio passes GDAL's own messages to (errors also reach us as exceptions).
RASTERIO_LOGGERS = ("rasterio._env", "rasterio._err", "rasterio._io", "rasterio._base")


class _QuietThreads(logging.Filter):
    """Drops rasterio's records below CRITICAL from threads inside :func:`quiet_gdal`."""

    def __init__(self) -> None:
        super().__init__()
        self.depth: dict[int, int] = {}  # thread id -> nesting depth of quiet_gdal

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL or record.thread not in self.depth


_QUIET = _QuietThreads()
_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_gdal() -> Iterator[None]:
    """Keep GDAL's messages out of the user's terminal during the project's own GDAL calls.

    GDAL reports a failure through the rasterio loggers before rasterio raises it as an exception,
    which this package turns into one clear message; the raw text would only repeat it. The scope
    is this thread and this block: a filter on the rasterio loggers drops their records below
    CRITICAL from the threads inside the block, and is removed when the last block ends -- logger
    levels, ``os.environ`` and GDAL's configuration are never changed, so an application that
    embeds the package keeps its own logging of rasterio. (GDAL's ``CPL_LOG`` is not used: GDAL
    reads it once per process, so it cannot be scoped.) ``ZOOMEARTH_GDAL_DEBUG=1`` keeps
    everything.
    """
    if os.environ.get("ZOOMEARTH_GDAL_DEBUG"):
        yield
        return
    ident = threading.get_ident()
    with _QUIET_LOCK:
        if not _QUIET.depth:
            for name in RASTERIO_LOGGERS:
                logging.getLogger(name).addFilter(_QUIET)
        _QUIET.depth[ident] = _QUIET.depth.get(ident, 0) + 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            left = _QUIET.depth.pop(ident) - 1
            if left:
                _QUIET.depth[ident] = left
            elif not _QUIET.depth:
                for name in RASTERIO_LOGGERS:
                    logging.getLogger(name).removeFilter(_QUIET)


_GDAL_CONFIGURED = False


def _configure_gdal(cache_mb: int) -> None:
    global _GDAL_CONFIGURED
    if _GDAL_CONFIGURED:
        return
    from rasterio.env import set_gdal_config

    # A bounded block cache keeps peak memory predictable on UHR rasters (GDAL's default is 5 % of
    # RAM, about 1.2 GB here, which a whole-scene stream would fill).
    set_gdal_config("GDAL_CACHEMAX", int(cache_mb))
    _GDAL_CONFIGURED = True


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
            path: Raster file.
            bands: Explicit 1-based band mapping (3 for RGB, 1 for grey); None = automatic.
            settings: Effective settings (defaults when None).
            prepare: Force (True) or forbid (False) reading through a cached tiled copy;
                None decides from the layout (:meth:`needs_preparation`).
            progress: When a cached copy must be built: True prints a line on stderr at its
                start and end (and a bar on a terminal); False is silent; a callable
                ``progress(done, total, message)`` receives progress units (see
                :func:`zoomearth.scene.cache.build_tiled_copy`) -- an exception it raises
                cancels the build and propagates from the pixel read that needed it.

        Raises:
            SceneNotFoundError, SceneReadError, SceneTooLargeError: See messages.
        """
        if settings is None:
            from zoomearth.config import load_settings

            settings = load_settings()
        self.settings = settings
        self.path = Path(path).expanduser()
        self._prepare_pref = prepare
        self._progress = progress
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pixel_path: Path | None = None
        self._stretch: dict[tuple[int, ...], tuple[float, float]] = {}
        _configure_gdal(settings.gdal_cache_mb)

        if not self.path.exists():
            raise SceneNotFoundError(NOT_FOUND_TEMPLATE.format(path=self.path, cwd=Path.cwd()))
        if self.path.is_dir():
            raise SceneReadError(
                UNREADABLE_TEMPLATE.format(path=self.path, reason="it is a directory")
            )
        stat = self.path.stat()
        if stat.st_size == 0:
            raise SceneReadError(EMPTY_TEMPLATE.format(path=self.path))
        self.file_size = stat.st_size
        self.mtime_ns = stat.st_mtime_ns

        ds = self._open_dataset(self.path)
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
                    path=self.path,
                    width=self.width,
                    height=self.height,
                    pixels=pixels,
                    limit=limit,
                    suggest=10 ** math.ceil(math.log10(pixels + 1)),
                )
            )
        if self.count == 0 or self.width == 0 or self.height == 0:
            self.close()
            raise SceneReadError(UNREADABLE_TEMPLATE.format(path=self.path, reason="no pixels"))
        if self.driver == "GTiff":
            self._check_tiff_complete(ds)
        self._check_values_and_georeference(ds)

        self.band_mapping_override = tuple(bands) if bands else None
        self._mapping: BandMapping | None = None
        if self.band_mapping_override is not None:
            self._mapping = self._explicit_mapping(self.band_mapping_override)

    # ------------------------------------------------------------------------------------------
    # opening
    # ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> Scene:
        """Open a raster lazily; see :meth:`__init__` for arguments."""
        return cls(path, **kwargs)

    def _open_dataset(self, path: Path) -> Any:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioError

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
        if end > self.file_size:
            self.close()
            raise SceneReadError(
                TRUNCATED_TEMPLATE.format(path=self.path, end=end, size=self.file_size)
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
                COMPLEX_TEMPLATE.format(path=self.path, dtype=", ".join(complex_dtypes))
            )
        #: Notes about the raster found at open (a georeference that cannot be right), one line
        #: each; also in ``info()["warnings"]``.
        self.warnings: list[str] = georeference_warnings(
            self.path, self.crs, self.transform, self.width, self.height
        )
        for text in self.warnings:
            # stacklevel 4: the code that called Scene(...) or Scene.open(...).
            warnings.warn(text, SceneWarning, stacklevel=4)

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
        return f"Scene({str(self.path)!r}, {self.width}x{self.height}x{self.count} {self.dtype})"

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
        answering); see :mod:`zoomearth.scene.cache`.

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
        found = cache.lookup(self.path)
        if found is not None:
            return found
        if enforce_budget:
            self.check_prepare_budget()
        return cache.get_or_build(self.path, progress=progress)

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

        Raises:
            ScenePrepareBudgetError: With what to do (convert to a COG, or raise the budget).
        """
        from zoomearth.errors import ScenePrepareBudgetError
        from zoomearth.scene.cache import PREPARE_BUDGET_TEMPLATE, SceneCache

        pixels = self.width * self.height
        budget = self.settings.max_prepare_pixels
        if pixels <= budget or not self.needs_preparation():
            return
        if SceneCache.from_settings(self.settings).lookup(self.path) is not None:
            return
        raise ScenePrepareBudgetError(
            PREPARE_BUDGET_TEMPLATE.format(
                path=self.path,
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
        if len(bands) not in (1, 3) or any(not 1 <= b <= self.count for b in bands):
            raise BandLayoutError(
                BAD_BANDS_TEMPLATE.format(bands=list(bands), path=self.path, count=self.count)
            )
        alpha = self._alpha_index()
        return BandMapping(tuple(int(b) for b in bands), alpha, "explicit band mapping")

    def _alpha_index(self) -> int | None:
        for i, name in enumerate(self.colorinterp, start=1):
            if name == "alpha":
                return i
        return None

    def _auto_mapping(self) -> BandMapping:
        interp = self.colorinterp
        alpha = self._alpha_index()
        if all(c in interp for c in ("red", "green", "blue")):
            rgb = (interp.index("red") + 1, interp.index("green") + 1, interp.index("blue") + 1)
            return BandMapping(rgb, alpha, "RGB by colour interpretation")
        n_colour = self.count - (1 if alpha else 0)
        if n_colour == 1:
            return BandMapping((1,), alpha, "single band shown as grey")
        if n_colour == 3:
            return BandMapping((1, 2, 3), alpha, "3 bands assumed R,G,B")
        if self.count == 4 and alpha is None:
            return BandMapping(
                (1, 2, 3), None, "4 bands assumed R,G,B,NIR; pass bands= for other orders"
            )
        raise BandLayoutError(
            BAND_LAYOUT_TEMPLATE.format(
                path=self.path, count=self.count, interp=", ".join(interp) or "none"
            )
        )

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
            "path": str(self.path),
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
        try:
            with quiet_gdal():
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
                raise SceneReadError(
                    READ_FAILED_TEMPLATE.format(
                        path=self.path,
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
        values = values[np.isfinite(values)]
        lo_p, hi_p = self.settings.stretch_percentiles
        if values.size == 0:
            lo, hi = 0.0, 1.0
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                lo, hi = (float(v) for v in np.percentile(values, [lo_p, hi_p]))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                # Interpolating between values near the float64 limits overflowed.
                lo, hi = float(values.min()), float(values.max())
            if hi <= lo:  # constant image: place it within the dtype's range instead of at 0
                dt = np.dtype(self.dtype)
                if np.issubdtype(dt, np.integer):
                    lo, hi = float(min(0, lo)), float(max(np.iinfo(dt).max, hi + 1))
                else:
                    lo, hi = lo - 0.5, lo + 0.5
                    if hi <= lo:  # |lo| above 2**53: the 0.5 was lost to rounding
                        lo, hi = math.nextafter(lo, -math.inf), lo
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
        # float32 as always, except for float64 sources: their values beyond 3.4e38 would
        # overflow in the cast. Whatever overflow is left only produces values that nan_to_num
        # maps on purpose, so numpy's warnings about it are silenced rather than shown to users.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            span = hi - lo
            if math.isfinite(span):
                wide = raw.dtype == np.float64
                values = raw.astype(np.float64) if wide else raw.astype(np.float32)
                scaled = (values - lo) * (255.0 / span)
            else:  # a range near the float64 limits: halved, so that the span cannot overflow
                half_span = hi * 0.5 - lo * 0.5
                scaled = (raw.astype(np.float64) * 0.5 - lo * 0.5) * (255.0 / half_span)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(scaled, 0, 255).astype(np.uint8)

    def write_view(
        self, view: View, path: str | os.PathLike[str], *, protect: Iterable[Any] = ()
    ) -> Path:
        """Write a rendered view in the format its extension names (:data:`VIEW_FORMATS`).

        * ``.png``: the RGB pixels, lossless.
        * ``.jpg``/``.jpeg``: the RGB pixels, lossy (quality :data:`VIEW_JPEG_QUALITY`).
        * ``.tif``/``.tiff``: a 3-band uint8 GeoTIFF (DEFLATE) georeferenced to the view: the
          scene's CRS and the scene's transform of ``view.spec.region`` scaled to the view's pixel
          size (map units per view pixel), with a mask that is 0 where ``view.valid`` is False.
          A scene without georeference gives a pixel-only TIFF.

        Invalid pixels are black in every format. The file is written atomically
        (:func:`~zoomearth.scene.writing.atomic_path`): a failure leaves nothing at ``path``.

        Args:
            view: A view rendered from this scene.
            path: Output file; its extension chooses the format.
            protect: Inputs that must not be overwritten (this scene's file always is).

        Returns:
            The path written.

        Raises:
            OutputWriteError: Unsupported extension (before anything is written).
            ProtectedPathError: ``path`` is this scene or another protected input.
        """
        from zoomearth.scene.writing import atomic_path, write_png

        fmt = view_format(path)
        guarded = [self.path, *protect]
        if fmt == "PNG":
            return write_png(path, view.rgb, protect=guarded)
        if fmt == "JPEG":
            import io

            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(view.rgb, mode="RGB").save(
                buffer, format="JPEG", quality=VIEW_JPEG_QUALITY
            )
            with atomic_path(path, protect=guarded) as tmp:
                tmp.write_bytes(buffer.getvalue())
            return Path(path)
        return self._write_view_tiff(view, Path(path), guarded)

    def _write_view_tiff(self, view: View, path: Path, protect: list[Any]) -> Path:
        """The GeoTIFF branch of :meth:`write_view`."""
        import rasterio
        from affine import Affine
        from rasterio.errors import NotGeoreferencedWarning

        from zoomearth.scene.writing import atomic_path, tiff_block_problem, write_failure

        spec = view.spec
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": spec.width,
            "height": spec.height,
            "count": 3,
            "dtype": "uint8",
            "photometric": "RGB",
            "compress": "deflate",
            "predictor": 2,
        }
        if self.georeferenced:
            region = spec.region
            profile["crs"] = self.crs
            profile["transform"] = (
                self.transform
                @ Affine.translation(region.x1, region.y1)
                @ Affine.scale(spec.scale_x, spec.scale_y)
            )
        with atomic_path(path, protect=protect) as tmp:
            with warnings.catch_warnings(), quiet_gdal():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(tmp, "w", **profile) as dst:
                    dst.write(np.moveaxis(view.rgb, -1, 0))
                    if not view.valid.all():
                        dst.write_mask(np.where(view.valid, 255, 0).astype(np.uint8))
            # GDAL reports an incomplete write (full disk, file size limit) on stderr only.
            problem = tiff_block_problem(tmp)
            if problem is not None:
                raise write_failure(path, reason=problem, temp=tmp)
        return path

    def _apply_palette(self, index: np.ndarray) -> np.ndarray:
        if self._colormap is None:
            cmap = self._dataset().colormap(1)
            lut = np.zeros((256, 3), np.uint8)
            for k, rgba in cmap.items():
                if 0 <= k < 256:
                    lut[k] = rgba[:3]
            self._colormap = lut
        return np.moveaxis(self._colormap[index], -1, 0)
