"""The OpenAI-compatible HTTP server (``zoomearth serve``); see ``docs/server.md``.

Importing this package imports neither FastAPI nor uvicorn: :func:`create_app` (in
:mod:`zoomearth.server.app`) and :func:`serve` (in :mod:`zoomearth.server.cli`) import them when
called. They need the ``server`` extra: ``pip install 'zoomearth[server]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from zoomearth.config import Settings

__all__ = ["create_app"]


def create_app(settings: Settings, agent_factory: Any = None) -> FastAPI:
    """Build the server application (see :func:`zoomearth.server.app.create_app`)."""
    from zoomearth.server.app import create_app as _create_app

    return _create_app(settings, agent_factory)
