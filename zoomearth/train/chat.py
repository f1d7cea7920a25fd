"""The ``agent`` profile's training conversations: exactly the planner's inputs at inference.

At inference (``planner_profile=agent``) the graph asks the planner for one turn at a time with a
:class:`~zoomearth.agent.base.PlanRequest`; the ``transformers`` planner turns it into neutral chat
messages (:func:`~zoomearth.agent.conversation.build_conversation`, layout ``chat``) and renders
them with the checkpoint's chat template
(:func:`~zoomearth.agent.backends.hf.build_prompt_text`). For a two-stage zoom trajectory the two
planner calls see::

    stage 1: [system]  user(overview image, the user section: question, scene facts, tools)
    stage 2: ...       assistant(stage-1 text)  user("View 1: <zoom caption>" newline, crop image)

where the zoom caption is the text of the transcript entry the graph's zoom node writes
(:func:`zoom_caption`). The training code builds the same :class:`PlanRequest` objects
(:func:`agent_request`) and goes through the same two functions, so an SFT sequence or a GRPO
rollout is the stage-2 input of inference followed by the stage-2 output, and its stage-1 prefix
is the stage-1 input.

What the requests are built from besides the question -- the prompt sections (``planner_prompt``
over the packaged default), the tools offered (the tool registry's prompt specs, as the graph
gives them) and the box frame wording (``coord_mode``) -- is fixed when the data is prepared and
stored once next to it, in ``agent_prompt.json`` (:class:`AgentPrompt`); each row carries its
question, scene facts (:func:`scene_facts`) and views.

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zoomearth.errors import ZoomEarthError
from zoomearth.geometry import PixelBox, ViewSpec
from zoomearth.scene.remote import source_key

if TYPE_CHECKING:
    from zoomearth.agent.base import CoordMode, PlanRequest
    from zoomearth.agent.conversation import ChatMessage, Conversation
    from zoomearth.agent.parsing import ZoomRequest
    from zoomearth.agent.prompting import PromptTemplate
    from zoomearth.config import Settings

__all__ = [
    "AGENT_PROMPT_FILE",
    "AgentPrompt",
    "ChatLayoutError",
    "agent_conversation",
    "agent_request",
    "assistant_segments",
    "first_zoom",
    "messages_from_dicts",
    "messages_to_dicts",
    "overview_from_row",
    "scene_facts",
    "shown_text",
    "special_strings",
    "split_assistant_turn",
    "zoom_caption",
]

#: The file, next to ``sft.jsonl`` / ``grpo.jsonl``, holding the agent data's :class:`AgentPrompt`.
AGENT_PROMPT_FILE: Final = "agent_prompt.json"

NO_PROMPT_FILE_TEMPLATE: Final = (
    "{path} is missing: agent-profile data needs the prompt sections and tools it was prepared "
    "with. Data prepared by an earlier version (crops continuing the assistant turn) no longer "
    "matches the agent's chat layout: run `zoomearth train prepare ... --profile agent` again."
)
BAD_PROMPT_FILE_TEMPLATE: Final = "{path} is not a valid agent prompt file ({error})."
NOT_A_PREFIX_TEMPLATE: Final = (
    "The chat template's rendering of turn {turn} does not continue the previous turn's text: "
    "the template rewrites earlier messages, so the trained sequence could not be the planner's "
    "input. Use a checkpoint whose chat template renders history unchanged (Qwen2-VL family)."
)
TEXT_CHANGED_TEMPLATE: Final = (
    "The chat template shows assistant turn {turn} differently from the text the model wrote "
    "({snippet!r}...); training on that text would not match the planner's next input."
)
NO_TURN_END_TEMPLATE: Final = (
    "The chat template closes assistant turn {turn} with no special token ({tail!r}...); the "
    "trained sequence needs the end-of-turn token the model stops at."
)
NO_RENDER_TEMPLATE: Final = "Training requests carry no pixels (view {view_id} was asked for)."


class ChatLayoutError(ZoomEarthError, ValueError):
    """Agent-profile data or a chat template cannot give the planner's exact sequence."""


