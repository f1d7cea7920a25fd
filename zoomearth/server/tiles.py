"""Map layers of the workbench: layer ids, their sources, and 256 px PNG tiles (rio-tiler).

A **layer** is one raster shown on the workbench map: a scene under ``allowed_roots``, an upload,
a thread's scene, or a raster artifact of a thread. Its id names its source and is resolved on
the server at every use, confined to where that kind of source may live:

========================  ====================================================================
layer id                  source (checked at each resolve)
========================  ====================================================================
``p.<b64url(path)>``      a file inside ``allowed_roots`` (the ``file://`` check: no ``..``,
                          symlinks resolved and required to stay inside a root)
``f.<file id>``           an upload of ``POST /v1/files`` (the upload store)
``s.<thread>``            the scene of a thread (its checkpoint), inside ``allowed_roots``, the
                          upload store or ``RUNS_DIR``
``a.<n>.<thread>``        artifact ``n`` of a thread, inside ``RUNS_DIR/<thread>``
``u.<b64url(url)>``       a remote scene under the setting ``allowed_url_prefixes`` (checked,
                          and redirects to another host refused, when the layer is opened)
========================  ====================================================================

A layer's signed tile template signs the layer path ``/v1/tiles/<layer id>`` (not z/x/y), so one
signature serves all its tiles; since the thread is part of the id of a thread's layers, a
signature for one thread's layer never reads another thread's files.

Frames. A layer whose raster has a CRS and a geotransform is served as EPSG:3857 XYZ tiles
(``frame: "lonlat"``; :class:`rio_tiler.io.Reader`, reprojecting on the fly, reading windows of
the smallest adequate overview). Others are served in pixel space (``frame: "pixel"``,
:class:`rio_tiler.io.ImageReader`): with ``nz`` the layer's ``native_zoom`` and
``s = 2 ** (nz - z)``, tile ``(z, x, y)`` covers the full-resolution pixels ``[x*256*s,
(x+1)*256*s) x [y*256*s, (y+1)*256*s)`` of the *scene* (an artifact is placed at its
``region_xyxy``), and a full-resolution pixel ``(px, py)`` is the Leaflet ``L.CRS.Simple``
point ``[lat, lng] = [-py / 2**nz, px / 2**nz]``.

Pixels come from the scene engine's pixel source (:meth:`zoomearth.scene.Scene.pixel_path`: the
prepared tiled, overviewed copy when the raster needs one), never from a whole-image decode. Band
mapping and display stretch are those of ``zoomearth view`` (:meth:`Scene.band_mapping` and the
scene's percentile stretch for non-``uint8`` data); masks (artifacts of kind ``mask``) are drawn
as translucent colours per label with label 0 transparent. Tiles are RGBA PNGs, transparent
outside the image and where the data is missing (nodata, alpha, NaN).

Open readers are cached per worker thread (a GDAL handle must not be shared between threads) and
encoded tiles in a small LRU keyed by the source file's size and modification time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import math
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoomearth.server.errors import ApiError

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.scene import Scene
    from zoomearth.server.ingest import FileStore

__all__ = [
    "LayerGeometry",
    "OpenLayer",
    "TILE_SIZE",
    "TileService",
    "layer_id_for_artifact",
    "layer_id_for_path",
    "layer_id_for_thread_scene",
    "layer_id_for_upload",
    "layer_id_for_url",
    "parse_layer_id",
]

log = logging.getLogger("zoomearth.server")

TILE_SIZE = 256
#: Deepest zoom served (Leaflet's practical limit; beyond it tiles are sub-pixel anyway).
MAX_ZOOM = 24
#: Zoom levels served beyond a layer's native zoom (upsampled on the server).
OVERZOOM = 2
#: Long side of a layer's whole-image PNG (``image_url``).
IMAGE_MAX_SIDE = 1024
#: Encoded tiles kept in memory (about 30-120 KB each).
TILE_CACHE_ENTRIES = 512
#: Open layers kept (headers, band mapping, stretch) and open readers per worker thread.
LAYER_CACHE_ENTRIES = 64
READERS_PER_THREAD = 16
#: Colours of mask labels 1, 2, ... (RGBA; label 0 is transparent).
MASK_COLOURS = np.array(
    [[255, 64, 64, 150], [64, 160, 255, 150], [255, 200, 0, 150], [0, 200, 120, 150],
     [200, 80, 255, 150], [255, 128, 0, 150], [0, 220, 220, 150], [240, 100, 180, 150]],
    dtype=np.uint8,
)
#: Artifact kinds served as tile layers, and how they are drawn.
RASTER_ARTIFACT_KINDS = {"raster": "rgb", "mask": "mask"}

UNKNOWN_LAYER_TEMPLATE = (
    "Layer {layer_id!r} does not exist; create layers with POST /v1/workbench/layers."
)
NOT_A_RASTER_TEMPLATE = (
    "Artifact {artifact_id} of this thread is a {kind} ({name}), not a raster: it has no map "
    "tiles."
)
NO_ARTIFACT_TEMPLATE = "Thread {thread!r} has no artifact {artifact_id}."
NO_THREAD_TEMPLATE = "Thread {thread!r} does not exist (or has no scene yet)."
REMOTE_LAYER_MESSAGE = (
    "This server opens no remote URLs (the setting allowed_url_prefixes is empty): pick a scene "
    "under allowed_roots or upload one (POST /v1/files)."
)
REMOTE_READ_TEMPLATE = "Reading {url} failed ({reason}); retry, or check that the server is up."
TILE_OUTSIDE_TEMPLATE = "Tile {z}/{x}/{y} lies outside layer {layer_id!r}."
BAD_TILE_TEMPLATE = "Tile {z}/{x}/{y} is not a tile: z must be 0-{max_zoom}, x and y 0-2**z-1."
LAYER_UNREADABLE_TEMPLATE = "Layer {name} cannot be shown: {reason}"

_B64_RE = r"[A-Za-z0-9_-]{1,4096}"
_THREAD_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,159}"
_LAYER_RES = {
    "p": re.compile(rf"^p\.({_B64_RE})$"),
    "f": re.compile(r"^f\.(file-[0-9a-f]{24})$"),
    "s": re.compile(rf"^s\.({_THREAD_RE})$"),
    "a": re.compile(rf"^a\.([1-9][0-9]{{0,8}})\.({_THREAD_RE})$"),
    "u": re.compile(rf"^u\.({_B64_RE})$"),
}


# ----------------------------------------------------------------------------------------------
# Layer ids
# ----------------------------------------------------------------------------------------------
def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def layer_id_for_path(path: str | Path) -> str:
    """The id of the layer of a file under ``allowed_roots`` (absolute path)."""
    return f"p.{_b64(str(path))}"


def layer_id_for_upload(file_id: str) -> str:
    """The id of the layer of an upload (``file-...``)."""
    return f"f.{file_id}"


def layer_id_for_thread_scene(thread: str) -> str:
    """The id of the layer of a thread's scene."""
    return f"s.{thread}"


