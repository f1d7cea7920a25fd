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
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

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
# Public value types
# ---------------------------------------------------------------------------------------------


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

_MAX_OBJECT_CHARS: Final = 4096  # span tried as the JSON object around one bbox_2d key
_MAX_BRACE_LOOKBACK: Final = 1024  # how far back the "{" of that object is looked for
_MAX_BOX_LIST_CHARS: Final = 256  # span searched for the "]" closing a box list
_MAX_TOOL_CALL_CHARS: Final = 65536  # longest <tool_call> body that is parsed
_MAX_DEPTH: Final = 32  # nesting accepted by the lenient JSON reader
_MAX_INT_DIGITS: Final = 4000  # longer integers are read as floats (int() refuses > 4300 digits)
_SNIPPET_CHARS: Final = 120  # longest excerpt quoted back to the model

# ---------------------------------------------------------------------------------------------
# Regular expressions (all linear: no nested or adjacent unbounded quantifiers)
# ---------------------------------------------------------------------------------------------

_TAG_RE: Final = re.compile(
    r"<(/?)(think|answer|tool_call)[ \t\r\n]{0,16}>|<\|(?:im_end|im_start|endoftext)\|>",
    re.IGNORECASE,
)
_ANSWER_OPEN_RE: Final = re.compile(r"<answer[ \t\r\n]{0,16}>", re.IGNORECASE)
_WS_RE: Final = re.compile(r"\s*")
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NON_FINITE_RE: Final = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_STRING_CHUNK_RE: Final = {'"': re.compile(r'[^"\\]+'), "'": re.compile(r"[^'\\]+")}
_FIELD_KEY_RE: Final = re.compile(r"""(?<![A-Za-z0-9_])["']?(label|view)["']?[ \t]{0,8}:""")
_NAME_KEY_RE: Final = re.compile(
    r"""["']?name["']?[ \t]{0,8}:[ \t]{0,8}["']([^"'\r\n]{1,128})["']"""
)
_ARGS_KEY_RE: Final = re.compile(r"""["']?(?:arguments|parameters)["']?[ \t]{0,8}:""")
_HEX4_RE: Final = re.compile(r"[0-9a-fA-F]{4}")

_BOX_KEY: Final = "bbox_2d"
_TAGS: Final = ("think", "answer", "tool_call")
_LITERALS: Final[dict[str, Any]] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
    "NaN": math.nan,
    "nan": math.nan,
    "Infinity": math.inf,
    "inf": math.inf,
}
_ESCAPES: Final = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}

# ---------------------------------------------------------------------------------------------
# Lenient JSON reader
# ---------------------------------------------------------------------------------------------


