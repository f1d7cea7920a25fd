"""``zoomearth serve``: run the OpenAI-compatible server with uvicorn.

Wired into the CLI by ``add_serve_command(sub)`` in :func:`zoomearth.cli.build_parser`. Importing
this module imports neither FastAPI nor uvicorn (other commands stay fast).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from zoomearth.cli import command

__all__ = [
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


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Send ``zoomearth`` logs to stderr (JSON lines by default); quiet uvicorn's access log."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("zoomearth")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # Our middleware logs every request with its id; uvicorn's access line would repeat it.
    logging.getLogger("uvicorn.access").disabled = True


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
          log_format: str = "json") -> None:
    """Run the server until interrupted.

    Args:
        settings: Effective settings (host, port, token, limits, planner).
        workers: Worker processes; more than one should use ``postgres_url`` so every worker sees
            every conversation (each worker applies the run limits on its own).
        log_level: Log level of the ``zoomearth`` loggers.
        log_format: ``json`` (one object per line) or ``text``.

    Raises:
        ConfigError: A non-loopback bind address without ``api_token``.
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
    common: dict[str, Any] = {"host": settings.server_host, "port": settings.server_port,
                              "log_level": log_level, "access_log": False,
                              "timeout_graceful_shutdown": 5}
    if workers > 1:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        os.environ[LOG_ENV] = f"{log_level},{log_format}"
        uvicorn.run("zoomearth.server.cli:app_factory", factory=True, workers=workers, **common)
        return
    from zoomearth.server.app import create_app

    uvicorn.run(create_app(settings), **common)


@command("serve")
def cmd_serve(args: argparse.Namespace, settings: Any) -> int:
    """Run the OpenAI-compatible server."""
    settings = _settings_with_flags(args, settings)
    serve(settings, workers=max(1, args.workers), log_level=args.log_level,
          log_format=args.log_format)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m zoomearth.server [--config F] [--set K=V ...] [serve options]``.

    The same as ``zoomearth serve``, without the rest of the CLI (used by the multi-worker tests
    and handy in containers).
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
        return cmd_serve(args, settings)
    except ZoomEarthError as exc:
        print(f"zoomearth serve: error: {exc}", file=sys.stderr)
        return 2
