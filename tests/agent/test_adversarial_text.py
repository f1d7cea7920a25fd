"""Regular expressions over user text stay linear on adversarial input (issue #14).

Every compiled pattern held by the modules of :data:`MODULES` (found by walking their globals,
so a new table row is covered without touching this file) gets 100 KB adversarial texts:
whitespace runs, digit runs, separators, repeated keywords and the inputs of the issue. The time
bounds are hang guards, not benchmarks: before the fix a 5 KB text already took over 10 s for
several patterns, and a linear pattern takes milliseconds; ``benchmarks/adversarial_text.py``
measures.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from zoomearth.agent import parsing, protocol
from zoomearth.agent.backends import rules
from zoomearth.agent.backends.rules import (
    MAX_QUESTION_CHARS,
    RulesPlanner,
    find_coordinates,
    find_locations,
    find_tool_intents,
)
from zoomearth.agent.base import PlanRequest
from zoomearth.agent.parsing import parse_response
from zoomearth.config import Settings
from zoomearth.geometry import PixelBox, ViewSpec

#: Modules whose module-level patterns read the question or text that quotes it.
MODULES: tuple[ModuleType, ...] = (rules, parsing, protocol)
SIZE = 100_000
PATTERN_BOUND_S = 2.0  # one pattern, one 100 KB text (a linear pattern: well under 0.2 s)
READER_BOUND_S = 10.0  # a whole reader (dozens of patterns) on one 100 KB text
PLAN_BOUND_S = 2.0  # a whole plan call (reads at most MAX_QUESTION_CHARS)

WIDTH, HEIGHT = 10240, 8192
GEO_INFO = {
    "width": WIDTH,
    "height": HEIGHT,
    "crs": "EPSG:32633",
    "transform": [0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0],
}
BOX = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
TOOLS = [
    {"name": "cloud_removal", "parameters": {"type": "object", "properties": {"box": BOX}}},
    {"name": "denoise", "parameters": {"type": "object", "properties": {}}},
    {
        "name": "segmentation",
        "parameters": {
            "type": "object",
            "properties": {"box": BOX, "prompt": {"type": "string"}},
            "required": ["prompt"],
        },
    },
    {
        "name": "edit",
        "parameters": {
            "type": "object",
            "properties": {"instruction": {"type": "string"}},
            "required": ["instruction"],
        },
    },
]


def _walk(name: str, value: Any, depth: int = 0) -> Iterator[tuple[str, re.Pattern[str]]]:
    if isinstance(value, re.Pattern):
        if isinstance(value.pattern, str):
            yield name, value
        return
    if depth >= 4 or isinstance(value, str | bytes | type):
        return
    if isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _walk(f"{name}[{i}]", item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(f"{name}[{key!r}]", item, depth + 1)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _walk(f"{name}.{f.name}", getattr(value, f.name), depth + 1)


def module_patterns() -> dict[str, re.Pattern[str]]:
    """Every compiled ``str`` pattern of :data:`MODULES` (inside tuples, dicts, dataclasses)."""
    out: dict[str, re.Pattern[str]] = {}
    for module in MODULES:
        short = module.__name__.rsplit(".", 1)[-1]
        for attr, value in vars(module).items():
            if attr.startswith("__") or isinstance(value, ModuleType):
                continue
            for name, pattern in _walk(f"{short}.{attr}", value):
                if pattern not in out.values():
                    out[name] = pattern
    return out


PATTERNS = module_patterns()


def _fill(unit: str, prefix: str = "", size: int = SIZE) -> str:
    body = size - len(prefix)
    return prefix + (unit * (body // len(unit) + 1))[:body]


ADVERSARIAL: dict[str, str] = {
    "spaces": " " * SIZE,  # the issue: " " * 1000 took 17 s
    "box+spaces": _fill(" ", "box"),  # the issue: "box" + " " * 500 took 2.2 s
    "pixel+spaces": _fill(" ", "pixel"),
    "at+spaces": _fill(" ", "at"),
    "from+spaces": _fill(" ", "from"),
    "lon+spaces": _fill(" ", "lon"),
    "is+spaces": _fill(" ", "is"),
    "mixed-whitespace": _fill(" \t\n\r"),
    "digits": _fill("1"),
    "digits-dots": _fill("1."),
    "digit-space": _fill("1 "),
    "digit-comma": _fill("1,"),
    "number-pairs": _fill("12.5, 34 "),
    "hemisphere": _fill("12.5N "),
    "degrees": _fill("1° "),
    "separators": _fill(",;:=-_./"),
    "paren-space": _fill("( "),
    "bracket-number": _fill("[1, "),
    "box-repeated": _fill("box "),
    "pixel-repeated": _fill("pixel "),
    "lon-repeated": _fill("lon "),
    "lat-repeated": _fill("lat "),
    "keyed-repeated": _fill("x1= "),
    "open-paren-repeated": _fill("("),
    "at-number-repeated": _fill("at 1, "),
    "lonlat-issue": _fill("lon 12.34 lat 45.6 "),  # the issue: froze the server until SIGKILL
    "location-words": _fill("top left right "),
    "intent-words": _fill("please segment the "),
    "is-letters": _fill("a", "is "),
    "letter-space": _fill("a "),
    "tag-spaces": _fill("<" + " " * 16),
}


def _timed(call: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    call(*args)
    return time.perf_counter() - t0


def _consume(pattern: re.Pattern[str], text: str) -> None:
    for _ in pattern.finditer(text):
        pass


def make_request(question: str) -> PlanRequest:
    return PlanRequest(
        question=question,
        overview_id=0,
        transcript=[],
        views={0: ViewSpec(0, PixelBox(0, 0, WIDTH, HEIGHT), 512, 410)},
        render=lambda _vid: None,  # type: ignore[arg-type,return-value]
        tools=TOOLS,
        scene_info=dict(GEO_INFO),
    )


def plan_text(question: str) -> str:
    return RulesPlanner(Settings()).plan(make_request(question)).text


# ---------------------------------------------------------------------------------------------
# Every pattern
# ---------------------------------------------------------------------------------------------


def test_the_walk_finds_every_table() -> None:
    names = set(PATTERNS)
    for i, rule in enumerate(rules.LOCATION_PHRASES):
        assert f"rules.LOCATION_PHRASES[{i}].pattern" in names, rule.name
    for i in range(len(rules.NEGATIVE_PHRASES)):
        assert f"rules.NEGATIVE_PHRASES[{i}]" in names
    for i in range(len(rules._BOX_PATTERNS)):
        assert f"rules._BOX_PATTERNS[{i}]" in names
    for i in range(len(rules._LONLAT_PATTERNS)):
        assert f"rules._LONLAT_PATTERNS[{i}][0]" in names
    for i in range(len(rules._INTENT_PATTERNS)):
        assert f"rules._INTENT_PATTERNS[{i}][1]" in names
    assert {"rules._HEMI_RE", "rules._KEYED_RE", "rules._EPSG_RE", "rules._YES_NO_RE"} <= names
    assert "protocol._STRUCTURE_RE" in names and "parsing._TAG_RE" in names


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_pattern_is_linear_on_adversarial_text(name: str) -> None:
    pattern = PATTERNS[name]
    slow = {}
    for text_name, text in ADVERSARIAL.items():
        seconds = _timed(_consume, pattern, text)
        if seconds > PATTERN_BOUND_S:
            slow[text_name] = round(seconds, 2)
    assert not slow, f"{name} is not linear on 100 KB inputs: {slow}"


# ---------------------------------------------------------------------------------------------
# Whole readers and whole plan calls
# ---------------------------------------------------------------------------------------------


#: The texts each whole reader gets (each reader runs dozens of patterns: a subset keeps it quick).
READER_TEXTS = (
    "spaces", "box+spaces", "pixel+spaces", "at+spaces", "digits", "digit-comma", "number-pairs",
    "lonlat-issue", "location-words", "intent-words", "letter-space", "at-number-repeated",
)  # fmt: skip


@pytest.mark.timeout(300)
@pytest.mark.parametrize("reader", [find_coordinates, find_locations, find_tool_intents])
def test_readers_are_linear_on_adversarial_text(reader: Any) -> None:
    slow = {}
    for text_name in READER_TEXTS:
        text = ADVERSARIAL[text_name]
        seconds = _timed(reader, text)
        if seconds > READER_BOUND_S:
            slow[text_name] = round(seconds, 2)
    assert not slow, f"{reader.__name__} on 100 KB inputs: {slow}"


@pytest.mark.timeout(120)
def test_plan_is_bounded_on_adversarial_text() -> None:
    planner = RulesPlanner(Settings())
    planner.plan(make_request("lon 12.34 lat 45.6"))  # the lazy rasterio import, untimed
    questions = dict(ADVERSARIAL)
    questions["lonlat-issue-380kb"] = "lon 12.34 lat 45.6 " * 20000
    slow = {}
    for text_name, text in questions.items():
        seconds = _timed(planner.plan, make_request(text))
        if seconds > PLAN_BOUND_S:
            slow[text_name] = round(seconds, 2)
    assert not slow, f"RulesPlanner.plan on long inputs: {slow}"


# ---------------------------------------------------------------------------------------------
# The question cap
# ---------------------------------------------------------------------------------------------


def test_long_question_is_cut_with_a_note_the_user_sees() -> None:
    question = "lon 12.34 lat 45.6 " * 20000
    text = plan_text(question)
    assert f"{len(question):,} characters long" in text
    assert f"read only its first {MAX_QUESTION_CHARS:,} characters" in text
    parsed = parse_response(text)
    assert parsed.answer is not None and "ignored the rest" in parsed.answer
    # The lon/lat points beyond the limit are not read: 8 mentions at most, none past the cap.
    mentions = find_coordinates(question[:MAX_QUESTION_CHARS])
    assert mentions and all(m.start < MAX_QUESTION_CHARS for m in mentions)


def test_note_in_the_thinking_when_the_question_is_actionable() -> None:
    question = "Segment the buildings in the top-left corner. " + "x " * MAX_QUESTION_CHARS
    text = plan_text(question)
    parsed = parse_response(text)
    assert parsed.zooms and parsed.tool_calls
    assert "ignored the rest" in text


def test_short_question_has_no_note() -> None:
    question = "box 100,200,612,712 " + "a" * (MAX_QUESTION_CHARS - 40)
    assert len(question) <= MAX_QUESTION_CHARS
    assert "ignored the rest" not in plan_text(question)


def test_a_number_cut_at_the_limit_is_not_read() -> None:
    filler = "a " * ((MAX_QUESTION_CHARS - 20) // 2)
    question = filler + "box 100,200,612,71234567"  # the last number straddles the limit
    assert len(filler) < MAX_QUESTION_CHARS < len(question)
    text = plan_text(question)
    assert "7123" not in text  # no box with a truncated coordinate
    assert "ignored the rest" in text


# ---------------------------------------------------------------------------------------------
# The forms read are those of the former (greedy) patterns
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("box 100,200,612,712", [("box", "pixel", (100.0, 200.0, 612.0, 712.0))]),
        ("box:\n [ 100 ;  200 ; 612 ; 712 ]", [("box", "pixel", (100.0, 200.0, 612.0, 712.0))]),
        ("bbox 100 200 612 712", [("box", "pixel", (100.0, 200.0, 612.0, 712.0))]),
        ("[ 1.5 , -2 , +3. , .5 ]", [("box", "pixel", (1.5, -2.0, 3.0, 0.5))]),
        ("from ( 1 , 2 ) to ( 3 , 4 )", [("box", "pixel", (1.0, 2.0, 3.0, 4.0))]),
        ("pixel at: ( 1200 , 3400 )", [("point", "pixel", (1200.0, 3400.0))]),
        ("  ( 1200 ,   3400 )   px", [("point", "pixel", (1200.0, 3400.0))]),
        ("col = 5 , and row = 6", [("point", "pixel", (5.0, 6.0))]),
        ("x = 5 , and y = 6", [("point", "xy", (5.0, 6.0))]),
        ("centred   on ( 5 , 6 )", [("point", "xy", (5.0, 6.0))]),
        ("lon: 12.34 ° , and lat = 45.6 °", [("point", "lonlat", (12.34, 45.6))]),
        ("latitude 45.6, longitude 12.34", [("point", "lonlat", (12.34, 45.6))]),
        ("lat / lon : ( 45.6 , 12.34 )", [("point", "lonlat", (12.34, 45.6))]),
        (" ( 45.6 , 12.34 ) ( lat , lon )", [("point", "lonlat", (12.34, 45.6))]),
        ("45.6 ° N ,  12.34 ° E", [("point", "lonlat", (12.34, 45.6))]),
        ("easting: 500123 m, and northing 4999870", [("point", "map", (500123.0, 4999870.0))]),
        ("x1 = 1 y1: 2 x2 =3 y2=4", [("box", "pixel", (1.0, 2.0, 3.0, 4.0))]),
    ],
)
def test_coordinate_forms_are_still_read(question: str, expected: list[tuple]) -> None:
    got = [(m.kind, m.frame, m.values) for m in find_coordinates(question)]
    assert got == expected


def test_a_match_starts_at_its_first_word_not_in_whitespace_before_it() -> None:
    (mention,) = find_coordinates("look   1200, 3400 px")
    assert mention.start == 7 and mention.phrase == "1200, 3400 px"
    # Text blanked by an earlier match is not part of a later match's phrase.
    mentions = find_coordinates("lon 12.34 lat 45.6 5, 6 px")
    assert [(m.phrase, m.start) for m in mentions] == [("lon 12.34 lat 45.6", 0), ("5, 6 px", 19)]


def test_numbers_inside_digit_runs_read_as_before() -> None:
    # A number starts only where no digit precedes it; the forms read do not change.
    assert [m.values for m in find_coordinates("1.2.3, 4 px")] == [(2.3, 4.0)]
    assert [m.values for m in find_coordinates("1.2 3.4, 5 px")] == [(3.4, 5.0)]
    assert [m.values for m in find_coordinates("box -1,+2,.5,3.")] == [(-1.0, 2.0, 0.5, 3.0)]
