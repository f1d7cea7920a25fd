"""Tests for zoomearth.agent.parsing: the documented rules table, then the details around it."""

from __future__ import annotations

import dataclasses
import json
import re
import string
from pathlib import Path

import pytest

from zoomearth.agent import (
    ParsedResponse,
    Problem,
    ProblemCode,
    ToolCallRequest,
    TurnDecision,
    ZoomRequest,
    parse_response,
    parsing,
    resolve_turn,
)
from zoomearth.agent.parsing import MAX_BOXES, MAX_PROBLEMS, MAX_TOOL_CALLS, cut_before_answer

DOC = Path(__file__).resolve().parents[2] / "docs" / "parsing.md"
COLUMNS = ["#", "rule", "input", "zooms", "tools", "answer", "problems", "can_act", "no_budget"]


def _cells(line: str) -> list[str]:
    """Split one Markdown table row on unescaped pipes; unescape `\\|` inside cells."""
    inner = line.strip()
    assert inner.startswith("|") and inner.endswith("|"), line
    cells = re.split(r"(?<!\\)\|", inner[1:-1])
    return [c.strip().replace("\\|", "|") for c in cells]


def _code(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), cell
    return cell[1:-1]


def _read_rules_table() -> list[dict[str, object]]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- rules-table:begin -->", 1)[1].split("<!-- rules-table:end -->", 1)[0]
    lines = [ln for ln in block.strip().splitlines() if ln.strip()]
    header, separator, *body = lines
    assert len(_cells(header)) == len(COLUMNS)
    assert set(separator.replace("|", "").replace("-", "").strip()) == set()
    rows = []
    for line in body:
        cells = _cells(line)
        assert len(cells) == len(COLUMNS), line
        row: dict[str, object] = {"#": int(cells[0]), "rule": cells[1]}
        for name, cell in zip(COLUMNS[2:7], cells[2:7], strict=True):
            row[name] = json.loads(_code(cell))
        row["can_act"] = _code(cells[7])
        row["no_budget"] = _code(cells[8])
        rows.append(row)
    return rows


RULES = _read_rules_table()


def _decision_kind(decision: TurnDecision) -> str:
    if decision.actions:
        return "act"
    if decision.final_answer is not None:
        return "answer"
    return "no_action"


def test_rules_table_is_present_and_numbered() -> None:
    assert len(RULES) >= 35
    assert [r["#"] for r in RULES] == list(range(1, len(RULES) + 1))
    for row in RULES:
        assert row["can_act"] in {"act", "answer", "no_action"}
        assert row["no_budget"] in {"answer", "no_action"}


@pytest.mark.parametrize("row", RULES, ids=[f"{r['#']}-{r['rule']}" for r in RULES])
def test_rules_table(row: dict[str, object]) -> None:
    parsed = parse_response(row["input"])  # type: ignore[arg-type]
    assert [list(z.box) for z in parsed.zooms] == row["zooms"]
    assert [t.name for t in parsed.tool_calls] == row["tools"]
    assert parsed.answer == row["answer"]
    assert [p.code for p in parsed.problems] == row["problems"]
    assert _decision_kind(resolve_turn(parsed, can_act=True)) == row["can_act"]
    assert _decision_kind(resolve_turn(parsed, can_act=False)) == row["no_budget"]


def test_problem_codes_are_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for code in ProblemCode:
        assert f"| `{code.value}` |" in text, code


def test_templates_format_with_their_fields() -> None:
    templates = {k: v for k, v in vars(parsing).items() if k.endswith("_TEMPLATE")}
    assert len(templates) >= 12
    for name, template in templates.items():
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        message = template.format(**dict.fromkeys(fields, "X"))
        assert message and "{" not in message.replace("{...}", "").replace('{"', ""), name


# --- the reference's own outputs ------------------------------------------------------------


STAGE1 = (
    "<think>The question asks about the top-right island. I need to zoom in. "
    '{"bbox_2d": [380, 40, 500, 160], "label": "top-right island"}</think>'
)


