"""The graph's nodes other than ``plan``: ``observe``, ``zoom``, the tool nodes and ``answer``.

Each node is a small class that takes what it needs (the runtime, the planner, the registry)
when it is built and is called by LangGraph with the state, or with the payload the router sends
(``Send``), and the run's config -- so each can be called alone with a fake runtime in a test.
:func:`zoomearth.graphs.builder.build_graph` only wires them; ``plan`` is
:class:`zoomearth.graphs.plan_node.PlanNode`.

* :class:`ObserveNode` -- opens the scene and adds the overview view (or, on a follow-up question
  in the same thread, adds the new question to the transcript);
* :class:`ZoomNode` -- records a zoom view (a full-resolution crop, rendered on demand, never
  stored);
* :class:`ToolActionNode` -- one per registered tool: asks for approval where the tool needs it,
  then runs the call (:func:`zoomearth.graphs.tool_node.run_tool_action`);
* :class:`AnswerNode` -- finalises the answer (best effort when budgets ran out) and writes the
  trajectory picture into the run directory.

Also the small helpers the nodes share: transcript entries (:func:`entry`), progress events on
LangGraph's custom stream (:func:`emit`), the current question's entries (:func:`current_entries`).

Frames: every ``region_xyxy`` is in full-resolution pixels of the scene (xyxy, half-open).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.types import interrupt

from zoomearth.agent.conversation import zoom_entry_text
from zoomearth.agent.profiles import reference_resized_size
from zoomearth.agent.text.dates import choose_dates
from zoomearth.geometry import PixelBox
from zoomearth.graphs.runtime import GraphRuntime
from zoomearth.graphs.state import (
    DENIED_TEMPLATE,
    ActionPayload,
    AgentState,
    SceneRef,
    ViewRecord,
)
from zoomearth.graphs.tool_node import check_tool_action, run_tool_action
from zoomearth.graphs.zoomearth_stages import reference_view_size

if TYPE_CHECKING:
    from zoomearth.agent.base import Planner

__all__ = [
    "BEST_EFFORT_TEMPLATE",
    "DENIED_TEMPLATE",
    "AnswerNode",
    "ObserveNode",
    "ToolActionNode",
    "ZoomNode",
    "current_entries",
    "emit",
    "entry",
    "is_zoomearth",
    "stack_dates_for",
]

# The graph's log lines keep the logger name they have always had.
log = logging.getLogger("zoomearth.graphs.builder")

BEST_EFFORT_TEMPLATE = "No final answer was given within the budget ({reason})."


def entry(kind: str, text: str = "", view_id: int | None = None, **data: Any) -> dict[str, Any]:
    """One transcript entry: ``{"kind", "text", "view_id", "data"}``."""
    return {"kind": kind, "text": text, "view_id": view_id, "data": data}


def emit(event: dict[str, Any]) -> None:
    """Send a progress event on LangGraph's custom stream (no-op outside a streamed run)."""
    try:
        writer = get_stream_writer()
    except Exception:  # noqa: BLE001 - not inside a runnable context (direct node calls in tests)
        return
    writer(event)


def current_entries(state: AgentState) -> list[dict[str, Any]]:
    """Transcript entries of the current question (after the latest follow-up question)."""
    transcript = state.get("transcript", [])
    for i in range(len(transcript) - 1, -1, -1):
        if transcript[i]["kind"] == "question":
            return transcript[i + 1 :]
    return transcript


def stack_dates_for(ref: SceneRef, question: str) -> dict[str, Any] | None:
    """The ``PlanRequest.dates`` of a question about a time stack; None for a one-date scene.

    The planner sees one date: the one the question names, the later of two it names, else the
    newest (:func:`zoomearth.agent.text.dates.choose_dates`).
    """
    dates = ref.get("stack") or []
    if not dates:
        return None
    labels = [str(d["label"]) for d in dates]
    choice = choose_dates(question, labels)
    return {
        "available": labels,
        "viewing": choice.viewing,
        "named": list(choice.named),
        "unknown": list(choice.unknown),
        "reference": labels[int(ref.get("stack_reference", 0))],
    }


def is_zoomearth(state: AgentState) -> bool:
    """Whether the current question runs in the ``zoomearth`` profile.

    The profile is fixed per question by ``observe`` (after ``planner.prepare()``, which lets an
    openai planner learn the served model's name, and so its profile, before anything runs).
    """
    return state.get("planner_profile") == "zoomearth"


