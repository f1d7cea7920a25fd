"""Peak memory of the server per chat request body size (issue 14, item 3).

Starts ``python -m zoomearth.server`` (a free port, a temporary data directory, the script planner
answering at once, default limits: ``max_json_body_bytes`` = 8,000,000) once per measurement, so
each figure is the peak of one request. Each request is a chat completion whose user message holds
a PNG of random noise as a ``data:`` URL sized so that the whole JSON body has the given size; the
server parses it, decodes and stores the image, checks it, runs the (instant) planner and answers.
Two bodies are over the limit: one sent in full (refused as the limit is passed) and one that only
declares ``Content-Length`` of 1.07 GB (the size accepted before the fix), refused before any of
it is read. A last row raises the limit (``--set max_json_body_bytes``) and sends 64 MB: the
baseline of what an accepted large body costs, as the old limit (1.07 GB) allowed.

Peak RSS is the server process's ``VmHWM`` from ``/proc/PID/status`` (its high-water mark since it
started): read once the server is ready (the idle baseline) and once the request is answered. The
table gives the medians over ``--repeats`` fresh servers, the extra memory over the idle baseline,
and that extra as a ratio of the body size. Before the fix a 1.07 GB body was accepted and peaked
at 4.25 GB RSS (about 4 times the body; three at once 5.9 GB), per the issue's measurement.

Usage: ``python benchmarks/body_size.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LIMIT = 8_000_000  # the default max_json_body_bytes
#: (label, body bytes, whether the body is sent, max_json_body_bytes of the server).
CASES = [
    ("1 MB", 1_000_000, True, LIMIT),
    ("2 MB", 2_000_000, True, LIMIT),
    ("4 MB", 4_000_000, True, LIMIT),
    ("7.9 MB (largest accepted)", LIMIT - 60_000, True, LIMIT),
    ("9 MB (over, sent)", 9_000_000, True, LIMIT),
    ("1.07 GB (over, declared only)", 1_070_000_000, False, LIMIT),
    # Baseline: what an accepted large body costs when the limit is raised (as the old limit,
    # max_upload_bytes * 16 / 3 = 1.07 GB, allowed).
    ("64 MB, limit raised (baseline)", 64_000_000, True, 70_000_000),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def noise_png(raw_bytes: int) -> bytes:
    """A PNG of random RGB noise of about ``raw_bytes`` bytes (noise does not compress)."""
    import numpy as np
    from PIL import Image

    side = max(8, int((raw_bytes / 3) ** 0.5))
    arr = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def chat_body(size: int) -> bytes:
    """A chat request body of about ``size`` bytes (within 1%)."""
    if size > 500_000_000:
        return b""  # only declared, never built
    png = noise_png(int(size * 3 / 4) - 2000)
    url = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    body = {"model": "zoomearth", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url}}]}]}
    data = json.dumps(body).encode()
    pad = size - len(data)
    if pad > 0:  # the text part takes up the difference
        body["messages"][0]["content"][0]["text"] += " " * pad
        data = json.dumps(body).encode()
    return data


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process so far, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def send(port: int, body: bytes, declared: int) -> int:
    """POST a body (or only its Content-Length) on a raw socket; the response status."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        sock.sendall(head)
        try:
            view = memoryview(body)
            for i in range(0, len(view), 1 << 20):
                sock.sendall(view[i:i + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole body was sent: the response is waiting
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ")[1]) if data else 0


def measure(tmp: Path, plan: Path, body: bytes, declared: int,
            limit: int) -> tuple[int, int, int]:
    """(status, idle VmHWM, VmHWM after the request) on a fresh server."""
    import httpx

    port = free_port()
    log = tmp / "server.log"
    cmd = [sys.executable, "-m", "zoomearth.server", "--port", str(port), "--plan", str(plan),
           "--set", f"data_dir={tmp / 'data'}", "--set", f"cache_dir={tmp / 'cache'}",
           "--set", f"max_json_body_bytes={limit}", "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()[
                        "status"] == "ok":
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        idle = vm_hwm(server.pid)
        status = send(port, body, declared)
        return status, idle, vm_hwm(server.pid)
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh servers per size")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zoomearth-body-"))
    plan = tmp / "plan.json"
    plan.write_text(json.dumps({"turns": [[{"answer": "an image"}]]}))
    mb = 1e6
    print(f"max_json_body_bytes = {LIMIT:,} (default); medians of {args.repeats} fresh servers; "
          "peak = server VmHWM")
    print(f"{'body':<30} {'status':>6} {'idle MB':>8} {'peak MB':>8} {'extra MB':>9} "
          f"{'extra/body':>10}")
    for label, size, sent, limit in CASES:
        body = chat_body(size) if sent else b""
        declared = len(body) if sent else size
        runs = [measure(tmp, plan, body, declared, limit) for _ in range(args.repeats)]
        statuses = {r[0] for r in runs}
        idle = statistics.median(r[1] for r in runs)
        peak = statistics.median(r[2] for r in runs)
        extra = peak - idle
        print(f"{label:<30} {'/'.join(map(str, sorted(statuses))):>6} {idle / mb:8.1f} "
              f"{peak / mb:8.1f} {extra / mb:9.1f} {extra / declared:10.2f}")
    print("extra includes the first request's fixed cost (the agent's lazy imports, GDAL, the "
          "run): compare rows, not the ratio alone")
    print("before the fix (issue 14): a 1.07 GB body was accepted, peak 4.25 GB RSS "
          "(extra/body about 3.9); three at once 5.9 GB")


if __name__ == "__main__":
    main()
