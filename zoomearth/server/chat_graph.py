"""A chat-shaped graph for the LangGraph server (Agent Chat UI, LangGraph Studio's chat view).

Agent Chat UI talks to a LangGraph graph whose state has ``messages`` and sends images as base64
blocks inside them. :func:`make_chat_graph` wraps the agent graph for that:

``ingest`` -> ``agent`` -> ``reply``

* ``ingest`` runs the same ingest step as the OpenAI-compatible server
  (:mod:`zoomearth.server.ingest`): the latest image becomes a file in the thread's run directory
  and the message's image block is replaced by a reference to it (a text block naming the file),
  so from that step on the state holds no pixels; the latest user text becomes the question;
* ``agent`` runs the agent graph on the scene and question (zooms, tools, approval interrupts);
  follow-up messages in the same thread continue with the same views and artifacts;
* ``reply`` appends the answer (or the approval question) as an AI message.

Note: the LangGraph server checkpoints a run's input before any node runs, so that first
checkpoint still holds the image as sent; for large rasters prefer ``file://`` paths (under
``allowed_roots``) or the OpenAI-compatible server, whose ingest happens before the graph.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Annotated, Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from zoomearth.graphs.state import AgentState

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.graph.state import CompiledStateGraph

    from zoomearth.config import Settings

__all__ = ["ChatState", "build_chat_graph", "make_chat_graph"]

NO_IMAGE_MESSAGE = (
    "Attach an image to your first message (a pasted image, or an image URL such as "
    "file:///data/scene.tif under allowed_roots)."
)
OTHER_IMAGE_MESSAGE = (
    "This thread is about {old}; start a new thread to ask about another image."
)
IMAGE_REF_TEMPLATE = "[image stored as {path}]"

#: Keys of the agent state that accumulate (their reducer adds); the node returns only new items.
_ADDITIVE = [k for k, v in AgentState.__annotations__.items()
             if "operator.add" in str(v) or "Annotated[int" in str(v)]


class ChatState(AgentState, total=False):  # type: ignore[call-arg]
    """The agent state plus the chat messages (``add_messages`` replaces by id)."""

    messages: Annotated[list[AnyMessage], add_messages]


def _as_dict(message: Any) -> dict[str, Any]:
    role = {"human": "user", "ai": "assistant"}.get(getattr(message, "type", ""), "other")
    return {"role": role, "content": getattr(message, "content", "")}


def build_chat_graph(
    settings: Settings,
    planner: Any,
    registry: Any,
    *,
    checkpointer: BaseCheckpointSaver | None = None,
    pool: Any = None,
) -> CompiledStateGraph:
    """Build the chat graph (see the module docstring).

    Args:
        settings: Effective settings (runs_dir, upload limits, allowed_roots).
        planner: The planner backend.
        registry: The tool registry.
        checkpointer: None under the LangGraph server (it supplies one).
        pool: Model pool (the process default when None).
    """
    from zoomearth.graphs.builder import build_graph
    from zoomearth.graphs.runtime import GraphRuntime
    from zoomearth.server.errors import ApiError
    from zoomearth.server.ingest import FileStore, Ingestor, parse_conversation

    runtime = GraphRuntime(settings=settings, pool=pool)
    agent = build_graph(planner, registry, runtime)
    store = FileStore(settings.data_dir / "server" / "files")

    def ingest(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
        thread = (config or {}).get("configurable", {}).get("thread_id", "default")
        messages = state.get("messages", [])
        conv = parse_conversation([_as_dict(m) for m in messages])
        update: dict[str, Any] = {"question": conv.last_user_text}
        latest = next((m for m in reversed(messages) if getattr(m, "type", "") == "human"), None)
        image_urls = parse_conversation([_as_dict(latest)]).images if latest is not None else []
        if image_urls:
            assert settings.runs_dir is not None
            try:
                ref = Ingestor(settings, store).ingest(image_urls[-1],
                                                       settings.runs_dir / thread / "inputs")
            except ApiError as exc:
                raise ValueError(exc.message) from None
            old = state.get("scene")
            if old and old.get("path") != ref.source:
                raise ValueError(OTHER_IMAGE_MESSAGE.format(old=old.get("path")))
            if not old:
                update["scene"] = {"path": ref.source}
            # Replace the image block by a reference: later checkpoints hold no pixels.
            assert latest is not None
            blocks: list[str | dict[Any, Any]] = [b for b in latest.content if isinstance(b, dict)
                      and b.get("type") == "text"] if isinstance(latest.content, list) else \
                [{"type": "text", "text": str(latest.content)}]
            blocks.append({"type": "text", "text": IMAGE_REF_TEMPLATE.format(path=ref.source)})
            update["messages"] = [HumanMessage(content=blocks, id=latest.id)]
        elif not state.get("scene"):
            raise ValueError(NO_IMAGE_MESSAGE)
        return update

    def run_agent(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
        inner = {k: v for k, v in state.items() if k != "messages"}
        final = agent.invoke(inner, config)
        out: dict[str, Any] = {}
        for key, value in final.items():
            if key == "__interrupt__":
                continue
            if key in _ADDITIVE:
                before: Any = state.get(key)
                if isinstance(value, list):
                    new = value[len(before or []):]
                    if new:
                        out[key] = new
                elif isinstance(value, int):
                    out[key] = value - int(before or 0)
            else:
                out[key] = value
        return out

    def reply(state: ChatState) -> dict[str, Any]:
        return {"messages": [AIMessage(content=str(state.get("answer") or ""))]}

    graph = StateGraph(ChatState)
    graph.add_node("ingest", ingest)
    graph.add_node("agent", run_agent)
    graph.add_node("reply", reply)
    graph.add_edge(START, "ingest")
    graph.add_edge("ingest", "agent")
    graph.add_edge("agent", "reply")
    graph.add_edge("reply", END)
    return graph.compile(checkpointer=checkpointer)


def make_chat_graph(config: dict[str, Any] | None = None) -> Any:
    """Graph factory for ``langgraph.json``: the chat graph from the effective settings."""
    from zoomearth.agent.backends import make_planner
    from zoomearth.config import load_settings

    # The package's copy of this module, also when the LangGraph server loaded this file by path
    # (type hints of ChatState resolve in the module registered under its package name).
    from zoomearth.server.chat_graph import build_chat_graph as build
    from zoomearth.tools.registry import get_registry

    settings = load_settings()
    return build(settings, make_planner(settings), get_registry())


_ = operator  # the reducers of AgentState are operator.add (see _ADDITIVE)
