"""What a tool call receives besides its arguments: :class:`ToolContext`.

The context gives a tool its pixels (:meth:`ToolContext.read`, tile by tile through
:meth:`ToolContext.tiles` and :meth:`ToolContext.map_tiles`), progress and cancellation
(:meth:`ToolContext.report`), fresh output paths inside the run directory
(:meth:`ToolContext.output_path`), artifact drafts (:meth:`ToolContext.artifact`) and earlier
artifacts (:meth:`ToolContext.get_artifact`). The runner (:func:`~zoomearth.tools.runner.run_tool`)
works on a copy and fills in the call-specific parts. The tiles themselves and their cache live in
:mod:`zoomearth.tools.tiles`.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from zoomearth.artifacts import (
    Artifact,
    ArtifactDraft,
    ArtifactError,
    ArtifactKind,
    ArtifactStore,
    artifacts_by_id,
    format_artifact_ref,
    guess_media_type,
    parse_artifact_ref,
)
from zoomearth.geometry import PixelBox, ViewSpec
from zoomearth.tools.contract import Capabilities
from zoomearth.tools.errors import (
    CANCELLED_TEMPLATE,
    NO_REGION_TEMPLATE,
    OUTPUT_NAME_TEMPLATE,
    READ_LIMIT_TEMPLATE,
    TILE_KEY_TEMPLATE,
    TILES_KEPT_CANCEL_TEMPLATE,
    TILES_REUSED_TEMPLATE,
    UNKNOWN_ARTIFACT_TEMPLATE,
    UNKNOWN_VIEW_TEMPLATE,
    ToolCancelled,
    ToolFailure,
    ToolInputError,
)
from zoomearth.tools.tiles import Tile, TileCache, _normalise_tile_result

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.config import Settings
    from zoomearth.models import ModelPool
    from zoomearth.scene import Scene
    from zoomearth.scene.stack import SceneStack

__all__ = ["CancelCheck", "ProgressCallback", "ToolContext", "absolute_dir"]

_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")

ProgressCallback = Callable[[int, int, str], None]
CancelCheck = Callable[[], bool]
T = TypeVar("T")


_UNSET: Any = object()


@dataclass
class ToolContext:
    """Everything a tool call receives besides its arguments.

    Build one per call; :func:`run_tool` works on a copy and fills in the call-specific parts
    (validated region, streaming flag, tool name).

    Attributes:
        scene: The open scene (pixels through :meth:`read`, or ``scene.read``/``scene.render``).
        run_dir: Run directory; every artifact is written inside it (see :meth:`output_path`).
            Made absolute (:func:`absolute_dir`: against the current directory, ``~`` expanded,
            symlinks resolved) when the context is built, so a relative directory is never joined
            onto a path that already contains it.
        region: Region to process, full-resolution pixels (xyxy, half-open). None = the whole
            scene. Inside ``run``: validated, clipped to the scene and snapped to integer edges.
        views: The run's current views (frames only; render pixels with ``scene.render``).
        artifacts: Earlier artifacts by id; None reads them from the run directory's index.
        pool: The shared model pool (None: :meth:`require_pool` creates the default one).
        settings: Effective settings (default: the scene's).
        progress: ``progress(done, total, message)``; called by :meth:`report`.
        is_cancelled: Returns True once the call should stop; checked by :meth:`report` and
            :meth:`check_cancelled` (a tool then raises :class:`ToolCancelled`).
        step: Step of the run (names outputs); None outside a graph.
        store: The run's artifact store (default: one on ``run_dir``).
        typed_paths: Files the user typed on a command line for this run (the input image, the
            path values inside ``--args``, other path flags); path arguments naming one of them
            are allowed even outside ``allowed_roots``. Resolved when the context is built. Never
            fill it from planner or API-client input: those paths stay confined to
            ``allowed_roots``.
        streamed: True inside ``run`` when the region is above the one-piece limit and must be
            processed tile by tile.
        warnings: Notes the tool adds for the user (:meth:`note`).
        stack: The scene's time stack when it has several dates (``scene`` is its reference:
            every date reads on that grid with ``stack.read(i, box)``); None for one date.
    """

    scene: Scene
    run_dir: Path
    region: PixelBox | None = None
    views: Sequence[ViewSpec] = ()
    artifacts: Mapping[int, Artifact] | None = None
    pool: ModelPool | None = None
    settings: Settings | None = None
    progress: ProgressCallback | None = None
    is_cancelled: CancelCheck | None = None
    step: int | None = None
    store: ArtifactStore | None = None
    typed_paths: Sequence[str | os.PathLike[str]] = ()
    stack: SceneStack | None = None
    streamed: bool = field(default=False, init=False)
    warnings: list[str] = field(default_factory=list, init=False)
    tool_name: str = field(default="", init=False)
    _caps: Capabilities = field(default_factory=lambda: Capabilities(), init=False, repr=False)
    _call_id: str = field(default="", init=False, repr=False)
    _issued: list[Path] = field(default_factory=list, init=False, repr=False)
    _resolved_refs: dict[str, Artifact] = field(default_factory=dict, init=False, repr=False)
    _protected: list[Path] = field(default_factory=list, init=False, repr=False)
    # What a finished tile depends on (set by run_tool; None outside it: nothing is cached).
    _fingerprint: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _tile_caches: list[TileCache] = field(default_factory=list, init=False, repr=False)
    # Where independent tiles run when not here (Ray; set by run_tool(ray_address=...)).
    _tile_runner: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = absolute_dir(self.run_dir)
        self.typed_paths = tuple(_resolve_typed(p) for p in self.typed_paths)
        if self.settings is None:
            self.settings = getattr(self.scene, "settings", None)

    # -- cancellation and progress -----------------------------------------------------------
    def check_cancelled(self) -> None:
        """Raise :class:`ToolCancelled` if the call was cancelled."""
        if self.is_cancelled is not None and self.is_cancelled():
            raise ToolCancelled(
                CANCELLED_TEMPLATE.format(tool=self.tool_name or "?"), tool=self.tool_name
            )

    def report(self, done: int, total: int, message: str = "") -> None:
        """Report progress (``done`` of ``total`` units), then check for cancellation."""
        if self.progress is not None:
            self.progress(int(done), int(total), message)
        self.check_cancelled()

    def note(self, message: str) -> None:
        """Add a note for the user (shown with the result)."""
        self.warnings.append(str(message))

    # -- pixels -------------------------------------------------------------------------------
    @property
    def box(self) -> PixelBox:
        """The validated region (full-resolution pixels, integer edges); set by run_tool."""
        if self.region is None:
            raise ToolFailure(NO_REGION_TEMPLATE, tool=self.tool_name)
        return self.region

    @property
    def one_piece_limit(self) -> int | None:
        """Largest side (px) one full-resolution read may have: max_side + 2 x tile_overlap."""
        caps = self._caps
        return None if caps.max_side is None else caps.max_side + 2 * caps.tile_overlap

    def read(
        self,
        box: PixelBox | None = None,
        *,
        bands: Sequence[int] | None = None,
        out_size: tuple[int, int] | None = None,
        resampling: str = "average",
    ) -> np.ma.MaskedArray:
        """Read native pixel values (default: the region), enforcing the one-piece limit.

        Args:
            box: Full-resolution box (default: ``region``); snapped outwards.
            bands: 1-based band indexes (default: all).
            out_size: ``(width, height)`` of a decimated read; None = full resolution.
            resampling: GDAL resampling name for decimated reads.

        Returns:
            Masked array ``(bands, height, width)`` in the source dtype; mask True where nodata,
            transparent, NaN or infinite (no tool can compute with +-Inf; their source values
            stay under the mask).

        Raises:
            ToolFailure: A full-resolution read above the declared one-piece limit (a contract
                breach of the tool: large regions must be read through :meth:`tiles`).
        """
        target = self.box if box is None else box
        limit = self.one_piece_limit
        side_w, side_h = (
            (out_size[0], out_size[1]) if out_size is not None else _box_size(target.snap_out())
        )
        if limit is not None and max(side_w, side_h) > limit:
            raise ToolFailure(
                f"Tool '{self.tool_name}' "
                + READ_LIMIT_TEMPLATE.format(
                    width=side_w,
                    height=side_h,
                    limit=limit,
                    max_side=self._caps.max_side,
                    overlap=self._caps.tile_overlap,
                ),
                tool=self.tool_name,
            )
        data = self.scene.read(
            target, out_size=out_size, bands=tuple(bands) if bands else None, resampling=resampling
        )
        return _mask_non_finite(data)

    def tiles(self, side: int | None = None, overlap: int | None = None) -> list[Tile]:
        """Split the region into tiles in row-major order (a single tile when it fits).

        Args:
            side: Tile side in pixels (default and maximum: ``capabilities.max_side``; the whole
                region when the tool has no limit).
            overlap: Context pixels around each tile (default ``capabilities.tile_overlap``).

        Returns:
            The tiles; their ``box`` es partition the region exactly.
        """
        region = self.box
        x0, y0, x1, y1 = (int(v) for v in region.as_list())
        limit = self._caps.max_side
        if side is None:
            side = limit or max(x1 - x0, y1 - y0)
        side = max(1, int(side if limit is None else min(side, limit)))
        ov = self._caps.tile_overlap if overlap is None else max(0, int(overlap))
        width, height = self.scene.width, self.scene.height
        starts = [(tx, ty) for ty in range(y0, y1, side) for tx in range(x0, x1, side)]
        tiles = []
        for i, (tx, ty) in enumerate(starts):
            bx2, by2 = min(tx + side, x1), min(ty + side, y1)
            rx1, ry1 = max(tx - ov, 0), max(ty - ov, 0)
            rx2, ry2 = min(bx2 + ov, width), min(by2 + ov, height)
            tiles.append(
                Tile(
                    index=i,
                    count=len(starts),
                    box=PixelBox(tx, ty, bx2, by2),
                    read_box=PixelBox(rx1, ry1, rx2, ry2),
                    window=(tx - x0, ty - y0, bx2 - tx, by2 - ty),
                    inner=(slice(ty - ry1, by2 - ry1), slice(tx - rx1, bx2 - rx1)),
                )
            )
        return tiles

    def map_tiles(
        self,
        fn: Callable[[Tile], T],
        tiles: Sequence[Tile] | None = None,
        *,
        key: Any = None,
        message: str = "",
    ) -> Iterator[tuple[Tile, T]]:
        """Compute ``fn(tile)`` for every tile; yield the results in order; tiles survive a stop.

        The one place a tool's tiles are processed. Yields ``(tile, result)`` in row-major order,
        so one writer can write the output in order; after each yielded tile it reports progress
        (``done`` of ``total`` tiles) and checks for cancellation.

        When the tool declares ``Capabilities(independent_tiles=True)``:

        * **Parallel tiles.** ``fn`` runs on up to ``tool_workers`` tiles at once (setting;
          default: the CPUs of this process), in threads or fresh processes as the tool declares
          (``Capabilities.parallel_tiles``), or as Ray tasks when the call was started with
          ``run_tool(..., ray_address=...)``. At most ``2 x workers`` tiles are in flight --
          computing, or finished and waiting for an earlier tile -- so memory stays bounded
          whatever the region size; results are still yielded in row-major order. Cancellation
          is checked while waiting: no new tile starts once the call is cancelled, tiles already
          running finish (threads, processes) or are cancelled (Ray).
        * **Finished tiles survive a stop.** Every result is stored in a :class:`TileCache` as
          soon as it is computed (in whatever order tiles finish), under ``RUN_DIR/.tiles/``,
          keyed by a fingerprint of the call: tool name, ``Tool.version`` and the source file of
          the tool, the validated arguments, the region, the tile layout, the input files (path,
          size, modification time: the scene, ``artifact:N`` inputs and path arguments) and
          ``key``. When the same call runs again -- a resumed thread, a re-sent request -- the
          tiles it finished are read back instead of computed (progress counts them at once) and
          a note says how many were reused. The cache is removed when the call succeeds (or is
          refused with a :class:`ToolInputError`) and kept when it is cancelled or fails. A
          different fingerprint never reuses a tile; an unreadable tile file is computed again.

        Args:
            fn: ``fn(tile)`` -> a numpy array, or a mapping of names to arrays / numbers (e.g.
                ``{"pixels": (bands, h, w) array, "changed": 12}``). With independent tiles it
                must depend only on the tile and on values fixed for the call, and must not
                change shared state: it runs in several threads at once (or, pickled, in other
                processes and on other machines; see :mod:`zoomearth.tools.distributed`). Notes
                and progress it reports from there are not seen by the caller: return them.
            tiles: The tiles (default: :meth:`tiles`).
            key: Anything else the results depend on that the fingerprint does not cover:
                statistics computed before the tiles, a model checkpoint, the device
                (JSON-serialisable; numpy values are accepted).
            message: Progress message (default ``"<tool>: tiles"``).

        Yields:
            ``(tile, result)``; a mapping result comes back as ``dict[str, np.ndarray]`` (numbers
            as 0-d arrays), the same whether computed or reused.
        """
        tiles = list(self.tiles() if tiles is None else tiles)
        cache = self._tile_cache(tiles, key)
        label = message or f"{self.tool_name or 'tool'}: tiles"
        total, reused = len(tiles), 0
        results = self._tile_results(fn, tiles, cache)
        try:
            for done, (tile, result, was_reused) in enumerate(results, 1):
                reused += was_reused
                yield tile, result
                self.report(done, total, label)
        except ToolCancelled as exc:
            results.close()  # stop the workers first: tiles still running are kept, too
            kept = cache.tile_count() if cache is not None else 0
            if not kept:
                raise
            raise ToolCancelled(
                f"{exc} " + TILES_KEPT_CANCEL_TEMPLATE.format(count=kept, run_dir=self.run_dir),
                tool=self.tool_name,
            ) from None
        finally:
            results.close()
        if reused:
            self.note(TILES_REUSED_TEMPLATE.format(reused=reused, total=total))

    def tile_workers(self, count: int | None = None) -> int:
        """Tiles :meth:`map_tiles` computes at once for this call (1: one after the other).

        Args:
            count: Number of tiles to compute (the workers never exceed it).
        """
        from zoomearth.tools.distributed import default_workers

        if not self._caps.independent_tiles or self._caps.parallel_tiles == "serial":
            return 1
        workers = getattr(self.settings, "tool_workers", None) or default_workers()
        return max(1, min(int(workers), count if count is not None else int(workers)))

    def _tile_results(
        self, fn: Callable[[Tile], Any], tiles: list[Tile], cache: TileCache | None
    ) -> Generator[tuple[Tile, Any, bool], None, None]:
        """``(tile, result, reused)`` in order: from the cache, or computed serially/in parallel."""
        todo = len(tiles) if cache is None else len(tiles) - cache.tile_count()
        runner = self._tile_runner if self._caps.independent_tiles else None
        workers = self.tile_workers(todo)
        if runner is None and (workers <= 1 or todo <= 1):
            for tile in tiles:
                result = cache.load(tile) if cache is not None else None
                if result is not None:
                    yield tile, result, True
                    continue
                self.check_cancelled()  # never start a tile once the call is cancelled
                result = _normalise_tile_result(fn(tile), self.tool_name)
                if cache is not None:
                    cache.store(tile, result)
                yield tile, result, False
            return
        executor: Any
        if runner is not None:
            executor = runner.executor(fn, self.tool_name)
            window = int(runner.in_flight)
        elif self._caps.parallel_tiles == "processes":
            from zoomearth.tools.distributed import ProcessTiles

            executor = ProcessTiles(fn, workers, self.tool_name)
            window = 2 * workers
        else:
            executor = _ThreadTiles(fn, workers, self.tool_name, cache)
            window = 2 * workers
        yield from _ordered(self, executor, tiles, cache, max(1, window))

    def _tile_cache(self, tiles: Sequence[Tile], key: Any) -> TileCache | None:
        if not self._caps.independent_tiles or self._fingerprint is None:
            return None
        material = {
            **self._fingerprint,
            "tiles": [[*t.box.as_list(), *t.read_box.as_list()] for t in tiles],
            "key": key,
        }
        try:
            cache = TileCache.open(self.run_dir, self.tool_name, material)
        except (TypeError, ValueError) as exc:
            raise ToolFailure(
                TILE_KEY_TEMPLATE.format(reason=exc), tool=self.tool_name
            ) from exc
        self._tile_caches.append(cache)
        return cache

    def view(self, view_id: int) -> ViewSpec:
        """The current view with this id (raises ToolInputError listing the valid ids)."""
        for v in self.views:
            if v.view_id == view_id:
                return v
        valid = ", ".join(str(v.view_id) for v in self.views) or "none"
        raise ToolInputError(
            UNKNOWN_VIEW_TEMPLATE.format(view_id=view_id, valid=valid),
            code="unknown_view",
            tool=self.tool_name,
        )

    # -- models -------------------------------------------------------------------------------
    def require_pool(self) -> ModelPool:
        """The model pool of the call; the process's default pool when none was given."""
        if self.pool is None:
            from zoomearth.models import get_default_pool

            self.pool = get_default_pool()
        return self.pool

    # -- artifacts ----------------------------------------------------------------------------
    @property
    def allowed_roots(self) -> list[Path]:
        """Directories path arguments may name (the setting ``allowed_roots``)."""
        return list(getattr(self.settings, "allowed_roots", None) or [])

    @property
    def protected_paths(self) -> list[Path]:
        """Inputs no output may overwrite: the scene file and checked input-path arguments."""
        return [Path(self.scene.path), *self._protected]

    def output_path(self, name: str) -> Path:
        """A fresh path inside the run directory for an output named ``name`` (e.g. ``mask.tif``).

        The file name is prefixed with the step/call id and the tool name so calls never collide.
        Write to it atomically (``zoomearth.scene.writing.atomic_path``, ``write_window_array``,
        ``TiledRasterWriter``, ``write_png``). Files issued here are removed if the call fails or
        is cancelled.
        """
        if not _FILE_NAME_RE.match(name or "") or name in (".", ".."):
            raise ToolFailure(OUTPUT_NAME_TEMPLATE.format(name=name), tool=self.tool_name)
        if not self._call_id:
            self._call_id = secrets.token_hex(3)
        prefix = f"{self._call_id}-{self.tool_name or 'tool'}-"
        path = self.run_dir / (prefix + name)
        n = 2
        while path.exists() or path in self._issued:
            stem, dot, suffix = name.partition(".")
            path = self.run_dir / f"{prefix}{stem}-{n}{dot}{suffix}"
            n += 1
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._issued.append(path)
        return path

    def artifact(
        self,
        path: str | os.PathLike[str],
        kind: str,
        summary: str = "",
        *,
        crs: str | None = _UNSET,
        region: PixelBox | None = _UNSET,
        media_type: str = "",
        **meta: str | int | float | bool | None,
    ) -> ArtifactDraft:
        """Describe a written file for the result.

        Args:
            path: The file (inside the run directory).
            kind: ``raster``, ``mask``, ``vector``, ``preview``, ``table``, ``text`` (see
                :class:`~zoomearth.artifacts.ArtifactKind`) or another lowercase identifier.
            summary: One line for the planner.
            crs: CRS of the file; default: the scene's for rasters, masks and vectors of a
                georeferenced scene, else None.
            region: Region covered (default: the call's region).
            media_type: MIME type (default: from the suffix).
            **meta: Small extra facts.

        Returns:
            The draft to put in :attr:`ToolResult.artifacts`.
        """
        if crs is _UNSET:
            geo_kind = kind in (ArtifactKind.RASTER, ArtifactKind.MASK, ArtifactKind.VECTOR)
            crs = self.scene.crs_string if geo_kind and self.scene.georeferenced else None
        if region is _UNSET:
            region = self.region
        return ArtifactDraft(
            path=Path(path),
            kind=kind,
            summary=summary,
            crs=crs,
            region_xyxy=tuple(region.as_list()) if region is not None else None,  # type: ignore[arg-type]
            media_type=media_type or guess_media_type(path),
            meta=dict(meta),
        )

    def known_artifacts(self) -> dict[int, Artifact]:
        """Earlier artifacts by id (given ones, else those in the run directory's index)."""
        if self.artifacts is not None:
            return artifacts_by_id(self.artifacts)
        return self._store().all()

    def get_artifact(self, ref: str | int) -> Artifact:
        """The earlier artifact named by ``"artifact:N"`` (checked by run_tool for arguments)."""
        if isinstance(ref, str) and ref in self._resolved_refs:
            return self._resolved_refs[ref]
        known = self.known_artifacts()
        try:
            art_id = parse_artifact_ref(ref)
        except ArtifactError as exc:
            raise ToolInputError(str(exc), code="unknown_artifact", tool=self.tool_name) from None
        if art_id not in known:
            raise ToolInputError(
                UNKNOWN_ARTIFACT_TEMPLATE.format(
                    arg="?",
                    tool=self.tool_name,
                    ref=format_artifact_ref(art_id),
                    available=_available(known),
                ),
                code="unknown_artifact",
                tool=self.tool_name,
            )
        return known[art_id]

    def _store(self) -> ArtifactStore:
        if self.store is None:
            self.store = ArtifactStore(self.run_dir)
        return self.store


