"""Tests for zoomearth.agent.prompting: prompts as data, rendered strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zoomearth.agent.prompting import (
    SECTIONS,
    PromptError,
    load_template,
    qwen2_vl_chat_template,
    render_prompt,
    render_tool_section,
    tool_json,
)
from zoomearth.errors import ZoomEarthError

COMMON = {"coord_mode": "pixels", "layout": "zoomearth"}
TOOLS = [
    {
        "name": "segment",
        "description": "Segment the object in a box (SAM).",
        "parameters": {
            "type": "object",
            "properties": {"box": {"type": "array", "items": {"type": "number"}}},
            "required": ["box"],
        },
    },
    {"name": "denoise", "description": "Remove noise from the current view."},
]


def _user(**overrides: object) -> str:
    variables = {
        "question": "How many ships are in the harbour?",
        "tool_section": "",
        "has_tools": False,
        "scene": {},
        "artifacts": [],
        **COMMON,
    }
    variables.update(overrides)
    return render_prompt("user", **variables)


def test_default_template_has_every_section() -> None:
    template = load_template(None)
    assert set(SECTIONS) <= set(template.sections)
    assert template.source.endswith("zoomearth.yaml")
    assert load_template() is template  # cached


def test_user_prompt_states_the_protocol() -> None:
    text = _user()
    assert text.startswith("How many ships are in the harbour?")
    for marker in ("<think>", "<answer>", '"bbox_2d": [x1, y1, x2, y2]', '"view": k'):
        assert marker in text
    assert "pixels of the most recent image as you see it" in text
    assert "{{" not in text and "{%" not in text
    assert "tool" not in text.lower()  # no tools offered, no tool wording


@pytest.mark.parametrize(
    ("mode", "wording"),
    [("pixels", "in pixels"), ("norm1000", "from 0 to 1000"), ("norm1", "from 0 to 1 ")],
)
def test_coordinate_wording_follows_the_mode(mode: str, wording: str) -> None:
    assert wording in _user(coord_mode=mode)


def test_scene_size_is_mentioned_when_known() -> None:
    assert "10000 x 6000 pixels" in _user(scene={"width": 10000, "height": 6000})


def test_tool_section_is_generated_from_specs() -> None:
    template = load_template()
    section = render_tool_section(template, TOOLS, **COMMON)
    assert section.startswith("# Tools")
    lines = section.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0].splitlines()
    assert [json.loads(line) for line in lines] == [
        {"type": "function", "function": {**TOOLS[0]}},
        {
            "type": "function",
            "function": {
                "name": "denoise",
                "description": "Remove noise from the current view.",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    assert '<tool_call>{"name": "<tool name>", "arguments":' in section
    assert render_tool_section(template, [], **COMMON) == ""
    text = _user(tool_section=section, has_tools=True)
    assert "You can also use the tools described below." in text
    assert text.endswith("before you continue.")


def test_tool_json_keeps_non_ascii() -> None:
    line = tool_json({"name": "édit", "description": "Änderung", "parameters": None})
    assert "édit" in line and "\\u" not in line


def test_final_and_feedback_sections() -> None:
    final = render_prompt("final", **COMMON)
    assert "<answer>" in final and "best answer" in final
    one = render_prompt("feedback", problems=["Box is inverted."], **COMMON)
    assert one.startswith("Your last reply had a problem:") and "- Box is inverted." in one
    two = render_prompt("feedback", problems=["A", "B"], **COMMON)
    assert "problems:" in two and "fixing them" in two


def test_captions_and_tool_results() -> None:
    assert render_prompt("zoom_caption", view_id=2, caption="", **COMMON) == "View 2"
    text = render_prompt("tool_result", tool="segment", result="3 masks", view_id=4, **COMMON)
    assert text.startswith("<tool_response>") and text.endswith("</tool_response>")
    assert "segment: 3 masks" in text and "view 4" in text
    text = render_prompt("tool_result", tool="segment", result="ok", view_id=None, **COMMON)
    assert "view" not in text


def test_missing_variable_is_an_error_naming_it() -> None:
    with pytest.raises(PromptError, match="'question'") as info:
        render_prompt("user", tool_section="", has_tools=False, scene={}, artifacts=[], **COMMON)
    assert isinstance(info.value, ZoomEarthError) and isinstance(info.value, ValueError)
    assert "section 'user'" in str(info.value)
    with pytest.raises(PromptError, match="'problems'"):
        render_prompt("feedback", **COMMON)


def test_undefined_attribute_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("final: 'Answer {{ scene.width.x }}'\n", encoding="utf-8")
    template = load_template(path)
    with pytest.raises(PromptError, match="undefined"):
        template.render("final", scene={}, **COMMON)


def test_unknown_section() -> None:
    with pytest.raises(PromptError, match="no section 'nope'"):
        render_prompt("nope")


def test_yaml_replacement_overrides_some_sections(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(
        "user: |-\n  {{ question }} Output the thinking process in <think> </think>.\n"
        "system: You are ZoomEarth.\n",
        encoding="utf-8",
    )
    template = load_template(path)
    assert template.source == str(path)
    assert template.render("system", **COMMON) == "You are ZoomEarth."
    assert template.render("user", question="Q?", **COMMON) == (
        "Q? Output the thinking process in <think> </think>."
    )
    # Sections the file leaves out keep the default text.
    assert template.render("final", **COMMON) == render_prompt("final", **COMMON)


def test_text_replacement_replaces_the_user_section(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("{{ question }}\nAnswer in <answer></answer>.", encoding="utf-8")
    template = load_template(path)
    assert template.render("user", question="Is it a port?") == (
        "Is it a port?\nAnswer in <answer></answer>."
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("- a\n- b\n", "YAML mapping"),
        ("user: [1, 2]\n", "must be a string"),
        ("usr: hi\n", "unknown section"),
        ("user: '{% if %}'\n", "not a valid jinja2"),
        ("user: 'a: b: c'\n  x", "Cannot read"),
    ],
)
def test_bad_replacement_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptError, match=match):
        load_template(path)


def test_missing_replacement_file(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="planner_prompt"):
        load_template(tmp_path / "missing.yaml")


def test_packaged_chat_template() -> None:
    template = qwen2_vl_chat_template()
    assert "<|vision_start|><|image_pad|><|vision_end|>" in template
    assert template.endswith("{% endif %}")  # no stray newline after the generation prompt