def layer_id_for_artifact(thread: str, artifact_id: int) -> str:
    """The id of the layer of a thread's raster artifact."""
    return f"a.{int(artifact_id)}.{thread}"


def layer_id_for_url(url: str) -> str:
    """The id of the layer of a remote scene."""
    return f"u.{_b64(url)}"


def parse_layer_id(layer_id: str) -> tuple[str, tuple[str, ...]]:
    """``(kind, fields)`` of a layer id; kind is ``p``, ``f``, ``s``, ``a`` or ``u``.

    Raises:
        ApiError: 404 for anything that is not a well-formed layer id.
    """
    m = _LAYER_RES.get(layer_id[:1], None)
    match = m.match(layer_id) if m is not None and len(layer_id) < 4200 else None
    if match is None:
        raise _unknown(layer_id)
    return layer_id[0], match.groups()


def _thread_artifact(runs_dir: Path, thread: str, artifact_id: int) -> Any:
    """The record of artifact ``artifact_id`` of ``thread`` (404 ``unknown_artifact`` if none)."""
    from zoomearth.artifacts import ArtifactError, ArtifactStore

    run_dir = runs_dir / thread
    try:
        art = ArtifactStore(run_dir).get(artifact_id) if run_dir.is_dir() else None
    except ArtifactError:
        art = None
    if art is None:
        raise ApiError(404, NO_ARTIFACT_TEMPLATE.format(thread=thread, artifact_id=artifact_id),
                       type="not_found_error", code="unknown_artifact")
    return art


def _unknown(layer_id: str) -> ApiError:
    return ApiError(404, UNKNOWN_LAYER_TEMPLATE.format(layer_id=layer_id[:80]),
                    type="not_found_error", code="unknown_layer")


