"""Free space, file size limits and the errors of failed writes.

A write that fails for want of room (full device, quota, file size limit) becomes one
:class:`~zoomearth.errors.OutputWriteError` that names the cause and the final output, never a
temporary name (:func:`write_failure`, :func:`mask_temporary_names`). Before a large raster is
started, the free space of the destination is checked against an upper estimate of its size
(:func:`estimate_output_bytes`, :func:`check_free_space`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from zoomearth.errors import OutputWriteError

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