def test_reference_stage1_zoom_details() -> None:
    parsed = parse_response(STAGE1)
    assert parsed.zooms == (
        ZoomRequest(
            box=(380.0, 40.0, 500.0, 160.0),
            label="top-right island",
            view=None,
            source='{"bbox_2d": [380, 40, 500, 160], "label": "top-right island"}',
        ),
    )
    assert all(type(v) is float for v in parsed.zooms[0].box)
    assert parsed.think.startswith("The question asks") and parsed.think.endswith("}")
    assert parsed.answer is None and not parsed.answer_closed and parsed.problems == ()


def test_reference_prompt_list_form() -> None:
    text = '<think>x [{"bbox_2d": [1,2,3,4], "label": "pier"}]</think><answer>a pier</answer>'
    parsed = parse_response(text)
    assert [(z.box, z.label) for z in parsed.zooms] == [((1.0, 2.0, 3.0, 4.0), "pier")]
    decision = resolve_turn(parsed, can_act=True)
    assert decision.stage_answer == "a pier" and decision.final_answer is None
    assert decision.actions == parsed.zooms and not decision.is_final
    final = resolve_turn(parsed, can_act=False)
    assert final.final_answer == "a pier" and final.stage_answer is None and final.is_final
    assert final.actions == ()


def test_cut_before_answer_matches_reference_split() -> None:
    out = "<think>a</think><answer>yes</answer>"
    assert cut_before_answer(out) == out.split("<answer>")[0]
    assert cut_before_answer("no tags") == "no tags"
    assert cut_before_answer("x<Answer >y") == "x"


# --- zooms ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view_text", "view"),
    [("1", 1), ("2.0", 2), ('"3"', 3), ("null", None), ("0", 0), ("-1", -1)],
)
def test_view_values(view_text: str, view: int | None) -> None:
    parsed = parse_response(f'{{"bbox_2d": [1, 2, 3, 4], "view": {view_text}}}')
    assert [z.view for z in parsed.zooms] == [view]
    assert parsed.problems == ()


@pytest.mark.parametrize("view_text", ["1.5", "true", '"overview"', "[1]", "1e30"])
def test_bad_view_drops_the_zoom(view_text: str) -> None:
    parsed = parse_response(f'{{"bbox_2d": [1, 2, 3, 4], "view": {view_text}}}')
    assert parsed.zooms == ()
    assert [p.code for p in parsed.problems] == ["bad_view"]


def test_label_kinds() -> None:
    parsed = parse_response(
        '{"bbox_2d": [1, 2, 3, 4], "label": 7} {"bbox_2d": [5, 6, 7, 8]} '
        '{"bbox_2d": [9, 9, 10, 10], "label": "caf\\u00e9 \\ud83d\\ude00"}'
    )
    assert [z.label for z in parsed.zooms] == ["7", None, "café 😀"]


def test_one_object_counted_once() -> None:
    # Two keys in one object: one zoom (JSON semantics: the last value wins).
    parsed = parse_response('{"bbox_2d": [1, 2, 3, 4], "bbox_2d": [5, 6, 7, 8]}')
    assert [z.box for z in parsed.zooms] == [(5.0, 6.0, 7.0, 8.0)]
    # The key quoted inside the label belongs to the same object.
    parsed = parse_response('{"bbox_2d": [1, 2, 3, 4], "label": "bbox_2d: [9, 9, 9, 9]"}')
    assert len(parsed.zooms) == 1 and parsed.problems == ()


def test_fenced_block_and_prose_copy_are_distinct_objects() -> None:
    obj = '{"bbox_2d": [1, 2, 3, 4], "label": "a"}'
    parsed = parse_response(f"<think>```json\n{obj}\n```</think>")
    assert len(parsed.zooms) == 1 and parsed.problems == ()
    parsed = parse_response(f"<think>{obj}\n```json\n[{obj}]\n```</think>")
    assert len(parsed.zooms) == 1
    assert [p.code for p in parsed.problems] == ["duplicate_zoom"]