class ObserveNode:
    """``observe``: open the scene and add the overview, or add a follow-up question.

    Args:
        planner: The planner (prepared here; its description, selection and profile are
            recorded in the state).
        runtime: Shared resources (scenes, settings).
    """

    def __init__(self, planner: Planner, runtime: GraphRuntime) -> None:
        self.planner = planner
        self.runtime = runtime
        self.settings = runtime.settings

    def __call__(self, state: AgentState) -> dict[str, Any]:
        """The state update of the question's first node."""
        planner, runtime, settings = self.planner, self.runtime, self.settings
        planner.prepare()
        zoomearth_profile = getattr(planner, "profile", "agent") == "zoomearth"
        ref = state["scene"]
        update: dict[str, Any] = {}
        if not ref.get("width"):
            # A scene given only by path (LangGraph Studio input): complete the reference.
            ref = runtime.scene_ref(ref["path"], ref.get("bands"))
            update["scene"] = ref
        scene = runtime.scene(ref)
        stack_dates = stack_dates_for(ref, state["question"])
        update.update(
            {
                "stack_dates": stack_dates,
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
            if stack_dates is not None:
                overview["date"] = stack_dates["viewing"]
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
            update["transcript"] = [entry("question", state["question"])]
            update["question_index"] = int(state.get("question_index", 0)) + 1
        emit(
            {
                "event": "observe",
                "scene": ref["path"],
                "planner": planner.describe(),
                "selection": planner.selection,
                "profile": getattr(planner, "profile", "agent"),
                "profile_reason": getattr(planner, "profile_reason", ""),
                **({"date": stack_dates["viewing"]} if stack_dates else {}),
            }
        )
        return update


class ZoomNode:
    """``zoom``: record the view of one zoom action (pixels are rendered on demand, never stored).

    Args:
        runtime: Shared resources (scenes, the setting ``view_side``).
    """

    def __init__(self, runtime: GraphRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings

    def __call__(self, payload: ActionPayload) -> dict[str, Any]:
        """The state update of one zoom (``payload``: the router's action, with ``scene``)."""
        ref_scene = self.runtime.scene(payload["scene"])  # type: ignore[typeddict-item]
        x1, y1, x2, y2 = payload["region_xyxy"] or ref_scene.full_box.as_list()
        region = PixelBox(x1, y1, x2, y2)
        reference = payload.get("render") == "reference"
        if reference:
            w, h = reference_view_size(region.as_list())
        else:
            w, h = ref_scene.output_size(region, self.settings.view_side)
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
        date = payload.get("date")
        if date:
            rec["date"] = date
            caption = f"{caption} (date {date})"
        emit(
            {
                "event": "zoom",
                "view_id": vid,
                "region_xyxy": region.as_list(),
                "label": payload.get("label"),
                "step": payload["step"],
                **({"date": date} if date else {}),
            }
        )
        return {
            "views": {str(vid): rec},
            "transcript": [entry("zoom", caption, view_id=vid, label=payload.get("label"))],
        }


class ToolActionNode:
    """The node of one registered tool: approval (where needed), then the call.

    A ``needs_approval`` tool interrupts for the user's decision unless ``runtime.auto_approve``;
    a call the tool would refuse never reaches the user (its refusal goes back to the planner),
    and a denied call is recorded with status ``denied``. The call itself runs through
    :func:`zoomearth.graphs.tool_node.run_tool_action`.

    Args:
        tool_entry: The registry entry (``.name``, ``.cls``) of the tool.
        registry: The tool registry.
        runtime: Shared resources (scene, pool, settings, strictness, ``auto_approve``).
    """

    def __init__(self, tool_entry: Any, registry: Any, runtime: GraphRuntime) -> None:
        self.entry = tool_entry
        self.registry = registry
        self.runtime = runtime
        self.__name__ = f"tool_{tool_entry.cls.name}"

    def __call__(self, payload: ActionPayload, config: RunnableConfig) -> dict[str, Any]:
        """The state update of one call (``payload``: the router's action, views included)."""
        tool_cls = self.entry.cls
        configurable = (config or {}).get("configurable", {})
        call = (
            self.entry,
            payload,
            self.runtime,
            self.registry,
            configurable.get("thread_id", "default"),
            emit,
        )
        where = {
            "run_dir": configurable.get("run_dir"),
            "state_views": payload.get("views"),
            "state_artifacts": payload.get("artifacts"),
        }
        if getattr(tool_cls, "needs_approval", False) and not self.runtime.auto_approve:
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
                emit({"event": "tool", "tool": tool_cls.name, "text": text})
                return {
                    "transcript": [
                        entry(
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


class AnswerNode:
    """``answer``: the final (or best-effort) answer, and the trajectory picture.

    Args:
        runtime: Shared resources (run directories, strictness).
    """

    def __init__(self, runtime: GraphRuntime) -> None:
        self.runtime = runtime

    def __call__(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """The state update that finishes the question."""
        runtime = self.runtime
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
            results = [e["text"] for e in current_entries(state) if e["kind"] == "tool_result"]
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
        emit({"event": "answer", "text": text, "kind": kind})
        return {"answer": text, "answer_kind": kind, "status": "answered", "pending": []}
