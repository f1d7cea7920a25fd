"""Turn a :class:`~zoomearth.agent.base.PlanRequest` into chat messages (the ``agent`` profile).

The result is *neutral*: images are :class:`ImagePart` references to view ids, never pixels. Each
backend materialises them (:func:`to_chat_dicts` with its own image part: a placeholder for the
transformers processor, a base64 data URL for an OpenAI-compatible server).

The layout is ``chat``, for general-purpose VLMs: each planner turn is an assistant message; zoom
crops come as a following user message (caption + image); tool results as ``tool`` messages
carrying text only, with a preview image, if any, in a following user message (OpenAI-compatible
servers reject images in tool messages). Consecutive user-side items (several crops, feedback after
a tool result ...) are merged into one user message.

ZoomEarth-3B's own input -- one raw string in which the crop continues the assistant turn -- is not
a chat layout: it is the ``zoomearth`` profile (:mod:`zoomearth.agent.profiles`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from zoomearth.agent.base import CoordMode, Layout, PlanRequest, TranscriptEntry
from zoomearth.agent.prompting import PromptTemplate, load_template, render_tool_section
from zoomearth.agent.text.dates import DateChoice, dates_line
from zoomearth.geometry import PixelBox

__all__ = [
    "ChatMessage",
    "Conversation",
    "ImagePart",
    "Part",
    "Role",
    "TextPart",
    "ToolCallRef",
    "build_conversation",
    "stack_dates_text",
    "to_chat_dicts",
    "zoom_entry_text",
]

Role = Literal["system", "user", "assistant", "tool"]

UNKNOWN_LAYOUT_TEMPLATE: Final = (
    "Unknown conversation layout {layout!r}; the only chat layout is 'chat'. ZoomEarth-3B's "
    "assistant-turn continuation is the zoomearth profile (planner_profile=zoomearth)."
)
UNKNOWN_ENTRY_TEMPLATE: Final = (
    "Transcript entry {index} has unknown kind {kind!r}; kinds are planner, zoom, tool_result, "
    "feedback."
)
MISSING_VIEW_TEMPLATE: Final = (
    "Transcript entry {index} ({kind}) shows view {view_id}, which is not in request.views "
    "(known: {known})."
)
ZOOM_WITHOUT_VIEW_TEMPLATE: Final = "Transcript entry {index} is a zoom without a view_id."


@dataclass(frozen=True, slots=True)
class TextPart:
    """Text content of a message."""

    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image in a message, by view id (pixels come from ``PlanRequest.render(view_id)``)."""

    view_id: int


