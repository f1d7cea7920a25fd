"""The LangGraph state machine: observe -> plan -> (zoom | tool nodes)* -> plan ... -> answer.

One factory, :func:`build_graph`, builds and compiles the graph from a planner, the tool registry
and a checkpointer; it only wires the nodes, which are small classes that take the runtime (and
planner, registry) explicitly (:mod:`zoomearth.graphs.nodes`, :mod:`zoomearth.graphs.plan_node`)
and can each be called alone. Nodes:

* ``observe`` -- opens the scene and adds the overview view (or, on a follow-up question in the
  same thread, adds the new question to the transcript);
* ``plan`` -- asks the planner for one turn, parses it, validates the requested actions against
  the views and the registry (regions: :mod:`zoomearth.graphs.regions`), and reserves view ids
  for them;
* ``zoom`` -- records a zoom view (a full-resolution crop at least ``min_crop`` px, rendered on
  demand, never stored);
* one node per registered tool, named after the tool;
* ``answer`` -- finalises the answer (best effort when budgets ran out) and writes the trajectory
  picture into the run directory.

Routing is done by pure functions of state with explicit path maps; several actions of one turn fan
out with ``Send`` and meet again at ``plan``. A *step* is one plan -> actions -> observations cycle.

Error policy: model mistakes (unparseable output, unknown tool, invalid arguments, box outside the
image) become ``feedback`` transcript entries the planner sees next turn. A tool that fails is
recorded with its cause and the run continues to a best-effort answer; with ``strict`` (tests,
``--strict``) the failure is re-raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

# The message templates and limits moved to the node modules and stay importable from here.
from zoomearth.graphs.nodes import (
    BEST_EFFORT_TEMPLATE,  # noqa: F401
    DENIED_TEMPLATE,  # noqa: F401
    AnswerNode,
    ObserveNode,
    ToolActionNode,
    ZoomNode,
)
from zoomearth.graphs.plan_node import (
    FINAL_FEEDBACK,  # noqa: F401
    MAX_STORED_TEXT,  # noqa: F401
    NO_ACTION_FEEDBACK,  # noqa: F401
    NO_TOOLS_TEMPLATE,  # noqa: F401
    UNKNOWN_TOOL_TEMPLATE,  # noqa: F401
    ZOOM_BUDGET_TEMPLATE,  # noqa: F401
    PlanNode,
    make_tool_planner,
)
from zoomearth.graphs.regions import (
    BOX_PROBLEM_TEMPLATE,  # noqa: F401
    UNKNOWN_VIEW_TEMPLATE,  # noqa: F401
)
from zoomearth.graphs.runtime import GraphRuntime
from zoomearth.graphs.state import AgentState

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.graph.state import CompiledStateGraph

    from zoomearth.agent.base import Planner

__all__ = ["CORE_NODES", "build_graph", "make_tool_planner", "route_after_plan"]

CORE_NODES = ("observe", "plan", "zoom", "answer")

#: Unused: a failed tool's text is :data:`zoomearth.graphs.tool_node.TOOL_FAILED_TEMPLATE`.
TOOL_FAILED_TEMPLATE = "Tool {tool} failed: {cause}"


def build_graph(
    planner: Planner,
    registry: Any,
    runtime: GraphRuntime,
    *,
    checkpointer: BaseCheckpointSaver | None = None,
    tool_planner: Planner | None = None,
) -> CompiledStateGraph:
    """Build and compile the agent graph.

    Args:
        planner: Any planner backend (:class:`zoomearth.agent.base.Planner`). With
            ``planner.profile == "zoomearth"`` the plan node runs the reference's two stages
            (:mod:`zoomearth.graphs.zoomearth_stages`); otherwise the general multi-step loop.
        registry: The tool registry (:class:`zoomearth.tools.registry.ToolRegistry`); one node is
            added per tool it lists.
        runtime: Shared per-process resources (scenes, view cache, settings, pool).
        checkpointer: Checkpoint saver (SQLite by default in :mod:`zoomearth.graphs.persistence`).
        tool_planner: ``zoomearth`` profile only: the planner that reads the question into tool
            calls run on ZoomEarth's region (default: :func:`make_tool_planner` from the setting
            ``zoomearth_tool_planner``). Any planner works,
            e.g. an ``openai`` planner with other settings; only its tool calls are used.

    Returns:
        The compiled graph. Invoke with ``{"scene": ..., "question": ...}`` and a config holding
        ``configurable.thread_id``.
    """
    tools = {entry.name: entry for entry in registry.list_tools()}
    clash = sorted(set(tools) & set(CORE_NODES))
    if clash:
        raise ValueError(f"Tool names {clash} clash with core graph nodes {CORE_NODES}.")

    graph = StateGraph(AgentState)
    graph.add_node("observe", ObserveNode(planner, runtime))
    graph.add_node("plan", PlanNode(planner, registry, runtime, tools, tool_planner))
    graph.add_node("zoom", ZoomNode(runtime))  # type: ignore[call-overload]
    for name, entry in tools.items():
        graph.add_node(name, ToolActionNode(entry, registry, runtime))  # type: ignore[call-overload]
    graph.add_node("answer", AnswerNode(runtime))

    graph.add_edge(START, "observe")
    graph.add_edge("observe", "plan")
    path_map = ["zoom", *tools, "answer", "plan"]
    graph.add_conditional_edges("plan", route_after_plan, path_map)
    graph.add_edge("zoom", "plan")
    for name in tools:
        graph.add_edge(name, "plan")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer)


def route_after_plan(state: AgentState) -> Sequence[Send] | str:
    """Pure routing after ``plan``: fan out actions, answer, or plan again after feedback."""
    pending = state.get("pending") or []
    if pending:
        sends = []
        for p in pending:
            if p["kind"] == "zoom":
                sends.append(Send("zoom", {**p, "scene": state["scene"]}))
            else:
                # Tools may read earlier views and artifacts (references only, never pixels).
                sends.append(
                    Send(
                        p["tool"],
                        {
                            **p,
                            "scene": state["scene"],
                            "views": state.get("views", {}),
                            "artifacts": state.get("artifacts", []),
                        },
                    )
                )
        return sends
    if state.get("answer") is not None:
        return "answer"
    if int(state.get("step", 0)) > int(state.get("max_steps", 0)):
        return "answer"  # final turn gave nothing usable: best effort
    return "plan"