# ----------------------------------------------------------------------------------------------
# Geometry of a layer's frame
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerGeometry:
    """Where a raster's full-resolution pixels lie in the map frame of the workbench.

    Attributes:
        frame: ``lonlat`` (EPSG:3857 tiles; coordinates are WGS84 lon/lat) or ``pixel``.
        native_zoom: Pixel frame: the zoom at which one tile pixel is one full-resolution pixel
            of the grid (the scene); lonlat: the zoom matching the raster's resolution.
        crs: Lonlat frame: the raster's CRS (``rasterio.crs.CRS``); None for pixel.
        transform: Lonlat frame: the raster's pixel -> CRS affine transform; None for pixel.
        offset: Pixel frame: ``(col, row)`` of the raster's pixel (0, 0) in the grid.
        scale: Pixel frame: grid pixels per raster pixel ``(sx, sy)``.
    """

    frame: str
    native_zoom: int
    crs: Any = None
    transform: Any = None
    offset: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)

    def to_grid(self, x: float, y: float) -> tuple[float, float]:
        """Raster pixel -> grid pixel (pixel frame)."""
        return self.offset[0] + x * self.scale[0], self.offset[1] + y * self.scale[1]

    def latlng(self, xs: list[float], ys: list[float]) -> list[list[float]]:
        """Raster full-resolution pixel points -> Leaflet ``[lat, lng]`` pairs in this frame."""
        if self.frame == "pixel":
            k = float(2 ** self.native_zoom)
            pts = [self.to_grid(x, y) for x, y in zip(xs, ys, strict=True)]
            return [[_r(-gy / k), _r(gx / k)] for gx, gy in pts]
        from rasterio.warp import transform as warp_transform

        t = self.transform
        mx = [t.a * x + t.b * y + t.c for x, y in zip(xs, ys, strict=True)]
        my = [t.d * x + t.e * y + t.f for x, y in zip(xs, ys, strict=True)]
        lon, lat = warp_transform(self.crs, "EPSG:4326", mx, my)
        return [[_r(a, 8), _r(o, 8)] for a, o in zip(lat, lon, strict=True)]

    def polygon(self, box_xyxy: list[float] | tuple[float, ...]) -> list[list[float]]:
        """A full-resolution box as a closed ring of 5 Leaflet ``[lat, lng]`` points."""
        x1, y1, x2, y2 = (float(v) for v in box_xyxy)
        return self.latlng([x1, x2, x2, x1, x1], [y1, y1, y2, y2, y1])

    def geojson_point(self, x: float, y: float) -> list[float]:
        """A grid pixel (pixel frame) as a GeoJSON ``[x, y]`` = Leaflet ``[lng, lat]``."""
        k = float(2 ** self.native_zoom)
        return [_r(x / k), _r(-y / k)]


def _r(value: float, ndigits: int = 6) -> float:
    return round(float(value), ndigits)


def pixel_native_zoom(width: int, height: int) -> int:
    """Zoom at which a ``width`` x ``height`` image is at full resolution in 256 px tiles.

    At zoom 0 the whole image fits one tile: the number of halvings of the long side until it
    is at most 256 px.
    """
    zoom, side = 0, float(max(width, height))
    while side > TILE_SIZE:
        side /= 2
        zoom += 1
    return zoom


# ----------------------------------------------------------------------------------------------
# Open layers
# ----------------------------------------------------------------------------------------------
@dataclass
class OpenLayer:
    """A resolved, opened layer: what tiles need, computed once (headers only, plus a stretch).

    Attributes:
        layer_id: The layer id.
        name: File name shown to people.
        path: The raster as given (the source file).
        pixel_path: The file pixels are read from (the prepared copy when the raster needs one).
        read_path: What readers open: ``pixel_path``, or GDAL's path of a remote COG.
        url: A remote scene's URL, else None.
        version: ``(size, mtime_ns)`` of the source (cached tiles are keyed by it).
        render: ``rgb`` (band mapping + stretch) or ``mask`` (colours per label).
        geometry: The layer's frame (see :class:`LayerGeometry`).
        width, height: Full-resolution size of the raster.
        bands: 1-based bands read (RGB or grey).
        stretch: ``(lo, hi)`` display range for non-``uint8`` data, else None.
        palette: ``(256, 3)`` lookup table of a palette band, else None.
        bounds: Leaflet bounds ``[[south, west], [north, east]]`` in the layer's frame.
        min_zoom, max_zoom: Zooms served.
        kind: ``scene`` or ``artifact``.
        thread: The thread a thread layer belongs to.
    """

    layer_id: str
    name: str
    path: Path
    pixel_path: Path
    read_path: str
    url: str | None
    version: tuple[int, int]
    render: str
    geometry: LayerGeometry
    width: int
    height: int
    bands: tuple[int, ...]
    stretch: tuple[float, float] | None
    palette: np.ndarray | None
    bounds: list[list[float]]
    min_zoom: int
    max_zoom: int
    kind: str = "scene"
    thread: str | None = None
    scene: Any = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """The layer's JSON fields (without its signed URLs)."""
        return {
            "layer_id": self.layer_id, "name": self.name, "kind": self.kind,
            "render": self.render, "frame": self.geometry.frame,
            "width": self.width, "height": self.height, "bounds": self.bounds,
            "min_zoom": self.min_zoom, "max_zoom": self.max_zoom,
            "native_zoom": self.geometry.native_zoom,
        }


