"""Graph factory for ``langgraph.json`` (``langgraph dev``, LangGraph Studio, Agent Chat UI).

The LangGraph server calls :func:`make_graph` with its run config; the graph is built from the
effective settings (planner backend, tools from the registry). The server provides its own
checkpointer, so none is attached here.

Input: ``{"scene": {"path": "/abs/path.tif"}, "question": "..."}`` -- a scene given only by path is
completed (size, CRS) on entry. Chat front ends that send base64 images in messages go through the
HTTP server's ingest step instead (``zoomearth serve``), which stores images as files first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_graph"]


def make_graph(config: dict[str, Any] | None = None) -> Any:
    """Build the compiled agent graph from the effective settings (no checkpointer attached)."""
    from zoomearth.agent.backends import make_planner
    from zoomearth.graphs.builder import build_graph
    from zoomearth.graphs.runtime import GraphRuntime
    from zoomearth.tools.registry import get_registry

    from zoomearth.config import load_settings

    settings = load_settings()
    runtime = GraphRuntime(settings=settings)
    return build_graph(make_planner(settings), get_registry(), runtime)
