"""A small static file server with HTTP range requests, which counts what it sends.

Remote scenes (:mod:`zoomearth.scene.remote`) are read through GDAL's ``/vsicurl/`` with HTTP
range requests. This server stands in for a bucket or a CDN in tests, in ``benchmarks/remote.py``
and in the docs' examples: it serves the files below one folder, answers ``HEAD``, ``GET`` and
``GET`` with a ``Range`` header (one range -> ``206`` with ``Content-Range``; several ranges ->
``206 multipart/byteranges``), sends ``ETag``/``Last-Modified``, and counts the requests and
body bytes it sent (:attr:`RangeServer.stats`). Nothing outside the folder is served (no ``..``,
no symbolic link leading out), and there are no directory listings.

Test hooks (attributes of :class:`RangeServer`): ``redirects`` maps a URL path to a
``Location`` answered with ``302``; ``delay_s`` holds every answer back (a slow server, for
timeouts); ``fail_status`` maps a URL path to a status code answered instead of the file.

Run it in another process when GDAL reads from it (:class:`RangeServerProcess`): some GDAL calls
(a dataset's overview count, which fetches a directory lazily) hold Python's GIL while they wait
for the network, so a server thread in the same process could never answer them. With
``--control`` the process also answers ``/_rangeserver/stats`` (the counters as JSON),
``/_rangeserver/reset`` and ``POST /_rangeserver/configure`` (the test hooks, as JSON); these
requests are not counted.

Command line (loopback only by default; ``--detach`` returns once the port is bound)::

    python -m zoomearth.scene.rangeserver DIR --port 8731
    python -m zoomearth.scene.rangeserver DIR --port 0 --detach --url-file url.txt --pid-file pid
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["RangeServer", "RangeServerProcess", "RequestRecord", "ServerStats", "main"]

_RANGE_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
_CHUNK = 1 << 16
#: URL path prefix of the control requests (with ``--control`` only).
CONTROL = "/_rangeserver/"


@dataclass(frozen=True)
class RequestRecord:
    """One answered request.

    Attributes:
        method: ``GET`` or ``HEAD``.
        path: The URL path asked for.
        range: The ``Range`` header as sent (None without one).
        status: The status code answered.
        body_bytes: Bytes of body answered (its ``Content-Length``: file bytes plus multipart
            framing; 0 for ``HEAD``). Counted before the answer goes out, so a client that has
            its answer always finds it counted; the totals leave out the file bytes a client that
            hung up never received (of a multipart answer: those of the range being sent).
    """

    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int


@dataclass
class ServerStats:
    """Counters of a :class:`RangeServer` (thread-safe through its lock)."""

    requests: int = 0
    body_bytes: int = 0
    log: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, record: RequestRecord) -> None:
        """Count one answered request."""
        with self.lock:
            self.requests += 1
            self.body_bytes += record.body_bytes
            self.log.append(record)

    def unsent(self, n: int) -> None:
        """Take back ``n`` counted body bytes a client hung up before receiving."""
        with self.lock:
            self.body_bytes -= n

    def reset(self) -> None:
        """Start counting from zero."""
        with self.lock:
            self.requests = 0
            self.body_bytes = 0
            self.log.clear()

    def snapshot(self) -> tuple[int, int]:
        """``(requests, body bytes)`` so far."""
        with self.lock:
            return self.requests, self.body_bytes


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Byte ranges ``[(start, end_inclusive)]`` of a ``Range`` header, clipped to the file.

    Returns None for a header this server does not understand (then the whole file is sent,
    as RFC 9110 allows); an empty list when no range overlaps the file (416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        m = _RANGE_RE.match(part)
        if not m or (not m.group(1) and not m.group(2)):
            return None
        if m.group(1):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else size - 1
            if m.group(2) and end < start:
                return None
        else:  # suffix range: the last N bytes
            n = int(m.group(2))
            start, end = max(0, size - n), size - 1
        end = min(end, size - 1)
        if start <= end:
            out.append((start, end))
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: GDAL reuses its connection
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK hold every answer back by ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        if self.server.owner.verbose:
            sys.stderr.write(f"rangeserver: {self.address_string()} {format % args}\n")

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(head=False)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if not (self.server.owner.control and self.path.startswith(CONTROL)):
            self._simple(405, "method not allowed", head=False, url_path=self.path)
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            self.server.owner.configure(**json.loads(self.rfile.read(length) or b"{}"))
        except (TypeError, ValueError) as exc:
            self._json(400, {"error": str(exc)})
            return
        self._json(200, {"ok": True})

    def handle_one_request(self) -> None:
        # A client that hangs up mid-answer (GDAL cancelling a read) is not an error here.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle_one_request()

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _control(self, url_path: str) -> None:
        owner = self.server.owner
        if url_path == CONTROL + "stats":
            with owner.stats.lock:
                log = [r.__dict__ for r in owner.stats.log]
                body = {"requests": owner.stats.requests, "body_bytes": owner.stats.body_bytes,
                        "log": log}
            self._json(200, body)
        elif url_path == CONTROL + "reset":
            owner.stats.reset()
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": "unknown control request"})

    # -------------------------------------------------------------------------------------
    def _file(self, url_path: str) -> Path | None:
        root = self.server.owner.root
        rel = unquote(url_path).lstrip("/")
        if not rel or "\x00" in rel:
            return None
        candidate = (root / rel).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    def _simple(self, status: int, text: str, *, head: bool, extra: dict[str, str] | None = None,
                url_path: str = "") -> None:
        body = (text + "\n").encode()
        self._record(url_path, status, 0 if head else len(body))
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self._write(body)

    def _record(self, url_path: str, status: int, body: int) -> None:
        # Before the answer goes out: a client that has it always finds it counted.
        self.server.owner.stats.add(
            RequestRecord(self.command, url_path, self.headers.get("Range"), status, body)
        )

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError:
            self.server.owner.stats.unsent(len(data))
            raise

    def _answer(self, *, head: bool) -> None:
        owner = self.server.owner
        url_path = urlsplit(self.path).path
        if owner.control and url_path.startswith(CONTROL):
            self._control(url_path)
            return
        if owner.delay_s:
            time.sleep(owner.delay_s)
        if url_path in owner.redirects:
            self._simple(302, "moved", head=head, extra={"Location": owner.redirects[url_path]},
                         url_path=url_path)
            return
        if url_path in owner.fail_status:
            status = owner.fail_status[url_path]
            self._simple(status, f"status {status}", head=head, url_path=url_path)
            return
        path = self._file(url_path)
        if path is None:
            self._simple(404, "not found", head=head, url_path=url_path)
            return
        st = path.stat()
        size = st.st_size
        etag = '"' + hashlib.sha1(f"{path}|{size}|{st.st_mtime_ns}".encode()).hexdigest()[:20] + '"'
        common = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
        }
        header = self.headers.get("Range")
        ranges = _parse_ranges(header, size) if header else None
        if ranges is not None and not ranges:
            self._simple(416, "range not satisfiable", head=head,
                         extra={"Content-Range": f"bytes */{size}"}, url_path=url_path)
            return
        with open(path, "rb") as fh:
            if ranges is None:
                self._record(url_path, 200, 0 if head else size)
                self.send_response(200)
                self._headers(common, "application/octet-stream", size)
                if not head:
                    self._copy(fh, 0, size)
            elif len(ranges) == 1:
                start, end = ranges[0]
                self._record(url_path, 206, 0 if head else end - start + 1)
                self.send_response(206)
                common["Content-Range"] = f"bytes {start}-{end}/{size}"
                self._headers(common, "application/octet-stream", end - start + 1)
                if not head:
                    self._copy(fh, start, end - start + 1)
            else:
                boundary = "zoomearth" + hashlib.sha1(os.urandom(8)).hexdigest()[:16]
                parts = [
                    (
                        f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                        f"Content-Range: bytes {s}-{e}/{size}\r\n\r\n"
                    ).encode()
                    for s, e in ranges
                ]
                tail = f"\r\n--{boundary}--\r\n".encode()
                length = sum(len(p) for p in parts) + sum(e - s + 1 for s, e in ranges) + len(tail)
                self._record(url_path, 206, 0 if head else length)
                self.send_response(206)
                self._headers(common, f"multipart/byteranges; boundary={boundary}", length)
                if not head:
                    for (s, e), part in zip(ranges, parts, strict=True):
                        self._write(part)
                        self._copy(fh, s, e - s + 1)
                    self._write(tail)

    def _headers(self, common: dict[str, str], content_type: str, length: int) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for k, v in common.items():
            self.send_header(k, v)
        self.end_headers()

    def _copy(self, fh: Any, start: int, length: int) -> None:
        fh.seek(start)
        left = length
        try:
            while left > 0:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
        finally:
            if left:
                self.server.owner.stats.unsent(left)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: RangeServer


class RangeServer:
    """A threaded, range-capable static file server on ``host:port`` serving ``root``.

    Use as a context manager (or :meth:`start`/:meth:`stop`); :attr:`url` is the base URL
    (ending in ``/``); :attr:`stats` counts requests and body bytes sent.

    Args:
        root: Folder whose files are served (its subfolders too).
        host: Address to bind (loopback by default).
        port: Port; 0 picks a free one.
        verbose: Log each request on stderr.
        control: Answer the control requests under :data:`CONTROL` (tests).
    """

    def __init__(
        self, root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
        *, verbose: bool = False, control: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder; give the folder to serve.")
        self.verbose = verbose
        self.control = control
        self.stats = ServerStats()
        #: URL path -> ``Location`` answered with 302 (tests of redirect handling).
        self.redirects: dict[str, str] = {}
        #: URL path -> status code answered instead of the file (tests of HTTP errors).
        self.fail_status: dict[str, int] = {}
        #: Seconds every answer is held back (tests of timeouts).
        self.delay_s = 0.0
        self._server = _Server((host, port), _Handler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    def configure(
        self,
        redirects: dict[str, str] | None = None,
        fail_status: dict[str, int] | None = None,
        delay_s: float | None = None,
    ) -> None:
        """Replace the test hooks that are given (see the module docstring)."""
        if redirects is not None:
            self.redirects = {str(k): str(v) for k, v in redirects.items()}
        if fail_status is not None:
            self.fail_status = {str(k): int(v) for k, v in fail_status.items()}
        if delay_s is not None:
            self.delay_s = float(delay_s)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8731/``."""
        host = str(self._server.server_address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def url_for(self, name: str) -> str:
        """URL of a file below the root (``name`` relative to it)."""
        return self.url + name.lstrip("/")

    def start(self) -> RangeServer:
        """Serve in a background (daemon) thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="rangeserver", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (or a signal that raises)."""
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(root: str | os.PathLike[str], **kwargs: Any) -> Iterator[RangeServer]:
    """A started :class:`RangeServer` for a ``with`` block, stopped after it."""
    server = RangeServer(root, **kwargs)
    with server:
        yield server


class RangeServerProcess:
    """A :class:`RangeServer` in a child process, driven through its control requests.

    ``with RangeServerProcess(folder) as server:`` starts ``python -m
    zoomearth.scene.rangeserver FOLDER --port 0 --control`` and waits until it listens;
    :meth:`stats`, :meth:`reset` and :meth:`configure` talk to it; leaving the block stops it.

    Args:
        root: Folder to serve.
        host: Address to bind.
        start_timeout_s: How long to wait for the child to listen.
    """

    def __init__(
        self, root: str | os.PathLike[str], host: str = "127.0.0.1", start_timeout_s: float = 30
    ) -> None:
        self.root = Path(root).resolve()
        self._host = host
        self._timeout = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> RangeServerProcess:
        """Start the child and wait for its URL; returns self."""
        with tempfile.TemporaryDirectory(prefix="rangeserver-") as tmp:
            url_file = Path(tmp) / "url"
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "zoomearth.scene.rangeserver", str(self.root),
                 "--host", self._host, "--port", "0", "--url-file", str(url_file), "--control"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + self._timeout
            while not (url_file.exists() and url_file.read_text().endswith("\n")):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    self.stop()
                    raise RuntimeError(f"the range server did not start: {err.strip()[-500:]}")
                time.sleep(0.02)
            self.url = url_file.read_text().strip()
        return self

    def url_for(self, name: str) -> str:
        """URL of a file below the root."""
        return self.url + name.lstrip("/")

    def _call(self, name: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        url = self.url.rstrip("/") + CONTROL + name
        resp = httpx.post(url, json=body, timeout=10) if body is not None else httpx.get(
            url, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def stats(self) -> tuple[int, int]:
        """``(requests, body bytes)`` served since the start or the last :meth:`reset`."""
        data = self._call("stats")
        return int(data["requests"]), int(data["body_bytes"])

    def log(self) -> list[RequestRecord]:
        """Every counted request since the start or the last :meth:`reset`."""
        return [RequestRecord(**r) for r in self._call("stats")["log"]]

    def reset(self) -> None:
        """Count from zero."""
        self._call("reset")

    def configure(self, **hooks: Any) -> None:
        """Set the test hooks ``redirects``, ``fail_status``, ``delay_s`` (:class:`RangeServer`)."""
        self._call("configure", hooks)

    def stop(self) -> None:
        """Stop the child process."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> RangeServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m zoomearth.scene.rangeserver DIR [--port N] [--detach]``."""
    p = argparse.ArgumentParser(
        prog="python -m zoomearth.scene.rangeserver",
        description="Serve a folder over HTTP with range requests (for remote-scene tests).",
    )
    p.add_argument("root", help="folder to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8731, help="port (0 = a free one; default 8731)")
    p.add_argument("--detach", action="store_true",
                   help="serve in a background process; return once the port is bound")
    p.add_argument("--url-file", help="write the base URL to this file once bound")
    p.add_argument("--pid-file", help="write the serving process's id to this file")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    p.add_argument("--control", action="store_true",
                   help=f"answer the control requests under {CONTROL} (tests)")
    args = p.parse_args(argv)
    try:
        server = RangeServer(args.root, args.host, args.port, verbose=args.verbose,
                             control=args.control)
    except OSError as exc:
        print(f"rangeserver: cannot serve {args.root} on port {args.port}: {exc}", file=sys.stderr)
        return 2
    if args.url_file:
        # Written whole, then renamed: a reader never sees half a URL.
        part = Path(args.url_file).with_name(Path(args.url_file).name + ".part")
        part.write_text(server.url + "\n")
        os.replace(part, args.url_file)
    if args.detach:
        # The socket is bound before the fork, so a client that connects right after this
        # command returns waits in the listen queue instead of being refused.
        pid = os.fork()
        if pid:
            if args.pid_file:
                Path(args.pid_file).write_text(f"{pid}\n")
            print(f"serving {server.root} at {server.url} (process {pid}; stop it with kill {pid})")
            sys.stdout.flush()
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2) if not args.verbose else (0, 1):
            os.dup2(null, fd)
    else:
        if args.pid_file:
            Path(args.pid_file).write_text(f"{os.getpid()}\n")
        print(f"serving {server.root} at {server.url} (Ctrl-C to stop)", flush=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()
        requests, sent = server.stats.snapshot()
        if not args.detach:
            print(f"served {requests} request(s), {sent:,} body bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
