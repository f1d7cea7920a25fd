"""Parse one planner reply into zoom requests, tool calls and an answer.

The planner (ZoomEarth-3B or any VLM prompted with the same protocol) writes::

    <think> reasoning ... {"bbox_2d": [x1, y1, x2, y2], "label": "...", "view": k} ... </think>
    <tool_call>{"name": "...", "arguments": {...}}</tool_call>
    <answer> final answer </answer>

:func:`parse_response` turns that text into a :class:`ParsedResponse`: it is a pure function of the
text, never raises on model output, runs in time linear in the input, and lists everything it had
to repair or reject as :class:`Problem` records whose messages are written for the model to read on
its next turn. :func:`resolve_turn` then applies the precedence rule (actions before an answer while
budgets remain). Checking a request against the tool registry and the views (unknown tool, invalid
arguments, box outside the image) is a separate, later step that reuses :class:`Problem` and the
reserved codes of :class:`ProblemCode`.

Boxes are reported exactly as the model wrote them (``x1, y1, x2, y2`` in the pixel frame of the
view named by ``view``, or of the latest view when ``view`` is absent): not converted, not clipped,
not reordered. The full rules, with a table of inputs and outcomes that the tests replay, are in
``docs/parsing.md``.

Where the parts live: this module holds the entry points (:func:`parse_response`,
:func:`resolve_turn`, :func:`cut_before_answer`); the parts are in :mod:`zoomearth.agent.reply`
-- the value types (:mod:`~zoomearth.agent.reply.records`), the messages for the model and the
limits (:mod:`~zoomearth.agent.reply.messages`), the lenient JSON reader
(:mod:`~zoomearth.agent.reply.lenient_json`), tags and blocks (:mod:`~zoomearth.agent.reply.tags`),
zooms (:mod:`~zoomearth.agent.reply.zooms`) and tool calls
(:mod:`~zoomearth.agent.reply.tool_calls`). The value types, limits, every ``*_TEMPLATE`` and every
compiled pattern are re-exported here under their old names.
"""

from __future__ import annotations

from zoomearth.agent.reply.lenient_json import _HEX4_RE as _HEX4_RE
from zoomearth.agent.reply.lenient_json import _IDENT_RE as _IDENT_RE
from zoomearth.agent.reply.lenient_json import _NON_FINITE_RE as _NON_FINITE_RE
from zoomearth.agent.reply.lenient_json import _NUMBER_RE as _NUMBER_RE
from zoomearth.agent.reply.lenient_json import _STRING_CHUNK_RE as _STRING_CHUNK_RE
from zoomearth.agent.reply.lenient_json import _WS_RE as _WS_RE
from zoomearth.agent.reply.messages import BAD_BOX_LENGTH_TEMPLATE as BAD_BOX_LENGTH_TEMPLATE
from zoomearth.agent.reply.messages import BAD_BOX_TYPE_TEMPLATE as BAD_BOX_TYPE_TEMPLATE
from zoomearth.agent.reply.messages import BAD_BOX_VALUE_TEMPLATE as BAD_BOX_VALUE_TEMPLATE
from zoomearth.agent.reply.messages import BAD_JSON_TEMPLATE as BAD_JSON_TEMPLATE
from zoomearth.agent.reply.messages import BAD_TOOL_CALL_TEMPLATE as BAD_TOOL_CALL_TEMPLATE
from zoomearth.agent.reply.messages import BAD_VIEW_TEMPLATE as BAD_VIEW_TEMPLATE
from zoomearth.agent.reply.messages import DUPLICATE_ZOOM_TEMPLATE as DUPLICATE_ZOOM_TEMPLATE
from zoomearth.agent.reply.messages import (
    EMPTY_ANSWER_TEMPLATE,
    MAX_TOOL_CALLS,
    MULTIPLE_ANSWERS_TEMPLATE,
    NO_ACTION_TEMPLATE,
    NO_STEPS_LEFT_TEMPLATE,
    NOT_TEXT_TEMPLATE,
    TOO_MANY_ITEMS_TEMPLATE,
    _clip,
    _Problems,
)
from zoomearth.agent.reply.messages import MAX_BOXES as MAX_BOXES
from zoomearth.agent.reply.messages import MAX_PROBLEMS as MAX_PROBLEMS
from zoomearth.agent.reply.messages import TOO_MANY_PROBLEMS_TEMPLATE as TOO_MANY_PROBLEMS_TEMPLATE
from zoomearth.agent.reply.messages import TOOL_CALL_FORMAT as TOOL_CALL_FORMAT
from zoomearth.agent.reply.messages import UNCLOSED_TAG_TEMPLATE as UNCLOSED_TAG_TEMPLATE
from zoomearth.agent.reply.messages import UNEXPECTED_TAG_TEMPLATE as UNEXPECTED_TAG_TEMPLATE
from zoomearth.agent.reply.messages import ZOOM_FORMAT as ZOOM_FORMAT
from zoomearth.agent.reply.records import (
    ParsedResponse,
    Problem,
    ProblemCode,
    ToolCallRequest,
    TurnDecision,
    ZoomRequest,
)
from zoomearth.agent.reply.tags import _ANSWER_OPEN_RE, _Block, _pair_blocks, _scan_tags, _Spans
from zoomearth.agent.reply.tags import _TAG_RE as _TAG_RE
from zoomearth.agent.reply.tool_calls import _ARGS_KEY_RE as _ARGS_KEY_RE
from zoomearth.agent.reply.tool_calls import _NAME_KEY_RE as _NAME_KEY_RE
from zoomearth.agent.reply.tool_calls import _read_tool_calls
from zoomearth.agent.reply.zooms import _FIELD_KEY_RE as _FIELD_KEY_RE
from zoomearth.agent.reply.zooms import _find_zooms