class _SyntaxProblem(Exception):
    """Internal: the lenient reader could not read a value (never escapes this module)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Reader:
    """A JSON reader that also accepts common model slips.

    Accepted beyond JSON: single-quoted strings, unquoted keys, trailing commas, raw newlines in
    strings, unknown escapes (kept as the escaped character), Python literals (``True``, ``None``),
    ``NaN``/``Infinity``/``inf``, leading ``+`` and bare ``.5``/``5.`` numbers. Reading never looks
    past ``end`` and never nests deeper than ``_MAX_DEPTH``, so it is linear and bounded.
    """

    __slots__ = ("end", "spans", "text")

    def __init__(self, text: str, end: int, spans: dict[str, tuple[int, int]] | None) -> None:
        self.text = text
        self.end = end
        # Source spans of the members of the outermost object, when asked for.
        self.spans = spans

    def skip_ws(self, i: int) -> int:
        """Return the first index at or after ``i`` that is not whitespace."""
        m = _WS_RE.match(self.text, i, self.end)
        return m.end() if m else i

    def value(self, i: int, depth: int) -> tuple[Any, int]:
        """Read one value starting at or after ``i``; return it and the index after it."""
        if depth > _MAX_DEPTH:
            raise _SyntaxProblem("nested too deeply")
        i = self.skip_ws(i)
        if i >= self.end:
            raise _SyntaxProblem("it ends too early")
        c = self.text[i]
        if c == "{":
            return self.obj(i, depth)
        if c == "[":
            return self.array(i, depth)
        if c in "\"'":
            return self.string(i)
        m = _NUMBER_RE.match(self.text, i, self.end)
        if m:
            token = m.group()
            if "." in token or "e" in token or "E" in token or len(token) > _MAX_INT_DIGITS:
                return float(token), m.end()
            return int(token), m.end()
        if c in "+-":
            m = _IDENT_RE.match(self.text, i + 1, self.end)
            if m and m.group() in ("Infinity", "inf"):
                return (-math.inf if c == "-" else math.inf), m.end()
        m = _IDENT_RE.match(self.text, i, self.end)
        if m:
            word = m.group()
            if word in _LITERALS:
                return _LITERALS[word], m.end()
            raise _SyntaxProblem(f"unexpected word {_clip(word, 24)!r}")
        raise _SyntaxProblem(f"unexpected character {c!r}")

    def string(self, i: int) -> tuple[str, int]:
        """Read a string quoted with ``"`` or ``'`` starting at ``i``."""
        quote = self.text[i]
        chunk = _STRING_CHUNK_RE[quote]
        parts: list[str] = []
        i += 1
        while True:
            m = chunk.match(self.text, i, self.end)
            if m:
                parts.append(m.group())
                i = m.end()
            if i >= self.end:
                raise _SyntaxProblem("a string is not closed")
            c = self.text[i]
            if c == quote:
                return "".join(parts), i + 1
            # A backslash escape.
            if i + 1 >= self.end:
                raise _SyntaxProblem("a string is not closed")
            e = self.text[i + 1]
            if e == "u":
                hx = _HEX4_RE.match(self.text, i + 2, self.end)
                if not hx:
                    raise _SyntaxProblem("bad \\u escape in a string")
                code = int(hx.group(), 16)
                i = hx.end()
                # A UTF-16 surrogate pair (how json.dumps writes characters beyond U+FFFF).
                if 0xD800 <= code < 0xDC00 and self.text.startswith("\\u", i):
                    low = _HEX4_RE.match(self.text, i + 2, self.end)
                    if low and 0xDC00 <= int(low.group(), 16) < 0xE000:
                        code = 0x10000 + ((code - 0xD800) << 10) + (int(low.group(), 16) - 0xDC00)
                        i = low.end()
                parts.append(chr(code))
            else:
                parts.append(_ESCAPES.get(e, e))
                i += 2

    def key(self, i: int) -> tuple[str, int]:
        """Read an object key: a quoted string, a bare word or a bare number."""
        c = self.text[i]
        if c in "\"'":
            return self.string(i)
        m = _IDENT_RE.match(self.text, i, self.end) or _NUMBER_RE.match(self.text, i, self.end)
        if not m:
            raise _SyntaxProblem(f"expected a key in quotes, found {c!r}")
        return m.group(), m.end()

    def obj(self, i: int, depth: int) -> tuple[dict[str, Any], int]:
        """Read an object starting at the ``{`` at ``i``."""
        result: dict[str, Any] = {}
        i += 1
        while True:
            i = self.skip_ws(i)
            if i >= self.end:
                raise _SyntaxProblem("an object is not closed with }")
            if self.text[i] == "}":
                return result, i + 1
            k, i = self.key(i)
            i = self.skip_ws(i)
            if i >= self.end or self.text[i] != ":":
                raise _SyntaxProblem(f"a ':' is missing after the key {_clip(k, 24)!r}")
            start = self.skip_ws(i + 1)
            v, i = self.value(start, depth + 1)
            result[k] = v
            if depth == 0 and self.spans is not None:
                self.spans[k] = (start, i)
            i = self.skip_ws(i)
            if i < self.end and self.text[i] == ",":
                i += 1
                continue
            if i < self.end and self.text[i] == "}":
                return result, i + 1
            raise _SyntaxProblem(f"a ',' or '}}' is missing after the value of {_clip(k, 24)!r}")

    def array(self, i: int, depth: int) -> tuple[list[Any], int]:
        """Read a list starting at the ``[`` at ``i``."""
        result: list[Any] = []
        i += 1
        while True:
            i = self.skip_ws(i)
            if i >= self.end:
                raise _SyntaxProblem("a list is not closed with ]")
            if self.text[i] == "]":
                return result, i + 1
            v, i = self.value(i, depth + 1)
            result.append(v)
            i = self.skip_ws(i)
            if i < self.end and self.text[i] == ",":
                i += 1
                continue
            if i < self.end and self.text[i] == "]":
                return result, i + 1
            raise _SyntaxProblem("a ',' or ']' is missing in a list")


