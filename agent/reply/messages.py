"""What the planner-reply parser tells the model, and the limits on what it reads.

The module-level ``*_TEMPLATE`` strings are the messages of :class:`Problem` records (each used
with ``str.format``; documented in ``docs/parsing.md``); :data:`MAX_BOXES`,
:data:`MAX_TOOL_CALLS` and :data:`MAX_PROBLEMS` bound one reply's work and feedback;
:class:`_Problems` collects a reply's problems within that bound and :func:`_clip` shortens what
is quoted back.
"""

from __future__ import annotations

from typing import Final

from zoomearth.agent.reply.records import Problem, ProblemCode

__all__ = ["MAX_BOXES", "MAX_PROBLEMS", "MAX_TOOL_CALLS", "TOOL_CALL_FORMAT", "ZOOM_FORMAT"]

# ---------------------------------------------------------------------------------------------
# Messages for the model (module-level templates; every *_TEMPLATE is used with str.format)
# ---------------------------------------------------------------------------------------------

ZOOM_FORMAT: Final = '{"bbox_2d": [x1, y1, x2, y2], "label": "<what is there>"}'
TOOL_CALL_FORMAT: Final = '<tool_call>{"name": "<tool name>", "arguments": {...}}</tool_call>'
# The same, with braces doubled for use inside str.format templates.
_ZOOM_FORMAT_T: Final = ZOOM_FORMAT.replace("{", "{{").replace("}", "}}")
_TOOL_CALL_FORMAT_T: Final = TOOL_CALL_FORMAT.replace("{", "{{").replace("}", "}}")

NOT_TEXT_TEMPLATE: Final = (
    "The reply could not be read ({kind} instead of text). Reply with <think>...</think> followed "
    "by a zoom box, a tool call or <answer>...</answer>."
)
UNCLOSED_TAG_TEMPLATE: Final = (
    "<{tag}> was opened but not closed; close it with </{tag}>. I read it up to {until}."
)
UNEXPECTED_TAG_TEMPLATE: Final = (
    "</{tag}> has no matching <{tag}> before it, so it was ignored; write <{tag}>...</{tag}>."
)
BAD_JSON_TEMPLATE: Final = (
    "{what} is not valid JSON ({reason}): {snippet}. {consequence} Write it as {expected}."
)
BAD_BOX_LENGTH_TEMPLATE: Final = (
    "A box needs exactly four numbers [x1, y1, x2, y2]; got {count} in {snippet}. "
    "This box was not zoomed."
)
BAD_BOX_VALUE_TEMPLATE: Final = (
    "Box coordinates must be finite numbers, as in [x1, y1, x2, y2]; got {value} in {snippet}. "
    "This box was not zoomed."
)
BAD_BOX_TYPE_TEMPLATE: Final = (
    '"bbox_2d" must be a list of four numbers [x1, y1, x2, y2]; got {value} in {snippet}. '
    "This box was not zoomed."
)
BAD_VIEW_TEMPLATE: Final = (
    '"view" must be the whole number of the view the box is drawn in (0 is the first overview); '
    "got {value} in {snippet}. This box was not zoomed."
)
DUPLICATE_ZOOM_TEMPLATE: Final = (
    "The box {box} was requested more than once; it is zoomed once. Ask for each region once."
)
BAD_TOOL_CALL_TEMPLATE: Final = (
    "Tool call not understood: {reason} in {snippet}. Write " + _TOOL_CALL_FORMAT_T + "."
)
MULTIPLE_ANSWERS_TEMPLATE: Final = (
    "Give exactly one <answer>...</answer>; found {count}, and only the first complete one, "
    '"{used}", was used.'
)
EMPTY_ANSWER_TEMPLATE: Final = (
    "<answer></answer> was empty; put your final answer (a word or short phrase) inside it."
)
TOO_MANY_ITEMS_TEMPLATE: Final = "Too many {what} in one reply; only the first {limit} were read."
TOO_MANY_PROBLEMS_TEMPLATE: Final = "{count} further problems were found but are not listed."
NO_ACTION_TEMPLATE: Final = (
    "The reply had no usable zoom box, tool call or answer. Zoom with " + _ZOOM_FORMAT_T + ", "
    "call a tool with " + _TOOL_CALL_FORMAT_T + ", or answer with <answer>...</answer>."
)
NO_STEPS_LEFT_TEMPLATE: Final = (
    "No steps are left, so zooms and tool calls are no longer run. Answer now with "
    "<answer>...</answer>, using what you have seen so far."
)

# ---------------------------------------------------------------------------------------------
# Limits (they keep the parser linear and its feedback short)
# ---------------------------------------------------------------------------------------------

#: Most ``bbox_2d`` keys examined in one reply; the rest are reported as ``too_many_items``.
MAX_BOXES: Final = 64
#: Most ``<tool_call>`` blocks read, and most tool calls kept, in one reply.
MAX_TOOL_CALLS: Final = 32
#: Most problems listed for one reply; the rest are counted in one ``too_many_problems`` record.
MAX_PROBLEMS: Final = 20

_SNIPPET_CHARS: Final = 120  # longest excerpt quoted back to the model


def _clip(text: str, limit: int = _SNIPPET_CHARS) -> str:
    """Shorten ``text`` to ``limit`` characters on one line, for quoting back to the model."""
    flat = " ".join(text[: limit * 4].split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _Problems:
    """Collects problems, keeping at most :data:`MAX_PROBLEMS` and counting the rest."""

    __slots__ = ("dropped", "items")

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.dropped = 0

    def add(self, code: ProblemCode, message: str) -> Problem:
        problem = Problem(str(code), message)
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(problem)
        else:
            self.dropped += 1
        return problem

    def result(self) -> tuple[Problem, ...]:
        if not self.dropped:
            return tuple(self.items)
        extra = Problem(
            str(ProblemCode.TOO_MANY_PROBLEMS),
            TOO_MANY_PROBLEMS_TEMPLATE.format(count=self.dropped),
        )
        return (*self.items, extra)