__all__ = [
    "MAX_BOXES",
    "MAX_PROBLEMS",
    "MAX_TOOL_CALLS",
    "ParsedResponse",
    "Problem",
    "ProblemCode",
    "ToolCallRequest",
    "TurnDecision",
    "ZoomRequest",
    "cut_before_answer",
    "parse_response",
    "resolve_turn",
]

# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def _as_text(text: object, problems: _Problems) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, bytes | bytearray | memoryview):
        return bytes(text).decode("utf-8", errors="replace")
    kind = "nothing" if text is None else f"a {type(text).__name__}"
    problems.add(ProblemCode.NOT_TEXT, NOT_TEXT_TEMPLATE.format(kind=kind))
    return ""


def parse_response(text: str | bytes | None) -> ParsedResponse:
    """Parse one planner reply.

    Pure and total: the result depends only on ``text``, and no input makes it raise. Time is
    linear in the length of the text. The rules (which box counts, which answer wins, what is
    repaired) are listed with examples in ``docs/parsing.md``.

    Args:
        text: The reply. ``bytes`` are decoded as UTF-8 with invalid sequences replaced; ``None``
            (or any other non-text object) is read as an empty reply with a ``not_text`` problem.

    Returns:
        The think text, zoom requests (boxes exactly as written), tool calls (name and raw
        arguments), the answer, and the problems found, each with a message for the model.
    """
    problems = _Problems()
    s = _as_text(text, problems)
    tags = _scan_tags(s)
    blocks = _pair_blocks(s, tags, problems)

    think = "\n\n".join(
        piece
        for piece in (s[b.content_start : b.content_end].strip() for b in blocks["think"])
        if piece
    )

    excluded = _Spans([(b.start, b.end) for b in (*blocks["tool_call"], *blocks["answer"])])
    zooms = _find_zooms(s, excluded, problems)

    tool_calls: list[ToolCallRequest] = []
    truncated = False
    for count, block in enumerate(blocks["tool_call"]):
        if count >= MAX_TOOL_CALLS or len(tool_calls) >= MAX_TOOL_CALLS:
            truncated = True
            break
        tool_calls.extend(_read_tool_calls(s, block, problems))
    if truncated or len(tool_calls) > MAX_TOOL_CALLS:
        del tool_calls[MAX_TOOL_CALLS:]
        problems.add(
            ProblemCode.TOO_MANY_ITEMS,
            TOO_MANY_ITEMS_TEMPLATE.format(what="tool calls", limit=MAX_TOOL_CALLS),
        )

    answer, closed = _choose_answer(s, blocks["answer"], problems)
    return ParsedResponse(
        think=think,
        zooms=tuple(zooms),
        tool_calls=tuple(tool_calls),
        answer=answer,
        answer_closed=closed,
        problems=problems.result(),
    )


def _choose_answer(text: str, blocks: list[_Block], problems: _Problems) -> tuple[str | None, bool]:
    """The first complete non-empty answer wins; else the first unclosed one; else None."""
    texts = [(text[b.content_start : b.content_end].strip(), b.closed) for b in blocks]
    if any(not t for t, _ in texts):
        problems.add(ProblemCode.EMPTY_ANSWER, EMPTY_ANSWER_TEMPLATE.format())
    filled = [(t, c) for t, c in texts if t]
    if not filled:
        return None, False
    chosen = next(((t, c) for t, c in filled if c), filled[0])
    if len(filled) > 1:
        problems.add(
            ProblemCode.MULTIPLE_ANSWERS,
            MULTIPLE_ANSWERS_TEMPLATE.format(count=len(filled), used=_clip(chosen[0], 60)),
        )
    return chosen


def resolve_turn(parsed: ParsedResponse, *, can_act: bool) -> TurnDecision:
    """Decide what a parsed reply does: act, answer, or go back to the planner.

    The precedence rule (the reference crops whenever stage 1 emits a box and keeps that turn's
    answer as the stage-1 answer):

    * ``can_act`` and the reply has zooms or tool calls: run them; the reply's answer, if any, is
      kept as ``stage_answer``; there is no final answer yet.
    * otherwise, if the reply has an answer: it is the ``final_answer``.
    * otherwise: nothing usable; a ``no_action`` problem is added.

    Tool calls whose arguments could not be read count as actions; the validation step rejects them
    and the planner sees why.

    Args:
        parsed: The output of :func:`parse_response`.
        can_act: Whether step/zoom/tool budgets remain.

    Returns:
        The decision; pure, and never raises.
    """
    has_actions = bool(parsed.zooms or parsed.tool_calls)
    if can_act and has_actions:
        return TurnDecision(parsed.zooms, parsed.tool_calls, parsed.answer, None, parsed.problems)
    if parsed.answer is not None:
        return TurnDecision((), (), None, parsed.answer, parsed.problems)
    message = (NO_ACTION_TEMPLATE if can_act else NO_STEPS_LEFT_TEMPLATE).format()
    problem = Problem(str(ProblemCode.NO_ACTION), message)
    return TurnDecision((), (), None, None, (*parsed.problems, problem))


def cut_before_answer(text: str) -> str:
    """Return the reply up to its first ``<answer>`` tag (all of it when there is none).

    The reference builds the stage-2 prompt from the stage-1 output cut this way
    (``output.split("<answer>")[0]``); tags are matched as in :func:`parse_response`.

    Args:
        text: A planner reply.

    Returns:
        The prefix of ``text`` before the first opening answer tag.
    """
    m = _ANSWER_OPEN_RE.search(text)
    return text[: m.start()] if m else text
