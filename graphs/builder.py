"""The LangGraph state machine: observe -> plan -> (zoom | tool nodes)* -> plan ... -> answer.

One factory, :func:`build_graph`, builds and compiles the graph from a planner, the tool registry
and a checkpointer. Nodes:

* ``observe`` -- opens the scene and adds the overview view (or, on a follow-up question in the
  same thread, adds the new question to the transcript);
* ``plan`` -- asks the planner for one turn, parses it, validates the requested actions against
  the views and the registry, and reserves view ids for them;
* ``zoom`` -- records a zoom view (a full-resolution crop at least ``min_crop`` px, rendered on
  demand, never stored);
* one node per registered tool, named after the tool;
* ``answer`` -- finalises the answer (best effort when budgets ran out) and writes the trajectory
  picture into the run directory.

Routing is done by pure functions of state with explicit path maps; several actions of one turn fan
out with ``Send`` and meet again at ``plan``. A *step* is one plan -> actions -> observations cycle.

Error policy: model mistakes (unparseable output, unknown tool, invalid arguments, box outside the
image) become ``feedback`` transcript entries the planner sees next turn. A tool that fails is
recorded with its cause and the run continues to a best-effort answer; with ``strict`` (tests,
``--strict``) the failure is re-raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send, interrupt

from zoomearth.agent.base import PlanRequest, TranscriptEntry
from zoomearth.agent.conversation import zoom_entry_text
from zoomearth.agent.parsing import (
    ParsedResponse,
    Problem,
    ProblemCode,
    ZoomRequest,
    parse_response,
    resolve_turn,
)
from zoomearth.agent.profiles import reference_resized_size
from zoomearth.errors import BoxError
from zoomearth.geometry import PixelBox, min_crop_xyxy, validate_box
from zoomearth.graphs.runtime import GraphRuntime, view_spec_of
from zoomearth.graphs.state import ActionPayload, AgentState, ViewRecord
from zoomearth.graphs.zoomearth_stages import plan_zoomearth, reference_view_size

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.graph.state import CompiledStateGraph

    from zoomearth.agent.base import Planner

__all__ = ["CORE_NODES", "build_graph", "make_tool_planner", "route_after_plan"]

log = logging.getLogger(__name__)

CORE_NODES = ("observe", "plan", "zoom", "answer")
MAX_STORED_TEXT = 4000  # planner text kept per turn in the transcript (checkpoints stay small)

UNKNOWN_TOOL_TEMPLATE = "There is no tool named {name!r}. Available tools: {valid}."
NO_TOOLS_TEMPLATE = "There is no tool named {name!r}; no tools are available in this run."
ZOOM_BUDGET_TEMPLATE = (
    "The zoom budget ({limit} zooms) is used up; answer from the views you have or use a tool."
)
UNKNOWN_VIEW_TEMPLATE = "Box refers to view {view}, which does not exist. Views so far: {valid}."
BOX_PROBLEM_TEMPLATE = "Box {box} ({label}) cannot be used: {reason}"
NO_ACTION_FEEDBACK = (
    "Your last reply had no usable zoom, tool call or answer. Zoom with "
    '{"bbox_2d": [x1, y1, x2, y2], "label": "..."}, call a tool with <tool_call>, '
    "or finish with <answer>...</answer>."
)
FINAL_FEEDBACK = (
    "The step budget is used up. Give your best answer now in <answer>...</answer>, from what you "
    "have seen."
)
TOOL_FAILED_TEMPLATE = "Tool {tool} failed: {cause}"
DENIED_TEMPLATE = "The user did not approve running {tool}; it was not run."
BEST_EFFORT_TEMPLATE = "No final answer was given within the budget ({reason})."


def _entry(kind: str, text: str = "", view_id: int | None = None, **data: Any) -> dict[str, Any]:
    return {"kind": kind, "text": text, "view_id": view_id, "data": data}


def _emit(event: dict[str, Any]) -> None:
    """Send a progress event on LangGraph's custom stream (no-op outside a streamed run)."""
    try:
        writer = get_stream_writer()
    except Exception:  # noqa: BLE001 - not inside a runnable context (direct node calls in tests)
        return
    writer(event)


