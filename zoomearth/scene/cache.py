"""Cache of prepared rasters: tiled, compressed, overviewed copies of hard-to-window sources.

A strip TIFF, PNG or JPEG of 40,000 px cannot serve a 512-px overview without decoding every row.
The first time pixels of such a raster are needed, :class:`SceneCache` streams it once into a
tiled GeoTIFF (512-px tiles, lossless ZSTD, internal overviews), keyed by the source's absolute
path, size and modification time, so an edited file gets a fresh copy. Memory stays bounded:
the source is read in strips of at most one tile row, and GDAL's block cache is capped.

Where the work runs. Preparing is CPU-bound and GDAL and the Python loop around it hold the GIL
for long stretches, so a copy of more than :data:`IN_PROCESS_MAX_PIXELS` pixels is built by a
separate worker process (a fresh interpreter started with :mod:`subprocess`, never a ``fork`` of
a process that has threads). The caller's event loop and other threads keep running; the worker
reports progress over a pipe; a cancelled caller (``KeyboardInterrupt``, a ``cancel`` callable
returning True, or a progress callback that raises) terminates it and removes its partial file;
a worker whose caller dies (SIGKILL, SIGTERM without a handler) is killed by the kernel at once
(Linux ``PR_SET_PDEATHSIG``; elsewhere it notices within a second) and its partial file is
swept as a stale temporary. Errors come back as the same error types and messages as
in-process. Copies of at most :data:`IN_PROCESS_MAX_PIXELS` pixels are built in-process, where
starting the worker (about 0.3-0.6 s) would cost more than the work (``benchmarks/prepare.py``).

Files. Every partial file is an owner-named temporary (:mod:`zoomearth.temporaries`) of the
*calling* process: after a crash, :meth:`SceneCache.sweep` (and each build, and
:meth:`SceneCache.clear`) removes those whose owner is dead, never those of a live process that is
preparing right now. :meth:`SceneCache.temporaries` lists them.

The cache has a size cap (setting ``scene_cache_max_bytes``): after each build the least recently
used entries are removed until the total fits. ``zoomearth cache list|clear`` manage it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoomearth.errors import ScenePrepareCancelled, ScenePrepareError, SceneReadError
from zoomearth.temporaries import (
    Swept,
    is_temporary_name,
    stale_temporaries,
    sweep_stale_temporaries,
    temporary_sibling,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from zoomearth.config import Settings

__all__ = [
    "IN_PROCESS_MAX_PIXELS",
    "PREPARE_BUDGET_TEMPLATE",
    "CacheEntry",
    "ProgressFn",
    "SceneCache",
    "TempInfo",
    "build_tiled_copy",
]

#: ``progress(done, total, message)``: ``done`` of ``total`` progress units (see
#: :func:`build_tiled_copy`), ``message`` what is being done. Raising from it cancels the build.
ProgressFn = Callable[[int, int, str], None]

TILE = 512
#: Copies of at most this many pixels are built in the calling process: there, starting a worker
#: interpreter (0.3-0.6 s on a 2-core machine) costs as much as the whole build, which holds the
#: caller's GIL for at most about half a second (figures: ``benchmarks/prepare.py``). With the
#: default ``prepare_min_side`` (4096) only narrow images (e.g. 5,000 x 800) stay in-process.
IN_PROCESS_MAX_PIXELS = 4_194_304  # 2048 x 2048
#: While a worker is silent (GDAL building overviews), the progress callback is called again
#: with the last values at least this often, so a callback that raises cancels promptly.
HEARTBEAT_S = 1.0
#: How often the caller checks its ``cancel`` callable and the worker's liveness.
POLL_S = 0.2
#: Grace period for a terminated worker before it is killed.
TERMINATE_GRACE_S = 5.0

PREPARE_FAILED_TEMPLATE = (
    "Preparing a tiled copy of {path} failed while reading rows {rows} ({reason}). The file may be "
    "truncated or corrupt; re-download or re-export it."
)
PREPARE_BUDGET_TEMPLATE = (
    "{path} ({width:,} x {height:,} = {pixels:,} px) needs a prepared tiled copy because "
    "{reason}, and that is above the work budget of {budget:,} px per request (setting "
    "max_prepare_pixels). Convert it once to a Cloud-Optimized GeoTIFF and use that "
    "(gdal_translate -of COG -co BLOCKSIZE=512 -co OVERVIEWS=AUTO in.tif out.tif), or prepare it "
    "once ahead of time with `zoomearth prepare IMAGE` (cached and reused, whatever the budget), "
    "or raise the budget (--set max_prepare_pixels={suggest} or "
    "ZOOMEARTH_MAX_PREPARE_PIXELS={suggest})."
)
WRITE_FAILED_TEMPLATE = (
    "Writing the prepared copy of {path} into {cache} failed ({reason}). Free space there "
    "(zoomearth cache clear) or point the setting scene_cache_dir at a writable disk with room."
)
WORKER_DIED_TEMPLATE = (
    "Preparing a tiled copy of {path} stopped: the worker process {how}{tail}. Nothing was cached; "
    "retry, and if it ends the same way, check free memory or convert the image to a "
    "Cloud-Optimized GeoTIFF (gdal_translate -of COG in.tif out.tif)."
)
WORKER_FAILED_TEMPLATE = (
    "Preparing a tiled copy of {path} failed in the worker process: {kind}: {message}"
)
CANCELLED_TEMPLATE = "Preparing a tiled copy of {path} was cancelled; nothing was cached."
START_LINE = (
    "Preparing a tiled copy of {name} ({width:,} x {height:,} px, one-time; cached in {cache}) ..."
)
END_LINE = "Prepared {name} in {seconds:.1f} s."


@dataclass(frozen=True)
class CacheEntry:
    """One prepared raster in the cache."""

    key: str
    path: Path
    source: str
    size_bytes: int
    last_used: float


@dataclass(frozen=True)
class TempInfo:
    """A partial file in the cache folder.

    Attributes:
        path: The temporary file.
        size_bytes: Its size in bytes.
        stale: True when its owner process is gone (same host): :meth:`SceneCache.sweep` removes
            it. False for a live owner (another process preparing right now) or another host.
    """

    path: Path
    size_bytes: int
    stale: bool


def cache_key(source: Path) -> str:
    """Key of a source file: hash of its absolute path, size and modification time (ns)."""
    st = source.stat()
    text = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class SceneCache:
    """Directory of prepared rasters with an LRU size cap."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        """Use ``root`` (created when missing) with a total size cap of ``max_bytes``."""
        self.root = Path(root)
        self.max_bytes = int(max_bytes)

    @classmethod
    def from_settings(cls, settings: Settings) -> SceneCache:
        """The cache configured by ``scene_cache_dir`` and ``scene_cache_max_bytes``."""
        assert settings.scene_cache_dir is not None  # derived in Settings
        return cls(settings.scene_cache_dir, settings.scene_cache_max_bytes)

    # ------------------------------------------------------------------------------------------
    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.tif", self.root / f"{key}.json"

    def _mkdir(self, source: Path) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ScenePrepareError(
                WRITE_FAILED_TEMPLATE.format(
                    path=source, cache=self.root, reason=_os_reason(exc, self.root)
                )
            ) from None

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        # A per-key file lock stops two processes from building the same copy at once.
        lock_path = self.root / f".{key}.lock"
        with open(lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            lock_path.unlink()

    def lookup(self, source: Path) -> Path | None:
        """The prepared copy of ``source`` if present (marks it used), else None."""
        tif, meta = self._paths(cache_key(source))
        if tif.exists() and meta.exists():
            now = time.time()
            with contextlib.suppress(OSError):  # a read-only cache still serves its copies
                os.utime(meta, (now, now))
            return tif
        return None

    def get_or_build(
        self,
        source: Path,
        progress: bool | ProgressFn = True,
        *,
        isolate: bool | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Path:
        """Return the prepared copy of ``source``, building it (streaming) when missing.

        Args:
            source: The raster to prepare.
            progress: See :func:`build_tiled_copy`.
            isolate: See :func:`build_tiled_copy`.
            cancel: See :func:`build_tiled_copy`.

        Raises:
            SceneReadError: The source cannot be decoded.
            ScenePrepareError: The copy cannot be written, or the worker process failed.
            ScenePrepareCancelled: ``cancel`` returned True (or ``progress`` raised it).
        """
        source = Path(source)
        key = cache_key(source)
        found = self.lookup(source)
        if found is not None:
            return found
        self._mkdir(source)
        with self._locked(key):
            found = self.lookup(source)
            if found is not None:
                return found
            # Litter of crashed builds would otherwise only go at `cache clear`.
            self.sweep()
            tif, meta = self._paths(key)
            build_tiled_copy(source, tif, progress=progress, isolate=isolate, cancel=cancel)
            meta_tmp = temporary_sibling(meta, keep_suffix=False)
            try:
                meta_tmp.write_text(
                    json.dumps(
                        {
                            "source": str(source.resolve()),
                            "created": time.time(),
                            "size_bytes": tif.stat().st_size,
                        }
                    )
                )
                os.replace(meta_tmp, meta)
            except OSError as exc:
                # Without its metadata the copy is not an entry; drop it rather than leave a
                # large orphan behind.
                for p in (meta_tmp, tif):
                    with contextlib.suppress(OSError):
                        p.unlink()
                raise ScenePrepareError(
                    WRITE_FAILED_TEMPLATE.format(
                        path=source, cache=self.root, reason=_os_reason(exc, self.root)
                    )
                ) from None
        self.enforce_cap(keep={key})
        return tif

    def entries(self) -> list[CacheEntry]:
        """All complete entries, most recently used first."""
        out: list[CacheEntry] = []
        if not self.root.exists():
            return out
        for meta in self.root.glob("*.json"):
            if is_temporary_name(meta.name):
                continue
            tif = meta.with_suffix(".tif")
            try:
                size = tif.stat().st_size
                last_used = meta.stat().st_mtime
            except OSError:  # not complete, or removed by another process meanwhile
                continue
            try:
                info = json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError):
                info = {}
            out.append(
                CacheEntry(
                    key=meta.stem,
                    path=tif,
                    source=str(info.get("source", "?")),
                    size_bytes=size,
                    last_used=last_used,
                )
            )
        out.sort(key=lambda e: e.last_used, reverse=True)
        return out

    def remove(self, key: str) -> None:
        """Delete one entry (missing files are ignored)."""
        tif, meta = self._paths(key)
        for p in (meta, tif, tif.with_name(tif.name + ".aux.xml")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def temporaries(self) -> list[TempInfo]:
        """Partial files in the cache folder (builds in progress, or litter of dead processes).

        Returns:
            One :class:`TempInfo` per temporary, sorted by path; ``stale`` tells which ones
            :meth:`sweep` would remove.
        """
        if not self.root.is_dir():
            return []
        stale = set(stale_temporaries(self.root))
        out = []
        for path in sorted(self.root.iterdir()):
            if not is_temporary_name(path.name) or not path.is_file() or path.is_symlink():
                continue
            try:
                size = path.lstat().st_size
            except OSError:  # finished (renamed) or removed meanwhile
                continue
            out.append(TempInfo(path=path, size_bytes=size, stale=path in stale))
        return out

    def sweep(self) -> Swept:
        """Remove the temporaries whose owner process is dead; never those of a live process."""
        return sweep_stale_temporaries(self.root)

    def clear(self) -> int:
        """Delete every entry and every stale temporary; return the bytes freed.

        Temporaries of live processes (another process preparing a copy right now) are kept:
        removing them would break that build.
        """
        freed = 0
        for e in self.entries():
            freed += e.size_bytes
            self.remove(e.key)
        freed += self.sweep().bytes
        if self.root.is_dir():
            # Lock files nobody holds are empty litter of finished or killed builds.
            for lock in self.root.glob(".*.lock"):
                with contextlib.suppress(OSError), open(lock, "a") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    lock.unlink()
        return freed

    def enforce_cap(self, keep: set[str] | None = None) -> list[str]:
        """Remove least recently used entries until the total fits the cap; return removed keys."""
        keep = keep or set()
        entries = self.entries()
        total = sum(e.size_bytes for e in entries)
        removed = []
        for e in reversed(entries):  # least recently used first
            if total <= self.max_bytes:
                break
            if e.key in keep:
                continue
            self.remove(e.key)
            total -= e.size_bytes
            removed.append(e.key)
        return removed


def _overview_factors(width: int, height: int, smallest: int = 256) -> list[int]:
    factors = []
    f = 2
    while max(width, height) / f >= smallest / 2 and f <= 2**16:
        factors.append(f)
        if max(width, height) / f < smallest:
            break
        f *= 2
    return factors


def _os_reason(exc: BaseException, folder: Path) -> str:
    """A short reason for a write failure; says "no space left" when the disk is full.

    GDAL reports a full disk as a generic write error, so the free space is checked here.
    """
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < 16 * 2**20:
            return "no space left on the device"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).split("\n")[0] or type(exc).__name__


def _incomplete_reason(problem: str, folder: Path) -> str:
    """Why a written copy is incomplete, naming a full disk (the usual cause) when it is one."""
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < 16 * 2**20:
            return f"no space left on the device; the copy is incomplete: {problem}"
    return f"the copy is incomplete: {problem}"


def _unlink_partial(tmp: Path) -> None:
    """Remove a temporary and the GDAL sidecars it may have (``.aux.xml``, ``.msk``, ``.ovr``)."""
    with contextlib.suppress(OSError):
        tmp.unlink()
    with contextlib.suppress(OSError):
        for side in tmp.parent.glob(f"{tmp.name}.*"):
            with contextlib.suppress(OSError):
                side.unlink()


def build_tiled_copy(
    source: Path,
    dest: Path,
    progress: bool | ProgressFn = True,
    *,
    isolate: bool | None = None,
    cancel: Callable[[], bool] | None = None,
) -> None:
    """Stream ``source`` into a tiled, ZSTD-compressed GeoTIFF with overviews at ``dest``.

    Reads strips of one tile row (512 rows) at a time, so peak memory is about one strip plus
    GDAL's capped block cache. Georeference, band count, dtype, nodata and colour interpretation
    are kept. Writes an owner-named temporary beside ``dest`` and renames it into place; on any
    failure or cancellation the temporary is removed and ``dest`` is untouched.

    Args:
        source: Raster to copy (never modified).
        dest: The prepared copy to write.
        progress: True: a line on stderr at the start and at the end, and a bar on a terminal;
            False: silent; a callable ``progress(done, total, message)``: called with progress
            units -- ``total`` is twice the image height in rows; ``done`` counts the rows copied
            (first half), then jumps to ``total`` after the overviews are built ("building
            overviews" is the last, unmetered step) -- and, in a worker, at least every
            :data:`HEARTBEAT_S` seconds. An exception it raises cancels the build and propagates.
        isolate: True: build in a worker process; False: in this process; None: in a worker
            when the image has more than :data:`IN_PROCESS_MAX_PIXELS` pixels.
        cancel: Polled while building; returning True stops the build with
            :class:`~zoomearth.errors.ScenePrepareCancelled`.

    Raises:
        SceneReadError: If the source cannot be decoded (truncated, corrupt).
        ScenePrepareError: If the copy cannot be written, or the worker process failed.
        ScenePrepareCancelled: When ``cancel`` returned True.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    source, dest = Path(source), Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenePrepareError(
            WRITE_FAILED_TEMPLATE.format(
                path=source, cache=dest.parent, reason=_os_reason(exc, dest.parent)
            )
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(source) as src:
                width, height = src.width, src.height
    except RasterioError as exc:
        raise SceneReadError(
            PREPARE_FAILED_TEMPLATE.format(
                path=source, rows="(header)", reason=str(exc).split("\n")[0]
            )
        ) from None
    if isolate is None:
        isolate = width * height > IN_PROCESS_MAX_PIXELS
    report = _reporter(progress, source, width, height, dest.parent)
    tmp = temporary_sibling(dest)
    ok = False
    try:
        if isolate:
            _build_in_worker(source, tmp, report, cancel)
        else:

            def checked(done: int, total: int, message: str) -> None:
                report(done, total, message)
                if cancel is not None and cancel():
                    raise ScenePrepareCancelled(CANCELLED_TEMPLATE.format(path=source))

            _write_tiled(source, tmp, checked)
        # Reported before the rename: a callback that cancels here must not leave a finished
        # copy without its metadata.
        # GDAL reports a write it could not complete (full disk, file size limit) on stderr only
        # and goes on: a copy with missing blocks must never be renamed into the cache.
        from zoomearth.scene.writing import tiff_block_problem

        problem = tiff_block_problem(tmp)
        if problem is not None:
            raise ScenePrepareError(
                WRITE_FAILED_TEMPLATE.format(
                    path=source, cache=dest.parent,
                    reason=_incomplete_reason(problem, dest.parent),
                )
            )
        report(2 * height, 2 * height, "done")
        try:
            aux = tmp.with_name(tmp.name + ".aux.xml")
            if aux.exists():  # metadata GDAL could not store in the TIFF itself travels along
                os.replace(aux, dest.with_name(dest.name + ".aux.xml"))
            os.replace(tmp, dest)
        except OSError as exc:
            raise ScenePrepareError(
                WRITE_FAILED_TEMPLATE.format(
                    path=source, cache=dest.parent, reason=_os_reason(exc, dest.parent)
                )
            ) from None
        ok = True
    finally:
        if not ok:
            _unlink_partial(tmp)
        report.close(ok)


# ----------------------------------------------------------------------------------------------
# the work itself (in this process or in the worker)
# ----------------------------------------------------------------------------------------------
def _write_tiled(source: Path, tmp: Path, report: ProgressFn) -> None:
    """Write the tiled, overviewed copy of ``source`` to ``tmp`` (the caller removes it on error).

    ``report(done, total, message)`` gets rows copied of ``2 * height``, then "building
    overviews" at ``done = height``.
    """
    import numpy as np
    import rasterio
    from rasterio.enums import MaskFlags, Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.windows import Window

    def write_failed(exc: BaseException) -> ScenePrepareError:
        return ScenePrepareError(
            WRITE_FAILED_TEMPLATE.format(
                path=source, cache=tmp.parent, reason=_os_reason(exc, tmp.parent)
            )
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(source) as src:
            dtype = src.dtypes[0]
            predictor = 3 if dtype.startswith("float") else 2
            profile: dict[str, Any] = {
                "driver": "GTiff",
                "width": src.width,
                "height": src.height,
                "count": src.count,
                "dtype": dtype,
                "nodata": src.nodata,
                "tiled": True,
                "blockxsize": TILE,
                "blockysize": TILE,
                "compress": "zstd",
                "predictor": predictor,
                "interleave": "pixel",
                "BIGTIFF": "IF_SAFER",
            }
            if src.crs is not None or not src.transform.is_identity:
                profile["crs"] = src.crs
                profile["transform"] = src.transform
            # One tile row must fit GDAL's block cache, or partial blocks get flushed and
            # recompressed (slow, and the file grows).
            itemsize = np.dtype(dtype).itemsize
            row_bytes = src.width * TILE * src.count * itemsize
            cache_mb = max(128, int(row_bytes * 1.5 / 2**20) + 16)
            # A per-dataset mask (e.g. the internal .msk of JPEG orthophotos) is copied too,
            # or every masked pixel would turn valid in the prepared copy.
            flags = src.mask_flag_enums[0] if src.count else ()
            has_mask = (
                MaskFlags.per_dataset in flags
                and MaskFlags.alpha not in flags
                and (MaskFlags.nodata not in flags)
            )
            total = 2 * src.height
            with rasterio.Env(GDAL_CACHEMAX=cache_mb, GDAL_TIFF_INTERNAL_MASK=True):
                try:
                    dst = rasterio.open(tmp, "w", **profile)
                except (RasterioError, OSError) as exc:
                    raise write_failed(exc) from None
                try:
                    report(0, total, "copying rows")
                    dst.colorinterp = src.colorinterp
                    if src.count == 1 and src.colorinterp[0].name == "palette":
                        with contextlib.suppress(ValueError):
                            dst.write_colormap(1, src.colormap(1))
                    for r in range(0, src.height, TILE):
                        h = min(TILE, src.height - r)
                        window = Window(0, r, src.width, h)
                        try:
                            block = src.read(window=window)
                            mask = src.read_masks(1, window=window) if has_mask else None
                        except RasterioError as exc:
                            raise SceneReadError(
                                PREPARE_FAILED_TEMPLATE.format(
                                    path=source,
                                    rows=f"{r}-{r + h}",
                                    reason=str(exc).split("\n")[0],
                                )
                            ) from None
                        try:
                            dst.write(block, window=window)
                            if mask is not None:
                                dst.write_mask(mask, window=window)
                        except (RasterioError, OSError) as exc:
                            raise write_failed(exc) from None
                        del block, mask
                        report(r + h, total, "copying rows")
                    report(src.height, total, "building overviews")
                    factors = _overview_factors(src.width, src.height)
                    try:
                        if factors:
                            dst.build_overviews(factors, Resampling.average)
                            dst.update_tags(ns="rio_overview", resampling="average")
                    except (RasterioError, OSError) as exc:
                        raise write_failed(exc) from None
                except BaseException:
                    with contextlib.suppress(Exception):  # the first error is the one to report
                        dst.close()
                    raise
                try:
                    dst.close()  # flushes (and compresses) the blocks still in GDAL's cache
                except (RasterioError, OSError) as exc:
                    raise write_failed(exc) from None


# ----------------------------------------------------------------------------------------------
# the worker process
# ----------------------------------------------------------------------------------------------
# A fresh interpreter, not multiprocessing: "fork" would copy a process with threads (unsafe), and
# multiprocessing's "spawn"/"forkserver" re-run the caller's __main__ script in the child, which a
# user's script without an `if __name__ == "__main__"` guard cannot survive. SIGINT is ignored:
# Ctrl-C reaches the whole process group, and the caller decides what a Ctrl-C stops.
_BOOTSTRAP = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); import json; "
    "args = json.loads(sys.stdin.readline()); sys.path[:] = args['sys_path']; "
    "from zoomearth.scene.cache import _worker_main; _worker_main(args)"
)


def _die_with_parent(parent: int) -> bool:
    """Ask Linux to SIGKILL this worker the moment its caller dies; False where unsupported.

    A caller killed with SIGKILL (or SIGTERM without a handler) cannot stop its worker, and a
    thread of ours cannot notice while GDAL holds the GIL (``build_overviews`` holds it for its
    whole run), so the kernel does it: no orphan keeps burning CPU. The partial file carries the
    dead caller's PID, so the next build, start-up sweep or ``cache clear`` removes it. The
    signal fires when the caller's *thread* ends; that thread waits for the worker until it
    ends (or terminates it), so it never fires early.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the caller died before the request took effect
        os._exit(3)
    return True


def _worker_main(args: dict[str, Any]) -> None:
    """Entry point of the worker process: build ``args["tmp"]`` and report over stdout.

    Messages are JSON lines: ``{"progress": [done, total, message]}``, then ``{"done": true}`` or
    ``{"error": {"module", "name", "message", "traceback"}}``.
    """
    import traceback

    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of libraries go to stderr, never into the message channel
    tmp = Path(args["tmp"])
    parent = int(args["parent"])
    if not _die_with_parent(parent):

        def watch_parent() -> None:
            # A caller killed with SIGKILL cannot terminate us; its death re-parents this
            # process. (This thread waits while GDAL holds the GIL, e.g. building overviews.)
            while True:
                time.sleep(POLL_S)
                if os.getppid() != parent:
                    _unlink_partial(tmp)
                    os._exit(3)

        threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    try:
        _write_tiled(Path(args["source"]), tmp, lambda d, t, m: send({"progress": [d, t, m]}))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
        _unlink_partial(tmp)
        with contextlib.suppress(OSError):
            send(
                {
                    "error": {
                        "module": type(exc).__module__,
                        "name": type(exc).__qualname__,
                        "message": str(exc),
                        "traceback": traceback.format_exc(),
                    }
                }
            )
        sys.exit(1)
    try:
        send({"done": True})
    except OSError:  # the caller is gone: nobody will rename the copy
        _unlink_partial(tmp)
        sys.exit(1)


def _build_in_worker(
    source: Path, tmp: Path, report: ProgressFn, cancel: Callable[[], bool] | None
) -> None:
    """Run :func:`_write_tiled` in a worker process; raise its error here, as the same type."""
    args = {
        "source": str(source),
        "tmp": str(tmp),
        "parent": os.getpid(),
        "sys_path": [p for p in sys.path if isinstance(p, str)],
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
    except OSError as exc:
        raise ScenePrepareError(
            WORKER_DIED_TEMPLATE.format(
                path=source, how=f"could not start ({exc.strerror or exc})", tail=""
            )
        ) from None
    outcome: dict[str, Any] | None = None
    stderr_tail = b""
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write((json.dumps(args) + "\n").encode())
        proc.stdin.close()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        pending = b""
        last: tuple[int, int, str] = (0, 0, "starting")
        last_report = time.monotonic()
        while sel.get_map():
            for key, _ in sel.select(timeout=POLL_S):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                if key.fileobj is proc.stderr:
                    stderr_tail = (stderr_tail + chunk)[-4096:]
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "progress" in message:
                        done, total, text = message["progress"]
                        last = (int(done), int(total), str(text))
                        report(*last)
                        last_report = time.monotonic()
                    else:
                        outcome = message
            if cancel is not None and cancel():
                raise ScenePrepareCancelled(CANCELLED_TEMPLATE.format(path=source))
            if time.monotonic() - last_report >= HEARTBEAT_S and last[1]:
                report(*last)
                last_report = time.monotonic()
        sel.close()
        code = proc.wait()
    except BaseException:
        _stop_worker(proc)
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
    if outcome is not None and outcome.get("done"):
        return
    if outcome is not None and "error" in outcome:
        raise _rebuild_error(outcome["error"], source)
    how = (
        f"was killed by signal {signal.Signals(-code).name}"
        if code < 0 and -code in signal.valid_signals()
        else f"ended with exit code {code}"
    )
    if code == -signal.SIGKILL:
        how += " (out of memory, or killed by someone)"
    text = stderr_tail.decode("utf-8", "replace").strip().splitlines()
    tail = f" (last output: {text[-1][:200]})" if text else ""
    raise ScenePrepareError(WORKER_DIED_TEMPLATE.format(path=source, how=how, tail=tail))


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a worker (SIGTERM, then SIGKILL after a grace period) and reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        proc.terminate()
    try:
        proc.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()


def _rebuild_error(info: dict[str, Any], source: Path) -> BaseException:
    """The worker's exception as the caller's: same zoomearth error type and message."""
    import builtins

    from zoomearth import errors

    name, module, message = str(info.get("name")), str(info.get("module")), str(info["message"])
    cls: Any = None
    if module == errors.__name__:
        cls = getattr(errors, name, None)
    elif module == "builtins":
        cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)  # type: ignore[no-any-return]
        except TypeError:  # a constructor with other arguments
            pass
    # A bug in the worker: surface it with the worker's traceback.
    exc = RuntimeError(WORKER_FAILED_TEMPLATE.format(path=source, kind=name, message=message))
    exc.add_note(str(info.get("traceback", "")))
    return exc


# ----------------------------------------------------------------------------------------------
# progress display
# ----------------------------------------------------------------------------------------------
class _Reporter:
    """Turns ``progress`` (bool or callable) into one callable, with a ``close(ok)`` at the end."""

    def __init__(
        self,
        progress: bool | ProgressFn,
        source: Path,
        width: int,
        height: int,
        cache_dir: Path,
    ) -> None:
        self.fn = progress if callable(progress) else None
        self.console = progress is True
        self.name = source.name
        self.started = time.monotonic()
        self.bar: Any = None
        if self.console:
            # Also without a terminal (logs, CI, a server's stderr): a long silent pause looks
            # like a hang.
            print(
                START_LINE.format(name=self.name, width=width, height=height, cache=cache_dir),
                file=sys.stderr,
                flush=True,
            )
            if sys.stderr.isatty():
                from tqdm import tqdm

                self.bar = tqdm(
                    total=2 * height, desc=f"preparing {self.name}", unit="row",
                    file=sys.stderr, leave=False,
                )

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.set_postfix_str(message, refresh=True)
        if self.fn is not None:
            self.fn(done, total, message)

    def close(self, ok: bool) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.console and ok:
            seconds = time.monotonic() - self.started
            print(END_LINE.format(name=self.name, seconds=seconds), file=sys.stderr, flush=True)


def _reporter(
    progress: bool | ProgressFn, source: Path, width: int, height: int, cache_dir: Path
) -> _Reporter:
    return _Reporter(progress, source, width, height, cache_dir)
