"""Time stacks through ``zoomearth ask`` / ``Agent.ask``: dates in the state, the planner's date,
the record and the trajectory naming each view's date, tools receiving the stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from tests.scene.test_stack import GRID, smooth, to_crs, write_geo
from zoomearth.agent.base import Planner, PlanReply, PlanRequest
from zoomearth.agent.conversation import build_conversation
from zoomearth.tools.base import Tool, ToolResult

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """SCENE dated 2021-06-01 and another date, 2015, in EPSG:4326 (another grid and CRS)."""
    tmp = tmp_path_factory.mktemp("stack")
    scene = write_geo(tmp / "site_2021-06-01.tif", smooth(600, 400), GRID)
    brighter = smooth(600, 400, seed=40.0)  # a visibly different date on the same ground
    src = write_geo(tmp / "utm_2015.tif", brighter, GRID)
    other = to_crs(src, tmp / "site_2015.tif", "EPSG:4326")
    src.unlink()
    return scene, other


def ask(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", "ask", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def test_cli_ask_with_stack_names_the_dates(pair, tmp_path):
    scene, other = pair
    env = {"ZOOMEARTH_DATA_DIR": str(tmp_path / "data")}
    proc = ask(str(scene), "what is in the top-left in 2015?", "--stack", str(other),
               "--planner", "rules", "--json", env=env)
    record = json.loads(proc.stdout)
    assert record["status"] == "answered"
    # The reference grid is SCENE's (the newer date, index 1 once sorted by date).
    assert [d["label"] for d in record["scene"]["stack"]] == ["2015", "2021-06-01"]
    assert record["scene"]["stack_reference"] == 1
    assert record["scene"]["path"] == str(scene.resolve())
    assert (record["scene"]["width"], record["scene"]["height"]) == (600, 400)
    # The question names 2015: the planner looked at 2015, and the record says so.
    assert record["dates"] == {
        "available": ["2015", "2021-06-01"],
        "viewing": "2015",
        "named": ["2015"],
        "unknown": [],
        "reference": "2021-06-01",
    }
    (zoom,) = record["zooms"]
    assert zoom["date"] == "2015"
    assert zoom["box_xyxy"] == [0, 0, 512, 400]  # reference-grid pixels (min crop 512)
    assert "date: 2015 (time stack)" in proc.stderr
    assert "of 2015" in proc.stderr
    assert Path(record["trajectory"]).exists()


def test_cli_ask_on_the_naip_folder(shared_data, tmp_path):
    env = {"ZOOMEARTH_DATA_DIR": str(tmp_path / "data")}
    folder = shared_data / "naip"
    proc = ask(str(folder), "what is in the bottom-right?", "--planner", "rules", "--json",
               env=env)
    record = json.loads(proc.stdout)
    labels = ["2009-08-18", "2014-07-20", "2017-08-27", "2020-08-31"]
    assert [d["label"] for d in record["scene"]["stack"]] == labels
    # A folder's reference grid is its newest date; with no date named the planner sees it.
    assert record["scene"]["path"].endswith("m_4709963_se_14_1_20200831.tif")
    assert record["dates"]["viewing"] == "2020-08-31"
    assert record["dates"]["named"] == []
    assert record["zooms"][0]["date"] == "2020-08-31"

    proc = ask(str(folder), "what changed in the top-left between 2009 and 2017?",
               "--planner", "rules", "--json", env=env)
    record = json.loads(proc.stdout)
    assert record["dates"]["named"] == ["2009-08-18", "2017-08-27"]
    assert record["dates"]["viewing"] == "2017-08-27"  # the later of the two


# ---------------------------------------------------------------------------------------------
# Python API: what the planner receives
# ---------------------------------------------------------------------------------------------
class RecordingPlanner(Planner):
    """Answers at once; keeps each request's dates, overview pixels and first user text."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def plan(self, request: PlanRequest) -> PlanReply:
        conv = build_conversation(request)
        user_text = " ".join(
            p.text for m in conv.messages if m.role == "user" for p in m.parts
            if hasattr(p, "text")
        )
        self.seen.append(
            {"dates": request.dates, "overview": request.render(0), "text": user_text}
        )
        seen = {vid: (v.width, v.height) for vid, v in request.views.items()}
        return PlanReply(text="<answer>seen</answer>", seen_sizes=seen, backend="recording")


