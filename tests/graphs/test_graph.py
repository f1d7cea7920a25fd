"""The agent graph: routing, frames, error policy, budgets, approval, persistence, checkpoints."""

from __future__ import annotations

import os
import sqlite3

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.graphs.fakes import FailingTool, GatedTool, ScriptedPlanner, StatsTool
from tests.scene.rasters import write_raster
from zoomearth.api import Agent
from zoomearth.graphs.builder import build_graph
from zoomearth.graphs.runtime import GraphRuntime
from zoomearth.tools.registry import ToolRegistry


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    # 4000 x 2000 px, overview at 512 -> 512 x 256 (7.8125 full-resolution px per view px).
    # Read-only for every test (tools write into run directories), so built once per module.
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    return write_raster(path, 4000, 2000, 3, block=256, overviews=[2, 4, 8])


def registry_with(*tools):
    return ToolRegistry(builtins={t.name: t for t in tools}, entry_point_group=None)


def make_agent(settings, turns, *tools, checkpointer=None, **kw):
    planner = ScriptedPlanner(turns)
    agent = Agent(settings, planner=planner, registry=registry_with(*tools),
                  checkpointer=checkpointer or InMemorySaver(), strict=kw.pop("strict", True), **kw)
    return agent, planner


def test_zoom_then_answer_maps_boxes_to_full_resolution(settings, scene_path):
    agent, planner = make_agent(settings, [
        '<think>zoom {"bbox_2d": [256, 128, 264, 136], "label": "car"}</think>'
        "<answer>a car?</answer>",
        "<think>clear now</think><answer>a red car</answer>",
    ])
    result = agent.ask(scene_path, "what vehicle is in the centre?")
    assert result.status == "answered" and result.answer == "a red car"
    assert result.stage_answers == ["a car?"]  # the stage-1 answer of the zoom turn is kept
    (zoom,) = result.zooms
    # [256,128,264,136] in the 512x256 overview = [2000,1000,2062.5,1062.5] full-res; minimum
    # crop 512 centred at (2031.25, 1031.25) -> [1775.25, 775.25, 2287.25, 1287.25], snapped out.
    assert zoom.box_xyxy == [1775, 775, 2288, 1288]
    assert zoom.map_box is not None
    # the second planner call saw the crop as the latest image
    second = planner.requests[1]
    assert second.transcript[-1].kind == "zoom" and second.transcript[-1].view_id == 1
    assert second.views[1].region.x1 == 1775
    assert result.visual_tokens == 20
    assert result.trajectory and result.trajectory.endswith("trajectory.png")


def test_several_zooms_fan_out(settings, scene_path):
    agent, _ = make_agent(settings, [
        '{"bbox_2d": [0, 0, 10, 10], "label": "a"} {"bbox_2d": [500, 240, 510, 250], "label": "b"}',
        "<answer>two places</answer>",
    ])
    result = agent.ask(scene_path, "compare the corners")
    assert [z.label for z in result.zooms] == ["a", "b"]
    assert result.zooms[0].box_xyxy == [0, 0, 512, 512]
    assert result.zooms[1].box_xyxy == [3488, 1488, 4000, 2000]


def test_tool_call_gets_region_of_same_turn_zoom_and_artifact(settings, scene_path):
    agent, planner = make_agent(settings, [
        '{"bbox_2d": [0, 0, 64, 64]}'
        '<tool_call>{"name": "region_stats", "arguments": {}}</tool_call>',
        "<answer>done</answer>",
    ], StatsTool)
    result = agent.ask(scene_path, "stats of the top-left")
    (art,) = result.artifacts
    assert art["region_xyxy"] == [0, 0, 512, 512] and art["id"] == 1
    tool_entry = [e for e in planner.requests[1].transcript if e.kind == "tool_result"][0]
    assert "band means" in tool_entry.text and "artifact:1" in tool_entry.text


def test_model_mistakes_go_back_to_the_model(settings, scene_path):
    agent, planner = make_agent(settings, [
        "complete garbage without any tags",
        '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>',
        '{"bbox_2d": [900, 900, 950, 950]}',  # outside the 512x256 overview -> outside the image
        '{"bbox_2d": [1, 2, 3]}',
        "<answer>ok</answer>",
    ], StatsTool)
    result = agent.ask(scene_path, "q")
    assert result.answer == "ok"
    feedback = [e.text for e in planner.requests[-1].transcript if e.kind == "feedback"]
    assert len(feedback) == 4
    assert "no_such_tool" in feedback[1] and "region_stats" in feedback[1]
    assert "outside" in feedback[2]
    assert "four" in feedback[3]
    codes = {p["code"] for p in result.problems}
    assert {"unknown_tool", "box_outside_image", "bad_box_length"} <= codes


