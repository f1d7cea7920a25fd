"""GDAL plumbing of the scene engine: scoped quieting of GDAL's messages, the block cache, reasons.

:func:`quiet_gdal` keeps GDAL's own messages (passed to the rasterio loggers) out of the user's
terminal during the project's GDAL calls, scoped to a thread and a block; :func:`_configure_gdal`
caps GDAL's block cache once per process; :func:`_gdal_reason` picks the most specific message of
a rasterio exception chain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

__all__ = ["RASTERIO_LOGGERS", "capture_gdal_messages", "quiet_gdal"]


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
    """Drops rasterio's records below CRITICAL from threads inside :func:`quiet_gdal`.

    Also keeps the messages of threads inside :func:`capture_gdal_messages` (GDAL reports an
    HTTP status or a retry of a remote read only there, not in the exception rasterio raises).
    """

    def __init__(self) -> None:
        super().__init__()
        self.depth: dict[int, int] = {}  # thread id -> nesting depth of quiet_gdal
        self.captured: dict[int, list[str]] = {}  # thread id -> messages kept

    def filter(self, record: logging.LogRecord) -> bool:
        sink = self.captured.get(record.thread) if record.thread is not None else None
        if sink is not None and len(sink) < MAX_CAPTURED:
            with contextlib.suppress(Exception):  # a record that cannot format is not kept
                sink.append(record.getMessage())
        return record.levelno >= logging.CRITICAL or record.thread not in self.depth

    @property
    def active(self) -> bool:
        return bool(self.depth or self.captured)


#: Messages kept per :func:`capture_gdal_messages` block (retries of a slow read repeat).
MAX_CAPTURED = 200
_QUIET = _QuietThreads()
_QUIET_LOCK = threading.Lock()


def _install() -> None:
    # Called with _QUIET_LOCK held, before a block of either kind starts.
    if not _QUIET.active:
        for name in RASTERIO_LOGGERS:
            logging.getLogger(name).addFilter(_QUIET)


def _uninstall() -> None:
    # Called with _QUIET_LOCK held, after a block of either kind ended.
    if not _QUIET.active:
        for name in RASTERIO_LOGGERS:
            logging.getLogger(name).removeFilter(_QUIET)


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
        _install()
        _QUIET.depth[ident] = _QUIET.depth.get(ident, 0) + 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            left = _QUIET.depth.pop(ident) - 1
            if left:
                _QUIET.depth[ident] = left
            _uninstall()


@contextlib.contextmanager
def capture_gdal_messages() -> Iterator[list[str]]:
    """Collect GDAL's messages (as rasterio logs them) from this thread during a block.

    Yields the list the messages are appended to (at most :data:`MAX_CAPTURED`). A failed remote
    read names its cause (an HTTP status, a retry, a curl error) only in these messages, so
    :func:`zoomearth.scene.remote.remote_failure` reads them. A nested block shares the outer
    block's list. Whether the messages also reach the user's logging is :func:`quiet_gdal`'s
    business.
    """
    ident = threading.get_ident()
    with _QUIET_LOCK:
        outer = _QUIET.captured.get(ident)
        if outer is None:
            _install()
            sink: list[str] = []
            _QUIET.captured[ident] = sink
        else:
            sink = outer
    try:
        yield sink
    finally:
        if outer is None:
            with _QUIET_LOCK:
                _QUIET.captured.pop(ident, None)
                _uninstall()


_GDAL_CONFIGURED = False


def cache_max(megabytes: float) -> int:
    """A ``GDAL_CACHEMAX`` value for :class:`rasterio.Env` or ``set_gdal_config``, in bytes.

    rasterio hands an integer ``GDAL_CACHEMAX`` to ``GDALSetCacheMax64``, which counts bytes, so a
    bare ``GDAL_CACHEMAX=256`` is a 256-*byte* cache (every block read goes back to the file).
    """
    return int(megabytes * 1024 * 1024)


def _configure_gdal(cache_mb: int) -> None:
    global _GDAL_CONFIGURED
    if _GDAL_CONFIGURED:
        return
    from rasterio.env import set_gdal_config

    # A bounded block cache keeps peak memory predictable on UHR rasters (GDAL's default is 5 % of
    # RAM, about 1.2 GB here, which a whole-scene stream would fill).
    set_gdal_config("GDAL_CACHEMAX", cache_max(cache_mb))
    _GDAL_CONFIGURED = True