def test_same_box_different_label_is_two_zooms() -> None:
    parsed = parse_response('{"bbox_2d": [1, 2, 3, 4], "label": "a"} {"bbox_2d": [1, 2, 3, 4]}')
    assert len(parsed.zooms) == 2 and parsed.problems == ()


def test_bare_key_without_object_is_read_like_the_reference() -> None:
    parsed = parse_response('The box is "bbox_2d": [10, 20, 30, 40] there.')
    assert [z.box for z in parsed.zooms] == [(10.0, 20.0, 30.0, 40.0)]
    assert [p.code for p in parsed.problems] == ["bad_json"]


def test_malformed_object_keeps_label_and_view() -> None:
    parsed = parse_response('{"label": "dock" "bbox_2d": [1, 2, 3, 4], "view": 2,,}')
    assert [(z.box, z.label, z.view) for z in parsed.zooms] == [((1.0, 2.0, 3.0, 4.0), "dock", 2)]
    assert [p.code for p in parsed.problems] == ["bad_json"]
    assert "Its box was used anyway" in parsed.problems[0].message


@pytest.mark.parametrize(
    ("box", "code", "fragment"),
    [
        ("[1, 2, 3, 4, 5]", "bad_box_length", "got 5"),
        ("[1, 2]", "bad_box_length", "got 2"),
        ("[]", "bad_box_length", "got 0"),
        ("[1, 2, 3, Infinity]", "bad_box_value", "finite"),
        ('[1, 2, 3, "inf"]', "bad_box_value", "inf"),
        ('[1, 2, 3, "+-inf"]', "bad_box_value", "+-inf"),
        ('[1, 2, 3, "-NaN"]', "bad_box_value", "-NaN"),
        ('[1, 2, 3, "1_000"]', "bad_box_value", "1_000"),
        ("[1, 2, 3, 1e400]", "bad_box_value", "inf"),
        ("[1, 2, 3, true]", "bad_box_value", "True"),
        ("[1, 2, 3, null]", "bad_box_value", "None"),
        ("[[1, 2], [3, 4]]", "bad_box_length", "got 2"),
        ('"1, 2, 3, 4"', "bad_box_value", "must be a list"),
        ("{}", "bad_box_value", "must be a list"),
    ],
)
def test_box_problems_and_messages(box: str, code: str, fragment: str) -> None:
    parsed = parse_response(f'<think>{{"bbox_2d": {box}, "label": "a"}}</think>')
    assert parsed.zooms == ()
    assert [p.code for p in parsed.problems] == [code]
    assert fragment in parsed.problems[0].message
    assert "[x1, y1, x2, y2]" in parsed.problems[0].message


def test_box_length_message_for_the_model() -> None:
    (problem,) = parse_response('{"bbox_2d": [1, 2, 3, 4, 5]}').problems
    assert problem.message.startswith("A box needs exactly four numbers [x1, y1, x2, y2]; got 5")


def test_numeric_forms() -> None:
    parsed = parse_response('{"bbox_2d": [+1, .5, "7.", " 1e2 "]}')
    assert [z.box for z in parsed.zooms] == [(1.0, 0.5, 7.0, 100.0)]


def test_key_must_be_a_key() -> None:
    assert parse_response("my_bbox_2d: [1, 2, 3, 4]").zooms == ()
    assert parse_response("bbox_2d [1, 2, 3, 4]").zooms == ()
    assert len(parse_response("bbox_2d: [1, 2, 3, 4]").zooms) == 1


def test_too_many_boxes() -> None:
    text = " ".join(f'{{"bbox_2d": [{i}, 0, {i + 1}, 1]}}' for i in range(MAX_BOXES + 5))
    parsed = parse_response(text)
    assert len(parsed.zooms) == MAX_BOXES
    assert [p.code for p in parsed.problems] == ["too_many_items"]


