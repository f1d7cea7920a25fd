"""The graph's nodes called alone, with a fake runtime: no graph, no checkpointer, no raster.

Each node of :func:`zoomearth.graphs.builder.build_graph` is a small class that takes the
runtime (and planner, registry) explicitly (:mod:`zoomearth.graphs.nodes`,
:mod:`zoomearth.graphs.plan_node`); the box rules of the plan node are pure functions
(:mod:`zoomearth.graphs.regions`).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.graphs.fakes import ScriptedPlanner
from zoomearth.agent.frames import zoom_region
from zoomearth.agent.parsing import ProblemCode, ZoomRequest
from zoomearth.geometry import PixelBox
from zoomearth.graphs.nodes import AnswerNode, ObserveNode, ZoomNode, current_entries
from zoomearth.graphs.plan_node import PlanNode
from zoomearth.graphs.regions import tool_request_region, zoom_request_region

WIDTH, HEIGHT = 4000, 2000


class FakeScene:
    """The little of a Scene the nodes use: size, full box, output size."""

    width, height = WIDTH, HEIGHT
    full_box = PixelBox(0, 0, WIDTH, HEIGHT)

    @staticmethod
    def output_size(region: PixelBox, max_side: int | None) -> tuple[int, int]:
        scale = min(1.0, (max_side or 10**9) / max(region.width, region.height))
        return max(1, round(region.width * scale)), max(1, round(region.height * scale))


class FakeRuntime:
    """Stands in for GraphRuntime: one in-memory scene, grey views, a run directory under tmp."""

    def __init__(self, settings, tmp_path: Path, strict: bool = False) -> None:
        self.settings = settings
        self.strict = strict
        self.auto_approve = False
        self.tmp_path = tmp_path
        self.opened: list[str] = []
        self.rendered: list[int] = []

    def scene(self, ref):
        self.opened.append(ref["path"])
        return FakeScene()

    def scene_ref(self, path, bands=None):
        return {"path": str(path), "bands": bands, "width": WIDTH, "height": HEIGHT,
                "crs": None, "transform": None}

    def render(self, ref, rec):
        self.rendered.append(int(rec["view_id"]))
        return np.zeros((rec["height"], rec["width"], 3), np.uint8)

    def run_dir(self, thread_id, override=None):
        path = Path(override) if override else self.tmp_path / "runs" / thread_id
        path.mkdir(parents=True, exist_ok=True)
        return path


SCENE = {"path": "/fake/scene.tif", "bands": None, "width": WIDTH, "height": HEIGHT,
         "crs": None, "transform": None}


def observed_state(settings, tmp_path, planner):
    runtime = FakeRuntime(settings, tmp_path)
    state = {"scene": dict(SCENE), "question": "what is in the centre?"}
    update = ObserveNode(planner, runtime)(state)
    return {**state, **update, "transcript": update.get("transcript", [])}, runtime


def test_observe_adds_the_overview_and_the_budgets(settings, tmp_path):
    planner = ScriptedPlanner([])
    runtime = FakeRuntime(settings, tmp_path)
    update = ObserveNode(planner, runtime)({"scene": dict(SCENE), "question": "q"})
    overview = update["views"]["0"]
    assert overview["kind"] == "overview" and overview["region_xyxy"] == [0, 0, WIDTH, HEIGHT]
    assert (overview["width"], overview["height"]) == (settings.overview_side,
                                                        settings.overview_side // 2)
    assert update["max_steps"] == settings.max_steps and update["status"] == "running"
    assert update["first_question"] == "q" and update["question_index"] == 0
    assert runtime.opened == ["/fake/scene.tif"]


def test_observe_on_a_follow_up_question_adds_it_to_the_transcript(settings, tmp_path):
    state, runtime = observed_state(settings, tmp_path, ScriptedPlanner([]))
    follow = ObserveNode(ScriptedPlanner([]), runtime)({**state, "question": "and now?"})
    assert "views" not in follow and follow["question_index"] == 1
    assert follow["transcript"][0]["kind"] == "question"
    assert follow["transcript"][0]["text"] == "and now?"


def test_plan_turns_a_zoom_box_into_a_snapped_minimum_crop(settings, tmp_path):
    planner = ScriptedPlanner(['{"bbox_2d": [256, 128, 264, 136], "label": "car"}'])
    state, runtime = observed_state(settings, tmp_path, planner)
    update = PlanNode(planner, registry=None, runtime=runtime, tools={})(state, {})
    (payload,) = update["pending"]
    # [256,128,264,136] in the 512x256 overview = [2000,1000,2062.5,1062.5] full-res; minimum
    # crop 512 centred on it, snapped out to whole pixels.
    assert payload["kind"] == "zoom" and payload["region_xyxy"] == [1775, 775, 2288, 1288]
    assert payload["view_id"] == 1 and update["next_view_id"] == 2 and update["zooms_used"] == 1
    assert update["steps"][0]["zooms"] == [[1775, 775, 2288, 1288]]
    assert runtime.rendered == [0]  # the planner looked at the overview


def test_plan_feeds_back_an_unknown_tool(settings, tmp_path):
    planner = ScriptedPlanner(['<tool_call>{"name": "nope", "arguments": {}}</tool_call>'])
    state, runtime = observed_state(settings, tmp_path, planner)
    update = PlanNode(planner, registry=None, runtime=runtime, tools={})(state, {})
    assert update["pending"] == []
    assert [p["code"] for p in update["problems"]] == ["unknown_tool"]
    assert update["transcript"][-1]["kind"] == "feedback"
    assert "no tools are available" in update["transcript"][-1]["text"]


def test_zoom_node_records_the_view(settings, tmp_path):
    runtime = FakeRuntime(settings, tmp_path)
    payload = {"action_id": "s1a0", "step": 1, "kind": "zoom", "view_id": 3, "label": "car",
               "region_xyxy": [1000, 500, 2024, 1012], "question": 0, "scene": dict(SCENE)}
    update = ZoomNode(runtime)(payload)
    rec = update["views"]["3"]
    assert rec["kind"] == "zoom" and rec["region_xyxy"] == [1000, 500, 2024, 1012]
    assert max(rec["width"], rec["height"]) <= settings.view_side
    (entry,) = update["transcript"]
    assert entry["kind"] == "zoom" and entry["view_id"] == 3 and entry["data"]["label"] == "car"


def test_answer_node_composes_a_best_effort_answer(settings, tmp_path):
    runtime = FakeRuntime(settings, tmp_path)
    state = {
        "scene": dict(SCENE), "views": {}, "step": 4, "max_steps": 3, "question_index": 0,
        "answer": None,
        "steps": [{"question": 0, "stage_answer": "a car?"}],
        "transcript": [{"kind": "tool_result", "text": "band means: [1, 2, 3]", "view_id": None,
                        "data": {}}],
    }
    config = {"configurable": {"thread_id": "t1", "run_dir": str(tmp_path / "run")}}
    update = AnswerNode(runtime)(state, config)
    assert update["answer_kind"] == "best_effort" and update["status"] == "answered"
    assert update["answer"] == (
        "No final answer was given within the budget (4 of 3 steps used). "
        "Earlier tentative answer: a car? Tool results: band means: [1, 2, 3]"
    )


def test_current_entries_start_after_the_latest_question():
    transcript = [{"kind": "planner"}, {"kind": "question"}, {"kind": "zoom"}]
    assert current_entries({"transcript": transcript}) == [{"kind": "zoom"}]
    assert current_entries({"transcript": transcript[:1]}) == transcript[:1]


# -- the region rules: one zoom rule (agent.frames.zoom_region), typed box errors ---------------
VIEWS = {"0": {"view_id": 0, "kind": "overview", "region_xyxy": [0, 0, WIDTH, HEIGHT],
               "width": 512, "height": 256}}
PLANNER = SimpleNamespace(coord_mode="pixels")
STATE = {"scene": SCENE}


def zoom_request(box) -> ZoomRequest:
    return ZoomRequest(box=box, label=None, view=None, source=str(box))


@pytest.mark.parametrize("box", [(256, 128, 264, 136), (0, 0, 3, 3), (500, 250, 512, 256),
                                 (10.3, 20.7, 400.2, 250.9)])
def test_the_graph_zoom_is_frames_zoom_region_snapped(box):
    region, problem = zoom_request_region(zoom_request(box), VIEWS, 0, STATE, PLANNER, 512)
    assert problem is None
    full = PixelBox(*(v * WIDTH / 512 if i % 2 == 0 else v * HEIGHT / 256
                      for i, v in enumerate(box)))
    crop, _ = zoom_region(full, WIDTH, HEIGHT, 512)
    assert region == crop.snap_out().clip(WIDTH, HEIGHT).as_list()
    assert region == zoom_region(full, WIDTH, HEIGHT, 512, snap=True)[0].as_list()


@pytest.mark.parametrize(
    ("box", "code"),
    [((300, 100, 200, 150), ProblemCode.INVERTED_BOX),
     ((600, 300, 700, 400), ProblemCode.BOX_OUTSIDE_IMAGE),
     ((100, 100, 100, 150), ProblemCode.BOX_OUTSIDE_IMAGE)],  # empty: reported as before
)
def test_a_rejected_zoom_box_gets_the_code_of_its_error_type(box, code):
    region, problem = zoom_request_region(zoom_request(box), VIEWS, 0, STATE, PLANNER, 512)
    assert region is None and problem is not None and problem.code == code


def test_a_tool_region_falls_back_to_the_latest_zoom():
    views = {**VIEWS, "1": {"view_id": 1, "kind": "zoom", "region_xyxy": [8, 8, 520, 520],
                            "width": 512, "height": 512}}
    args = {"note": "x"}
    assert tool_request_region(args, views, 0, STATE, PLANNER, None) == ([8, 8, 520, 520], None)
    args = {"bbox_2d": [0, 0, 256, 128], "view": 0}
    region, problem = tool_request_region(args, views, 1, STATE, PLANNER, None)
    assert problem is None and region == [0, 0, 2000, 1000] and args == {}
