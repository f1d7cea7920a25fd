"""Tests for zoomearth.agent.text.intents: tool commands and the offered tool for each."""

from __future__ import annotations

import pytest

from zoomearth.agent.text.intents import TOOL_INTENTS, ToolIntent, _find_tool, find_tool_intents


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("remove the clouds", "cloud_removal"),
        ("make it cloud-free", "cloud_removal"),
        ("decloud this", "cloud_removal"),
        ("denoise the image", "denoise"),
        ("please reduce the speckle", "denoise"),
        ("segment the buildings", "segmentation"),
        ("Outline every field", "segmentation"),
        ("run segmentation", "segmentation"),
        ("erase the cars", "edit"),
        ("inpaint the shadow", "edit"),
    ],
)
def test_commands(text: str, kind: str) -> None:
    (intent,) = find_tool_intents(text)
    assert intent.kind == kind and intent.kind in TOOL_INTENTS


def test_targets_and_edit_instructions() -> None:
    found = find_tool_intents("Remove the clouds, then segment the buildings and erase the cars")
    assert found == [
        ToolIntent("cloud_removal", "Remove the clouds", 0),
        ToolIntent("segmentation", "segment the buildings", 24, "buildings"),
        ToolIntent("edit", "erase the cars", 50, "cars", "remove the cars"),
    ]
    (inpaint,) = find_tool_intents("inpaint the shadow")
    assert inpaint.instruction == "inpaint the shadow"


@pytest.mark.parametrize(
    "text",
    [
        "Is the image cloud-free?",
        "How long are the road segments?",
        "remove",
        "What is the outline of the lake?",
    ],
)
def test_not_commands(text: str) -> None:
    assert find_tool_intents(text) == []


def test_one_intent_per_kind_first_mention() -> None:
    (intent,) = find_tool_intents("segment the roads, then segment the rivers")
    assert intent.target == "roads"


def test_find_tool_exact_name_then_hints() -> None:
    tools = [{"name": "speckle_filter"}, {"name": "denoise"}, {"name": "sam_mask"}]
    assert _find_tool("denoise", tools) == {"name": "denoise"}
    assert _find_tool("denoise", tools[:1]) == {"name": "speckle_filter"}
    assert _find_tool("segmentation", tools) == {"name": "sam_mask"}
    assert _find_tool("cloud_removal", tools) is None
