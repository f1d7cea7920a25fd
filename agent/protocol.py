r"""The ZoomEarth protocol text in one place: tags, turn formatting, and the reference readers.

A planner turn is text with three kinds of block::

    <think> reasoning ... {"bbox_2d": [x1, y1, x2, y2], "label": "..."} ... </think>
    <tool_call>{"name": "...", "arguments": {...}}</tool_call>
    <answer> final answer </answer>

Everything in the project that *writes* such text -- the rules and script planners, the evaluation
baselines, the SFT targets -- goes through :func:`format_turn`, the inverse of
:func:`zoomearth.agent.parsing.parse_response` (``parse_response(format_turn(...))`` gives back the
zooms, tool calls and answer that went in).

Two readers, on purpose
-----------------------
The project reads model text in two ways, each right in its own place:

* :func:`zoomearth.agent.parsing.parse_response` -- the **general agent's** parser: lenient,
  linear-time, reports every repair as a problem the model sees next turn, reads several boxes,
  tool calls and a ``view`` key. Used by the ``agent`` profile.
* the **reference readers** below -- the exact semantics of the reference implementation's
  evaluation (``src/eval/infer.py``) and GRPO rewards, which ZoomEarth-3B was trained and scored
  with. Used by the ``zoomearth`` profile and by the training rewards:

  ============================  ===========================================================
  :func:`reference_bboxes`      every ``"bbox_2d": [...]`` whose items all parse with
                                ``float()`` (``re.findall(r'"bbox_2d"\s*:\s*\[(.*?)\]',
                                text, re.DOTALL)``, unparseable lists skipped)
  :func:`reference_first_box`   the first of them when it is four finite numbers: the
                                ``zoomearth`` profile's stage-1 box
  :func:`reference_answer`      ``re.search(r'<answer>\s*(.*?)\s*</answer>', text)`` --
                                no DOTALL: an answer spanning lines is not read
  :func:`reference_tag`         ``<tag\s*>\s*(.*?)\s*</tag\s*>`` with DOTALL, stripped (the
                                rewards' format and answer reader)
  :func:`stage2_prefix`         ``text.split("<answer>")[0]`` (the stage-2 continuation)
  ============================  ===========================================================

  Each is written as a scanner with the same result as the regular expression it names (property
  tests compare them), but in linear time: the expressions backtrack quadratically on long
  whitespace runs.

Nothing here imports anything heavy.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "BOX_KEY",
    "THINK_CLOSE",
    "THINK_OPEN",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "VISION_PLACEHOLDER",
    "clean_text",
    "format_tool_call",
    "format_turn",
    "format_zoom",
    "reference_answer",
    "reference_bboxes",
    "reference_first_box",
    "reference_tag",
    "stage2_prefix",
]

THINK_OPEN: Final = "<think>"
THINK_CLOSE: Final = "</think>"
ANSWER_OPEN: Final = "<answer>"
ANSWER_CLOSE: Final = "</answer>"
TOOL_CALL_OPEN: Final = "<tool_call>"
TOOL_CALL_CLOSE: Final = "</tool_call>"
#: The JSON key of a zoom box.
BOX_KEY: Final = "bbox_2d"
#: One image in a Qwen2-VL-family prompt (the processor expands ``<|image_pad|>`` to the image's
#: token count).
VISION_PLACEHOLDER: Final = "<|vision_start|><|image_pad|><|vision_end|>"

# Protocol tags and special-token strings inside quoted text would change the turn's structure.
# The parser reads ``<tag`` + up to 16 whitespace characters + ``>`` as a tag (parsing._TAG_RE);
# this pattern covers at least that, so cleaned text can never be read as a tag.
_STRUCTURE_RE: Final = re.compile(
    r"<[ \t\r\n]{0,16}/?[ \t\r\n]{0,16}(?:think|answer|tool_call)[ \t\r\n]{0,16}>"
    r"|<\|[a-z_]{1,40}\|>",
    re.I,
)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Remove protocol tags and special-token strings from text placed inside a turn.

    Args:
        text: Free text (a question quoted back, a tool result, an answer).

    Returns:
        The text without ``<think>``/``<answer>``/``<tool_call>`` tags (open or close) and
        ``<|...|>`` token strings, stripped.
    """
    return _STRUCTURE_RE.sub("", text).strip()


