"""``zoomearth serve``: run the OpenAI-compatible server with uvicorn.

Wired into the CLI by ``add_serve_command(sub)`` in :func:`zoomearth.cli.build_parser`. Importing
this module imports neither FastAPI nor uvicorn (other commands stay fast).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from zoomearth.cli_common import command

__all__ = [
    "JsonLinesStderr",
    "JsonLogFormatter",
    "add_serve_command",
    "app_factory",
    "configure_logging",
    "main",
    "serve",
]

SETTINGS_ENV = "ZOOMEARTH_SERVE_SETTINGS_JSON"  # effective settings handed to worker processes
LOG_ENV = "ZOOMEARTH_SERVE_LOG"  # "<level>,<format>" for worker processes
_LOG_FIELDS = ("request_id", "thread_id", "method", "path", "status", "ms", "client", "planner",
               "checkpointer", "host", "port")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the request fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Format a record as a JSON line."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _LOG_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


#: Loggers of the server process that write through our handler (one format on stderr).
_SERVER_LOGGERS = ("zoomearth", "uvicorn", "py.warnings")


class JsonLinesStderr(io.TextIOBase):
    """``sys.stderr`` under JSON logging: every line written to it becomes one JSON log record.

    Catches what does not go through :mod:`logging`: a library's ``print(..., file=sys.stderr)``,
    a traceback printed for a dying thread, a carriage-return progress line. Each non-empty line
    becomes ``{"ts", "level": "info", "logger": "stderr", "msg": line}`` on the real stderr (which
    the log handler writes to directly). Writes below Python (C libraries writing to file
    descriptor 2) are not seen.

    Args:
        raw: The real stderr.
    """

    def __init__(self, raw: TextIO) -> None:
        super().__init__()
        self.raw = raw
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        """Always."""
        return True

    def isatty(self) -> bool:
        """False: nothing should draw terminal graphics into a log."""
        return False

    def fileno(self) -> int:
        """The real stderr's descriptor (for child processes and faulthandler)."""
        return self.raw.fileno()

    def write(self, text: str) -> int:
        """Buffer ``text`` and emit its complete lines as JSON records."""
        with self._lock:
            *lines, self._partial = (self._partial + text.replace("\r", "\n")).split("\n")
            for line in lines:
                if line.strip():
                    record = logging.LogRecord("stderr", logging.INFO, "", 0, line, None, None)
                    self.raw.write(_JSON_FORMATTER.format(record) + "\n")
            self.raw.flush()
        return len(text)

    def flush(self) -> None:
        """Flush the real stderr (a partial line waits for its end)."""
        self.raw.flush()


_JSON_FORMATTER = JsonLogFormatter()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Send the server process's logs to stderr in one format (JSON lines by default).

    ``zoomearth``, uvicorn's own lines (start-up, shutdown, errors) and Python warnings all go
    through the same handler; with ``fmt="json"``, whatever else is written to ``sys.stderr``
    becomes a JSON record too (:class:`JsonLinesStderr`), so every line on stderr is one JSON
    object. Progress bars are switched off (``TQDM_DISABLE``, inherited by child processes): a
    bar redrawn with carriage returns is not a log line. uvicorn's access log stays off: our
    middleware logs every request with its id.
    """
    raw = sys.stderr.raw if isinstance(sys.stderr, JsonLinesStderr) else sys.stderr
    handler = logging.StreamHandler(raw)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in _SERVER_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("zoomearth").setLevel(level.upper())
    logging.getLogger("uvicorn").setLevel(level.upper())
    logging.captureWarnings(True)
    logging.getLogger("uvicorn.access").disabled = True
    if fmt == "json" or not raw.isatty():
        os.environ["TQDM_DISABLE"] = "1"
    if fmt == "json":
        sys.stderr = JsonLinesStderr(raw)
    elif isinstance(sys.stderr, JsonLinesStderr):
        sys.stderr = raw


def add_serve_command(sub: Any) -> None:
    """Add the ``serve`` subcommand to the CLI's subparsers."""
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat UIs, SSE streaming)")
    _add_serve_arguments(s)


