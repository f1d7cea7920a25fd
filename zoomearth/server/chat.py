"""One chat turn of the server (:mod:`zoomearth.server.app`): deciding it and formatting it.

The server's shared state (:class:`ServerState`), what one ``POST /v1/chat/completions`` request
will do (:class:`Turn`: ask, resume an approval or a stopped run, or reply without running) and
how it is decided from the conversation, the progress lines streamed while a run works
(:class:`ProgressText`), the final answer with its artifact links, and the SSE chunks. The
endpoint itself stays in :func:`zoomearth.server.app.create_app`.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoomearth.server.bodies import BAD_FIELD_TEMPLATE
from zoomearth.server.errors import ApiError
from zoomearth.server.ingest import (
    Conversation,
    FileStore,
    ImageRef,
    Ingestor,
    parse_conversation,
)
from zoomearth.server.security import conversation_id_for

if TYPE_CHECKING:
    from zoomearth.api import Agent, AskResult
    from zoomearth.config import Settings

MODEL_ID = "zoomearth"

#: ``agent_factory(settings, on_event) -> Agent``; ``on_event`` must be passed to the Agent.
AgentFactory = Callable[["Settings", Callable[[dict[str, Any]], None]], "Agent"]

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

_CONV_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_APPROVE_WORDS = {"approve", "approved", "yes", "y", "ok", "okay", "go", "go ahead", "run it",
                  "proceed", "allow"}
_DENY_WORDS = {"deny", "denied", "no", "n", "skip", "cancel", "stop", "don't", "do not"}
_PROGRESS_EVERY_S = 1.0


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
        stack: A new thread's other dates: the further images of the user message whose first
            image is ``image`` (a time stack on ``image``'s grid); empty for one image.
        stack_labels: Names the dates are read from, ``image`` first (upload file names, file
            names; ``""`` for data URLs), see :meth:`zoomearth.scene.stack.SceneStack.from_sources`.
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
    stack: tuple[ImageRef, ...] = ()
    stack_labels: tuple[str, ...] | None = None


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
    inputs = settings.runs_dir / conv_id / "inputs"
    # Several images in the latest message with images: a time stack, its first image the
    # reference grid; one image: that image.
    group = conv.image_groups[-1] if conv.image_groups else conv.images[-1:]
    image = ingestor.ingest(group[0], inputs) if group else None
    stack = tuple(ingestor.ingest(url, inputs) for url in group[1:])
    thread = conv_id
    values = _thread_values(agent, thread)
    if values and image is not None and image.source != values["scene"]["path"]:
        # A new image later in the conversation: its own thread, derived from both.
        thread = f"{conv_id}.{image.identity[:12]}"
        values = _thread_values(agent, thread)
    question = conv.last_user_text
    if not values:
        if image is None:
            raise ApiError(400, NO_IMAGE_MESSAGE, param="messages", code="no_image")
        if not question:
            raise ApiError(400, NO_QUESTION_MESSAGE, param="messages", code="no_question")
        labels = (
            tuple(_image_name(state, ref) for ref in (image, *stack)) if stack else None
        )
        return Turn(conv_id, thread, "ask", image=image, question=question, explicit=explicit,
                    stack=stack, stack_labels=labels)
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


def _image_name(state: ServerState, ref: ImageRef) -> str:
    """The name a chat image's date is read from.

    The uploaded file's name, a file's own name; nothing for a data URL (its stored name is a
    digest, which could look like a date).
    """
    if ref.origin == "upload":
        try:
            return str(state.store.meta(ref.path.parent.name).get("filename") or "")
        except ApiError:
            return ""
    if ref.origin == "file":
        return ref.path.name
    return ""


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
