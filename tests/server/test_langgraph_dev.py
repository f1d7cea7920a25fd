"""``langgraph dev`` serves the graphs named in ``langgraph.json``; the real SDK drives them.

One ``langgraph dev --no-browser --no-reload`` process (the ``studio`` extra: ``langgraph-cli
[inmem]``) per module, on a free loopback port, with the offline ``rules`` planner and data and
cache directories under tmp. The tests talk to it with ``langgraph_sdk`` -- the client LangGraph
Studio and Agent Chat UI use -- and never leave the machine:

* the CLI's usage analytics (``LANGGRAPH_CLI_NO_ANALYTICS=1``), the server's PyPI version check
  (``LANGGRAPH_NO_VERSION_CHECK=true``) and LangSmith tracing (``LANGSMITH_TRACING=false``) are
  turned off, and the variables that would enable a licence beacon, LangSmith or an OTLP exporter
  are removed from the server's environment;
* the server runs in a tmp working directory (its ``.langgraph_api/`` state goes there) from a
  copy of ``langgraph.json`` whose relative paths are made absolute.

The question "remove the car in box ..." makes the rules planner call the approval-gated ``edit``
tool: the run stops with an ``approval`` interrupt, and a resume command runs (or declines) it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from tests.scene.rasters import write_raster
from tests.server.helpers import free_port

pytest.importorskip("langgraph_api", reason="needs the 'studio' extra (langgraph-cli[inmem])")
pytest.importorskip("langgraph_sdk")

REPO = Path(__file__).resolve().parents[2]
BOX = [30, 20, 60, 44]
QUESTION = "remove the car in box {},{},{},{}".format(*BOX)
READY_TIMEOUT_S = 120.0
# Not passed to the server: what could make it reach the network (licence beacon, LangSmith,
# OTLP exporter, proxies) and the user's own ZOOMEARTH_* settings.
_DROP_PREFIXES = ("LANGSMITH_", "LANGCHAIN_", "LANGGRAPH_", "OTEL_", "ZOOMEARTH_")
_DROP_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"}


@dataclass
class DevServer:
    url: str
    data_dir: Path
    log: Path
    scene: Path
    config: dict[str, Any]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _langgraph_command() -> list[str]:
    script = Path(sys.executable).with_name("langgraph")
    if script.exists():
        return [str(script)]
    found = shutil.which("langgraph")
    if found:
        return [found]
    return [sys.executable, "-c", "from langgraph_cli.cli import cli; cli()"]


def _absolute_config(tmp: Path) -> dict[str, Any]:
    """``langgraph.json`` with its graph and dependency paths made absolute (server cwd = tmp)."""
    config = json.loads((REPO / "langgraph.json").read_text())
    config["dependencies"] = [str((REPO / d).resolve()) for d in config.get("dependencies", [])]
    graphs = {}
    for graph_id, target in config["graphs"].items():
        file_part, _, func = target.partition(":")
        path = (REPO / file_part).resolve()
        assert path.is_file(), f"langgraph.json: {graph_id}: {path} does not exist"
        graphs[graph_id] = f"{path}:{func}"
    config["graphs"] = graphs
    (tmp / "langgraph.json").write_text(json.dumps(config, indent=2))
    return config


def _server_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_DROP_PREFIXES) and k not in _DROP_NAMES}
    env.update(
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="true",
        LANGSMITH_TRACING="false",
        NO_PROXY="127.0.0.1,localhost",
        ZOOMEARTH_PLANNER="rules",
        ZOOMEARTH_DATA_DIR=str(tmp / "data"),
        ZOOMEARTH_CACHE_DIR=str(tmp / "cache"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's process group (it was started in a session of its own)."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(trust_env=False, timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if http.get(f"{url}/ok").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"langgraph dev not ready after {READY_TIMEOUT_S:.0f} s:\n"
                         f"{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    tmp = tmp_path_factory.mktemp("langgraph-dev")
    config = _absolute_config(tmp)
    scene = write_raster(tmp / "scene.tif", 96, 64, 3)
    log = tmp / "server.log"
    env = _server_env(tmp)
    for _attempt in range(2):  # a second port if another process took the first one meanwhile
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*_langgraph_command(), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
                 "--port", str(port), "--config", str(tmp / "langgraph.json")],
                cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            ready = _wait_ready(proc, url, log)
        except BaseException:
            _stop(proc)
            raise
        if ready:
            break
        _stop(proc)
    else:
        pytest.fail(f"langgraph dev exited:\n{log.read_text(errors='replace')[-4000:]}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("NO_PROXY", "127.0.0.1,localhost")  # the SDK's httpx client reads proxies
            yield DevServer(url, tmp / "data", log, scene, config)
    finally:
        _stop(proc)


@pytest.fixture()
def client(dev_server: DevServer) -> Any:
    from langgraph_sdk import get_sync_client

    return get_sync_client(url=dev_server.url, api_key=None, timeout=120)


def _stream(client: Any, thread_id: str, graph_id: str, server: DevServer,
            **kwargs: Any) -> list[Any]:
    parts = list(client.runs.stream(thread_id, graph_id, stream_mode=["updates", "custom"],
                                    **kwargs))
    errors = [p.data for p in parts if p.event == "error"]
    assert not errors, f"{errors}\n{server.log_tail()}"
    return parts


def _interrupts(parts: list[Any]) -> list[dict[str, Any]]:
    return [i["value"] for p in parts if p.event == "updates" and "__interrupt__" in p.data
            for i in p.data["__interrupt__"]]


def _custom(parts: list[Any], event: str) -> list[dict[str, Any]]:
    return [p.data for p in parts if p.event == "custom" and p.data.get("event") == event]


def _assert_edit_approval(parts: list[Any]) -> None:
    (approval,) = _interrupts(parts)
    assert approval["type"] == "approval" and approval["tool"] == "edit"
    assert approval["arguments"] == {"instruction": "remove the car", "target_box": BOX}


def _assert_edited(artifacts: list[dict[str, Any]], scene: Path, run_dir: Path) -> None:
    """The edit wrote a new raster in the thread's run directory, changed around ``BOX`` only."""
    (raster,) = [a for a in artifacts if a["tool"] == "edit" and a["kind"] == "raster"]
    path = Path(raster["path"])
    assert path.is_file() and path.parent == run_dir
    with rasterio.open(scene) as src, rasterio.open(path) as dst:
        before, after = src.read(), dst.read()
    assert after.shape == before.shape  # the region is the whole (small) scene
    ys, xs = np.nonzero((after != before).any(axis=0))
    assert xs.size > 0, "the edit changed no pixel"
    margin = 8  # the removal mask is the box, slightly grown
    assert BOX[0] - margin <= xs.min() and xs.max() < BOX[2] + margin
    assert BOX[1] - margin <= ys.min() and ys.max() < BOX[3] + margin