@dataclass(frozen=True)
class _Source:
    """What a layer id resolves to (before opening)."""

    path: Path
    name: str
    kind: str = "scene"
    render: str = "rgb"
    thread: str | None = None
    #: Pixel frame of a thread artifact: the thread scene's size and the artifact's region.
    grid: tuple[int, int] | None = None
    region: tuple[float, float, float, float] | None = None
    #: A remote scene's URL (``path`` is then only a name).
    url: str | None = None


class TileService:
    """Resolves layer ids and renders their tiles (thread-safe; blocking: call off the loop).

    Args:
        settings: ``allowed_roots``, ``runs_dir``, the scene engine's settings.
        store: The upload store.
        thread_scene: ``thread -> SceneRef dict`` (``path``, ``width``, ``height`` ...) of a
            thread's checkpoint, or None for an unknown thread.
    """

    def __init__(self, settings: Settings, store: FileStore,
                 thread_scene: Callable[[str], dict[str, Any] | None]) -> None:
        self.settings = settings
        self.store = store
        self.thread_scene = thread_scene
        _quiet_warnings()
        self._lock = threading.Lock()
        self._layers: OrderedDict[str, OpenLayer] = OrderedDict()
        self._tiles: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._readers: dict[int, OrderedDict[tuple[str, str], Any]] = {}
        #: Encoded tiles kept (0 turns the LRU off).
        self.tile_cache_entries = TILE_CACHE_ENTRIES
        self.hits = 0
        self.misses = 0

    # -- resolving -----------------------------------------------------------------------------
    def _resolve(self, layer_id: str) -> _Source:
        from zoomearth.tools.paths import PathNotAllowedError, check_allowed_path

        kind, fields = parse_layer_id(layer_id)
        settings = self.settings
        assert settings.runs_dir is not None
        if kind == "p":
            text = _unb64(fields[0])
            if text is None:
                raise _unknown(layer_id)
            try:
                path = check_allowed_path(text, settings.allowed_roots, purpose="Layer path")
            except PathNotAllowedError as exc:
                raise ApiError(403, _hide_target(str(exc), text), code="path_not_allowed",
                               type="permission_error") from None
            return _Source(path, path.name)
        if kind == "f":
            meta = self.store.meta(fields[0])
            return _Source(self.store.path_of(fields[0]), str(meta.get("filename") or "upload"))
        if kind == "u":
            url = _unb64(fields[0])
            if url is None:
                raise _unknown(layer_id)
            return self._remote_source(url)
        thread = fields[-1]
        ref = self.thread_scene(thread)
        if not ref or not ref.get("path"):
            raise ApiError(404, NO_THREAD_TEMPLATE.format(thread=thread),
                           type="not_found_error", code="unknown_thread")
        if kind == "s":
            if _is_url(str(ref["path"])):
                return self._remote_source(str(ref["path"]))
            roots = [*settings.allowed_roots, self.store.root, settings.runs_dir]
            try:
                path = check_allowed_path(ref["path"], roots, purpose="Thread scene")
            except PathNotAllowedError:
                raise _unknown(layer_id) from None
            return _Source(path, path.name, thread=thread)
        # an artifact of the thread: its record from the run directory's index
        run_dir = settings.runs_dir / thread
        artifact_id = int(fields[0])
        art = _thread_artifact(settings.runs_dir, thread, artifact_id)
        render = RASTER_ARTIFACT_KINDS.get(art.kind)
        if render is None or Path(art.path).suffix.lower() not in (".tif", ".tiff"):
            raise ApiError(400, NOT_A_RASTER_TEMPLATE.format(
                artifact_id=artifact_id, kind=art.kind, name=Path(art.path).name),
                code="not_a_raster")
        try:
            path = check_allowed_path(art.path, [run_dir], purpose="Artifact")
        except PathNotAllowedError:
            raise _unknown(layer_id) from None
        grid = (int(ref.get("width") or 0), int(ref.get("height") or 0))
        return _Source(path, path.name, kind="artifact", render=render, thread=thread,
                       grid=grid, region=art.region_xyxy)

    def _remote_source(self, url: str) -> _Source:
        """A remote scene, if the allow-list takes it and it does not redirect elsewhere."""
        from zoomearth.errors import ZoomEarthError

        prefixes = list(getattr(self.settings, "allowed_url_prefixes", None) or [])
        if not prefixes:
            raise ApiError(400, REMOTE_LAYER_MESSAGE, code="unsupported_url", param="url")
        from zoomearth.scene import remote

        try:
            url = remote.check_url_allowed(url, prefixes)
            url = remote.preflight(url, self.settings, prefixes)
        except remote.RemoteURLNotAllowedError as exc:
            raise ApiError(403, _first_line(exc), code="url_not_allowed",
                           type="permission_error", param="url") from None
        except ZoomEarthError as exc:
            raise ApiError(400, _first_line(exc), code=str(getattr(exc, "code", "") or
                                                           "remote_error"), param="url") from None
        name = remote.display_name(url)
        return _Source(Path(name), name, url=url)

    # -- opening -------------------------------------------------------------------------------
    def open(self, layer_id: str) -> OpenLayer:
        """The opened layer (cached; re-opened when its source file changed).

        Raises:
            ApiError: 404 unknown layer/thread/artifact, 403 path outside the roots, 400 not a
                raster or an unreadable one, 413 above the preparation budget.
        """
        with self._lock:
            layer = self._layers.get(layer_id)
            if layer is not None:
                self._layers.move_to_end(layer_id)
        if layer is not None and layer.url is not None:
            return layer  # a remote scene: kept until evicted (no cheap change check)
        if layer is not None:
            try:
                st = layer.path.stat()
                if (st.st_size, st.st_mtime_ns) == layer.version:
                    return layer
            except OSError:
                pass
        source = self._resolve(layer_id)
        layer = self._open_source(layer_id, source)
        with self._lock:
            self._layers[layer_id] = layer
            while len(self._layers) > LAYER_CACHE_ENTRIES:
                self._layers.popitem(last=False)
        return layer

    def _open_source(self, layer_id: str, source: _Source) -> OpenLayer:
        from zoomearth.errors import ScenePrepareBudgetError, ZoomEarthError
        from zoomearth.scene import Scene
        from zoomearth.scene.render import palette_lut

        try:
            scene = Scene.open(source.url or source.path, settings=self.settings,
                               progress=False)
            mapping = scene.band_mapping()
            pixel_path = scene.pixel_path()
            # A remote COG is read in place (GDAL's /vsicurl/ or /vsis3/ path).
            read_path = str(pixel_path)
            if source.url is not None and pixel_path == scene.path:
                read_path = str(scene.gdal_path)
            stretch = None
            palette = None
            bands = mapping.rgb
            if source.render == "mask":
                bands = (1,)
            elif scene.dtype != "uint8":
                # The same display range as `zoomearth view` (percentiles of the overview).
                stretch = scene._stretch_for(mapping.rgb)
            elif len(bands) == 1 and scene.colorinterp[bands[0] - 1] == "palette":
                with self._env(source.url), _quiet_open(read_path) as ds:
                    palette = palette_lut(ds.colormap(bands[0]))
        except ScenePrepareBudgetError as exc:
            raise ApiError(413, str(exc), code="prepare_budget_exceeded") from None
        except ZoomEarthError as exc:
            raise ApiError(400, LAYER_UNREADABLE_TEMPLATE.format(
                name=source.name, reason=_first_line(exc)), code="bad_layer") from None
        if source.url is None:
            st = source.path.stat()
            version = (st.st_size, st.st_mtime_ns)
        else:
            version = (int(scene.file_size), 0)
        with self._env(source.url):
            geometry, bounds, min_zoom, max_zoom = self._geometry(scene, source, read_path)
        return OpenLayer(
            layer_id=layer_id, name=source.name, path=source.path, pixel_path=pixel_path,
            read_path=read_path, url=source.url,
            version=version, render=source.render, geometry=geometry,
            width=scene.width, height=scene.height, bands=tuple(bands), stretch=stretch,
            palette=palette, bounds=bounds, min_zoom=min_zoom, max_zoom=max_zoom,
            kind=source.kind, thread=source.thread, scene=scene,
        )

    def _env(self, url: str | None) -> Any:
        """GDAL's options for reading a remote scene (nothing for a local file)."""
        if url is None:
            return contextlib.nullcontext()
        from zoomearth.scene import remote

        return remote.remote_env(self.settings, url)

    def _geometry(self, scene: Scene, source: _Source, read_path: str,
                  ) -> tuple[LayerGeometry, list[list[float]], int, int]:
        if scene.crs is not None and not scene.transform.is_identity:
            try:
                from rio_tiler.constants import WGS84_CRS

                reader = self._reader(read_path, "lonlat")
                west, south, east, north = reader.get_geographic_bounds(WGS84_CRS)
                native = int(reader.maxzoom)
                if all(math.isfinite(v) for v in (west, south, east, north)):
                    geometry = LayerGeometry("lonlat", native, crs=scene.crs,
                                             transform=scene.transform)
                    bounds = [[_r(south, 8), _r(west, 8)], [_r(north, 8), _r(east, 8)]]
                    return geometry, bounds, int(reader.minzoom), min(MAX_ZOOM,
                                                                       native + OVERZOOM)
            except Exception as exc:  # noqa: BLE001 - a CRS web maps cannot show: pixel space
                log.info("layer %s shown in pixel space: %s", source.name, _first_line(exc))
        grid_w, grid_h = scene.width, scene.height
        offset, scale = (0.0, 0.0), (1.0, 1.0)
        if source.grid and source.region and all(source.grid):
            # A thread artifact without georeference: placed at its region of the scene.
            grid_w, grid_h = source.grid
            x1, y1, x2, y2 = source.region
            offset = (float(x1), float(y1))
            scale = ((x2 - x1) / scene.width, (y2 - y1) / scene.height)
        native = pixel_native_zoom(grid_w, grid_h)
        geometry = LayerGeometry("pixel", native, offset=offset, scale=scale)
        ring = geometry.polygon([0, 0, scene.width, scene.height])
        lats = [p[0] for p in ring]
        lngs = [p[1] for p in ring]
        bounds = [[min(lats), min(lngs)], [max(lats), max(lngs)]]
        return geometry, bounds, 0, min(MAX_ZOOM, native + OVERZOOM)

    # -- readers -------------------------------------------------------------------------------
    def _reader(self, read_path: str, frame: str) -> Any:
        """An open rio-tiler reader of this worker thread (GDAL handles are per thread)."""
        ident = threading.get_ident()
        with self._lock:
            cache = self._readers.setdefault(ident, OrderedDict())
        key = (read_path, frame)
        reader = cache.get(key)
        if reader is not None:
            cache.move_to_end(key)
            return reader
        from rio_tiler.io import ImageReader, Reader

        reader = (Reader if frame == "lonlat" else ImageReader)(read_path)
        cache[key] = reader
        while len(cache) > READERS_PER_THREAD:
            _, old = cache.popitem(last=False)
            with contextlib.suppress(Exception):
                old.close()
        return reader

    def close(self) -> None:
        """Close every cached reader (at shutdown, when no tile is being read)."""
        with self._lock:
            caches, self._readers = list(self._readers.values()), {}
            self._layers.clear()
            self._tiles.clear()
        for cache in caches:
            for reader in cache.values():
                with contextlib.suppress(Exception):
                    reader.close()

    # -- tiles ---------------------------------------------------------------------------------
    def tile(self, layer_id: str, z: int, x: int, y: int) -> bytes:
        """The PNG (RGBA, 256 x 256) of tile ``z/x/y`` of a layer (the route's whole work).

        Raises:
            ApiError: 404 for a tile outside the layer (or an unknown layer), 400 for indexes
                that are no tile; see :meth:`open` for the rest.
        """
        if not (0 <= z <= MAX_ZOOM and 0 <= x < 2 ** z and 0 <= y < 2 ** z):
            raise ApiError(400, BAD_TILE_TEMPLATE.format(z=z, x=x, y=y, max_zoom=MAX_ZOOM),
                           code="bad_tile")
        layer = self.open(layer_id)
        key = (layer_id, layer.version, z, x, y)
        with self._lock:
            png = self._tiles.get(key)
            if png is not None:
                self._tiles.move_to_end(key)
                self.hits += 1
                return png
            self.misses += 1
        try:
            rgba = self.tile_array(layer, z, x, y)
        except ApiError:
            raise
        except Exception as exc:
            if layer.url is None:
                raise  # a local read failing is a bug or a broken file: logged as such
            raise self._read_failed(layer, exc) from None
        png = encode_png(rgba)
        with self._lock:
            self._tiles[key] = png
            while len(self._tiles) > self.tile_cache_entries:
                self._tiles.popitem(last=False)
        return png

    def tile_array(self, layer: OpenLayer, z: int, x: int, y: int) -> np.ndarray:
        """The RGBA pixels ``(256, 256, 4)`` uint8 of a tile (not cached)."""
        from rio_tiler.errors import TileOutsideBounds

        outside = ApiError(404, TILE_OUTSIDE_TEMPLATE.format(z=z, x=x, y=y,
                                                             layer_id=layer.layer_id[:80]),
                           type="not_found_error", code="tile_outside")
        geometry = layer.geometry
        with self._env(layer.url):
            reader = self._reader(layer.read_path, geometry.frame)
            if geometry.frame == "lonlat":
                try:
                    img = reader.tile(x, y, z, tilesize=TILE_SIZE, indexes=layer.bands)
                except TileOutsideBounds:
                    raise outside from None
            else:
                # The tile's grid pixels, in the raster's own pixels (artifacts are offset).
                s = 2.0 ** (geometry.native_zoom - z)
                gx0, gy0 = x * TILE_SIZE * s, y * TILE_SIZE * s
                gx1, gy1 = gx0 + TILE_SIZE * s, gy0 + TILE_SIZE * s
                (ox, oy), (sx, sy) = geometry.offset, geometry.scale
                x0, x1 = (gx0 - ox) / sx, (gx1 - ox) / sx
                y0, y1 = (gy0 - oy) / sy, (gy1 - oy) / sy
                if x1 <= 0 or y1 <= 0 or x0 >= layer.width or y0 >= layer.height:
                    raise outside
                img = reader.part((x0, y1, x1, y0), width=TILE_SIZE, height=TILE_SIZE,
                                  max_size=None, indexes=layer.bands)
        return self.colourise(layer, img.array)

    def _read_failed(self, layer: OpenLayer, exc: Exception) -> ApiError:
        return ApiError(502, REMOTE_READ_TEMPLATE.format(url=layer.url, reason=_first_line(exc)),
                        type="server_error", code="remote_error")

    def colourise(self, layer: OpenLayer, data: np.ma.MaskedArray) -> np.ndarray:
        """Band values ``(bands, h, w)`` (masked where missing) -> RGBA ``(h, w, 4)`` uint8."""
        raw = np.ma.getdata(data)
        valid = ~np.ma.getmaskarray(data).any(axis=0)
        if np.issubdtype(raw.dtype, np.floating):
            valid &= np.isfinite(raw).all(axis=0)
        h, w = raw.shape[1:]
        out = np.empty((h, w, 4), np.uint8)
        if layer.render == "mask":
            labels = raw[0]
            colours = MASK_COLOURS[(np.clip(labels, 1, None).astype(np.int64) - 1)
                                   % len(MASK_COLOURS)]
            out[:] = colours
            out[..., 3] = np.where(valid & (labels > 0), colours[..., 3], 0)
            return out
        if layer.palette is not None:
            rgb = np.moveaxis(layer.palette[raw[0].astype(np.uint8)], -1, 0)
        elif layer.stretch is not None:
            from zoomearth.scene.render import to_uint8

            rgb = to_uint8(raw, *layer.stretch)
        else:
            rgb = raw.astype(np.uint8, copy=False)
        if rgb.shape[0] == 1:
            out[..., 0] = out[..., 1] = out[..., 2] = rgb[0]
        else:
            out[..., :3] = np.moveaxis(rgb[:3], 0, -1)
        out[..., 3] = np.where(valid, 255, 0)
        return out

    def image(self, layer_id: str, max_side: int = IMAGE_MAX_SIDE) -> bytes:
        """The whole raster of a layer as one PNG (RGBA) with long side <= ``max_side``.

        Read through overviews (decimated), never decoded at full resolution when larger.
        """
        layer = self.open(layer_id)
        scene = layer.scene
        w, h = scene.output_size(scene.full_box, max_side)
        resampling = "nearest" if layer.render == "mask" else "average"
        data = scene.read(None, out_size=(w, h), bands=layer.bands, resampling=resampling)
        return encode_png(self.colourise(layer, data), compress_level=6)

    # -- vectors -------------------------------------------------------------------------------
    def geojson(self, thread: str, artifact_id: int) -> dict[str, Any]:
        """A vector artifact's GeoJSON in the frame of the thread's scene layer.

        Lonlat frame: RFC 7946 lon/lat (EPSG:4326), reprojected from the file's CRS. Pixel frame:
        ``[x, y]`` = Leaflet ``[lng, lat]`` of ``L.CRS.Simple`` at the scene's native zoom, i.e.
        ``[px / 2**nz, -py / 2**nz]`` (read directly by ``L.geoJSON``). Properties are kept.

        Raises:
            ApiError: 404 unknown thread or artifact, 400 not a GeoJSON artifact.
        """
        from zoomearth.tools.paths import PathNotAllowedError, check_allowed_path

        assert self.settings.runs_dir is not None
        run_dir = self.settings.runs_dir / thread
        art = _thread_artifact(self.settings.runs_dir, thread, artifact_id)
        if Path(art.path).suffix.lower() not in (".geojson", ".json") or art.kind != "vector":
            raise ApiError(400, NOT_A_RASTER_TEMPLATE.format(
                artifact_id=artifact_id, kind=art.kind, name=Path(art.path).name).replace(
                "not a raster: it has no map tiles", "not GeoJSON"), code="not_geojson")
        try:
            path = check_allowed_path(art.path, [run_dir], purpose="Artifact")
        except PathNotAllowedError:
            raise ApiError(404, NO_ARTIFACT_TEMPLATE.format(thread=thread,
                                                            artifact_id=artifact_id),
                           type="not_found_error", code="unknown_artifact") from None
        collection = json.loads(path.read_text(encoding="utf-8"))
        scene_layer = self.open(layer_id_for_thread_scene(thread))
        return reproject_geojson(collection, scene_layer.geometry, scene_layer.scene)


