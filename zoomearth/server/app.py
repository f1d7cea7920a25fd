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
FastAPI is imported only here, never by ``import zoomearth``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from zoomearth.server.errors import INTERNAL_TEMPLATE, ApiError, error_body
from zoomearth.server.ingest import (
    Conversation,
    FileStore,
    ImageRef,
    Ingestor,
    parse_conversation,
    sniff_extension,
)
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

MODEL_ID = "zoomearth"
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("zoomearth_request_id",
                                                                default="-")

#: ``agent_factory(settings, on_event) -> Agent``; ``on_event`` must be passed to the Agent.
AgentFactory = Callable[["Settings", Callable[[dict[str, Any]], None]], "Agent"]

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
NO_MESSAGES_MESSAGE = "'messages' must be a non-empty list of chat messages."
LAST_NOT_USER_MESSAGE = "The last message must be a user message (the question to answer)."
NO_QUESTION_MESSAGE = "The latest user message has no text; ask a question about the image."
NO_IMAGE_MESSAGE = (
    "No image in this conversation: attach one to the user message as an image_url part (a "
    "data: URL, a URL returned by POST /v1/files, or a file:// path under allowed_roots)."
)
BAD_CONVERSATION_ID_TEMPLATE = (
    "Conversation id {value!r} is not usable: use 1-128 letters, digits, '_', '-' or '.', "
    "starting with a letter or digit."
)
BODY_TOO_LARGE_TEMPLATE = (
    "Request body is {size}larger than {limit:,} bytes (setting max_json_body_bytes); upload "
    "larger images with POST /v1/files and put the returned file URL (its id) in the message "
    "instead of a data: URL, or use file:// paths under allowed_roots."
)
UPLOAD_TOO_LARGE_TEMPLATE = (
    "Upload is {size}larger than {limit:,} bytes (the setting max_upload_bytes plus 1 MiB of "
    "form framing); send a smaller image, or use a file:// path under allowed_roots."
)
APPROVAL_NEEDS_ID_MESSAGE = (
    "This conversation has a step waiting for approval, and an approval is taken only from a "
    "request that names its conversation: send the header X-Conversation-Id (or "
    "metadata.conversation_id) with the id returned with the approval request (the "
    "X-Conversation-Id response header, or zoomearth.conversation_id). A conversation id derived "
    "from the first message never approves, since another client starting with the same words "
    "and image derives the same id."
)
APPROVAL_ID_HINT_TEMPLATE = (
    " (To answer, send your reply with the header X-Conversation-Id: {conversation_id}.)"
)
BAD_JSON_TEMPLATE = "Request body is not valid JSON: {reason}"
TOO_DEEP_TEMPLATE = (
    "Request body is nested too deeply: this server accepts JSON nested up to {limit} levels."
)
SURROGATE_TEMPLATE = (
    "Request body holds a lone UTF-16 surrogate ({char}) at {where}; send text as valid "
    "Unicode (escape characters outside the BMP as a surrogate pair)."
)
BAD_FIELD_TEMPLATE = "Field {name!r} must be {what}."
UNSUPPORTED_PARAM_TEMPLATE = "Parameter {name!r} is not supported by this server: {why}"
NO_FILE_MESSAGE = "The upload needs a 'file' form field holding the image."
BAD_FORM_TEMPLATE = "The upload is not a valid multipart form: {reason}"
NOT_FOUND_MESSAGE = "Not found: {path}"
APPROVAL_TEMPLATE = "{question} Reply 'approve' or 'deny'."
APPROVAL_AGAIN_TEMPLATE = (
    "A step is waiting for your approval: {question} Reply 'approve' to run it or 'deny' to skip "
    "it."
)
NOT_FINISHED_MESSAGE = (
    "The run stopped before answering; send the same message again to continue it."
)
RUN_NOT_CLEAN_TEMPLATE = "Run status: {status}. {reason}"
#: Record statuses of finished runs (they carry an answer).
FINISHED_STATUSES = frozenset({"answered", "partial", "failed"})

#: Deepest JSON nesting a chat request may use (a chat request needs about six levels).
MAX_JSON_DEPTH = 64
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_CONV_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_APPROVE_WORDS = {"approve", "approved", "yes", "y", "ok", "okay", "go", "go ahead", "run it",
                  "proceed", "allow"}
