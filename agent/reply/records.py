"""The value types of the planner-reply parser and the stable codes of its problems.

:func:`zoomearth.agent.parsing.parse_response` returns a :class:`ParsedResponse` (with
:class:`ZoomRequest`, :class:`ToolCallRequest` and :class:`Problem` records) and
:func:`zoomearth.agent.parsing.resolve_turn` a :class:`TurnDecision`. All are re-exported by
:mod:`zoomearth.agent.parsing` and :mod:`zoomearth.agent`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "ParsedResponse",
    "Problem",
    "ProblemCode",
    "ToolCallRequest",
    "TurnDecision",
    "ZoomRequest",
]


class ProblemCode(StrEnum):
    """Stable codes of :class:`Problem` records (documented in ``docs/parsing.md``).

    Codes emitted by :func:`parse_response` and :func:`resolve_turn` come first; the last group is
    reserved for the validation step that checks requests against the tool registry and the views.
    """

    NOT_TEXT = "not_text"
    UNCLOSED_TAG = "unclosed_tag"
    UNEXPECTED_TAG = "unexpected_tag"
    BAD_JSON = "bad_json"
    BAD_BOX_LENGTH = "bad_box_length"
    BAD_BOX_VALUE = "bad_box_value"
    BAD_VIEW = "bad_view"
    DUPLICATE_ZOOM = "duplicate_zoom"
    BAD_TOOL_CALL = "bad_tool_call"
    MULTIPLE_ANSWERS = "multiple_answers"
    EMPTY_ANSWER = "empty_answer"
    TOO_MANY_ITEMS = "too_many_items"
    TOO_MANY_PROBLEMS = "too_many_problems"
    NO_ACTION = "no_action"
    # Reserved for the validation step (not emitted by this module).
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"
    UNKNOWN_VIEW = "unknown_view"
    BOX_OUTSIDE_IMAGE = "box_outside_image"
    INVERTED_BOX = "inverted_box"


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the model got wrong, to be shown to it on its next turn.

    Attributes:
        code: One of the :class:`ProblemCode` values (a ``str``; stable, documented).
        message: One or two sentences for the model: what was wrong and how to write it instead.
    """

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ZoomRequest:
    """One ``{"bbox_2d": [...], "label": ..., "view": ...}`` object found in the reply.

    Attributes:
        box: ``(x1, y1, x2, y2)`` exactly as written, as finite floats, in pixels of the view named
            by ``view`` (of the latest view when ``view`` is None). Not converted, not clipped and
            not reordered: an inverted box stays inverted until validation rejects it.
        label: The ``label`` value (non-strings are converted with ``str``), or None when absent.
        view: The ``view`` value as an int, or None when absent.
        source: The raw snippet of the reply the request was read from.
        frame: ``"view"`` (the default, and always for parsed model text): ``box`` is in pixels of
            the view described above. ``"full"``: ``box`` is already in full-resolution pixels of
            the source raster and ``view`` is None (only structured planner turns, such as script
            actions, produce it).
    """

    box: tuple[float, float, float, float]
    label: str | None
    view: int | None
    source: str
    frame: str = "view"


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """One tool call read from a ``<tool_call>`` block.

    Attributes:
        name: The tool name as written (checked against the registry later).
        arguments: The arguments object; ``{}`` when the call gives none; None when they were
            present but could not be read as a JSON object (validation must reject such a call).
        raw_arguments: The arguments as written in the reply (the inner text when they arrived as a
            JSON string); ``""`` when absent.
        source: The raw JSON text of the call.
        problems: Problems that concern this call only (they are also in
            :attr:`ParsedResponse.problems`).
    """

    name: str
    arguments: dict[str, Any] | None = field(hash=False)
    raw_arguments: str
    source: str
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """Everything :func:`parse_response` read from one reply.

    Attributes:
        think: The text of all ``<think>`` blocks, each stripped, joined by a blank line.
        zooms: Zoom requests in the order they appear.
        tool_calls: Tool calls in the order they appear.
        answer: The answer text (stripped), or None when there is none.
        answer_closed: True when the answer came from a complete ``<answer>...</answer>`` block.
        problems: Everything that was repaired or rejected, in the order found.
    """

    think: str
    zooms: tuple[ZoomRequest, ...]
    tool_calls: tuple[ToolCallRequest, ...]
    answer: str | None
    answer_closed: bool
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class TurnDecision:
    """What the graph does with one reply (see :func:`resolve_turn`).

    Attributes:
        zooms: Zooms to run now (empty when the turn ends the run).
        tool_calls: Tool calls to run now (empty when the turn ends the run).
        stage_answer: The answer given in a turn that also asked for actions (the reference keeps
            it as the stage-1 answer); None otherwise.
        final_answer: The answer that ends the run, or None.
        problems: The reply's problems, plus ``no_action`` when the turn is unusable.
    """

    zooms: tuple[ZoomRequest, ...]
    tool_calls: tuple[ToolCallRequest, ...]
    stage_answer: str | None
    final_answer: str | None
    problems: tuple[Problem, ...]

    @property
    def actions(self) -> tuple[ZoomRequest | ToolCallRequest, ...]:
        """Zooms then tool calls, the actions to run this turn."""
        return (*self.zooms, *self.tool_calls)

    @property
    def is_final(self) -> bool:
        """Whether this turn ends the run with an answer."""
        return self.final_answer is not None
