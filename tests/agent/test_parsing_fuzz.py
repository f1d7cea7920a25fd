"""Property tests for zoomearth.agent.parsing: valid replies round-trip, damaged ones do no harm.

The strategies build valid planner replies (think text with zoom objects inline, in fenced blocks or
in lists; tool calls; an answer), then damage them the ways models do: dropped, duplicated or
unclosed tags, corrupted JSON, trailing commas, single quotes, numbers as strings, 2- or 5-number
boxes, inverted boxes, NaN, truncation, random insertions. Megabytes of garbage are parsed too.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoomearth.agent import (
    ParsedResponse,
    Problem,
    ProblemCode,
    ToolCallRequest,
    ZoomRequest,
    parse_response,
    resolve_turn,
)
from zoomearth.agent.parsing import MAX_BOXES, MAX_PROBLEMS, MAX_TOOL_CALLS

CODES = {c.value for c in ProblemCode}

# --- building valid replies -------------------------------------------------------------------

PROSE = st.text(alphabet="abcdefghij klmnopqrstuvwxyz ABCXYZ 0123456789.,;:!?-()\n", max_size=30)
# Text inside JSON strings: quotes, escapes, braces and non-ASCII included; no '<' (a tag inside a
# JSON string is still a tag).
JSON_TEXT = st.text(
    st.sampled_from("ab yz_\"\\'\n\t{}[],:#é中😀\x00\u2028")
    | st.characters(codec="utf-8", exclude_characters="<"),
    max_size=10,
)
COORD = st.one_of(
    st.integers(-100, 5000), st.floats(-1e4, 1e5, allow_nan=False, allow_infinity=False)
)
JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    JSON_TEXT,
)
ARGUMENTS = st.dictionaries(
    JSON_TEXT,
    st.recursive(
        JSON_SCALAR,
        lambda inner: st.lists(inner, max_size=2) | st.dictionaries(JSON_TEXT, inner, max_size=2),
        max_leaves=3,
    ),
    max_size=3,
)
TOOL_NAME = st.sampled_from(["cloud_removal", "denoise", "segmentation", "edit"]) | st.text(
    alphabet="abcxyz_", min_size=1, max_size=8
)
ANSWER = (
    st.text(st.sampled_from("abc XYZ 12.\n\t") | st.characters(exclude_characters="<"), max_size=12)
    .map(str.strip)
    .filter(bool)
)


@dataclass(frozen=True)
class Zoom:
    box: tuple[float, float, float, float]
    label: str | None
    view: int | None

    def obj(self) -> dict[str, Any]:
        d: dict[str, Any] = {"bbox_2d": list(self.box)}
        if self.label is not None:
            d["label"] = self.label
        if self.view is not None:
            d["view"] = self.view
        return d


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]
    as_string: bool

    def render(self) -> str:
        args: Any = json.dumps(self.arguments) if self.as_string else self.arguments
        return "<tool_call>" + json.dumps({"name": self.name, "arguments": args}) + "</tool_call>"


@dataclass(frozen=True)
class Reply:
    text: str
    zooms: tuple[Zoom, ...]
    calls: tuple[Call, ...]
    answer: str | None


zooms_st = st.lists(
    st.builds(
        Zoom,
        box=st.tuples(COORD, COORD, COORD, COORD),
        label=st.none() | JSON_TEXT,
        view=st.none() | st.integers(0, 20),
    ),
    max_size=3,
    unique_by=lambda z: (tuple(float(v) for v in z.box), z.label, z.view),
)


calls_st = st.lists(
    st.builds(Call, name=TOOL_NAME, arguments=ARGUMENTS, as_string=st.booleans()), max_size=2
)
LAYOUTS = ("inline", "list", "fenced_list", "fenced_each")


def render_reply(
    zooms: list[Zoom],
    calls: list[Call],
    answer: str | None,
    *,
    layout: str,
    outside: bool,
    indent: int | None,
    prose: list[str],
) -> Reply:
    """Write a valid reply; ``prose`` supplies the filler text (at least len(zooms) + 2 pieces)."""
    pieces = [prose[0]]
    objs = [json.dumps(z.obj(), indent=indent) for z in zooms]
    if zooms:
        if layout == "inline":
            for obj, filler in zip(objs, prose[1:], strict=False):
                pieces += [obj, filler]
        elif layout == "list":
            pieces.append("[" + ", ".join(objs) + "]")
        elif layout == "fenced_list":
            pieces.append("```json\n[" + ",\n".join(objs) + "]\n```")
        else:
            pieces += ["```json\n" + obj + "\n```" for obj in objs]
    think = " ".join(pieces)
    if outside and zooms:
        text = "<think>" + prose[-1] + "</think>\n" + think
    else:
        text = "<think>" + think + "</think>"
    text += "".join("\n" + c.render() for c in calls)
    if answer is not None:
        text += "\n<answer>" + answer + "</answer>"
    return Reply(text, tuple(zooms), tuple(calls), answer)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    """Valid replies with every part drawn by hypothesis (rich, shrinkable, slower)."""
    zooms = draw(zooms_st)
    return render_reply(
        zooms,
        draw(calls_st),
        draw(st.none() | ANSWER),
        layout=draw(st.sampled_from(LAYOUTS)),
        outside=draw(st.booleans()),
        indent=draw(st.none() | st.just(1)),
        prose=[draw(PROSE) for _ in range(len(zooms) + 2)],
    )


# Characters for the seed-driven generator below: JSON-string troublemakers, no '<'.
TRICKY = "ab yz_\"\\'\n\t{}[],:#é中😀\x00\u2028 "
PROSE_CHARS = "abcdefghij klmnopqrstuvwxyz ABCXYZ 0123456789.,;:!?-()\n"
ARG_VALUES = [
    0.5,
    3,
    -7,
    2**60,
    1e-9,
    None,
    True,
    False,
    "nlm",
    "a\\b",
    [1, 2, 3, 4],
    {"k": [None]},
]


def random_reply(rnd: random.Random) -> Reply:
    """A valid reply drawn with ``random`` (about 50 times cheaper than :func:`replies`)."""

    def word(chars: str, k: int) -> str:
        return "".join(rnd.choices(chars, k=rnd.randint(0, k)))

    def coord() -> float | int:
        return rnd.choice(
            [rnd.randint(-100, 5000), rnd.uniform(-1e4, 1e5), rnd.randint(0, 999) / 7]
        )

    zooms: list[Zoom] = []
    seen = set()
    for _ in range(rnd.randint(0, 3)):
        z = Zoom(
            (coord(), coord(), coord(), coord()),
            rnd.choice([None, word(TRICKY, 8)]),
            rnd.choice([None, rnd.randint(0, 20)]),
        )
        key = (tuple(float(v) for v in z.box), z.label, z.view)
        if key not in seen:
            seen.add(key)
            zooms.append(z)
    calls = [
        Call(
            rnd.choice(["cloud_removal", "denoise", "segmentation", "edit"]),
            {
                rnd.choice(["strength", "bbox_2d", "method", word(TRICKY, 5)]): rnd.choice(
                    [*ARG_VALUES, word(TRICKY, 6)]
                )
                for _ in range(rnd.randint(0, 3))
            },
            rnd.random() < 0.3,
        )
        for _ in range(rnd.randint(0, 2))
    ]
    answer = word(TRICKY + "XYZ", 12).strip() or None if rnd.random() < 0.6 else None
    return render_reply(
        zooms,
        calls,
        answer,
        layout=rnd.choice(LAYOUTS),
        outside=rnd.random() < 0.3,
        indent=rnd.choice([None, None, 1]),
        prose=[word(PROSE_CHARS, 30) for _ in range(len(zooms) + 2)],
    )


def check_round_trip(reply: Reply, parsed: ParsedResponse) -> None:
    assert parsed.problems == ()
    assert [(z.box, z.label, z.view) for z in parsed.zooms] == [
        (tuple(float(v) for v in z.box), z.label, z.view) for z in reply.zooms
    ]
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        (c.name, c.arguments) for c in reply.calls
    ]
    assert parsed.answer == reply.answer
    assert parsed.answer_closed is (reply.answer is not None)


# --- invariants -------------------------------------------------------------------------------


def check_invariants(parsed: ParsedResponse) -> None:
    assert isinstance(parsed, ParsedResponse)
    assert isinstance(parsed.think, str)
    assert isinstance(parsed.zooms, tuple) and len(parsed.zooms) <= MAX_BOXES
    for z in parsed.zooms:
        assert isinstance(z, ZoomRequest)
        assert isinstance(z.box, tuple) and len(z.box) == 4
        assert all(type(v) is float and math.isfinite(v) for v in z.box)
        assert z.label is None or isinstance(z.label, str)
        assert z.view is None or (type(z.view) is int)
        assert isinstance(z.source, str)
    assert len({(z.box, z.label, z.view) for z in parsed.zooms}) == len(parsed.zooms)
    assert isinstance(parsed.tool_calls, tuple) and len(parsed.tool_calls) <= MAX_TOOL_CALLS
    for t in parsed.tool_calls:
        assert isinstance(t, ToolCallRequest)
        assert isinstance(t.name, str) and t.name.strip()
        assert t.arguments is None or isinstance(t.arguments, dict)
        assert isinstance(t.raw_arguments, str) and isinstance(t.source, str)
        assert all(p in parsed.problems or len(parsed.problems) > MAX_PROBLEMS for p in t.problems)
    assert parsed.answer is None or (
        isinstance(parsed.answer, str) and parsed.answer and parsed.answer == parsed.answer.strip()
    )
    assert isinstance(parsed.answer_closed, bool)
    assert parsed.answer is not None or parsed.answer_closed is False
    assert isinstance(parsed.problems, tuple) and len(parsed.problems) <= MAX_PROBLEMS + 1
    for p in parsed.problems:
        assert isinstance(p, Problem) and p.code in CODES
        assert isinstance(p.message, str) and p.message
    for can_act in (True, False):
        d = resolve_turn(parsed, can_act=can_act)
        if d.actions:
            assert can_act and d.final_answer is None and d.stage_answer == parsed.answer
        elif d.final_answer is not None:
            assert d.final_answer == parsed.answer and d.problems == parsed.problems
        else:
            assert d.problems[-1].code == "no_action" and parsed.answer is None


# --- mutations --------------------------------------------------------------------------------

TAG_RE = re.compile(r"</?(?:think|answer|tool_call)>")
BOX_RE = re.compile(r'"bbox_2d": \[([^\]]*)\]')
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")
INSERTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "<|im_end|>",
    '{"bbox_2d": [', '"bbox_2d": [1, 2, 3, 4]', "]", "}", "{", ",", '"', "'", "\\", "```json\n",
    "NaN", "\x00", "\ufffd",
]  # fmt: skip


def _pick(rnd: random.Random, matches: list[re.Match[str]]) -> re.Match[str] | None:
    return rnd.choice(matches) if matches else None


def _edit_box(text: str, rnd: random.Random, edit: Any) -> str:
    m = _pick(rnd, list(BOX_RE.finditer(text)))
    if m is None:
        return text
    values = [v.strip() for v in m.group(1).split(",")]
    return text[: m.start(1)] + ", ".join(edit(values)) + text[m.end(1) :]


def mutate(text: str, rnd: random.Random, noise: str) -> str:
    kind = rnd.randrange(16)
    n = len(text)
    if kind == 0:  # drop a tag
        m = _pick(rnd, list(TAG_RE.finditer(text)))
        return text if m is None else text[: m.start()] + text[m.end() :]
    if kind == 1:  # duplicate a tag
        m = _pick(rnd, list(TAG_RE.finditer(text)))
        return text if m is None else text[: m.end()] + m.group() + text[m.end() :]
    if kind == 2:  # unclose: remove a closing tag
        m = _pick(rnd, [x for x in TAG_RE.finditer(text) if x.group().startswith("</")])
        return text if m is None else text[: m.start()] + text[m.end() :]
    if kind == 3:  # corrupt JSON: delete a structural character
        spots = [i for i, c in enumerate(text) if c in '{}[]:,"']
        i = rnd.choice(spots) if spots else 0
        return text[:i] + text[i + 1 :]
    if kind == 4:  # trailing comma
        spots = [i for i, c in enumerate(text) if c in "]}"]
        i = rnd.choice(spots) if spots else n
        return text[:i] + "," + text[i:]
    if kind == 5:  # single quotes
        return text.replace('"', "'")
    if kind == 6:  # numbers as strings
        return _edit_box(text, rnd, lambda vs: [f'"{v}"' for v in vs])
    if kind == 7:  # 2- or 5-number box
        return _edit_box(text, rnd, lambda vs: vs[:2] if rnd.random() < 0.5 else [*vs, "7"])
    if kind == 8:  # inverted box
        return _edit_box(text, rnd, lambda vs: [vs[2], vs[3], vs[0], vs[1]] if len(vs) == 4 else vs)
    if kind == 9:  # non-finite or non-numeric coordinate
        bad = rnd.choice(
            [
                "NaN",
                "Infinity",
                '"inf"',
                "-inf",
                "x1",
                "null",
                "1e999",
                "true",
                noise,
                json.dumps(noise),
            ]
        )
        return _edit_box(text, rnd, lambda vs: [bad, *vs[1:]])
    if kind == 10:  # truncate
        return text[: rnd.randrange(n + 1)]
    if kind == 11:  # insert random text
        i = rnd.randrange(n + 1)
        return text[:i] + noise + text[i:]
    if kind == 12:  # insert a protocol fragment
        i = rnd.randrange(n + 1)
        return text[:i] + rnd.choice(INSERTS) + text[i:]
    if kind == 13:  # duplicate a random slice (a repeated object, a repeated block)
        i = rnd.randrange(n + 1)
        j = min(n, i + rnd.randrange(200))
        return text[:j] + text[i:j] + text[j:]
    if kind == 14:  # corrupt a number
        m = _pick(rnd, list(NUMBER_RE.finditer(text)))
        return (
            text
            if m is None
            else text[: m.start()] + rnd.choice(["", "1.2.3", "--4", "5e"]) + text[m.end() :]
        )
    # replace a random character with a random one from the noise
    if not text:
        return noise
    i = rnd.randrange(n)
    return text[:i] + (noise[:1] or "?") + text[i + 1 :]


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies())
def test_valid_replies_round_trip(reply: Reply) -> None:
    parsed = parse_response(reply.text)
    check_round_trip(reply, parsed)
    check_invariants(parsed)
    assert parse_response(reply.text) == parsed  # pure


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**64 - 1), count=st.integers(0, 4), noise=st.text(max_size=12))
def test_mutated_replies_never_break_the_parser(seed: int, count: int, noise: str) -> None:
    """10,000 valid replies, each parsed intact (count 0) or after 1-4 random mutations."""
    rnd = random.Random(seed)
    reply = random_reply(rnd)
    text = reply.text
    for _ in range(count):
        text = mutate(text, rnd, noise)
    parsed = parse_response(text)
    check_invariants(parsed)
    if count == 0:
        check_round_trip(reply, parsed)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=replies(), seed=st.integers(0, 2**32 - 1))
def test_inverted_and_string_boxes_are_kept_as_given(reply: Reply, seed: int) -> None:
    rnd = random.Random(seed)
    edit = rnd.choice(["invert", "strings"])
    swapped = []
    for z in reply.zooms:
        x1, y1, x2, y2 = z.box
        swapped.append((x2, y2, x1, y1) if edit == "invert" else z.box)

    def rewrite(m: re.Match[str]) -> str:
        values = [v.strip() for v in m.group(1).split(",")]
        if edit == "invert":
            values = [values[2], values[3], values[0], values[1]]
        else:
            values = [f'"{v}"' for v in values]
        return '"bbox_2d": [' + ", ".join(values) + "]"

    head, sep, tail = reply.text.partition("<tool_call>")  # boxes in tool arguments stay
    parsed = parse_response(BOX_RE.sub(rewrite, head) + sep + tail)
    assert parsed.problems == ()
    assert [z.box for z in parsed.zooms] == [tuple(float(v) for v in b) for b in swapped]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=replies(), data=st.data())
def test_wrong_box_length_is_a_problem_not_a_zoom(reply: Reply, data: st.DataObject) -> None:
    head = reply.text.partition("<tool_call>")[0]  # boxes in tool arguments are not zooms
    matches = list(BOX_RE.finditer(head))
    if not matches:
        return
    k = data.draw(st.integers(0, len(matches) - 1))
    m = matches[k]
    values = [v.strip() for v in m.group(1).split(",")]
    new = values[:2] if data.draw(st.booleans()) else [*values, "9"]
    text = reply.text[: m.start(1)] + ", ".join(new) + reply.text[m.end(1) :]
    parsed = parse_response(text)
    assert [p.code for p in parsed.problems] == ["bad_box_length"]
    expected = [z for i, z in enumerate(reply.zooms) if i != k]
    assert [z.box for z in parsed.zooms] == [tuple(float(v) for v in z.box) for z in expected]


BOX_VALUE = st.one_of(
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.from_regex(r"[ +-]{0,2}(?:\d{1,4}(?:\.\d*)?|nan|inf|infinity|NaN|Inf)[ ]?", fullmatch=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


def _expected_coordinate(value: object) -> float | None:
    """The documented rule: numbers, or strings holding a number, that are finite."""
    if isinstance(value, bool) or value is None or isinstance(value, list):
        return None
    if isinstance(value, str):
        s = value.strip()
        if not re.fullmatch(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", s, re.ASCII):
            return None
        value = s
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@settings(max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(BOX_VALUE, min_size=4, max_size=4), broken=st.booleans())
def test_any_box_values(values: list[object], broken: bool) -> None:
    """A box is a zoom exactly when its four values are finite number-like values."""
    rendered = json.dumps({"bbox_2d": values, "label": "t"})
    if broken:  # the object is malformed, so the reference-style fallback reads the list
        rendered = rendered.replace(', "label"', ' "label"')
    parsed = parse_response(rendered)
    check_invariants(parsed)
    expected = [_expected_coordinate(v) for v in values]
    if all(v is not None for v in expected):
        assert [z.box for z in parsed.zooms] == [tuple(expected)]
    elif not broken or all(not isinstance(v, list) for v in values):
        assert parsed.zooms == ()
        codes = {p.code for p in parsed.problems}
        # A malformed object whose list cannot even be delimited (e.g. very long escaped
        # strings) is reported as bad_json ("This box was not zoomed"), not as a value problem.
        allowed = {"bad_box_value", "bad_box_length"} | ({"bad_json"} if broken else set())
        assert codes & allowed


@settings(max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_random_text_and_bytes(value: str | bytes) -> None:
    check_invariants(parse_response(value))


@settings(max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([*INSERTS, "a", " ", "\n", "0", "12.5", ":"]), max_size=60))
def test_protocol_soup(parts: list[str]) -> None:
    check_invariants(parse_response("".join(parts)))


# --- megabytes of garbage ---------------------------------------------------------------------


def _garbage(kind: str) -> str | bytes:
    rnd = random.Random(kind)
    if kind == "random_bytes_4mb":
        return rnd.randbytes(4 * 1024 * 1024)
    if kind == "random_printable_2mb":
        alphabet = "<>/{}[]\":,' \nabcdethinkanswertool_callbbox_2d0123456789.-|"
        return "".join(rnd.choices(alphabet, k=2 * 1024 * 1024))
    pattern = {
        "think_bbox_1mb": '<think>{"bbox_2d": [',
        "bbox_keys_1mb": '"bbox_2d": [1, 2, ',
        "open_braces_1mb": "{",
        "open_brackets_1mb": "[",
        "answer_tags_1mb": "<answer>",
        "close_think_1mb": "</think>",
        "tool_call_open_1mb": '<tool_call>{"name": "x", "arguments": {',
        "quotes_1mb": '{"bbox_2d": ["',
        "backslashes_1mb": "\\",
        "tag_prefix_spaces_1mb": "<think" + " " * 15,
    }[kind]
    return pattern * (1024 * 1024 // len(pattern) + 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kind",
    [
        "random_bytes_4mb",
        "random_printable_2mb",
        "think_bbox_1mb",
        "bbox_keys_1mb",
        "open_braces_1mb",
        "open_brackets_1mb",
        "answer_tags_1mb",
        "close_think_1mb",
        "tool_call_open_1mb",
        "quotes_1mb",
        "backslashes_1mb",
        "tag_prefix_spaces_1mb",
    ],
)
def test_megabytes_of_garbage(kind: str) -> None:
    parsed = parse_response(_garbage(kind))
    check_invariants(parsed)


@pytest.mark.timeout(60)
def test_valid_reply_after_garbage_is_still_found() -> None:
    garbage = random.Random(1).randbytes(1024 * 1024).decode("utf-8", errors="replace")
    garbage = garbage.replace("<", " ")  # no accidental tags
    text = garbage + '<think>{"bbox_2d": [1, 2, 3, 4], "label": "x"}</think><answer>ok</answer>'
    parsed = parse_response(text)
    assert [z.box for z in parsed.zooms] == [(1.0, 2.0, 3.0, 4.0)]
    assert parsed.answer == "ok"