_DENY_WORDS = {"deny", "denied", "no", "n", "skip", "cancel", "stop", "don't", "do not"}
_PROGRESS_EVERY_S = 1.0
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
# Server state and one chat turn
# ----------------------------------------------------------------------------------------------
@dataclass
class Turn:
    """What one chat request will do.

    Attributes:
        conversation_id: The conversation (header, metadata or derived).
        thread_id: The LangGraph thread (the conversation id, or ``<conversation>.<image>`` when
            a later message brings another image).
        action: ``ask`` (new question), ``resume`` (approval answer or an unfinished run) or
            ``reply`` (answer without running: a repeated approval question).
        image: The scene file for a new thread.
        question: The latest user text.
        approve: The approval decision for ``resume``.
        artifacts_before: Artifacts the thread had before this turn (only new ones are linked).
        reply: The text for ``reply``.
        explicit: Whether the request named its conversation (header or metadata); only such
            requests may answer an approval.
    """

    conversation_id: str
    thread_id: str
    action: str
    image: ImageRef | None = None
    question: str = ""
    approve: bool | None = None
    artifacts_before: int = 0
    reply: str = ""
    explicit: bool = True


@dataclass
class ServerState:
    """Everything the endpoints share in one server process."""

    settings: Settings
    factory: AgentFactory
    store: FileStore
    signer: Any
    manager: Any
    agent: Agent | None = None
    started_at: float = field(default_factory=time.time)

    def require_agent(self) -> Agent:
        """The agent (built at startup)."""
        if self.agent is None:  # pragma: no cover - only before the lifespan ran
            raise ApiError(503, "The server is starting; retry in a moment.",
                           type="server_error", code="starting")
        return self.agent


def _approval_word(text: str) -> bool | None:
    norm = re.sub(r"[^a-z' ]", "", text.lower()).strip()
    if norm in _APPROVE_WORDS:
        return True
    if norm in _DENY_WORDS:
        return False
    return None


def _prepare_turn(state: ServerState, body: dict[str, Any], header_conv: str | None) -> Turn:
    """Parse the conversation, ingest its latest image and decide what to run (blocking)."""
    settings = state.settings
    agent = state.require_agent()
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, NO_MESSAGES_MESSAGE, param="messages", code="no_messages")
    conv = parse_conversation(messages)
    if not conv.last_is_user:
        raise ApiError(400, LAST_NOT_USER_MESSAGE, param="messages", code="last_not_user")
    ingestor = Ingestor(settings, state.store)

    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ApiError(400, BAD_FIELD_TEMPLATE.format(name="metadata", what="an object"),
                       param="metadata")
    given = header_conv or metadata.get("conversation_id")
    if given is not None:
        if not isinstance(given, str) or not _CONV_ID_RE.match(given):
            raise ApiError(400, BAD_CONVERSATION_ID_TEMPLATE.format(value=str(given)[:140]),
                           param="conversation_id", code="bad_conversation_id")
        conv_id = given
    else:
        first = ingestor.identity(conv.images[0]) if conv.images else ""
        conv_id = conversation_id_for(conv.first_user_text, first)

    assert settings.runs_dir is not None
    try:
        return _decide_turn(state, agent, ingestor, conv, conv_id, explicit=given is not None)
    except BaseException:
        # A refused request leaves no empty folders behind (never removes a file).
        _prune_run_dirs(state, conv_id)
        raise


