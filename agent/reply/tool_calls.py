"""The tool calls of a planner reply: the JSON of ``<tool_call>`` blocks, repaired where possible.

:func:`_read_tool_calls` reads the call(s) of one block -- an object, a list of them, or several,
optionally inside a Markdown code fence -- into
:class:`~zoomearth.agent.reply.records.ToolCallRequest` values; arguments given as a JSON string
are read too, and a malformed call whose tool name is readable is kept with arguments None
(:func:`_salvage_tool_call`) so that validation reports it.
"""

from __future__ import annotations

import re
from typing import Any, Final

from zoomearth.agent.reply.lenient_json import _WS_RE, _read_json, _SyntaxProblem
from zoomearth.agent.reply.messages import (
    BAD_JSON_TEMPLATE,
    BAD_TOOL_CALL_TEMPLATE,
    TOOL_CALL_FORMAT,
    _clip,
    _Problems,
)
from zoomearth.agent.reply.records import Problem, ProblemCode, ToolCallRequest
from zoomearth.agent.reply.tags import _Block

_MAX_TOOL_CALL_CHARS: Final = 65536  # longest <tool_call> body that is parsed

_NAME_KEY_RE: Final = re.compile(
    r"""["']?name["']?[ \t]{0,8}:[ \t]{0,8}["']([^"'\r\n]{1,128})["']"""
)
_ARGS_KEY_RE: Final = re.compile(r"""["']?(?:arguments|parameters)["']?[ \t]{0,8}:""")


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
