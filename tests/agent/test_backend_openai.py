"""Tests for the openai planner backend against a real HTTP server on 127.0.0.1.

The server (stdlib http.server in a thread) serves ``/v1/chat/completions`` and ``/v1/models``
with scripted responses and records every request it receives. The zoomearth-profile tests assert
the exact request body, and render its chat template the way a vLLM server does, to show that the
model's input is the raw stage text byte for byte.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from zoomearth.agent import parse_response
from zoomearth.agent.backends.openai_compat import PASSTHROUGH_CHAT_TEMPLATE, OpenAIPlanner
from zoomearth.agent.base import PlannerError, PlanRequest, TranscriptEntry
from zoomearth.config import load_settings
from zoomearth.geometry import PixelBox, ViewSpec

STAGE1 = (
    '<think>The roof is small. {"bbox_2d": [126, 98, 252, 196], "label": "roof"}</think>'
    "<answer>red</answer>"
)
STAGE2 = "<think>Now it is clear: the roof is red.</think><answer>red</answer>"
VIEWS = {
    0: ViewSpec(0, PixelBox(0, 0, 10000, 7500), 512, 384),
    1: ViewSpec(1, PixelBox(2500, 1875, 3012, 2387), 512, 512),
}
QUESTION = "What colour is the roof?"
GENERAL_MODEL = "qwen2.5-vl-7b-instruct"
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"

# A made-up zoomearth prompt file with the reference's whitespace quirks: a leading newline, a
# space before the system turn's <|im_end|>, no newline between <|im_end|> and
# <|im_start|>assistant, and the text ending in "assistant\n" (trailing whitespace that a chat
# template's continue_final_message would strip). Also trailing spaces inside the instructions.
PROMPT_HEAD = (
    "\n<|im_start|>system\nYou are a helpful assistant. <|im_end|>\n<|im_start|>user\n"
    + PLACEHOLDER
)
PROMPT_INSTRUCTIONS = (
    "\nYou look at a satellite image. \n"
    '  1. <think> ... </think> with one {"bbox_2d": [x1, y1, x2, y2], "label": "..."}   \n'
    "  2. <answer> ... </answer>\n"
)
PROMPT_TAIL = "<|im_end|><|im_start|>assistant\n"


def completion(content: str | None, reasoning: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


@dataclass
class Scripted:
    status: int = 200
    body: Any = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class FakeServer:
    """An OpenAI-compatible server that answers from a script and records the requests."""

    def __init__(self) -> None:
        self.script: deque[Scripted] = deque()
        self.requests: list[dict[str, Any]] = []
        self.models = ["served-model"]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _reply(self, item: Scripted) -> None:
                if item.delay:
                    time.sleep(item.delay)
                data = item.body if isinstance(item.body, bytes) else json.dumps(item.body).encode()
                try:
                    self.send_response(item.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in item.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_GET(self) -> None:
                outer.requests.append(
                    {"method": "GET", "path": self.path, "headers": dict(self.headers)}
                )
                if self.path == "/v1/models":
                    body = {"object": "list", "data": [{"id": m} for m in outer.models]}
                    self._reply(Scripted(200, body))
                else:
                    self._reply(Scripted(404, {"error": {"message": "no route"}}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                outer.requests.append(
                    {
                        "method": "POST",
                        "path": self.path,
                        "headers": dict(self.headers),
                        "json": body,
                    }
                )
                item = outer.script.popleft() if outer.script else Scripted(500, {"error": "empty"})
                self._reply(item)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    srv = FakeServer()
    yield srv
    srv.close()


@pytest.fixture()
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The fake server is local: never route to it through a proxy from the environment.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    made: list[OpenAIPlanner] = []
    prompt = tmp_path / "zoomearth_prompt.txt"
    prompt.write_bytes((PROMPT_HEAD + "{{question}}" + PROMPT_INSTRUCTIONS + PROMPT_TAIL).encode())

    def _make(base_url: str | None, **flags: Any) -> OpenAIPlanner:
        values = {
            "data_dir": tmp_path / "data",
            "cache_dir": tmp_path / "cache",
            "planner": "openai",
            "planner_base_url": base_url,
            "planner_api_key": "sk-test",
            "planner_model": "HappyBug/ZoomEarth-3B",
            "planner_prompt": prompt,
            "planner_timeout_s": 5.0,
            "planner_max_retries": 2,
        }
        values.update(flags)
        planner = OpenAIPlanner(load_settings(flags=values, environ={}))
        planner.backoff_s = 0.01
        made.append(planner)
        return planner

    yield _make
    for planner in made:
        planner.close()


def _render(view_id: int) -> np.ndarray:
    v = VIEWS[view_id]
    rng = np.random.default_rng(view_id)
    return rng.integers(0, 255, (v.height, v.width, 3), dtype=np.uint8)


def _request(*entries: TranscriptEntry) -> PlanRequest:
    return PlanRequest(
        question=QUESTION,
        overview_id=0,
        transcript=list(entries),
        views=VIEWS,
        render=_render,
    )


def _png(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    raw = base64.b64decode(url[len(prefix) :])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(raw)) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def _png_size(url: str) -> tuple[int, int]:
    height, width = _png(url).shape[:2]
    return width, height


def _stage1_text() -> str:
    """The stage-1 raw text, built independently of the profile's code."""
    return PROMPT_HEAD + QUESTION + PROMPT_INSTRUCTIONS + PROMPT_TAIL


