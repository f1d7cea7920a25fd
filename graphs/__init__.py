"""The LangGraph state machine: state schema, nodes, routing, graph factory, persistence."""

from __future__ import annotations

from typing import Any

__all__ = ["build_graph", "make_graph"]


def __getattr__(name: str) -> Any:
    if name == "build_graph":
        from zoomearth.graphs.builder import build_graph

        return build_graph
    if name == "make_graph":
        from zoomearth.graphs.studio import make_graph

        return make_graph
    raise AttributeError(name)
