"""Cache of prepared rasters: tiled, compressed, overviewed copies of hard-to-window sources.

A strip TIFF, PNG or JPEG of 40,000 px cannot serve a 512-px overview without decoding every row.
The first time pixels of such a raster are needed, :class:`SceneCache` streams it once into a
tiled GeoTIFF (512-px tiles, lossless ZSTD, internal overviews), keyed by the source's absolute
path, size and modification time, so an edited file gets a fresh copy. Memory stays bounded:
the source is read in strips of at most one tile row, and GDAL's block cache is capped.

The cache has a size cap (setting ``scene_cache_max_bytes``): after each build the least recently
used entries are removed until the total fits. ``zoomearth cache list|clear`` manage it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoomearth.errors import SceneReadError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from zoomearth.config import Settings

__all__ = ["CacheEntry", "SceneCache"]

TILE = 512
PREPARE_FAILED_TEMPLATE = (
    "Preparing a tiled copy of {path} failed while reading rows {rows} ({reason}). The file may be "
    "truncated or corrupt; re-download or re-export it."
)


@dataclass(frozen=True)
class CacheEntry:
    """One prepared raster in the cache."""

    key: str
    path: Path
    source: str
    size_bytes: int
    last_used: float


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

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        # A per-key file lock stops two processes from building the same copy at once.
        self.root.mkdir(parents=True, exist_ok=True)
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
            os.utime(meta, (now, now))
            return tif
        return None

    def get_or_build(self, source: Path, progress: bool = True) -> Path:
        """Return the prepared copy of ``source``, building it (streaming) when missing."""
        source = Path(source)
        key = cache_key(source)
        found = self.lookup(source)
        if found is not None:
            return found
        with self._locked(key):
            found = self.lookup(source)
            if found is not None:
                return found
            tif, meta = self._paths(key)
            build_tiled_copy(source, tif, progress=progress)
            meta_tmp = meta.with_name(meta.name + ".tmp")
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
        self.enforce_cap(keep={key})
        return tif

    def entries(self) -> list[CacheEntry]:
        """All complete entries, most recently used first."""
        out: list[CacheEntry] = []
        if not self.root.exists():
            return out
        for meta in self.root.glob("*.json"):
            tif = meta.with_suffix(".tif")
            if not tif.exists():
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
                    size_bytes=tif.stat().st_size,
                    last_used=meta.stat().st_mtime,
                )
            )
        out.sort(key=lambda e: e.last_used, reverse=True)
        return out

    def remove(self, key: str) -> None:
        """Delete one entry (missing files are ignored)."""
        for p in self._paths(key):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def clear(self) -> int:
        """Delete every entry (and leftover temporary files); return the bytes freed."""
        freed = 0
        for e in self.entries():
            freed += e.size_bytes
            self.remove(e.key)
        if self.root.exists():
            for tmp in [*self.root.glob(".*.tmp*"), *self.root.glob("*.json.tmp")]:
                with contextlib.suppress(OSError):
                    freed += tmp.stat().st_size
                    tmp.unlink()
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


def build_tiled_copy(source: Path, dest: Path, progress: bool = True) -> None:
    """Stream ``source`` into a tiled, ZSTD-compressed GeoTIFF with overviews at ``dest``.

    Reads strips of one tile row (512 rows) at a time, so peak memory is about one strip plus
    GDAL's capped block cache. Georeference, band count, dtype, nodata and colour interpretation
    are kept. Writes to a temporary file and renames it into place.

    Raises:
        SceneReadError: If the source cannot be decoded (truncated, corrupt).
    """
    import numpy as np
    import rasterio
    from rasterio.enums import MaskFlags, Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.windows import Window

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
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
                with (
                    rasterio.Env(GDAL_CACHEMAX=cache_mb, GDAL_TIFF_INTERNAL_MASK=True),
                    rasterio.open(tmp, "w", **profile) as dst,
                ):
                    dst.colorinterp = src.colorinterp
                    if src.count == 1 and src.colorinterp[0].name == "palette":
                        with contextlib.suppress(ValueError):
                            dst.write_colormap(1, src.colormap(1))
                    rows = range(0, src.height, TILE)
                    bar = _progress(len(rows) * 2, f"preparing {source.name}", progress)
                    for r in rows:
                        h = min(TILE, src.height - r)
                        window = Window(0, r, src.width, h)
                        try:
                            block = src.read(window=window)
                        except RasterioError as exc:
                            raise SceneReadError(
                                PREPARE_FAILED_TEMPLATE.format(
                                    path=source,
                                    rows=f"{r}-{r + h}",
                                    reason=str(exc).split("\n")[0],
                                )
                            ) from None
                        dst.write(block, window=window)
                        if has_mask:
                            dst.write_mask(src.read_masks(1, window=window), window=window)
                        bar.update(1)
                    factors = _overview_factors(src.width, src.height)
                    if factors:
                        dst.build_overviews(factors, Resampling.average)
                        dst.update_tags(ns="rio_overview", resampling="average")
                    bar.update(len(rows))
                    bar.close()
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False)