def _stage2_text() -> str:
    """Stage 1 + the stage-1 output before <answer> + the crop's placeholder."""
    return _stage1_text() + STAGE1[: STAGE1.index("<answer>")] + PLACEHOLDER


def _expected_body(text: str, images: int, **generation: Any) -> dict[str, Any]:
    image = {"type": "image_url", "image_url": {"url": "<png>"}}
    body: dict[str, Any] = {
        "model": "HappyBug/ZoomEarth-3B",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": text}] + [image] * images}
        ],
        "chat_template": PASSTHROUGH_CHAT_TEMPLATE,
        "add_generation_prompt": False,
        "continue_final_message": False,
        "max_tokens": 1024,
        "temperature": 0.01,
        "top_p": 1.0,
        "top_k": -1,
        "skip_special_tokens": True,
        "stream": False,
    }
    body.update(generation)
    return body


def _check_images(body: dict[str, Any], view_ids: list[int]) -> dict[str, Any]:
    """Assert the images are lossless PNGs of exactly the rendered views; mask their URLs."""
    parts = body["messages"][0]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == len(view_ids)
    for url, view_id in zip(urls, view_ids, strict=True):
        view = VIEWS[view_id]
        assert _png_size(url) == (view.width, view.height)  # no client-side resize
        assert np.array_equal(_png(url), _render(view_id))
    masked = json.loads(json.dumps(body))
    for part in masked["messages"][0]["content"]:
        if part["type"] == "image_url":
            part["image_url"]["url"] = "<png>"
    return masked


def test_zoomearth_stage1_request_body(server: FakeServer, make) -> None:
    server.script.append(Scripted(200, completion("\n  " + STAGE1 + " \n")))
    planner = make(server.base_url)
    assert planner.profile == "zoomearth"
    assert "names a ZoomEarth checkpoint" in planner.profile_reason
    reply = planner.plan(_request())

    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["json"]
    assert _check_images(body, [0]) == _expected_body(_stage1_text(), 1)
    text = body["messages"][0]["content"][0]["text"]
    assert text == _stage1_text()  # byte for byte: leading newline, spaces, "assistant\n"
    assert text.startswith("\n<|im_start|>system\nYou are a helpful assistant. <|im_end|>\n")
    assert text.endswith("<|im_end|><|im_start|>assistant\n")
    assert text.count(PLACEHOLDER) == text.count("<|image_pad|>") == 1

    assert reply.text == STAGE1  # stripped, as the reference strips the decoded text
    assert reply.backend == "openai" and reply.model == "HappyBug/ZoomEarth-3B"
    assert reply.seen_sizes == {0: (504, 392)}  # the processor's size, for the record
    assert reply.visual_tokens == 252
    assert "zoomearth profile, stage 1" in reply.notes


def test_zoomearth_stage2_request_body(server: FakeServer, make) -> None:
    server.script.append(Scripted(200, completion(STAGE2)))
    planner = make(server.base_url)
    reply = planner.plan(
        _request(TranscriptEntry("planner", STAGE1), TranscriptEntry("zoom", "roof", view_id=1))
    )
    body = server.requests[0]["json"]
    assert _check_images(body, [0, 1]) == _expected_body(_stage2_text(), 2)
    text = body["messages"][0]["content"][0]["text"]
    assert text == _stage2_text()
    assert text.count(PLACEHOLDER) == text.count("<|image_pad|>") == 2
    assert text.endswith("</think>" + PLACEHOLDER)  # the assistant turn continues with the crop
    assert reply.text == STAGE2 and parse_response(reply.text).answer == "red"
    assert reply.seen_sizes == {0: (504, 392), 1: (504, 504)}
    assert reply.visual_tokens == 252 + 324
    assert "zoomearth profile, stage 2" in reply.notes


