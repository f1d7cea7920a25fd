"""Tests for zoomearth.agent.conversation: PlanRequest -> neutral chat messages, per layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zoomearth.agent.base import PlanRequest, TranscriptEntry
from zoomearth.agent.conversation import (
    ChatMessage,
    ImagePart,
    TextPart,
    build_conversation,
    to_chat_dicts,
)
from zoomearth.agent.prompting import load_template, render_prompt
from zoomearth.geometry import PixelBox, ViewSpec

STAGE1 = (
    '<think>The boats are tiny; look at the pier. {"bbox_2d": [120, 80, 180, 140], '
    '"label": "pier"}</think><answer>3</answer>'
)
VIEWS = {
    0: ViewSpec(0, PixelBox(0, 0, 10000, 6000), 512, 307),
    1: ViewSpec(1, PixelBox(2000, 1000, 2512, 1512), 512, 512),
    2: ViewSpec(2, PixelBox(4000, 1000, 4512, 1512), 512, 512),
    3: ViewSpec(3, PixelBox(2000, 1000, 2512, 1512), 512, 512),
}
TOOLS = [{"name": "segment", "description": "Segment a box.", "parameters": {"type": "object"}}]


def _request(*entries: TranscriptEntry, final: bool = False, tools: list | None = None):
    return PlanRequest(
        question="How many boats are at the pier?",
        overview_id=0,
        transcript=list(entries),
        views=VIEWS,
        render=lambda v: np.zeros((VIEWS[v].height, VIEWS[v].width, 3), np.uint8),
        tools=tools or [],
        final=final,
    )


def _texts(message: ChatMessage) -> list[str]:
    return [p.text for p in message.parts if isinstance(p, TextPart)]


# ---------------------------------------------------------------------------------------------
# the first turn; the zoomearth layout is gone (it is the zoomearth profile now)
# ---------------------------------------------------------------------------------------------


def test_first_turn_is_overview_then_instructions() -> None:
    conv = build_conversation(_request(), "chat")
    assert len(conv.messages) == 1
    (user,) = conv.messages
    assert user.role == "user"
    assert user.parts[0] == ImagePart(0)
    assert _texts(user)[0].startswith("How many boats are at the pier?")
    assert conv.image_view_ids == (0,)
    assert not conv.open_assistant


def test_zoomearth_layout_names_the_profile() -> None:
    # The assistant-turn continuation ZoomEarth-3B was trained with is the zoomearth profile
    # (agent/profiles.py, tested in test_profiles.py); the chat layout is the only layout here.
    with pytest.raises(ValueError, match="planner_profile=zoomearth"):
        build_conversation(_request(), "zoomearth")  # type: ignore[arg-type]


def test_feedback_problems_from_data() -> None:
    entry = TranscriptEntry(
        "feedback", "ignored", data={"problems": [{"code": "x", "message": "Fix X."}, "Fix Y."]}
    )
    conv = build_conversation(_request(TranscriptEntry("planner", "hm"), entry), "chat")
    text = _texts(conv.messages[-1])[0]
    assert "- Fix X." in text and "- Fix Y." in text and "ignored" not in text


def test_chat_crops_are_user_messages_with_captions() -> None:
    conv = build_conversation(
        _request(
            TranscriptEntry("planner", STAGE1),
            TranscriptEntry("zoom", "pier", view_id=1),
            TranscriptEntry("zoom", "", view_id=2),
        ),
        "chat",
        coord_mode="norm1000",
    )
    assert [m.role for m in conv.messages] == ["user", "assistant", "user"]
    assert conv.messages[1].parts == (TextPart(STAGE1),)  # whole text in the chat layout
    assert conv.messages[2].parts == (
        TextPart("View 1: pier\n"),
        ImagePart(1),
        TextPart("View 2\n"),
        ImagePart(2),
    )
    assert not conv.open_assistant
    assert "from 0 to 1000" in _texts(conv.messages[0])[0]


def test_chat_tool_results_are_tool_messages_with_text_only() -> None:
    call = '<tool_call>{"name": "segment", "arguments": {"box": [1, 2, 3, 4]}}</tool_call>'
    conv = build_conversation(
        _request(
            TranscriptEntry("planner", call),
            TranscriptEntry(
                "tool_result",
                "1 mask, artifact:1",
                view_id=3,
                data={"tool": "segment", "arguments": {"box": [1, 2, 3, 4]}},
            ),
            TranscriptEntry("tool_result", "done", data={"name": "denoise"}),
            tools=TOOLS,
        ),
        "chat",
    )
    # Both tool messages follow the assistant turn directly (as OpenAI servers require); the
    # preview image comes after them in a user message.
    assert [m.role for m in conv.messages] == ["user", "assistant", "tool", "tool", "user"]
    assistant, tool, tool2, preview = conv.messages[1:]
    assert [(c.id, c.name) for c in assistant.tool_calls] == [
        ("call_1", "segment"),
        ("call_2", "denoise"),
    ]
    assert (tool.tool_call_id, tool2.tool_call_id) == ("call_1", "call_2")
    assert tool.image_view_ids == ()  # tool messages carry text only
    assert "segment: 1 mask, artifact:1" in tool.text and "view 3" in tool.text
    assert "denoise: done" in tool2.text
    assert preview.parts == (TextPart("View 3: preview of segment\n"), ImagePart(3))

    dicts = to_chat_dicts(
        conv,
        lambda v: {"type": "image_url", "image_url": {"url": f"v{v}"}},
        with_tool_calls=True,
        string_content=True,
    )
    assert dicts[1]["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "segment", "arguments": '{"box": [1, 2, 3, 4]}'},
    }
    assert dicts[2] == {
        "role": "tool",
        "content": tool.text,
        "tool_call_id": "call_1",
        "name": "segment",
    }
    assert dicts[1]["content"] == call  # no image: a plain string
    assert dicts[4]["content"][1] == {"type": "image_url", "image_url": {"url": "v3"}}
    # Without with_tool_calls (chat templates), no OpenAI-only keys.
    plain = to_chat_dicts(conv, lambda v: {"type": "image"})
    assert "tool_calls" not in plain[1] and "tool_call_id" not in plain[2]
    assert plain[2]["content"] == [{"type": "text", "text": tool.text}]


def test_tool_result_without_a_call_to_answer_is_user_text() -> None:
    conv = build_conversation(
        _request(
            TranscriptEntry("planner", "zoom"),
            TranscriptEntry("zoom", view_id=1),
            TranscriptEntry("tool_result", "late", data={"tool": "segment"}),
        ),
        "chat",
    )
    assert [m.role for m in conv.messages] == ["user", "assistant", "user"]
    assert "segment: late" in conv.messages[-1].text


def test_chat_consecutive_tool_results_answer_one_assistant_message() -> None:
    conv = build_conversation(
        _request(
            TranscriptEntry("planner", "two calls"),
            TranscriptEntry("tool_result", "a", data={"tool": "segment"}),
            TranscriptEntry("tool_result", "b", data={"tool": "denoise"}),
        ),
        "chat",
    )
    assert [m.role for m in conv.messages] == ["user", "assistant", "tool", "tool"]
    assert [c.id for c in conv.messages[1].tool_calls] == ["call_1", "call_2"]
    assert [m.tool_call_id for m in conv.messages[2:]] == ["call_1", "call_2"]


def test_chat_final_adds_the_best_effort_request() -> None:
    conv = build_conversation(
        _request(
            TranscriptEntry("planner", STAGE1), TranscriptEntry("zoom", view_id=1), final=True
        ),
        "chat",
    )
    final = render_prompt("final", coord_mode="pixels", layout="chat")
    assert conv.messages[-1].role == "user" and conv.messages[-1].text.endswith(final)


def test_tool_section_reaches_the_user_prompt() -> None:
    conv = build_conversation(_request(tools=TOOLS), "chat")
    text = conv.messages[0].text
    assert "<tools>" in text and '"name": "segment"' in text


# ---------------------------------------------------------------------------------------------
# Materialising, templates, errors
# ---------------------------------------------------------------------------------------------


def test_hf_placeholders_and_text_filter() -> None:
    conv = build_conversation(
        _request(TranscriptEntry("planner", "a<|im_end|>b"), TranscriptEntry("zoom", view_id=1)),
        "chat",
    )
    dicts = to_chat_dicts(
        conv, lambda v: {"type": "image"}, text=lambda s: s.replace("<|im_end|>", "")
    )
    assert dicts[0]["content"][0] == {"type": "image"}
    assert dicts[1] == {"role": "assistant", "content": [{"type": "text", "text": "ab"}]}
    assert dicts[2]["role"] == "user" and dicts[2]["content"][-1] == {"type": "image"}


def test_system_section_from_a_replacement_template(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("system: You are ZoomEarth.\nuser: '{{ question }}'\n", encoding="utf-8")
    conv = build_conversation(_request(), "chat", template=load_template(path))
    assert conv.messages[0] == ChatMessage("system", (TextPart("You are ZoomEarth."),))
    assert conv.messages[1].parts == (ImagePart(0), TextPart("How many boats are at the pier?"))


def test_errors_are_ours_not_the_models() -> None:
    with pytest.raises(ValueError, match="layout"):
        build_conversation(_request(), "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="view 9"):
        build_conversation(_request(TranscriptEntry("zoom", view_id=9)), "chat")
    with pytest.raises(ValueError, match="without a view_id"):
        build_conversation(_request(TranscriptEntry("zoom")), "chat")
    with pytest.raises(ValueError, match="unknown kind"):
        build_conversation(_request(TranscriptEntry("weird")), "chat")  # type: ignore[arg-type]


def test_follow_up_question_entry_becomes_user_message():
    import numpy as np

    from zoomearth.agent.base import PlanRequest, TranscriptEntry
    from zoomearth.agent.conversation import ImagePart, TextPart, build_conversation
    from zoomearth.geometry import PixelBox, ViewSpec

    views = {0: ViewSpec(0, PixelBox(0, 0, 1000, 1000), 512, 512)}
    request = PlanRequest(
        question="and now the north?",
        first_question="what is in the south?",
        overview_id=0,
        transcript=[
            TranscriptEntry("planner", "<answer>fields</answer>"),
            TranscriptEntry("question", "and now the north?"),
        ],
        views=views,
        render=lambda vid: np.zeros((512, 512, 3), np.uint8),
    )
    for layout in ("chat",):
        conv = build_conversation(request, layout)
        texts = [p.text for m in conv.messages for p in m.parts if isinstance(p, TextPart)]
        first_user = next(m for m in conv.messages if m.role == "user")
        assert any(isinstance(p, ImagePart) for p in first_user.parts)
        assert "what is in the south?" in " ".join(p.text for p in first_user.parts
                                                   if isinstance(p, TextPart))
        assert conv.messages[-1].role == "user" and texts[-1] == "and now the north?"
