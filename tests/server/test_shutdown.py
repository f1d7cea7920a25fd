"""A real ``zoomearth serve`` process stopped with SIGTERM and SIGKILL (issue 14, item 7).

* SIGTERM: running runs are cancelled, an open stream ends with an error event
  (``server_shutdown``) followed by ``data: [DONE]``, a non-streaming request gets a 503, the
  tool's partial file is removed and the process exits.
* SIGKILL: the partial file stays (nobody could remove it); the next start of a server on the
  same data directory removes it, because its owner process is dead. Temporaries of live
  processes are kept.
* Every line the server writes to stderr is one JSON object (``--log-format json``, the default):
  uvicorn's own start-up and shutdown lines included.

The server is ``tests.server.serve_main`` (:func:`zoomearth.server.cli.main` with the scripted
planner and :class:`~tests.server.helpers.TempWritingTool`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import data_url, free_port, geotiff_bytes, user
from zoomearth.temporaries import HOST_TAG, is_temporary_name

REPO = Path(__file__).resolve().parents[2]
HANG_S = 60  # only to detect a hang


class Serve:
    """``python -m tests.server.serve_main`` on a free port, stderr captured to a file."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr = tmp / f"{name}.stderr"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.server.serve_main", "--port", str(self.port),
             "--set", f"data_dir={tmp / 'data'}", "--set", f"cache_dir={tmp / 'cache'}"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.stderr.open("w"))
        deadline = time.monotonic() + HANG_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.stderr.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).json()["status"] == "ok":
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("the server did not start")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(HANG_S)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_temporary_name(p.name))


def _wait_for(predicate, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + HANG_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _running(server: Serve) -> int:
    return int(httpx.get(f"{server.url}/healthz", timeout=5).json()["runs"]["running"])


@pytest.fixture
def image(tmp_path):
    return data_url(geotiff_bytes(tmp_path, 600, 400))


def test_sigterm_ends_streams_with_an_error_then_done_and_leaves_no_temporaries(tmp_path, image):
    data = tmp_path / "data"
    # Litter of killed processes (dead owner) and a live process's temporary (this test's).
    dead = _dead_pid()
    stale_run = data / "runs" / "old-conv" / f".mask.tif.tmp-{HOST_TAG}-{dead}-abcdef12.tif"
    stale_upload = data / "server" / "files" / f".upload.part.tmp-{HOST_TAG}-{dead}-0a1b2c.part"
    live = data / "runs" / "old-conv" / f".live.tif.tmp-{HOST_TAG}-{os.getpid()}-123456.tif"
    for path in (stale_run, stale_upload, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")

    server = Serve(tmp_path, "sigterm")
    try:
        assert not stale_run.exists() and not stale_upload.exists()  # swept at start-up
        assert live.exists()  # its owner (this process) is alive: kept

        outcome: dict[str, httpx.Response] = {}

        def non_streaming() -> None:
            outcome["r"] = httpx.post(
                f"{server.url}/v1/chat/completions", timeout=HANG_S,
                headers={"X-Conversation-Id": "term-plain"},
                json={"model": "zoomearth", "messages": [user("temp work, plain", image)]})

        body = {"model": "zoomearth", "stream": True,
                "messages": [user("temp work, streamed", image)]}
        lines: list[str] = []
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                          timeout=HANG_S, headers={"X-Conversation-Id": "term-sse"}) as r:
            assert r.status_code == 200
            it = r.iter_lines()
            for line in it:
                lines.append(line)
                if "temp_tool: " in line:
                    break  # the tool is running and reporting progress
            worker = threading.Thread(target=non_streaming)
            worker.start()
            _wait_for(lambda: _running(server) == 2, "both runs to execute")
            # live + one partial file per run (a run executes a little before its tool writes)
            _wait_for(lambda: len(_temporaries(data / "runs")) == 3, "both tools to write")
            server.proc.send_signal(signal.SIGTERM)
            lines.extend(it)  # the rest of the stream, to its end
        worker.join(HANG_S)
        events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]", lines[-5:]
        error = json.loads(events[-2])["error"]
        assert error["code"] == "server_shutdown"
        assert "checkpoint is kept" in error["message"] and "sending the same message" in \
            error["message"]
        r = outcome["r"]
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "server_shutdown"
        assert server.proc.wait(HANG_S) is not None  # the process exits
        # The cancelled tools removed their partial files; only the live owner's file is left.
        assert _temporaries(data) == [live]
        # Every stderr line is a JSON object: our logs, uvicorn's lines, the shutdown.
        text = server.stderr.read_text()
        records = [json.loads(line) for line in text.splitlines()]
        loggers = {rec["logger"] for rec in records}
        assert "uvicorn.error" in loggers and "zoomearth.server" in loggers, loggers
        assert any("Shutting down" in rec["msg"] for rec in records)
        assert any(rec.get("msg") == "removed 2 stale temporary file(s) (14 bytes) left by "
                   "stopped processes" for rec in records)
    finally:
        server.kill()


def test_sigkill_leaves_a_temporary_that_the_next_start_removes(tmp_path, image):
    data = tmp_path / "data"
    server = Serve(tmp_path, "first")
    try:
        body = {"model": "zoomearth", "stream": True, "messages": [user("temp work", image)]}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                          timeout=HANG_S, headers={"X-Conversation-Id": "killed"}) as r:
            for line in r.iter_lines():
                if "temp_tool: " in line:
                    break
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(HANG_S)
    finally:
        server.kill()
    left = _temporaries(data / "runs")
    assert len(left) == 1 and f"-{server.proc.pid}-" in left[0].name  # nobody removed it

    again = Serve(tmp_path, "second")
    try:
        assert _temporaries(data) == []  # the dead owner's file was swept at start-up
        r = httpx.post(f"{again.url}/v1/chat/completions", timeout=HANG_S,
                       json={"model": "zoomearth", "messages": [user("quick one", image)]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "quick"
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(HANG_S) is not None
    finally:
        again.kill()


def test_json_logging_turns_every_stderr_line_into_a_json_object(tmp_path):
    """uvicorn's loggers, warnings, stray prints and progress bars: all one JSON object a line."""
    script = (
        "import logging, sys, warnings\n"
        "from zoomearth.server.cli import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "logging.getLogger('uvicorn.error').info('Started server process [1]')\n"
        "logging.getLogger('zoomearth.server').info('ready')\n"
        "warnings.warn('a library warning')\n"
        "print('Preparing a tiled copy of x.tif ...', file=sys.stderr)\n"
        "sys.stderr.write('bar 10%\\rbar 20%\\r')\n"
        "sys.stderr.write('bar 100%\\n')\n"
        "from tqdm import tqdm\n"
        "for _ in tqdm(range(3), file=sys.stderr): pass\n"
        "import os; print(os.environ.get('TQDM_DISABLE'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=HANG_S, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stderr.splitlines()]  # every line is JSON
    by_logger = {(rec["logger"], rec["msg"]) for rec in records}
    assert ("uvicorn.error", "Started server process [1]") in by_logger
    assert ("zoomearth.server", "ready") in by_logger
    assert any(lg == "py.warnings" and "a library warning" in msg for lg, msg in by_logger)
    assert ("stderr", "Preparing a tiled copy of x.tif ...") in by_logger
    assert {("stderr", "bar 10%"), ("stderr", "bar 20%"), ("stderr", "bar 100%")} <= by_logger
    assert out.stdout.strip() == "1"  # progress bars are off (and so drew nothing above)