def reproject_geojson(collection: dict[str, Any], geometry: LayerGeometry,
                      scene: Scene) -> dict[str, Any]:
    """A FeatureCollection moved into a layer frame (see :meth:`TileService.geojson`).

    The source frame is read from the collection: ``"zoomearth:frame": "pixel"`` (full-resolution
    pixels of the scene), a legacy ``"crs"`` member (the scene's CRS), else RFC 7946 lon/lat.
    """
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    source_frame = "pixel" if collection.get("zoomearth:frame") == "pixel" else "crs"
    src_crs: Any = CRS.from_epsg(4326)
    member = collection.get("crs")
    if source_frame == "crs" and isinstance(member, dict):
        name = str((member.get("properties") or {}).get("name", ""))
        code = name.rsplit(":", 1)[-1]
        src_crs = CRS.from_epsg(int(code)) if code.isdigit() else scene.crs

    def to_pixel_frame(coords: Any) -> Any:
        if coords and isinstance(coords[0], int | float):
            return geometry.geojson_point(float(coords[0]), float(coords[1]))
        return [to_pixel_frame(c) for c in coords]

    def map_to_pixel(coords: Any, inverse: Any) -> Any:
        if coords and isinstance(coords[0], int | float):
            px, py = inverse * (float(coords[0]), float(coords[1]))
            return [px, py]
        return [map_to_pixel(c, inverse) for c in coords]

    def pixel_to_map(x: float, y: float) -> tuple[float, float]:
        mx, my = scene.transform * (x, y)
        return float(mx), float(my)

    features = []
    for feature in collection.get("features") or []:
        geom = feature.get("geometry")
        if isinstance(geom, dict) and "coordinates" in geom:
            if geometry.frame == "lonlat":
                if source_frame == "pixel":
                    geom = {"type": geom["type"], "coordinates": _map_coords(
                        geom["coordinates"], pixel_to_map)}
                    geom = transform_geom(scene.crs, "EPSG:4326", geom)
                elif src_crs != CRS.from_epsg(4326):
                    geom = transform_geom(src_crs, "EPSG:4326", geom)
            else:
                coords = geom["coordinates"]
                if source_frame != "pixel":
                    # A georeferenced vector over a scene shown in pixel space.
                    coords = map_to_pixel(coords, ~scene.transform)
                geom = {"type": geom["type"], "coordinates": to_pixel_frame(coords)}
        features.append({**feature, "geometry": geom})
    out = {k: v for k, v in collection.items() if k not in ("crs", "zoomearth:frame", "features")}
    out["features"] = features
    out["zoomearth:frame"] = geometry.frame
    return out


