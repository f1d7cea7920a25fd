"""The ``plan`` node of the ``zoomearth`` profile: exactly the reference's two stages.

ZoomEarth-3B was evaluated (and rewarded in RL) with a fixed protocol, and only reproduces its
published numbers under it (:mod:`zoomearth.agent.profiles`). In this profile the graph's generic
plan -> act loop runs as:

1. **stage 1** -- the planner sees the overview. The first ``bbox_2d`` of its output
   (:func:`~zoomearth.agent.protocol.reference_first_box`), mapped with the 512-long-side frame
   (``box * max(W, H) / 512`` on both axes) and cut with the reference's crop rule
   (:func:`~zoomearth.agent.profiles.reference_crop_xyxy`), becomes one zoom view rendered as the
   reference renders it (``render: "reference"``). No box: there is no stage 2 and stage 1's answer
   (:func:`~zoomearth.agent.protocol.reference_answer`) stands.
2. **tools around the zoom** -- ZoomEarth decides *where*; the instruction decides *what*: the
   tool planner (``zoomearth_tool_planner``: the rules planner's intent table, or none) reads the
   question and its tool calls run on the stage-1 region (clipped to the image), or on the whole
   scene when stage 1 gave no box. Their text results go into the run record, never into the
   model's input.
3. **stage 2** -- the planner sees the stage-1 text cut before ``<answer>`` continued with the crop
   (the backend builds that input); its answer is final, even if it writes another box.

No feedback or "final" messages are injected: the model's input is exactly the reference's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from zoomearth.agent.backends.rules import is_box_argument
from zoomearth.agent.parsing import parse_response
from zoomearth.agent.profiles import (
    REFERENCE_SIDE,
    reference_box_factor,
    reference_crop_xyxy,
    reference_resized_size,
)
from zoomearth.agent.protocol import reference_answer, reference_first_box

if TYPE_CHECKING:
    from zoomearth.agent.base import Planner, PlanRequest
    from zoomearth.graphs.state import ActionPayload, AgentState

__all__ = [
    "NO_STAGE2_ANSWER_TEMPLATE",
    "plan_zoomearth",
    "reference_view_size",
    "zoomearth_stage",
]

log = logging.getLogger(__name__)

NO_STAGE2_ANSWER_TEMPLATE: Final = (
    "Stage 2 wrote no <answer> block that the reference reader accepts; {fallback}."
)
NO_STAGE1_ANSWER_TEMPLATE: Final = (
    "Stage 1 wrote neither a usable bbox_2d nor an <answer> block the reference reader accepts."
)
OUTSIDE_TEMPLATE: Final = (
    "ZoomEarth's crop {crop} lies outside the {width}x{height} image; the crop is black (as in "
    "the reference) and tools were not run on it."
)
ZOOM_DISABLED_TEMPLATE: Final = (
    "Zooming is off (max_zooms 0 or the no-zoom baseline): stage 1's box was not followed and "
    "its answer stands."
)
TOOL_PLANNER_FAILED_TEMPLATE: Final = "The tool planner could not read the question: {error}"

#: Makes a tool planner reply for a request (the rules planner's :meth:`plan`, usually).
ToolPlannerFn = Callable[["PlanRequest"], Any]


def zoomearth_stage(current: list[dict[str, Any]]) -> int:
    """Which step of the two-stage protocol comes next for the current question.

    Args:
        current: Transcript entries since the latest question.

    Returns:
        1 (no planner turn yet), 2 (stage 1 zoomed), or 0 (stage 1 gave no zoom, or stage 2 is
        done: finish without calling the model).
    """
    turns = sum(1 for e in current if e.get("kind") == "planner")
    zooms = sum(1 for e in current if e.get("kind") == "zoom")
    if turns == 0:
        return 1
    if turns == 1 and zooms:
        return 2
    return 0


def reference_view_size(region_xyxy: list[float]) -> tuple[int, int]:
    """Rendered size of a reference view: the window's size after the reference's resize rule."""
    x1, y1, x2, y2 = (int(v) for v in region_xyxy)
    return reference_resized_size(max(1, x2 - x1), max(1, y2 - y1), REFERENCE_SIDE)


def _clip(crop: tuple[int, ...], width: int, height: int) -> list[float] | None:
    x1, y1, x2, y2 = max(0, crop[0]), max(0, crop[1]), min(width, crop[2]), min(height, crop[3])
    if x2 <= x1 or y2 <= y1:
        return None
    return [float(x1), float(y1), float(x2), float(y2)]


def _stage_answer(state: AgentState, question: int) -> str | None:
    for record in state.get("steps", []):
        if record.get("question", 0) == question and record.get("stage") == 1:
            value = record.get("stage_answer")
            return str(value) if value is not None else None
    return None


def plan_zoomearth(
    state: AgentState,
    planner: Planner,
    request: PlanRequest,
    tools: Mapping[str, Any],
    tool_planner: ToolPlannerFn | None,
    current: list[dict[str, Any]],
    emit: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """One ``plan`` node call of the ``zoomearth`` profile: stage 1, stage 2, or finish.

    Args:
        state: The graph state.
        planner: The planner (``profile == "zoomearth"``); it builds the stage's raw input itself.
        request: The planner request the generic node built (question, views, renderer).
        tools: The registered tool nodes by name.
        tool_planner: Reads the question into tool calls (None: no tools run).
        current: Transcript entries since the latest question.
        emit: Progress event sink.

    Returns:
        The state update (transcript, pending actions, answer, step record).
    """
    question_index = int(state.get("question_index", 0))
    stage = zoomearth_stage(current)
    step = int(state.get("step", 0)) + 1
    if stage == 0:
        # Stage 1 gave no zoom (its tools have run): stage 1's answer stands.
        answer = _stage_answer(state, question_index)
        update: dict[str, Any] = {"step": step, "pending": []}
        if answer is not None:
            update.update(answer=answer, answer_kind="answer")
        else:
            update.update(answer=None, warnings=[NO_STAGE1_ANSWER_TEMPLATE])
        return update

    t0 = time.perf_counter()
    reply = planner.plan(request)
    elapsed = time.perf_counter() - t0
    text = reply.text
    ref = state["scene"]
    width, height = int(ref["width"]), int(ref["height"])
    payloads: list[ActionPayload] = []
    warnings: list[str] = []
    next_view = int(state.get("next_view_id", 1))
    answer = reference_answer(text)
    record: dict[str, Any] = {
        "question": question_index,
        "step": step,
        "stage": stage,
        "planner": reply.backend or planner.name,
        "seconds": round(elapsed, 3),
        "visual_tokens": reply.visual_tokens,
        "zooms": [],
        "tools": [],
        "answer": None,
        "stage_answer": answer if stage == 1 else None,
        "problems": [],
    }
    update = {
        "step": step,
        "views": {str(vid): {"seen": [int(w), int(h)]} for vid, (w, h) in reply.seen_sizes.items()},
        # The whole text: stage 2 continues it byte for byte (bounded by the token budget).
        "transcript": [{"kind": "planner", "text": text, "view_id": None, "data": {"step": step}}],
        "visual_tokens": int(reply.visual_tokens),
    }
    for reply_note in reply.notes:
        emit({"event": "note", "text": reply_note})

    if stage == 2:
        if answer is None:
            fallback = _stage_answer(state, question_index)
            message = NO_STAGE2_ANSWER_TEMPLATE.format(
                fallback="the stage-1 answer is reported"
                if fallback is not None
                else "no answer is available"
            )
            warnings.append(message)
            update.update(answer=fallback, answer_kind="best_effort" if fallback else None)
        else:
            update.update(answer=answer, answer_kind="answer")
            record["answer"] = answer
        update.update(pending=[], warnings=warnings, steps=[record])
        emit({"event": "plan", **record})
        return update

    # ---- stage 1 ------------------------------------------------------------------------------
    box, note = reference_first_box(text)
    if note:
        warnings.append(note)
    tool_region: list[float] | None = None
    zoomed = False
    if box is not None and (
        int(state.get("max_zooms", 1)) <= 0 or not getattr(planner, "zoom_enabled", True)
    ):
        warnings.append(ZOOM_DISABLED_TEMPLATE)
        box = None
    if box is not None:
        factor = reference_box_factor(width, height, REFERENCE_SIDE)
        crop = reference_crop_xyxy([v * factor for v in box], width, height, REFERENCE_SIDE)
        region = [float(v) for v in crop]
        parsed = parse_response(text)
        label = parsed.zooms[0].label if parsed.zooms else None
        payloads.append(
            {
                "action_id": f"s{step}a0",
                "step": step,
                "kind": "zoom",
                "region_xyxy": region,
                "view_id": next_view,
                "label": label,
                "question": question_index,
                "render": "reference",
            }
        )
        dates = state.get("stack_dates")
        if dates:
            payloads[-1]["date"] = dates["viewing"]
        next_view += 1
        zoomed = True
        record["zooms"] = [region]
        tool_region = _clip(crop, width, height)
        if tool_region is None:
            warnings.append(OUTSIDE_TEMPLATE.format(crop=list(crop), width=width, height=height))

    calls: list[tuple[str, dict[str, Any]]] = []
    if tool_planner is not None and tools and (not zoomed or tool_region is not None):
        calls, tool_notes = _tool_calls(tool_planner, request, tools, tool_region)
        warnings.extend(tool_notes)
    for j, (name, args) in enumerate(calls):
        payloads.append(
            {
                "action_id": f"s{step}t{j}",
                "step": step,
                "kind": "tool",
                "tool": name,
                "arguments": args,
                "region_xyxy": list(tool_region) if tool_region is not None else None,
                "view_id": next_view,
            }
        )
        next_view += 1
    record["tools"] = [{"name": n, "arguments": a} for n, a in calls]

    if not payloads:
        # No zoom and no tools: stage 1's answer is final (the reference's no-crop case).
        if answer is None:
            warnings.append(NO_STAGE1_ANSWER_TEMPLATE)
        update.update(answer=answer, answer_kind="answer" if answer is not None else None)
        record["answer"] = answer
    if answer is not None:
        update["stage_answers"] = [answer]
    update.update(
        pending=payloads,
        next_view_id=next_view,
        zooms_used=int(state.get("zooms_used", 0)) + (1 if zoomed else 0),
        warnings=warnings,
        steps=[record],
    )
    emit({"event": "plan", **record})
    return update


def _tool_calls(
    tool_planner: ToolPlannerFn,
    request: PlanRequest,
    tools: Mapping[str, Any],
    region: list[float] | None,
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The tool calls the tool planner reads from the question, aimed at ZoomEarth's region.

    Its zooms and answer are ignored (ZoomEarth decides where and answers); region arguments
    (``bbox_2d``/``view``) are dropped so the graph's region -- ZoomEarth's crop -- applies, and
    full-resolution box arguments (``target_box`` ...) are set to that region.
    """
    notes: list[str] = []
    try:
        reply = tool_planner(request)
    except Exception as exc:  # noqa: BLE001 - a helper's failure must not cost the answer
        return [], [TOOL_PLANNER_FAILED_TEMPLATE.format(error=exc)]
    parsed = parse_response(reply.text) if reply.parsed is None else reply.parsed
    specs = {str(t.get("name")): t for t in request.tools if isinstance(t, Mapping)}
    calls: list[tuple[str, dict[str, Any]]] = []
    for call in parsed.tool_calls:
        if call.name not in tools or call.arguments is None:
            continue
        args = {k: v for k, v in call.arguments.items() if k not in ("bbox_2d", "view")}
        parameters = specs.get(call.name, {}).get("parameters") or {}
        properties = parameters.get("properties", {}) if isinstance(parameters, Mapping) else {}
        for key in list(args):
            if is_box_argument(str(key).lower()) and key in properties:
                if region is None:
                    args.pop(key)
                else:
                    args[key] = [round(v, 2) for v in region]
        calls.append((call.name, args))
    if calls:
        where = f"ZoomEarth's region {region}" if region is not None else "the whole scene"
        notes.append(
            "tools chosen from the question: "
            + ", ".join(name for name, _ in calls)
            + f", run on {where}"
        )
    return calls, notes
