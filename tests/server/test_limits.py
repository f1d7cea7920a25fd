"""Run limits: a full queue answers 429, a run past run_timeout_s is cancelled (408 / SSE error);
a non-loopback bind without a token is refused."""

from __future__ import annotations

import re
import threading
import time

import httpx
import openai
import pytest

from tests.server.helpers import (
    ServerThread,
    SilentTool,
    SlowTool,
    agent_factory,
    client,
    data_url,
    geotiff_bytes,
    tool_call,
    user,
)


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    tmp = tmp_path_factory.mktemp("tight")
    settings = load_settings(flags={
        "data_dir": tmp / "data", "cache_dir": tmp / "cache", "max_concurrent_runs": 1,
        "max_queued_runs": 0, "run_timeout_s": 1.5,
    }, environ={})
    plans = {"slow": [tool_call("slow_tool", steps=400), "<answer>slow done</answer>"],
             "silent": [tool_call("silent_tool", steps=400), "<answer>silent done</answer>"],
             "default": ["<answer>quick</answer>"]}
    with ServerThread(create_app(settings, agent_factory(plans, SlowTool, SilentTool))) as server:
        yield server, data_url(geotiff_bytes(tmp, 600, 400))


def _wait_idle(server, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/healthz").json()["runs"]["running"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError("runs did not finish")


def test_run_timeout_non_streaming_is_408_and_streaming_gets_an_error_event(tight_server):
    server, image = tight_server
    c = client(server)
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model="zoomearth", messages=[user("slow one", image)],
                                  extra_headers={"X-Conversation-Id": "timeout-a"})
    assert info.value.status_code == 408
    message = info.value.body["message"]
    # Where the run was and how long the tool needs at its rate (400 steps of >= 50 ms: >= 20 s).
    match = re.fullmatch(
        r"The run took longer than 1\.5 s \(setting run_timeout_s\) and was cancelled while "
        r"`slow_tool` was at tile (\d+) of 400 \(about ([\d.]+) s needed at this rate\)\. Its "
        r"checkpoint is kept and finished tiles are reused: sending the same message again "
        r"continues it; or raise run_timeout_s\.", message)
    assert match, message
    assert 0 < int(match[1]) < 400 and float(match[2]) >= 1.5
    _wait_idle(server)
    stream = c.chat.completions.create(model="zoomearth", messages=[user("slow two", image)],
                                       stream=True, extra_headers={"X-Conversation-Id": "t-b"})
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert "run_timeout_s" in str(info.value)
    _wait_idle(server)


def test_run_timeout_without_progress_says_so(tight_server):
    server, image = tight_server
    with pytest.raises(openai.APIStatusError) as info:
        client(server).chat.completions.create(
            model="zoomearth", messages=[user("silent one", image)],
            extra_headers={"X-Conversation-Id": "timeout-silent"})
    assert info.value.status_code == 408
    message = info.value.body["message"]
    assert "`silent_tool` was running but reported no progress, so how long it would need is " \
        "unknown" in message and "raise run_timeout_s" in message
    _wait_idle(server)


def test_timeout_message_estimates_the_tool_time_from_its_rate():
    from zoomearth.server.runs import ProgressTracker, timeout_message

    tracker = ProgressTracker()
    assert "no tool progress was reported" in timeout_message(600, tracker, 600.0)
    tracker.observe({"event": "tool_start", "tool": "denoise"}, 0.0)
    tracker.observe({"event": "progress", "tool": "denoise", "done": 0, "total": 40}, 1.0)
    assert "none finished in 600 s, so the time needed is unknown" in timeout_message(
        600, tracker, 600.0)
    tracker.observe({"event": "progress", "tool": "denoise", "done": 12, "total": 40}, 590.0)
    assert timeout_message(600, tracker, 600.0) == (
        "The run took longer than 600 s (setting run_timeout_s) and was cancelled while "
        "`denoise` was at tile 12 of 40 (about 2000 s needed at this rate). Its checkpoint is "
        "kept and finished tiles are reused: sending the same message again continues it; or "
        "raise run_timeout_s.")
    tracker.observe({"event": "tool", "tool": "denoise", "text": "done"}, 700.0)
    assert "its tools had finished and the planner was working" in timeout_message(
        600, tracker, 800.0)
    tracker.observe({"event": "prepare", "scene": "/x/big.tif", "done": 25, "total": 100}, 900.0)
    assert "while the preparation of big.tif was at step 25 of 100 (about" in timeout_message(
        600, tracker, 1000.0)


