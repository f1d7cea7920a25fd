"""The rules planner's change intents: "what changed", "new buildings since 2014", dates.

The tool offered is the real ``change_detection`` (its spec from the registry, as the graph offers
it), so the arguments the planner writes are the ones the tool validates.
"""

from __future__ import annotations

import pytest

from tests.agent.test_rules import OVERVIEW, TOOLS, make_request, zoom_full_boxes
from zoomearth.agent.backends.rules import RulesPlanner
from zoomearth.agent.parsing import parse_response
from zoomearth.agent.text.intents import find_change_dates, find_tool_intents
from zoomearth.config import Settings
from zoomearth.tools.change_detection import ChangeDetection
from zoomearth.tools.registry import ToolRegistry


def change_tool() -> dict:
    """The spec the graph offers the planner (region arguments bbox_2d/view included)."""
    specs = ToolRegistry(entry_point_group=None).tool_specs_for_prompt()
    return next(s for s in specs if s["name"] == "change_detection")


def plan(question: str, tools: list[dict] | None = None):
    request = make_request(question, tools=[*TOOLS, change_tool()] if tools is None else tools)
    reply = RulesPlanner(Settings()).plan(request)
    return reply.text, parse_response(reply.text)


@pytest.mark.parametrize(
    ("question", "before", "after"),
    [
        ("What changed?", None, None),
        ("what has changed in the scene", None, None),
        ("Detect change", None, None),
        ("run change detection", None, None),
        ("show me the changes", None, None),
        ("changes between 2009 and 2020", "2009", "2020"),
        ("What changed between 2020 and 2009?", "2009", "2020"),  # older first
        ("changes from 2014-07-20 to 2020", "2014-07-20", "2020"),
        ("new buildings since 2014", "2014", None),
        ("What was built since 2017?", "2017", None),
        ("Has anything changed since 2014?", "2014", None),  # a yes/no question still asks
        ("How much has the lake changed until 2017?", None, "2017"),
        ("what is new in 2020 vs 2014", "2014", "2020"),
        ("what changed in 2020", None, "2020"),
        ("differences between 2009 and 2017", "2009", "2017"),
    ],
)
def test_change_phrases_and_their_dates(question: str, before, after) -> None:
    (intent,) = find_tool_intents(question)
    assert intent.kind == "change_detection"
    assert (intent.before, intent.after) == (before, after)


@pytest.mark.parametrize(
    "question",
    [
        "What is in the top-left?",
        "Is the image cloud-free?",
        "What is the change in NDVI?",
        "Remove the clouds",
        "How many buildings are there in 2020?",
        "Which roads are new?",
        "How does the colour change from left to right?",
        "Is there a new road after the bridge?",
    ],
)
def test_not_change_questions(question: str) -> None:
    assert all(i.kind != "change_detection" for i in find_tool_intents(question))


def test_dates_are_not_read_as_coordinates_or_pixel_numbers() -> None:
    assert find_change_dates("box 2009,2014,2020,2030 since 2014") == ("2014", None)
    assert find_change_dates("between 1999.5 and 2020") == (None, "2020")
    assert find_change_dates("nothing dated here") == (None, None)


def test_what_changed_in_the_top_left_between_two_years() -> None:
    text, parsed = plan("what changed in the top-left between 2009 and 2020")
    (zoom,) = zoom_full_boxes(parsed)
    assert zoom.x1 == 0 and zoom.y1 == 0 and zoom.x2 <= OVERVIEW.region.width / 2 + 1
    (call,) = parsed.tool_calls
    assert call.name == "change_detection"
    # The region is the zoom (no box argument); the dates go to before/after.
    assert call.arguments == {"before": "2009", "after": "2020"}
    ChangeDetection.Args.model_validate(call.arguments)
    assert "Calling change_detection on that region" in text


def test_new_buildings_since_on_the_whole_image() -> None:
    _, parsed = plan("new buildings since 2014 in the whole image")
    assert not parsed.zooms
    (call,) = parsed.tool_calls
    assert call.name == "change_detection"
    assert call.arguments["before"] == "2014" and "after" not in call.arguments
    assert call.arguments["bbox_2d"] == [0, 0, OVERVIEW.width, OVERVIEW.height]


def test_change_detection_not_offered_says_so() -> None:
    text, parsed = plan("what changed since 2014?", tools=TOOLS)
    assert not parsed.tool_calls
    assert "Change detection was requested, but no such tool is available" in text


def test_other_intents_are_unchanged_next_to_the_change_tool() -> None:
    _, parsed = plan("remove the clouds in the top-right")
    assert [c.name for c in parsed.tool_calls] == ["cloud_removal"]
    _, parsed = plan("segment the buildings in the centre")
    assert [c.name for c in parsed.tool_calls] == ["segmentation"]
