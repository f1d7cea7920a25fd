"""The OpenAI-compatible HTTP server: ``create_app(settings) -> FastAPI``.

Endpoints (see ``docs/server.md``):

* ``GET /healthz`` -- liveness and run counts (no token needed);
* ``GET /v1/models`` -- one model, ``zoomearth``, whose description names the registry's tools and
  the planner backend;
* ``POST /v1/chat/completions`` -- ``stream`` true (SSE: progress as ``reasoning_content`` deltas,
  then the answer as ``content``, then ``[DONE]``) or false (the same as one message);
* ``POST /v1/files`` -- image upload (id + signed content URL); ``GET /v1/files/{id}`` and
  ``GET /v1/files/{id}/content``;
* ``GET /artifacts/{path}`` -- files of run directories, with a signed link or the bearer token.

Conversations map to LangGraph threads (``X-Conversation-Id`` header, ``metadata.conversation_id``,
or an id derived from the first user message and the first image; only a request that names its
conversation may answer an approval). Runs execute in worker threads (:mod:`zoomearth.server.runs`);
images are ingested to files first (:mod:`zoomearth.server.ingest`). Chat bodies are bounded by
``max_json_body_bytes``; links are built from ``public_base_url``, trusted proxies' forwarded
headers or the server's own address, never from ``Host``. SIGTERM/Ctrl-C end every open request
with ``server_shutdown``; stale temporaries of dead processes are removed at start-up.
FastAPI is imported only here (and by :mod:`zoomearth.server.downloads`, which only this module
imports), never by ``import zoomearth``. One chat turn (deciding it, progress lines, the answer)
lives in :mod:`zoomearth.server.chat`, request-body parsing in :mod:`zoomearth.server.bodies`;
their names stay importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import json
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from zoomearth.server.bodies import _SURROGATE_RE as _SURROGATE_RE
from zoomearth.server.bodies import (
    BAD_FIELD_TEMPLATE,
    BAD_FORM_TEMPLATE,
    BAD_JSON_TEMPLATE,
    BODY_TOO_LARGE_TEMPLATE,
    NO_FILE_MESSAGE,
    UPLOAD_TOO_LARGE_TEMPLATE,
    _check_unsupported,
    _one_line,
    _parse_json_body,
)
from zoomearth.server.bodies import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from zoomearth.server.bodies import SURROGATE_TEMPLATE as SURROGATE_TEMPLATE
from zoomearth.server.bodies import TOO_DEEP_TEMPLATE as TOO_DEEP_TEMPLATE
from zoomearth.server.bodies import UNSUPPORTED_PARAM_TEMPLATE as UNSUPPORTED_PARAM_TEMPLATE
from zoomearth.server.bodies import _refuse_surrogate as _refuse_surrogate
from zoomearth.server.bodies import _safe_key as _safe_key
from zoomearth.server.chat import _APPROVE_WORDS as _APPROVE_WORDS
from zoomearth.server.chat import _CONV_ID_RE as _CONV_ID_RE
from zoomearth.server.chat import _DENY_WORDS as _DENY_WORDS
from zoomearth.server.chat import _PROGRESS_EVERY_S as _PROGRESS_EVERY_S
from zoomearth.server.chat import APPROVAL_AGAIN_TEMPLATE as APPROVAL_AGAIN_TEMPLATE
from zoomearth.server.chat import APPROVAL_ID_HINT_TEMPLATE as APPROVAL_ID_HINT_TEMPLATE
from zoomearth.server.chat import APPROVAL_NEEDS_ID_MESSAGE as APPROVAL_NEEDS_ID_MESSAGE
from zoomearth.server.chat import APPROVAL_TEMPLATE as APPROVAL_TEMPLATE
from zoomearth.server.chat import BAD_CONVERSATION_ID_TEMPLATE as BAD_CONVERSATION_ID_TEMPLATE
from zoomearth.server.chat import FINISHED_STATUSES as FINISHED_STATUSES
from zoomearth.server.chat import LAST_NOT_USER_MESSAGE as LAST_NOT_USER_MESSAGE
from zoomearth.server.chat import (
    MODEL_ID,
    AgentFactory,
    ProgressText,
    ServerState,
    _chunk,
    _final_text,
    _prepare_turn,
    _prune_run_dirs,
    _status_fields,
)
from zoomearth.server.chat import NO_IMAGE_MESSAGE as NO_IMAGE_MESSAGE
from zoomearth.server.chat import NO_MESSAGES_MESSAGE as NO_MESSAGES_MESSAGE
from zoomearth.server.chat import NO_QUESTION_MESSAGE as NO_QUESTION_MESSAGE
from zoomearth.server.chat import NOT_FINISHED_MESSAGE as NOT_FINISHED_MESSAGE
from zoomearth.server.chat import RUN_NOT_CLEAN_TEMPLATE as RUN_NOT_CLEAN_TEMPLATE
from zoomearth.server.chat import Turn as Turn
from zoomearth.server.chat import _approval_word as _approval_word
from zoomearth.server.chat import _artifact_markdown as _artifact_markdown
from zoomearth.server.chat import _decide_turn as _decide_turn
from zoomearth.server.chat import _thread_values as _thread_values
from zoomearth.server.chat import prune_empty_dirs as prune_empty_dirs
from zoomearth.server.downloads import _ACTIVE_MEDIA as _ACTIVE_MEDIA
from zoomearth.server.downloads import _SNIFFED_MEDIA as _SNIFFED_MEDIA
from zoomearth.server.downloads import _download
from zoomearth.server.errors import INTERNAL_TEMPLATE, ApiError, error_body
from zoomearth.server.events import answer_text
from zoomearth.server.ingest import FileStore, Ingestor
from zoomearth.server.security import (
    check_bind_security,
    check_proxy_settings,
    conversation_id_for,
    is_loopback,
    link_base_url,
)
from zoomearth.temporaries import sweep_stale_temporaries, temporary_sibling

if TYPE_CHECKING:
    from zoomearth.api import Agent, AskResult
    from zoomearth.config import Settings

__all__ = [
    "AgentFactory",
    "MODEL_ID",
    "check_bind_security",
    "conversation_id_for",
    "create_app",
    "is_loopback",
]

log = logging.getLogger("zoomearth.server")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("zoomearth_request_id",
                                                                default="-")


MISSING_TOKEN_MESSAGE = (
    "Missing bearer token: send the header 'Authorization: Bearer <token>' (the server's "
    "api_token)."
)
BAD_TOKEN_MESSAGE = "Invalid bearer token; check the api_token the server was started with."
BAD_LINK_MESSAGE = (
    "This link is invalid or has expired (links live link_ttl_s seconds); ask again for a fresh "
    "link, or send the bearer token."
)
UNKNOWN_MODEL_TEMPLATE = "The model {model!r} does not exist; this server serves {valid!r}."
NOT_FOUND_MESSAGE = "Not found: {path}"

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Error codes after which the thread continues later: its run folder is left as it is.
_RESUMABLE_ERRORS = frozenset({"run_timeout", "server_shutdown", "thread_busy",
                               "conversation_busy"})
#: How long the shutdown waits for cancelled runs to unwind (tools check cancellation per tile).
SHUTDOWN_JOIN_S = 10.0


def _default_agent_factory(settings: Settings, on_event: Callable[[dict[str, Any]], None],
                           ) -> Agent:
    from zoomearth.api import Agent

    checkpointer = None
    if settings.postgres_url:
        from zoomearth.server.postgres import open_postgres_checkpointer

        checkpointer = open_postgres_checkpointer(
            settings.postgres_url, max_size=settings.max_concurrent_runs + 4)
    return Agent(settings, checkpointer=checkpointer, on_event=on_event)


# ----------------------------------------------------------------------------------------------
# Logging and request ids (pure ASGI middleware: it does not buffer streams)
# ----------------------------------------------------------------------------------------------
class RequestIdMiddleware:
    """Gives every request an id (``X-Request-Id``, echoed back) and logs one line per request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex[:16]
        token = REQUEST_ID.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        status = {"code": 0}
        t0 = time.perf_counter()

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # Handled here, not by Starlette's outermost error middleware: that one runs after
            # this middleware, without the request id (in the body or the header).
            log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
            if status["code"]:
                raise  # the response has started; nothing more can be sent
            status["code"] = 500
            body = json.dumps(error_body(INTERNAL_TEMPLATE.format(request_id=rid),
                                         "server_error", "internal_error")).encode()
            await send_wrapper({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]})
            await send_wrapper({"type": "http.response.body", "body": body})
        finally:
            log.info("request", extra={
                "request_id": rid, "method": scope.get("method"), "path": scope.get("path"),
                "status": status["code"], "ms": round((time.perf_counter() - t0) * 1000, 1),
                "client": (scope.get("client") or ["-"])[0],
            })
            REQUEST_ID.reset(token)


