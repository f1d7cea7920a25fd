"""Tests for the openai planner backend against a real HTTP server on 127.0.0.1.

The server (stdlib http.server in a thread) serves ``/v1/chat/completions`` and ``/v1/models``
with scripted responses and records every request it receives.
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
from zoomearth.agent.backends.openai_compat import OpenAIPlanner
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

    def _make(base_url: str | None, **flags: Any) -> OpenAIPlanner:
        values = {
            "data_dir": tmp_path / "data",
            "cache_dir": tmp_path / "cache",
            "planner": "openai",
            "planner_base_url": base_url,
            "planner_api_key": "sk-test",
            "planner_model": "HappyBug/ZoomEarth-3B",
            "planner_max_new_tokens": 64,
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
        question="What colour is the roof?",
        overview_id=0,
        transcript=list(entries),
        views=VIEWS,
        render=_render,
    )


def _png_size(url: str) -> tuple[int, int]:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    raw = base64.b64decode(url[len(prefix) :])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(raw)) as image:
        assert image.mode == "RGB"
        return image.size


def test_zoomearth_layout_request_and_reply(server: FakeServer, make) -> None:
    server.script.append(Scripted(200, completion(STAGE2)))
    planner = make(server.base_url)
    assert (planner.layout, planner.coord_mode) == ("zoomearth", "pixels")
    reply = planner.plan(
        _request(TranscriptEntry("planner", STAGE1), TranscriptEntry("zoom", view_id=1))
    )
    assert reply.text == STAGE2
    assert parse_response(reply.text).answer == "red"
    assert reply.backend == "openai" and reply.model == "HappyBug/ZoomEarth-3B"
    assert reply.seen_sizes == {0: (504, 392), 1: (504, 504)}
    assert reply.visual_tokens == 252 + 324

    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["json"]
    assert body["model"] == "HappyBug/ZoomEarth-3B"
    assert body["max_tokens"] == 64 and body["temperature"] == 0.0 and body["stream"] is False
    user, assistant = body["messages"]
    # [user: overview + question/instructions, assistant: stage-1 text cut before <answer> + crop]
    assert user["role"] == "user"
    assert [p["type"] for p in user["content"]] == ["image_url", "text"]
    assert user["content"][1]["text"].startswith("What colour is the roof?")
    assert assistant["role"] == "assistant"
    assert assistant["content"][0] == {"type": "text", "text": STAGE1.split("<answer>")[0]}
    assert assistant["content"][1]["type"] == "image_url"
    # Each image is a PNG of exactly the size the model sees (the server's resize is a no-op).
    assert _png_size(user["content"][0]["image_url"]["url"]) == (504, 392)
    assert _png_size(assistant["content"][1]["image_url"]["url"]) == (504, 504)


def test_chat_layout_for_general_models(server: FakeServer, make) -> None:
    server.script.append(Scripted(200, completion("<answer>red</answer>")))
    planner = make(server.base_url, planner_model="qwen2.5-vl-7b-instruct")
    assert planner.layout == "chat"
    planner.plan(
        _request(TranscriptEntry("planner", STAGE1), TranscriptEntry("zoom", "roof", view_id=1))
    )
    messages = server.requests[0]["json"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == STAGE1  # a plain string, whole turn
    assert [p["type"] for p in messages[2]["content"]] == ["text", "image_url"]


def test_model_name_from_the_server(server: FakeServer, make) -> None:
    server.models = ["zoomearth-3b"]
    server.script.append(Scripted(200, completion("<answer>x</answer>")))
    planner = make(server.base_url, planner_model=None)
    reply = planner.plan(_request())
    assert [r["path"] for r in server.requests] == ["/v1/models", "/v1/chat/completions"]
    assert reply.model == "zoomearth-3b" and planner.layout == "zoomearth"
    assert server.requests[1]["json"]["model"] == "zoomearth-3b"


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


def test_reasoning_content(server: FakeServer, make) -> None:
    server.script.extend(
        [
            Scripted(200, completion("", reasoning="<answer>red</answer>")),
            Scripted(
                200, completion("<answer>red</answer>", reasoning='look {"bbox_2d": [1, 2, 3, 4]}')
            ),
        ]
    )
    planner = make(server.base_url)
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
