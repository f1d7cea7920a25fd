"""Two server worker processes share one conversation through the Postgres checkpointer.

A throwaway PostgreSQL cluster is created for the module (tests/pg_cluster.py: ``initdb`` +
``pg_ctl`` in a temporary folder, as the ``postgres`` user when the tests run as root). Debian's
``postgresql`` package provides the binaries; ``make test`` installs it when missing. Without it
this test fails (CI does not allow unexpected skips).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.pg_cluster import postgres_cluster
from tests.server.helpers import client, data_url, free_port, geotiff_bytes, user


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_cluster("zoomearth-pg-") as url:
        yield url


def _start_worker(port: int, data_dir: Path, plan: Path, pg: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "zoomearth.server", "--port", str(port),
           "--set", f"data_dir={data_dir}", "--set", f"cache_dir={data_dir.parent / 'cache'}",
           "--set", f"postgres_url={pg}", "--plan", str(plan), "--log-level", "warning"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json().get("status") == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"worker {url} did not become healthy: {log.read_text()[-2000:]}")


class _Url:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"


def test_two_workers_share_a_conversation_through_postgres(postgres_url, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"turns": [
        [{"zoom": [0, 0, 600, 400], "frame": "full", "label": "dock"},
         {"tool": "export_region", "args": {}}],
        [{"answer": "first answer from worker A"}],
        [{"answer": "second answer"}],
    ]}))
    data_dir = tmp_path / "data"
    ports = [free_port(), free_port()]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start_worker(p, data_dir, plan, postgres_url, log)
             for p, log in zip(ports, logs, strict=True)]
    try:
        servers = [_Url(p) for p in ports]
        for server, proc, log in zip(servers, procs, logs, strict=True):
            _wait_healthy(server.url, proc, log)
        a, b = (client(s) for s in servers)
        image = data_url(geotiff_bytes(tmp_path, 800, 600))
        first = [user("Where is the dock?", image)]
        r1 = a.chat.completions.create(model="zoomearth", messages=first)
        text1 = r1.choices[0].message.content
        assert text1.startswith("first answer from worker A")
        thread = r1.model_extra["zoomearth"]["thread_id"]
        # Worker B continues the conversation A started: the thread lives in Postgres.
        follow = first + [{"role": "assistant", "content": text1}, user("And now?")]
        chunks = list(b.chat.completions.create(model="zoomearth", messages=follow, stream=True))
        text2 = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text2.startswith("second answer")
        assert chunks[-1].model_extra["zoomearth"]["thread_id"] == thread
        # B serves the artifact links A signed (same data directory, same key).
        link = text1.split("](")[1].split(")")[0]
        assert httpx.get(link.replace(str(ports[0]), str(ports[1]))).status_code == 200
        import psycopg

        with psycopg.connect(postgres_url) as conn:
            (count,) = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s",
                                    (thread,)).fetchone()
        assert count > 0
        assert not (data_dir / "checkpoints.sqlite").exists()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
