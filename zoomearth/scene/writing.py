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
3-band ``uint8`` images and only when asked for; everything else is DEFLATE with a horizontal
(integers) or floating-point predictor, which keeps values exactly.

Memory: :class:`TiledRasterWriter` hands each tile to GDAL at once and keeps nothing; GDAL's block
cache (``GDAL_CACHEMAX``, set by the caller with :class:`rasterio.Env`) bounds what GDAL holds.
Write tiles in row-major order so a block is complete, and compressed once, before the cache
evicts it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import glob
import math
import os
import re
import struct
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader, DatasetWriter
from rasterio.windows import Window

from zoomearth.errors import OutputWriteError, ProtectedPathError
from zoomearth.temporaries import stale_temporaries, temporary_sibling

__all__ = [
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

PROTECTED_TEMPLATE = (
    "Refusing to write {output}: it is the same file as the input {protected}. Tools never "
    "overwrite their input; choose another output path (for example in the run directory)."
)
NOTHING_WRITTEN_TEMPLATE = "Nothing was written to {output}; the writer produced no file."
NOT_ENOUGH_SPACE_TEMPLATE = (
    "Not enough free space in {dir}: this output needs about {need}, {free} are free. Free "
    "space or choose another output folder (for example with -o or --out)."
)
NO_SPACE_TEMPLATE = (
    "No space left on the device holding {dir}: free space and run again ({output} was not "
    "written)."
)
QUOTA_TEMPLATE = (
    "Disk quota exceeded on the device holding {dir}: free space and run again ({output} was "
    "not written)."
)
SIZE_LIMIT_TEMPLATE = (
    "{output} reached this process's file size limit of {limit} (ulimit -f): raise the limit "
    "or write a smaller output; it was not written."
)
TOO_LARGE_FOR_FS_TEMPLATE = (
    "{output} is larger than the file system holding {dir} allows: write it to another file "
    "system; it was not written."
)
WRITE_FAILED_TEMPLATE = (
    "Writing {output} failed ({reason}); the incomplete file was removed. Check the disk holding "
    "{dir} (free space, quota, errors) and run again."
)
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
PNG_SHAPE_TEMPLATE = (
    "write_png needs an (H, W), (H, W, 3) or (H, W, 4) uint8 array; got shape {shape}, "
    "dtype {dtype}."
)
PNG_ENCODE_TEMPLATE = "Could not encode {output} as PNG (OpenCV imencode failed)."

#: Files GDAL may create beside a raster; moved with it on success and removed on failure.
SIDECAR_SUFFIXES: tuple[str, ...] = (".aux.xml", ".ovr", ".msk", ".aux")

#: Overview resampling names accepted by the writers (GDAL's names).
OverviewResampling = Literal["average", "nearest", "mode", "bilinear", "cubic", "gauss", "rms"]


class _Keep(enum.Enum):
    """Sentinel type: "take this setting from the source" (``None`` is a real value)."""

    KEEP = "keep"


#: Default of settings that are taken from the source unless a caller says otherwise.
KEEP = _Keep.KEEP


# --------------------------------------------------------------------------------------------
# Atomic paths
# --------------------------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (symlinks resolved, hard links via samefile)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: then they cannot be the same file
        return False


def check_not_protected(output: str | os.PathLike[str], protect: Iterable[Any] = ()) -> None:
    """Refuse an output path that is the same file as any protected input.

    Args:
        output: The path about to be written.
        protect: Input paths that must never be overwritten. ``None`` entries and non-path
            values (e.g. ``/vsimem/`` names) are ignored.

    Raises:
        ProtectedPathError: ``output`` is (resolves to, or is a hard link of) a protected path.
    """
    out = Path(output)
    for p in protect:
        if p is None:
            continue
        prot = Path(p)
        if str(prot).startswith("/vsi"):
            continue
        if _same_file(out, prot):
            raise ProtectedPathError(PROTECTED_TEMPLATE.format(output=out, protected=prot))


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _with_suffix_appended(path: Path, suffix: str) -> Path:
    # GDAL names sidecars by appending to the full file name: a.tif -> a.tif.aux.xml.
    return path.with_name(path.name + suffix)


def _remove_temporary(tmp: Path) -> None:
    _remove_quietly(tmp)
    for suffix in SIDECAR_SUFFIXES:
        _remove_quietly(_with_suffix_appended(tmp, suffix))


def sweep_stale_siblings(final: str | os.PathLike[str]) -> int:
    """Remove the temporaries of ``final`` left by processes that are gone; never raises.

    Only names that start with ``.NAME.tmp`` (this output's temporaries and their GDAL sidecars)
    are looked at, so a user's folder is never swept as a whole; owners are judged by
    :func:`zoomearth.temporaries.stale_temporaries` (same host, process gone).

    Args:
        final: The output path.

    Returns:
        How many files were removed.
    """
    final = Path(final)
    prefix = f".{final.name}.tmp"
    try:
        # A listing by name only; the whole folder is judged only when a candidate exists.
        if not any(final.parent.glob(glob.escape(prefix) + "*")):
            return 0
        stale = [p for p in stale_temporaries(final.parent) if p.name.startswith(prefix)]
    except OSError:
        return 0
    removed = 0
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


# `.NAME.tmp-HOST-PID-RANDOM.EXT` (and the older `.NAME.tmp-RANDOM.EXT`), sidecar suffixes
# included, starting a path component (after "/", a space, a quote or at the start). NAME may
# hold spaces; it is bounded so the pattern stays linear on long text.
_TEMPORARY_NAME_RE = re.compile(
    r"(?<![^/\s'\"(\[])\.([^/\\]{1,255}?)\.tmp-(?:[0-9a-f]{8}-\d{1,10}-)?[0-9a-f]{6,32}"
    r"(?:\.[A-Za-z0-9]{1,8}){0,3}"
)


def mask_temporary_names(text: str) -> str:
    """Replace the temporary file names in ``text`` by the final names they stand for.

    ``/runs/t/.x.tif.tmp-3fa9c2d1-48211-9b1c0e123456.tif: write error`` becomes
    ``/runs/t/x.tif: write error``: error messages name the output the user asked for, never an
    internal name that no longer exists.
    """
    return _TEMPORARY_NAME_RE.sub(r"\1", text)


#: Free bytes below which a device counts as full: a write that failed there used up the rest.
NEARLY_FULL_BYTES = 1 << 20
#: Errors of the device or quota that mean "no room".
_NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _existing_ancestor(directory: Path) -> Path:
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_bytes(directory: str | os.PathLike[str]) -> int | None:
    """Bytes this process may still write on the device holding ``directory``; None if unknown.

    ``statvfs`` of the nearest existing folder: the blocks available to unprivileged users, or
    for root also the blocks reserved for root (root may fill those).
    """
    try:
        st = os.statvfs(_existing_ancestor(Path(directory)))
    except OSError:
        return None
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return int(blocks) * int(st.f_frsize)


def file_size_limit() -> int | None:
    """This process's largest writable file in bytes (``RLIMIT_FSIZE``); None when unlimited."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def format_bytes(n: float) -> str:
    """``1.5 GB`` / ``12 MB`` / ``900 kB`` (decimal units, as ``df -H`` shows them)."""
    if n >= 1e8:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{max(n, 0) / 1e3:.0f} kB"


def write_failure(
    final: str | os.PathLike[str],
    *,
    reason: str = "",
    error_number: int | None = None,
    temp: Path | None = None,
) -> OutputWriteError:
    """The error for an output that could not be written, naming the cause when it is known.

    The cause is ``error_number`` when the system gave one; GDAL gives none, so it is also read
    from the state the failure left: a device with less than :data:`NEARLY_FULL_BYTES` free is
    full, and a temporary file that reached ``RLIMIT_FSIZE`` hit the file size limit.

    Args:
        final: The output path (named in the message; ``temp`` never is).
        reason: What the writer reported (temporary names are masked).
        error_number: ``errno`` of the failure, when known.
        temp: The temporary file, still on disk (for the size-limit diagnosis).

    Returns:
        An :class:`OutputWriteError` with ``errno`` set to ENOSPC, EDQUOT, EFBIG or EIO.
    """
    final = Path(final)
    directory = final.parent
    limit = file_size_limit()
    size = None
    if temp is not None:
        with contextlib.suppress(OSError):
            size = temp.stat().st_size
    free = free_bytes(directory)
    if error_number == errno.EFBIG or (
        limit is not None and size is not None and size >= limit - 65536
    ):
        code = errno.EFBIG
        if limit is not None:
            text = SIZE_LIMIT_TEMPLATE.format(output=final, limit=format_bytes(limit))
        else:
            text = TOO_LARGE_FOR_FS_TEMPLATE.format(output=final, dir=directory)
    elif error_number == errno.EDQUOT:
        code = errno.EDQUOT
        text = QUOTA_TEMPLATE.format(dir=directory, output=final)
    elif error_number == errno.ENOSPC or (free is not None and free < NEARLY_FULL_BYTES):
        code = errno.ENOSPC
        text = NO_SPACE_TEMPLATE.format(dir=directory, output=final)
    else:
        code = errno.EIO
        clean = " ".join(mask_temporary_names(reason).split())[:300] or "no reason given"
        text = WRITE_FAILED_TEMPLATE.format(output=final, reason=clean, dir=directory)
    error = OutputWriteError(text)
    error.errno = code
    return error


def _output_error(exc: OSError, final: Path, tmp: Path) -> OSError:
    """``exc`` restated for ``final``: no-room errors diagnosed, temporary names replaced."""
    if isinstance(exc, OutputWriteError) or exc.errno not in _NO_ROOM_ERRNOS:
        if type(exc).__module__ != "builtins":
            return exc  # our own errors, rasterio's ...: they name what they mean
        names = [exc.filename, exc.filename2]
        if exc.errno is None or not any(n is not None and tmp.name in str(n) for n in names):
            return exc
        # e.g. os.replace(tmp, final) onto a folder: say it about the output.
        return type(exc)(exc.errno, exc.strerror, str(final))
    return write_failure(final, reason=str(exc.strerror or exc), error_number=exc.errno, temp=tmp)


def _missing_parents(directory: Path) -> list[Path]:
    """The folders of ``directory`` that do not exist yet, deepest first."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    return missing


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], *, protect: Iterable[Any] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    The temporary name is hidden, unique and names its owner (``.NAME.tmp-HOST-PID-RANDOM.EXT``,
    :func:`zoomearth.temporaries.temporary_sibling`; the extension is kept so format-sniffing
    writers still work). Temporaries of ``final`` left by a killed process are removed first
    (:func:`sweep_stale_siblings`). The parent directory is created if needed. On success the
    temporary file replaces ``final`` with :func:`os.replace` (atomic on one filesystem), together
    with any GDAL sidecar written beside it; stale sidecars of an older ``final`` are removed so
    they cannot describe the new file. On any exception the temporary file and its sidecars are
    removed, as are the folders this call created if they are empty, and the exception
    propagates; ``final`` is left as it was. An ``OSError`` of a full disk, quota or file size
    limit becomes an :class:`OutputWriteError` (:func:`write_failure`), and one that names the
    temporary file is restated for ``final``.

    Args:
        final: Destination path.
        protect: Input paths ``final`` must not be (see :func:`check_not_protected`).

    Yields:
        The temporary path to write to (it does not exist yet).

    Raises:
        ProtectedPathError: ``final`` is a protected input; nothing is created.
        OutputWriteError: The body finished without creating the temporary file, or the device
            is full, over quota or the file too large.
    """
    final = Path(final)
    check_not_protected(final, protect)
    created = _missing_parents(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(final)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputWriteError(NOTHING_WRITTEN_TEMPLATE.format(output=final))
        # Checked again: a protected input may have been created at that path meanwhile.
        check_not_protected(final, protect)
        for suffix in SIDECAR_SUFFIXES:
            side_tmp = _with_suffix_appended(tmp, suffix)
            side_final = _with_suffix_appended(final, suffix)
            if side_tmp.exists():
                os.replace(side_tmp, side_final)
            else:
                _remove_quietly(side_final)
        os.replace(tmp, final)
    except OSError as exc:
        # Also when the rename fails (final is a directory, another filesystem ...).
        restated = _output_error(exc, final, tmp)
        _remove_temporary(tmp)
        _remove_empty(created)
        if restated is exc:
            raise
        raise restated from exc
    except BaseException:
        _remove_temporary(tmp)
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    # Deepest first; a folder something else wrote into meanwhile stays.
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


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
            profile["zlevel"] = 6
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


#: Upper bound of compressed / raw bytes by compression, for the free-space check. Lossless
#: codecs cannot shrink noise (uniform noise stays at raw size plus a little); JPEG (YCbCr 4:2:0,
#: quality <= 95) measured 0.26 on uniform noise at quality 90, its worst case, and about 0.05 on
#: imagery (tests/core/test_disk_space.py checks the estimate against noise for both).
COMPRESSED_RATIO_BOUND: dict[str, float] = {"jpeg": 0.35}
#: Overviews 2, 4, 8 ... add at most 1/4 + 1/16 + ... = 1/3 of the full resolution.
OVERVIEW_SHARE = 1.0 / 3.0
#: Safety factor on the estimate (headers, tile padding at the edges, GDAL's block rounding).
SPACE_SAFETY = 1.1


def estimate_output_bytes(
    width: int,
    height: int,
    count: int,
    dtype: str | np.dtype[Any] | type,
    *,
    compress: str | None = "deflate",
    quality: int = 90,
    overviews: bool = True,
    ratio: float | None = None,
) -> int:
    """Upper estimate of a GeoTIFF's size on disk, for the free-space check before writing.

    ``width x height x count x itemsize`` (raw bytes) times the compression's ratio bound
    (:data:`COMPRESSED_RATIO_BOUND`: 1.0 for DEFLATE/LZW/ZSTD/none, 0.35 for JPEG up to quality
    95) times 4/3 with overviews, times :data:`SPACE_SAFETY`, plus 1 MiB of headers.

    Args:
        width: Pixels.
        height: Pixels.
        count: Bands.
        dtype: Pixel type.
        compress: Compression name as in :func:`output_profile` (None: none).
        quality: JPEG quality (above 95 the JPEG bound is 1.0).
        overviews: Internal overviews are built.
        ratio: A caller's own bound on compressed / raw bytes (e.g. a 0/1 mask), replacing the
            compression's.

    Returns:
        Bytes.
    """
    raw = float(width) * float(height) * int(count) * np.dtype(dtype).itemsize
    comp = (compress or "none").lower()
    if ratio is None:
        ratio = COMPRESSED_RATIO_BOUND.get(comp, 1.0) if quality <= 95 else 1.0
    share = 1.0 + (OVERVIEW_SHARE if overviews else 0.0)
    return int(raw * ratio * share * SPACE_SAFETY) + (1 << 20)


def check_free_space(final: str | os.PathLike[str], need: int) -> None:
    """Refuse to start an output of about ``need`` bytes where fewer are free.

    An older file at ``final`` does not count as free: it is replaced only once the new one is
    complete.

    Args:
        final: The output path (its folder's device is checked; the folder may not exist yet).
        need: Estimated bytes (:func:`estimate_output_bytes`).

    Raises:
        OutputWriteError: Not enough free space (``errno`` ENOSPC); nothing was written.
    """
    directory = Path(final).parent
    free = free_bytes(directory)
    if free is not None and need > free:
        error = OutputWriteError(
            NOT_ENOUGH_SPACE_TEMPLATE.format(
                dir=directory, need=format_bytes(need), free=format_bytes(free)
            )
        )
        error.errno = errno.ENOSPC
        raise error


_TIFF_ARRAY_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
_TIFF_OFFSET_TAGS = (324, 273)  # TileOffsets, StripOffsets
_TIFF_COUNT_TAGS = (325, 279)  # TileByteCounts, StripByteCounts
_MAX_DIRECTORIES = 4096


def tiff_block_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the TIFF at ``path`` is incomplete, or None when every block's bytes are in the file.

    Walks every image file directory (full resolution, overviews, masks) of a classic or BigTIFF
    file and checks that each tile or strip has a nonzero byte count and ends inside the file,
    and that every directory lies inside it. A write GDAL could not complete (full disk, quota,
    file size limit) leaves a block with no bytes or a directory past the end of the file; GDAL
    itself reports that only on stderr. Reads only the directories (a few kB per 10,000 tiles).

    Args:
        path: A TIFF written with ``SPARSE_OK`` off (GDAL's default: every block is written).

    Returns:
        A short description of the first problem, or None.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            return "no TIFF header"
        (version,) = struct.unpack(order + "H", head[2:4])
        if version == 42:
            big, ifd = False, struct.unpack(order + "I", head[4:8])[0]
        elif version == 43 and len(head) >= 16:
            big, ifd = True, struct.unpack(order + "Q", head[8:16])[0]
        else:
            return "no TIFF header"
        count_fmt, entry_fmt, entry_size, next_fmt = (
            ("Q", "HHQ", 20, "Q") if big else ("H", "HHI", 12, "I")
        )
        count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(next_fmt)
        head_size = struct.calcsize(entry_fmt)
        seen: set[int] = set()
        while ifd:
            number = len(seen) + 1
            if ifd in seen or number > _MAX_DIRECTORIES:
                return "its directories form a loop"
            seen.add(ifd)
            if ifd + count_size > size:
                return f"directory {number} lies past the end of the file"
            fh.seek(ifd)
            (n,) = struct.unpack(order + count_fmt, fh.read(count_size))
            table = fh.read(n * entry_size + next_size)
            if len(table) < n * entry_size + next_size:
                return f"directory {number} is cut off at the end of the file"
            arrays: dict[int, np.ndarray] = {}
            for i in range(n):
                entry = table[i * entry_size : (i + 1) * entry_size]
                tag, typ, cnt = struct.unpack(order + entry_fmt, entry[:head_size])
                if tag not in _TIFF_OFFSET_TAGS + _TIFF_COUNT_TAGS:
                    continue
                code = _TIFF_ARRAY_TYPES.get(typ)
                if code is None:
                    return f"directory {number} has an unreadable block table"
                dt = np.dtype(order + code)
                inline = entry[head_size:]
                nbytes = int(cnt) * dt.itemsize
                if nbytes <= len(inline):
                    raw = inline[:nbytes]
                else:
                    (where,) = struct.unpack(order + ("Q" if big else "I"), inline)
                    if where + nbytes > size:
                        return f"the block table of directory {number} lies past the end"
                    fh.seek(where)
                    raw = fh.read(nbytes)
                arrays[tag] = np.frombuffer(raw, dtype=dt).astype(np.uint64)
            offsets = next((arrays[t] for t in _TIFF_OFFSET_TAGS if t in arrays), None)
            counts = next((arrays[t] for t in _TIFF_COUNT_TAGS if t in arrays), None)
            if offsets is None or counts is None or offsets.shape != counts.shape:
                return f"directory {number} has no complete block table"
            empty = np.flatnonzero((counts == 0) | (offsets == 0))
            if empty.size:
                return f"block {int(empty[0])} of directory {number} was never written"
            if offsets.size and int((offsets + counts).max()) > size:
                return f"a block of directory {number} ends past the end of the file"
            (ifd,) = struct.unpack(order + next_fmt, table[n * entry_size :])
    return None


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
