"""Tiles: the pieces a streamed region is processed in, and the finished tiles kept across a stop.

:class:`Tile` is one piece of a region (made by :meth:`~zoomearth.tools.context.ToolContext.tiles`).
:class:`TileCache` keeps the finished tiles of a call that declares
``Capabilities(independent_tiles=True)`` and processes them through
:meth:`~zoomearth.tools.context.ToolContext.map_tiles`, under ``RUN_DIR/.tiles/``
(:data:`TILE_CACHE_DIR`), so a cancelled, failed or killed call resumes where it stopped; the
runner removes them once the call succeeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.geometry import PixelBox
from zoomearth.tools.errors import TILE_RESULT_TEMPLATE, ToolFailure

if TYPE_CHECKING:
    import numpy as np

__all__ = ["TILE_CACHE_DIR", "TILE_CACHE_FORMAT", "Tile", "TileCache"]

#: Folder of the tile caches (:class:`TileCache`) inside a run directory.
TILE_CACHE_DIR: Final = ".tiles"
#: Layout version of the tile cache; part of every fingerprint, so a new layout never reuses.
TILE_CACHE_FORMAT: Final = 1


@dataclass(frozen=True)
class Tile:
    """One piece of a region processed tile by tile (all boxes in full-resolution pixels).

    Attributes:
        index: 0-based position in row-major order.
        count: Number of tiles of the region.
        box: The tile's own part of the region (tiles partition the region).
        read_box: ``box`` grown by the overlap on every side, clipped to the scene: read this.
        window: ``(col_off, row_off, width, height)`` of ``box`` relative to the region, i.e. the
            window of an output raster that covers the region.
        inner: ``(rows, cols)`` slices locating ``box`` inside an array read from ``read_box``.
    """

    index: int
    count: int
    box: PixelBox
    read_box: PixelBox
    window: tuple[int, int, int, int]
    inner: tuple[slice, slice]

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Cut the tile's own part out of an array read from ``read_box`` (last two axes)."""
        rows, cols = self.inner
        return array[..., rows, cols]


# --------------------------------------------------------------------------------------------
# Finished tiles kept across a stop
# --------------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    """JSON form of the numpy values and paths a fingerprint may hold."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _normalise_tile_result(result: Any, tool: str) -> Any:
    """A tile result as arrays: an ndarray stays one; a mapping becomes ``{name: ndarray}``."""
    import numpy as np

    if isinstance(result, np.ndarray):
        arrays = {"": result}
    elif isinstance(result, Mapping) and all(isinstance(k, str) and k for k in result):
        arrays = {k: np.asarray(v) for k, v in result.items()}
    else:
        raise ToolFailure(TILE_RESULT_TEMPLATE.format(got=type(result).__name__), tool=tool)
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise ToolFailure(
                TILE_RESULT_TEMPLATE.format(got=f"{name or 'the array'} of dtype object"),
                tool=tool,
            )
    return result if isinstance(result, np.ndarray) else arrays


class TileCache:
    """The finished tiles of one tool call, on disk, so a stopped call resumes where it stopped.

    One folder per call fingerprint (see :meth:`ToolContext.map_tiles`):
    ``RUN_DIR/.tiles/<tool>-<digest>/`` holds ``fingerprint.json`` (the canonical JSON the
    digest covers) and one ``tile-NNNNNN.npz`` per finished tile (uncompressed numpy arrays,
    ``allow_pickle`` off; plus the tile's box, checked on reading). Each tile file is written
    under an owner-named temporary (:func:`zoomearth.temporaries.temporary_sibling`), flushed to
    disk and renamed, so a file under the final name is always complete; a killed writer's
    temporary is swept when the cache is opened again.

    Disk use: the uncompressed size of the finished part of the outputs, until the call
    succeeds.
    """

    MANIFEST = "fingerprint.json"

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint

    @classmethod
    def open(cls, run_dir: Path, tool: str, material: Mapping[str, Any]) -> TileCache:
        """The cache of a call in ``run_dir`` (nothing is created until a tile is stored).

        Raises:
            TypeError, ValueError: ``material`` is not JSON-serialisable.
        """
        from zoomearth.temporaries import sweep_stale_temporaries

        text = _canonical_json(material)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
        cache = cls(Path(run_dir) / TILE_CACHE_DIR / f"{tool or 'tool'}-{digest}", text)
        if cache.folder.is_dir():
            sweep_stale_temporaries(cache.folder)
            try:
                same = (cache.folder / cls.MANIFEST).read_text(encoding="utf-8") == text
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:  # another layout version, a damaged manifest: start afresh
                cache.discard()
        return cache

    def path(self, index: int) -> Path:
        """The file of tile ``index``."""
        return self.folder / f"tile-{index:06d}.npz"

    def tile_count(self) -> int:
        """Number of finished tiles stored."""
        if not self.folder.is_dir():
            return 0
        return sum(1 for p in self.folder.glob("tile-*.npz"))

    def load(self, tile: Tile) -> Any:
        """The stored result of ``tile`` (as :func:`_normalise_tile_result` gives it), or None.

        A file that cannot be read back completely (truncated, corrupt, another tile's) is
        removed and None returned, so the tile is computed again.
        """
        import zipfile

        import numpy as np

        path = self.path(tile.index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            box = arrays.pop("__box__")
            if box.tolist() != [int(v) for v in tile.box.as_list()]:
                raise ValueError("the file belongs to another tile")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        if set(arrays) == {"a:"}:
            return arrays["a:"]
        return {name[2:]: arr for name, arr in arrays.items()}

    def store(self, tile: Tile, result: Any) -> None:
        """Keep the result of ``tile`` (an ndarray or ``{name: ndarray}``), atomically."""
        import numpy as np

        from zoomearth.temporaries import temporary_sibling

        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / self.MANIFEST
        if not manifest.exists():
            _write_atomically(manifest, self.fingerprint.encode("utf-8"))
        if isinstance(result, np.ndarray):
            arrays = {"a:": result}
        else:
            arrays = {f"k:{name}": np.asarray(arr) for name, arr in result.items()}
        arrays["__box__"] = np.asarray([int(v) for v in tile.box.as_list()], np.int64)
        final = self.path(tile.index)
        tmp = temporary_sibling(final)
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())  # a power cut must not leave a renamed, empty tile
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def discard(self) -> None:
        """Remove the folder (and ``.tiles`` when it is left empty); never raises."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # only when empty


def _write_atomically(final: Path, data: bytes) -> None:
    from zoomearth.temporaries import temporary_sibling

    tmp = temporary_sibling(final)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


_SOURCE_DIGESTS: dict[type, str] = {}


def _source_digest(cls: type) -> str:
    """A digest of the file defining a tool class: edited code never reuses old tiles."""
    if cls not in _SOURCE_DIGESTS:
        try:
            source = inspect.getsourcefile(cls)
            digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else ""
        except (OSError, TypeError):
            digest = ""
        _SOURCE_DIGESTS[cls] = digest
    return _SOURCE_DIGESTS[cls]
