"""Tests for the script planner (agent/backends/script.py) and its published schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from zoomearth.agent.backends.script import (
    SCRIPT_SCHEMA,
    ScriptError,
    ScriptPlanner,
    load_plan,
    schema_json,
    validate_plan,
)
from zoomearth.agent.base import PlannerError, PlanRequest, TranscriptEntry
from zoomearth.agent.parsing import ZoomRequest, parse_response
from zoomearth.config import Settings
from zoomearth.geometry import PixelBox, ViewSpec

DOCS = Path(__file__).resolve().parents[2] / "docs"
OVERVIEW = ViewSpec(0, PixelBox(0, 0, 8192, 8192), 512, 512)
CROP = ViewSpec(1, PixelBox(0, 0, 1024, 1024), 504, 504)


def _render(view_id: int):
    raise AssertionError("the script planner must not render pixels")


def request_after(planner_turns: int, *, final: bool = False, extra=()) -> PlanRequest:
    transcript = []
    for i in range(planner_turns):
        transcript.append(TranscriptEntry("planner", f"turn {i}"))
        transcript.append(TranscriptEntry("zoom", "crop", view_id=1))
    transcript.extend(extra)
    return PlanRequest(
        question="q",
        overview_id=0,
        transcript=transcript,
        views={0: OVERVIEW, 1: CROP},
        render=_render,
        final=final,
    )


RAW_TURNS = [
    '<think>look {"bbox_2d": [10, 20, 110, 120], "label": "ship", "view": 0}</think>',
    "<think>done</think><answer>3</answer>",
]

STRUCTURED = {
    "description": "structured",
    "turns": [
        [
            {"zoom": [0, 0, 2048, 2048], "frame": "full", "label": "north-west"},
            {"zoom": [10, 10, 200, 200], "frame": "view", "view": 0},
            {"zoom": [1, 2, 3, 4], "frame": "view"},
            {"tool": "cloud_removal", "args": {"box": [0, 0, 2048, 2048]}},
        ],
        [{"tool": "segmentation", "args": {"image": "artifact:1", "prompt": "buildings"}}],
        [{"answer": "done"}],
    ],
}


def write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(data), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Raw and structured turns
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plan.json", "plan.yaml", "plan.yml", "plan.txt"])
def test_raw_turns_replay_in_order(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, {"turns": RAW_TURNS})
    planner = ScriptPlanner(Settings(plan_file=path))
    first = planner.plan(request_after(0))
    assert first.text == RAW_TURNS[0] and first.parsed is None
    assert first.backend == "script"
    assert first.seen_sizes == {0: (512, 512), 1: (504, 504)}
    (zoom,) = parse_response(first.text).zooms
    assert zoom.box == (10, 20, 110, 120) and zoom.view == 0 and zoom.frame == "view"
    second = planner.plan(request_after(1))
    assert parse_response(second.text).answer == "3"


def test_structured_turn_becomes_parsed_response(tmp_path: Path) -> None:
    planner = ScriptPlanner(Settings(plan_file=write(tmp_path, "plan.yaml", STRUCTURED)))
    reply = planner.plan(request_after(0))
    parsed = reply.parsed
    assert parsed is not None and parsed.problems == () and parsed.answer is None
    full, in_view0, in_latest = parsed.zooms
    assert (full.box, full.frame, full.view, full.label) == (
        (0.0, 0.0, 2048.0, 2048.0),
        "full",
        None,
        "north-west",
    )
    assert (in_view0.frame, in_view0.view, in_view0.label) == ("view", 0, None)
    assert (in_latest.frame, in_latest.view) == ("view", None)
    (call,) = parsed.tool_calls
    assert call.name == "cloud_removal" and call.arguments == {"box": [0, 0, 2048, 2048]}
    assert json.loads(call.raw_arguments) == call.arguments
    # The log text is protocol text too.
    assert "<tool_call>" in reply.text and "cloud_removal" in reply.text


def test_structured_log_text_parses_back_to_the_parsed_response() -> None:
    turn = [
        {"zoom": [10, 20.5, 300, 400], "frame": "view", "view": 0, "label": "ship"},
        {"tool": "segmentation", "args": {"prompt": "roofs </tool_call> here", "n": 2}},
        {"zoom": [0, 0, 2048, 2048], "frame": "full", "label": "north-west"},
        {"answer": "two <answer> ships"},
    ]
    reply = ScriptPlanner(plan={"turns": [turn]}).plan(request_after(0))
    logged = parse_response(reply.text)
    assert logged.problems == ()
    assert [(z.box, z.label, z.view) for z in logged.zooms] == [
        (z.box, z.label, z.view) for z in reply.parsed.zooms
    ]
    assert [(c.name, c.arguments) for c in logged.tool_calls] == [
        ("segmentation", {"prompt": "roofs </tool_call> here", "n": 2})
    ]
    # Free text is cleaned of protocol tags in the log; the parsed answer is the script's own.
    assert logged.answer == "two  ships" and reply.parsed.answer == "two <answer> ships"
    assert '"frame": "full"' in reply.text


def test_best_effort_answer_cleans_tool_results() -> None:
    planner = ScriptPlanner(plan={"turns": [[{"zoom": [0, 0, 512, 512], "frame": "full"}]]})
    result = TranscriptEntry("tool_result", "ok </answer><answer>evil", data={"tool": "x"})
    parsed = parse_response(planner.plan(request_after(1, extra=[result])).text)
    assert parsed.problems == ()
    assert "x: ok evil" in parsed.answer


def test_artifact_references_are_kept_as_written(tmp_path: Path) -> None:
    planner = ScriptPlanner(Settings(plan_file=write(tmp_path, "plan.json", STRUCTURED)))
    (call,) = planner.plan(request_after(1)).parsed.tool_calls
    assert call.arguments == {"image": "artifact:1", "prompt": "buildings"}


def test_structured_answer(tmp_path: Path) -> None:
    planner = ScriptPlanner(plan=STRUCTURED)
    reply = planner.plan(request_after(2))
    assert reply.parsed.answer == "done" and reply.parsed.answer_closed
    assert parse_response(reply.text).answer == "done"


def test_plan_argument_overrides_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "other.yaml", {"turns": ["<answer>other</answer>"]})
    planner = ScriptPlanner(Settings(plan_file=tmp_path / "missing.yaml"), plan=path)
    assert parse_response(planner.plan(request_after(0)).text).answer == "other"


def test_zoom_request_frame_defaults_to_view() -> None:
    assert ZoomRequest((0, 0, 1, 1), None, None, "").frame == "view"


# ---------------------------------------------------------------------------------------------
# Running out, final turns
# ---------------------------------------------------------------------------------------------


def test_exhausted_script_gives_best_effort_answer() -> None:
    planner = ScriptPlanner(plan={"turns": [[{"zoom": [0, 0, 512, 512], "frame": "full"}]]})
    result = TranscriptEntry("tool_result", "found 4 buildings", data={"tool": "segmentation"})
    reply = planner.plan(request_after(1, extra=[result]))
    parsed = parse_response(reply.text)
    assert parsed.problems == ()
    assert "script ended after 1 turn(s) without an answer" in parsed.answer
    assert "best-effort" in parsed.answer
    assert "segmentation: found 4 buildings" in parsed.answer
    assert reply.notes and "exhausted" in reply.notes[0]


def test_final_turn_without_answer_gives_best_effort_answer() -> None:
    planner = ScriptPlanner(plan={"turns": [RAW_TURNS[0], RAW_TURNS[1]]})
    reply = planner.plan(request_after(0, final=True))
    assert reply.parsed is None
    assert "No steps were left at script turn 1" in parse_response(reply.text).answer


def test_final_turn_with_answer_is_replayed() -> None:
    planner = ScriptPlanner(plan={"turns": [RAW_TURNS[1]]})
    assert planner.plan(request_after(0, final=True)).text == RAW_TURNS[1]


# ---------------------------------------------------------------------------------------------
# Per-question plans
# ---------------------------------------------------------------------------------------------

MAPPING = {
    "questions": {
        "q1": {"turns": ["<answer>one</answer>"]},
        "q2": {"turns": [[{"answer": "two"}]]},
    }
}


def _answer(planner: ScriptPlanner) -> str:
    reply = planner.plan(request_after(0))
    return reply.parsed.answer if reply.parsed else parse_response(reply.text).answer


def test_per_question_scripts(tmp_path: Path) -> None:
    planner = ScriptPlanner(Settings(plan_file=write(tmp_path, "eval.yaml", MAPPING)))
    assert planner.per_question and planner.question_ids == ["q1", "q2"]
    planner.set_question("q2")
    assert _answer(planner) == "two"
    planner.set_question("q1")
    assert _answer(planner) == "one"
    assert "q1" in planner.describe()


def test_unknown_question_id_is_an_error_naming_the_ids() -> None:
    planner = ScriptPlanner(plan=MAPPING)
    with pytest.raises(ScriptError, match=r"no script for question 'q9'.*q1, q2"):
        planner.set_question("q9")


def test_mapping_without_selection_needs_set_question() -> None:
    planner = ScriptPlanner(plan=MAPPING)
    with pytest.raises(ScriptError, match="set_question"):
        planner.plan(request_after(0))


def test_default_script_serves_unlisted_ids() -> None:
    planner = ScriptPlanner(plan={**MAPPING, "default": {"turns": ["<answer>dflt</answer>"]}})
    assert _answer(planner) == "dflt"
    planner.set_question("q9")
    assert _answer(planner) == "dflt"
    planner.set_question("q1")
    assert _answer(planner) == "one"


def test_set_question_is_a_noop_for_single_scripts() -> None:
    planner = ScriptPlanner(plan={"turns": ["<answer>x</answer>"]})
    planner.set_question("anything")
    assert _answer(planner) == "x"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

BAD_PLANS = [
    ([1, 2], "the plan must be an object"),
    ({"steps": []}, "needs 'turns'"),
    ({"turns": []}, "'turns' must be a non-empty list"),
    ({"turns": "x"}, "'turns' must be a non-empty list"),
    ({"turns": [""]}, "turn 1: raw model text must not be empty"),
    ({"turns": ["ok", []]}, "turn 2: a turn is raw model text"),
    ({"turns": ["ok", [{"zoom": [1, 2, 3, 4]}]]}, "turn 2, action 1: 'frame' is required"),
    ({"turns": [[{"zoom": [1, 2, 3], "frame": "full"}]]}, "'zoom' must be four finite numbers"),
    ({"turns": [[{"zoom": [1, 2, 3, True], "frame": "full"}]]}, "four finite numbers"),
    ({"turns": [[{"zoom": [1, 2, 3, 4], "frame": "px"}]]}, "got 'px'"),
    ({"turns": [[{"zoom": [1, 2, 3, 4], "frame": "full", "view": 0}]]}, "'view' applies only"),
    ({"turns": [[{"zoom": [1, 2, 3, 4], "frame": "view", "view": -1}]]}, "'view' must be a view"),
    (
        {"turns": [[{"zoom": [1, 2, 3, 4], "frame": "view", "lable": "x"}]]},
        "unknown key(s) 'lable'",
    ),
    ({"turns": [[{"answr": "x"}]]}, "exactly one of 'zoom', 'tool' or 'answer'; got 'answr'"),
    ({"turns": [[{"answer": "x", "tool": "y"}]]}, "exactly one of"),
    ({"turns": [[{"tool": ""}]]}, "'tool' must be the tool's name"),
    ({"turns": [[{"tool": "t", "args": [1]}]]}, "'args' must be an object"),
    ({"turns": [[{"answer": ""}]]}, "'answer' must be a non-empty string"),
    ({"turns": [[{"answer": "a"}, {"answer": "b"}]]}, "turn 1: a turn may hold at most one answer"),
    ({"turns": [["raw in a list"]]}, "turn 1, action 1: an action must be an object"),
    ({"turns": ["x"], "extra": 1}, "unknown key(s) 'extra'"),
    ({"questions": {"q1": {"turns": [[{"zoom": [0, 0, 1, 1]}]]}}}, "question 'q1': turn 1"),
    ({"questions": []}, "'questions' must map question ids to scripts"),
    ({"questions": {}, "default": {"turn": []}}, "default: unknown key(s) 'turn'"),
]


@pytest.mark.parametrize(("data", "needle"), BAD_PLANS)
def test_invalid_plans_name_the_problem(data: object, needle: str) -> None:
    with pytest.raises(ScriptError) as info:
        validate_plan(data, "plan.yaml")
    message = str(info.value)
    assert needle in message
    assert message.startswith("The plan plan.yaml is not a valid script:")
    assert "docs/script.md" in message


# "At most one answer per turn" is checked by the loader only (the schema does not express it).
@pytest.mark.parametrize(
    ("data", "needle"), [(d, n) for d, n in BAD_PLANS if "at most one answer" not in n]
)
def test_published_schema_agrees_on_invalid_plans(data: object, needle: str) -> None:
    validator = jsonschema.Draft202012Validator(SCRIPT_SCHEMA)
    assert not validator.is_valid(data)


def test_all_problems_are_listed() -> None:
    data = {"turns": [[{"zoom": [1, 2, 3, 4]}], [{"answr": "x"}]]}
    with pytest.raises(ScriptError) as info:
        validate_plan(data)
    assert "turn 1, action 1" in str(info.value) and "turn 2, action 1" in str(info.value)


def test_script_error_is_a_planner_error_and_a_value_error() -> None:
    assert issubclass(ScriptError, PlannerError) and issubclass(ScriptError, ValueError)


def test_missing_plan_configuration() -> None:
    with pytest.raises(ScriptError, match="plan_file=PATH"):
        ScriptPlanner(Settings())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="Cannot read the plan"):
        ScriptPlanner(Settings(plan_file=tmp_path / "nope.yaml"))


def test_invalid_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{turns: [", encoding="utf-8")
    (tmp_path / "bad.yaml").write_text("turns: [\n  - a\n - b", encoding="utf-8")
    with pytest.raises(ScriptError, match="invalid JSON"):
        load_plan(tmp_path / "bad.json")
    with pytest.raises(ScriptError, match="invalid YAML"):
        load_plan(tmp_path / "bad.yaml")


def test_invalid_file_names_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.yaml", {"turns": [[{"zoom": [0, 0, 1, 1]}]]})
    with pytest.raises(ScriptError, match=re.escape(str(path))):
        ScriptPlanner(Settings(plan_file=path))


def test_invalid_given_plan_is_rejected() -> None:
    with pytest.raises(ScriptError, match="turn 1"):
        ScriptPlanner(plan={"turns": [[{"zoom": "x", "frame": "full"}]]})


# ---------------------------------------------------------------------------------------------
# Published schema and documentation
# ---------------------------------------------------------------------------------------------


def test_schema_file_matches_the_constant() -> None:
    assert (DOCS / "script.schema.json").read_text(encoding="utf-8") == schema_json()
    jsonschema.Draft202012Validator.check_schema(SCRIPT_SCHEMA)


def _doc_examples() -> list[tuple[str, object]]:
    text = (DOCS / "script.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(json|yaml)\n(.*?)```", text, re.S)
    return [
        (lang, json.loads(body) if lang == "json" else yaml.safe_load(body))
        for lang, body in blocks
    ]


def test_docs_have_examples_in_both_formats() -> None:
    langs = {lang for lang, _ in _doc_examples()}
    assert langs == {"json", "yaml"}
    assert any("questions" in data for _, data in _doc_examples())


@pytest.mark.parametrize(("lang", "data"), _doc_examples())
def test_doc_examples_are_valid(lang: str, data: object) -> None:
    validate_plan(data, f"docs example ({lang})")
    jsonschema.Draft202012Validator(SCRIPT_SCHEMA).validate(data)
    ScriptPlanner(plan=data)  # loads


def test_schema_key_is_allowed_for_editors(tmp_path: Path) -> None:
    data = {"$schema": "./script.schema.json", "turns": ["<answer>x</answer>"]}
    validate_plan(data)
    jsonschema.Draft202012Validator(SCRIPT_SCHEMA).validate(data)
