"""The ``openai`` planner backend: any OpenAI-compatible chat server (vLLM, SGLang, Ollama ...).

``POST {planner_base_url}/chat/completions`` with httpx, greedy (``temperature`` 0),
``max_tokens = planner_max_new_tokens``, timeout ``planner_timeout_s``, and bounded retries with
exponential backoff (``planner_max_retries``) on connection errors, 5xx and 429 answers.

Images are resized *client-side* to exactly the size a Qwen2.5-VL processor would give them
(:func:`zoomearth.agent.frames.seen_size`, multiples of 28), then sent as base64 PNG data URLs:
the server's own resize is then a no-op, so the frame of the boxes the model writes is known
without asking the server. Visual tokens are computed with the same arithmetic.

Layout (:mod:`zoomearth.agent.conversation`): ``planner_layout``, else ``zoomearth`` when the
served model's name contains "zoomearth" (the reference's vLLM path: ``[user: overview +
instructions, assistant: stage-1 text cut before <answer> + crop]``, then a new completion), else
``chat``. Boxes: ``planner_coord_mode``, else ``pixels``.

Importing this module does not import httpx or PIL.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

from zoomearth.agent.base import Layout, Planner, PlannerError, PlanReply, PlanRequest
from zoomearth.agent.conversation import Conversation, build_conversation, to_chat_dicts
from zoomearth.agent.frames import QWEN25_VL, VisionSpec, qwen_visual_tokens, seen_size
from zoomearth.agent.prompting import PromptTemplate, load_template

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.models.pool import ModelPool

__all__ = ["OpenAIPlanner", "encode_png_data_url"]

NO_BASE_URL_TEMPLATE: Final = (
    "The openai planner needs the server's address: set planner_base_url "
    "(e.g. http://127.0.0.1:8000/v1 for vLLM, http://127.0.0.1:11434/v1 for Ollama)."
)
CONNECTION_REFUSED_TEMPLATE: Final = (
    "cannot reach the planner server at {url}: connection refused. Start the server or set "
    "planner_base_url{attempts}."
)
CONNECTION_FAILED_TEMPLATE: Final = (
    "cannot reach the planner server at {url}: {error}. Check that the server is running and "
    "planner_base_url is right{attempts}."
)
TIMEOUT_TEMPLATE: Final = (
    "the planner server at {url} did not answer within {timeout:g} s (planner_timeout_s). "
    "Raise planner_timeout_s, lower planner_max_new_tokens, or check the server."
)
HTTP_ERROR_TEMPLATE: Final = (
    "the planner server at {url} answered HTTP {status}: {message}{hint}{attempts}"
)
BAD_RESPONSE_TEMPLATE: Final = (
    "the planner server at {url} sent a response that is not an OpenAI chat completion "
    "({problem}): {snippet}"
)
NO_MODEL_TEMPLATE: Final = (
    "planner_model is not set and the server at {url} lists no model ({problem}); set "
    "planner_model to the served model name."
)

_STATUS_HINTS: Final = {
    401: " -- check planner_api_key.",
    403: " -- check planner_api_key.",
    404: " -- check planner_base_url (it usually ends in /v1) and planner_model.",
    413: " -- the request is too large for the server.",
}
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_MAX_BACKOFF_S: Final = 30.0
_SNIPPET_CHARS: Final = 300


def encode_png_data_url(rgb: Any, size: tuple[int, int] | None = None) -> str:
    """Encode an RGB image as a ``data:image/png;base64,...`` URL, optionally resized.

    Args:
        rgb: RGB uint8 array of shape (H, W, 3).
        size: ``(width, height)`` to resize to (bicubic) before encoding; None keeps the size.

    Returns:
        The data URL of a PNG of exactly ``size`` (or the input size).
    """
    import numpy as np
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    image = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False), "RGB")
    if size is not None and image.size != tuple(size):
        image = image.resize((int(size[0]), int(size[1])), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _server_message(response: Any) -> str:
    """The error message of an HTTP error response (OpenAI, vLLM, Ollama, FastAPI shapes)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:_SNIPPET_CHARS] or response.reason_phrase or "no message"
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])[:_SNIPPET_CHARS]
        for key in ("error", "message", "detail"):
            if body.get(key):
                return str(body[key])[:_SNIPPET_CHARS]
    return str(body)[:_SNIPPET_CHARS]


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _content_text(content: Any) -> str:
    """Message content as text (a string, or a list of ``{"type": "text"}`` parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content)


class OpenAIPlanner(Planner):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint as the planner.

    Args:
        settings: Uses ``planner_base_url``, ``planner_model`` (default: the server's first
            listed model), ``planner_api_key``, ``planner_timeout_s``, ``planner_max_retries``,
            ``planner_max_new_tokens``, ``planner_coord_mode``, ``planner_layout`` and
            ``planner_prompt``.
        pool: Unused (the model lives in the server); accepted for a uniform constructor.

    Attributes:
        vision: How the served model sizes images (default: Qwen2.5-VL's processor).
        backoff_s: First retry delay in seconds; doubles on each retry (capped at 30 s, or the
            server's ``Retry-After``).
    """

    name: ClassVar[str] = "openai"

    def __init__(self, settings: Settings, pool: ModelPool | None = None) -> None:
        self.settings = settings
        self.base_url = (settings.planner_base_url or "").rstrip("/")
        self.model: str | None = settings.planner_model
        self.coord_mode = settings.planner_coord_mode or "pixels"
        self.layout = self._default_layout(self.model)
        self.vision: VisionSpec = QWEN25_VL
        self.backoff_s = 0.5
        self._template: PromptTemplate | None = None
        self._client: Any = None

    def _default_layout(self, model: str | None) -> Layout:
        if self.settings.planner_layout:
            return self.settings.planner_layout
        return "zoomearth" if model and "zoomearth" in model.lower() else "chat"

    # ---- resources -------------------------------------------------------------------------------

    @property
    def template(self) -> PromptTemplate:
        """The prompt sections (``planner_prompt`` over the packaged default)."""
        if self._template is None:
            self._template = load_template(self.settings.planner_prompt)
        return self._template

    def _http(self) -> Any:
        if not self.base_url:
            raise PlannerError(NO_BASE_URL_TEMPLATE)
        if self._client is None:
            import httpx

            headers = {"Accept": "application/json"}
            if self.settings.planner_api_key:
                headers["Authorization"] = f"Bearer {self.settings.planner_api_key}"
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.settings.planner_timeout_s), headers=headers
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def describe(self) -> str:
        """Backend, server and model."""
        return (
            f"openai: {self.model or '(server default model)'} at {self.base_url or '(unset)'} "
            f"(layout {self.layout}, boxes {self.coord_mode})"
        )

    # ---- HTTP ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        """Send one request with the retry policy; return the decoded JSON body.

        Raises:
            PlannerError: Unreachable server, timeout, HTTP error, or a body that is not JSON.
        """
        import httpx

        client = self._http()
        url = f"{self.base_url}{path}"
        retries = int(self.settings.planner_max_retries)
        for attempt in range(retries + 1):
            last = attempt == retries
            tried = f" (tried {attempt + 1} times)" if attempt else ""
            delay = min(self.backoff_s * (2**attempt), _MAX_BACKOFF_S)
            try:
                response = client.request(method, url, json=payload)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout) and not last:
                    time.sleep(delay)
                    continue
                raise PlannerError(
                    TIMEOUT_TEMPLATE.format(url=url, timeout=self.settings.planner_timeout_s)
                ) from exc
            except httpx.TransportError as exc:
                if not last:
                    time.sleep(delay)
                    continue
                refused = isinstance(exc, httpx.ConnectError) and "refused" in str(exc).lower()
                template = CONNECTION_REFUSED_TEMPLATE if refused else CONNECTION_FAILED_TEMPLATE
                raise PlannerError(
                    template.format(url=self.base_url, error=exc, attempts=tried)
                ) from exc
            if response.status_code in _RETRY_STATUSES and not last:
                wait = _retry_after(response)
                time.sleep(min(wait if wait is not None else delay, _MAX_BACKOFF_S))
                continue
            if response.status_code >= 400:
                raise PlannerError(
                    HTTP_ERROR_TEMPLATE.format(
                        url=url,
                        status=response.status_code,
                        message=_server_message(response),
                        hint=_STATUS_HINTS.get(response.status_code, ""),
                        attempts=tried,
                    )
                )
            try:
                return response.json()
            except ValueError:
                raise PlannerError(
                    BAD_RESPONSE_TEMPLATE.format(
                        url=url, problem="not JSON", snippet=response.text[:_SNIPPET_CHARS]
                    )
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _served_model(self) -> str:
        if self.model:
            return self.model
        body = self._request("GET", "/models")
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], Mapping):
            raise PlannerError(
                NO_MODEL_TEMPLATE.format(url=self.base_url, problem="empty model list")
            )
        self.model = str(data[0].get("id"))
        self.layout = self._default_layout(self.model)
        return self.model

    # ---- planning --------------------------------------------------------------------------------

    def build(self, request: PlanRequest) -> Conversation:
        """The neutral conversation for a request (for inspection and tests)."""
        return build_conversation(request, self.layout, self.coord_mode, self.template)

    def messages(
        self, request: PlanRequest, conversation: Conversation
    ) -> tuple[list[dict[str, Any]], dict[int, tuple[int, int]], int]:
        """OpenAI messages with images as data URLs, the seen sizes and the visual tokens.

        Args:
            request: The request (views and the renderer).
            conversation: Its neutral conversation.

        Returns:
            ``(messages, seen_sizes, visual_tokens)``; each image is a PNG of exactly its seen
            size ``(width, height)``.
        """
        seen: dict[int, tuple[int, int]] = {}
        urls: dict[int, str] = {}
        tokens = 0
        for view_id in conversation.image_view_ids:
            view = request.views[view_id]
            size = seen_size(view.width, view.height, self.vision)
            seen[view_id] = size
            tokens += qwen_visual_tokens(*size, self.vision.patch_size, self.vision.merge_size)
            if view_id not in urls:
                urls[view_id] = encode_png_data_url(request.render(view_id), size)
        messages = to_chat_dicts(
            conversation,
            lambda v: {"type": "image_url", "image_url": {"url": urls[v]}},
            with_tool_calls=True,
            string_content=True,
        )
        return messages, seen, tokens

    def plan(self, request: PlanRequest) -> PlanReply:
        """Ask the server for one turn.

        Raises:
            PlannerError: The server is unreachable, times out, answers an HTTP error, or sends
                something that is not a chat completion.
        """
        model = self._served_model()
        conversation = self.build(request)
        messages, seen, tokens = self.messages(request, conversation)
        payload = {
            "model": model,
            "messages": messages,
            "max_tokens": int(self.settings.planner_max_new_tokens),
            "temperature": 0.0,
            "stream": False,
        }
        body = self._request("POST", "/chat/completions", payload)
        text = self._reply_text(body)
        return PlanReply(
            text=text,
            seen_sizes=seen,
            visual_tokens=tokens,
            backend=self.name,
            model=model,
            notes=list(conversation.notes),
        )

    def _reply_text(self, body: Any) -> str:
        url = f"{self.base_url}/chat/completions"
        choices = body.get("choices") if isinstance(body, Mapping) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise PlannerError(
                BAD_RESPONSE_TEMPLATE.format(
                    url=url, problem="no choices", snippet=str(body)[:_SNIPPET_CHARS]
                )
            )
        message = choices[0].get("message")
        if not isinstance(message, Mapping):
            raise PlannerError(
                BAD_RESPONSE_TEMPLATE.format(
                    url=url, problem="no message", snippet=str(body)[:_SNIPPET_CHARS]
                )
            )
        content = _content_text(message.get("content"))
        reasoning = _content_text(message.get("reasoning_content") or message.get("reasoning"))
        if not content.strip():
            return reasoning
        if reasoning.strip() and "<think>" not in content:
            # A reasoning parser split the <think> part off; zoom boxes written while reasoning
            # live there, so put it back where the protocol expects it.
            return f"<think>{reasoning}</think>{content}"
        return content