def test_problem_list_is_capped() -> None:
    parsed = parse_response('{"bbox_2d": [1]} ' * (MAX_PROBLEMS + 7))
    assert len(parsed.problems) == MAX_PROBLEMS + 1
    assert parsed.problems[-1].code == "too_many_problems"
    assert parsed.problems[-1].message.startswith("7 further problems")


# --- tool calls -------------------------------------------------------------------------------


def test_tool_call_fields() -> None:
    parsed = parse_response(
        '<tool_call>\n{"name": "cloud_removal", "arguments": {"strength": 0.5, "dates": []}}\n'
        "</tool_call>"
    )
    (call,) = parsed.tool_calls
    assert call == ToolCallRequest(
        name="cloud_removal",
        arguments={"strength": 0.5, "dates": []},
        raw_arguments='{"strength": 0.5, "dates": []}',
        source='{"name": "cloud_removal", "arguments": {"strength": 0.5, "dates": []}}',
        problems=(),
    )
    assert isinstance(hash(call), int)


def test_tool_call_arguments_as_string() -> None:
    (call,) = parse_response(
        '<tool_call>{"name": "denoise", "arguments": "{\\"method\\": \\"nlm\\"}"}</tool_call>'
    ).tool_calls
    assert call.arguments == {"method": "nlm"}
    assert call.raw_arguments == '{"method": "nlm"}'


@pytest.mark.parametrize("args", ["", ', "arguments": null', ', "arguments": ""'])
def test_tool_call_without_arguments(args: str) -> None:
    (call,) = parse_response(f'<tool_call>{{"name": "denoise"{args}}}</tool_call>').tool_calls
    assert call.arguments == {} and call.problems == ()


def test_tool_call_parameters_alias_and_python_literals() -> None:
    (call,) = parse_response(
        "<tool_call>{'name': 'edit', 'parameters': {'remove': True, 'mask': None,},}</tool_call>"
    ).tool_calls
    assert call.name == "edit" and call.arguments == {"remove": True, "mask": None}


def test_tool_call_list_fence_and_sequence() -> None:
    parsed = parse_response(
        '<tool_call>```json\n[{"name": "a", "arguments": {"x": 1}}, {"name": "b"}]\n```'
        '</tool_call><tool_call>{"name": "c"}\n{"name": "d"}</tool_call>'
    )
    assert [(t.name, t.arguments, t.raw_arguments) for t in parsed.tool_calls] == [
        ("a", {"x": 1}, '{"x": 1}'),
        ("b", {}, ""),
        ("c", {}, ""),
        ("d", {}, ""),
    ]
    assert parsed.problems == ()


def test_tool_call_bad_arguments_string() -> None:
    (call,) = parse_response(
        '<tool_call>{"name": "denoise", "arguments": "method=nlm"}</tool_call>'
    ).tool_calls
    assert call.arguments is None and call.raw_arguments == "method=nlm"
    assert [p.code for p in call.problems] == ["bad_json"]


def test_tool_call_arguments_wrong_type() -> None:
    parsed = parse_response('<tool_call>{"name": "denoise", "arguments": [1, 2]}</tool_call>')
    (call,) = parsed.tool_calls
    assert call.arguments is None and call.raw_arguments == "[1, 2]"
    assert [p.code for p in parsed.problems] == ["bad_tool_call"]
    assert call.problems == parsed.problems


def test_salvaged_tool_call_is_reported_and_rejected_later() -> None:
    parsed = parse_response('<tool_call>{"name": "denoise", "arguments": {"method": }}</tool_call>')
    (call,) = parsed.tool_calls
    assert call.name == "denoise" and call.arguments is None
    assert call.raw_arguments == '{"method": }'
    assert call.problems == parsed.problems and parsed.problems[0].code == "bad_json"
    assert "The call cannot run" in parsed.problems[0].message


