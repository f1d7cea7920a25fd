"""The chat graph for Agent Chat UI: base64 image blocks become files; follow-ups; approval."""

from __future__ import annotations

import base64
import json

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from tests.server.helpers import DispatchPlanner, GatedEdit, geotiff_bytes, tool_call
from zoomearth.server.chat_graph import build_chat_graph
from zoomearth.tools.export import ExportRegion
from zoomearth.tools.registry import ToolRegistry

PLANS = {
    "edit": [tool_call("gated_edit"), "<answer>edit done</answer>"],
    "again": ['<think>{"bbox_2d": [0, 0, 100, 100], "view": 1, "label": "pier"}</think>',
              "<answer>again</answer>"],
    "default": ['<think>{"bbox_2d": [0, 0, 100, 100], "label": "harbour"}</think>',
                tool_call("export_region"), "<answer>three ships</answer>"],
}


def test_agent_chat_ui_messages_with_base64_images(settings, tmp_path):
    registry = ToolRegistry(builtins={"export_region": ExportRegion, "gated_edit": GatedEdit},
                            entry_point_group=None)
    graph = build_chat_graph(settings, DispatchPlanner(PLANS), registry,
                             checkpointer=InMemorySaver())
    raw = geotiff_bytes(tmp_path, 800, 600)
    cfg = {"configurable": {"thread_id": "chat-1"}}
    first = {"type": "human", "content": [
        {"type": "text", "text": "How many ships?"},
        {"type": "image", "source_type": "base64", "mime_type": "image/tiff",
         "data": base64.b64encode(raw).decode()}]}
    out = graph.invoke({"messages": [first]}, cfg)
    assert out["messages"][-1].content == "three ships"
    scene = out["scene"]["path"]
    assert scene.startswith(str(settings.runs_dir / "chat-1" / "inputs"))
    with open(scene, "rb") as fh:
        assert fh.read() == raw  # stored byte for byte: the georeference is kept
    assert out["scene"]["crs"]
    # the image block was replaced by a reference: the state holds no base64 any more
    assert "stored as" in json.dumps(out["messages"][0].content)
    assert base64.b64encode(raw[:30]).decode()[:20] not in json.dumps(
        graph.get_state(cfg).values, default=str)
    # a follow-up zooms inside view 1: same views; no duplicated transcript entries
    out = graph.invoke({"messages": [{"role": "user", "content": "again please"}]}, cfg)
    assert out["messages"][-1].content == "again"
    assert sorted(out["views"], key=int) == ["0", "1", "2", "3"]
    assert len(out["transcript"]) == 9 and len(out["artifacts"]) == 2
    # approval: an interrupt, then resume
    out = graph.invoke({"messages": [{"role": "user", "content": "edit it"}]}, cfg)
    (intr,) = out["__interrupt__"]
    assert intr.value["tool"] == "gated_edit"
    out = graph.invoke(Command(resume={"approve": True}), cfg)
    assert out["messages"][-1].content == "edit done"