@dataclass(frozen=True)
class AgentPrompt:
    """What agent-profile requests are built from besides the question and the scene.

    Attributes:
        template: The prompt sections (``planner_prompt`` over the packaged default).
        tools: The tool specs the graph offers (``ToolRegistry.tool_specs_for_prompt()``);
            empty: no tools section, as for an agent run with an empty registry.
        coord_mode: The frame the boxes are worded in (the data writes ``pixels`` boxes).
    """

    template: PromptTemplate
    tools: tuple[Mapping[str, Any], ...] = ()
    coord_mode: CoordMode = "pixels"

    @classmethod
    def from_settings(
        cls, settings: Settings, tools: Sequence[Mapping[str, Any]] | None = None
    ) -> AgentPrompt:
        """The prompt the agent would use under ``settings``.

        Args:
            settings: Uses ``planner_prompt``.
            tools: Tool specs; None: the process-wide tool registry's (built-ins and plugins),
                which is what :class:`zoomearth.api.Agent` offers by default.

        Returns:
            The prompt (boxes worded in ``pixels``).
        """
        from zoomearth.agent.prompting import load_template

        if tools is None:
            from zoomearth.tools.registry import get_registry

            tools = get_registry().tool_specs_for_prompt()
        return cls(load_template(settings.planner_prompt), tuple(dict(t) for t in tools))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the contents of ``agent_prompt.json``)."""
        return {
            "layout": "chat",
            "coord_mode": self.coord_mode,
            "template_source": self.template.source,
            "sections": dict(self.template.sections),
            "tools": [dict(t) for t in self.tools],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentPrompt:
        """The inverse of :meth:`to_dict`."""
        from zoomearth.agent.prompting import PromptTemplate

        template = PromptTemplate(
            {str(k): str(v) for k, v in data["sections"].items()}, str(data["template_source"])
        )
        template.check()
        return cls(template, tuple(dict(t) for t in data["tools"]), data["coord_mode"])

    def same_as(self, other: AgentPrompt) -> bool:
        """Whether both build the same text (the template's source path aside)."""
        a, b = self.to_dict(), other.to_dict()
        a.pop("template_source")
        b.pop("template_source")
        # Compared as JSON reads them back (tuples and lists alike).
        return bool(json.loads(json.dumps(a)) == json.loads(json.dumps(b)))

    def write(self, folder: Path) -> Path:
        """Write ``folder/agent_prompt.json``."""
        path = Path(folder) / AGENT_PROMPT_FILE
        # Key order is kept: the tools section serialises each spec in its own order.
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1)
        path.write_text(text + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> AgentPrompt:
        """Read ``folder/agent_prompt.json``.

        Raises:
            ChatLayoutError: The file is missing (data of an older version) or invalid.
        """
        path = Path(folder) / AGENT_PROMPT_FILE
        if not path.is_file():
            raise ChatLayoutError(NO_PROMPT_FILE_TEMPLATE.format(path=path))
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, ZoomEarthError) as exc:
            raise ChatLayoutError(BAD_PROMPT_FILE_TEMPLATE.format(path=path, error=exc)) from None


def scene_facts(scene: Any) -> dict[str, Any]:
    """The ``scene_info`` the graph gives the planner for a scene (``graphs.builder``).

    Args:
        scene: An open :class:`zoomearth.scene.Scene`.

    Returns:
        ``{"width", "height", "crs", "transform", "path"}`` as the graph's scene reference holds
        them (``transform``: the affine's six numbers, None when not georeferenced).
    """
    return {
        "width": int(scene.width),
        "height": int(scene.height),
        "crs": scene.crs_string,
        "transform": list(scene.transform)[:6] if scene.georeferenced else None,
        "path": source_key(scene.source),
    }


def zoom_caption(view: ViewSpec, label: str | None = None) -> str:
    """The text of the ``zoom`` transcript entry the graph's zoom node writes for a view.

    ``build_conversation`` renders it through the ``zoom_caption`` prompt section into the user
    message that carries the crop. The graph and training share
    :func:`~zoomearth.agent.conversation.zoom_entry_text`, so the two cannot drift.

    Args:
        view: The rendered zoom view (its region is the crop window, snapped to whole pixels; its
            size the rendered size).
        label: The zoom's ``label`` as the planner wrote it, if any.

    Returns:
        ``full-resolution region [x1, y1, x2, y2] (W x H px) shown at w x h (label)``.
    """
    from zoomearth.agent.conversation import zoom_entry_text

    return zoom_entry_text(view.region, view.width, view.height, label)


