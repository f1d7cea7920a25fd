"""Tests for zoomearth.agent.frames: Qwen2.5-VL's resize rule and the planner-frame arithmetic.

The worked example used throughout: a 10,000 x 6,000 px image; its overview has long side 512,
so it is rendered at 512 x round(6000 * 512 / 10000) = 512 x round(307.2) = 512 x 307 px; the
Qwen2.5-VL processor resizes that to multiples of 28:

    height: round(307 / 28) = round(10.964) = 11 -> 11 * 28 = 308
    width:  round(512 / 28) = round(18.286) = 18 -> 18 * 28 = 504

so the model *sees* 504 x 308 px, and its ``pixels`` boxes are in that frame.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoomearth.agent.frames import (
    QWEN25_VL,
    VisionSpec,
    fit_long_side,
    planner_box_to_full,
    qwen_smart_resize,
    qwen_visual_tokens,
    seen_size,
    zoom_region,
)
from zoomearth.errors import BoxError
from zoomearth.geometry import PixelBox, ViewSpec

IMAGE_W, IMAGE_H = 10_000, 6_000
OVERVIEW = ViewSpec(0, PixelBox(0, 0, IMAGE_W, IMAGE_H), 512, 307)
OVERVIEW_SEEN = (504, 308)


def _approx_box(box: PixelBox, expected: tuple[float, float, float, float]) -> None:
    assert box.as_list() == pytest.approx(list(expected), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# smart_resize against transformers
# ---------------------------------------------------------------------------------------------


def _transformers_smart_resize():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    return smart_resize


def _sizes() -> list[tuple[int, int]]:
    rng = random.Random(1234)
    sizes = [
        (307, 512),
        (384, 512),
        (512, 512),
        (28, 28),
        (14, 14),
        (1, 1),
        (56, 56),
        (55, 57),
        (3, 500),
        (4, 600),
        (42, 42),
        (70, 70),
        (6000, 10000),
        (20000, 20000),
        (3333, 3333),
        (5000, 3750),
        (2222, 3333),
        (14, 2800),
        (100_000, 1000),
        (3584, 3584),
        (3585, 3584),
    ]
    for _ in range(400):
        h = int(math.exp(rng.uniform(0, math.log(60_000))))
        w = int(math.exp(rng.uniform(0, math.log(60_000))))
        if max(h, w) / max(1, min(h, w)) <= 200:
            sizes.append((max(1, h), max(1, w)))
    return sizes


@pytest.mark.parametrize(
    "max_pixels", [QWEN25_VL.max_pixels, 28 * 28 * 1280, 28 * 28 * 4, 16384 * 28 * 28 // 3]
)
@pytest.mark.parametrize("min_pixels", [56 * 56, 28 * 28 * 16])
def test_smart_resize_matches_transformers(min_pixels: int, max_pixels: int) -> None:
    reference = _transformers_smart_resize()
    for h, w in _sizes():
        assert qwen_smart_resize(h, w, 28, min_pixels, max_pixels) == reference(
            h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels
        ), (h, w)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 200_000),
    st.integers(1, 200_000),
    st.sampled_from([14, 28, 32]),
    st.integers(1, 20_000_000),
)
def test_smart_resize_matches_transformers_property(h: int, w: int, factor: int, cap: int) -> None:
    reference = _transformers_smart_resize()
    if max(h, w) / min(h, w) > 200:
        with pytest.raises(ValueError):
            qwen_smart_resize(h, w, factor, 56 * 56, cap)
        return
    min_pixels = 56 * 56
    assert qwen_smart_resize(h, w, factor, min_pixels, cap) == reference(
        h, w, factor=factor, min_pixels=min_pixels, max_pixels=cap
    )


@pytest.mark.parametrize(
    ("h", "w", "max_pixels"),
    [
        (307, 512, None),
        (384, 512, None),
        (50, 50, None),
        (20, 1000, None),
        (700, 900, 28 * 28 * 64),
    ],
)
def test_seen_size_matches_the_real_image_processor(h: int, w: int, max_pixels: int | None) -> None:
    from transformers import Qwen2VLImageProcessor

    kwargs = {"min_pixels": 56 * 56, "max_pixels": max_pixels or QWEN25_VL.max_pixels}
    processor = Qwen2VLImageProcessor(**kwargs)
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    out = processor(images=[image], return_tensors="pt")
    _t, grid_h, grid_w = (int(v) for v in out["image_grid_thw"][0])
    vision = VisionSpec(max_pixels=kwargs["max_pixels"])
    assert seen_size(w, h, vision) == (grid_w * 14, grid_h * 14)
    seen_w, seen_h = seen_size(w, h, vision)
    # The processor's <|image_pad|> count: grid product / merge_size^2.
    assert qwen_visual_tokens(seen_w, seen_h) == grid_h * grid_w // 4


def test_native_resolution_has_no_cap() -> None:
    # 20,000 x 20,000: round(20000 / 28) = round(714.29) = 714 -> 714 * 28 = 19,992 per side.
    assert qwen_smart_resize(20_000, 20_000, max_pixels=None) == (19_992, 19_992)
    # With the checkpoint's cap of 12,845,056 px (= 3584^2): beta = sqrt(4e8 / 12845056) =
    # 5.5804; 20000 / 5.5804 / 28 is 128 in exact arithmetic but 127.99999999999999 in floating
    # point, so floor gives 127 -> 3556 per side -- exactly what the processor does.
    assert qwen_smart_resize(20_000, 20_000) == (3556, 3556)
    assert _transformers_smart_resize()(20_000, 20_000, max_pixels=12_845_056) == (3556, 3556)


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        qwen_smart_resize(1, 500)
    with pytest.raises(ValueError, match="positive"):
        qwen_smart_resize(0, 10)


# ---------------------------------------------------------------------------------------------
# Seen sizes and visual tokens, worked by hand
# ---------------------------------------------------------------------------------------------


def test_overview_worked_example() -> None:
    assert fit_long_side(IMAGE_W, IMAGE_H, 512) == (512, 307)  # 6000 * 0.0512 = 307.2
    assert seen_size(512, 307) == OVERVIEW_SEEN
    # (308 / 14) * (504 / 14) / 4 = 22 * 36 / 4 = 198 tokens.
    assert qwen_visual_tokens(504, 308) == 198


def test_square_and_4_3_views() -> None:
    # 512 / 28 = 18.29 -> 18 -> 504; 384 / 28 = 13.71 -> 14 -> 392.
    assert seen_size(512, 512) == (504, 504)
    assert seen_size(512, 384) == (504, 392)
    assert qwen_visual_tokens(504, 504) == 36 * 36 // 4 == 324
    assert qwen_visual_tokens(504, 392) == 36 * 28 // 4 == 252
    # Tiny views are scaled up to min_pixels = 3136: 20 x 20 -> beta = sqrt(3136 / 400) = 2.8,
    # ceil(20 * 2.8 / 28) = 2 -> 56 x 56.
    assert seen_size(20, 20) == (56, 56)


def test_fit_long_side_never_upscales() -> None:
    assert fit_long_side(300, 200, 512) == (300, 200)
    assert fit_long_side(1024, 512, 512) == (512, 256)
    assert fit_long_side(512.0, 1536.0, 512) == (171, 512)  # 512 / 3 = 170.67 -> 171


# ---------------------------------------------------------------------------------------------
# planner_box_to_full, one hand-worked case per coordinate mode
# ---------------------------------------------------------------------------------------------


def test_pixels_mode_uses_the_seen_frame() -> None:
    # Seen 504 x 308 covers 10,000 x 6,000 px: 19.8413 px per seen pixel in x (10000 / 504),
    # 19.4805 in y (6000 / 308). The seen image's bottom-right quadrant:
    #   x1 = 252 * 10000 / 504 = 5000, y1 = 154 * 6000 / 308 = 3000, x2 = 10000, y2 = 6000.
    box = planner_box_to_full([252, 154, 504, 308], "pixels", OVERVIEW, OVERVIEW_SEEN)
    _approx_box(box, (5000, 3000, 10000, 6000))
    # An arbitrary box: 100 * 10000 / 504 = 1984.127, 50 * 6000 / 308 = 974.026,
    # 150 * 10000 / 504 = 2976.190, 80 * 6000 / 308 = 1558.442.
    box = planner_box_to_full([100, 50, 150, 80], "pixels", OVERVIEW, OVERVIEW_SEEN)
    _approx_box(box, (1000000 / 504, 300000 / 308, 1500000 / 504, 480000 / 308))
    assert box.x1 == pytest.approx(1984.127, abs=1e-3)
    # Reading the same numbers in the nominal 512 x 307 frame would put x1 at
    # 100 * 10000 / 512 = 1953.1 -- 31 full-resolution pixels off.
    nominal = planner_box_to_full([100, 50, 150, 80], "pixels", OVERVIEW, None)
    assert nominal.x1 == pytest.approx(1953.125)


def test_pixels_mode_on_a_zoomed_view() -> None:
    # View 1 shows region x 4000..5024, y 2000..2768 (1024 x 768 px) rendered at 512 x 384, seen
    # at 504 x 392. Full-resolution px per seen px: 1024 / 504 = 2.0317 in x, 768 / 392 = 1.9592
    # in y. Box [126, 98, 252, 196]:
    #   x1 = 4000 + 126 * 1024 / 504 = 4000 + 256 = 4256
    #   y1 = 2000 +  98 *  768 / 392 = 2000 + 192 = 2192
    #   x2 = 4000 + 252 * 1024 / 504 = 4000 + 512 = 4512
    #   y2 = 2000 + 196 *  768 / 392 = 2000 + 384 = 2384
    view = ViewSpec(1, PixelBox(4000, 2000, 5024, 2768), 512, 384)
    seen = seen_size(view.width, view.height)
    assert seen == (504, 392)
    box = planner_box_to_full((126, 98, 252, 196), "pixels", view, seen)
    _approx_box(box, (4256, 2192, 4512, 2384))


def test_norm1000_mode() -> None:
    # x = v * 10000 / 1000 = 10 v, y = v * 6000 / 1000 = 6 v; the seen size does not matter.
    box = planner_box_to_full([500, 500, 750, 1000], "norm1000", OVERVIEW, OVERVIEW_SEEN)
    _approx_box(box, (5000, 3000, 7500, 6000))
    view = ViewSpec(1, PixelBox(4000, 2000, 5024, 2768), 512, 384)
    # 4000 + 250 * 1.024 = 4256, 2000 + 250 * 0.768 = 2192, 4000 + 1024 = 5024, 2000 + 768 = 2768
    box = planner_box_to_full([250, 250, 1000, 1000], "norm1000", view, (504, 392))
    _approx_box(box, (4256, 2192, 5024, 2768))


def test_norm1_mode() -> None:
    # x = v * 10000, y = v * 6000: 0.25 -> 2500, 0.5 -> 3000, 0.3 -> 3000, 0.6 -> 3600.
    box = planner_box_to_full([0.25, 0.5, 0.3, 0.6], "norm1", OVERVIEW)
    _approx_box(box, (2500, 3000, 3000, 3600))


def test_box_errors() -> None:
    with pytest.raises(BoxError, match="four numbers"):
        planner_box_to_full([1, 2, 3], "pixels", OVERVIEW, OVERVIEW_SEEN)
    with pytest.raises(BoxError, match="Seen size"):
        planner_box_to_full([1, 2, 3, 4], "pixels", OVERVIEW, (0, 308))
    with pytest.raises(ValueError, match="coordinate mode"):
        planner_box_to_full([1, 2, 3, 4], "norm", OVERVIEW, OVERVIEW_SEEN)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.tuples(*[st.floats(0, 1, allow_nan=False)] * 4),
    st.integers(1, 5000),
    st.integers(1, 5000),
    st.integers(64, 2048),
    st.integers(64, 2048),
)
def test_modes_agree(frac, ox, oy, rw, rh) -> None:
    """The same relative box gives the same full-resolution box in every mode."""
    view = ViewSpec(3, PixelBox(ox, oy, ox + rw, oy + rh), max(1, rw // 3), max(1, rh // 3))
    seen = seen_size(view.width, view.height)
    fx1, fy1, fx2, fy2 = frac
    by_pixels = planner_box_to_full(
        [fx1 * seen[0], fy1 * seen[1], fx2 * seen[0], fy2 * seen[1]], "pixels", view, seen
    )
    by_1000 = planner_box_to_full([1000 * v for v in frac], "norm1000", view, seen)
    by_1 = planner_box_to_full(list(frac), "norm1", view, seen)
    expected = [ox + fx1 * rw, oy + fy1 * rh, ox + fx2 * rw, oy + fy2 * rh]
    for box in (by_pixels, by_1000, by_1):
        assert box.as_list() == pytest.approx(expected, rel=1e-9, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# zoom_region: the minimum-crop rule
# ---------------------------------------------------------------------------------------------


def test_zoom_region_centres_a_small_box() -> None:
    # Box 5000..5100 x 3000..3050, centre (5050, 3025); crop 512 x 512 centred there:
    # x 5050 - 256 = 4794 .. 5306, y 3025 - 256 = 2769 .. 3281.
    crop, warning = zoom_region(PixelBox(5000, 3000, 5100, 3050), IMAGE_W, IMAGE_H)
    _approx_box(crop, (4794, 2769, 5306, 3281))
    assert warning is None


def test_zoom_region_shifts_inside_the_image() -> None:
    # Centre (9945, 5970): 9945 - 256 = 9689 would end at 10201 > 10000 -> shifted to
    # 10000 - 512 = 9488; y: 5970 - 256 = 5714 -> 6000 - 512 = 5488.
    crop, _ = zoom_region(PixelBox(9900, 5950, 9990, 5990), IMAGE_W, IMAGE_H)
    _approx_box(crop, (9488, 5488, 10000, 6000))


def test_zoom_region_keeps_a_large_extent() -> None:
    # x extent 1000 >= 512 is kept; y extent 300 grows to 512 around 1150: 894 .. 1406.
    crop, _ = zoom_region(PixelBox(1000, 1000, 2000, 1300), IMAGE_W, IMAGE_H)
    _approx_box(crop, (1000, 894, 2000, 1406))


def test_zoom_region_small_image_and_clipping() -> None:
    crop, _ = zoom_region(PixelBox(10, 10, 20, 20), 300, 200)
    _approx_box(crop, (0, 0, 300, 200))  # the crop cannot exceed the image
    # Partly outside: clipped to 0..100 first (with a warning), centre 50 -> shifted to 0..512.
    crop, warning = zoom_region(PixelBox(-50, -50, 100, 100), IMAGE_W, IMAGE_H)
    _approx_box(crop, (0, 0, 512, 512))
    assert warning and "clipped" in warning
    # The planner's frame feeds straight in: overview box -> full res -> crop.
    full = planner_box_to_full([252, 154, 260, 160], "pixels", OVERVIEW, OVERVIEW_SEEN)
    crop, _ = zoom_region(full, IMAGE_W, IMAGE_H, min_side=512)
    assert crop.width == pytest.approx(512) and crop.height == pytest.approx(512)


@pytest.mark.parametrize(
    "box",
    [
        PixelBox(math.nan, 0, 1, 1),
        PixelBox(10, 10, 5, 20),
        PixelBox(3, 3, 3, 9),
        PixelBox(20_000, 0, 20_100, 10),
    ],
)
def test_zoom_region_rejects_unusable_boxes(box: PixelBox) -> None:
    with pytest.raises(BoxError):
        zoom_region(box, IMAGE_W, IMAGE_H)
