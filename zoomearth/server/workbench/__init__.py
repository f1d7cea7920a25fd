"""The analyst's workbench: a web page (map + chat) served by ``zoomearth serve`` at ``/``.

The page itself (HTML, ES modules, CSS and the vendored Leaflet) is package data in
``static/`` (see ``docs/workbench.md``); :mod:`zoomearth.server.workbench.routes` serves it and
the data routes the page uses (scenes, layers, tiles, thread history). Nothing here is imported
by ``import zoomearth``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STATIC_DIR"]

#: The page's files (package data).
STATIC_DIR = Path(__file__).resolve().parent / "static"
