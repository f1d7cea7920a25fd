"""Server building blocks without a server: signing, message parsing, ids, import weight,
and the graph named in ``langgraph.json``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import inspect
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from zoomearth.server.errors import ApiError
from zoomearth.server.ingest import parse_conversation, sniff_extension
from zoomearth.server.security import conversation_id_for, is_loopback
from zoomearth.server.signing import Signer, load_or_create_key

REPO = Path(__file__).resolve().parents[2]


def test_signed_links_expire_and_resist_tampering(tmp_path):
    key = load_or_create_key(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "signing.key").st_mode) == 0o600
    assert load_or_create_key(tmp_path) == key  # shared by every worker of the data dir
    signer = Signer(key, ttl_s=60)
    query = signer.sign("/artifacts/t/a.png", now=1000)
    exp, sig = (part.split("=")[1] for part in query.split("&"))
    assert exp == "1060"
    assert signer.verify("/artifacts/t/a.png", exp, sig, now=1059)
    assert not signer.verify("/artifacts/t/a.png", exp, sig, now=1061)  # expired
    assert not signer.verify("/artifacts/t/b.png", exp, sig, now=1000)  # other path
    assert not signer.verify("/artifacts/t/a.png", "1999", sig, now=1000)  # extended expiry
    assert not Signer(b"x" * 32, 60).verify("/artifacts/t/a.png", exp, sig, now=1000)
    url = signer.url("http://h:1/", "/artifacts/t/a b.png")
    assert url.startswith("http://h:1/artifacts/t/a%20b.png?exp=")


def test_parse_conversation_openai_and_agent_chat_ui_parts():
    conv = parse_conversation([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "first"},
                                     {"type": "image_url", "image_url": {"url": "data:a"}}]},
        {"role": "assistant", "content": "ok"},
        # LangGraph Studio / Agent Chat UI: LangChain messages with base64 image blocks
        {"type": "human", "content": [
            {"type": "text", "text": "second"},
            {"type": "image", "source_type": "base64", "mime_type": "image/png", "data": "QUJD"}]},
    ])
    assert conv.first_user_text == "first" and conv.last_user_text == "second"
    assert conv.images == ["data:a", "data:image/png;base64,QUJD"]
    assert conv.last_is_user
    with pytest.raises(ApiError, match="not supported") as info:
        parse_conversation([{"role": "user", "content": [{"type": "input_audio"}]}])
    assert info.value.status == 400
    assert not parse_conversation([{"role": "user", "content": "q"},
                                   {"role": "assistant", "content": "a"}]).last_is_user


def test_ids_and_formats():
    a = conversation_id_for("How many ships?", "ab" * 32)
    assert a == conversation_id_for("  How many ships?  ", "ab" * 32)
    assert a != conversation_id_for("How many ships?", "cd" * 32)
    assert a.startswith("conv-") and len(a) == 37
    assert sniff_extension(b"II*\x00rest") == "tif"
    assert sniff_extension(b"\x89PNG\r\n\x1a\n") == "png"
    assert sniff_extension(b"RIFF1234WEBPVP8 ") == "webp"
    assert sniff_extension(b"hello") is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_importing_zoomearth_and_the_cli_does_not_import_the_web_stack():
    code = (
        "import sys, zoomearth, zoomearth.cli, zoomearth.server, zoomearth.server.cli; "
        "zoomearth.cli.build_parser(); "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_chat_graph_factory_loads_by_file_path(settings, monkeypatch):
    # the factory to name in langgraph.json for Agent Chat UI
    monkeypatch.setenv("ZOOMEARTH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("ZOOMEARTH_PLANNER", "rules")
    path = REPO / "zoomearth" / "server" / "chat_graph.py"
    spec = importlib.util.spec_from_file_location("chat_graph_by_path", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {"ingest", "agent", "reply"} <= set(module.make_chat_graph().get_graph().nodes)


def test_graphs_named_in_langgraph_json_load(settings, monkeypatch):
    config = json.loads((REPO / "langgraph.json").read_text())
    assert config["graphs"], "langgraph.json names no graph"
    monkeypatch.setenv("ZOOMEARTH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("ZOOMEARTH_CACHE_DIR", str(settings.cache_dir))
    monkeypatch.setenv("ZOOMEARTH_PLANNER", "rules")
    for name, target in config["graphs"].items():
        file_part, _, func = target.partition(":")
        path = (REPO / file_part).resolve()
        assert path.is_file(), f"{name}: {path} does not exist"
        # as the LangGraph server does: import the file by its path, call the factory
        spec = importlib.util.spec_from_file_location(f"langgraph_json_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        graph = getattr(module, func)()
        if inspect.iscoroutine(graph):
            # A running event loop in this thread (Playwright's sync API, when the browser tests
            # ran first): the factory hands back a coroutine, as the server would await it.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                graph = pool.submit(asyncio.run, graph).result()
        nodes = set(graph.get_graph().nodes)
        if "ingest" in nodes:  # the chat graph (zoomearth/server/chat_graph.py)
            assert {"ingest", "agent", "reply"} <= nodes, name
        else:
            assert {"observe", "plan", "zoom", "answer"} <= nodes, name
            assert "export_region" in nodes


def test_a_busy_thread_is_a_409_conflict():
    from zoomearth.api import ThreadBusyError
    from zoomearth.server.runs import _map_error
    from zoomearth.threadlock import LockHolder

    holder = LockHolder(pid=42, host=socket.gethostname(), started="2030-01-01T00:00:00Z",
                        command="zoomearth ask /secret/scene.tif", thread="T")
    error = _map_error(ThreadBusyError("Thread 'T' is running in process 42", thread="T",
                                       holder=holder))
    assert error.status == 409 and error.code == "thread_busy"
    assert "process 42, started 2030-01-01T00:00:00Z" in error.message
    assert "/secret" not in error.message  # another process's command line is not disclosed
    # Unknown holder (a worker on another host): no lock-file path in the message either.
    error = _map_error(ThreadBusyError(
        "Thread 'T' is running in another process (lock file /srv/data/locks/ab.lock)", "T"))
    assert error.status == 409 and "in progress (another server worker or process)" in \
        error.message and "/srv" not in error.message


def test_reusable_image_url_names_only_what_a_new_thread_may_open(tmp_path: Path) -> None:
    """The thread history's ``image_url``: a URL as is, a file under the roots as file://."""
    from types import SimpleNamespace

    from zoomearth.server.events import reusable_image_url

    root = tmp_path / "root"
    root.mkdir()
    inside = root / "a b.tif"
    inside.write_bytes(b"x")
    outside = tmp_path / "upload.tif"  # e.g. an inlined image copied into the run folder
    outside.write_bytes(b"x")
    settings = SimpleNamespace(allowed_roots=[root])
    assert reusable_image_url({"path": str(inside)}, settings) == inside.resolve().as_uri()
    assert reusable_image_url({"path": str(outside)}, settings) is None
    assert reusable_image_url({"path": str(root / "gone.tif")}, settings) is None
    url = "https://example.org/cog.tif"
    assert reusable_image_url({"path": url}, settings) == url
    assert reusable_image_url(None, settings) is None
    assert reusable_image_url({}, SimpleNamespace(allowed_roots=[])) is None
