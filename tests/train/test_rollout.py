"""The rollout's crop rule (the reference GRPO's), its frame and profile choices; no model."""

from __future__ import annotations

import pytest

from zoomearth.agent.profiles import reference_crop_xyxy
from zoomearth.geometry import PixelBox, ViewSpec
from zoomearth.train.common import TrainError
from zoomearth.train.grpo import (
    agent_rollout_region,
    reference_rollout_window,
    resolve_box_frame,
    rows_profile,
)
from zoomearth.train.rewards import ProcessorFrame, ReferenceFrame

# 5000 x 3000: the overview is 512 x 307, one unit = 5000 / 512 = 9.765625 px.
FRAME = ReferenceFrame(5000, 3000)


def think(box: str) -> str:
    return f'<think>look {{"bbox_2d": {box}}}</think>'


def test_window_of_the_first_box() -> None:
    window, note = reference_rollout_window(
        think("[100, 100, 110, 110]") + think("[0, 0, 1, 1]"), FRAME, 5000, 3000
    )
    assert note == "the first bbox_2d"
    assert window == reference_crop_xyxy([976.5625, 976.5625, 1074.21875, 1074.21875], 5000, 3000)
    assert window == (769, 769, 1281, 1281)
    # A box of at least 512 px on both sides is cut as it is, even reaching outside the image.
    window, _ = reference_rollout_window(think("[400, 200, 600, 400]"), FRAME, 5000, 3000)
    assert window == (3906, 1953, 5859, 3906)


def test_no_box_crops_the_whole_overview_mapped_back() -> None:
    # The reference: [0, 0, overview width, overview height] * scale -> 512 x 307 -> 5000 x 2998.
    text = "<think>hm</think><answer>x</answer>"
    window, note = reference_rollout_window(text, FRAME, 5000, 3000)
    assert window == (0, 0, 5000, 2998) and note == "no bbox_2d: the whole overview"
    # An image under 512 px: its own size (the overview is the image, scale 1).
    assert reference_rollout_window("", ReferenceFrame(400, 300), 400, 300)[0] == (0, 0, 400, 300)


@pytest.mark.parametrize(
    ("box", "why"),
    [("[1, 2, 3]", "has 3 numbers"), ("[nan, 1, 2, 3]", "not finite"), ("[1, 2, 3, 4, 5]", "5")],
)
def test_unusable_first_box_crops_the_whole_image(box: str, why: str) -> None:
    # The reference's cut_image returns the image for a list that is not four numbers (and
    # raises on nan, where this gives the whole image too).
    window, note = reference_rollout_window(think(box) + think("[1, 1, 9, 9]"), FRAME, 5000, 3000)
    assert window == (0, 0, 5000, 3000) and why in note


def test_enormous_window_is_cut_to_the_image() -> None:
    window, note = reference_rollout_window(think("[0, 0, 1e6, 1e6]"), FRAME, 5000, 3000)
    assert window == (0, 0, 5000, 3000) and "cut to the image" in note
    window, note = reference_rollout_window(think("[1e6, 1e6, 3e6, 3e6]"), FRAME, 5000, 3000)
    assert window == (0, 0, 5000, 3000) and "far outside" in note


def test_agent_region_uses_the_agents_rule() -> None:
    overview = ViewSpec(0, PixelBox(0, 0, 5000, 3000), 512, 307)
    frame = ProcessorFrame(overview, (504, 308))
    region, note, label = agent_rollout_region(think("[100, 100, 110, 110]"), frame, 5000, 3000)
    assert note == "the first bbox_2d" and label is None
    # The minimum crop, snapped to whole pixels as the graph's zoom node snaps it.
    assert region == region.snap_out() and region.width >= 512 and region.height >= 512
    assert region.width - 512 <= 1 and region.height - 512 <= 1
    text = '<think>{"bbox_2d": [100, 100, 110, 110], "label": "ship"}</think>'
    assert agent_rollout_region(text, frame, 5000, 3000)[1:] == ("the first bbox_2d", "ship")
    region, note, label = agent_rollout_region("no box", frame, 5000, 3000)
    assert region == PixelBox(0, 0, 5000, 3000) and "whole image" in note and label is None
    region, note, _ = agent_rollout_region(think("[900, 900, 950, 950]"), frame, 5000, 3000)
    assert region == PixelBox(0, 0, 5000, 3000) and "unusable" in note
    # Only the overview exists in stage 1: a box drawn on another view is not zoomed.
    on_view_2 = '<think>{"bbox_2d": [1, 1, 9, 9], "view": 2}</think>'
    region, note, _ = agent_rollout_region(on_view_2, frame, 5000, 3000)
    assert region == PixelBox(0, 0, 5000, 3000) and "view 2" in note


def test_profiles_and_frames_of_the_data() -> None:
    assert rows_profile([{"profile": "zoomearth", "prompt_text": "x"}]) == "zoomearth"
    assert rows_profile([{}, {"profile": "agent"}]) == "agent"
    with pytest.raises(TrainError, match="mixes protocol profiles"):
        rows_profile([{"profile": "agent"}, {"profile": "zoomearth", "prompt_text": "x"}])
    with pytest.raises(TrainError, match="prompt_text"):
        rows_profile([{"profile": "zoomearth"}])
    assert resolve_box_frame("auto", "zoomearth") == "reference"
    assert resolve_box_frame("auto", "agent") == "processor"
    assert resolve_box_frame("reference", "agent") == "reference"