@pytest.fixture()
def api_settings(tmp_path):
    from zoomearth.config import load_settings

    return load_settings(
        flags={"data_dir": tmp_path / "data", "cache_dir": tmp_path / "cache"}, environ={}
    )


def test_api_ask_planner_sees_the_named_date(pair, api_settings):
    from zoomearth.api import Agent
    from zoomearth.scene.stack import SceneStack

    scene, other = pair
    planner = RecordingPlanner()
    agent = Agent(api_settings, planner=planner)
    try:
        result = agent.ask(scene, "how does it look in 2015?", stack=[other])
        assert result.answer == "seen"
        (turn,) = planner.seen
        assert turn["dates"]["viewing"] == "2015"
        assert "Dates available: 2015, 2021-06-01; you are looking at 2015." in turn["text"]
        # The overview the planner saw is 2015's pixels on SCENE's grid, not SCENE's own.
        stack = SceneStack.from_sources(scene, [other], settings=api_settings)
        expected = stack.render(0, None, api_settings.overview_side).rgb
        own = stack.render(1, None, api_settings.overview_side).rgb
        assert turn["overview"].shape == expected.shape == own.shape
        assert np.abs(turn["overview"].astype(int) - expected.astype(int)).mean() < 1.0
        assert np.abs(turn["overview"].astype(int) - own.astype(int)).mean() > 10.0

        # A follow-up in the same thread names no date: its planner sees the newest.
        follow = agent.ask(None, "and now?", thread=result.thread_id)
        assert follow.dates is not None and follow.dates["viewing"] == "2021-06-01"
        assert "you are looking at 2021-06-01" in planner.seen[-1]["text"]
    finally:
        agent.close()


def test_api_without_stack_has_no_dates(pair, api_settings):
    from zoomearth.api import Agent

    planner = RecordingPlanner()
    agent = Agent(api_settings, planner=planner)
    try:
        result = agent.ask(pair[0], "what is this?")
        assert result.dates is None
        assert planner.seen[0]["dates"] is None
        assert "Dates available" not in planner.seen[0]["text"]
        assert "stack" not in agent.graph.get_state(
            {"configurable": {"thread_id": result.thread_id}}
        ).values["scene"]
    finally:
        agent.close()


# ---------------------------------------------------------------------------------------------
# tools receive the stack
# ---------------------------------------------------------------------------------------------
class StackProbe(Tool):
    """Reports the stack it was given and reads the other date in its region."""

    name = "stack_probe"
    description = "Test tool: says which dates its context has."

    class Args(BaseModel):
        pass

    def run(self, ctx, args):  # noqa: ANN001, ANN201
        if ctx.stack is None:
            return ToolResult(text="no stack")
        region = ctx.region or ctx.scene.full_box
        data = ctx.stack.read(0, region, out_shape=(10, 10))
        return ToolResult(
            text=f"dates {','.join(ctx.stack.labels)}; reference {ctx.stack.reference_index}; "
            f"scene is reference {ctx.stack.reference is ctx.scene}; read {data.shape}"
        )


class ScriptedPlanner(Planner):
    name = "scripted"

    def plan(self, request: PlanRequest) -> PlanReply:
        turns = sum(1 for e in request.transcript if e.kind == "planner")
        call = {"name": "stack_probe", "arguments": {"bbox_2d": [0, 0, 100, 100]}}
        text = f"<tool_call>{json.dumps(call)}</tool_call>" if turns == 0 else "<answer>ok</answer>"
        seen = {vid: (v.width, v.height) for vid, v in request.views.items()}
        return PlanReply(text=text, seen_sizes=seen, backend="scripted")


def test_tool_nodes_get_the_stack(pair, api_settings):
    from zoomearth.api import Agent
    from zoomearth.tools.registry import ToolRegistry

    registry = ToolRegistry(builtins={"stack_probe": StackProbe}, entry_point_group=None)
    agent = Agent(api_settings, planner=ScriptedPlanner(), registry=registry, auto_approve=True)
    try:
        result = agent.ask(pair[0], "probe", stack=[pair[1]])
        (call,) = result.tool_calls
        assert call["status"] == "ok", call
        assert call["result"] == (
            "dates 2015,2021-06-01; reference 1; scene is reference True; read (3, 10, 10)"
        )
    finally:
        agent.close()


