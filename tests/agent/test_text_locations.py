"""Tests for zoomearth.agent.text.locations: location phrases and whole-image phrases, alone."""

from __future__ import annotations

import re

import pytest

from zoomearth.agent.text.locations import (
    LOCATION_PHRASES,
    NEGATIVE_PHRASES,
    WHOLE_IMAGE_PATTERN,
    LocationMatch,
    PhraseRule,
    find_locations,
    find_whole_image,
)
from zoomearth.agent.text.masking import _mask


def test_table_rows_are_named_compiled_and_inside_the_unit_square() -> None:
    names = [rule.name for rule in LOCATION_PHRASES]
    assert len(names) == len(set(names))
    for rule in LOCATION_PHRASES:
        assert isinstance(rule, PhraseRule)
        assert isinstance(rule.pattern, re.Pattern) and rule.pattern.flags & re.I
        x1, y1, x2, y2 = rule.region
        assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0, rule.name
    assert all(isinstance(p, re.Pattern) for p in NEGATIVE_PHRASES)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("zoom on the top-right corner", "top-right"),
        ("the upper left quadrant", "top-left"),
        ("look at the SE", "bottom-right"),
        ("the west-central area", "centre-left"),
        ("the bottom half", "bottom half"),
        ("the left-most strip", "left edge"),
        ("far north", "top edge"),
        ("in the middle", "centre"),
        ("on the right-hand side", "right"),
        ("the eastern part", "right"),
    ],
)
def test_phrases_name_their_region(text: str, name: str) -> None:
    (match,) = find_locations(text)
    assert match.name == name
    assert text[match.start :].startswith(match.phrase)


def test_matches_are_ordered_unique_and_keep_the_text_as_written() -> None:
    text = "Zoom on the TOP-RIGHT corner, then the left edge, then the top-right again."
    found = find_locations(text)
    assert [m.name for m in found] == ["top-right", "left edge"]
    assert found[0] == LocationMatch("top-right", (0.5, 0.0, 1.0, 0.5), "TOP-RIGHT corner", 12)


def test_a_corner_is_not_also_read_as_its_sides() -> None:
    assert [m.name for m in find_locations("the top right")] == ["top-right"]


@pytest.mark.parametrize(
    "text",
    [
        "a right-angled corner",
        "what is left?",
        "the left of the road",
        "top speed of the car",
        "the city centre",
        "turn left at the junction",
        "the abbreviation ne is lower case",
    ],
)
def test_negative_phrases_name_no_region(text: str) -> None:
    assert find_locations(text) == []


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("denoise the entire scene please", "entire scene"),
        ("segment roads everywhere", "everywhere"),
        ("clouds all over the image", "all over the image"),
        ("the whole image", "whole image"),
    ],
)
def test_whole_image_phrases(text: str, phrase: str) -> None:
    assert find_whole_image(text) == phrase
    assert WHOLE_IMAGE_PATTERN.search(text) is not None


def test_no_whole_image_phrase() -> None:
    assert find_whole_image("the whole of the harbour") is None


def test_mask_blanks_spans_in_one_pass() -> None:
    assert _mask("abcdef", []) == "abcdef"
    assert _mask("abcdef", [(0, 1), (2, 4)]) == " b  ef"
    assert len(_mask("x" * 100, [(10, 90)])) == 100
