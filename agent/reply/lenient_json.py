"""A lenient JSON reader for model output: JSON plus the slips models commonly make.

:func:`_read_json` reads one value from a bounded span of a text with :class:`_Reader`; a value
that cannot be read raises :class:`_SyntaxProblem`, whose reason the callers turn into a
:class:`~zoomearth.agent.reply.records.Problem`. :func:`_number` and :func:`_fmt_number` read and
write the numbers of boxes.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from zoomearth.agent.reply.messages import _clip

_MAX_DEPTH: Final = 32  # nesting accepted by the lenient JSON reader
_MAX_INT_DIGITS: Final = 4000  # longer integers are read as floats (int() refuses > 4300 digits)

# Regular expressions (all linear: no nested or adjacent unbounded quantifiers)
_WS_RE: Final = re.compile(r"\s*")
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NON_FINITE_RE: Final = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_STRING_CHUNK_RE: Final = {'"': re.compile(r'[^"\\]+'), "'": re.compile(r"[^'\\]+")}
_HEX4_RE: Final = re.compile(r"[0-9a-fA-F]{4}")

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