def _decide_turn(state: ServerState, agent: Agent, ingestor: Ingestor, conv: Conversation,
                 conv_id: str, *, explicit: bool) -> Turn:
    """Ingest the latest image and decide what the turn does (see :func:`_prepare_turn`)."""
    settings = state.settings
    assert settings.runs_dir is not None
    image = ingestor.ingest(conv.images[-1], settings.runs_dir / conv_id / "inputs") \
        if conv.images else None
    thread = conv_id
    values = _thread_values(agent, thread)
    if values and image is not None and str(image.path) != values["scene"]["path"]:
        # A new image later in the conversation: its own thread, derived from both.
        thread = f"{conv_id}.{image.identity[:12]}"
        values = _thread_values(agent, thread)
    question = conv.last_user_text
    if not values:
        if image is None:
            raise ApiError(400, NO_IMAGE_MESSAGE, param="messages", code="no_image")
        if not question:
            raise ApiError(400, NO_QUESTION_MESSAGE, param="messages", code="no_question")
        return Turn(conv_id, thread, "ask", image=image, question=question, explicit=explicit)
    before = len(values.get("artifacts", []))
    snapshot = agent.graph.get_state({"configurable": {"thread_id": thread}})
    pending = [i.value for task in snapshot.tasks for i in task.interrupts]
    if pending:
        if not explicit:
            # A derived id is shared by every client that starts with the same words and
            # image: it must neither approve another client's edit nor show its question.
            raise ApiError(409, APPROVAL_NEEDS_ID_MESSAGE, param="conversation_id",
                           code="approval_needs_conversation_id")
        decision = _approval_word(question)
        if decision is None:
            head: dict[str, Any] = pending[0] if isinstance(pending[0], dict) \
                else {"question": str(pending[0])}
            text = APPROVAL_AGAIN_TEMPLATE.format(question=head.get("question", "Run the tool?"))
            return Turn(conv_id, thread, "reply", question=question, reply=text,
                        artifacts_before=before)
        return Turn(conv_id, thread, "resume", question=question, approve=decision,
                    artifacts_before=before)
    if not question:
        raise ApiError(400, NO_QUESTION_MESSAGE, param="messages", code="no_question")
    if snapshot.next and question == values.get("question"):
        # The same message again after a disconnect or timeout: continue the stopped run.
        return Turn(conv_id, thread, "resume", question=question, artifacts_before=before)
    return Turn(conv_id, thread, "ask", question=question, artifacts_before=before)


def _thread_values(agent: Agent, thread: str) -> dict[str, Any] | None:
    snapshot = agent.graph.get_state({"configurable": {"thread_id": thread}})
    return dict(snapshot.values) if snapshot and snapshot.values else None


def _prune_run_dirs(state: ServerState, name: str) -> None:
    """Remove the empty folders of ``RUNS_DIR/<name>`` unless a run of that thread is live."""
    runs = state.settings.runs_dir
    agent = state.agent
    if runs is None or not (runs / name).is_dir():
        return
    # A live run (here or in another process) may be about to write into its folders; writers
    # re-create missing folders anyway, so this only narrows the window further.
    if agent is not None and agent.running(name) is not None:
        return
    prune_empty_dirs(runs / name, runs)


def prune_empty_dirs(folder: Path, root: Path) -> int:
    """Remove ``folder`` and its sub-folders when they hold no file; how many were removed.

    Only folders strictly inside ``root`` are touched, deepest first, with ``os.rmdir`` (which
    fails on a folder that is not empty, so a file written meanwhile is never lost).
    """
    try:
        folder.resolve().relative_to(root.resolve())
    except (OSError, ValueError):
        return 0
    if folder.resolve() == root.resolve() or not folder.is_dir() or folder.is_symlink():
        return 0
    removed = 0
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                      key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
            removed += 1
    with contextlib.suppress(OSError):
        folder.rmdir()
        removed += 1
    return removed


