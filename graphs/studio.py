"""Graph factories for ``langgraph.json`` (``langgraph dev``, LangGraph Studio, Agent Chat UI).

The LangGraph server calls a factory with its run config for every run (and for Studio's graph and
schema views); the graph is built from the effective settings (planner backend, tools from the
registry), read again on each call. The server provides its own checkpointer, so none is attached.

* :func:`make_graph` (graph id ``zoomearth``) -- the agent graph. Input:
  ``{"scene": {"path": "/abs/path.tif"}, "question": "..."}``; a scene given only by path is
  completed (size, CRS) on entry. An approval-gated tool (``edit``) stops the run with an
  ``approval`` interrupt; resume it with ``{"approve": true}`` (or ``"approve"``), anything else
  declines.
* :func:`make_chat_graph` (graph id ``zoomearth_chat``) -- the chat graph
  (:mod:`zoomearth.server.chat_graph`) for front ends that send ``messages`` with base64 images.

Both are *dual-mode*: called without a running event loop (scripts, tests) they return the
compiled graph; called on the LangGraph server's event loop they return a coroutine that builds it
in a worker thread. Building touches the file system (settings file, run and upload directories),
and ``langgraph dev`` rejects blocking calls on its event loop (``BlockingError``, via
``blockbuster``); the server awaits a coroutine a factory returns. See ``docs/studio.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["make_chat_graph", "make_graph"]


def _build_agent_graph() -> Any:
    from zoomearth.agent.backends import make_planner
    from zoomearth.config import load_settings
    from zoomearth.graphs.builder import build_graph
    from zoomearth.graphs.runtime import GraphRuntime
    from zoomearth.tools.registry import get_registry

    settings = load_settings()
    runtime = GraphRuntime(settings=settings)
    return build_graph(make_planner(settings), get_registry(), runtime)


def _build_chat_graph() -> Any:
    from zoomearth.server.chat_graph import make_chat_graph as build

    return build()


def _off_the_loop(build: Callable[[], Any]) -> Any:
    """``build()`` now, or, on a running event loop, a coroutine running it in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return build()
    return asyncio.to_thread(build)


def make_graph(config: dict[str, Any] | None = None) -> Any:
    """The agent graph built from the effective settings (no checkpointer attached).

    Args:
        config: The run config the LangGraph server passes (unused: settings come from
            ``zoomearth.toml`` and ``ZOOMEARTH_*`` variables).

    Returns:
        The compiled graph, or, when called on a running event loop (the LangGraph server), a
        coroutine that builds it in a worker thread.
    """
    return _off_the_loop(_build_agent_graph)


def make_chat_graph(config: dict[str, Any] | None = None) -> Any:
    """The chat graph (``messages`` in, answer as an AI message) from the effective settings.

    Args:
        config: The run config the LangGraph server passes (unused).

    Returns:
        The compiled chat graph, or, on a running event loop, a coroutine that builds it in a
        worker thread (see :func:`make_graph`).
    """
    return _off_the_loop(_build_chat_graph)
