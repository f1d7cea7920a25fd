"""Errors the HTTP server turns into JSON error bodies (OpenAI's ``{"error": {...}}`` shape).

Every refusal is an :class:`ApiError` carrying its HTTP status, an OpenAI-style ``type`` and a
message that says what to change. Anything else raised while serving a request is a bug: it is
logged with its traceback under the request id and the client gets a generic 500 naming that id,
never a stack trace.
"""

from __future__ import annotations

from typing import Any

from zoomearth.errors import ZoomEarthError

__all__ = ["ApiError", "error_body"]

INTERNAL_TEMPLATE = (
    "Internal server error (request id {request_id}); the server log has the details."
)


class ApiError(ZoomEarthError):
    """A request the server refuses, with its HTTP status and a clear message.

    Args:
        status: HTTP status code (4xx, 429, or 5xx for server-side limits).
        message: What went wrong and what to do instead.
        type: OpenAI-style error type (``invalid_request_error``, ``authentication_error`` ...).
        code: Short machine-readable code (``no_image``, ``upload_too_large`` ...).
        param: The request parameter concerned, when there is one.
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - the OpenAI field name
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return error_body(self.message, self.type, self.code, self.param)


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None  # noqa: A002
) -> dict[str, Any]:
    """An OpenAI-style error body ``{"error": {"message", "type", "code", "param"}}``."""
    return {"error": {"message": message, "type": type, "code": code, "param": param}}
