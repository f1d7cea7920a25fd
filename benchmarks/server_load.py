"""Load on the OpenAI-compatible server: N concurrent streaming chat requests.

Starts ``python -m zoomearth.server`` on 127.0.0.1 (a free port, a temporary data directory) with
the ``script`` planner -- one zoom plus the real built-in ``export_region`` tool, then an answer --
and sends ``--requests`` streaming chat completions at once with the real ``openai`` async client
(each its own conversation, the image as a data URL). Prints throughput, p50/p95 latency, the
failures (a 429 counts as one: target 0 of 50), and the server's peak RSS (sampled every 50 ms).

The server keeps its defaults for the run limits (max_concurrent_runs=4, max_queued_runs=64), so
50 requests queue and then run four at a time.

Usage: ``python benchmarks/server_load.py [--requests 50] [--size 2048]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_image(path: Path, size: int) -> bytes:
    from tests.scene.rasters import write_raster

    write_raster(path, size, size, 3, block=256, overviews=[2, 4, 8], compress="deflate")
    return path.read_bytes()


class RssSampler(threading.Thread):
    """Peak resident memory of a process and its children."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                rss = self.proc.memory_info().rss + sum(
                    c.memory_info().rss for c in self.proc.children(recursive=True))
            except psutil.Error:
                break
            self.peak = max(self.peak, rss)
            time.sleep(0.05)


async def one(client, image_url: str, i: int) -> tuple[float, str | None, int]:
    t0 = time.perf_counter()
    progress = 0
    try:
        stream = await client.chat.completions.create(
            model="zoomearth", stream=True,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": f"Export the dock area (request {i})"},
                {"type": "image_url", "image_url": {"url": image_url}}]}],
            extra_headers={"X-Conversation-Id": f"load-{i}"})
        content = ""
        async for chunk in stream:
            delta = chunk.choices[0].delta
            progress += bool(getattr(delta, "reasoning_content", None))
            content += delta.content or ""
        if not content.startswith("done"):
            return time.perf_counter() - t0, f"unexpected answer {content[:80]!r}", progress
        return time.perf_counter() - t0, None, progress
    except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
        return time.perf_counter() - t0, f"{type(exc).__name__}: {str(exc)[:120]}", progress


async def drive(url: str, image_url: str, n: int) -> tuple[float, list]:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                                timeout=600, http_client=httpx.AsyncClient(limits=limits))
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(client, image_url, i) for i in range(n)))
    wall = time.perf_counter() - t0
    await client.close()
    return wall, results


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--size", type=int, default=2048, help="side of the test GeoTIFF (px)")
    args = p.parse_args()

    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="zoomearth-load-"))
    raw = make_image(tmp / "scene.tif", args.size)
    image_url = f"data:image/tiff;base64,{base64.b64encode(raw).decode()}"
    plan = tmp / "plan.json"
    plan.write_text(json.dumps({"turns": [
        [{"zoom": [0, 0, 1024, 1024], "frame": "full", "label": "dock"},
         {"tool": "export_region", "args": {}}],
        [{"answer": "done: exported the dock area"}],
    ]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "server.log"
    cmd = [sys.executable, "-m", "zoomearth.server", "--port", str(port), "--plan", str(plan),
           "--set", f"data_dir={tmp / 'data'}", "--set", f"cache_dir={tmp / 'cache'}",
           "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                print(log.read_text()[-3000:])
                return 1
            try:
                if httpx.get(f"{url}/healthz", timeout=2).json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        sampler = RssSampler(server.pid)
        idle_rss = sampler.proc.memory_info().rss
        sampler.start()
        wall, results = asyncio.run(drive(url, image_url, args.requests))
        sampler.stop.set()
        sampler.join()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    latencies = sorted(r[0] for r in results)
    failures = [r[1] for r in results if r[1]]
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    print(f"requests: {args.requests} concurrent streaming (image {args.size}x{args.size} GeoTIFF "
          f"as a data URL, {len(raw) / 1e6:.1f} MB; script planner: zoom + export_region)")
    print(f"succeeded: {len(results) - len(failures)}   failures: {len(failures)}")
    for f in sorted(set(failures))[:10]:
        print(f"  failure: {f} (x{failures.count(f)})")
    print(f"wall: {wall:.2f} s   throughput: {len(results) / wall:.2f} requests/s")
    print(f"latency: p50 {statistics.median(latencies):.2f} s   p95 {q[18]:.2f} s   "
          f"max {latencies[-1]:.2f} s")
    print(f"progress chunks per request: median "
          f"{statistics.median(r[2] for r in results):.0f}")
    print(f"server RSS: idle {idle_rss / 2**20:.0f} MiB   peak {sampler.peak / 2**20:.0f} MiB")
    return 0 if not failures else 2


if __name__ == "__main__":
    sys.exit(main())