def test_full_queue_answers_429_with_a_json_error(tight_server):
    server, image = tight_server
    c = client(server)
    started = threading.Event()
    outcome = {}

    def slow() -> None:
        try:
            stream = c.chat.completions.create(
                model="zoomearth", messages=[user("slow three", image)], stream=True,
                extra_headers={"X-Conversation-Id": "busy-1"})
            for _ in stream:
                started.set()
        except openai.APIError as exc:
            outcome["slow"] = str(exc)
        finally:
            started.set()

    worker = threading.Thread(target=slow)
    worker.start()
    assert started.wait(30)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="zoomearth", messages=[user("quick one", image)],
                                  extra_headers={"X-Conversation-Id": "busy-2"})
    assert info.value.status_code == 429
    assert "max_concurrent_runs=1" in info.value.body["message"]
    assert info.value.response.headers["retry-after"] == "5"
    worker.join(30)
    _wait_idle(server)
    # once the slot is free the same request succeeds
    r = c.chat.completions.create(model="zoomearth", messages=[user("quick one", image)],
                                  extra_headers={"X-Conversation-Id": "busy-2"})
    assert r.choices[0].message.content == "quick"


def test_refuses_non_loopback_bind_without_token(tmp_path):
    from zoomearth.config import load_settings
    from zoomearth.errors import ConfigError
    from zoomearth.server.app import create_app
    from zoomearth.server.cli import main

    settings = load_settings(flags={"data_dir": tmp_path, "server_host": "0.0.0.0"}, environ={})
    with pytest.raises(ConfigError, match="without a bearer token"):
        create_app(settings)
    assert main(["--host", "0.0.0.0", "--set", f"data_dir={tmp_path}"]) == 2
    ok = settings.model_copy(update={"api_token": "s3cret"})
    assert create_app(ok) is not None  # with a token it is allowed


def test_progress_in_content_setting(tmp_path):
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    settings = load_settings(flags={"data_dir": tmp_path / "data", "cache_dir": tmp_path / "c",
                                    "progress_in_content": True}, environ={})
    plans = {"default": ['<think>{"bbox_2d": [0, 0, 50, 50], "label": "ship"}</think>',
                         "<answer>one ship</answer>"]}
    image = data_url(geotiff_bytes(tmp_path, 600, 400))
    with ServerThread(create_app(settings, agent_factory(plans))) as server:
        c = client(server)
        chunks = list(c.chat.completions.create(model="zoomearth", stream=True,
                                                messages=[user("ships?", image)]))
        assert not any(getattr(ch.choices[0].delta, "reasoning_content", None) for ch in chunks)
        content = "".join(ch.choices[0].delta.content or "" for ch in chunks)
        assert content.index("Zoom 'ship' -> view 1") < content.index("one ship")
        r = c.chat.completions.create(model="zoomearth", messages=[user("ships? again", image)])
        text = r.choices[0].message.content
        assert text.index("Zoom 'ship'") < text.index("one ship")


def test_json_log_lines_carry_the_request_id():
    import json
    import logging

    from zoomearth.server.cli import JsonLogFormatter

    record = logging.LogRecord("zoomearth.server", logging.INFO, __file__, 1, "request", None,
                               None)
    record.request_id, record.status, record.path = "rid-1", 200, "/healthz"
    line = json.loads(JsonLogFormatter().format(record))
    assert line["request_id"] == "rid-1" and line["status"] == 200 and line["msg"] == "request"
    assert line["level"] == "info" and line["ts"].endswith("Z")