def _vllm_content_loops(template: str) -> bool:
    """vLLM's content-format rule: ``openai`` when a loop over ``messages`` holds a loop over
    ``<message>['content']`` (``_detect_content_format`` in vllm/renderers/hf.py), else ``string``.
    """
    import jinja2
    from jinja2 import nodes

    ast = jinja2.Environment().parse(template)
    for outer in ast.find_all(nodes.For):
        if not (isinstance(outer.iter, nodes.Name) and outer.iter.name == "messages"):
            continue
        assert isinstance(outer.target, nodes.Name)
        for inner in outer.find_all(nodes.For):
            it = inner.iter
            if (
                isinstance(it, nodes.Getitem)
                and isinstance(it.node, nodes.Name)
                and it.node.name == outer.target.name
                and isinstance(it.arg, nodes.Const)
                and it.arg.value == "content"
            ):
                return True
    return False


def _vllm_conversation(messages: list[dict[str, Any]], content_format: str) -> list[dict]:
    """What a vLLM server passes to the chat template for OpenAI messages (chat_utils.py).

    ``openai``: text parts as they are, each image as ``{"type": "image"}``. ``string``: the text
    parts joined with newlines; the model's image placeholder is added in front once per image
    that the text does not already hold (``_get_full_multimodal_text_prompt``).
    """
    conversation = []
    for message in messages:
        parts = message["content"]
        if content_format == "openai":
            content: Any = [
                {"type": "text", "text": p["text"]} if p["type"] == "text" else {"type": "image"}
                for p in parts
            ]
        else:
            text = "\n".join(p["text"] for p in parts if p["type"] == "text")
            images = sum(p["type"] == "image_url" for p in parts)
            missing = images - text.count(PLACEHOLDER)
            assert missing >= 0  # vLLM rejects more placeholders than images
            content = "\n".join([PLACEHOLDER] * missing + [text])
        conversation.append({"role": message["role"], "content": content})
    return conversation


@pytest.mark.parametrize("stage", [1, 2])
def test_passthrough_template_renders_the_raw_text(server: FakeServer, make, stage: int) -> None:
    import jinja2.sandbox
    from transformers.utils.chat_template_utils import render_jinja_template

    server.script.append(Scripted(200, completion(STAGE2)))
    entries = [TranscriptEntry("planner", STAGE1), TranscriptEntry("zoom", view_id=1)]
    entries = entries if stage == 2 else []
    make(server.base_url).plan(_request(*entries))
    body = server.requests[0]["json"]
    raw = _stage2_text() if stage == 2 else _stage1_text()
    template = body["chat_template"]
    assert _vllm_content_loops(template)  # vLLM auto-detects the "openai" content format
    # A server started with --chat-template-content-format string gets the same text.
    for content_format in ("openai", "string"):
        conversation = _vllm_conversation(body["messages"], content_format)
        rendered, _ = render_jinja_template(
            conversations=[conversation],
            chat_template=template,
            add_generation_prompt=body["add_generation_prompt"],
            continue_final_message=body["continue_final_message"],
        )
        assert rendered == [raw], content_format
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        assert env.from_string(template).render(messages=conversation) == raw


def test_zoomearth_generation_settings(server: FakeServer, make) -> None:
    server.script.append(Scripted(200, completion(STAGE1)))
    planner = make(
        server.base_url, planner_temperature=0.3, planner_seed=7, planner_max_new_tokens=300
    )
    planner.plan(_request())
    body = _check_images(server.requests[0]["json"], [0])
    assert body == _expected_body(_stage1_text(), 1, max_tokens=300, temperature=0.3, seed=7)


def test_zoomearth_needs_the_prompt_file(server: FakeServer, make, tmp_path: Path) -> None:
    planner = make(server.base_url, planner_prompt=None)
    with pytest.raises(PlannerError, match="planner_prompt"):
        planner.plan(_request())
    missing = make(server.base_url, planner_prompt=tmp_path / "nope.txt")
    with pytest.raises(PlannerError, match="planner_prompt"):
        missing.plan(_request())
    assert server.requests == []  # nothing is sent without the model's own text