def test_cli_tool_with_a_stack(pair, tmp_path):
    scene, other = pair
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", "tool", "export_region", str(scene),
         "--stack", str(other), "--box", "0,0,64,64", "--out", str(out), "--json"],
        capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL,
        env={**os.environ, "ZOOMEARTH_DATA_DIR": str(tmp_path / "data")},
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["run_dir"] == str(out.resolve())
    assert record["artifacts"]
    # A missing --stack date is a clear one-line error.
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", "tool", "export_region", str(scene),
         "--stack", str(tmp_path / "missing_2010.tif"), "--out", str(tmp_path / "r2")],
        capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL,
        env={**os.environ, "ZOOMEARTH_DATA_DIR": str(tmp_path / "data")},
    )
    assert proc.returncode != 0
    assert "missing_2010.tif" in proc.stderr and "--stack" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_info_lists_a_folders_dates(pair, tmp_path):
    folder = tmp_path / "dates"
    folder.mkdir()
    for path in pair:
        (folder / path.name).write_bytes(path.read_bytes())
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", "info", str(folder)],
        capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL,
        env={**os.environ, "ZOOMEARTH_DATA_DIR": str(tmp_path / "data")},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "time stack: 2 dates, reference grid 2021-06-01"
    assert lines[1].startswith("  2015 ") and "EPSG:4326" in lines[1]
    assert lines[2].startswith("* 2021-06-01 ") and "EPSG:32633" in lines[2]


def test_trajectory_names_the_dates(pair, api_settings):
    from zoomearth.graphs.runtime import GraphRuntime
    from zoomearth.graphs.trajectory import render_trajectory
    from zoomearth.scene.stack import SceneStack

    runtime = GraphRuntime(settings=api_settings)
    stack = SceneStack.from_sources(pair[0], [pair[1]], settings=api_settings)
    ref = runtime.attach_stack(runtime.scene_ref(pair[0]), stack)
    views = {
        "0": {"view_id": 0, "kind": "overview", "region_xyxy": [0, 0, 600, 400], "width": 512,
              "height": 341, "date": "2021-06-01"},
        "1": {"view_id": 1, "kind": "zoom", "region_xyxy": [0, 0, 300, 200], "width": 300,
              "height": 200, "date": "2015"},
    }
    plain = {**views, "1": {**views["1"]}, "0": {**views["0"]}}
    for rec in plain.values():
        del rec["date"]
    with_dates = render_trajectory({"scene": ref, "views": views}, runtime)
    without = render_trajectory({"scene": ref, "views": plain}, runtime)
    assert with_dates.shape == without.shape
    # The zoom's tag and the overview's caption add text: more pixels differ than the tag "1".
    differ = np.any(with_dates != without, axis=-1)
    assert differ[:20, :].sum() > 40  # "1 2015" next to the zoom box
    assert differ[-20:, :].sum() > 40  # "overview: 2021-06-01" at the bottom
    # A view of another date renders that date (cached apart from the reference's).
    other = runtime.render(ref, {**views["1"]})
    same = runtime.render(ref, {**views["1"], "date": "2021-06-01"})
    assert other.shape == same.shape == (200, 300, 3)
    assert np.abs(other.astype(int) - same.astype(int)).mean() > 10.0


def test_api_ask_on_a_saved_stac_search(pair, api_settings, tmp_path):
    """A saved search (ItemCollection) of several items is a stack, dated by its items."""
    from zoomearth.api import Agent

    def item(ident: str, when: str, href: Path) -> dict[str, Any]:
        return {
            "type": "Feature", "stac_version": "1.0.0", "id": ident,
            "geometry": None, "properties": {"datetime": when}, "links": [],
            "assets": {"visual": {"href": str(href), "type": "image/tiff", "roles": ["visual"]}},
        }

    search = tmp_path / "search.json"
    # Item dates win over the file names (both files carry other years in their names).
    search.write_text(json.dumps({"type": "FeatureCollection", "features": [
        item("newer", "2022-03-04T10:00:00Z", pair[0]),
        item("older", "2016-05-06T10:00:00Z", pair[1]),
    ]}))
    planner = RecordingPlanner()
    agent = Agent(api_settings, planner=planner)
    try:
        result = agent.ask(search, "what is there in 2016?")
        scene = result.scene
        assert [d["label"] for d in scene["stack"]] == ["2016-05-06", "2022-03-04"]
        assert scene["stack_reference"] == 1  # the newest item's grid
        assert scene["path"] == str(pair[0].resolve())
        assert planner.seen[0]["dates"]["viewing"] == "2016-05-06"
    finally:
        agent.close()