def test_budget_exhaustion_asks_for_best_effort(settings, scene_path):
    turns = ['{"bbox_2d": [0, 0, 10, 10]}'] * 10
    agent, planner = make_agent(settings, turns)
    result = agent.ask(scene_path, "q", max_steps=3)
    assert result.status == "answered" and result.answer_kind == "best_effort"
    assert "budget" in result.answer
    assert planner.requests[-1].final is True
    assert len(planner.requests) == 4  # 3 steps + the final best-effort turn


def test_zoom_budget(settings, scene_path):
    agent, planner = make_agent(
        settings,
        ['{"bbox_2d": [0, 0, 10, 10]}' * 1 + '{"bbox_2d": [20, 20, 30, 30]}', "<answer>x</answer>"],
    )
    result = agent.ask(scene_path, "q", max_zooms=1)
    assert len(result.zooms) == 1
    assert any("zoom budget" in p["message"] for p in result.problems)


def test_tool_failure_recorded_when_not_strict(settings, scene_path):
    agent, _ = make_agent(settings, [
        '<tool_call>{"name": "always_fails", "arguments": {}}</tool_call>',
        "<answer>could not process</answer>",
    ], FailingTool, strict=False)
    result = agent.ask(scene_path, "q")
    assert result.answer == "could not process"
    assert any("boom from a broken tool" in w for w in result.warnings)


def test_tool_failure_raises_when_strict(settings, scene_path):
    agent, _ = make_agent(settings, [
        '<tool_call>{"name": "always_fails", "arguments": {}}</tool_call>',
    ], FailingTool, strict=True)
    with pytest.raises(Exception, match="boom"):
        agent.ask(scene_path, "q")


def test_invalid_tool_arguments_are_feedback(settings, scene_path):
    agent, planner = make_agent(settings, [
        '<tool_call>{"name": "region_stats", "arguments": {"colour": "red"}}</tool_call>',
        "<answer>ok</answer>",
    ], StatsTool)
    agent.ask(scene_path, "q")
    result_entry = [e for e in planner.requests[1].transcript if e.kind == "tool_result"][0]
    assert "colour" in result_entry.text and "note" in result_entry.text


@pytest.mark.parametrize("approve", [True, False])
def test_approval_interrupts_and_resumes(settings, scene_path, approve):
    agent, planner = make_agent(settings, [
        '<tool_call>{"name": "gated_edit", "arguments": {}}</tool_call>',
        "<answer>finished</answer>",
    ], GatedTool)
    first = agent.ask(scene_path, "edit it", thread="t-approve")
    assert first.status == "awaiting_approval"
    assert first.pending_approval[0]["tool"] == "gated_edit"
    final = agent.resume("t-approve", approve=approve)
    # A denied call is a request that did not happen: the run answered, but failed.
    assert final.status == ("answered" if approve else "failed") and final.answer == "finished"
    tool_text = [e.text for e in planner.requests[-1].transcript if e.kind == "tool_result"][0]
    assert ("edited" in tool_text) == approve
    assert ("not approve" in tool_text) == (not approve)


def test_auto_approve(settings, scene_path):
    agent, _ = make_agent(settings, [
        '<tool_call>{"name": "gated_edit", "arguments": {}}</tool_call>', "<answer>ok</answer>",
    ], GatedTool, auto_approve=True)
    assert agent.ask(scene_path, "edit").status == "answered"


def test_follow_up_in_same_thread_keeps_views_and_artifacts(settings, scene_path):
    agent, planner = make_agent(settings, [
        '{"bbox_2d": [0, 0, 64, 64]}',
        "<answer>first</answer>",
        '<tool_call>{"name": "region_stats", "arguments": {}}</tool_call>',
        "<answer>second</answer>",
    ], StatsTool)
    agent.ask(scene_path, "look top-left", thread="t-follow")
    second = agent.ask(None, "now the stats of that crop", thread="t-follow")
    assert second.answer == "second"
    # the tool worked on the crop shown last (view 1) without being told again
    assert second.artifacts[0]["region_xyxy"] == [0, 0, 512, 512]
    kinds = [e.kind for e in planner.requests[-1].transcript]
    assert "question" in kinds and kinds.count("zoom") == 1


def test_thread_cannot_switch_image(settings, scene_path, tmp_path):
    other = write_raster(tmp_path / "other.tif", 100, 100, 3)
    agent, _ = make_agent(settings, ["<answer>a</answer>"])
    agent.ask(scene_path, "q", thread="t-switch")
    from zoomearth.api import ThreadError

    with pytest.raises(ThreadError, match="new thread"):
        agent.ask(other, "q", thread="t-switch")