# ----------------------------------------------------------------------------------------------
# Output formatting
# ----------------------------------------------------------------------------------------------
class ProgressText:
    """Turns progress events into one-line texts (tool progress throttled to one a second)."""

    def __init__(self) -> None:
        self._last_progress: dict[str, float] = {}

    def _due(self, key: str, unfinished: bool) -> bool:
        # The last step always shows; others at most one a second per key.
        now = time.monotonic()
        if unfinished and now - self._last_progress.get(key, 0.0) < _PROGRESS_EVERY_S:
            return False
        self._last_progress[key] = now
        return True

    def __call__(self, event: dict[str, Any]) -> str | None:
        """The line for an event, or None when it is not shown."""
        kind = event.get("event")
        if kind == "observe":
            profile = f", profile {event['profile']}" if event.get("profile") else ""
            return f"Looking at {Path(str(event.get('scene', ''))).name} " \
                   f"(planner: {event.get('planner')}{profile})."
        if kind == "note":
            return f"Note: {event.get('text')}"
        if kind == "plan":
            problems = event.get("problems") or []
            if event.get("stage") and not problems:
                return f"Stage {event['stage']} done."
            if problems:
                return f"Step {event.get('step')}: " + "; ".join(
                    str(p.get("message", ""))[:160] for p in problems)
            return None
        if kind == "zoom":
            box = ", ".join(f"{v:.0f}" for v in event.get("region_xyxy") or [])
            label = f" '{event['label']}'" if event.get("label") else ""
            return f"Zoom{label} -> view {event.get('view_id')}: [{box}] (full-resolution px)"
        if kind == "tool_start":
            args = json.dumps(event.get("arguments") or {}, default=str)
            region = event.get("region_xyxy")
            where = f" on [{', '.join(f'{v:.0f}' for v in region)}]" if region else ""
            return f"Tool {event.get('tool')} {args}{where}"
        if kind == "prepare":
            # Building the tiled, overviewed copy of a large scene (throttled like progress).
            name = Path(str(event.get("scene") or "the scene")).name
            done, total = int(event.get("done") or 0), int(event.get("total") or 0)
            if not self._due(f"prepare:{name}", done < total):
                return None
            pct = int(100 * done / total) if total > 0 else 0
            return f"Preparing {name}: {pct}%"
        if kind == "progress":
            key = str(event.get("tool"))
            done, total = int(event.get("done") or 0), int(event.get("total") or 0)
            if not self._due(key, done < total):
                return None
            msg = f" {event['message']}" if event.get("message") else ""
            return f"  {key}: {done}/{total}{msg}"
        if kind == "tool":
            text = " ".join(str(event.get("text", "")).split())
            return f"  -> {event.get('tool')}: {text[:400]}"
        if kind == "approval":
            return f"Waiting for approval: {event.get('question')}"
        return None


def _artifact_markdown(state: ServerState, result: AskResult, before: int, base: str) -> str:
    runs = state.settings.runs_dir
    assert runs is not None
    root = runs.resolve()
    lines: list[str] = []
    previews: list[str] = []
    for art in result.artifacts[before:]:
        path = Path(str(art.get("path", ""))).resolve()
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        url = state.signer.url(base, f"/artifacts/{rel.as_posix()}")
        summary = " ".join(str(art.get("summary", "")).split())
        media = str(art.get("media_type", ""))
        lines.append(f"- [{path.name}]({url}) ({art.get('kind')}): {summary}".rstrip(": "))
        if media in ("image/png", "image/jpeg", "image/webp", "image/gif"):
            previews.append(f"![{path.name}]({url})")
    if result.status in FINISHED_STATUSES and result.trajectory and result.zooms:
        traj = Path(result.trajectory).resolve()
        with contextlib.suppress(ValueError):
            url = state.signer.url(base, f"/artifacts/{traj.relative_to(root).as_posix()}")
            previews.append(f"![where the agent looked]({url})")
    parts = []
    if lines:
        parts.append("Artifacts:\n" + "\n".join(lines))
    if previews:
        parts.append("\n".join(previews))
    return "\n\n".join(parts)


def _final_text(state: ServerState, turn: Turn, result: AskResult, base: str) -> str:
    if result.status == "awaiting_approval":
        pending = result.pending_approval[0] if result.pending_approval else {}
        ask = APPROVAL_TEMPLATE.format(question=pending.get("question", "Run the tool?"))
        if not turn.explicit:
            # Only a request naming the conversation may answer (see APPROVAL_NEEDS_ID_MESSAGE).
            ask += APPROVAL_ID_HINT_TEMPLATE.format(conversation_id=turn.conversation_id)
        return ask
    finished = result.status in FINISHED_STATUSES and result.answer
    text = result.answer if finished else NOT_FINISHED_MESSAGE
    if finished and result.status != "answered":
        # Tool requests failed: the answer must not read as a clean success.
        note = RUN_NOT_CLEAN_TEMPLATE.format(status=result.status, reason=result.status_reason)
        text = f"{text}\n\n{note}"
    links = _artifact_markdown(state, result, turn.artifacts_before, base)
    return f"{text}\n\n{links}" if links else str(text)


def _status_fields(result: AskResult) -> dict[str, str]:
    """The ``zoomearth`` object's status fields: ``status``, and ``status_reason`` when set."""
    fields: dict[str, str] = {"status": result.status}
    if result.status_reason:
        fields["status_reason"] = result.status_reason
    return fields