Part = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ToolCallRef:
    """A tool call of an assistant message, paired with the ``tool`` message answering it.

    Attributes:
        id: The call id (``call_<n>``), repeated as the tool message's ``tool_call_id``.
        name: Tool name.
        arguments: Tool arguments (a JSON object).
    """

    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class ChatMessage:
    """One chat message with neutral content.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        parts: Text and image parts in order (``tool`` messages carry text only).
        tool_calls: For assistant messages answered by tool messages: the calls, in order.
        tool_call_id: For ``tool`` messages: the id of the call answered.
        name: For ``tool`` messages: the tool's name.
    """

    role: Role
    parts: tuple[Part, ...]
    tool_calls: tuple[ToolCallRef, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The concatenated text parts."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def image_view_ids(self) -> tuple[int, ...]:
        """View ids of the image parts, in order."""
        return tuple(p.view_id for p in self.parts if isinstance(p, ImagePart))


@dataclass(frozen=True)
class Conversation:
    """The messages of one planner call.

    Attributes:
        messages: The messages, oldest first.
        layout: The layout they were built for.
        open_assistant: True when the last message is an assistant turn the model should continue
            (never for the ``chat`` layout; kept for backends that continue a turn).
        notes: Remarks for the run log (e.g. why the best-effort instruction was not added).
    """

    messages: tuple[ChatMessage, ...]
    layout: Layout
    open_assistant: bool = False
    notes: tuple[str, ...] = ()

    @property
    def image_view_ids(self) -> tuple[int, ...]:
        """View ids of all images in the order the model sees them."""
        return tuple(v for m in self.messages for v in m.image_view_ids)


def stack_dates_text(dates: Mapping[str, Any]) -> str:
    """The planner's line about a time stack's dates (from ``PlanRequest.dates``).

    E.g. ``"Dates available: 2009, 2014, 2020; you are looking at 2020."``
    """
    choice = DateChoice(
        str(dates["viewing"]),
        tuple(str(d) for d in dates.get("named") or ()),
        tuple(str(d) for d in dates.get("unknown") or ()),
    )
    return dates_line([str(d) for d in dates["available"]], choice)


def zoom_entry_text(region: PixelBox, width: int, height: int, label: str | None = None) -> str:
    """The text of a ``zoom`` transcript entry: what the crop shows (the graph writes it).

    The ``zoom_caption`` prompt section puts ``View k: `` before it in the user message that
    carries the crop, so it does not name the view itself. Training builds the same text.

    Args:
        region: The crop window in full-resolution pixels.
        width: Rendered width of the view in pixels.
        height: Rendered height of the view in pixels.
        label: The zoom's label as the planner wrote it, if any.

    Returns:
        ``full-resolution region [x1, y1, x2, y2] (W x H px) shown at w x h (label)``.
    """
    text = (
        f"full-resolution region {region} "
        f"({region.width:.0f}x{region.height:.0f} px) shown at {width}x{height}"
    )
    return f"{text} ({label})" if label else text


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


class _Builder:
    """Accumulates messages; merges consecutive user-side parts into one user message.

    Tool previews (chat layout) are *deferred* until the run of tool messages ends, so that all
    tool messages of one assistant turn follow it directly, as OpenAI servers require.
    """

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self.assistant: list[Part] | None = None
        self.user: list[Part] | None = None
        self.deferred: list[Part] = []

    def flush_assistant(self) -> None:
        if self.assistant is not None:
            self.messages.append(ChatMessage("assistant", tuple(self.assistant)))
            self.assistant = None

    def flush_user(self) -> None:
        if self.deferred:
            parts, self.deferred = self.deferred, []
            self.add_user(*parts)
        if self.user is not None:
            self.messages.append(ChatMessage("user", _merge_text(self.user)))
            self.user = None

    def add_assistant(self, *parts: Part) -> None:
        self.flush_user()
        if self.assistant is None:
            self.assistant = []
        self.assistant.extend(parts)

    def add_user(self, *parts: Part) -> None:
        self.flush_assistant()
        if self.deferred:
            parts, self.deferred = (*self.deferred, *parts), []
        if self.user is None:
            self.user = []
        elif self.user and isinstance(self.user[-1], TextPart) and isinstance(parts[0], TextPart):
            parts = (TextPart("\n\n" + parts[0].text), *parts[1:])
        self.user.extend(parts)

    def defer_user(self, *parts: Part) -> None:
        self.deferred.extend(parts)

    def add_tool(self, call: ToolCallRef, text: str) -> bool:
        """Add a tool message answering the latest assistant message; False if there is none."""
        self.flush_assistant()
        answerable = bool(self.messages) and self.messages[-1].role in ("assistant", "tool")
        if self.user is not None or not answerable:
            return False
        # Attach the call to the assistant message it answers (the last one before tool messages).
        for i in range(len(self.messages) - 1, -1, -1):
            msg = self.messages[i]
            if msg.role == "assistant":
                self.messages[i] = ChatMessage(
                    "assistant", msg.parts, (*msg.tool_calls, call), msg.tool_call_id, msg.name
                )
                break
        self.messages.append(
            ChatMessage("tool", (TextPart(text),), tool_call_id=call.id, name=call.name)
        )
        return True

    def finish(self) -> tuple[tuple[ChatMessage, ...], bool]:
        open_assistant = self.assistant is not None
        self.flush_assistant()
        self.flush_user()
        return tuple(self.messages), open_assistant


def _merge_text(parts: Sequence[Part]) -> tuple[Part, ...]:
    out: list[Part] = []
    for part in parts:
        if out and isinstance(part, TextPart) and isinstance(out[-1], TextPart):
            out[-1] = TextPart(out[-1].text + part.text)
        else:
            out.append(part)
    return tuple(out)


def _feedback_problems(entry: TranscriptEntry) -> list[str]:
    raw = entry.data.get("problems") if entry.data else None
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        problems = [
            str(p.get("message", p)) if isinstance(p, Mapping) else str(p) for p in raw if p
        ]
        if problems:
            return problems
    return [line.strip() for line in entry.text.splitlines() if line.strip()] or [entry.text]


def _tool_name(entry: TranscriptEntry) -> str:
    data = entry.data or {}
    return str(data.get("tool") or data.get("name") or "tool")


def build_conversation(
    request: PlanRequest,
    layout: Layout = "chat",
    coord_mode: CoordMode = "pixels",
    template: PromptTemplate | None = None,
) -> Conversation:
    """Build the neutral chat messages of one planner call.

    Args:
        request: The question, overview id, transcript, views and tools.
        layout: ``chat`` (the only chat layout; crops come in user messages).
        coord_mode: The frame the backend's model writes boxes in (worded in the instructions).
        template: Prompt sections (default: :func:`~zoomearth.agent.prompting.load_template`).

    Returns:
        The conversation; its images are view ids in the order the model sees them.

    Raises:
        ValueError: Unknown layout or transcript kind, or an entry refers to a view not in
            ``request.views`` (our bug, not the model's).
        PromptError: A prompt section could not be rendered.
    """
    if layout != "chat":
        raise ValueError(UNKNOWN_LAYOUT_TEMPLATE.format(layout=layout))
    tpl = template if template is not None else load_template(None)
    common: dict[str, Any] = {"coord_mode": coord_mode, "layout": layout}
    b = _Builder()
    notes: list[str] = []

    system = tpl.render("system", **common)
    if system:
        b.messages.append(ChatMessage("system", (TextPart(system),)))
    tool_section = render_tool_section(tpl, request.tools, **common)
    user = tpl.render(
        "user",
        question=request.first_question or request.question,
        tool_section=tool_section,
        has_tools=bool(request.tools),
        scene=dict(request.scene_info),
        artifacts=list(request.artifacts),
        **common,
    )
    if request.dates:
        # A time stack: say which dates exist and which one the views show.
        user = f"{user.rstrip()}\n{stack_dates_text(request.dates)}"
    _check_view(request, request.overview_id, -1, "overview")
    b.add_user(ImagePart(request.overview_id), TextPart(user))

    entries = request.transcript
    calls = 0
    for index, entry in enumerate(entries):
        if entry.kind == "planner":
            text = entry.text
            if text:
                b.add_assistant(TextPart(text))
            else:
                b.add_assistant()
        elif entry.kind == "zoom":
            if entry.view_id is None:
                raise ValueError(ZOOM_WITHOUT_VIEW_TEMPLATE.format(index=index))
            _check_view(request, entry.view_id, index, entry.kind)
            caption = tpl.render(
                "zoom_caption", view_id=entry.view_id, caption=entry.text, **common
            )
            b.add_user(TextPart(caption + "\n"), ImagePart(entry.view_id))
        elif entry.kind == "tool_result":
            if entry.view_id is not None:
                _check_view(request, entry.view_id, index, entry.kind)
            name = _tool_name(entry)
            text = tpl.render(
                "tool_result", tool=name, result=entry.text, view_id=entry.view_id, **common
            )
            # A tool message answering the assistant's call; the preview image follows in a user
            # message (OpenAI servers reject images in tool messages).
            calls += 1
            arguments = (entry.data or {}).get("arguments")
            call = ToolCallRef(
                f"call_{calls}", name, dict(arguments) if isinstance(arguments, Mapping) else {}
            )
            placed = b.add_tool(call, text)
            if placed and entry.view_id is not None:
                caption = tpl.render(
                    "zoom_caption", view_id=entry.view_id, caption=f"preview of {name}", **common
                )
                b.defer_user(TextPart(caption + "\n"), ImagePart(entry.view_id))
            if not placed:
                parts: list[Part] = [TextPart(text)]
                if entry.view_id is not None:
                    parts.append(ImagePart(entry.view_id))
                b.add_user(*parts)
        elif entry.kind == "feedback":
            text = tpl.render("feedback", problems=_feedback_problems(entry), **common)
            b.add_user(TextPart(text))
        elif entry.kind == "question":
            # A follow-up question in the same thread (views and artifacts carry over).
            b.add_user(TextPart(entry.text))
        else:
            raise ValueError(UNKNOWN_ENTRY_TEMPLATE.format(index=index, kind=entry.kind))

    if request.final:
        b.add_user(TextPart(tpl.render("final", **common)))

    messages, open_assistant = b.finish()
    return Conversation(messages, layout, open_assistant, tuple(notes))


def _check_view(request: PlanRequest, view_id: int, index: int, kind: str) -> None:
    if view_id not in request.views:
        raise ValueError(
            MISSING_VIEW_TEMPLATE.format(
                index=index, kind=kind, view_id=view_id, known=sorted(request.views)
            )
        )


# ---------------------------------------------------------------------------------------------
# Materialising
# ---------------------------------------------------------------------------------------------


def to_chat_dicts(
    conversation: Conversation | Sequence[ChatMessage],
    image: Callable[[int], dict[str, Any]],
    *,
    text: Callable[[str], str] = lambda s: s,
    with_tool_calls: bool = False,
    string_content: bool = False,
) -> list[dict[str, Any]]:
    """Materialise neutral messages as chat-template / OpenAI message dicts.

    Args:
        conversation: The conversation, or a slice of its messages.
        image: Returns the content part for a view id: ``{"type": "image"}`` for a transformers
            processor, ``{"type": "image_url", "image_url": {"url": "data:..."}}`` for OpenAI.
        text: Applied to every text part (e.g. to remove special-token strings).
        with_tool_calls: Add OpenAI ``tool_calls`` to assistant messages and ``tool_call_id`` to
            tool messages (OpenAI servers pair them; chat templates ignore them).
        string_content: Send messages without images as a plain ``content`` string (the most
            widely accepted form on OpenAI-compatible servers); else always a list of parts.

    Returns:
        ``[{"role": ..., "content": ...}, ...]``.
    """
    import json

    messages = conversation.messages if isinstance(conversation, Conversation) else conversation
    out: list[dict[str, Any]] = []
    for msg in messages:
        has_image = any(isinstance(p, ImagePart) for p in msg.parts)
        content: Any
        if msg.role == "tool":
            body = text(msg.text)
            content = body if string_content else [{"type": "text", "text": body}]
        elif string_content and not has_image:
            content = text(msg.text)
        else:
            content = [
                {"type": "text", "text": text(p.text)}
                if isinstance(p, TextPart)
                else image(p.view_id)
                for p in msg.parts
            ]
        item: dict[str, Any] = {"role": msg.role, "content": content}
        if with_tool_calls:
            if msg.role == "assistant" and msg.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": c.name,
                            "arguments": json.dumps(dict(c.arguments), ensure_ascii=False),
                        },
                    }
                    for c in msg.tool_calls
                ]
            if msg.role == "tool":
                item["tool_call_id"] = msg.tool_call_id
                if msg.name:
                    item["name"] = msg.name
        out.append(item)
    return out
