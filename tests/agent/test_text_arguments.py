"""Tests for zoomearth.agent.text.arguments: tool arguments filled from a JSON Schema."""

from __future__ import annotations

import pytest

from zoomearth.agent.text.arguments import (
    _box_keys,
    _CannotFill,
    _fill_arguments,
    _set_whole_scene,
    _validate_arguments,
    is_box_argument,
)
from zoomearth.agent.text.intents import ToolIntent
from zoomearth.geometry import PixelBox, ViewSpec

WHOLE = PixelBox(0, 0, 1000, 800)
OVERVIEW = ViewSpec(0, WHOLE, 500, 400)
SEGMENT = ToolIntent("segmentation", "segment the roads", 0, "roads")
PARAMS = {
    "type": "object",
    "properties": {
        "box": {"type": "array", "items": {"type": "number"}},
        "prompt": {"type": "string"},
        "bbox_2d": {"type": "array", "items": {"type": "number"}},
        "view": {"type": "integer"},
    },
    "required": ["prompt"],
}


@pytest.mark.parametrize(
    ("key", "is_box"),
    [
        ("box", True),
        ("bbox", True),
        ("region", True),
        ("target_box", True),
        ("roi_xyxy", True),
        ("my_bbox_list", True),
        ("prompt", False),
        ("boxes", False),
    ],
)
def test_is_box_argument(key: str, is_box: bool) -> None:
    assert is_box_argument(key) is is_box


def test_box_keys_leave_out_the_graph_region_arguments() -> None:
    assert _box_keys(PARAMS) == ["box"]
    assert _box_keys({"properties": []}) == []


def test_fill_box_and_prompt_never_the_region_arguments() -> None:
    args = _fill_arguments("segmentation", SEGMENT, PARAMS, PixelBox(10.4, 20, 110, 220.6), WHOLE)
    assert args == {"box": [10.0, 20.0, 110.0, 221.0], "prompt": "roads"}
    assert _fill_arguments("segmentation", SEGMENT, PARAMS, None, WHOLE) == {"prompt": "roads"}


def test_required_box_without_region_gets_the_whole_scene_in_the_schema_types() -> None:
    params = {
        "properties": {"bbox_xyxy": {"type": "array", "items": {"type": "integer"}}},
        "required": ["bbox_xyxy"],
    }
    intent = ToolIntent("cloud_removal", "make it cloud-free", 0)
    assert _fill_arguments("cloud_removal", intent, params, None, WHOLE) == {
        "bbox_xyxy": [0, 0, 1000, 800]
    }
    as_string = {"properties": {"roi": {"type": "string"}}, "required": ["roi"]}
    assert _fill_arguments("cloud_removal", intent, as_string, None, WHOLE) == {
        "roi": "0,0,1000,800"
    }


def test_text_lists_refs_and_modes() -> None:
    params = {
        "$defs": {"Mode": {"type": "string", "enum": ["generate", "remove"]}},
        "properties": {
            "instruction": {"type": "string"},
            "mode": {"$ref": "#/$defs/Mode"},
        },
        "required": ["instruction", "mode"],
    }
    edit = ToolIntent("edit", "erase the cars", 0, "cars", "remove the cars")
    assert _fill_arguments("edit", edit, params, None, WHOLE) == {
        "instruction": "remove the cars",
        "mode": "remove",
    }
    classes = {"properties": {"classes": {"type": "array", "items": {"type": "string"}}}}
    assert _fill_arguments("segmentation", SEGMENT, classes, None, WHOLE) == {"classes": ["roads"]}


def test_a_required_argument_that_cannot_be_inferred() -> None:
    bare = ToolIntent("segmentation", "segmentation", 0)
    with pytest.raises(_CannotFill, match="prompt"):
        _fill_arguments("segmentation", bare, PARAMS, None, WHOLE)


def test_validate_arguments_against_the_schema() -> None:
    assert _validate_arguments({"prompt": "roads"}, PARAMS) is None
    assert _validate_arguments({"prompt": 3}, PARAMS) == "3 is not of type 'string'"
    assert _validate_arguments({}, PARAMS) == "'prompt' is a required property"
    assert _validate_arguments({"anything": 1}, {}) is None


def test_whole_scene_through_the_graph_region_argument_when_offered() -> None:
    args = {"prompt": "roads"}
    _set_whole_scene(args, PARAMS, OVERVIEW, 0, WHOLE)
    assert args == {"prompt": "roads", "bbox_2d": [0, 0, 500, 400], "view": 0}


def test_whole_scene_through_the_tool_box_arguments_otherwise() -> None:
    args: dict = {}
    _set_whole_scene(args, {"properties": {"roi_xyxy": {"type": "string"}}}, OVERVIEW, 0, WHOLE)
    assert args == {"roi_xyxy": "0,0,1000,800"}
    kept = {"box": [1, 2, 3, 4]}
    _set_whole_scene(kept, {"properties": {"box": {"type": "array"}}}, None, 0, WHOLE)
    assert kept == {"box": [1, 2, 3, 4]}


def test_haze_in_the_phrase_switches_on_thin_haze() -> None:
    """"Remove the haze" asks cloud_removal to look for haze away from clouds; clouds do not."""
    from zoomearth.tools import get_registry
    from zoomearth.tools.schema import prompt_schema

    params = prompt_schema(get_registry().get_class("cloud_removal").Args)
    haze = ToolIntent("cloud_removal", "remove the haze", 0)
    clouds = ToolIntent("cloud_removal", "remove the clouds", 0)
    assert _fill_arguments("cloud_removal", haze, params, None, WHOLE).get("thin_haze") is True
    assert "thin_haze" not in _fill_arguments("cloud_removal", clouds, params, None, WHOLE)
    # The word counts only for a boolean argument of that name on that tool.
    other = {"type": "object", "properties": {"thin_haze": {"type": "string"}}}
    assert _fill_arguments("cloud_removal", haze, other, None, WHOLE) == {}
    assert _fill_arguments("denoise", ToolIntent("denoise", "haze", 0), params, None, WHOLE).get(
        "thin_haze"
    ) is None