def _add_serve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--host", help="bind address (setting server_host; default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (setting server_port; default 8000)")
    s.add_argument("--planner", choices=("auto", "transformers", "openai", "rules", "script"))
    s.add_argument("--plan", help="JSON/YAML plan file (script planner)")
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes (share conversations through postgres_url)")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.add_argument("--log-format", default="json", choices=("json", "text"))


def _settings_with_flags(args: argparse.Namespace, settings: Any) -> Any:
    update: dict[str, Any] = {"server_host": args.host, "server_port": args.port,
                              "planner": args.planner}
    if args.plan:
        update["plan_file"] = Path(args.plan)
        update["planner"] = args.planner or "script"
    update = {k: v for k, v in update.items() if v is not None}
    return settings.model_copy(update=update) if update else settings


def app_factory() -> Any:
    """The app of a worker process (``uvicorn --factory``), from the parent's settings."""
    from zoomearth.config import Settings, load_settings
    from zoomearth.server.app import create_app

    level, _, fmt = os.environ.get(LOG_ENV, "info,json").partition(",")
    configure_logging(level or "info", fmt or "json")
    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else load_settings()
    return create_app(settings)


def serve(settings: Any, *, workers: int = 1, log_level: str = "info",
          log_format: str = "json", agent_factory: Any = None) -> None:
    """Run the server until interrupted (SIGINT or SIGTERM: a graceful shutdown).

    On SIGTERM or Ctrl-C, running runs are cancelled and every open request ends at once: a
    stream with an error event (code ``server_shutdown``) and ``[DONE]``, a non-streaming
    request with a 503; then uvicorn closes the connections and the process exits.

    Args:
        settings: Effective settings (host, port, token, limits, planner).
        workers: Worker processes; more than one should use ``postgres_url`` so every worker sees
            every conversation (each worker applies the run limits on its own).
        log_level: Log level of the ``zoomearth`` and uvicorn loggers.
        log_format: ``json`` (one object per line) or ``text``.
        agent_factory: ``(settings, on_event) -> Agent`` for :func:`create_app` (one worker
            only; tests use it to serve a scripted planner).

    Raises:
        ConfigError: A non-loopback bind address without ``api_token``, or ``agent_factory``
            with several workers.
        MissingExtraError: FastAPI/uvicorn are not installed.
    """
    from zoomearth.errors import MissingExtraError
    from zoomearth.server.security import check_bind_security

    check_bind_security(settings)
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError(exc.name or "uvicorn", "server", "zoomearth serve") from None
    configure_logging(log_level, log_format)
    logging.getLogger("zoomearth.server").info(
        "starting", extra={"host": settings.server_host, "port": settings.server_port})
    # log_config=None: uvicorn keeps the handlers configured above instead of its own.
    # proxy_headers=False: uvicorn would otherwise rewrite the client address and scheme from
    # X-Forwarded-* sent by any loopback client; links use trusted_proxies instead.
    common: dict[str, Any] = {"host": settings.server_host, "port": settings.server_port,
                              "log_level": log_level, "log_config": None, "access_log": False,
                              "proxy_headers": False, "timeout_graceful_shutdown": 5}
    if workers > 1:
        if agent_factory is not None:
            from zoomearth.errors import ConfigError

            raise ConfigError("An agent factory can be given to one worker only; drop --workers.")
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        os.environ[LOG_ENV] = f"{log_level},{log_format}"
        uvicorn.run("zoomearth.server.cli:app_factory", factory=True, workers=workers, **common)
        return
    from zoomearth.server.app import create_app

    uvicorn.run(create_app(settings, agent_factory), **common)


@command("serve")
def cmd_serve(args: argparse.Namespace, settings: Any) -> int:
    """Run the OpenAI-compatible server."""
    return _serve_with(args, settings)


def _serve_with(args: argparse.Namespace, settings: Any, agent_factory: Any = None) -> int:
    settings = _settings_with_flags(args, settings)
    serve(settings, workers=max(1, args.workers), log_level=args.log_level,
          log_format=args.log_format, agent_factory=agent_factory)
    return 0


def main(argv: list[str] | None = None, *, agent_factory: Any = None) -> int:
    """``python -m zoomearth.server [--config F] [--set K=V ...] [serve options]``.

    The same as ``zoomearth serve``, without the rest of the CLI (used by the multi-worker tests
    and handy in containers). ``agent_factory`` is for tests (see :func:`serve`).
    """
    from zoomearth.config import load_settings, parse_set_flags
    from zoomearth.errors import ZoomEarthError

    parser = argparse.ArgumentParser(prog="python -m zoomearth.server")
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(flags=parse_set_flags(args.set), config_file=args.config)
        return _serve_with(args, settings, agent_factory)
    except ZoomEarthError as exc:
        print(f"zoomearth serve: error: {exc}", file=sys.stderr)
        return 2