def first_zoom(text: str) -> ZoomRequest | None:
    """The first zoom the graph would act on in a planner turn (the agent's parser), or None."""
    from zoomearth.agent.parsing import parse_response, resolve_turn

    decision = resolve_turn(parse_response(text), can_act=True)
    return decision.zooms[0] if decision.zooms else None


def _no_pixels(view_id: int) -> Any:
    raise ChatLayoutError(NO_RENDER_TEMPLATE.format(view_id=view_id))


def agent_request(
    question: str,
    scene_info: Mapping[str, Any],
    overview: ViewSpec,
    prompt: AgentPrompt,
    *,
    stage1: str | None = None,
    crop: ViewSpec | None = None,
    label: str | None = None,
) -> PlanRequest:
    """The graph's :class:`PlanRequest` for stage 1 (no ``stage1``) or stage 2 of a question.

    Args:
        question: The question.
        scene_info: The scene facts (:func:`scene_facts`).
        overview: The overview view (view 0).
        prompt: Tools (and template, used by :func:`agent_conversation`).
        stage1: The model's stage-1 text (the planner turn of the transcript).
        crop: The crop view (view 1) shown after ``stage1``.
        label: The zoom's label (in the caption).

    Returns:
        The request; its ``render`` raises (training reads images from files).
    """
    from zoomearth.agent.base import PlanRequest, TranscriptEntry

    transcript: list[TranscriptEntry] = []
    views = {0: ViewSpec(0, overview.region, overview.width, overview.height)}
    if stage1 is not None:
        transcript.append(TranscriptEntry("planner", stage1, None, {"step": 1}))
    if crop is not None:
        views[crop.view_id] = crop
        transcript.append(
            TranscriptEntry("zoom", zoom_caption(crop, label), crop.view_id, {"label": label})
        )
    return PlanRequest(
        question=question,
        overview_id=0,
        transcript=transcript,
        views=views,
        render=_no_pixels,
        tools=[dict(t) for t in prompt.tools],
        final=False,
        scene_info=dict(scene_info),
        artifacts=[],
        first_question=None,
    )


def agent_conversation(
    question: str,
    scene_info: Mapping[str, Any],
    overview: ViewSpec,
    prompt: AgentPrompt,
    *,
    stage1: str | None = None,
    crop: ViewSpec | None = None,
    label: str | None = None,
) -> Conversation:
    """The planner's neutral conversation for :func:`agent_request`'s request.

    ``build_conversation(request, "chat", prompt.coord_mode, prompt.template)`` -- what
    ``TransformersPlanner.build`` returns at inference.
    """
    from zoomearth.agent.conversation import build_conversation

    request = agent_request(
        question, scene_info, overview, prompt, stage1=stage1, crop=crop, label=label
    )
    return build_conversation(request, "chat", prompt.coord_mode, prompt.template)


def messages_to_dicts(
    messages: Conversation | Sequence[ChatMessage], images: Mapping[int, str]
) -> list[dict[str, Any]]:
    """Neutral messages as JSON rows, through :func:`~zoomearth.agent.conversation.to_chat_dicts`.

    Each image part names its file: ``{"type": "image", "image": PATH}``.
    """
    from zoomearth.agent.conversation import to_chat_dicts

    return to_chat_dicts(messages, lambda view_id: {"type": "image", "image": images[view_id]})