def _assistants(client: Any) -> dict[str, str]:
    return {a["graph_id"]: a["assistant_id"] for a in client.assistants.search(limit=100)}


def test_langgraph_dev_serves_the_graphs_of_langgraph_json(dev_server, client):
    by_graph = _assistants(client)
    assert set(by_graph) == set(dev_server.config["graphs"])
    # Studio's graph view: the factory runs inside the server
    nodes = {n["id"] for n in client.assistants.get_graph(by_graph["zoomearth"])["nodes"]}
    assert {"observe", "plan", "zoom", "answer", "edit", "export_region"} <= nodes
    chat_nodes = {n["id"] for n in client.assistants.get_graph(by_graph["zoomearth_chat"])["nodes"]}
    assert {"ingest", "agent", "reply"} <= chat_nodes
    state = client.assistants.get_schemas(by_graph["zoomearth"])["state_schema"]
    assert {"scene", "question", "status", "answer"} <= set(state["properties"])


def test_input_schema_for_the_studio_form(dev_server, client):
    for graph_id, keys in (("zoomearth", {"scene", "question"}), ("zoomearth_chat", {"messages"})):
        schemas = client.assistants.get_schemas(_assistants(client)[graph_id])
        assert schemas["input_schema"] is not None, f"{graph_id}: no input schema"
        assert keys <= set(schemas["input_schema"]["properties"]), graph_id


def test_approval_interrupt_then_approve(dev_server, client):
    thread_id = client.threads.create()["thread_id"]
    parts = _stream(client, thread_id, "zoomearth", dev_server,
                    input={"scene": {"path": str(dev_server.scene)}, "question": QUESTION})
    _assert_edit_approval(parts)
    assert _custom(parts, "observe") and _custom(parts, "plan")  # progress for Studio
    assert not _custom(parts, "tool_start"), "the gated tool ran before approval"
    assert client.threads.get(thread_id)["status"] == "interrupted"
    assert client.threads.get_state(thread_id)["next"] == ["edit"]

    parts = _stream(client, thread_id, "zoomearth", dev_server, command={"resume": "approve"})
    assert not _interrupts(parts)
    (done,) = [e for e in _custom(parts, "tool") if e["tool"] == "edit"]
    assert done["ok"] is True
    assert client.threads.get(thread_id)["status"] == "idle"
    values = client.threads.get_state(thread_id)["values"]
    assert values["status"] == "answered" and values["answer_kind"] == "answer"
    assert "edit" in values["answer"]
    assert values["scene"]["width"] == 96 and values["scene"]["crs"]  # completed from the path
    _assert_edited(values["artifacts"], dev_server.scene, dev_server.data_dir / "runs" / thread_id)


def test_approval_declined(dev_server, client):
    thread_id = client.threads.create()["thread_id"]
    parts = _stream(client, thread_id, "zoomearth", dev_server,
                    input={"scene": {"path": str(dev_server.scene)}, "question": QUESTION})
    _assert_edit_approval(parts)
    _stream(client, thread_id, "zoomearth", dev_server, command={"resume": {"approve": False}})
    values = client.threads.get_state(thread_id)["values"]
    assert values["status"] == "answered"
    assert [r["status"] for r in values["results"] if r["tool"] == "edit"] == ["denied"]
    assert not [a for a in values.get("artifacts", []) if a["tool"] == "edit"]


def test_chat_graph_base64_image_and_approval(dev_server, client):
    # what Agent Chat UI sends: a human message with text and a base64 image block
    raw = dev_server.scene.read_bytes()
    message = {"type": "human", "content": [
        {"type": "text", "text": QUESTION},
        {"type": "image", "source_type": "base64", "mime_type": "image/tiff",
         "data": base64.b64encode(raw).decode()}]}
    thread_id = client.threads.create()["thread_id"]
    parts = _stream(client, thread_id, "zoomearth_chat", dev_server,
                    input={"messages": [message]})
    _assert_edit_approval(parts)
    assert client.threads.get(thread_id)["status"] == "interrupted"
    _stream(client, thread_id, "zoomearth_chat", dev_server,
            command={"resume": {"approve": True}})
    values = client.threads.get_state(thread_id)["values"]
    assert values["status"] == "answered"
    reply = values["messages"][-1]
    assert reply["type"] == "ai" and "edit" in reply["content"]
    stored = Path(values["scene"]["path"])
    assert stored.read_bytes() == raw  # the image became a file in the thread's run directory
    _assert_edited(values["artifacts"], stored, dev_server.data_dir / "runs" / thread_id)
