"""The ``plan`` node: one planner turn, parsed, validated and turned into actions.

:class:`PlanNode` asks the planner for one turn, parses it, validates the requested actions
against the views and the registry, and reserves view ids for them. With the ``zoomearth``
profile it runs the reference's two stages instead (:mod:`zoomearth.graphs.zoomearth_stages`),
with the tool planner of :func:`make_tool_planner` choosing tools around ZoomEarth's zoom.

Error policy: model mistakes (unparseable output, unknown tool, invalid arguments, box outside the
image) become ``feedback`` transcript entries the planner sees next turn; the regions of zooms and
tool calls are computed by :mod:`zoomearth.graphs.regions`.

Frames: every ``region_xyxy`` is in full-resolution pixels of the scene (xyxy, half-open).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig

from zoomearth.agent.base import PlanRequest, TranscriptEntry
from zoomearth.agent.parsing import (
    ParsedResponse,
    Problem,
    ProblemCode,
    parse_response,
    resolve_turn,
)
from zoomearth.graphs.nodes import current_entries, emit, entry, is_zoomearth
from zoomearth.graphs.regions import tool_request_region, zoom_request_region
from zoomearth.graphs.runtime import GraphRuntime, view_spec_of
from zoomearth.graphs.state import ActionPayload, AgentState, ViewRecord
from zoomearth.graphs.zoomearth_stages import plan_zoomearth

if TYPE_CHECKING:
    from zoomearth.agent.base import Planner

__all__ = [
    "FINAL_FEEDBACK",
    "MAX_STORED_TEXT",
    "NO_ACTION_FEEDBACK",
    "NO_TOOLS_TEMPLATE",
    "UNKNOWN_TOOL_TEMPLATE",
    "ZOOM_BUDGET_TEMPLATE",
    "PlanNode",
    "latest_view_id",
    "make_tool_planner",
    "scene_info",
]

MAX_STORED_TEXT = 4000  # planner text kept per turn in the transcript (checkpoints stay small)

UNKNOWN_TOOL_TEMPLATE = "There is no tool named {name!r}. Available tools: {valid}."
NO_TOOLS_TEMPLATE = "There is no tool named {name!r}; no tools are available in this run."
ZOOM_BUDGET_TEMPLATE = (
    "The zoom budget ({limit} zooms) is used up; answer from the views you have or use a tool."
)
NO_ACTION_FEEDBACK = (
    "Your last reply had no usable zoom, tool call or answer. Zoom with "
    '{"bbox_2d": [x1, y1, x2, y2], "label": "..."}, call a tool with <tool_call>, '
    "or finish with <answer>...</answer>."
)
FINAL_FEEDBACK = (
    "The step budget is used up. Give your best answer now in <answer>...</answer>, from what you "
    "have seen."
)


def latest_view_id(state: AgentState) -> int:
    """The most recent image shown to the planner (the frame of boxes that name no view).

    This may be a tool's preview: the planner draws boxes on the latest image it saw. It is never
    the *region* of a tool call without a box; that is the latest zoom
    (:func:`zoomearth.graphs.regions.latest_zoom`).
    """
    latest = 0
    for e in state.get("transcript", []):
        if e.get("view_id") is not None:
            latest = int(e["view_id"])
    return latest


def scene_info(state: AgentState) -> dict[str, Any]:
    """The ``scene_info`` of a :class:`~zoomearth.agent.base.PlanRequest`: size, CRS, path."""
    ref = state["scene"]
    return {
        "width": ref["width"],
        "height": ref["height"],
        "crs": ref.get("crs"),
        "transform": ref.get("transform"),
        "path": ref["path"],
    }


def make_tool_planner(settings: Any) -> Planner | None:
    """The planner that chooses tools around ZoomEarth's zoom, from ``zoomearth_tool_planner``.

    ``rules``: the rules planner's intent table; ``openai``: a general VLM over an
    OpenAI-compatible server (``tool_planner_base_url``/``tool_planner_model``/
    ``tool_planner_api_key``, each falling back to the ``planner_*`` setting), run in the agent
    profile, of whose reply only the tool calls are used; ``none``: no tools.
    """
    choice = settings.zoomearth_tool_planner
    if choice == "rules":
        from zoomearth.agent.backends.rules import RulesPlanner

        return RulesPlanner(settings)
    if choice == "openai":
        from zoomearth.agent.backends.openai_compat import OpenAIPlanner

        return OpenAIPlanner(
            settings.model_copy(
                update={
                    "planner": "openai",
                    "planner_profile": "agent",
                    "planner_base_url": settings.tool_planner_base_url
                    or settings.planner_base_url,
                    "planner_model": settings.tool_planner_model,
                    "planner_api_key": settings.tool_planner_api_key
                    or settings.planner_api_key,
                    "planner_prompt": None,
                }
            )
        )
    return None


class PlanNode:
    """``plan``: ask the planner for one turn and turn its reply into actions or feedback.

    Args:
        planner: Any planner backend (:class:`zoomearth.agent.base.Planner`).
        registry: The tool registry (tool specs for the prompt).
        runtime: Shared resources (view rendering, settings ``min_crop``).
        tools: The graph's tool entries by name (the tool nodes that exist).
        tool_planner: ``zoomearth`` profile only: the planner that reads the question into tool
            calls (None: :func:`make_tool_planner` from the settings, built on first use).
    """

    def __init__(
        self,
        planner: Planner,
        registry: Any,
        runtime: GraphRuntime,
        tools: dict[str, Any],
        tool_planner: Planner | None = None,
    ) -> None:
        self.planner = planner
        self.registry = registry
        self.runtime = runtime
        self.settings = runtime.settings
        self.tools = tools
        self._tool_planner = tool_planner

    def zoomearth_tool_planner(self) -> Planner | None:
        """The planner that picks tools around ZoomEarth's zoom (built on first use)."""
        if self._tool_planner is None:
            self._tool_planner = make_tool_planner(self.settings)
        return self._tool_planner

    def __call__(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """The state update of one planner turn."""
        planner, registry, runtime, tools = self.planner, self.registry, self.runtime, self.tools
        step = int(state.get("step", 0)) + 1
        final = step > int(state["max_steps"])
        views = {int(k): view_spec_of(v) for k, v in state["views"].items()}
        ref = state["scene"]
        request = PlanRequest(
            question=state["question"],
            overview_id=0,
            transcript=[
                TranscriptEntry(e["kind"], e.get("text", ""), e.get("view_id"), e.get("data", {}))
                for e in state.get("transcript", [])
            ],
            views=views,
            render=lambda vid: runtime.render(ref, state["views"][str(vid)]),
            tools=registry.tool_specs_for_prompt() if tools else [],
            final=final,
            scene_info=scene_info(state),
            artifacts=[
                {"id": a["id"], "kind": a["kind"], "summary": a.get("summary", "")}
                for a in state.get("artifacts", [])
            ],
            first_question=state.get("first_question")
            if state.get("first_question") != state["question"]
            else None,
            check_arguments=getattr(registry, "argument_problem", None) if tools else None,
            dates=state.get("stack_dates"),
        )
        if is_zoomearth(state):
            chooser = self.zoomearth_tool_planner() if tools else None
            return plan_zoomearth(
                state,
                planner,
                request,
                tools,
                chooser.plan if chooser is not None else None,
                current_entries(state),
                emit,
            )
        t0 = time.perf_counter()
        reply = planner.plan(request)
        elapsed = time.perf_counter() - t0
        parsed: ParsedResponse = reply.parsed or parse_response(reply.text)
        seen_updates: dict[str, ViewRecord] = {
            str(vid): {"seen": [int(w), int(h)]} for vid, (w, h) in reply.seen_sizes.items()
        }
        all_views = {**state["views"]}
        for k, v in seen_updates.items():
            if k in all_views:
                all_views[k] = {**all_views[k], **v}

        zooms_left = int(state["max_zooms"]) - int(state.get("zooms_used", 0))
        decision = resolve_turn(parsed, can_act=not final)
        problems: list[Problem] = list(decision.problems)
        payloads: list[ActionPayload] = []
        next_view = int(state.get("next_view_id", 1))
        latest = latest_view_id(state)
        turn_zoom_region: list[float] | None = None

        for i, zoom in enumerate(decision.zooms):
            if zooms_left <= 0:
                problems.append(
                    Problem(
                        ProblemCode.TOO_MANY_ITEMS,
                        ZOOM_BUDGET_TEMPLATE.format(limit=state["max_zooms"]),
                    )
                )
                break
            region, problem = zoom_request_region(
                zoom, all_views, latest, state, planner, self.settings.min_crop
            )
            if problem is not None:
                problems.append(problem)
                continue
            zoom_payload: ActionPayload = {
                "action_id": f"s{step}a{i}",
                "step": step,
                "kind": "zoom",
                "region_xyxy": region,
                "view_id": next_view,
                "label": zoom.label,
                "question": int(state.get("question_index", 0)),
            }
            dates = state.get("stack_dates")
            if dates:
                zoom_payload["date"] = str(dates["viewing"])  # time stacks: the date it shows
            payloads.append(zoom_payload)
            turn_zoom_region = region
            next_view += 1
            zooms_left -= 1

        for j, call in enumerate(decision.tool_calls):
            if call.problems:
                problems.extend(call.problems)
                continue
            if call.name not in tools:
                valid = ", ".join(sorted(tools)) or "none"
                template = UNKNOWN_TOOL_TEMPLATE if tools else NO_TOOLS_TEMPLATE
                problems.append(
                    Problem(ProblemCode.UNKNOWN_TOOL, template.format(name=call.name, valid=valid))
                )
                continue
            args = dict(call.arguments or {})
            region, problem = tool_request_region(
                args, all_views, latest, state, planner, turn_zoom_region
            )
            if problem is not None:
                problems.append(problem)
                continue
            payloads.append(
                {
                    "action_id": f"s{step}t{j}",
                    "step": step,
                    "kind": "tool",
                    "tool": call.name,
                    "arguments": args,
                    "region_xyxy": region,
                    "view_id": next_view,
                }
            )
            next_view += 1

        text = (
            reply.text
            if len(reply.text) <= MAX_STORED_TEXT
            else (reply.text[:MAX_STORED_TEXT] + " …[truncated]")
        )
        transcript = [entry("planner", text, step=step)]
        answer = decision.final_answer if not payloads else None
        if not payloads and answer is None:
            # Nothing usable this turn: tell the model why (or ask for a best-effort answer).
            lines = [p.message for p in problems] or [NO_ACTION_FEEDBACK]
            if final:
                lines = [FINAL_FEEDBACK]
            transcript.append(entry("feedback", "\n".join(lines)))
        elif problems:
            transcript.append(entry("feedback", "\n".join(p.message for p in problems)))

        step_record = {
            "question": int(state.get("question_index", 0)),
            "step": step,
            "planner": reply.backend or planner.name,
            "seconds": round(elapsed, 3),
            "visual_tokens": reply.visual_tokens,
            "zooms": [p["region_xyxy"] for p in payloads if p["kind"] == "zoom"],
            "tools": [
                {"name": p["tool"], "arguments": p["arguments"]}
                for p in payloads
                if p["kind"] == "tool"
            ],
            "answer": answer,
            "stage_answer": decision.stage_answer,
            "problems": [{"code": str(p.code), "message": p.message} for p in problems],
        }
        for note in reply.notes:
            emit({"event": "note", "text": note})
        emit({"event": "plan", **step_record})
        update: dict[str, Any] = {
            "step": step,
            "views": seen_updates,
            "transcript": transcript,
            "steps": [step_record],
            "problems": step_record["problems"],
            "visual_tokens": int(reply.visual_tokens),
            "pending": payloads,
            "next_view_id": next_view,
            "zooms_used": int(state.get("zooms_used", 0))
            + sum(1 for p in payloads if p["kind"] == "zoom"),
        }
        if decision.stage_answer is not None:
            update["stage_answers"] = [decision.stage_answer]
        if answer is not None:
            update["answer"] = answer
            update["answer_kind"] = "answer"
        elif final and not payloads:
            update["answer"] = None  # the answer node composes a best-effort answer
        return update