def _current(state: AgentState) -> list[dict[str, Any]]:
    """Transcript entries of the current question (after the latest follow-up question)."""
    transcript = state.get("transcript", [])
    for i in range(len(transcript) - 1, -1, -1):
        if transcript[i]["kind"] == "question":
            return transcript[i + 1 :]
    return transcript


def _latest_view_id(state: AgentState) -> int:
    """The most recent image shown to the planner (the frame of boxes that name no view).

    This may be a tool's preview: the planner draws boxes on the latest image it saw. It is never
    the *region* of a tool call without a box; that is the latest zoom (:func:`_latest_zoom`).
    """
    latest = 0
    for entry in state.get("transcript", []):
        if entry.get("view_id") is not None:
            latest = int(entry["view_id"])
    return latest


def _latest_zoom(views: dict[str, ViewRecord]) -> ViewRecord | None:
    """The thread's most recent zoom view (any question), or None before the first zoom.

    Previews (tool outputs) and the overview never count: "that crop" is where the agent last
    zoomed, even when a tool's preview was shown after it.
    """
    zooms = [v for v in views.values() if v.get("kind") == "zoom" and v.get("region_xyxy")]
    return max(zooms, key=lambda v: int(v["view_id"])) if zooms else None


def build_graph(
    planner: Planner,
    registry: Any,
    runtime: GraphRuntime,
    *,
    checkpointer: BaseCheckpointSaver | None = None,
    tool_planner: Planner | None = None,
) -> CompiledStateGraph:
    """Build and compile the agent graph.

    Args:
        planner: Any planner backend (:class:`zoomearth.agent.base.Planner`). With
            ``planner.profile == "zoomearth"`` the plan node runs the reference's two stages
            (:mod:`zoomearth.graphs.zoomearth_stages`); otherwise the general multi-step loop.
        registry: The tool registry (:class:`zoomearth.tools.registry.ToolRegistry`); one node is
            added per tool it lists.
        runtime: Shared per-process resources (scenes, view cache, settings, pool).
        checkpointer: Checkpoint saver (SQLite by default in :mod:`zoomearth.graphs.persistence`).
        tool_planner: ``zoomearth`` profile only: the planner that reads the question into tool
            calls run on ZoomEarth's region (default: :func:`make_tool_planner` from the setting
            ``zoomearth_tool_planner``). Any planner works,
            e.g. an ``openai`` planner with other settings; only its tool calls are used.

    Returns:
        The compiled graph. Invoke with ``{"scene": ..., "question": ...}`` and a config holding
        ``configurable.thread_id``.
    """
    settings = runtime.settings
    tools = {entry.name: entry for entry in registry.list_tools()}
    clash = sorted(set(tools) & set(CORE_NODES))
    if clash:
        raise ValueError(f"Tool names {clash} clash with core graph nodes {CORE_NODES}.")
    tool_planners: list[Planner | None] = [tool_planner]

    def zoomearth_tool_planner() -> Planner | None:
        """The planner that picks tools around ZoomEarth's zoom (built on first use)."""
        if tool_planners[0] is None:
            tool_planners[0] = make_tool_planner(settings)
        return tool_planners[0]

    def is_zoomearth(state: AgentState) -> bool:
        # The profile is fixed per question by observe (after planner.prepare(), which lets an
        # openai planner learn the served model's name, and so its profile, before anything runs).
        return state.get("planner_profile") == "zoomearth"

    # ---------------------------------------------------------------------------------------
    def observe(state: AgentState) -> dict[str, Any]:
        planner.prepare()
        zoomearth_profile = getattr(planner, "profile", "agent") == "zoomearth"
        ref = state["scene"]
        update: dict[str, Any] = {}
        if not ref.get("width"):
            # A scene given only by path (LangGraph Studio input): complete the reference.
            ref = runtime.scene_ref(ref["path"], ref.get("bands"))
            update["scene"] = ref
        scene = runtime.scene(ref)
        update.update(
            {
                "step": 0,
                "zooms_used": 0,
                "answer": None,
                "answer_kind": None,
                "status": "running",
                "pending": [],
                "max_steps": state.get("max_steps") or settings.max_steps,
                "max_zooms": state.get("max_zooms")
                if state.get("max_zooms") is not None
                else settings.max_zooms,
                "planner": planner.describe(),
                "planner_selection": planner.selection,
                "planner_profile": getattr(planner, "profile", "agent"),
                "profile_reason": getattr(planner, "profile_reason", ""),
            }
        )
        if not state.get("views"):
            update["first_question"] = state["question"]
            overview: ViewRecord = {
                "view_id": 0,
                "kind": "overview",
                "region_xyxy": scene.full_box.as_list(),
                "label": "overview",
                "step": 0,
            }
            if zoomearth_profile:
                # The reference's overview: PIL bicubic to long side 512, int() sizes.
                overview["width"], overview["height"] = reference_resized_size(
                    scene.width, scene.height
                )
                overview["render"] = "reference"
            else:
                overview["width"], overview["height"] = scene.output_size(
                    scene.full_box, settings.overview_side
                )
            update.update(views={"0": overview}, next_view_id=1, question_index=0)
        else:
            # A follow-up question in the same thread: same views and artifacts, new question.
            update["transcript"] = [_entry("question", state["question"])]
            update["question_index"] = int(state.get("question_index", 0)) + 1
        _emit(
            {
                "event": "observe",
                "scene": ref["path"],
                "planner": planner.describe(),
                "selection": planner.selection,
                "profile": getattr(planner, "profile", "agent"),
                "profile_reason": getattr(planner, "profile_reason", ""),
            }
        )
        return update

    # ---------------------------------------------------------------------------------------
    def plan(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
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
            scene_info=_scene_info(state),
            artifacts=[
                {"id": a["id"], "kind": a["kind"], "summary": a.get("summary", "")}
                for a in state.get("artifacts", [])
            ],
            first_question=state.get("first_question")
            if state.get("first_question") != state["question"]
            else None,
        )
        if is_zoomearth(state):
            chooser = zoomearth_tool_planner() if tools else None
            return plan_zoomearth(
                state,
                planner,
                request,
                tools,
                chooser.plan if chooser is not None else None,
                _current(state),
                _emit,
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
        latest = _latest_view_id(state)
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
            region, problem = _zoom_region(
                zoom, all_views, latest, state, planner, settings.min_crop
            )
            if problem is not None:
                problems.append(problem)
                continue
            payloads.append(
                {
                    "action_id": f"s{step}a{i}",
                    "step": step,
                    "kind": "zoom",
                    "region_xyxy": region,
                    "view_id": next_view,
                    "label": zoom.label,
                    "question": int(state.get("question_index", 0)),
                }
            )
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
            region, problem = _tool_region(
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
        transcript = [_entry("planner", text, step=step)]
        answer = decision.final_answer if not payloads else None
        if not payloads and answer is None:
            # Nothing usable this turn: tell the model why (or ask for a best-effort answer).
            lines = [p.message for p in problems] or [NO_ACTION_FEEDBACK]
            if final:
                lines = [FINAL_FEEDBACK]
            transcript.append(_entry("feedback", "\n".join(lines)))
        elif problems:
            transcript.append(_entry("feedback", "\n".join(p.message for p in problems)))

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
            _emit({"event": "note", "text": note})
        _emit({"event": "plan", **step_record})
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

    # ---------------------------------------------------------------------------------------
    def zoom(payload: ActionPayload) -> dict[str, Any]:
        ref_scene = runtime.scene(payload["scene"])  # type: ignore[typeddict-item]
        x1, y1, x2, y2 = payload["region_xyxy"] or ref_scene.full_box.as_list()
        region = PixelBox(x1, y1, x2, y2)
        reference = payload.get("render") == "reference"
        if reference:
            w, h = reference_view_size(region.as_list())
        else:
            w, h = ref_scene.output_size(region, settings.view_side)
        vid = payload["view_id"]
        rec: ViewRecord = {
            "view_id": vid,
            "kind": "zoom",
            "region_xyxy": region.as_list(),
            "width": w,
            "height": h,
            "label": payload.get("label"),
            "step": payload["step"],
            "question": int(payload.get("question", 0)),  # type: ignore[typeddict-item]
        }
        if reference:
            rec["render"] = "reference"
        caption = zoom_entry_text(region, w, h, payload.get("label"))
        _emit(
            {
                "event": "zoom",
                "view_id": vid,
                "region_xyxy": region.as_list(),
                "label": payload.get("label"),
                "step": payload["step"],
            }
        )
        return {
            "views": {str(vid): rec},
            "transcript": [_entry("zoom", caption, view_id=vid, label=payload.get("label"))],
        }

    # ---------------------------------------------------------------------------------------
    def make_tool_node(entry: Any) -> Any:
        from zoomearth.graphs.tool_node import check_tool_action, run_tool_action

        tool_cls = entry.cls

        def tool_node(payload: ActionPayload, config: RunnableConfig) -> dict[str, Any]:
            configurable = (config or {}).get("configurable", {})
            call = (
                entry,
                payload,
                runtime,
                registry,
                configurable.get("thread_id", "default"),
                _emit,
            )
            where = {
                "run_dir": configurable.get("run_dir"),
                "state_views": payload.get("views"),
                "state_artifacts": payload.get("artifacts"),
            }
            if getattr(tool_cls, "needs_approval", False) and not runtime.auto_approve:
                # Never ask the user about a call the tool would refuse: the refusal goes back
                # to the planner as the call's result. (Re-run when the interrupt resumes: the
                # check is cheap and side-effect free.)
                refused = check_tool_action(*call, **where)  # type: ignore[arg-type]
                if refused is not None:
                    return refused
                decision = interrupt(
                    {
                        "type": "approval",
                        "tool": tool_cls.name,
                        "arguments": payload.get("arguments", {}),
                        "region_xyxy": payload.get("region_xyxy"),
                        "question": f"Run {tool_cls.name} with {payload.get('arguments', {})}?",
                    }
                )
                approved = (
                    decision is True
                    or (isinstance(decision, dict) and bool(decision.get("approve")))
                    or (isinstance(decision, str) and decision.lower() in {"approve", "yes", "y"})
                )
                if not approved:
                    text = DENIED_TEMPLATE.format(tool=tool_cls.name)
                    _emit({"event": "tool", "tool": tool_cls.name, "text": text})
                    return {
                        "transcript": [
                            _entry(
                                "tool_result",
                                text,
                                tool=tool_cls.name,
                                arguments=dict(payload.get("arguments") or {}),
                                denied=True,
                            )
                        ],
                        "results": [
                            {
                                "action_id": payload["action_id"],
                                "tool": tool_cls.name,
                                "status": "denied",
                            }
                        ],
                    }
            return run_tool_action(*call, **where)  # type: ignore[arg-type]

        tool_node.__name__ = f"tool_{tool_cls.name}"
        return tool_node

    # ---------------------------------------------------------------------------------------
    def answer(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        text = state.get("answer")
        kind = state.get("answer_kind") or "answer"
        if not text:
            kind = "best_effort"
            if is_zoomearth(state):
                reason = "the model wrote no answer the reference reader accepts"
            else:
                reason = f"{state.get('step', 0)} of {state.get('max_steps')} steps used"
            parts = [BEST_EFFORT_TEMPLATE.format(reason=reason)]
            qi = int(state.get("question_index", 0))
            stage = [
                s["stage_answer"]
                for s in state.get("steps", [])
                if s.get("question", 0) == qi and s.get("stage_answer")
            ]
            if stage:
                parts.append(f"Earlier tentative answer: {stage[-1]}")
            results = [e["text"] for e in _current(state) if e["kind"] == "tool_result"]
            if results:
                parts.append("Tool results: " + " | ".join(results[-3:]))
            text = " ".join(parts)
        thread_id = (config or {}).get("configurable", {}).get("thread_id", "default")
        try:
            from zoomearth.graphs.trajectory import write_trajectory

            run_dir = runtime.run_dir(
                thread_id, (config or {}).get("configurable", {}).get("run_dir")
            )
            write_trajectory(state, runtime, run_dir / "trajectory.png")
        except Exception as exc:  # noqa: BLE001 - a picture must never cost the answer
            if runtime.strict:
                raise
            log.warning("could not write the trajectory picture: %s", exc)
        _emit({"event": "answer", "text": text, "kind": kind})
        return {"answer": text, "answer_kind": kind, "status": "answered", "pending": []}

    # ---------------------------------------------------------------------------------------
    graph = StateGraph(AgentState)
    graph.add_node("observe", observe)
    graph.add_node("plan", plan)
    graph.add_node("zoom", zoom)  # type: ignore[arg-type]
    for name, entry in tools.items():
        graph.add_node(name, make_tool_node(entry))  # type: ignore[arg-type]
    graph.add_node("answer", answer)

    graph.add_edge(START, "observe")
    graph.add_edge("observe", "plan")
    path_map = ["zoom", *tools, "answer", "plan"]
    graph.add_conditional_edges("plan", route_after_plan, path_map)
    graph.add_edge("zoom", "plan")
    for name in tools:
        graph.add_edge(name, "plan")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer)


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


def route_after_plan(state: AgentState) -> Sequence[Send] | str:
    """Pure routing after ``plan``: fan out actions, answer, or plan again after feedback."""
    pending = state.get("pending") or []
    if pending:
        sends = []
        for p in pending:
            if p["kind"] == "zoom":
                sends.append(Send("zoom", {**p, "scene": state["scene"]}))
            else:
                # Tools may read earlier views and artifacts (references only, never pixels).
                sends.append(
                    Send(
                        p["tool"],
                        {
                            **p,
                            "scene": state["scene"],
                            "views": state.get("views", {}),
                            "artifacts": state.get("artifacts", []),
                        },
                    )
                )
        return sends
    if state.get("answer") is not None:
        return "answer"
    if int(state.get("step", 0)) > int(state.get("max_steps", 0)):
        return "answer"  # final turn gave nothing usable: best effort
    return "plan"


# -------------------------------------------------------------------------------------------
def _scene_info(state: AgentState) -> dict[str, Any]:
    ref = state["scene"]
    return {
        "width": ref["width"],
        "height": ref["height"],
        "crs": ref.get("crs"),
        "transform": ref.get("transform"),
        "path": ref["path"],
    }


def _box_to_full(
    box: Sequence[float],
    frame: str,
    view_key: int,
    views: dict[str, ViewRecord],
    planner: Planner,
) -> PixelBox:
    """Map a planner box to full-resolution pixels (raises BoxError / KeyError)."""
    if frame == "full":
        return PixelBox(*map(float, box))
    from zoomearth.agent.frames import planner_box_to_full

    rec = views[str(view_key)]
    seen_w, seen_h = rec.get("seen") or (rec["width"], rec["height"])
    return planner_box_to_full(tuple(box), planner.coord_mode, view_spec_of(rec), (seen_w, seen_h))


def _zoom_region(
    zoom: ZoomRequest,
    views: dict[str, ViewRecord],
    latest: int,
    state: AgentState,
    planner: Planner,
    min_crop: int,
) -> tuple[list[float] | None, Problem | None]:
    """Full-resolution crop for a zoom request (minimum-crop rule applied), or a problem."""
    view_key = zoom.view if zoom.view is not None else latest
    frame = getattr(zoom, "frame", "view")
    label = zoom.label or "zoom"
    if frame != "full" and str(view_key) not in views:
        valid = ", ".join(sorted(views, key=int))
        return None, Problem(
            ProblemCode.UNKNOWN_VIEW, UNKNOWN_VIEW_TEMPLATE.format(view=view_key, valid=valid)
        )
    try:
        full = _box_to_full(zoom.box, frame, view_key, views, planner)
        w, h = state["scene"]["width"], state["scene"]["height"]
        clipped, _ = validate_box(full, w, h)
    except BoxError as exc:
        code = ProblemCode.INVERTED_BOX if "inverted" in str(exc) else ProblemCode.BOX_OUTSIDE_IMAGE
        return None, Problem(
            code, BOX_PROBLEM_TEMPLATE.format(box=list(zoom.box), label=label, reason=exc)
        )
    w, h = state["scene"]["width"], state["scene"]["height"]
    crop = min_crop_xyxy(clipped, w, h, min_crop)
    return crop.snap_out().clip(w, h).as_list(), None


def _tool_region(
    args: dict[str, Any],
    views: dict[str, ViewRecord],
    latest: int,
    state: AgentState,
    planner: Planner,
    turn_zoom_region: list[float] | None,
) -> tuple[list[float] | None, Problem | None]:
    """Region a tool works on (full-resolution pixels), or a problem for the planner.

    The tool's own ``bbox_2d`` argument wins (in the frame of its ``view``, else of the latest
    image shown), else this turn's zoom, else the thread's latest zoom -- also on a follow-up
    question ("now denoise that crop"); a tool's preview is never a region -- else the whole
    scene (None). Box keys are removed from ``args``.
    """
    box = args.pop("bbox_2d", None)
    view = args.pop("view", None)
    if view is not None and not (
        (isinstance(view, int) and not isinstance(view, bool) and view >= 0)
        or (isinstance(view, str) and view.isdigit())
    ):
        return None, Problem(
            ProblemCode.BAD_VIEW,
            f"A tool's 'view' must be the id of a view (a whole number >= 0); got {view!r}.",
        )
    if view is not None and box is None:
        return None, Problem(
            ProblemCode.BAD_VIEW,
            "A tool's 'view' names the frame of its bbox_2d; give bbox_2d with it, or omit both.",
        )
    if box is not None:
        if not isinstance(box, list | tuple) or len(box) != 4:
            return None, Problem(
                ProblemCode.BAD_BOX_LENGTH,
                "A tool's bbox_2d needs exactly four numbers [x1, y1, x2, y2].",
            )
        try:
            nums = [float(v) for v in box]
        except (TypeError, ValueError):
            return None, Problem(
                ProblemCode.BAD_BOX_VALUE, "A tool's bbox_2d must hold four numbers."
            )
        view_key = int(view) if view is not None else latest
        if str(view_key) not in views:
            valid = ", ".join(sorted(views, key=int))
            return None, Problem(
                ProblemCode.UNKNOWN_VIEW, UNKNOWN_VIEW_TEMPLATE.format(view=view_key, valid=valid)
            )
        try:
            full = _box_to_full(nums, "view", view_key, views, planner)
            clipped, _ = validate_box(full, state["scene"]["width"], state["scene"]["height"])
        except BoxError as exc:
            return None, Problem(
                ProblemCode.BOX_OUTSIDE_IMAGE,
                BOX_PROBLEM_TEMPLATE.format(box=nums, label="tool region", reason=exc),
            )
        return clipped.snap_out().clip(
            state["scene"]["width"], state["scene"]["height"]
        ).as_list(), None
    if turn_zoom_region is not None:
        return list(turn_zoom_region), None
    zoom = _latest_zoom(views)
    if zoom is not None:
        return list(zoom["region_xyxy"]), None
    return None, None