def test_zoomearth_placeholder_count_is_checked(server: FakeServer, make, tmp_path: Path) -> None:
    prompt = tmp_path / "no_image.txt"
    prompt.write_text("<|im_start|>user\n{{question}}<|im_end|>\n<|im_start|>assistant\n")
    planner = make(server.base_url, planner_prompt=prompt)
    expected = r"stage-1 text holds 0 image placeholder\(s\).*for 1 image.*planner_prompt"
    with pytest.raises(PlannerError, match=expected):
        planner.plan(_request())
    assert server.requests == []


def test_zoomearth_untrusted_template_hint(server: FakeServer, make) -> None:
    message = (
        "Chat template is passed with request, but --trust-request-chat-template is not set. "
        "Refused request with untrusted chat template."
    )
    server.script.append(Scripted(400, {"object": "error", "message": message, "code": 400}))
    with pytest.raises(PlannerError) as info:
        make(server.base_url).plan(_request())
    assert "HTTP 400" in str(info.value)
    assert "start vLLM with --trust-request-chat-template" in str(info.value)


def test_zoomearth_reply_ignores_split_reasoning(server: FakeServer, make) -> None:
    server.script.append(Scripted(200, completion(" <answer>red</answer>", reasoning="hmm")))
    reply = make(server.base_url).plan(_request())
    assert reply.text == "<answer>red</answer>"  # content only, stripped; no <think> join
    assert any("reasoning parser" in note for note in reply.notes)


def test_explicit_profiles(make, server: FakeServer) -> None:
    zoomearth = make(server.base_url, planner_model="my-finetune", planner_profile="zoomearth")
    assert zoomearth.profile == "zoomearth" and "explicitly" in zoomearth.profile_reason
    assert "profile zoomearth, 512-frame boxes" in zoomearth.describe()
    agent = make(server.base_url, planner_profile="agent", planner_prompt=None)
    assert agent.profile == "agent" and "profile agent, boxes pixels" in agent.describe()


def test_agent_profile_chat_layout(server: FakeServer, make) -> None:
    server.script.append(Scripted(200, completion("<answer>red</answer>")))
    planner = make(server.base_url, planner_model=GENERAL_MODEL, planner_prompt=None)
    assert (planner.profile, planner.coord_mode) == ("agent", "pixels")
    assert "does not name ZoomEarth" in planner.profile_reason
    reply = planner.plan(
        _request(TranscriptEntry("planner", STAGE1), TranscriptEntry("zoom", "roof", view_id=1))
    )
    body = server.requests[0]["json"]
    assert set(body) == {"model", "messages", "max_tokens", "temperature", "stream"}
    assert body["model"] == GENERAL_MODEL
    assert body["max_tokens"] == 512 and body["temperature"] == 0.0 and body["stream"] is False
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0]["type"] == "image_url"
    assert messages[1]["content"] == STAGE1  # a plain string, whole turn
    assert [p["type"] for p in messages[2]["content"]] == ["text", "image_url"]
    # Each image is a PNG of exactly the size the model sees (the server's resize is a no-op).
    assert _png_size(messages[0]["content"][0]["image_url"]["url"]) == (504, 392)
    assert _png_size(messages[2]["content"][1]["image_url"]["url"]) == (504, 504)
    assert reply.seen_sizes == {0: (504, 392), 1: (504, 504)}
    assert reply.visual_tokens == 252 + 324
    assert not any("zoomearth profile" in note for note in reply.notes)


def test_agent_profile_generation_settings(server: FakeServer, make) -> None:
    server.script.append(Scripted(200, completion("<answer>red</answer>")))
    planner = make(
        server.base_url,
        planner_model=GENERAL_MODEL,
        planner_prompt=None,
        planner_temperature=0.5,
        planner_seed=3,
        planner_max_new_tokens=64,
    )
    planner.plan(_request())
    body = server.requests[0]["json"]
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (64, 0.5, 3)
    assert "chat_template" not in body


@pytest.mark.parametrize(
    ("served", "profile"), [("zoomearth-3b", "zoomearth"), (GENERAL_MODEL, "agent")]
)
def test_model_name_from_the_server(server: FakeServer, make, served: str, profile: str) -> None:
    server.models = [served]
    server.script.append(Scripted(200, completion("<answer>x</answer>")))
    prompt = {} if profile == "zoomearth" else {"planner_prompt": None}
    planner = make(server.base_url, planner_model=None, **prompt)
    assert planner.profile == "agent"  # nothing names ZoomEarth before the server is asked
    reply = planner.plan(_request())
    assert [r["path"] for r in server.requests] == ["/v1/models", "/v1/chat/completions"]
    assert reply.model == served and planner.profile == profile
    assert served in planner.profile_reason
    body = server.requests[1]["json"]
    assert body["model"] == served
    assert ("chat_template" in body) == (profile == "zoomearth")
    assert served in planner.describe() and f"profile {profile}" in planner.describe()