def _read_json(
    text: str, start: int, end: int, spans: dict[str, tuple[int, int]] | None = None
) -> tuple[Any, int]:
    """Read one lenient-JSON value from ``text[start:end]``.

    Raises:
        _SyntaxProblem: When no value can be read (internal; callers turn it into a Problem).
    """
    return _Reader(text, min(end, len(text)), spans).value(start, 0)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _clip(text: str, limit: int = _SNIPPET_CHARS) -> str:
    """Shorten ``text`` to ``limit`` characters on one line, for quoting back to the model."""
    flat = " ".join(text[: limit * 4].split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _number(value: Any) -> float | None:
    """Return ``value`` as a float if it is number-like (possibly non-finite), else None.

    Numbers and numeric strings (``"12"``, ``" 3.5 "``, ``"nan"``) count; booleans do not.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        s = value.strip()
        if len(s) <= 64 and _NUMBER_RE.fullmatch(s):
            return float(s)
        if _NON_FINITE_RE.fullmatch(s):
            return float(s)
    return None


def _fmt_number(value: float) -> str:
    """Format a coordinate compactly (``380`` rather than ``380.0``)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


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


class _Spans:
    """Sorted, non-overlapping-enough character spans with a containment test."""

    __slots__ = ("ends", "starts")

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        spans = sorted(spans)
        self.starts = [s for s, _ in spans]
        # Running maximum of ends, so a later short span cannot hide an earlier long one.
        self.ends: list[int] = []
        best = -1
        for _, e in spans:
            best = max(best, e)
            self.ends.append(best)

    def contains(self, pos: int) -> bool:
        k = bisect.bisect_right(self.starts, pos) - 1
        return k >= 0 and pos < self.ends[k]


# ---------------------------------------------------------------------------------------------
# Tags and blocks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tag:
    start: int
    end: int
    name: str | None  # None for a chat-template special token such as <|im_end|>
    closing: bool


@dataclass(frozen=True, slots=True)
class _Block:
    name: str
    start: int  # start of the opening tag (or of the text, for an implicit <think>)
    content_start: int
    content_end: int
    end: int  # end of the closing tag, or content_end when unclosed
    closed: bool


def _scan_tags(text: str) -> list[_Tag]:
    tags = []
    for m in _TAG_RE.finditer(text):
        name = m.group(2)
        tags.append(
            _Tag(
                m.start(), m.end(), name.lower() if name else None, bool(m.group(1)) and bool(name)
            )
        )
    return tags


def _pair_blocks(text: str, tags: list[_Tag], problems: _Problems) -> dict[str, list[_Block]]:
    """Pair opening and closing tags of each name; report unclosed and stray tags.

    An opening tag pairs with the next closing tag of the same name unless another opening tag of
    that name comes first. An unclosed block runs to the next tag of any kind (or a chat-template
    end token, or the end of the text). A ``</think>`` that is the very first tag closes a think
    block starting at the beginning of the text (chat templates that put ``<think>`` in the prompt
    produce this); any other closing tag without an opening tag is ignored.
    """
    blocks: dict[str, list[_Block]] = {name: [] for name in _TAGS}
    pending: dict[str, int | None] = dict.fromkeys(_TAGS)
    unclosed: list[int] = []
    first_named = next((k for k, t in enumerate(tags) if t.name is not None), -1)
    for k, tag in enumerate(tags):
        if tag.name is None:
            continue
        if not tag.closing:
            previous = pending[tag.name]
            if previous is not None:
                unclosed.append(previous)
            pending[tag.name] = k
            continue
        opened = pending[tag.name]
        if opened is not None:
            o = tags[opened]
            blocks[tag.name].append(_Block(tag.name, o.start, o.end, tag.start, tag.end, True))
            pending[tag.name] = None
        elif k == first_named and tag.name == "think":
            blocks["think"].append(_Block("think", 0, 0, tag.start, tag.end, True))
        else:
            problems.add(ProblemCode.UNEXPECTED_TAG, UNEXPECTED_TAG_TEMPLATE.format(tag=tag.name))
    unclosed.extend(k for k in pending.values() if k is not None)
    for k in sorted(unclosed):
        o = tags[k]
        assert o.name is not None
        stop = tags[k + 1].start if k + 1 < len(tags) else len(text)
        until = "the end of the reply" if k + 1 == len(tags) else "the next tag"
        problems.add(
            ProblemCode.UNCLOSED_TAG, UNCLOSED_TAG_TEMPLATE.format(tag=o.name, until=until)
        )
        blocks[o.name].append(_Block(o.name, o.start, o.end, stop, stop, False))
    for name in _TAGS:
        blocks[name].sort(key=lambda b: b.start)
    return blocks


# ---------------------------------------------------------------------------------------------
# Zooms
# ---------------------------------------------------------------------------------------------


def _enclosing_brace(text: str, pos: int) -> int:
    """Index of the ``{`` that opens the object containing ``pos``, or -1 (bounded lookback)."""
    depth = 0
    stop = max(0, pos - _MAX_BRACE_LOOKBACK)
    for i in range(pos - 1, stop - 1, -1):
        c = text[i]
        if c == "}":
            depth += 1
        elif c == "{":
            if depth == 0:
                return i
            depth -= 1
    return -1


def _coerce_label(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _coerce_view(value: Any) -> tuple[bool, int | None]:
    """Return ``(ok, view)``; whole numbers and numeric strings of whole numbers are accepted."""
    if value is None:
        return True, None
    number = _number(value)
    if number is None or not math.isfinite(number) or not number.is_integer():
        return False, None
    if abs(number) > 2**31:
        return False, None
    return True, int(number)


def _coerce_box(
    value: Any, snippet: str, problems: _Problems
) -> tuple[float, float, float, float] | None:
    """Check a ``bbox_2d`` value; report and return None unless it is four finite numbers."""
    if not isinstance(value, list):
        shown = _clip(repr(value), 40)
        problems.add(
            ProblemCode.BAD_BOX_VALUE, BAD_BOX_TYPE_TEMPLATE.format(value=shown, snippet=snippet)
        )
        return None
    if len(value) != 4:
        problems.add(
            ProblemCode.BAD_BOX_LENGTH,
            BAD_BOX_LENGTH_TEMPLATE.format(count=len(value), snippet=snippet),
        )
        return None
    numbers: list[float] = []
    for item in value:
        number = _number(item)
        if number is None or not math.isfinite(number):
            shown = _clip(item if isinstance(item, str) else repr(item), 40)
            problems.add(
                ProblemCode.BAD_BOX_VALUE,
                BAD_BOX_VALUE_TEMPLATE.format(value=shown, snippet=snippet),
            )
            return None
        numbers.append(number)
    return numbers[0], numbers[1], numbers[2], numbers[3]


def _raw_box_list(text: str, at: int) -> tuple[list[Any] | None, int, str | None]:
    """Read the box list right after a ``bbox_2d:`` the way the reference does (split on commas).

    Returns ``(items, end, error)``: the items as stripped, unquoted strings (a trailing empty item
    from a trailing comma is dropped), the index after the list, and an error reason when the
    value is not a closed ``[...]`` list (then items is None).
    """
    n = len(text)
    i = _WS_RE.match(text, at, min(n, at + 64))
    j = i.end() if i else at
    if j >= n or text[j] != "[":
        return None, j, "the value is not a list [x1, y1, x2, y2]"
    close = text.find("]", j + 1, min(n, j + 1 + _MAX_BOX_LIST_CHARS))
    if close < 0:
        return None, j, "the list is not closed with ]"
    items = [part.strip() for part in text[j + 1 : close].split(",")]
    if len(items) > 1 and items[-1] == "":
        items.pop()
    if items == [""]:
        items = []
    unquoted: list[Any] = []
    for item in items:
        if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'":
            item = item[1:-1]
        unquoted.append(item)
    return unquoted, close + 1, None


def _fallback_fields(text: str, start: int, stop: int) -> dict[str, Any]:
    """Read ``label`` and ``view`` values between ``start`` and ``stop`` of a malformed object."""
    found: dict[str, Any] = {}
    for m in _FIELD_KEY_RE.finditer(text, start, stop):
        name = m.group(1)
        if name in found:
            continue
        try:
            value, _ = _read_json(text, m.end(), stop)
        except _SyntaxProblem:
            continue
        found[name] = value
    return found


def _find_zooms(text: str, excluded: _Spans, problems: _Problems) -> list[ZoomRequest]:
    """Find every ``bbox_2d`` object outside tool calls and answers; see ``docs/parsing.md``."""
    n = len(text)
    zooms: list[ZoomRequest] = []
    seen: set[tuple[tuple[float, ...], str | None, int | None]] = set()
    consumed = -1  # end of the last object read; keys before it belong to that object
    examined = 0
    pos = text.find(_BOX_KEY)
    while pos >= 0:
        key_end = pos + len(_BOX_KEY)
        colon = key_end + 1 if key_end < n and text[key_end] in "\"'" else key_end
        m = _WS_RE.match(text, colon, min(n, colon + 16))
        colon = m.end() if m else colon
        is_key = (
            colon < n
            and text[colon] == ":"
            and (pos == 0 or not (text[pos - 1].isalnum() or text[pos - 1] == "_"))
        )
        if is_key and pos >= consumed and not excluded.contains(pos):
            examined += 1
            if examined > MAX_BOXES:
                problems.add(
                    ProblemCode.TOO_MANY_ITEMS,
                    TOO_MANY_ITEMS_TEMPLATE.format(what="boxes", limit=MAX_BOXES),
                )
                break
            consumed = _read_zoom(text, pos, colon + 1, zooms, seen, problems)
        pos = text.find(_BOX_KEY, key_end)
    return zooms


def _read_zoom(
    text: str,
    key_pos: int,
    value_pos: int,
    zooms: list[ZoomRequest],
    seen: set[tuple[tuple[float, ...], str | None, int | None]],
    problems: _Problems,
) -> int:
    """Read the zoom object around the key at ``key_pos``; return the index after what was read."""
    brace = _enclosing_brace(text, key_pos)
    fields: dict[str, Any] | None = None
    reason = "there is no { before the key"
    end = value_pos
    if brace >= 0:
        try:
            value, end = _read_json(text, brace, brace + _MAX_OBJECT_CHARS)
        except _SyntaxProblem as exc:
            reason = exc.reason
        else:
            if isinstance(value, dict) and _BOX_KEY in value and end > key_pos:
                fields = value
            else:
                reason = "the object around the key could not be delimited"
    start = brace if brace >= 0 else key_pos
    if fields is not None:
        source = text[start:end]
        snippet = _clip(source)
        box = _coerce_box(fields[_BOX_KEY], snippet, problems)
    else:
        # The reference reads any '"bbox_2d": [...]' with a regular expression, whatever
        # surrounds it; do the same, and tell the model its JSON was malformed.
        items, end, list_error = _raw_box_list(text, value_pos)
        source = text[start:end]
        snippet = _clip(source)
        if items is None:
            problems.add(
                ProblemCode.BAD_JSON,
                BAD_JSON_TEMPLATE.format(
                    what="A box",
                    reason=list_error,
                    snippet=snippet,
                    consequence="This box was not zoomed.",
                    expected=ZOOM_FORMAT,
                ),
            )
            return end
        box = _coerce_box(items, snippet, problems)
        stop = text.find("}", end, min(len(text), end + _MAX_BOX_LIST_CHARS))
        stop = stop if stop >= 0 else min(len(text), end + _MAX_BOX_LIST_CHARS)
        fields = _fallback_fields(text, start, stop)
        if box is not None:
            problems.add(
                ProblemCode.BAD_JSON,
                BAD_JSON_TEMPLATE.format(
                    what="The zoom object",
                    reason=reason,
                    snippet=snippet,
                    consequence="Its box was used anyway.",
                    expected=ZOOM_FORMAT,
                ),
            )
    if box is None:
        return end
    ok, view = _coerce_view(fields.get("view"))
    if not ok:
        shown = _clip(repr(fields.get("view")), 40)
        problems.add(ProblemCode.BAD_VIEW, BAD_VIEW_TEMPLATE.format(value=shown, snippet=snippet))
        return end
    label = _coerce_label(fields.get("label"))
    identity = (box, label, view)
    if identity in seen:
        shown = "[" + ", ".join(_fmt_number(v) for v in box) + "]"
        problems.add(ProblemCode.DUPLICATE_ZOOM, DUPLICATE_ZOOM_TEMPLATE.format(box=shown))
        return end
    seen.add(identity)
    zooms.append(ZoomRequest(box=box, label=label, view=view, source=source))
    return end


# ---------------------------------------------------------------------------------------------
# Tool calls
# ---------------------------------------------------------------------------------------------


def _strip_fence(body: str) -> str:
    """Remove a Markdown code fence (```json ... ```) around a tool-call body."""
    s = body.strip()
    if s.startswith("```"):
        newline = s.find("\n")
        s = s[newline + 1 :] if newline >= 0 else s[3:]
        if s.rstrip().endswith("```"):
            s = s.rstrip()[:-3]
    return s.strip()


def _tool_from_dict(
    call: dict[str, Any],
    source: str,
    spans: dict[str, tuple[int, int]],
    problems: _Problems,
) -> ToolCallRequest | None:
    snippet = _clip(source)
    name = call.get("name")
    if not isinstance(name, str) or not name.strip():
        reason = 'the "name" of the tool is missing' if name is None else '"name" must be a string'
        problems.add(
            ProblemCode.BAD_TOOL_CALL, BAD_TOOL_CALL_TEMPLATE.format(reason=reason, snippet=snippet)
        )
        return None
    key = "arguments" if "arguments" in call else "parameters" if "parameters" in call else None
    raw_value = call.get(key) if key else None
    span = spans.get(key) if key else None
    raw = source[span[0] : span[1]] if span else ""
    own: list[Problem] = []
    arguments: dict[str, Any] | None
    if raw_value is None:
        arguments = {}
    elif isinstance(raw_value, dict):
        arguments = raw_value
    elif isinstance(raw_value, str):
        raw = raw_value
        if not raw_value.strip():
            arguments = {}
        else:
            try:
                inner, inner_end = _read_json(raw_value, 0, len(raw_value))
                if raw_value[inner_end:].strip():
                    raise _SyntaxProblem("there is text after the object")
            except _SyntaxProblem as exc:
                inner, why = None, exc.reason
            else:
                why = "they are not an object"
            if isinstance(inner, dict):
                arguments = inner
            else:
                arguments = None
                own.append(
                    problems.add(
                        ProblemCode.BAD_JSON,
                        BAD_JSON_TEMPLATE.format(
                            what=f'The arguments string of the tool call "{_clip(name, 40)}"',
                            reason=why,
                            snippet=_clip(raw_value),
                            consequence="The call cannot run.",
                            expected='"arguments": {"<name>": <value>, ...}',
                        ),
                    )
                )
    else:
        arguments = None
        own.append(
            problems.add(
                ProblemCode.BAD_TOOL_CALL,
                BAD_TOOL_CALL_TEMPLATE.format(
                    reason='"arguments" must be an object {...}', snippet=snippet
                ),
            )
        )
    return ToolCallRequest(name, arguments, raw, source, tuple(own))


def _read_tool_calls(text: str, block: _Block, problems: _Problems) -> list[ToolCallRequest]:
    """Read the call(s) in one ``<tool_call>`` block: an object, a list of them, or several."""
    body_raw = text[block.content_start : block.content_end]
    if len(body_raw) > _MAX_TOOL_CALL_CHARS:
        problems.add(
            ProblemCode.BAD_TOOL_CALL,
            BAD_TOOL_CALL_TEMPLATE.format(
                reason=f"it is longer than {_MAX_TOOL_CALL_CHARS} characters",
                snippet=_clip(body_raw),
            ),
        )
        return []
    body = _strip_fence(body_raw)
    if not body:
        problems.add(
            ProblemCode.BAD_TOOL_CALL,
            BAD_TOOL_CALL_TEMPLATE.format(reason="the block is empty", snippet="<tool_call>"),
        )
        return []
    calls: list[ToolCallRequest] = []
    i = 0
    while True:
        i = _skip_ws(body, i)
        if i >= len(body):
            break
        try:
            if body[i] == "[":
                # A list of calls: read element by element so each keeps its source spans.
                i = _skip_ws(body, i + 1)
                while i < len(body) and body[i] != "]":
                    i = _read_one_call(body, i, calls, problems)
                    i = _skip_ws(body, i)
                    if i < len(body) and body[i] == ",":
                        i = _skip_ws(body, i + 1)
                    elif i >= len(body) or body[i] != "]":
                        raise _SyntaxProblem("a ',' or ']' is missing in the list of calls")
                if i >= len(body):
                    raise _SyntaxProblem("the list of calls is not closed with ]")
                i += 1
            else:
                i = _read_one_call(body, i, calls, problems)
        except _SyntaxProblem as exc:
            calls.extend(_salvage_tool_call(body[i:], exc.reason, problems))
            break
        i = _skip_ws(body, i)
        if i < len(body) and body[i] == ",":
            i += 1
    return calls


def _skip_ws(text: str, i: int) -> int:
    m = _WS_RE.match(text, i)
    return m.end() if m else i


def _read_one_call(body: str, i: int, calls: list[ToolCallRequest], problems: _Problems) -> int:
    """Read the call object at ``body[i]`` into ``calls``; return the index after it.

    Raises:
        _SyntaxProblem: When the value there cannot be read.
    """
    spans: dict[str, tuple[int, int]] = {}
    value, end = _read_json(body, i, len(body), spans)
    source = body[i:end]
    if isinstance(value, dict):
        # Spans are relative to ``body``; make them relative to ``source``.
        local = {k: (s - i, e - i) for k, (s, e) in spans.items()}
        call = _tool_from_dict(value, source, local, problems)
        if call is not None:
            calls.append(call)
    else:
        problems.add(
            ProblemCode.BAD_TOOL_CALL,
            BAD_TOOL_CALL_TEMPLATE.format(reason="expected a JSON object", snippet=_clip(source)),
        )
    return end


def _salvage_tool_call(body: str, reason: str, problems: _Problems) -> list[ToolCallRequest]:
    """Keep a malformed call whose tool name is readable, with arguments None, so it is reported."""
    m = _NAME_KEY_RE.search(body, 0, min(len(body), 4096))
    snippet = _clip(body)
    if not m or not m.group(1).strip():
        problems.add(
            ProblemCode.BAD_TOOL_CALL,
            BAD_TOOL_CALL_TEMPLATE.format(
                reason=f"it is not valid JSON ({reason})", snippet=snippet
            ),
        )
        return []
    name = m.group(1)
    a = _ARGS_KEY_RE.search(body)
    raw = body[a.end() :].strip() if a else ""
    if raw.endswith("}"):
        raw = raw[:-1].rstrip()  # the closing brace of the call itself
    problem = problems.add(
        ProblemCode.BAD_JSON,
        BAD_JSON_TEMPLATE.format(
            what=f'The tool call "{_clip(name, 40)}"',
            reason=reason,
            snippet=snippet,
            consequence="The call cannot run.",
            expected=TOOL_CALL_FORMAT,
        ),
    )
    return [ToolCallRequest(name, None, raw, body.strip(), (problem,))]


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