def _number(value: float) -> float | int:
    """A box coordinate as JSON: an int when integral (``512`` rather than ``512.0``)."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"box coordinates must be finite numbers; got {value!r}")
    r = round(v, 4)
    return int(r) if float(r).is_integer() else r


def format_zoom(
    box: Sequence[float],
    label: str | None = None,
    view: int | None = None,
    *,
    frame: str | None = None,
) -> str:
    """One zoom request as the JSON object the protocol puts inside ``<think>``.

    Args:
        box: ``(x1, y1, x2, y2)`` in pixels of view ``view`` (the latest view when None), or in
            full-resolution pixels when ``frame == "full"`` (structured planners only).
        label: What is there.
        view: The id of the view the box is drawn on.
        frame: ``"full"`` for full-resolution boxes; None (the default) for the view frame.

    Returns:
        ``{"bbox_2d": [...], "label": ..., "view": ...}`` (keys present only when given).

    Raises:
        ValueError: The box does not hold four finite numbers.
    """
    if len(box) != 4:
        raise ValueError(f"a zoom box needs four numbers x1, y1, x2, y2; got {len(box)}")
    obj: dict[str, Any] = {BOX_KEY: [_number(v) for v in box]}
    if label is not None:
        obj["label"] = clean_text(str(label))
    if view is not None:
        obj["view"] = int(view)
    if frame is not None and frame != "view":
        obj["frame"] = frame
    return json.dumps(obj, ensure_ascii=False)


def format_tool_call(name: str, arguments: Mapping[str, Any] | None = None) -> str:
    """One ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block.

    Args:
        name: The tool's name.
        arguments: Its arguments (a JSON object).

    Returns:
        The block, JSON compact, non-ASCII kept.
    """
    body = json.dumps({"name": str(name), "arguments": dict(arguments or {})}, ensure_ascii=False)
    # A tag inside a JSON string would open or close a block: "<" is written as its JSON escape
    # (the same string once parsed).
    body = body.replace("<", "\\u003c")
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def _zoom_text(zoom: Any) -> str:
    if isinstance(zoom, str):
        return zoom
    if isinstance(zoom, Mapping):
        return format_zoom(
            zoom[BOX_KEY] if BOX_KEY in zoom else zoom["box"],
            zoom.get("label"),
            zoom.get("view"),
            frame=zoom.get("frame"),
        )
    return format_zoom(
        zoom.box,
        getattr(zoom, "label", None),
        getattr(zoom, "view", None),
        frame=getattr(zoom, "frame", None),
    )


def _call_parts(call: Any) -> tuple[str, Mapping[str, Any] | None]:
    if isinstance(call, Sequence) and not isinstance(call, str) and len(call) == 2:
        return str(call[0]), call[1]
    if isinstance(call, Mapping):
        return str(call["name"]), call.get("arguments")
    return str(call.name), call.arguments


def format_turn(
    think: str = "",
    zooms: Iterable[Any] = (),
    tool_calls: Iterable[Any] = (),
    answer: str | None = None,
) -> str:
    r"""Write one planner turn in the protocol; the inverse of ``parse_response``.

    Layout: ``<think>`` with the reasoning and one zoom object per line, then one ``<tool_call>``
    block per call, then ``<answer>``, each on its own line. Free text (``think``, labels,
    ``answer``) passes through :func:`clean_text`, so it cannot open or close blocks.

    Args:
        think: Reasoning text (may be empty; the block is written when there is reasoning or a
            zoom).
        zooms: Zoom requests: objects with ``box``/``label``/``view``/``frame`` attributes
            (:class:`~zoomearth.agent.parsing.ZoomRequest`), mappings with ``bbox_2d`` (or
            ``box``), or preformatted JSON strings.
        tool_calls: ``(name, arguments)`` pairs, mappings with ``name``/``arguments``, or objects
            with those attributes (:class:`~zoomearth.agent.parsing.ToolCallRequest`).
        answer: The answer, or None for a turn without one.

    Returns:
        The turn's text.

    Example:
        >>> format_turn("look closer", [{"bbox_2d": [10, 20, 30, 40], "label": "ship"}])
        '<think>look closer\n{"bbox_2d": [10, 20, 30, 40], "label": "ship"}</think>'
    """
    zoom_lines = [_zoom_text(z) for z in zooms]
    reasoning = clean_text(think)
    parts: list[str] = []
    if reasoning or zoom_lines:
        body = "\n".join([reasoning, *zoom_lines] if reasoning else zoom_lines)
        parts.append(f"{THINK_OPEN}{body}{THINK_CLOSE}")
    for call in tool_calls:
        parts.append(format_tool_call(*_call_parts(call)))
    if answer is not None:
        parts.append(f"{ANSWER_OPEN}{clean_text(answer)}{ANSWER_CLOSE}")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Reference readers (linear-time scanners with the semantics of the reference's expressions)
# ---------------------------------------------------------------------------------------------


def _skip_space(text: str, i: int) -> int:
    """First index >= i that is not whitespace (what Python's re calls whitespace)."""
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    return i


def _bbox_lists(text: str) -> list[str]:
    r"""The inner texts of ``re.findall(r'"bbox_2d"\s*:\s*\[(.*?)\]', text, re.DOTALL)``."""
    key = f'"{BOX_KEY}"'
    out: list[str] = []
    pos = 0
    n = len(text)
    while True:
        k = text.find(key, pos)
        if k < 0:
            return out
        i = _skip_space(text, k + len(key))
        if i < n and text[i] == ":":
            i = _skip_space(text, i + 1)
            if i < n and text[i] == "[":
                close = text.find("]", i + 1)
                if close < 0:
                    return out  # no later key can be closed either
                out.append(text[i + 1 : close])
                pos = close + 1
                continue
        pos = k + 1


def reference_bboxes(text: str | None) -> list[list[float]]:
    r"""Every ``"bbox_2d": [...]`` list whose items all parse as numbers, in order.

    The reference's ``extract_bbox``: ``re.findall(r'"bbox_2d"\s*:\s*\[(.*?)\]', text,
    re.DOTALL)``, each match split on ``,`` and read with ``float()``; a list with an item that
    does not parse (``[]``, ``["a", 1]``) is skipped. Lists of the wrong length, and ``nan`` or
    ``inf`` items (``float()`` reads them), are kept: callers decide.

    Args:
        text: Model output (None is empty).

    Returns:
        The lists as floats, unscaled.
    """
    boxes: list[list[float]] = []
    for inner in _bbox_lists(text or ""):
        try:
            boxes.append([float(x.strip()) for x in inner.split(",")])
        except ValueError:
            continue
    return boxes


def reference_first_box(text: str | None) -> tuple[list[float] | None, str | None]:
    """The first box of :func:`reference_bboxes`, when it is usable as a crop.

    The reference crops with the first list it reads. A first list that is not four finite
    numbers would make the reference's ``cut_image`` raise; here it means "no box" and a note says
    why.

    Args:
        text: Model output.

    Returns:
        ``(box, None)`` with four finite floats, ``(None, None)`` when there is no list, or
        ``(None, note)`` when the first list cannot be used.
    """
    boxes = reference_bboxes(text)
    if not boxes:
        return None, None
    first = boxes[0]
    if len(first) != 4:
        return None, f"the first bbox_2d has {len(first)} numbers, not 4; no crop was made"
    if not all(math.isfinite(v) for v in first):
        return None, "the first bbox_2d holds a non-finite number; no crop was made"
    return first, None


def reference_answer(text: str | None) -> str | None:
    r"""The reference's ``extract_answer``: ``re.search(r'<answer>\s*(.*?)\s*</answer>', text)``.

    Without DOTALL: the answer itself cannot span a line break (whitespace around it may), so
    ``<answer>a\nb</answer>`` gives None and a later ``<answer>`` block is tried.

    Args:
        text: Model output.

    Returns:
        The group (not stripped further), or None.
    """
    text = text or ""
    pos = 0
    close_at = -2  # cached: first "</answer>" at or after the current start (monotone)
    run_start: dict[int, int] = {}
    newline_at = -2
    while True:
        p = text.find(ANSWER_OPEN, pos)
        if p < 0:
            return None
        i = _skip_space(text, p + len(ANSWER_OPEN))
        if close_at < i:
            close_at = text.find(ANSWER_CLOSE, i)
        if close_at < 0:
            return None
        e = close_at
        if e not in run_start:
            r = e
            while r > 0 and text[r - 1].isspace():
                r -= 1
            run_start[e] = r
        r = max(run_start[e], i)
        if newline_at != -1 and newline_at < i:
            newline_at = text.find("\n", i)
        if newline_at == -1 or newline_at >= r:
            return text[i:r]
        pos = p + 1


def _find_tag(text: str, start: int, opener: str) -> tuple[int, int]:
    r"""First match of ``<opener>\s*>`` at or after ``start``: ``(match_start, match_end)``."""
    n = len(text)
    pos = start
    while True:
        k = text.find(opener, pos)
        if k < 0:
            return -1, -1
        j = _skip_space(text, k + len(opener))
        if j < n and text[j] == ">":
            return k, j + 1
        pos = k + 1


def reference_tag(text: str | None, tag: str) -> str | None:
    r"""Content of the first ``<tag\s*>\s*(.*?)\s*</tag\s*>`` (DOTALL), stripped.

    The reader of the reference's GRPO format and answer rewards.

    Args:
        text: Model output.
        tag: ``think``, ``answer`` ...

    Returns:
        The content (``""`` for an empty block), or None when there is no closed block.
    """
    text = text or ""
    start, end = _find_tag(text, 0, f"<{tag}")
    if start < 0:
        return None
    i = _skip_space(text, end)
    close, _ = _find_tag(text, i, f"</{tag}")
    if close < 0:
        return None
    r = close
    while r > i and text[r - 1].isspace():
        r -= 1
    return text[i:r].strip()


def stage2_prefix(stage1_output: str) -> str:
    """The stage-1 output as stage 2 continues it: ``stage1_output.split("<answer>")[0]``.

    Exact and case-sensitive, as in the reference (the general agent's
    :func:`~zoomearth.agent.parsing.cut_before_answer` also accepts ``<ANSWER >`` spellings).

    Args:
        stage1_output: The decoded, stripped stage-1 text.

    Returns:
        The text before the first ``<answer>`` (all of it when there is none).
    """
    return stage1_output.split(ANSWER_OPEN)[0]
