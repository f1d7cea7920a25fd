"""The zoomearth profile: its crop rule and frame against independent ports, texts, selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zoomearth.agent.base import PlannerError, PlanRequest, TranscriptEntry
from zoomearth.agent.profiles import (
    ZoomEarthProfile,
    load_zoomearth_prompt,
    reference_box_factor,
    reference_crop_xyxy,
    reference_resized_size,
    resolve_profile,
    stage_inputs,
)
from zoomearth.geometry import PixelBox, ViewSpec


# --- independent port of the reference's cut_image, as a PIL crop box ------------------------
def port_cut_box(w: int, h: int, bbox: list[float], min_size: int = 512) -> tuple[int, ...]:
    """Written from the reference's description, with PIL's own crop as the final step."""
    x1, y1, x2, y2 = (int(v) for v in bbox)
    if (x2 - x1) >= min_size and (y2 - y1) >= min_size:
        return (x1, y1, x2, y2)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    left, top = cx - min_size // 2, cy - min_size // 2
    # shift right/down when the square starts before the image, left/up when it ends after it
    left = max(left, 0)
    top = max(top, 0)
    left = left - max(0, left + min_size - w)
    top = top - max(0, top + min_size - h)
    left, top = max(0, left), max(0, top)
    return (left, top, min(w, left + min_size), min(h, top + min_size))


SIZES = st.tuples(st.integers(1, 9000), st.integers(1, 9000))
COORD = st.floats(-2000, 11000, allow_nan=False)


@settings(max_examples=3000, deadline=None)
@given(SIZES, st.tuples(COORD, COORD, COORD, COORD))
def test_crop_rule_equals_an_independent_port(size, box) -> None:
    w, h = size
    assert reference_crop_xyxy(list(box), w, h) == port_cut_box(w, h, list(box))


def test_crop_rule_on_real_pil_crops() -> None:
    # The crop window is exactly the region PIL's crop shows, padding outside the image black.
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (700, 900, 3), dtype=np.uint8))
    for box in ([10, 10, 50, 50], [880, 690, 899, 699], [-100, -50, 700, 690], [300, 0, 900, 700]):
        x1, y1, x2, y2 = reference_crop_xyxy(box, 900, 700)
        crop = np.asarray(img.crop((x1, y1, x2, y2)))
        assert crop.shape == (y2 - y1, x2 - x1, 3)
    x1, y1, x2, y2 = reference_crop_xyxy([-100, -50, 700, 690], 900, 700)
    assert (x1, y1) == (-100, -50)  # both sides >= 512: the raw box, unclipped
    assert not np.asarray(img.crop((x1, y1, x2, y2)))[:50].any()  # PIL pads with black


@settings(max_examples=2000, deadline=None)
@given(SIZES, st.tuples(COORD, COORD, COORD, COORD))
def test_frame_mapping_is_the_reference_factor_on_both_axes(size, box) -> None:
    w, h = size
    factor = 1 / (512 / max(w, h))  # the reference's float operations, written out
    profile = ZoomEarthProfile("{{question}}")
    assert profile.box_to_full(list(box), w, h) == [v * factor for v in box]
    assert reference_box_factor(w, h) == factor


def test_frame_is_the_512_overview_not_the_processor_size() -> None:
    # 5000 x 3000: the overview is 512 x 307 and the processor sees 504 x 308; a box at the
    # overview's right edge (x = 512) is the image's right edge.
    assert reference_resized_size(5000, 3000) == (512, 307)
    assert reference_resized_size(3000, 5000) == (307, 512)
    assert reference_resized_size(400, 300) == (400, 300)  # never upsampled
    profile = ZoomEarthProfile("{{question}}")
    assert profile.box_to_full([0, 0, 512, 307], 5000, 3000)[2] == pytest.approx(5000)


def test_texts_are_plain_substitution(tmp_path: Path) -> None:
    profile = ZoomEarthProfile(
        '\n<a> {"bbox_2d": [1]} {{question}} {{ q }}\n<|im_start|>assistant\n'
    )
    assert profile.stage1_text("Q?") == '\n<a> {"bbox_2d": [1]} Q? {{ q }}\n<|im_start|>assistant\n'
    # special-token strings in a question cannot forge images
    assert "<|image_pad|>" not in profile.stage1_text("is <|image_pad|> there").split("<a>")[1]
    two = profile.stage2_text("Q?", "<think>x</think>\n<answer>y</answer>")
    assert two == profile.stage1_text("Q?") + "<think>x</think>\n" + (
        "<|vision_start|><|image_pad|><|vision_end|>"
    )


def test_prompt_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PlannerError, match="planner_prompt"):
        load_zoomearth_prompt(None)
    path = tmp_path / "p.txt"
    path.write_text("no mark here", encoding="utf-8")
    with pytest.raises(PlannerError, match=r"\{\{question\}\}"):
        load_zoomearth_prompt(path)
    with pytest.raises(PlannerError, match="Cannot read"):
        load_zoomearth_prompt(tmp_path / "missing.txt")
    path.write_bytes(b"\r\n{{question}} \n")  # bytes kept exactly, CRLF included
    assert load_zoomearth_prompt(path) == "\r\n{{question}} \n"


def test_profile_selection() -> None:
    assert resolve_profile("auto", "HappyBug/ZoomEarth-3B")[0] == "zoomearth"
    assert resolve_profile(None, "/models/zoom_earth-3b-ckpt")[0] == "zoomearth"
    name, reason = resolve_profile("auto", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert name == "agent" and "does not name ZoomEarth" in reason
    assert resolve_profile("agent", "HappyBug/ZoomEarth-3B")[0] == "agent"
    # Only the checkpoint's own name counts, not the folders around it.
    assert resolve_profile("auto", "/home/u/.local/share/zoomearth/runs/sft")[0] == "agent"
    assert resolve_profile("auto", "/data/zoomearth/models/Qwen2.5-VL-7B-Instruct")[0] == "agent"
    assert resolve_profile("auto", "/data/models/ZoomEarth-3B/")[0] == "zoomearth"
    with pytest.raises(PlannerError, match="planner_profile"):
        resolve_profile("fancy", None)


def test_stage_inputs_follow_the_transcript() -> None:
    views = {
        0: ViewSpec(0, PixelBox(0, 0, 5000, 3000), 512, 307),
        1: ViewSpec(1, PixelBox(100, 100, 612, 612), 512, 512),
    }
    profile = ZoomEarthProfile("[{{question}}]")

    def request(*entries: TranscriptEntry) -> PlanRequest:
        return PlanRequest("Q", 0, list(entries), views, lambda v: np.zeros((1, 1, 3), np.uint8))

    one = stage_inputs(profile, request())
    assert (one.stage, one.text, one.image_view_ids) == (1, "[Q]", (0,))
    two = stage_inputs(
        profile,
        request(
            TranscriptEntry("planner", "A<answer>b</answer>"), TranscriptEntry("zoom", view_id=1)
        ),
    )
    assert two.stage == 2 and two.image_view_ids == (0, 1)
    assert two.text == "[Q]A<|vision_start|><|image_pad|><|vision_end|>"
