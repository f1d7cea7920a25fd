"""Regression tests of issue 14 for the HTTP server: body limit, link base URL, approvals that name
their conversation, empty folders, the scene work budget, and 409s that name the running process.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.server.conftest import TOKEN
from tests.server.helpers import (
    ServerThread,
    agent_factory,
    data_url,
    geotiff_bytes,
    png_bytes,
    user,
    write_raster,
)
from zoomearth.server.security import conversation_id_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HANG_S = 60  # only to detect a hang


def _chat(server, body, headers=None, timeout=HANG_S) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body,
                      headers={**AUTH, **(headers or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """Small body and upload limits, default work budget, a 40,000 x 40,000 sparse TIFF."""
    import numpy as np
    import rasterio
    from affine import Affine

    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    tmp = tmp_path_factory.mktemp("small")
    allowed = tmp / "allowed"
    allowed.mkdir()
    # Tiled, no overviews, almost all tiles absent: a few hundred KB declaring 1.6e9 pixels.
    sparse = allowed / "sparse.tif"
    with rasterio.open(sparse, "w", driver="GTiff", width=40_000, height=40_000, count=1,
                       dtype="uint8", tiled=True, blockxsize=512, blockysize=512,
                       sparse_ok=True, crs="EPSG:32633",
                       transform=Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000)) as ds:
        ds.write(np.full((1, 512, 512), 7, np.uint8), window=((0, 512), (0, 512)))
    settings = load_settings(flags={
        "data_dir": tmp / "data", "cache_dir": tmp / "cache", "allowed_roots": [allowed],
        "api_token": TOKEN, "max_json_body_bytes": 400_000, "max_upload_bytes": 150_000,
    }, environ={})
    assert settings.max_prepare_pixels == 1_000_000_000  # the default budget is under test
    plans = {"default": ["<answer>fine</answer>"]}
    with ServerThread(create_app(settings, agent_factory(plans))) as server:
        yield server, settings, tmp


# ---------------------------------------------------------------------------------------------
# Item 3: the JSON body is bounded by max_json_body_bytes, refused early
# ---------------------------------------------------------------------------------------------
def _raw_request(server, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send raw bytes on a fresh connection; the status and JSON body of the response."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG_S) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                dict(line.split(b": ", 1) for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
                     ).get(b"content-length", b"0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    header, _, payload = data.partition(b"\r\n\r\n")
    return int(header.split(b" ")[1]), json.loads(payload)


def test_declared_oversized_body_is_refused_before_it_is_sent(small_server):
    server, _, _ = small_server
    # Content-Length says 2 GB and not one byte of the body is sent: the answer comes anyway.
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2000000000\r\n\r\n")
    status, body = _raw_request(server, head)
    assert status == 413
    err = body["error"]
    assert err["code"] == "body_too_large"
    assert "2,000,000,000 bytes" in err["message"] and "400,000" in err["message"]
    assert "max_json_body_bytes" in err["message"] and "POST /v1/files" in err["message"]


def test_chunked_body_over_the_limit_is_refused(small_server):
    server, _, _ = small_server

    def chunks():
        for _ in range(50):
            yield b" " * 10_000  # 500 KB in all, no Content-Length

    r = httpx.post(f"{server.url}/v1/chat/completions", content=chunks(),
                   headers={**AUTH, "Content-Type": "application/json"}, timeout=HANG_S)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert "max_json_body_bytes" in r.json()["error"]["message"]


def test_data_url_over_max_upload_bytes_but_within_the_body_is_upload_too_large(small_server):
    server, _, _ = small_server
    big = png_bytes(250, 250, seed=5)  # ~190 KB of noise > max_upload_bytes 150 KB
    assert 150_000 < len(big) and len(data_url(big)) < 400_000
    r = _chat(server, {"model": "zoomearth", "messages": [user("q", data_url(big, "image/png"))]})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "upload_too_large"
    assert "max_upload_bytes" in r.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------
# Links: never built from the client's Host / X-Forwarded-* headers
# ---------------------------------------------------------------------------------------------
POISON = {"Host": "evil.example", "X-Forwarded-Host": "evil.example",
          "X-Forwarded-Proto": "https", "X-Forwarded-For": "10.9.9.9"}


def _upload_url(server, headers=None) -> str:
    r = httpx.post(f"{server.url}/v1/files", headers={**AUTH, **(headers or {})},
                   files={"file": ("p.png", png_bytes(40, 30, seed=9), "image/png")},
                   timeout=HANG_S)
    assert r.status_code == 200, r.text
    return str(r.json()["url"])


def test_poisoned_host_headers_never_reach_a_link(server_env):
    server, _, tmp = server_env
    url = _upload_url(server, POISON)
    assert url.startswith(f"{server.url}/v1/files/") and "evil" not in url
    assert httpx.get(url).status_code == 200  # and it works
    image = data_url(geotiff_bytes(tmp, 640, 480))
    r = _chat(server, {"model": "zoomearth", "messages": [user("harbour ships?", image)]},
              headers={**POISON, "X-Conversation-Id": "poison-1"})
    content = r.json()["choices"][0]["message"]["content"]
    assert "/artifacts/poison-1/" in content and f"({server.url}/artifacts/" in content
    assert "evil" not in content and "https://" not in content


@pytest.mark.parametrize(("flags", "expected"), [
    ({"trusted_proxies": ["127.0.0.0/8"]}, "https://evil.example/v1/files/"),
    ({"public_base_url": "https://zoom.example.org/base/"},
     "https://zoom.example.org/base/v1/files/"),
    ({"trusted_proxies": ["10.0.0.1"]}, None),  # this peer is not that proxy
])
def test_forwarded_headers_only_from_trusted_proxies_or_the_public_base_url(tmp_path, flags,
                                                                           expected):
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    settings = load_settings(flags={"data_dir": tmp_path / "d", "cache_dir": tmp_path / "c",
                                    "api_token": TOKEN, **flags}, environ={})
    with ServerThread(create_app(settings, agent_factory({}))) as server:
        url = _upload_url(server, POISON)
    assert url.startswith(expected or f"{server.url}/v1/files/"), url


@pytest.mark.parametrize(("flags", "words"), [
    ({"public_base_url": "zoom.example.org"}, "public_base_url"),
    ({"public_base_url": "https://h/x?y=1"}, "no query"),
    ({"trusted_proxies": ["proxy.local"]}, "trusted_proxies entry 'proxy.local'"),
])
def test_bad_proxy_settings_are_refused_at_start(tmp_path, flags, words):
    from zoomearth.config import load_settings
    from zoomearth.errors import ConfigError
    from zoomearth.server.app import create_app

    settings = load_settings(flags={"data_dir": tmp_path, **flags}, environ={})
    with pytest.raises(ConfigError, match=words):
        create_app(settings)


# ---------------------------------------------------------------------------------------------
# Approvals need the conversation id explicitly
# ---------------------------------------------------------------------------------------------
def test_a_derived_conversation_id_never_approves_another_clients_edit(server_env):
    server, _, tmp = server_env
    raw = geotiff_bytes(tmp, 704, 512)
    first = [user("Please edit the haze away", data_url(raw))]
    conv = conversation_id_for("Please edit the haze away", hashlib.sha256(raw).hexdigest())
    # Client A starts without naming the conversation: the id is derived from text and image.
    r = _chat(server, {"model": "zoomearth", "messages": first})
    a = r.json()
    assert a["zoomearth"]["status"] == "awaiting_approval"
    assert a["zoomearth"]["conversation_id"] == conv == r.headers["x-conversation-id"]
    question = a["choices"][0]["message"]["content"]
    assert f"X-Conversation-Id: {conv}" in question
    # Client B starts the same way and says "approve": refused, nothing runs, nothing shown.
    b = first + [{"role": "assistant", "content": "?"}, user("approve")]
    r = _chat(server, {"model": "zoomearth", "messages": b})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "approval_needs_conversation_id" and "X-Conversation-Id" in \
        err["message"]
    assert "gated_edit" not in r.text
    agent = server.server.config.app.state.zoomearth.agent
    snapshot = agent.graph.get_state({"configurable": {"thread_id": conv}})
    assert snapshot.tasks and snapshot.tasks[0].interrupts  # still waiting for approval
    # Client A answers with the id it was given: the edit runs.
    r = _chat(server, {"model": "zoomearth", "messages": b}, headers={"X-Conversation-Id": conv})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("edit done")
    assert "-> gated_edit: edited (pretend)" in r.json()["choices"][0]["message"][
        "reasoning_content"]


# ---------------------------------------------------------------------------------------------
# Item 4: a scene above the work budget is refused at once; /healthz keeps answering
# ---------------------------------------------------------------------------------------------
def test_sparse_huge_tiff_is_a_quick_413_and_healthz_keeps_answering(small_server):
    server, settings, tmp = small_server
    sparse = settings.allowed_roots[0] / "sparse.tif"
    health: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=HANG_S) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                assert c.get(f"{server.url}/healthz").status_code == 200
                health.append(time.monotonic() - t0)
                time.sleep(0.05)

    def wait_for_answers(n: int) -> None:
        deadline = time.monotonic() + HANG_S
        while len(health) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        wait_for_answers(1)  # the poller runs before the request starts ...
        r = _chat(server, {"model": "zoomearth",
                           "messages": [user("what is here?", sparse.as_uri())]})
        wait_for_answers(len(health) + 1)  # ... and answers once it has been refused
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == "prepare_budget_exceeded"
        assert "1,600,000,000" in err["message"] and "sparse.tif" in err["message"]
        assert "max_prepare_pixels" in err["message"] and "Cloud-Optimized" in err["message"]
    finally:
        stop.set()
        poller.join(HANG_S)
    assert health, "healthz was never polled"
    assert max(health) < 2.0, health  # a generous bound: only a blocked event loop exceeds it


def test_sparse_huge_tiff_upload_meets_the_budget(small_server):
    # Uploaded, the 40,000^2 file passes max_upload_pixels (2e9 by default) and meets the
    # budget (1e9 by default); a server with default limits, so the file's bytes fit.
    _, settings, _ = small_server
    raw = (settings.allowed_roots[0] / "sparse.tif").read_bytes()
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    tmp = settings.data_dir.parent / "upload-budget"
    s2 = load_settings(flags={"data_dir": tmp / "d", "cache_dir": tmp / "c",
                              "api_token": TOKEN}, environ={})
    assert s2.max_upload_pixels > 40_000 ** 2 > s2.max_prepare_pixels
    with ServerThread(create_app(s2, agent_factory({}))) as srv:
        r = httpx.post(f"{srv.url}/v1/files", headers=AUTH, timeout=HANG_S,
                       files={"file": ("sparse.tif", raw, "image/tiff")})
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["code"] == "prepare_budget_exceeded" and "'sparse.tif'" in err["message"]
    assert str(tmp) not in err["message"]  # no server-side path
    assert [p.name for p in (tmp / "d" / "server" / "files").iterdir()] == []  # nothing kept


def test_scene_errors_inside_a_run_map_to_their_status():
    import zoomearth.errors as errors
    from zoomearth.server.runs import _map_error

    mapped = _map_error(errors.ScenePrepareBudgetError(
        "scene.tif needs 1.6e9 pixels prepared; max_prepare_pixels"))
    assert (mapped.status, mapped.code) == (413, "prepare_budget_exceeded")
    assert "max_prepare_pixels" in mapped.message
    mapped = _map_error(errors.ScenePrepareError("Writing the prepared copy failed (no space)"))
    assert (mapped.status, mapped.code) == (500, "prepare_failed")
    assert _map_error(errors.SceneError("bad")).status == 400


def test_prepare_events_read_as_percentages():
    from zoomearth.server.app import ProgressText

    fmt = ProgressText()
    event = {"event": "prepare", "scene": "/data/in/scene.tif", "done": 35, "total": 100}
    assert fmt(event) == "Preparing scene.tif: 35%"
    assert fmt({**event, "done": 36}) is None  # throttled: at most about one a second
    assert fmt({**event, "done": 100}) == "Preparing scene.tif: 100%"  # the end always shows


# ---------------------------------------------------------------------------------------------
# Rejected requests and failed runs leave no empty folders
# ---------------------------------------------------------------------------------------------
def test_rejected_request_and_failed_run_leave_no_empty_folders(tmp_path):
    from zoomearth.agent.base import Planner, PlannerError
    from zoomearth.api import Agent
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    class Down(Planner):
        name = "down"

        def plan(self, request):  # noqa: ANN001, ANN201
            raise PlannerError("the planner backend is unreachable")

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    scene = write_raster(allowed / "s.tif", 600, 400, 3, block=256, overviews=[2])
    settings = load_settings(flags={"data_dir": tmp_path / "d", "cache_dir": tmp_path / "c",
                                    "allowed_roots": [allowed]}, environ={})
    runs = settings.runs_dir
    kept = runs / "kept" / "note.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("a file: its folder must stay")

    def factory(s, on_event):  # noqa: ANN001, ANN202
        return Agent(s, planner=Down(), on_event=on_event)

    with ServerThread(create_app(settings, factory)) as server:
        corrupt = data_url(png_bytes(200, 100)[:300], "image/png")
        r = _chat(server, {"model": "zoomearth", "messages": [user("q", corrupt)]},
                  headers={"X-Conversation-Id": "rejected-1"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "corrupt_image"
        r = _chat(server, {"model": "zoomearth", "messages": [user("q", scene.as_uri())]},
                  headers={"X-Conversation-Id": "failed-1"})
        assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
        r = _chat(server, {"model": "zoomearth", "messages": [user("q", scene.as_uri())]},
                  headers={"X-Conversation-Id": "kept"})
        assert r.status_code == 502
    leftovers = sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*"))
    assert not any(p.startswith(("rejected-1", "failed-1")) for p in leftovers), leftovers
    assert kept.exists()


# ---------------------------------------------------------------------------------------------
# 409 for a busy conversation names the running process
# ---------------------------------------------------------------------------------------------
def test_busy_conversation_409_names_the_process_running_it(server_env):
    server, settings, tmp = server_env
    agent = server.server.config.app.state.zoomearth.agent
    image = data_url(geotiff_bytes(tmp, 600, 400))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from zoomearth.threadlock import ThreadLock\n"
         "ThreadLock(sys.argv[1], 'busy-cli').acquire()\n"
         "print('locked', flush=True)\n"
         "time.sleep(120)\n", str(agent.lock_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for stream in (False, True):
            r = _chat(server, {"model": "zoomearth", "stream": stream,
                               "messages": [user("q", image)]},
                      headers={"X-Conversation-Id": "busy-cli"})
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "conversation_busy"
            assert f"process {holder.pid}" in err["message"] and "in progress" in err["message"]
            assert "command" not in err["message"]  # another process's command line stays out
    finally:
        holder.kill()
        holder.wait(HANG_S)
    r = _chat(server, {"model": "zoomearth", "messages": [user("ships?", image)]},
              headers={"X-Conversation-Id": "busy-cli"})
    assert r.status_code == 200, r.text  # the lock of the killed process is taken over

    # A run of this server: the 409 names this server's process.
    body = {"model": "zoomearth", "stream": True, "messages": [user("slow analysis", image)]}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers={
            **AUTH, "X-Conversation-Id": "busy-here"}, timeout=HANG_S) as running:
        for line in running.iter_lines():
            if "slow_tool: " in line:
                break
        r = _chat(server, {"model": "zoomearth", "messages": [user("slow analysis", image)]},
                  headers={"X-Conversation-Id": "busy-here"})
        assert r.status_code == 409, r.text
        assert f"in this server, process {os.getpid()}" in r.json()["error"]["message"]
