"""Building prepared rasters: the tiled, overviewed copy and the worker process that builds it.

:func:`build_tiled_copy` streams a hard-to-window raster (strip TIFF, PNG, JPEG) into a tiled
GeoTIFF (512-px tiles, lossless ZSTD, internal overviews) with bounded memory: the source is read
in strips of at most one tile row, and GDAL's block cache is capped. :class:`SceneCache
<zoomearth.scene.cache.SceneCache>` calls it to fill the cache.

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

Every partial file is an owner-named temporary (:mod:`zoomearth.temporaries`) of the *calling*
process, so a crash leaves litter that the cache's sweep removes, never a live build's file.
"""

from __future__ import annotations

import contextlib
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
from pathlib import Path
from typing import Any

from zoomearth.errors import ScenePrepareCancelled, ScenePrepareError, SceneReadError
from zoomearth.scene.gdal import cache_max
from zoomearth.temporaries import temporary_sibling

__all__ = ["IN_PROCESS_MAX_PIXELS", "ProgressFn", "build_tiled_copy"]

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
            with rasterio.Env(GDAL_CACHEMAX=cache_max(cache_mb), GDAL_TIFF_INTERNAL_MASK=True):
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
    "from zoomearth.scene.prepare import _worker_main; _worker_main(args)"
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
