"""HTTP routes of the workbench (registered on the server's app by :func:`register_workbench`).

* ``GET /`` and ``GET /workbench/static/{path}``: the page shell -- no data, no token (a
  ``<script src>`` cannot send a bearer header); files confined to the package's ``static/``
  folder, with a Content-Security-Policy, ``nosniff`` and revalidation caching;
* ``GET /v1/workbench/config``: whether the page must ask for a token (no data, no token);
* ``GET /v1/workbench/scenes``: rasters under ``allowed_roots`` (bearer);
* ``POST /v1/workbench/layers``: a Layer for a path, an upload, a thread's scene or a thread's
  raster artifact (bearer);
* ``GET /v1/workbench/threads/{conversation_id}``: a thread's history (bearer);
* ``GET /v1/tiles/{layer}/{z}/{x}/{y}.png``, ``.../image.png``, ``.../features.geojson``:
  tiles, the whole raster, a vector artifact in the layer frame (the layer's signed link, or the
  bearer token).

Layers, tiles and their confinement are :mod:`zoomearth.server.tiles`; RunEvents and histories
:mod:`zoomearth.server.events`. Blocking work runs in the thread pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from zoomearth.server.app import BAD_LINK_MESSAGE
from zoomearth.server.chat import MODEL_ID, ServerState
from zoomearth.server.errors import ApiError
from zoomearth.server.events import Links, RunEvents, thread_history, tiles_path
from zoomearth.server.tiles import (
    TileService,
    layer_id_for_artifact,
    layer_id_for_path,
    layer_id_for_thread_scene,
    layer_id_for_upload,
    layer_id_for_url,
    parse_layer_id,
)
from zoomearth.server.workbench import STATIC_DIR

__all__ = ["CONTENT_SECURITY_POLICY", "Workbench", "register_workbench"]

#: The page's Content-Security-Policy: its own files only, no inline script or style, no
#: framing. ``img-src data: blob:`` for Leaflet's icons and tiles drawn from blobs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SHELL_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # (No Cross-Origin-Opener-Policy: over plain http off loopback Chromium ignores it and logs
    # a console error for every page load.)
    # Revalidate every time (ETag / Last-Modified answer 304): an upgraded package is seen at
    # once, without versioned file names.
    "Cache-Control": "no-cache",
}
#: Types of the files the page may consist of; anything else is not served.
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".png": "image/png", ".svg": "image/svg+xml", ".ico": "image/x-icon", ".gif": "image/gif",
    ".jpg": "image/jpeg", ".json": "application/json", ".map": "application/json",
    ".woff2": "font/woff2", ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
SCENE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2")
#: Listing bounds: folder depth below each root, and entries returned.
SCENE_DEPTH = 2
MAX_SCENES = 500
MAX_LAYER_BODY = 64 * 1024
_THREAD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,159}$")

PAGE_MISSING_MESSAGE = (
    "The workbench page is not installed (zoomearth/server/workbench/static/index.html is "
    "missing); reinstall the package."
)
BAD_LAYER_BODY_MESSAGE = (
    "Send a JSON object with one of: {\"path\": \"/abs/path/under/allowed_roots.tif\"}, "
    "{\"file_id\": \"file-...\"} (from POST /v1/files), {\"url\": \"https://...\"}, "
    "{\"conversation_id\": \"...\"} (the thread's scene) or {\"conversation_id\": \"...\", "
    "\"artifact_id\": N} (a raster artifact of the thread)."
)
BAD_THREAD_TEMPLATE = (
    "Conversation id {value!r} is not usable: use 1-160 letters, digits, '_', '-' or '.', "
    "starting with a letter or digit."
)
UNKNOWN_THREAD_TEMPLATE = "Conversation {value!r} does not exist on this server."
NOT_FOUND_TEMPLATE = "Not found: {path}"


@dataclass
class Workbench:
    """What the chat endpoint needs from the workbench (RunEvents), and its tile service."""

    state: ServerState
    tiles: TileService

    def links(self, base: str) -> Links:
        """Signed URLs and layers for links starting with ``base``."""
        assert self.state.settings.runs_dir is not None
        return Links(self.tiles, self.state.signer, base, self.state.settings.runs_dir)

    def run_events(self, thread: str, base: str) -> RunEvents:
        """The RunEvent builder of one streamed run of ``thread``."""

        def current_step() -> int | None:
            agent = self.state.agent
            snap = agent.graph.get_state({"configurable": {"thread_id": thread}}) \
                if agent is not None else None
            values = (snap.values or {}) if snap else {}
            steps = [p["step"] for p in values.get("pending") or []
                     if isinstance(p, dict) and isinstance(p.get("step"), int)]
            step = max(steps) if steps else values.get("step")
            return int(step) if isinstance(step, int) else None

        return RunEvents(self.links(base), thread, current_step)

    def close(self) -> None:
        """Close the cached readers (server shutdown)."""
        self.tiles.close()


def register_workbench(
    app: FastAPI,
    state: ServerState,
    *,
    require_auth: Callable[[Request], None],
    bearer_ok: Callable[[Request], bool],
    base_url: Callable[[Request], str],
) -> Workbench:
    """Add the workbench routes to ``app`` (see the module docstring).

    Args:
        app: The server's application.
        state: The server's shared state (settings, upload store, signer, agent).
        require_auth: Raises the 401 of a request without the right bearer token.
        bearer_ok: Whether a request carries the right bearer token (or none is configured).
        base_url: The base URL of links handed out for a request.

    Returns:
        The :class:`Workbench` (RunEvents for the chat stream; ``close`` at shutdown).
    """
    settings = state.settings

    def thread_scene(thread: str) -> dict[str, Any] | None:
        agent = state.agent
        if agent is None:
            return None
        snap = agent.graph.get_state({"configurable": {"thread_id": thread}})
        if not snap or not snap.values:
            return None
        return dict(snap.values.get("scene") or {})

    workbench = Workbench(state, TileService(settings, state.store, thread_scene))
    tiles = workbench.tiles

    def check_layer_link(request: Request, layer_id: str) -> None:
        # The layer's signed link (covering /v1/tiles/<layer id>), or the bearer token.
        q = request.query_params
        if q.get("sig") is not None:
            if state.signer.verify(tiles_path(layer_id), q.get("exp"), q.get("sig")):
                return
            if not settings.api_token or not bearer_ok(request):
                raise ApiError(403, BAD_LINK_MESSAGE, type="permission_error", code="bad_link")
        require_auth(request)

    def static_file(rel: str, request: Request) -> Response:
        not_found = ApiError(404, NOT_FOUND_TEMPLATE.format(path=request.url.path),
                             type="not_found_error", code="not_found")
        parts = rel.split("/")
        if not rel or "\\" in rel or "\x00" in rel or rel.startswith("/") or any(
                p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise not_found
        media = STATIC_TYPES.get(Path(rel).suffix.lower())
        root = STATIC_DIR.resolve()
        try:
            path = (root / rel).resolve(strict=True)
            path.relative_to(root)  # no symbolic link out of the folder
        except (OSError, ValueError):
            raise not_found from None
        if media is None or not path.is_file():
            raise not_found
        st = path.stat()
        # The ETag Starlette's FileResponse sends; a matching If-None-Match gets 304.
        tag = hashlib.md5(f"{st.st_mtime}-{st.st_size}".encode(),
                          usedforsecurity=False).hexdigest()
        etag = f'"{tag}"'
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers={**SHELL_HEADERS, "ETag": etag})
        return FileResponse(path, media_type=media, headers={**SHELL_HEADERS, "ETag": etag},
                            stat_result=st)

    # -- the page shell (no data: served without a token) ---------------------------------------
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page(request: Request) -> Response:
        if not (STATIC_DIR / "index.html").is_file():
            raise ApiError(404, PAGE_MISSING_MESSAGE, type="not_found_error", code="no_page")
        return static_file("index.html", request)

    @app.api_route("/workbench/static/{rel:path}", methods=["GET", "HEAD"],
                   include_in_schema=False)
    async def static(rel: str, request: Request) -> Response:
        return static_file(rel, request)

    @app.get("/v1/workbench/config")
    async def config() -> dict[str, Any]:
        remote = bool(getattr(settings, "allowed_url_prefixes", None))
        return {"token_required": bool(settings.api_token), "model": MODEL_ID,
                "remote_urls": remote, "link_ttl_s": settings.link_ttl_s}

    # -- data routes (bearer token) -------------------------------------------------------------
    @app.get("/v1/workbench/scenes")
    async def scenes(request: Request) -> dict[str, Any]:
        require_auth(request)
        return {"scenes": await run_in_threadpool(list_scenes, settings.allowed_roots)}

    @app.post("/v1/workbench/layers")
    async def create_layer(request: Request) -> dict[str, Any]:
        require_auth(request)
        body = await _small_json(request)
        layer_id = await run_in_threadpool(_layer_id_of, body, state)
        links = workbench.links(base_url(request))
        return await run_in_threadpool(links.layer, layer_id)

    @app.get("/v1/workbench/threads/{conversation_id}")
    async def thread(conversation_id: str, request: Request) -> dict[str, Any]:
        require_auth(request)
        _check_thread(conversation_id, "conversation_id")
        agent = state.require_agent()
        links = workbench.links(base_url(request))
        history = await run_in_threadpool(thread_history, agent, conversation_id, links)
        if history is None:
            raise ApiError(404, UNKNOWN_THREAD_TEMPLATE.format(value=conversation_id),
                           type="not_found_error", code="unknown_thread")
        return history

    # -- tiles (signed link or bearer) ----------------------------------------------------------
    @app.get("/v1/tiles/{layer_id}/{z}/{x}/{y}.png")
    async def tile(layer_id: str, z: int, x: int, y: int, request: Request) -> Response:
        check_layer_link(request, layer_id)
        parse_layer_id(layer_id)
        png = await run_in_threadpool(tiles.tile, layer_id, z, x, y)
        return Response(png, media_type="image/png", headers=_DATA_HEADERS)

    @app.get("/v1/tiles/{layer_id}/image.png")
    async def layer_image(layer_id: str, request: Request) -> Response:
        check_layer_link(request, layer_id)
        parse_layer_id(layer_id)
        png = await run_in_threadpool(tiles.image, layer_id)
        return Response(png, media_type="image/png", headers=_DATA_HEADERS)

    @app.get("/v1/tiles/{layer_id}/features.geojson")
    async def features(layer_id: str, request: Request) -> Response:
        check_layer_link(request, layer_id)
        kind, fields = parse_layer_id(layer_id)
        if kind != "a":
            raise ApiError(404, NOT_FOUND_TEMPLATE.format(path=request.url.path),
                           type="not_found_error", code="not_found")
        data = await run_in_threadpool(tiles.geojson, fields[1], int(fields[0]))
        return Response(json.dumps(data), media_type="application/geo+json",
                        headers=_DATA_HEADERS)

    return workbench


#: Tiles and images: the URL changes with every signature, so the browser may keep them a while.
_DATA_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=600"}


def _check_thread(value: Any, param: str) -> str:
    if not isinstance(value, str) or not _THREAD_RE.match(value):
        raise ApiError(400, BAD_THREAD_TEMPLATE.format(value=str(value)[:170]), param=param,
                       code="bad_conversation_id")
    return value


async def _small_json(request: Request) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():
        raw.extend(chunk)
        if len(raw) > MAX_LAYER_BODY:
            raise ApiError(413, BAD_LAYER_BODY_MESSAGE, code="body_too_large")
    try:
        body = json.loads(bytes(raw) or b"null")
    except ValueError:
        raise ApiError(400, BAD_LAYER_BODY_MESSAGE, code="bad_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, BAD_LAYER_BODY_MESSAGE, code="bad_json")
    return body


def _layer_id_of(body: dict[str, Any], state: ServerState) -> str:
    """The layer id a ``POST /v1/workbench/layers`` body asks for (checked; blocking)."""
    from zoomearth.server.tiles import REMOTE_LAYER_MESSAGE
    from zoomearth.tools.paths import PathNotAllowedError, check_allowed_path

    keys = {k for k, v in body.items() if v is not None}
    if keys == {"path"} and isinstance(body["path"], str):
        try:
            path = check_allowed_path(body["path"], state.settings.allowed_roots,
                                      purpose="Layer path")
        except PathNotAllowedError as exc:
            from zoomearth.server.tiles import _hide_target

            raise ApiError(403, _hide_target(str(exc), body["path"]), code="path_not_allowed",
                           type="permission_error", param="path") from None
        return layer_id_for_path(path)
    if keys == {"file_id"} and isinstance(body["file_id"], str):
        state.store.meta(body["file_id"])  # 404 for an unknown id
        return layer_id_for_upload(body["file_id"])
    if keys == {"url"} and isinstance(body["url"], str):
        prefixes = list(getattr(state.settings, "allowed_url_prefixes", None) or [])
        if not prefixes:
            raise ApiError(400, REMOTE_LAYER_MESSAGE, code="unsupported_url", param="url")
        from zoomearth.scene import remote

        try:
            url = remote.check_url_allowed(body["url"], prefixes)
        except remote.RemoteURLNotAllowedError as exc:
            raise ApiError(403, " ".join(str(exc).split()), code="url_not_allowed",
                           type="permission_error", param="url") from None
        return layer_id_for_url(url)
    if keys == {"conversation_id"}:
        return layer_id_for_thread_scene(_check_thread(body["conversation_id"],
                                                       "conversation_id"))
    if keys == {"conversation_id", "artifact_id"}:
        thread = _check_thread(body["conversation_id"], "conversation_id")
        artifact_id = body["artifact_id"]
        if isinstance(artifact_id, str) and artifact_id.startswith("artifact:"):
            artifact_id = artifact_id.split(":", 1)[1]
        try:
            number = int(artifact_id)
        except (TypeError, ValueError):
            number = 0
        if isinstance(artifact_id, bool) or number < 1:
            raise ApiError(400, BAD_LAYER_BODY_MESSAGE, param="artifact_id",
                           code="bad_artifact_id")
        return layer_id_for_artifact(thread, number)
    raise ApiError(400, BAD_LAYER_BODY_MESSAGE, code="bad_layer_request")


def list_scenes(roots: list[Path]) -> list[dict[str, Any]]:
    """Rasters under ``roots`` (at most :data:`SCENE_DEPTH` folders deep), confined to them."""
    from zoomearth.tools.paths import PathNotAllowedError, check_allowed_path

    out: list[dict[str, Any]] = []
    for root in roots:
        base = Path(root).expanduser()
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            depth = len(Path(dirpath).relative_to(base).parts)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) \
                if depth < SCENE_DEPTH - 1 else []
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(SCENE_SUFFIXES):
                    continue
                try:
                    path = check_allowed_path(Path(dirpath) / name, roots, purpose="Scene")
                    size = path.stat().st_size
                except (PathNotAllowedError, OSError):
                    continue
                out.append({"path": str(path), "name": str(Path(dirpath, name).relative_to(
                    base)), "size_bytes": size, "layer_id": layer_id_for_path(path)})
                if len(out) >= MAX_SCENES:
                    return out
    return out

