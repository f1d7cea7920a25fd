"""Request bodies of the server (:mod:`zoomearth.server.app`): parsing and validation.

JSON bodies are parsed with bounded nesting and refused with a lone UTF-16 surrogate anywhere
(a 400 naming where); chat parameters the server cannot honour (``n``, ``tools``,
``response_format`` ...) are refused by name; the messages for bodies and uploads that are too
large or malformed live here too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from zoomearth.server.errors import ApiError

BODY_TOO_LARGE_TEMPLATE = (
    "Request body is {size}larger than {limit:,} bytes (setting max_json_body_bytes); upload "
    "larger images with POST /v1/files and put the returned file URL (its id) in the message "
    "instead of a data: URL, or use file:// paths under allowed_roots."
)
UPLOAD_TOO_LARGE_TEMPLATE = (
    "Upload is {size}larger than {limit:,} bytes (the setting max_upload_bytes plus 1 MiB of "
    "form framing); send a smaller image, or use a file:// path under allowed_roots."
)
BAD_JSON_TEMPLATE = "Request body is not valid JSON: {reason}"
TOO_DEEP_TEMPLATE = (
    "Request body is nested too deeply: this server accepts JSON nested up to {limit} levels."
)
SURROGATE_TEMPLATE = (
    "Request body holds a lone UTF-16 surrogate ({char}) at {where}; send text as valid "
    "Unicode (escape characters outside the BMP as a surrogate pair)."
)
BAD_FIELD_TEMPLATE = "Field {name!r} must be {what}."
UNSUPPORTED_PARAM_TEMPLATE = "Parameter {name!r} is not supported by this server: {why}"
NO_FILE_MESSAGE = "The upload needs a 'file' form field holding the image."
BAD_FORM_TEMPLATE = "The upload is not a valid multipart form: {reason}"
#: Deepest JSON nesting a chat request may use (a chat request needs about six levels).
MAX_JSON_DEPTH = 64
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _check_unsupported(body: dict[str, Any]) -> None:
    """Refuse (400) request parameters whose values this server cannot honour."""
    def refuse(name: str, why: str) -> ApiError:
        return ApiError(400, UNSUPPORTED_PARAM_TEMPLATE.format(name=name, why=why), param=name,
                        code="unsupported_parameter")

    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise refuse("n", "it returns exactly one choice; send n=1 or leave it out.")
    for name in ("tools", "functions"):
        if body.get(name):
            raise refuse(name, "the agent uses its own tools (see GET /v1/models); leave it "
                               "out.")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none", "auto"):
            raise refuse(name, "the agent chooses its own tools; leave it out.")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise refuse("response_format", "answers are plain text (markdown); leave it out or "
                                        "send {\"type\": \"text\"}.")
    for name, high in (("temperature", 2), ("top_p", 1)):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= high):
            raise ApiError(400, BAD_FIELD_TEMPLATE.format(
                name=name, what=f"a number from 0 to {high}"), param=name, code="bad_parameter")


def _parse_json_body(raw: bytes | bytearray) -> Any:
    """Parse a request body, refusing (400) invalid JSON, deep nesting and lone surrogates."""
    too_deep = ApiError(400, TOO_DEEP_TEMPLATE.format(limit=MAX_JSON_DEPTH), code="bad_json")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise ApiError(400, BAD_JSON_TEMPLATE.format(reason=exc), code="bad_json") from None
    stack: list[tuple[Any, int, str]] = [(body, 1, "$")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            _refuse_surrogate(value, where)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise too_deep
        if isinstance(value, dict):
            for key, item in value.items():
                _refuse_surrogate(key, f"a key of {where}")
                stack.append((item, depth + 1, f"{where}.{_safe_key(key)}"))
        else:
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))
    return body


def _refuse_surrogate(text: str, where: str) -> None:
    match = _SURROGATE_RE.search(text)
    if match:
        char = f"\\u{ord(match.group()):04x}"
        raise ApiError(400, SURROGATE_TEMPLATE.format(char=char, where=where), code="bad_unicode")


def _safe_key(key: str) -> str:
    return key[:40] if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", key[:40]) else "?"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
