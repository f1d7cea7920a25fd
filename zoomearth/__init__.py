"""ZoomEarth agent: active perception on ultra-high-resolution remote-sensing imagery.

Importing the package is cheap (no torch, no model, no network). The facade is
:class:`zoomearth.Agent` (loaded on first access)::

    from zoomearth import Agent
    result = Agent(planner="rules").ask("scene.tif", "segment the buildings in the top-right")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Agent", "AskResult", "__version__"]


def __getattr__(name: str) -> Any:
    if name in {"Agent", "AskResult"}:
        from zoomearth import api

        return getattr(api, name)
    raise AttributeError(f"module 'zoomearth' has no attribute {name!r}")
