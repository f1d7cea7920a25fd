"""Tests for zoomearth.agent.text.coordinates: coordinates read from text, and map -> pixel."""

from __future__ import annotations

import pytest

from zoomearth.agent.text.coordinates import (
    CoordinateMention,
    _georef,
    _map_to_pixel,
    _reproject,
    find_coordinates,
)

TRANSFORM = (0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)  # 0.5 m pixels, UTM 33N


@pytest.mark.parametrize(
    ("text", "kind", "frame", "values"),
    [
        ("box 100,200,612,712", "box", "pixel", (100, 200, 612, 712)),
        ("the crop [100, 200, 612, 712]", "box", "pixel", (100, 200, 612, 712)),
        ("x1=100 y1=200 x2=612 y2=712", "box", "pixel", (100, 200, 612, 712)),
        ("from (100, 200) to (612, 712)", "box", "pixel", (100, 200, 612, 712)),
        ("pixel (1200, 3400)", "point", "pixel", (1200, 3400)),
        ("col=1200 row=3400", "point", "pixel", (1200, 3400)),
        ("(1200, 3400) px", "point", "pixel", (1200, 3400)),
        ("lon 12.34 lat 45.6", "point", "lonlat", (12.34, 45.6)),
        ("lat 45.6, lon 12.34", "point", "lonlat", (12.34, 45.6)),
        ("45.6N 12.34E", "point", "lonlat", (12.34, 45.6)),
        ("45.6, 12.34 (lat, lon)", "point", "lonlat", (12.34, 45.6)),
        ("500123E 4999870N", "point", "map", (500123, 4999870)),
        ("easting 500123 northing 4999870", "point", "map", (500123, 4999870)),
        ("at 500123.5, 4999870", "point", "xy", (500123.5, 4999870)),
    ],
)
def test_forms(text: str, kind: str, frame: str, values: tuple[float, ...]) -> None:
    (mention,) = find_coordinates(text)
    assert (mention.kind, mention.frame) == (kind, frame)
    assert mention.values == tuple(float(v) for v in values)
    assert mention.crs is None


def test_a_named_crs_makes_bare_points_map_points_of_that_crs() -> None:
    (mention,) = find_coordinates("at 500123.5, 4999870 in EPSG:32633")
    assert mention == CoordinateMention(
        "point", "map", (500123.5, 4999870.0), "at 500123.5, 4999870", 0, "EPSG:32633"
    )


def test_each_number_is_used_once_and_mentions_are_ordered() -> None:
    found = find_coordinates("pixel (5, 6) then box 1,2,3,4 then lon 12.34 lat 45.6")
    assert [(m.kind, m.frame) for m in found] == [
        ("point", "pixel"),
        ("box", "pixel"),
        ("point", "lonlat"),
    ]
    assert [m.start for m in found] == sorted(m.start for m in found)


def test_at_most_eight_mentions() -> None:
    text = " ".join(f"pixel ({i}, {i})" for i in range(20))
    assert len(find_coordinates(text)) == 8


def test_no_coordinates() -> None:
    assert find_coordinates("How many ships are in the harbour?") == []


def test_georef_reads_scene_info() -> None:
    info = {"crs": "EPSG:32633", "transform": list(TRANSFORM)}
    assert _georef(info) == ("EPSG:32633", TRANSFORM)
    assert _georef({**info, "georeferenced": False}) == (None, None)
    assert _georef({"crs": "EPSG:32633", "transform": None}) == ("EPSG:32633", None)
    assert _georef({"transform": ["a", 0, 0, 0, 0, 0]}) == (None, None)


def test_map_to_pixel_uses_the_affine_inverse_and_refuses_degenerate_transforms() -> None:
    assert _map_to_pixel(500100.0, 4999900.0, TRANSFORM) == pytest.approx((200.0, 200.0))
    assert _map_to_pixel(500100.0, 4999900.0, (0.0, 0.0, 500000.0, 0.0, -0.5, 5e6)) is None


def test_reproject_lonlat_to_utm_and_unknown_crs() -> None:
    x, y = _reproject(15.0, 45.0, "EPSG:4326", "EPSG:32633")
    assert x == pytest.approx(500000.0, abs=1e-3) and 4.9e6 < y < 5.0e6
    with pytest.raises(ValueError):
        _reproject(15.0, 45.0, "EPSG:4326", "EPSG:999999")