@pytest.mark.parametrize(
    "body", ["", "   ", "not json", '{"name": 3}', '{"name": ""}', "[1, 2]", '"denoise"']
)
def test_unusable_tool_calls(body: str) -> None:
    parsed = parse_response(f"<tool_call>{body}</tool_call>")
    assert parsed.tool_calls == ()
    assert parsed.problems and all(p.code == "bad_tool_call" for p in parsed.problems)


def test_too_many_tool_calls() -> None:
    parsed = parse_response('<tool_call>{"name": "x"}</tool_call>' * (MAX_TOOL_CALLS + 3))
    assert len(parsed.tool_calls) == MAX_TOOL_CALLS
    assert [p.code for p in parsed.problems] == ["too_many_items"]
    listed = "<tool_call>[" + '{"name": "x"},' * (MAX_TOOL_CALLS + 3) + "]</tool_call>"
    assert len(parse_response(listed).tool_calls) == MAX_TOOL_CALLS


# --- think, answer, tags ----------------------------------------------------------------------


def test_think_blocks_are_joined() -> None:
    parsed = parse_response("<think> one </think><tool_call>{}</tool_call><think>two</think>")
    assert parsed.think == "one\n\ntwo"


def test_answer_closed_flag() -> None:
    assert parse_response("<answer>a</answer>").answer_closed is True
    unclosed = parse_response("<answer> a ")
    assert (unclosed.answer, unclosed.answer_closed) == ("a", False)
    assert parse_response("nothing").answer_closed is False


def test_empty_answer_then_real_answer() -> None:
    parsed = parse_response("<answer></answer><answer>yes</answer>")
    assert parsed.answer == "yes"
    assert [p.code for p in parsed.problems] == ["empty_answer"]


def test_messages_name_the_tag() -> None:
    (problem,) = parse_response("<think>abc").problems
    assert problem == Problem(
        "unclosed_tag",
        "<think> was opened but not closed; close it with </think>. "
        "I read it up to the end of the reply.",
    )


# --- input types, purity, decisions -----------------------------------------------------------


def test_bytes_are_decoded_with_replacement() -> None:
    parsed = parse_response(b"<answer>caf\xc3\xa9 \xff</answer>")
    assert parsed.answer == "café \ufffd" and parsed.problems == ()
    assert parse_response(bytearray(b"<answer>x</answer>")).answer == "x"  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, 12, 3.5, ["<answer>x</answer>"], object()])
def test_non_text_input(value: object) -> None:
    parsed = parse_response(value)  # type: ignore[arg-type]
    assert parsed.answer is None and parsed.zooms == () and parsed.tool_calls == ()
    assert [p.code for p in parsed.problems] == ["not_text"]


def test_results_are_frozen_and_deterministic() -> None:
    a, b = parse_response(STAGE1), parse_response(STAGE1)
    assert a == b and isinstance(a, ParsedResponse)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.answer = "x"  # type: ignore[misc]
    assert isinstance(hash(a.zooms[0]), int)


def test_no_action_messages() -> None:
    empty = parse_response("")
    with_budget = resolve_turn(empty, can_act=True)
    without = resolve_turn(empty, can_act=False)
    assert [p.code for p in with_budget.problems] == ["no_action"]
    assert with_budget.problems[0].message == parsing.NO_ACTION_TEMPLATE.format()
    assert without.problems[0].message == parsing.NO_STEPS_LEFT_TEMPLATE.format()
    zoom_only = resolve_turn(parse_response(STAGE1), can_act=False)
    assert zoom_only.actions == () and zoom_only.problems[-1].code == "no_action"


def test_decision_keeps_parse_problems() -> None:
    parsed = parse_response('<answer>a</answer><answer>b</answer>{"bbox_2d": [1, 2, 3, 4]}')
    decision = resolve_turn(parsed, can_act=True)
    assert decision.problems == parsed.problems
    assert decision.zooms == parsed.zooms and decision.stage_answer == "a"