# ----------------------------------------------------------------------------------------------
# The application
# ----------------------------------------------------------------------------------------------
def create_app(settings: Settings, agent_factory: AgentFactory | None = None) -> FastAPI:
    """Build the FastAPI application.

    Args:
        settings: Effective settings (server_host, api_token, limits, planner ...).
        agent_factory: ``(settings, on_event) -> Agent``; the default builds
            :class:`zoomearth.api.Agent` with the SQLite checkpointer, or the Postgres one when
            ``postgres_url`` is set. Tests pass one with a scripted planner and test tools.

    Returns:
        The application; the agent is built when it starts (lifespan).

    Raises:
        ConfigError: A non-loopback ``server_host`` without ``api_token``.
    """
    from zoomearth.server.runs import RunManager, busy_message
    from zoomearth.server.signing import Signer, load_or_create_key

    check_bind_security(settings)
    check_proxy_settings(settings)
    server_dir = settings.data_dir / "server"
    state = ServerState(
        settings=settings,
        factory=agent_factory or _default_agent_factory,
        store=FileStore(server_dir / "files"),
        signer=Signer(load_or_create_key(server_dir), settings.link_ttl_s),
        manager=RunManager(settings.max_concurrent_runs, settings.max_queued_runs,
                           settings.run_timeout_s),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(_sweep_temporaries, settings, state.store.root)
        state.agent = await run_in_threadpool(state.factory, settings, state.manager.dispatch)
        log.info("server ready", extra={"planner": state.agent.planner.describe(),
                                        "checkpointer": type(state.agent.checkpointer).__name__})
        restore = _hook_exit_signals(asyncio.get_running_loop(), state.manager.shutdown)
        try:
            yield
        finally:
            restore()
            # Normally done by the signal hook already; a shutdown without a signal (tests, an
            # embedding program) ends the runs here. Workers get a bounded time to unwind (their
            # tools stop at the next cancellation check), so they release their thread locks
            # and remove their temporaries before the process exits.
            state.manager.shutdown()
            left = await run_in_threadpool(state.manager.join_workers, SHUTDOWN_JOIN_S)
            workbench.close()
            if left:
                log.warning("%d run(s) still running at shutdown; their checkpoints are kept",
                            left)
            agent, state.agent = state.agent, None
            if agent is not None:
                with contextlib.suppress(Exception):
                    agent.close()
                closer = getattr(agent.checkpointer, "zoomearth_close", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        closer()

    app = FastAPI(title="zoomearth", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.zoomearth = state

    # -- errors --------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = NOT_FOUND_MESSAGE.format(path=request.url.path) if exc.status_code == 404 \
            else str(exc.detail)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(message, kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        rid = REQUEST_ID.get()
        log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
        return JSONResponse(error_body(INTERNAL_TEMPLATE.format(request_id=rid), "server_error",
                                       "internal_error"), status_code=500)

    # -- helpers -------------------------------------------------------------------------------
    def bearer_ok(request: Request) -> bool:
        token = settings.api_token
        if not token:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                  token.encode())

    def require_auth(request: Request) -> None:
        if bearer_ok(request):
            return
        missing = not request.headers.get("authorization")
        raise ApiError(401, MISSING_TOKEN_MESSAGE if missing else BAD_TOKEN_MESSAGE,
                       type="authentication_error",
                       code="missing_token" if missing else "invalid_token",
                       headers={"WWW-Authenticate": "Bearer"})

    def require_link_or_auth(request: Request) -> None:
        q = request.query_params
        if q.get("sig") is not None:
            if state.signer.verify(request.url.path, q.get("exp"), q.get("sig")):
                return
            if not settings.api_token or not bearer_ok(request):
                raise ApiError(403, BAD_LINK_MESSAGE, type="permission_error", code="bad_link")
        require_auth(request)

    def base_url(request: Request) -> str:
        # Never from the client's Host header (signed links would carry its host): see
        # zoomearth.server.security.link_base_url.
        server = request.scope.get("server")
        return link_base_url(
            settings, scheme=request.url.scheme,
            server=(str(server[0]), int(server[1])) if server and server[1] else None,
            peer=request.client.host if request.client else None, headers=request.headers)

    async def read_json_body(request: Request) -> bytearray:
        """The body of a JSON request, at most ``max_json_body_bytes`` (413 otherwise).

        A declared ``Content-Length`` above the limit is refused before any of the body is
        read; a chunked body is refused as soon as it passes the limit (nothing more is read).
        """
        limit = settings.max_json_body_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ApiError(413, BODY_TOO_LARGE_TEMPLATE.format(
                size=f"{int(length):,} bytes, ", limit=limit), code="body_too_large")
        chunks = bytearray()
        async for chunk in request.stream():
            chunks.extend(chunk)
            if len(chunks) > limit:
                raise ApiError(413, BODY_TOO_LARGE_TEMPLATE.format(size="", limit=limit),
                               code="body_too_large")
        return chunks  # parsed as is: no second copy of a large body

    def model_card() -> dict[str, Any]:
        agent = state.require_agent()
        specs = agent.registry.tool_specs_for_prompt(region_args=False)
        tools = "; ".join(
            f"{s['name']}{' (asks for approval)' if s['needs_approval'] else ''}: "
            f"{s['description']}" for s in specs) or "none"
        description = (
            "ZoomEarth agent for ultra-high-resolution remote-sensing images: it looks at an "
            "overview, zooms into full-resolution regions and calls tools. "
            f"Planner: {settings.planner} ({agent.planner.describe()}). Tools: {tools}"
        )
        return {
            "id": MODEL_ID, "object": "model", "created": int(state.started_at),
            "owned_by": "zoomearth", "description": description, "planner": settings.planner,
            "tools": [{"name": s["name"], "description": s["description"],
                       "needs_approval": s["needs_approval"]} for s in specs],
        }

    # The analyst's workbench: its page, layers, tiles and thread histories (issue 17).
    from zoomearth.server.workbench.routes import register_workbench

    workbench = register_workbench(app, state, require_auth=require_auth, bearer_ok=bearer_ok,
                                   base_url=base_url)

    # -- endpoints -----------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        limiter = state.manager.limiter
        status = "shutting_down" if state.manager.shutting_down else \
            "ok" if state.agent is not None else "starting"
        return {"status": status,
                "runs": {"running": limiter.running, "queued": limiter.queued},
                "uptime_s": round(time.time() - state.started_at, 1)}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        require_auth(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        require_auth(request)
        if model != MODEL_ID:
            raise ApiError(404, UNKNOWN_MODEL_TEMPLATE.format(model=model, valid=MODEL_ID),
                           type="not_found_error", code="model_not_found", param="model")
        return model_card()

    @app.post("/v1/files")
    async def upload_file(request: Request) -> dict[str, Any]:
        require_auth(request)
        from starlette.datastructures import UploadFile
        from starlette.requests import Request as StarletteRequest

        limit = settings.max_upload_bytes + (1 << 20)  # multipart framing
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ApiError(413, UPLOAD_TOO_LARGE_TEMPLATE.format(
                size=f"{int(length):,} bytes, ", limit=limit), code="upload_too_large")
        seen = {"n": 0}

        async def limited_receive() -> dict[str, Any]:
            message = await request.receive()
            if message["type"] == "http.request":
                seen["n"] += len(message.get("body", b""))
                if seen["n"] > limit:
                    raise ApiError(413, UPLOAD_TOO_LARGE_TEMPLATE.format(size="", limit=limit),
                                   code="upload_too_large")
            return dict(message)

        limited = StarletteRequest(request.scope, limited_receive)
        try:
            form = await limited.form(max_files=1, max_fields=16)
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - the multipart parser's own errors
            raise ApiError(400, BAD_FORM_TEMPLATE.format(reason=_one_line(exc)),
                           code="bad_form") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, NO_FILE_MESSAGE, param="file", code="no_file")
            purpose = str(form.get("purpose") or "vision")
            filename = upload.filename or "upload"
            # Owner-named (host, PID): a server killed mid-upload leaves a file the next start
            # can tell is litter (zoomearth.temporaries); a live server's uploads are kept.
            tmp = temporary_sibling(state.store.root / "upload.part")
            try:
                with open(tmp, "xb") as out:
                    while chunk := await upload.read(1 << 20):
                        out.write(chunk)
                ingestor = Ingestor(settings, state.store)
                meta = await run_in_threadpool(ingestor.ingest_upload, tmp, filename, purpose)
            finally:
                # Also on cancellation (a shutdown or a client gone mid-upload); GDAL sidecars too.
                for leftover in state.store.root.glob(f"{tmp.stem}*"):
                    leftover.unlink(missing_ok=True)
        finally:
            await form.close()
        return _file_record(meta, request)

    def _file_record(meta: dict[str, Any], request: Request) -> dict[str, Any]:
        path = f"/v1/files/{meta['id']}/content"
        record = {k: meta[k] for k in ("id", "object", "bytes", "created_at", "filename",
                                        "purpose", "status")}
        record.update(url=state.signer.url(base_url(request), path), width=meta.get("width"),
                      height=meta.get("height"), georeferenced=meta.get("georeferenced"))
        return record

    @app.get("/v1/files/{file_id}")
    async def file_info(file_id: str, request: Request) -> dict[str, Any]:
        require_auth(request)
        return _file_record(state.store.meta(file_id), request)

    @app.api_route("/v1/files/{file_id}/content", methods=["GET", "HEAD"])
    async def file_content(file_id: str, request: Request) -> Response:
        require_link_or_auth(request)
        path = state.store.path_of(file_id)
        return _download(path, filename=state.store.meta(file_id)["filename"])

    @app.api_route("/artifacts/{rel_path:path}", methods=["GET", "HEAD"])
    async def artifact(rel_path: str, request: Request) -> Response:
        require_link_or_auth(request)
        from zoomearth.artifacts import guess_media_type
        from zoomearth.tools.paths import PathNotAllowedError, check_allowed_path

        assert settings.runs_dir is not None
        not_found = ApiError(404, NOT_FOUND_MESSAGE.format(path=request.url.path),
                             type="not_found_error", code="unknown_artifact")
        if not rel_path or rel_path.startswith("/"):
            raise not_found
        try:
            path = check_allowed_path(settings.runs_dir / rel_path, [settings.runs_dir],
                                      purpose="Artifact")
        except PathNotAllowedError:
            raise not_found from None
        return _download(path, fallback=guess_media_type(path))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        require_auth(request)
        raw = await read_json_body(request)
        body = await run_in_threadpool(_parse_json_body, raw)
        if not isinstance(body, dict):
            raise ApiError(400, BAD_JSON_TEMPLATE.format(reason="expected an object"),
                           code="bad_json")
        model = body.get("model", MODEL_ID)
        if model != MODEL_ID:
            raise ApiError(404, UNKNOWN_MODEL_TEMPLATE.format(model=model, valid=MODEL_ID),
                           type="not_found_error", code="model_not_found", param="model")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, BAD_FIELD_TEMPLATE.format(name="stream", what="true or false"),
                           param="stream")
        _check_unsupported(body)
        turn = await run_in_threadpool(_prepare_turn, state, body,
                                       request.headers.get("x-conversation-id"))
        rid = REQUEST_ID.get()
        cid = f"chatcmpl-{rid}"
        created = int(time.time())
        base = base_url(request)
        headers = {"X-Conversation-Id": turn.conversation_id, "X-Thread-Id": turn.thread_id}
        info = {"conversation_id": turn.conversation_id, "thread_id": turn.thread_id}
        in_content = settings.progress_in_content
        agent = state.require_agent()
        if turn.action != "reply" and not state.manager.is_busy(turn.thread_id):
            # Another process (a CLI `ask`, another worker) may run this thread: say so now
            # with its PID, rather than as an error after the stream started.
            holder = await run_in_threadpool(agent.running, turn.thread_id)
            if holder is not None:
                raise ApiError(409, busy_message(turn.thread_id, holder),
                               code="conversation_busy")
        ticket = None if turn.action == "reply" else state.manager.admit(turn.thread_id)

        def execute() -> AskResult:
            if turn.action == "resume":
                return agent.resume(turn.thread_id, approve=turn.approve)
            image = turn.image.source if turn.image is not None else None
            stack = [ref.source for ref in turn.stack] or None
            return agent.ask(image, turn.question, thread=turn.thread_id, stack=stack,
                             stack_labels=turn.stack_labels)

        async def events(disconnected: Any = None) -> AsyncIterator[tuple[str, Any]]:
            if ticket is None:
                yield ("text", turn.reply)
                return
            fmt = ProgressText()
            run_events = workbench.run_events(turn.thread_id, base)
            if stream and turn.action == "resume":
                await run_in_threadpool(run_events.prime)  # the step of the resumed call
            async for kind, value in state.manager.run(ticket, execute, request_id=rid,
                                                       disconnected=disconnected):
                if kind == "queued":
                    yield ("progress", f"Waiting for a free run slot ({value} queued).")
                elif kind == "event":
                    line = fmt(value)
                    if line:
                        yield ("progress", line)
                    if stream and run_events.wants(value):  # structured, for the workbench
                        for run_event in await run_in_threadpool(run_events, value):
                            yield ("run_event", run_event)
                elif kind == "result":
                    yield ("status", _status_fields(value))
                    text = await run_in_threadpool(_final_text, state, turn, value, base)
                    yield ("text", text)
                    yield ("run_event", run_events.answer(value, answer_text(value)))
                elif kind == "error":
                    if value.code not in _RESUMABLE_ERRORS:
                        # A failed run leaves no empty run folder behind.
                        await run_in_threadpool(_prune_run_dirs, state, turn.thread_id)
                    yield ("error", value)
                elif kind == "tick":
                    yield ("tick", None)

        if stream:
            async def sse() -> AsyncIterator[str]:
                yield _chunk(cid, created, {"role": "assistant", "content": ""})
                status: dict[str, str] = {"status": "answered"}
                async for kind, value in events():
                    if kind == "progress":
                        key = "content" if in_content else "reasoning_content"
                        yield _chunk(cid, created, {key: value + "\n"})
                    elif kind == "status":
                        status = value
                    elif kind == "text":
                        if in_content:
                            value = "\n" + value
                        yield _chunk(cid, created, {"content": value})
                    elif kind == "run_event":
                        yield _chunk(cid, created, {}, extra={"zoomearth_event": value})
                    elif kind == "tick":
                        yield ": keep-alive\n\n"
                    elif kind == "error":
                        # The error event, then [DONE]: a client reading to the end sees both.
                        yield f"data: {json.dumps(value.body())}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                if ticket is None:
                    status = {"status": "awaiting_approval"}
                yield _chunk(cid, created, {}, "stop", {"zoomearth": {**info, **status}})
                yield "data: [DONE]\n\n"

            return _RunStreamingResponse(
                sse(), media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                on_close=lambda: _abandon_unstarted(state, ticket))

        progress: list[str] = []
        answer = ""
        status = {"status": "awaiting_approval" if ticket is None else "answered"}
        async for kind, value in events(request.is_disconnected):
            if kind == "progress":
                progress.append(value)
            elif kind == "status":
                status = value
            elif kind == "text":
                answer = value
            elif kind == "error":
                raise value
        if not answer and ticket is not None:
            # Client went away (nobody reads this) or the run ended without a result.
            return Response(status_code=499)
        message: dict[str, Any] = {"role": "assistant"}
        if in_content and progress:
            message["content"] = "\n".join(progress) + "\n\n" + answer
        else:
            message["content"] = answer
            message["reasoning_content"] = "\n".join(progress)
        payload = {
            "id": cid, "object": "chat.completion", "created": created, "model": MODEL_ID,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "zoomearth": {**info, **status},
        }
        return JSONResponse(payload, headers=headers)

    app.add_middleware(RequestIdMiddleware)  # type: ignore[arg-type]
    return app


def _sweep_temporaries(settings: Settings, uploads: Path) -> None:
    """Remove temporaries whose owner process is dead (a server or CLI killed mid-write)."""
    swept = sweep_stale_temporaries(uploads, recursive=True)
    if settings.runs_dir is not None:
        swept += sweep_stale_temporaries(settings.runs_dir, recursive=True)
    if swept.files:
        log.info("removed %d stale temporary file(s) (%d bytes) left by stopped processes",
                 swept.files, swept.bytes)


def _hook_exit_signals(loop: asyncio.AbstractEventLoop,
                       on_exit: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_exit`` on the event loop at SIGTERM/SIGINT, before the handler in place runs.

    uvicorn installs its ``Server.handle_exit`` with ``signal.signal`` before the lifespan starts
    (in every worker process too); it then stops accepting connections and waits for open
    responses to finish before the lifespan shutdown. Chaining here ends the open streams at
    once with an error event (instead of uvicorn cutting them after its graceful timeout).
    Signals can be handled only in the main thread: elsewhere (a server run in a thread) this
    does nothing. Returns the function that puts the previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        # A signal handler runs between bytecodes of the loop's own thread: only schedule.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(on_exit)
        previous[signum](signum, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)
        if callable(prev):  # a server that shuts down gracefully on it (uvicorn does)
            previous[sig] = prev
            signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, prev)

    return restore


class _RunStreamingResponse(StreamingResponse):
    """A stream that calls ``on_close`` however it ends (even if it never started)."""

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Stream, then release what an unstarted stream still holds."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _abandon_unstarted(state: ServerState, ticket: Any) -> None:
    # A client gone before the stream's first chunk: its admitted run never started.
    if ticket is not None and not ticket.entered:
        state.manager.abandon(ticket)