class _ThreadTiles:
    """Threads of this process computing tiles (``parallel_tiles="threads"``).

    Each thread normalises its result and stores it in the tile cache itself (``stores``), so
    the writes and their fsync run in parallel too.
    """

    stores = True

    def __init__(
        self, fn: Callable[[Tile], Any], workers: int, tool: str, cache: TileCache | None
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._fn, self._tool, self._cache = fn, tool, cache
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"tiles-{tool}")

    def _run(self, tile: Tile) -> Any:
        result = _normalise_tile_result(self._fn(tile), self._tool)
        if self._cache is not None:
            self._cache.store(tile, result)
        return result

    def submit(self, tile: Tile) -> Future[Any]:
        return self._pool.submit(self._run, tile)

    def shutdown(self) -> None:
        # Running tiles finish (and are stored: a resume reuses them); queued ones are dropped.
        self._pool.shutdown(wait=True, cancel_futures=True)


def _ordered(
    ctx: ToolContext, executor: Any, tiles: list[Tile], cache: TileCache | None, window: int
) -> Generator[tuple[Tile, Any, bool], None, None]:
    """Run ``tiles`` on ``executor``; yield ``(tile, result, reused)`` in order (a reorder buffer).

    At most ``window`` tiles are between submission and their yield (running, or finished and
    waiting for an earlier one). Results not stored by the executor itself are stored in the
    cache as they arrive, in any order, so a stop keeps every finished tile.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    pending: dict[Future[Any], int] = {}
    ready: dict[int, tuple[Any, bool]] = {}
    n, next_out, next_in = len(tiles), 0, 0

    def collect(futures: Iterable[Future[Any]]) -> None:
        for fut in futures:
            pos = pending.pop(fut)
            result = fut.result()  # a tile's exception fails the call here
            if cache is not None and not executor.stores:
                cache.store(tiles[pos], result)
            ready[pos] = (result, False)

    try:
        while next_out < n:
            while next_in < n and next_in - next_out < window:
                tile = tiles[next_in]
                cached = cache.load(tile) if cache is not None else None
                if cached is not None:
                    ready[next_in] = (cached, True)
                else:
                    ctx.check_cancelled()  # never start a tile once the call is cancelled
                    pending[executor.submit(tile)] = next_in
                next_in += 1
            if next_out in ready:
                result, reused = ready.pop(next_out)
                yield tiles[next_out], result, reused
                next_out += 1
                continue
            done, _ = wait(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
            collect(done)
            if not done:
                ctx.check_cancelled()  # a long tile does not delay a cancellation
    finally:
        executor.shutdown()
        if cache is not None and not executor.stores:
            # Tiles that finished while stopping are kept for a resume as well.
            for fut in [f for f in pending if f.done() and not f.cancelled()]:
                if fut.exception() is None:
                    cache.store(tiles[pending[fut]], fut.result())


def _mask_non_finite(data: np.ma.MaskedArray) -> np.ma.MaskedArray:
    """Mask +-Inf (and NaN) of a floating-point read in place; other dtypes are returned as is."""
    import numpy as np

    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        bad = ~np.isfinite(np.ma.getdata(data))
        if bad.any():
            data.mask = np.ma.getmaskarray(data) | bad
    return data


def absolute_dir(path: str | os.PathLike[str]) -> Path:
    """A directory path made absolute once, where it is created (``~`` expanded, symlinks resolved).

    Every run directory goes through this, so code joining file names onto it never sees a relative
    directory (which, joined again to a path that already contains it, names a file that does not
    exist).
    """
    return Path(path).expanduser().resolve()


def _resolve_typed(path: str | os.PathLike[str]) -> Path:
    """A path the user typed, as the runner compares it (absolute, symlinks resolved)."""
    return Path(os.fspath(path)).expanduser().resolve()


def _box_size(box: PixelBox) -> tuple[int, int]:
    return int(box.width), int(box.height)


def _available(known: Mapping[int, Artifact], limit: int = 20) -> str:
    if not known:
        return "no artifacts yet"
    items = sorted(known.values(), key=lambda a: a.id)[-limit:]
    return "; ".join(f"{a.ref} ({a.kind}: {a.summary or Path(a.path).name})" for a in items)