def test_retries_a_503_then_succeeds(server: FakeServer, make) -> None:
    server.script.extend(
        [
            Scripted(503, {"error": {"message": "loading model"}}),
            Scripted(429, {"error": "slow down"}, headers={"Retry-After": "0"}),
            Scripted(200, completion(STAGE2)),
        ]
    )
    planner = make(server.base_url, planner_max_retries=2)
    assert planner.plan(_request()).text == STAGE2
    assert len(server.requests) == 3


def test_retries_are_bounded(server: FakeServer, make) -> None:
    server.script.extend([Scripted(503, {"error": {"message": "overloaded"}})] * 3)
    planner = make(server.base_url, planner_max_retries=1)
    with pytest.raises(PlannerError, match="HTTP 503: overloaded") as info:
        planner.plan(_request())
    assert "tried 2 times" in str(info.value)
    assert len(server.requests) == 2


def test_400_is_not_retried_and_shows_the_server_message(server: FakeServer, make) -> None:
    message = "At most 1 image(s) may be provided in one request."
    server.script.append(Scripted(400, {"object": "error", "message": message, "code": 400}))
    planner = make(server.base_url)
    with pytest.raises(PlannerError) as info:
        planner.plan(_request())
    assert "HTTP 400" in str(info.value) and message in str(info.value)
    assert len(server.requests) == 1


def test_401_hints_at_the_api_key(server: FakeServer, make) -> None:
    server.script.append(Scripted(401, {"error": {"message": "invalid key"}}))
    with pytest.raises(PlannerError, match="invalid key -- check planner_api_key"):
        make(server.base_url, planner_max_retries=0).plan(_request())


def test_refused_connection(make) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    planner = make(url, planner_max_retries=1)
    with pytest.raises(PlannerError) as info:
        planner.plan(_request())
    assert str(info.value).startswith(
        f"cannot reach the planner server at {url}: connection refused. "
        "Start the server or set planner_base_url"
    )


def test_timeout(server: FakeServer, make) -> None:
    server.script.append(Scripted(200, completion("late"), delay=1.5))
    planner = make(server.base_url, planner_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(PlannerError, match=r"did not answer within 0\.2 s \(planner_timeout_s\)"):
        planner.plan(_request())
    assert time.monotonic() - started < 1.4  # not retried: a slow generation would time out again
    assert len(server.requests) == 1


def test_agent_reasoning_content(server: FakeServer, make) -> None:
    server.script.extend(
        [
            Scripted(200, completion("", reasoning="<answer>red</answer>")),
            Scripted(
                200, completion("<answer>red</answer>", reasoning='look {"bbox_2d": [1, 2, 3, 4]}')
            ),
        ]
    )
    planner = make(server.base_url, planner_model=GENERAL_MODEL, planner_prompt=None)
    assert planner.plan(_request()).text == "<answer>red</answer>"
    text = planner.plan(_request()).text
    assert text == '<think>look {"bbox_2d": [1, 2, 3, 4]}</think><answer>red</answer>'
    assert parse_response(text).zooms[0].box == (1.0, 2.0, 3.0, 4.0)


def test_bad_responses(server: FakeServer, make) -> None:
    server.script.extend([Scripted(200, {"object": "nothing"}), Scripted(200, b"<html>")])
    planner = make(server.base_url)
    with pytest.raises(PlannerError, match="no choices"):
        planner.plan(_request())
    with pytest.raises(PlannerError, match="not JSON"):
        planner.plan(_request())


def test_needs_a_base_url(make) -> None:
    with pytest.raises(PlannerError, match="set planner_base_url"):
        make(None).plan(_request())


def test_factory_builds_this_backend(make, server: FakeServer) -> None:
    from zoomearth.agent.backends import make_planner

    planner = make(server.base_url)
    built = make_planner(planner.settings)
    assert isinstance(built, OpenAIPlanner)
    assert "HappyBug/ZoomEarth-3B" in built.describe()
    built.close()