def test_checkpoint_stays_small_after_12_steps(settings, scene_path, tmp_path):
    from zoomearth.graphs.persistence import open_sqlite_checkpointer

    db = tmp_path / "ck.sqlite"
    turns = [f'<think>step {i}</think>{{"bbox_2d": [{i * 20}, 10, {i * 20 + 30}, 40]}}'
             for i in range(12)] + ["<answer>done</answer>"]
    agent, _ = make_agent(settings, turns, checkpointer=open_sqlite_checkpointer(db))
    result = agent.ask(scene_path, "look everywhere", thread="t-size", max_steps=13, max_zooms=20)
    assert len(result.zooms) == 12
    conn = sqlite3.connect(db)
    (size,) = conn.execute(
        "SELECT length(checkpoint) FROM checkpoints WHERE thread_id = 't-size' "
        "ORDER BY checkpoint_id DESC LIMIT 1"
    ).fetchone()
    assert size < 64 * 1024, size
    blob = b"".join(row[0] for row in conn.execute("SELECT checkpoint FROM checkpoints"))
    assert b"base64" not in blob and b"data:image" not in blob


def test_mermaid_snapshot_builtin_tools(settings):
    from zoomearth.tools.registry import BUILTIN_TOOLS

    runtime = GraphRuntime(settings=settings)
    registry = ToolRegistry(entry_point_group=None)
    graph = build_graph(ScriptedPlanner([]), registry, runtime)
    mermaid = graph.get_graph().draw_mermaid()
    from pathlib import Path

    snapshot = Path(__file__).with_name("graph.mermaid")
    if os.environ.get("ZOOMEARTH_UPDATE_SNAPSHOTS") == "1":  # review the diff, then commit
        snapshot.write_text(mermaid)
    assert mermaid == snapshot.read_text(), (
        "the graph changed; rerun with ZOOMEARTH_UPDATE_SNAPSHOTS=1 and review graph.mermaid"
    )
    for name in BUILTIN_TOOLS:
        assert name in mermaid
    for node in ("observe", "plan", "zoom", "answer"):
        assert node in mermaid


def test_unfinished_thread_refuses_a_new_question(settings, scene_path):
    from zoomearth.api import ThreadError

    agent, _ = make_agent(settings, [
        '<tool_call>{"name": "gated_edit", "arguments": {}}</tool_call>',
        "<answer>finished</answer>",
    ], GatedTool)
    assert agent.ask(scene_path, "edit it", thread="t-pending").status == "awaiting_approval"
    with pytest.raises(ThreadError, match="--resume --approve"):
        agent.ask(None, "another question", thread="t-pending")  # would drop the gated call
    with pytest.raises(ThreadError, match="waiting for approval"):
        agent.resume("t-pending")  # approve or deny must be said explicitly
    assert agent.resume("t-pending", approve=False).answer == "finished"


def test_follow_up_record_and_best_effort_cover_the_current_question(settings, scene_path):
    agent, _ = make_agent(settings, [
        '{"bbox_2d": [0, 0, 10, 10]}<answer>stage one for Q1</answer>',
        "<answer>Q1 done</answer>",
        '{"bbox_2d": [500, 0, 510, 10]}',  # Q2: zooms, then the budget runs out
        "still looking",
    ])
    first = agent.ask(scene_path, "Q1", thread="t-q")
    assert first.stage_answers == ["stage one for Q1"] and len(first.zooms) == 1
    second = agent.ask(None, "Q2", thread="t-q", max_steps=1)
    assert second.answer_kind == "best_effort"
    assert "stage one for Q1" not in second.answer
    assert second.stage_answers == [] and [z.view_id for z in second.zooms] == [2]
    assert all(s["question"] == 1 for s in second.steps)


def test_thread_keeps_its_run_directory(settings, scene_path, tmp_path):
    from zoomearth.api import ThreadError

    agent, _ = make_agent(settings, ["<answer>a</answer>", "<answer>b</answer>"])
    agent.ask(scene_path, "q", thread="t-dir", run_dir=tmp_path / "one")
    with pytest.raises(ThreadError, match="one run directory"):
        agent.ask(None, "q2", thread="t-dir", run_dir=tmp_path / "two")
    assert agent.ask(None, "q2", thread="t-dir").run_dir == str(tmp_path / "one")


def test_bad_tool_view_is_feedback(settings, scene_path):
    agent, planner = make_agent(settings, [
        '<tool_call>{"name": "region_stats", "arguments": {"bbox_2d": [0, 0, 9, 9], "view": 1.5}}'
        "</tool_call>",
        "<answer>ok</answer>",
    ], StatsTool)
    result = agent.ask(scene_path, "q")
    assert result.artifacts == []
    assert any(p["code"] == "bad_view" for p in result.problems)