def _chunk(cid: str, created: int, delta: dict[str, Any], finish: str | None = None,
           extra: dict[str, Any] | None = None) -> str:
    obj: dict[str, Any] = {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if extra:
        obj.update(extra)
    return f"data: {json.dumps(obj)}\n\n"


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
            image = str(turn.image.path) if turn.image is not None else None
            return agent.ask(image, turn.question, thread=turn.thread_id)

        async def events(disconnected: Any = None) -> AsyncIterator[tuple[str, Any]]:
            if ticket is None:
                yield ("text", turn.reply)
                return
            fmt = ProgressText()
            async for kind, value in state.manager.run(ticket, execute, request_id=rid,
                                                       disconnected=disconnected):
                if kind == "queued":
                    yield ("progress", f"Waiting for a free run slot ({value} queued).")
                elif kind == "event":
                    line = fmt(value)
                    if line:
                        yield ("progress", line)
                elif kind == "result":
                    yield ("status", _status_fields(value))
                    text = await run_in_threadpool(_final_text, state, turn, value, base)
                    yield ("text", text)
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


#: Sniffed image extension -> the content type downloads are served with.
_SNIFFED_MEDIA = {"tif": "image/tiff", "png": "image/png", "jpg": "image/jpeg",
                  "jp2": "image/jp2", "j2k": "image/jp2", "gif": "image/gif",
                  "bmp": "image/bmp", "webp": "image/webp"}
#: Content types a browser would render as active content: served as plain text instead.
_ACTIVE_MEDIA = ("text/html", "application/xhtml+xml", "image/svg+xml", "text/javascript",
                 "application/javascript", "text/xml", "application/xml")


def _download(path: Path, *, filename: str | None = None,
              fallback: str = "application/octet-stream") -> FileResponse:
    """A file response whose content type comes from the file's first bytes, with nosniff.

    Images get their sniffed type (never the uploaded name's); other files get ``fallback``
    (artifacts: derived from the server-chosen name), except types a browser would run.
    """
    with open(path, "rb") as fh:
        ext = sniff_extension(fh.read(16))
    media = _SNIFFED_MEDIA.get(ext or "") or fallback
    if media.split(";")[0].strip().lower() in _ACTIVE_MEDIA:
        media = "text/plain"
    return FileResponse(path, media_type=media, filename=filename,
                        headers={"X-Content-Type-Options": "nosniff"})


def _check_unsupported(body: dict[str, Any]) -> None:
    """Refuse (400) request parameters whose values this server cannot honour."""
    def refuse(name: str, why: str) -> ApiError:
        return ApiError(400, UNSUPPORTED_PARAM_TEMPLATE.format(name=name, why=why), param=name,
                        code="unsupported_parameter")

    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise refuse("n", "it returns exactly one choice; send n=1 or leave it out.")
    for name in ("tools", "functions"):
        if body.get(name):
            raise refuse(name, "the agent uses its own tools (see GET /v1/models); leave it "
                               "out.")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none", "auto"):
            raise refuse(name, "the agent chooses its own tools; leave it out.")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise refuse("response_format", "answers are plain text (markdown); leave it out or "
                                        "send {\"type\": \"text\"}.")
    for name, high in (("temperature", 2), ("top_p", 1)):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= high):
            raise ApiError(400, BAD_FIELD_TEMPLATE.format(
                name=name, what=f"a number from 0 to {high}"), param=name, code="bad_parameter")


def _parse_json_body(raw: bytes | bytearray) -> Any:
    """Parse a request body, refusing (400) invalid JSON, deep nesting and lone surrogates."""
    too_deep = ApiError(400, TOO_DEEP_TEMPLATE.format(limit=MAX_JSON_DEPTH), code="bad_json")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise ApiError(400, BAD_JSON_TEMPLATE.format(reason=exc), code="bad_json") from None
    stack: list[tuple[Any, int, str]] = [(body, 1, "$")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            _refuse_surrogate(value, where)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise too_deep
        if isinstance(value, dict):
            for key, item in value.items():
                _refuse_surrogate(key, f"a key of {where}")
                stack.append((item, depth + 1, f"{where}.{_safe_key(key)}"))
        else:
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))
    return body


def _refuse_surrogate(text: str, where: str) -> None:
    match = _SURROGATE_RE.search(text)
    if match:
        char = f"\\u{ord(match.group()):04x}"
        raise ApiError(400, SURROGATE_TEMPLATE.format(char=char, where=where), code="bad_unicode")


def _safe_key(key: str) -> str:
    return key[:40] if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", key[:40]) else "?"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
