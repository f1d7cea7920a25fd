"""Helpers for the server tests: a real uvicorn server in a thread, images, test tools."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tests.scene.rasters import write_raster
from zoomearth.tools.base import Tool, ToolResult


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving an app on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        # proxy_headers=False as `zoomearth serve` does: the client address is the real peer.
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on", timeout_graceful_shutdown=2,
                                proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings: Any = None  # set by rules_server

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextlib.contextmanager
def rules_server(tmp: Path, token: str | None, **flags: Any) -> Iterator[ServerThread]:
    """A real server with the offline rules planner, its data and cache under ``tmp``.

    ``flags`` are further settings (``allowed_roots``, limits ...); the settings object is the
    server's ``server.settings``.
    """
    from zoomearth.config import load_settings
    from zoomearth.server.app import create_app

    settings = load_settings(
        flags={
            "data_dir": tmp / "data",
            "cache_dir": tmp / "cache",
            **({"api_token": token} if token else {}),
            "planner": "rules",
            **flags,
        },
        environ={},
    )
    with ServerThread(create_app(settings)) as server:
        server.settings = settings
        yield server


def client(server: ServerThread, token: str | None = "unused", **kw: Any) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token or "unused", max_retries=0,
                         timeout=kw.pop("timeout", 60), **kw)


def geotiff_bytes(tmp: Path, width: int = 1200, height: int = 800) -> bytes:
    path = write_raster(tmp / f"scene_{width}x{height}.tif", width, height, 3, block=256,
                        overviews=[2, 4], compress="deflate")
    return path.read_bytes()


def png_bytes(width: int = 300, height: int = 200, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/tiff") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def user(text: str, *urls: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"role": "user", "content": parts}


def write_plan(path: Path, turns: list[Any]) -> Path:
    path.write_text(json.dumps({"turns": turns}))
    return path


class SlowArgs(BaseModel):
    steps: int = Field(200, ge=1, description="progress steps")
    marker: str = Field("", description="file touched when the tool starts")


class SlowTool(Tool):
    """Reports progress every 50 ms until cancelled (or done)."""

    name = "slow_tool"
    description = "A long-running test tool that reports progress and honours cancellation."
    Args = SlowArgs

    def run(self, ctx, args):  # noqa: ANN001, ANN201
        # The first call is slow (the test disconnects meanwhile); a resumed call runs fast.
        fast = bool(args.marker) and Path(args.marker).exists()
        if args.marker and not fast:
            Path(args.marker).write_text("started")
        for i in range(args.steps):
            ctx.report(i + 1, args.steps, "working")
            if not fast:
                time.sleep(0.05)
        return ToolResult(text=f"slow tool finished {args.steps} steps")


class TempWritingTool(Tool):
    """Like SlowTool, but holds an owner-named temporary in its run folder while it works.

    It removes the temporary however ``run`` ends (result, cancellation, an error), as the
    project's writers do; only a killed process leaves it behind.
    """

    name = "temp_tool"
    description = "A long-running test tool that writes a partial file while it works."
    Args = SlowArgs

    def run(self, ctx, args):  # noqa: ANN001, ANN201
        from zoomearth.temporaries import temporary_sibling

        tmp = temporary_sibling(ctx.run_dir / "partial.tif")
        tmp.write_bytes(b"partial output")
        try:
            for i in range(args.steps):
                ctx.report(i + 1, args.steps, "tile")
                time.sleep(0.05)
        finally:
            tmp.unlink(missing_ok=True)
        return ToolResult(text=f"temp tool finished {args.steps} steps")


class SilentTool(Tool):
    """Works until cancelled without ever reporting progress."""

    name = "silent_tool"
    description = "A long-running test tool that reports no progress."
    Args = SlowArgs

    def run(self, ctx, args):  # noqa: ANN001, ANN201
        for _ in range(args.steps):
            ctx.check_cancelled()
            time.sleep(0.05)
        return ToolResult(text="silent tool finished")


class GatedEdit(Tool):
    name = "gated_edit"
    description = "Pretend edit that needs the user's approval."
    needs_approval = True

    def run(self, ctx, args):  # noqa: ANN001, ANN201
        return ToolResult(text="edited (pretend)")


class DispatchPlanner:
    """A scripted planner keyed by a word of the current question.

    ``plans`` maps a keyword to raw model texts; turn ``i`` of the current question (planner turns
    since the latest ``question`` entry) is ``plans[key][i]``. Boxes use the ``full`` frame via the
    JSON actions of the script format would be nicer, but raw texts keep this planner tiny.
    """

    def __new__(cls, plans: dict[str, list[str]]):  # noqa: ANN204
        from zoomearth.agent.base import Planner, PlanReply

        class _Planner(Planner):
            name = "dispatch"

            def plan(self, request):  # noqa: ANN001, ANN201
                index = 0
                for entry in request.transcript:
                    if entry.kind == "question":
                        index = 0
                    elif entry.kind == "planner":
                        index += 1
                key = next((k for k in plans if k in request.question.lower()), "default")
                turns = plans[key]
                text = turns[index] if index < len(turns) else "<answer>nothing more</answer>"
                seen = {vid: (v.width, v.height) for vid, v in request.views.items()}
                return PlanReply(text=text, seen_sizes=seen, visual_tokens=1, backend="dispatch")

        return _Planner()


def tool_call(name: str, **args: Any) -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


def agent_factory(plans: dict[str, list[str]], *tools: type[Tool]) -> Any:
    """An agent factory for create_app: the dispatch planner, export_region plus ``tools``."""

    def factory(settings, on_event):  # noqa: ANN001, ANN202
        from zoomearth.api import Agent
        from zoomearth.tools.export import ExportRegion
        from zoomearth.tools.registry import ToolRegistry

        registry = ToolRegistry(builtins={t.name: t for t in (ExportRegion, *tools)},
                                entry_point_group=None)
        return Agent(settings, planner=DispatchPlanner(plans), registry=registry,
                     on_event=on_event)

    return factory
