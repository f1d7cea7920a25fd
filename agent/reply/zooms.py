"""The zoom requests of a planner reply: ``{"bbox_2d": [...], "label": ..., "view": ...}`` objects.

:func:`_find_zooms` finds every ``bbox_2d`` key outside tool calls and answers and reads the
object around it into a :class:`~zoomearth.agent.reply.records.ZoomRequest` (boxes exactly as
written), falling back to the reference's reading of a bare ``"bbox_2d": [...]`` list when the
object is not valid JSON; the rules are in ``docs/parsing.md``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from zoomearth.agent.reply.lenient_json import (
    _WS_RE,
    _fmt_number,
    _number,
    _read_json,
    _SyntaxProblem,
)
from zoomearth.agent.reply.messages import (
    BAD_BOX_LENGTH_TEMPLATE,
    BAD_BOX_TYPE_TEMPLATE,
    BAD_BOX_VALUE_TEMPLATE,
    BAD_JSON_TEMPLATE,
    BAD_VIEW_TEMPLATE,
    DUPLICATE_ZOOM_TEMPLATE,
    MAX_BOXES,
    TOO_MANY_ITEMS_TEMPLATE,
    ZOOM_FORMAT,
    _clip,
    _Problems,
)
from zoomearth.agent.reply.records import ProblemCode, ZoomRequest
from zoomearth.agent.reply.tags import _Spans

_MAX_OBJECT_CHARS: Final = 4096  # span tried as the JSON object around one bbox_2d key
_MAX_BRACE_LOOKBACK: Final = 1024  # how far back the "{" of that object is looked for
_MAX_BOX_LIST_CHARS: Final = 256  # span searched for the "]" closing a box list

_FIELD_KEY_RE: Final = re.compile(r"""(?<![A-Za-z0-9_])["']?(label|view)["']?[ \t]{0,8}:""")

_BOX_KEY: Final = "bbox_2d"


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
