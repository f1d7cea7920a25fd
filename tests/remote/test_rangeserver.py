"""The range-capable static file server the remote tests, the benchmark and the docs use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from zoomearth.scene.rangeserver import CONTROL, RangeServer, RangeServerProcess

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.bin").write_bytes(DATA)
    (tmp_path / "secret.txt").write_text("outside")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    return root


def test_ranges_heads_and_counts(folder):
    with RangeServer(folder) as server:
        url = server.url_for("d/f.bin")
        head = httpx.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(DATA))
        assert head.headers["accept-ranges"] == "bytes" and head.headers["etag"]
        one = httpx.get(url, headers={"Range": "bytes=100-199"})
        assert one.status_code == 206 and one.content == DATA[100:200]
        assert one.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
        suffix = httpx.get(url, headers={"Range": "bytes=-10"})
        assert suffix.content == DATA[-10:]
        open_end = httpx.get(url, headers={"Range": "bytes=10200-"})
        assert open_end.content == DATA[10200:]
        multi = httpx.get(url, headers={"Range": "bytes=0-9,20-29"})
        assert multi.status_code == 206
        assert multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
        assert DATA[0:10] in multi.content and DATA[20:30] in multi.content
        assert httpx.get(url, headers={"Range": "bytes=99999-"}).status_code == 416
        assert httpx.get(url).content == DATA
        requests, sent = server.stats.snapshot()
        assert requests == 7
        assert sent == 100 + 10 + 40 + len(multi.content) + len("range not satisfiable\n") + len(
            DATA)
        server.stats.reset()
        assert server.stats.snapshot() == (0, 0)


def test_nothing_outside_the_folder_and_no_listing(folder):
    with RangeServer(folder) as server:
        assert httpx.get(server.url_for("link.txt")).status_code == 404  # symlink out
        assert httpx.get(server.url + "d/../../secret.txt").status_code == 404
        assert httpx.get(server.url + "%2e%2e/secret.txt").status_code == 404
        assert httpx.get(server.url).status_code == 404
        assert httpx.get(server.url_for("d")).status_code == 404
        # Control requests are files like any other unless the server is started with them.
        assert httpx.get(server.url.rstrip("/") + CONTROL + "stats").status_code == 404


def test_child_process_hooks(folder):
    with RangeServerProcess(folder) as server:
        url = server.url_for("d/f.bin")
        server.configure(fail_status={"/d/f.bin": 503}, redirects={"/old.bin": "/d/f.bin"})
        assert httpx.get(url).status_code == 503
        server.configure(fail_status={})
        moved = httpx.get(server.url_for("old.bin"), follow_redirects=True)
        assert moved.content == DATA and moved.history[0].status_code == 302
        assert server.stats()[0] == 3  # control requests are not counted
        assert [r.status for r in server.log()] == [503, 302, 200]
        server.reset()
        assert server.stats() == (0, 0)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=2)  # stopped


def test_detached_command_line(folder, tmp_path):
    pid_file, url_file = tmp_path / "pid", tmp_path / "url"
    done = subprocess.run(
        [sys.executable, "-m", "zoomearth.scene.rangeserver", str(folder), "--port", "0",
         "--detach", "--pid-file", str(pid_file), "--url-file", str(url_file)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    pid = int(pid_file.read_text())
    try:
        url = url_file.read_text().strip()
        assert f"serving {folder} at {url} (process {pid}" in done.stdout
        assert httpx.get(url + "d/f.bin").content == DATA  # bound before the command returned
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the detached server did not stop on SIGTERM")
