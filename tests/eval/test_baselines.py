"""The oracle and no-zoom wrappers on hand-made planner turns."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from zoomearth.agent.base import Planner, PlanReply, PlanRequest, TranscriptEntry
from zoomearth.agent.parsing import parse_response
from zoomearth.eval.baselines import NoZoomPlanner, OraclePlanner, select_question
from zoomearth.geometry import PixelBox, ViewSpec

TURN1 = '<think>look</think>\n{"bbox_2d": [1, 2, 3, 4], "label": "x"}\n<answer>tent</answer>'


class FakePlanner(Planner):
    """Replies with fixed text in the 0-1000 frame and records what it was asked."""

    name: ClassVar[str] = "fake"
    coord_mode = "norm1000"

    def __init__(self, text: str = TURN1) -> None:
        self.text = text
        self.requests: list[PlanRequest] = []
        self.selected: list[str] = []

    def plan(self, request: PlanRequest) -> PlanReply:
        self.requests.append(request)
        return PlanReply(text=self.text, seen_sizes={0: (512, 256)}, backend="fake")

    def set_question(self, question_id: str | None) -> None:
        self.selected.append(str(question_id))


def _request(transcript: list[TranscriptEntry] | None = None, final: bool = False) -> Any:
    views = {0: ViewSpec(0, PixelBox(0, 0, 2000, 1000), 512, 256)}
    return PlanRequest(
        question="what is there?",
        overview_id=0,
        transcript=transcript or [],
        views=views,
        render=lambda vid: np.zeros((256, 512, 3), np.uint8),
        final=final,
    )


def test_oracle_replaces_the_first_zoom_only() -> None:
    inner = FakePlanner()
    oracle = OraclePlanner(inner)
    select_question(oracle, "q7", [1000, 500, 1200, 700])
    assert inner.selected == ["q7"]
    reply = oracle.plan(_request())
    assert reply.parsed is not None
    (zoom,) = reply.parsed.zooms
    assert (zoom.frame, zoom.box, zoom.label) == ("full", (1000.0, 500.0, 1200.0, 700.0), "oracle")
    assert reply.parsed.answer == "tent"  # the inner stage-1 answer is kept
    # the logged text shows the box in the inner planner's own frame (0-1000 of the overview)
    shown = parse_response(reply.text)
    assert shown.zooms[0].box == (500.0, 500.0, 600.0, 700.0)
    assert shown.answer == "tent"
    # a later turn is the inner planner's, untouched
    later = oracle.plan(_request([TranscriptEntry("planner", reply.text)]))
    assert later.parsed is None and later.text == TURN1
    # no box: the inner planner decides alone
    select_question(oracle, "q8", None)
    assert oracle.plan(_request()).text == TURN1


def test_no_zoom_asks_for_an_answer_and_drops_zooms() -> None:
    inner = FakePlanner()
    reply = NoZoomPlanner(inner).plan(_request())
    assert inner.requests[-1].final is True
    assert reply.parsed is not None
    assert reply.parsed.zooms == () and reply.parsed.tool_calls == ()
    assert reply.parsed.answer == "tent"
    assert parse_response(reply.text).zooms == ()
    plain = FakePlanner("<answer>lake</answer>")
    assert NoZoomPlanner(plain).plan(_request()).text == "<answer>lake</answer>"


def test_oracle_log_keeps_the_inner_tool_calls_and_answer() -> None:
    inner = FakePlanner(
        '{"bbox_2d": [1, 2, 3, 4]}\n'
        '<tool_call>{"name": "seg", "arguments": {"prompt": "a <\\/tool_call> b"}}</tool_call>\n'
        "<answer>two</answer>"
    )
    oracle = OraclePlanner(inner)
    oracle.set_target([1000, 500, 1200, 700])
    reply = oracle.plan(_request())
    (zoom,) = reply.parsed.zooms
    assert zoom.source == '{"bbox_2d": [1000, 500, 1200, 700], "frame": "full"}'
    shown = parse_response(reply.text)
    assert shown.problems == ()
    assert [(z.box, z.label) for z in shown.zooms] == [((500.0, 500.0, 600.0, 700.0), "oracle")]
    assert [(c.name, c.arguments) for c in shown.tool_calls] == [
        ("seg", {"prompt": "a </tool_call> b"})
    ]
    assert shown.answer == "two"


def test_no_zoom_without_think_or_answer_logs_an_empty_think() -> None:
    reply = NoZoomPlanner(FakePlanner('{"bbox_2d": [1, 2, 3, 4]}')).plan(_request())
    assert reply.text == "<think></think>"
    shown = parse_response(reply.text)
    assert shown.zooms == () and shown.tool_calls == () and shown.answer is None
