r"""The ``openai`` planner backend: any OpenAI-compatible chat server (vLLM, SGLang, Ollama ...).

``POST {planner_base_url}/chat/completions`` with httpx, timeout ``planner_timeout_s``, and bounded
retries with exponential backoff (``planner_max_retries``) on connection errors, 5xx and 429
answers. Two protocol profiles (:mod:`zoomearth.agent.profiles`, setting ``planner_profile``;
``auto`` decides on ``planner_model``, or on the served model's name when that is unset):

``zoomearth`` -- ZoomEarth-3B's exact inputs. The model only reproduces its paper's numbers with
  its training input: one raw string (:func:`~zoomearth.agent.profiles.stage_inputs`), no chat
  template. A chat endpoint always renders messages through a chat template, so the request
  carries its own, :data:`PASSTHROUGH_CHAT_TEMPLATE`, which writes the text of the messages and
  nothing else. The body is::

      {"model": ..., "messages": [{"role": "user", "content": [
           {"type": "text", "text": RAW},            # the whole stage text, placeholders included
           {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},  # overview
           {"type": "image_url", ...}]}],              # stage 2: the crop
       "chat_template": PASSTHROUGH_CHAT_TEMPLATE,
       "add_generation_prompt": false, "continue_final_message": false,
       "max_tokens": 1024, "temperature": 0.01, "top_p": 1.0, "top_k": -1,
       "skip_special_tokens": true, "stream": false, "seed": N (when planner_seed is set)}

  ``RAW`` holds one ``<|vision_start|><|image_pad|><|vision_end|>`` per image, in image order.
  vLLM (``vllm/entrypoints/chat_utils.py``, ``vllm/renderers/hf.py``) auto-detects the template's
  content format as ``openai`` (it loops over ``message['content']``), so the template receives
  ``[{"type": "text", "text": RAW}, {"type": "image"}, ...]`` and renders ``RAW`` unchanged; under
  ``--chat-template-content-format string`` it receives ``RAW`` itself (vLLM adds no placeholder
  when the text already holds one per image) and renders it unchanged too. The server's processor
  then expands each ``<|image_pad|>`` as the reference's did. Images are PNGs (lossless) of exactly
  the rendered view (the reference's 512-long-side bicubic resize,
  :mod:`zoomearth.scene.reference`): no client-side resize; the server's processor resizes them as
  the reference's processor did.
  ``continue_final_message`` is *not* the way: it still applies the server's template, and
  transformers strips the final message's trailing whitespace (the stage text ends in
  ``"assistant\n"``). ``top_k: -1`` and ``top_p: 1.0`` switch off the sampling filters a server
  would otherwise take from the checkpoint's ``generation_config.json`` (the reference sets both
  to None). The reply is the message content, stripped (the reference strips the decoded text).

  Servers: vLLM honours a request ``chat_template`` -- recent versions only when started with
  ``--trust-request-chat-template`` (it answers HTTP 400 otherwise; the error says so) -- and needs
  ``--limit-mm-per-prompt`` of at least 2 images for stage 2. SGLang's and Ollama's chat endpoints
  and OpenAI's API have no request chat template: they would apply their own, so the input would
  not be ZoomEarth-3B's.

``agent`` -- the general multi-step agent (:mod:`zoomearth.agent.conversation`, chat layout).
  Images are resized *client-side* to exactly the size a Qwen2.5-VL processor would give them
  (:func:`zoomearth.agent.frames.seen_size`, multiples of 28), then sent as base64 PNG data URLs:
  the server's own resize is then a no-op, so the frame of the boxes the model writes is known
  without asking the server. Greedy (``planner_temperature``, default 0), ``max_tokens =
  planner_max_new_tokens`` (default 512). Boxes: ``planner_coord_mode``, else ``pixels``.

Both profiles report, per image, the size at which a Qwen2.5-VL processor sees it (in the
``zoomearth`` profile for the record only: its boxes are in the 512-long-side overview frame) and
the visual tokens, computed with the processor's arithmetic.

Importing this module does not import httpx or PIL.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

from zoomearth.agent.backends.hf import AGENT_MAX_NEW_TOKENS
from zoomearth.agent.base import Planner, PlannerError, PlanReply, PlanRequest
from zoomearth.agent.conversation import Conversation, build_conversation, to_chat_dicts
from zoomearth.agent.frames import QWEN25_VL, VisionSpec, qwen_visual_tokens, seen_size
from zoomearth.agent.profiles import (
    StageInputs,
    ZoomEarthProfile,
    load_zoomearth_prompt,
    resolve_profile,
    stage_inputs,
)
from zoomearth.agent.prompting import PromptTemplate, load_template
from zoomearth.agent.protocol import VISION_PLACEHOLDER

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.models.pool import ModelPool

__all__ = ["PASSTHROUGH_CHAT_TEMPLATE", "OpenAIPlanner", "encode_png_data_url"]

#: The per-request chat template of the ``zoomearth`` profile: the text of every message, in
#: order, and nothing else. A string ``content`` is written as it is; a list of parts has its
#: ``text`` parts written (image parts write nothing: the text holds their placeholders). No
#: template data outside the tags, so no whitespace setting of the jinja environment can change
#: the output.
PASSTHROUGH_CHAT_TEMPLATE: Final = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
)
#: The token a Qwen2-VL-family processor expands to one image's visual tokens.
_IMAGE_PAD: Final = "<|image_pad|>"
#: ``top_k`` value that switches the filter off (vLLM and SGLang; also ``0`` in recent vLLM).
_TOP_K_OFF: Final = -1

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
PLACEHOLDER_COUNT_TEMPLATE: Final = (
    "The zoomearth profile's stage-{stage} text holds {found} image placeholder(s) "
    "{placeholder} ({pads} {pad}) for {images} image(s): the prompt file (planner_prompt) must "
    "hold exactly one, where the overview goes (stage 2 adds the crop's)."
)
TRUST_TEMPLATE_HINT: Final = (
    " -- the zoomearth profile sends its own chat_template (the raw prompt, no server template): "
    "start vLLM with --trust-request-chat-template."
)
REASONING_SPLIT_NOTE: Final = (
    "the server split reasoning off the reply (a reasoning parser is on); the zoomearth profile "
    "reads the content only, as the reference: serve ZoomEarth-3B without a reasoning parser"
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
            listed model), ``planner_profile``, ``planner_api_key``, ``planner_timeout_s``,
            ``planner_max_retries``, ``planner_max_new_tokens``, ``planner_temperature``,
            ``planner_seed``, ``planner_coord_mode`` (agent profile) and ``planner_prompt``
            (agent profile: a template file; zoomearth profile: the stage-1 text).
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
        self.profile, self.profile_reason = resolve_profile(settings.planner_profile, self.model)
        self.vision: VisionSpec = QWEN25_VL
        self.backoff_s = 0.5
        self._template: PromptTemplate | None = None
        self._zoomearth: ZoomEarthProfile | None = None
        self._client: Any = None

    # ---- resources -------------------------------------------------------------------------------

    @property
    def template(self) -> PromptTemplate:
        """The agent profile's prompt sections (``planner_prompt`` over the packaged default)."""
        if self._template is None:
            self._template = load_template(self.settings.planner_prompt)
        return self._template

    @property
    def zoomearth(self) -> ZoomEarthProfile:
        """The zoomearth profile with the checkpoint's prompt text (``planner_prompt``).

        Raises:
            PlannerError: No prompt file configured, unreadable, or without ``{{question}}``.
        """
        if self._zoomearth is None:
            self._zoomearth = ZoomEarthProfile(load_zoomearth_prompt(self.settings.planner_prompt))
        return self._zoomearth

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
        """Backend, server, model and profile."""
        frame = "512-frame boxes" if self.profile == "zoomearth" else f"boxes {self.coord_mode}"
        return (
            f"openai: {self.model or '(server default model)'} at {self.base_url or '(unset)'} "
            f"(profile {self.profile}, {frame})"
        )

    # ---- HTTP ------------------------------------------------------------------------------------

    def _hint(self, status: int, message: str) -> str:
        """What to check for an HTTP error answer."""
        lowered = message.lower()
        if self.profile == "zoomearth" and "chat template" in lowered and "trust" in lowered:
            return TRUST_TEMPLATE_HINT
        return _STATUS_HINTS.get(status, "")

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
                message = _server_message(response)
                raise PlannerError(
                    HTTP_ERROR_TEMPLATE.format(
                        url=url,
                        status=response.status_code,
                        message=message,
                        hint=self._hint(response.status_code, message),
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
        """``planner_model``, else the server's first listed model (the profile follows it)."""
        if self.model:
            return self.model
        body = self._request("GET", "/models")
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], Mapping):
            raise PlannerError(
                NO_MODEL_TEMPLATE.format(url=self.base_url, problem="empty model list")
            )
        self.model = str(data[0].get("id"))
        self.profile, self.profile_reason = resolve_profile(
            self.settings.planner_profile, self.model
        )
        return self.model

    # ---- planning --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Learn the served model's name (and so the profile) before the graph's first turn.

        Without ``planner_model`` the profile depends on the name the server lists; the graph
        fixes each question's protocol before planning, so the name is fetched here.

        Raises:
            PlannerError: The server cannot be reached or lists no model.
        """
        if not self.model:
            self._served_model()

    def plan(self, request: PlanRequest) -> PlanReply:
        """Ask the server for one turn (or one stage, in the zoomearth profile).

        Raises:
            PlannerError: The server is unreachable, times out, answers an HTTP error, or sends
                something that is not a chat completion; (zoomearth profile) no usable prompt
                file is configured.
        """
        model = self._served_model()
        if self.profile == "zoomearth":
            return self._plan_zoomearth(request, model)
        return self._plan_agent(request, model)

    def _seed(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.settings.planner_seed is not None:
            payload["seed"] = int(self.settings.planner_seed)
        return payload

    # ---- the zoomearth profile -------------------------------------------------------------------

    def stage_messages(
        self, request: PlanRequest, inputs: StageInputs
    ) -> tuple[list[dict[str, Any]], dict[int, tuple[int, int]], int]:
        """The zoomearth profile's one user message, the seen sizes and the visual tokens.

        Args:
            request: The request (views and the renderer).
            inputs: The stage's raw text and image views
                (:func:`~zoomearth.agent.profiles.stage_inputs`).

        Returns:
            ``(messages, seen_sizes, visual_tokens)``: ``[{"role": "user", "content": [text part
            with the raw text, one image_url part per image]}]``, each image a PNG of exactly the
            rendered view; the seen sizes are a Qwen2.5-VL processor's (for the record).

        Raises:
            PlannerError: The text does not hold exactly one image placeholder per image.
        """
        images = len(inputs.image_view_ids)
        found = inputs.text.count(VISION_PLACEHOLDER)
        pads = inputs.text.count(_IMAGE_PAD)
        if found != images or pads != images:
            raise PlannerError(
                PLACEHOLDER_COUNT_TEMPLATE.format(
                    stage=inputs.stage,
                    found=found,
                    placeholder=VISION_PLACEHOLDER,
                    pads=pads,
                    pad=_IMAGE_PAD,
                    images=images,
                )
            )
        import numpy as np

        parts: list[dict[str, Any]] = [{"type": "text", "text": inputs.text}]
        seen: dict[int, tuple[int, int]] = {}
        tokens = 0
        for view_id in inputs.image_view_ids:
            rgb = np.asarray(request.render(view_id))
            height, width = int(rgb.shape[0]), int(rgb.shape[1])
            size = seen_size(width, height, self.vision)
            seen[view_id] = size
            tokens += qwen_visual_tokens(*size, self.vision.patch_size, self.vision.merge_size)
            parts.append({"type": "image_url", "image_url": {"url": encode_png_data_url(rgb)}})
        return [{"role": "user", "content": parts}], seen, tokens

    def stage_payload(self, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The zoomearth profile's request body (see the module docstring).

        Args:
            model: The served model name.
            messages: From :meth:`stage_messages`.

        Returns:
            The JSON body: the pass-through chat template, no generation prompt, the profile's
            generation settings.
        """
        profile = self.zoomearth
        settings = self.settings
        temperature = settings.planner_temperature
        return self._seed(
            {
                "model": model,
                "messages": messages,
                "chat_template": PASSTHROUGH_CHAT_TEMPLATE,
                "add_generation_prompt": False,
                "continue_final_message": False,
                "max_tokens": int(settings.planner_max_new_tokens or profile.max_new_tokens),
                "temperature": float(profile.temperature if temperature is None else temperature),
                "top_p": 1.0,
                "top_k": _TOP_K_OFF,
                "skip_special_tokens": True,
                "stream": False,
            }
        )

    def _plan_zoomearth(self, request: PlanRequest, model: str) -> PlanReply:
        inputs = stage_inputs(self.zoomearth, request)
        messages, seen, tokens = self.stage_messages(request, inputs)
        body = self._request("POST", "/chat/completions", self.stage_payload(model, messages))
        content, reasoning = self._message(body)
        notes = [f"zoomearth profile, stage {inputs.stage}"]
        if reasoning.strip():
            notes.append(REASONING_SPLIT_NOTE)
        return PlanReply(
            text=content.strip(),  # the reference: decode(skip_special_tokens=True).strip()
            seen_sizes=seen,
            visual_tokens=tokens,
            backend=self.name,
            model=model,
            notes=notes,
        )

    # ---- the agent profile -----------------------------------------------------------------------

    def build(self, request: PlanRequest) -> Conversation:
        """The agent profile's neutral conversation for a request (for inspection and tests)."""
        return build_conversation(request, "chat", self.coord_mode, self.template)

    def messages(
        self, request: PlanRequest, conversation: Conversation
    ) -> tuple[list[dict[str, Any]], dict[int, tuple[int, int]], int]:
        """The agent profile's OpenAI messages, the seen sizes and the visual tokens.

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

    def _plan_agent(self, request: PlanRequest, model: str) -> PlanReply:
        conversation = self.build(request)
        messages, seen, tokens = self.messages(request, conversation)
        temperature = self.settings.planner_temperature
        payload = self._seed(
            {
                "model": model,
                "messages": messages,
                "max_tokens": int(self.settings.planner_max_new_tokens or AGENT_MAX_NEW_TOKENS),
                "temperature": float(0.0 if temperature is None else temperature),
                "stream": False,
            }
        )
        body = self._request("POST", "/chat/completions", payload)
        content, reasoning = self._message(body)
        return PlanReply(
            text=_join_reasoning(content, reasoning),
            seen_sizes=seen,
            visual_tokens=tokens,
            backend=self.name,
            model=model,
            notes=list(conversation.notes),
        )

    # ---- replies ---------------------------------------------------------------------------------

    def _message(self, body: Any) -> tuple[str, str]:
        """``(content, reasoning)`` texts of the first choice's message.

        Raises:
            PlannerError: The body is not a chat completion.
        """
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
        return content, reasoning


def _join_reasoning(content: str, reasoning: str) -> str:
    """The agent profile's reply: content, with reasoning a server split off put back."""
    if not content.strip():
        return reasoning
    if reasoning.strip() and "<think>" not in content:
        # A reasoning parser split the <think> part off; zoom boxes written while reasoning
        # live there, so put it back where the protocol expects it.
        return f"<think>{reasoning}</think>{content}"
    return content