def _map_coords(coords: Any, fn: Callable[[float, float], tuple[float, float]]) -> Any:
    if coords and isinstance(coords[0], int | float):
        x, y = fn(float(coords[0]), float(coords[1]))
        return [x, y]
    return [_map_coords(c, fn) for c in coords]


def encode_png(rgba: np.ndarray, compress_level: int = 1) -> bytes:
    """RGBA ``(h, w, 4)`` uint8 -> PNG bytes.

    zlib level 1 by default: tiles are made on request and read once (Pillow at level 1 encodes
    a 256 px tile about 4x faster than rio-tiler's GDAL PNG driver, for 20 % more bytes).
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


@contextlib.contextmanager
def _quiet_open(path: str | Path) -> Any:
    import rasterio

    with rasterio.open(path) as ds:
        yield ds


def _quiet_warnings() -> None:
    """Filter, once, the advisory warnings tile reads raise in the server's worker threads.

    ``warnings.catch_warnings`` swaps process-wide state and is not safe in concurrent threads,
    so these filters are installed instead: rio-tiler's hint that a raster has no overviews
    (layers of such rasters read the prepared copy when it matters), rasterio's note that an
    image has no georeference (pixel-frame layers are exactly those), and a deprecation inside
    rasterio that rio-tiler triggers.
    """
    from rasterio.errors import NotGeoreferencedWarning
    from rio_tiler.errors import NoOverviewWarning

    warnings.filterwarnings("ignore", category=NoOverviewWarning)
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning,
                            module=r"rasterio\.")


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "s3://"))


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _hide_target(message: str, given: str) -> str:
    """A path refusal without where a symbolic link leads (as the ingest's messages)."""
    with contextlib.suppress(Exception):
        target = Path(given).resolve()
        message = message.replace(f" resolves to {target},", " leads", 1)
    return message