def messages_from_dicts(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[tuple[ChatMessage, ...], list[str]]:
    """The inverse of :func:`messages_to_dicts`: neutral messages and the image files in order.

    Image parts become :class:`~zoomearth.agent.conversation.ImagePart` numbered by their place
    in the conversation (the processor only needs the order).
    """
    from zoomearth.agent.conversation import ChatMessage, ImagePart, Part, TextPart

    images: list[str] = []
    messages: list[ChatMessage] = []
    for row in rows:
        content = row["content"]
        parts: list[Part] = []
        if isinstance(content, str):
            parts.append(TextPart(content))
        else:
            for part in content:
                if part["type"] == "image":
                    images.append(str(part["image"]))
                    parts.append(ImagePart(len(images) - 1))
                else:
                    parts.append(TextPart(str(part["text"])))
        messages.append(ChatMessage(row["role"], tuple(parts)))
    return tuple(messages), images


def special_strings(processor: Any) -> list[str]:
    """The tokenizer's special-token strings, longest first (as ``build_prompt_text`` uses)."""
    from zoomearth.agent.backends.hf import _special_token_strings

    return list(_special_token_strings(getattr(processor, "tokenizer", processor)))


def shown_text(processor: Any, text: str) -> str:
    """A message text as ``build_prompt_text`` passes it on: special-token strings removed."""
    return _clean(text, special_strings(processor))


def _clean(text: str, specials: Sequence[str]) -> str:
    # As build_prompt_text cleans text parts: special-token strings removed, longest first.
    for token in specials:
        if token in text:
            text = text.replace(token, "")
    return text


def split_assistant_turn(
    before: str, after: str, text: str, specials: Sequence[str], turn: int = 1
) -> tuple[str, str]:
    """Split the chat template's continuation after an assistant turn.

    Args:
        before: The prompt that ends with the generation prompt of the turn.
        after: The next prompt (the turn rendered as history, the next user message, the next
            generation prompt).
        text: The assistant's text as the template shows it (special-token strings removed).
        specials: The tokenizer's special-token strings, longest first.
        turn: The turn's number (for messages).

    Returns:
        ``(turn_text, rest)``: ``text`` + the special token the template closes it with (what the
        model writes, its stop token included), and the environment's text up to the end of
        ``after``.

    Raises:
        ChatLayoutError: ``after`` does not continue ``before`` with ``text`` and a special token.
    """
    if not after.startswith(before):
        raise ChatLayoutError(NOT_A_PREFIX_TEMPLATE.format(turn=turn))
    rest = after[len(before) :]
    if not rest.startswith(text):
        raise ChatLayoutError(TEXT_CHANGED_TEMPLATE.format(turn=turn, snippet=text[:40]))
    tail = rest[len(text) :]
    end = next((s for s in specials if tail.startswith(s)), None)
    if end is None:
        raise ChatLayoutError(NO_TURN_END_TEMPLATE.format(turn=turn, tail=tail[:20]))
    return text + end, tail[len(end) :]


def assistant_segments(
    processor: Any, messages: Sequence[ChatMessage]
) -> tuple[tuple[str, bool], ...]:
    """A whole conversation as ``(text, trained)`` segments, rendered as the planner renders it.

    Every prompt before an assistant message is ``build_prompt_text`` of the messages before it
    (exactly the planner's input for that turn); the assistant's text and the end-of-turn token
    the template closes it with are the trained segments. Each rendered prompt must continue the
    previous one with that text and token (checked), so the segments joined are one sequence.

    Args:
        processor: The checkpoint's processor (chat template, tokenizer).
        messages: Neutral messages; the last one should be an assistant message.

    Returns:
        Segments in order; untrained ones are the prompts' new parts (the environment's text).

    Raises:
        ChatLayoutError: The chat template does not render the conversation as one growing text.
    """
    from zoomearth.agent.backends.hf import build_prompt_text
    from zoomearth.agent.conversation import Conversation

    specials = special_strings(processor)
    segments: list[tuple[str, bool]] = []
    done = ""
    pending: tuple[str, int] | None = None  # the last assistant text, until its end is known
    turn = 0
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        prompt = build_prompt_text(processor, Conversation(tuple(messages[:index]), "chat"))
        if pending is not None:
            text, number = pending
            trained, rest = split_assistant_turn(done, prompt, text, specials, number)
            segments.append((trained, True))
            segments.append((rest, False))
        else:
            segments.append((prompt, False))
        done = prompt
        turn += 1
        pending = (_clean(message.text, specials), turn)
    if pending is not None:
        text, number = pending
        # Nothing follows the last turn: its end is the token the earlier turns end with, or the
        # one a probe continuation shows.
        probe = build_prompt_text(
            processor, Conversation((*messages, _probe_user()), "chat")
        )
        trained, _rest = split_assistant_turn(done, probe, text, specials, number)
        segments.append((trained, True))
    return tuple(segments)


def _probe_user() -> ChatMessage:
    from zoomearth.agent.conversation import ChatMessage, TextPart

    return ChatMessage("user", (TextPart("."),))


def overview_from_row(row: Mapping[str, Any]) -> ViewSpec:
    """The overview view of a prepared row (``overview_spec``)."""
    spec = row["overview_spec"]
    if isinstance(spec, str):
        spec = json.loads(spec)
    return ViewSpec(
        0,
        PixelBox(*(float(v) for v in spec["region_xyxy"])),
        int(spec["width"]),
        int(spec["height"]),
    )
