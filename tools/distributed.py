"""Tiles computed away from the calling thread: a local process pool, and Ray tasks.

:meth:`~zoomearth.tools.context.ToolContext.map_tiles` runs the tiles of a tool declaring
``Capabilities(independent_tiles=True)`` through one of three executors, all with the same
interface (``submit(tile) -> Future`` of the normalised tile result, ``shutdown()``):

* threads (in :mod:`zoomearth.tools.context`), the default ``parallel_tiles="threads"``;
* :class:`ProcessTiles`, ``parallel_tiles="processes"``: a pool of fresh (``spawn``) processes;
* :class:`RayTiles`, ``run_tool(..., ray_address=...)`` / ``zoomearth tool --ray ADDRESS``: one
  Ray task per tile, retried on failure (``max_retries``), anywhere on the cluster.

Shipping the tile function. The function a tool hands to ``map_tiles`` is usually a closure over
the call's :class:`~zoomearth.tools.context.ToolContext`, the open :class:`~zoomearth.scene.Scene`
and what the tool computed before the tiles. :func:`dumps_tile_fn` pickles it with cloudpickle,
replacing what cannot travel by how to rebuild it on the other side:

* a ``Scene`` becomes its source (path or URL), band mapping and settings, and is opened again
  in the worker (once per worker process: :func:`_open_scene`), so **each task reads its own
  window** from the source -- a shared filesystem or a URL every worker can reach is assumed;
* a rasterio dataset (e.g. ``cloud_removal``'s other dates) is opened again by name;
* the ``ToolContext`` travels without its progress callback, cancellation check, model pool and
  artifact store (progress and cancellation stay with the caller, which only hands out tiles;
  a model pool is the worker's default one);
* locks become fresh locks.

Where finished tiles go. Workers return each tile's arrays to the caller, which keeps them in
the call's :class:`~zoomearth.tools.tiles.TileCache` as they arrive (any order) and writes the
output in order with the tool's one writer -- so a Ray run's output is the single-process
output, bit for bit, and no shared filesystem is needed for the results. A worker lost mid-task
loses only that task (Ray runs it again); the caller stopped or killed loses nothing that
finished (the cache keeps it) and the same call resumes from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Final

from zoomearth.errors import ZoomEarthError

if TYPE_CHECKING:
    from zoomearth.scene import Scene
    from zoomearth.tools.tiles import Tile

__all__ = [
    "RAY_MISSING_TEMPLATE",
    "ProcessTiles",
    "RayTiles",
    "default_workers",
    "dumps_tile_fn",
    "loads_tile_fn",
    "ray_session",
]

RAY_MISSING_TEMPLATE: Final = (
    "--ray needs Ray, which is not installed: pip install 'zoomearth[dist]' (or 'ray>=2.40')."
)
RAY_CONNECT_TEMPLATE: Final = (
    "cannot connect to the Ray cluster at {address!r}: {reason}. Start one with "
    "'ray start --head' and pass its address (HOST:6379, ray://HOST:10001 or auto), or use "
    "--ray local to start one in this process."
)
PICKLE_TEMPLATE: Final = (
    "the tiles of '{tool}' cannot be sent to other processes: {reason}. Run it with "
    "parallel_tiles='threads' or 'serial' (or without --ray)."
)
#: Default number of times Ray runs a tile task again after its worker died.
RAY_MAX_RETRIES: Final = 3


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# Shipping a tile function
# --------------------------------------------------------------------------------------------
_SCENES: dict[tuple[Any, ...], Any] = {}
_RASTERS: dict[str, Any] = {}
_FUNCTIONS: dict[str, Callable[[Tile], Any]] = {}
_OPEN_LOCK = threading.Lock()


def _open_scene(
    source: str,
    stamp: tuple[int, int],
    bands: tuple[int, ...] | None,
    settings: Any,
    prepare: bool | None,
) -> Scene:
    """The scene a shipped tile function reads, opened once per worker process.

    ``stamp`` (size, mtime of the caller's file) is part of the key, so a long-lived worker never
    reads a replaced file through an old handle.
    """
    from zoomearth.scene import Scene

    text = settings.model_dump_json() if settings is not None else ""
    key = (source, stamp, bands, text, prepare)
    with _OPEN_LOCK:
        scene = _SCENES.get(key)
        if scene is None:
            scene = Scene.open(
                source, bands=bands, settings=settings, prepare=prepare, progress=False
            )
            _SCENES[key] = scene
    return scene


def _open_raster(name: str) -> Any:
    """A read-only rasterio dataset opened again by name in a worker (once per process)."""
    import rasterio

    with _OPEN_LOCK:
        ds = _RASTERS.get(name)
        if ds is None or ds.closed:
            ds = _RASTERS[name] = rasterio.open(name)
    return ds


def _rebuild_context(state: dict[str, Any]) -> Any:
    from zoomearth.tools.context import ToolContext

    ctx = object.__new__(ToolContext)
    ctx.__dict__.update(state)
    return ctx


def _default_pool() -> Any:
    from zoomearth.models import get_default_pool

    return get_default_pool()


def _reducer(obj: Any) -> Any:
    """How an object that cannot be pickled as is travels (``NotImplemented``: as is)."""
    from zoomearth.scene import Scene
    from zoomearth.tools.context import ToolContext

    if isinstance(obj, Scene):
        source = str(getattr(obj, "source", None) or obj.path)
        return _open_scene, (
            source,
            (int(getattr(obj, "file_size", 0) or 0), int(getattr(obj, "mtime_ns", 0) or 0)),
            getattr(obj, "band_mapping_override", None),
            obj.settings,
            getattr(obj, "_prepare_pref", None),
        )
    if isinstance(obj, ToolContext):
        state = dict(obj.__dict__)
        # Progress and cancellation stay with the caller (it hands out the tiles); the artifact
        # store and model pool are per process.
        state.update(progress=None, is_cancelled=None, pool=None, store=None, _tile_runner=None)
        return _rebuild_context, (state,)
    kind = type(obj)
    if kind.__module__.startswith("rasterio") and hasattr(obj, "name") and hasattr(obj, "read"):
        if getattr(obj, "mode", "r") != "r":
            raise pickle.PicklingError(f"an open rasterio dataset in mode {obj.mode!r}")
        return _open_raster, (str(obj.name),)
    if kind is type(threading.Lock()):
        return threading.Lock, ()
    if kind is type(threading.RLock()):
        return threading.RLock, ()
    if kind.__name__ == "ModelPool" and kind.__module__.startswith("zoomearth.models"):
        return _default_pool, ()
    return NotImplemented


def dumps_tile_fn(fn: Callable[[Tile], Any], tool: str = "") -> bytes:
    """Pickle a tile function (closures included) for another process; see the module docstring.

    Raises:
        ZoomEarthError: Something it holds cannot travel (the message names it).
    """
    import cloudpickle

    class _Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, obj: Any) -> Any:
            found = _reducer(obj)
            if found is not NotImplemented:
                return found
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    try:
        _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(fn)
    except Exception as exc:  # noqa: BLE001 - any pickling error means the same to the user
        raise ZoomEarthError(PICKLE_TEMPLATE.format(tool=tool or "tool", reason=exc)) from exc
    return buffer.getvalue()


def loads_tile_fn(blob: bytes) -> Callable[[Tile], Any]:
    """The tile function of :func:`dumps_tile_fn`, unpickled once per process and blob."""
    digest = hashlib.sha256(blob).hexdigest()
    fn = _FUNCTIONS.get(digest)
    if fn is None:
        fn = pickle.loads(blob)  # noqa: S301 - the caller's own function, never foreign input
        if len(_FUNCTIONS) >= 4:  # one call at a time per worker, in practice
            _FUNCTIONS.pop(next(iter(_FUNCTIONS)))
        _FUNCTIONS[digest] = fn
    return fn


def _compute(blob: bytes, tile: Tile, tool: str) -> Any:
    """Run the shipped function on one tile; the result normalised as the cache stores it."""
    from zoomearth.tools.tiles import _normalise_tile_result

    return _normalise_tile_result(loads_tile_fn(blob)(tile), tool)


# --------------------------------------------------------------------------------------------
# Local process pool
# --------------------------------------------------------------------------------------------
_CHILD_BLOB: bytes = b""


def _child_init(blob: bytes) -> None:
    global _CHILD_BLOB
    _CHILD_BLOB = blob
    loads_tile_fn(blob)  # open the scene once, before the first tile


def _child_tile(tile: Tile, tool: str) -> Any:
    return _compute(_CHILD_BLOB, tile, tool)


class ProcessTiles:
    """A pool of fresh processes (``spawn``: no inherited GDAL handles or locks) for one call.

    Each process imports the tool, unpickles the tile function once (opening the scene itself)
    and computes one tile at a time; results come back pickled. The caller keeps them in the tile
    cache (``stores`` is False).
    """

    stores = False

    def __init__(self, fn: Callable[[Tile], Any], workers: int, tool: str) -> None:
        import multiprocessing

        self.tool = tool
        blob = dumps_tile_fn(fn, tool)
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(blob,),
        )

    def submit(self, tile: Tile) -> Future[Any]:
        """Compute ``tile`` in a worker process."""
        return self._pool.submit(_child_tile, tile, self.tool)

    def shutdown(self) -> None:
        """Drop the queued tiles, let the running ones finish, stop the processes."""
        self._pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ZoomEarthError(RAY_MISSING_TEMPLATE) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[RayTiles]:
    """Connect to Ray for one call (``local``: start one in this process) and disconnect after.

    An already initialised Ray (``ray.init`` called by the application or a test) is used as is
    and left running; a session this function started is shut down on exit.

    Args:
        address: ``local`` (an in-process cluster on this machine's CPUs), ``auto`` (the cluster
            ``ray start`` runs on this machine), ``HOST:PORT`` of a head node, or
            ``ray://HOST:10001`` (Ray Client).

    Yields:
        The :class:`RayTiles` to hand to the call's context.
    """
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            if address in ("", "local"):
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ZoomEarthError(
                RAY_CONNECT_TEMPLATE.format(address=address, reason=str(exc).splitlines()[0])
            ) from None
        started = True
    try:
        yield RayTiles(address)
    finally:
        if started:
            ray.shutdown()


def _ray_tile(blob: bytes, tile: Tile, tool: str) -> Any:
    """The body of one Ray task: open the scene (once per worker), read and compute one tile."""
    return _compute(blob, tile, tool)


class RayTiles:
    """Ray as the tile executor of a call (made by :func:`ray_session`).

    Attributes:
        address: The address the session was opened with.
        max_retries: Times Ray runs a task again after its worker process or node died.
        in_flight: Tiles submitted and not yet written (default: 2 x the cluster's CPUs), which
            bounds the caller's memory for out-of-order results.
    """

    stores = False

    def __init__(self, address: str, max_retries: int = RAY_MAX_RETRIES) -> None:
        self.address = address
        self.max_retries = max_retries
        ray = _import_ray()
        cpus = int(ray.cluster_resources().get("CPU", 1) or 1)
        self.in_flight = max(2, 2 * cpus)

    def executor(self, fn: Callable[[Tile], Any], tool: str) -> _RayExecutor:
        """An executor for one ``map_tiles`` loop."""
        return _RayExecutor(fn, tool, self.max_retries)


class _RayExecutor:
    stores = False

    def __init__(self, fn: Callable[[Tile], Any], tool: str, max_retries: int) -> None:
        ray = _import_ray()
        self.tool = tool
        self._ray = ray
        self._blob = ray.put(dumps_tile_fn(fn, tool))
        self._task = ray.remote(_ray_tile).options(
            num_cpus=1, max_retries=max_retries, retry_exceptions=False
        )
        self._refs: list[Any] = []

    def submit(self, tile: Tile) -> Future[Any]:
        ref = self._task.remote(self._blob, tile, self.tool)
        self._refs.append(ref)
        return ref.future()  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        for ref in self._refs:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)
        self._refs.clear()
