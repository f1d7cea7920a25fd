"""Cache of prepared rasters: tiled, compressed, overviewed copies of hard-to-window sources.

A strip TIFF, PNG or JPEG of 40,000 px cannot serve a 512-px overview without decoding every row.
The first time pixels of such a raster are needed, :class:`SceneCache` streams it once into a
tiled GeoTIFF (512-px tiles, lossless ZSTD, internal overviews), keyed by the source's absolute
path, size and modification time, so an edited file gets a fresh copy. A remote raster
without tiles and overviews (:mod:`zoomearth.scene.remote`) is downloaded into the cache folder
first and keyed by its URL, size, ETag and Last-Modified; the download goes once the copy is
built. Memory stays bounded:
the source is read in strips of at most one tile row, and GDAL's block cache is capped.

Where the work runs and how a copy is built (in this process or in a worker process, with
progress and cancellation): :mod:`zoomearth.scene.prepare`, whose public names are re-exported
here.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoomearth.errors import ScenePrepareError

# The builder moved to zoomearth.scene.prepare; re-exported so that old import paths keep working.
from zoomearth.scene.prepare import (  # noqa: F401 - some are only re-exported
    CANCELLED_TEMPLATE,
    END_LINE,
    HEARTBEAT_S,
    IN_PROCESS_MAX_PIXELS,
    POLL_S,
    PREPARE_FAILED_TEMPLATE,
    START_LINE,
    TERMINATE_GRACE_S,
    TILE,
    WORKER_DIED_TEMPLATE,
    WORKER_FAILED_TEMPLATE,
    WRITE_FAILED_TEMPLATE,
    ProgressFn,
    _os_reason,
    build_tiled_copy,
)
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

PREPARE_BUDGET_TEMPLATE = (
    "{path} ({width:,} x {height:,} = {pixels:,} px) needs a prepared tiled copy because "
    "{reason}, and that is above the work budget of {budget:,} px per request (setting "
    "max_prepare_pixels). Convert it once to a Cloud-Optimized GeoTIFF and use that "
    "(gdal_translate -of COG -co BLOCKSIZE=512 -co OVERVIEWS=AUTO in.tif out.tif), or prepare it "
    "once ahead of time with `zoomearth prepare IMAGE` (cached and reused, whatever the budget), "
    "or raise the budget (--set max_prepare_pixels={suggest} or "
    "ZOOMEARTH_MAX_PREPARE_PIXELS={suggest})."
)


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

    def lookup(self, source: Path, *, key: str | None = None) -> Path | None:
        """The prepared copy of ``source`` if present (marks it used), else None.

        ``key`` replaces :func:`cache_key` of ``source`` (a remote scene's key is made from its
        URL, size, ETag and Last-Modified: :func:`zoomearth.scene.remote.cache_key`).
        """
        tif, meta = self._paths(key or cache_key(source))
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
        key: str | None = None,
        fetch: Callable[[Path], object] | None = None,
        label: str | None = None,
    ) -> Path:
        """Return the prepared copy of ``source``, building it (streaming) when missing.

        Args:
            source: The raster to prepare (with ``fetch``: a file name for the local copy).
            progress: See :func:`build_tiled_copy`.
            isolate: See :func:`build_tiled_copy`.
            cancel: See :func:`build_tiled_copy`.
            key: The entry's key (default: :func:`cache_key` of ``source``).
            fetch: For a source that is not a local file (a remote scene): called with a
                temporary path in the cache folder to write the source's bytes to; the copy is
                prepared from that file, which is removed afterwards (also on failure).
            label: What the entry's metadata names as its source (default: the absolute path).

        Raises:
            SceneReadError: The source cannot be decoded.
            ScenePrepareError: The copy cannot be written, or the worker process failed.
            ScenePrepareCancelled: ``cancel`` returned True (or ``progress`` raised it).
        """
        source = Path(source)
        key = key or cache_key(source)
        found = self.lookup(source, key=key)
        if found is not None:
            return found
        self._mkdir(source)
        with self._locked(key):
            found = self.lookup(source, key=key)
            if found is not None:
                return found
            # Litter of crashed builds would otherwise only go at `cache clear`.
            self.sweep()
            tif, meta = self._paths(key)
            if fetch is None:
                build_tiled_copy(source, tif, progress=progress, isolate=isolate, cancel=cancel)
            else:
                # An owner-named temporary: a crash mid-download leaves litter the sweep removes.
                local = temporary_sibling(self.root / source.name)
                try:
                    fetch(local)
                    build_tiled_copy(local, tif, progress=progress, isolate=isolate, cancel=cancel)
                finally:
                    for p in (local, local.with_name(local.name + ".aux.xml")):
                        with contextlib.suppress(OSError):
                            p.unlink()
            meta_tmp = temporary_sibling(meta, keep_suffix=False)
            try:
                meta_tmp.write_text(
                    json.dumps(
                        {
                            "source": label or str(source.resolve()),
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
