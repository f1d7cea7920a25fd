"""Box frames and conversions: hand-computed cases and hypothesis round trips."""

from __future__ import annotations

import math

import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from zoomearth.errors import BoxError
from zoomearth.geometry import (
    MapBox,
    PixelBox,
    ViewBox,
    ViewSpec,
    full_to_map,
    full_to_view,
    map_to_full,
    min_crop_xyxy,
    parse_box,
    validate_box,
    view_to_full,
)

coord = st.floats(min_value=-1e5, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_view_to_full_hand_computed():
    # A 512x256 overview of a 10,000 x 5,000 image: 19.53125 px per view pixel.
    view = ViewSpec(0, PixelBox(0, 0, 10_000, 5_000), 512, 256)
    box = view_to_full(ViewBox(0, 256, 128, 512, 256), view)
    assert box == PixelBox(5_000, 2_500, 10_000, 5_000)


def test_view_to_full_offset_region():
    # A crop view of region (1000, 2000)-(2024, 3024) shown at 512 px: scale 2.
    view = ViewSpec(3, PixelBox(1000, 2000, 2024, 3024), 512, 512)
    assert view_to_full(ViewBox(3, 10, 20, 30, 40), view) == PixelBox(1020, 2040, 1060, 2080)


def test_view_id_mismatch_is_an_error():
    view = ViewSpec(1, PixelBox(0, 0, 10, 10), 10, 10)
    with pytest.raises(BoxError, match="view 2"):
        view_to_full(ViewBox(2, 0, 0, 1, 1), view)


@settings(max_examples=300)
@given(
    st.tuples(coord, coord, coord, coord),
    st.tuples(st.integers(0, 50_000), st.integers(0, 50_000)),
    st.tuples(st.integers(1, 50_000), st.integers(1, 50_000)),
    st.tuples(st.integers(1, 4096), st.integers(1, 4096)),
)
def test_view_round_trip(b, origin, extent, size):
    region = PixelBox(origin[0], origin[1], origin[0] + extent[0], origin[1] + extent[1])
    view = ViewSpec(7, region, size[0], size[1])
    box = PixelBox(*b)
    back = view_to_full(full_to_view(box, view), view)
    for a, c in zip(box.as_list(), back.as_list(), strict=True):
        assert math.isclose(a, c, rel_tol=1e-9, abs_tol=1e-6)


@settings(max_examples=300)
@given(
    st.tuples(coord, coord, coord, coord),
    st.floats(0.1, 100),
    st.floats(-1e6, 1e6),
    st.floats(-1e6, 1e7),
)
def test_map_round_trip(b, res, x0, y0):
    x1, y1, x2, y2 = b
    box = PixelBox(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    transform = Affine(res, 0, x0, 0, -res, y0)
    back = map_to_full(full_to_map(box, transform, "EPSG:32633"), transform)
    for a, c in zip(box.as_list(), back.as_list(), strict=True):
        assert math.isclose(a, c, rel_tol=1e-9, abs_tol=1e-5)


def test_full_to_map_north_up():
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000)
    m = full_to_map(PixelBox(0, 0, 100, 200), transform, "EPSG:32633")
    assert m == MapBox(500_000, 4_999_900, 500_050, 5_000_000, "EPSG:32633")


@pytest.mark.parametrize(
    ("box", "size", "expected"),
    [
        # small box in the middle: 512 centred on it
        (PixelBox(1000, 1000, 1010, 1010), (5000, 5000), PixelBox(749, 749, 1261, 1261)),
        # near the top-left corner: shifted inside, not shrunk
        (PixelBox(0, 0, 10, 10), (5000, 5000), PixelBox(0, 0, 512, 512)),
        # near the bottom-right corner
        (PixelBox(4990, 4990, 5000, 5000), (5000, 5000), PixelBox(4488, 4488, 5000, 5000)),
        # larger than the minimum: keeps its extent
        (PixelBox(100, 100, 900, 300), (5000, 5000), PixelBox(100, 0, 900, 512)),
        # image smaller than the minimum: whole side
        (PixelBox(10, 10, 20, 20), (300, 200), PixelBox(0, 0, 300, 200)),
    ],
)
def test_min_crop_hand_computed(box, size, expected):
    got = min_crop_xyxy(box, *size, min_side=512)
    assert got.as_list() == pytest.approx(expected.as_list())


@settings(max_examples=500)
@given(
    st.tuples(coord, coord, st.floats(0, 5000), st.floats(0, 5000)),
    st.integers(1, 40_000),
    st.integers(1, 40_000),
    st.integers(1, 2048),
)
def test_min_crop_properties(b, w, h, min_side):
    box = PixelBox(b[0], b[1], b[0] + b[2], b[1] + b[3])
    crop = min_crop_xyxy(box, w, h, min_side)
    eps = 1e-6 * max(w, h, abs(b[0]), abs(b[1]))
    assert -eps <= crop.x1 and crop.x2 <= w + eps and -eps <= crop.y1 and crop.y2 <= h + eps
    assert crop.width >= min(min_side, w) - 1e-6
    assert crop.height >= min(min_side, h) - 1e-6


def test_validate_box_policy():
    assert validate_box(PixelBox(0, 0, 10, 10), 100, 100) == (PixelBox(0, 0, 10, 10), None)
    clipped, warning = validate_box(PixelBox(-5, 90, 10, 120), 100, 100)
    assert clipped == PixelBox(0, 90, 10, 100)
    assert "clipped" in warning
    for bad, msg in [
        (PixelBox(10, 0, 5, 10), "inverted"),
        (PixelBox(0, 0, 0, 10), "empty"),
        (PixelBox(float("nan"), 0, 5, 5), "NaN"),
        (PixelBox(200, 200, 300, 300), "outside"),
        (PixelBox(-50, -50, -10, -10), "outside"),
    ]:
        with pytest.raises(BoxError, match=msg):
            validate_box(bad, 100, 100)


def test_parse_box():
    assert parse_box("1,2,3,4") == PixelBox(1, 2, 3, 4)
    assert parse_box("[1.5, 2, 3, 4]") == PixelBox(1.5, 2, 3, 4)
    for bad in ["1,2,3", "1,2,3,4,5", "a,b,c,d", ""]:
        with pytest.raises(BoxError, match="four numbers"):
            parse_box(bad)


def test_iou():
    a = PixelBox(0, 0, 10, 10)
    assert a.iou(a) == 1.0
    assert a.iou(PixelBox(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert a.iou(PixelBox(10, 10, 20, 20)) == 0.0
