"""Fixtures of the workbench browser tests: Debian's Chromium through Playwright, real servers.

* The browser is the system's ``chromium`` (Debian package, installed by ``make test`` through
  the Makefile's ``DEB_PACKAGES``): browser downloads are not possible here, so Playwright is
  pointed at it with ``executable_path``. A missing browser FAILS the tests (no skip).
* The server is a real ``zoomearth serve`` process (``python -m zoomearth.cli serve``: argument
  parsing, uvicorn, the offline ``rules`` planner and the built-in tools) with a synthetic
  georeferenced scene and a PNG without georeferencing under ``allowed_roots``.
* Screenshots go to ``$ZOOMEARTH_TEST_ARTIFACTS/workbench`` (default
  ``build/test-artifacts/workbench`` in the repository).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90  # a cold start imports torch and langgraph on two busy cores
MISSING_BROWSER = (
    "Debian's Chromium is not installed (no `chromium` on PATH): the workbench browser tests "
    "need it. Install it with `apt-get install chromium` (`make test` does, as root: it is in the "
    "Makefile's DEB_PACKAGES)."
)
MISSING_PLAYWRIGHT = (
    "Playwright for Python is not installed: `pip install -e '.[dev]'` (or `make install`)."
)


def artifacts_dir() -> Path:
    """Where the screenshots go (created)."""
    root = os.environ.get("ZOOMEARTH_TEST_ARTIFACTS")
    out = (Path(root) if root else REPO / "build" / "test-artifacts") / "workbench"
    out.mkdir(parents=True, exist_ok=True)
    return out


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback (None when it has none)."""
    import ipaddress

    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if getattr(a.family, "name", "") != "AF_INET":
                continue
            ip = ipaddress.ip_address(a.address)
            if not ip.is_loopback and not ip.is_link_local:
                return a.address
    return None


class Serve:
    """``zoomearth serve`` as a subprocess on a free port; stderr captured to a file.

    Args:
        tmp: Folder for the data, cache and log of this server.
        roots: Its ``allowed_roots``.
        host: Bind address (``0.0.0.0`` needs ``token``).
        token: ``api_token`` (given through ``ZOOMEARTH_API_TOKEN``, as a user would).
        connect: Address the clients use (default: ``host``, or 127.0.0.1 for a wildcard bind).
        sets: More settings, as ``--set NAME=VALUE`` strings.
    """

    def __init__(self, tmp: Path, roots: list[Path], *, host: str = "127.0.0.1",
                 token: str | None = None, connect: str | None = None,
                 sets: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://{connect or ('127.0.0.1' if host == '0.0.0.0' else host)}:{self.port}"
        tmp.mkdir(parents=True, exist_ok=True)
        self.stderr = tmp / "serve.stderr"
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        env.pop("ZOOMEARTH_API_TOKEN", None)
        if token:
            env["ZOOMEARTH_API_TOKEN"] = token
        roots_json = "[" + ", ".join(f'"{r}"' for r in roots) + "]"
        cmd = [sys.executable, "-m", "zoomearth.cli",
               "--set", f"data_dir={tmp / 'data'}", "--set", f"cache_dir={tmp / 'cache'}",
               "--set", f"allowed_roots={roots_json}",
               *[arg for item in sets for arg in ("--set", item)],
               "serve", "--host", host, "--port", str(self.port), "--planner", "rules"]
        self.proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr.open("w"))
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"zoomearth serve exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).json()["status"] == "ok":
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"zoomearth serve did not start: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 4000) -> str:
        return self.stderr.read_text(errors="replace")[-n:] if self.stderr.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium; the tests fail (never skip) without it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(MISSING_BROWSER, pytrace=False)
    return path


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    """One headless Chromium for the session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(MISSING_PLAYWRIGHT, pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, headless=True,
                               args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The allowed root: ``scene.tif`` (2,048 px, georeferenced, clouds: the docs' scene) and
    ``pixel/plain.png`` (600 x 400 px, no georeferencing)."""
    import numpy as np
    from PIL import Image

    from zoomearth.scene.synth import generate_scene

    root = tmp_path_factory.mktemp("roots") / "scenes"
    root.mkdir()
    generate_scene(root / "scene.tif", 2048, seed=3, clouds=0.35, progress=False)
    for extra in root.iterdir():
        if extra.name != "scene.tif":
            extra.unlink()
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:400, 0:600]
    img = np.stack([(xx * 255 // 600), (yy * 255 // 400), rng.integers(60, 200, (400, 600))], -1)
    # In a sub-folder (listed after the root's own files).
    (root / "pixel").mkdir()
    Image.fromarray(img.astype(np.uint8)).save(root / "pixel" / "plain.png")
    return root


@pytest.fixture(scope="module")
def server(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """``zoomearth serve`` on loopback without a token (the analyst's own machine)."""
    s = Serve(tmp_path_factory.mktemp("serve"), [scenes])
    try:
        yield s
    finally:
        s.stop()


@dataclass
class PageLog:
    """What a page reported: console messages, page errors, responses with status >= 400."""

    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    tiles: list[tuple[int, str]] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        def on_console(msg: Any) -> None:
            if msg.type in ("error", "warning"):
                self.console.append(f"{msg.type}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

        def on_response(resp: Any) -> None:
            if "/v1/tiles/" in resp.url:
                self.tiles.append((resp.status, resp.url))
            if resp.status >= 400:
                self.failed.append(f"{resp.status} {resp.request.method} {resp.url}")

        page.on("response", on_response)

    def problems(self) -> list[str]:
        return self.console + [f"pageerror: {e}" for e in self.errors] + self.failed
