"""The record of a run: :class:`AskResult`, its tool-call records and the run-status rule.

What ``zoomearth ask --json`` prints and :meth:`zoomearth.api.Agent.ask` returns, built from a
thread's checkpoint by :func:`ask_result`: the latest question's steps, zooms (with map boxes for
georeferenced scenes), every tool call paired with its outcome (:func:`_tool_call_records`), and
the run's status by :data:`RUN_STATUS_RULE` (:func:`run_outcome`). A finished run whose tool
requests did not all succeed is ``partial`` or ``failed``, never ``answered``.

Part of the facade layer (above the graph): :mod:`zoomearth.api` re-exports every public name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from zoomearth.graphs.state import DENIED_TEMPLATE as DENIED_ERROR_TEMPLATE
from zoomearth.graphs.state import ToolCallStatus as ToolCallStatus

__all__ = [
    "AskResult",
    "REJECTED_REQUEST_CODES",
    "RUN_STATUS_RULE",
    "RunStatus",
    "ToolCallRecord",
    "ToolCallStatus",
    "ZoomRecord",
    "answer_summary",
    "ask_result",
    "run_outcome",
]

#: Status of a run in its record. ``answered``, ``partial`` and ``failed`` are finished runs (they
#: carry the answer); the others are not finished.
RunStatus = Literal["answered", "partial", "failed", "awaiting_approval", "cancelled", "running"]

RUN_STATUS_RULE = (
    "A finished run's status considers the tool requests of the thread's latest question: its "
    "tool calls, and the requests rejected before any tool ran because the tool does not exist "
    "or the call could not be read (problems 'unknown_tool', 'bad_tool_call'). A request that did "
    "not succeed is recovered when a later call of the same tool in the same question succeeded "
    "(for a rejected request, which names no usable tool: any successful call in a later step). "
    "'answered': every request succeeded or was recovered (or there were none); 'failed': there "
    "were requests and none succeeded; 'partial': otherwise."
)
#: Problem codes of tool requests the plan node rejects before any tool runs.
REJECTED_REQUEST_CODES = frozenset({"unknown_tool", "bad_tool_call"})

FAILED_REASON_TEMPLATE = "No tool request of the question succeeded: {details}."
PARTIAL_REASON_TEMPLATE = "{bad} of {total} tool requests did not succeed: {details}."
CANCELLED_REASON_TEMPLATE = (
    "The run was stopped by a cancellation request during {tools}; resume the thread to run it "
    "again."
)
CALL_DETAIL_TEMPLATE = "{name} at step {step} ({status}: {error})"
REJECTED_DETAIL_TEMPLATE = "a request at step {step} ({code}: {error})"
MAX_DETAIL_CHARS = 200
_ACTION_ID = re.compile(r"^s(\d+)t(\d+)$")


class ZoomRecord(BaseModel):
    """One zoom: where the agent looked."""

    view_id: int
    step: int
    label: str | None = None
    box_xyxy: list[float] = Field(description="Full-resolution pixels, xyxy, half-open")
    map_box: list[float] | None = Field(None, description="minx, miny, maxx, maxy in the scene CRS")
    date: str | None = Field(
        None, description="Time stacks: the label of the date the zoom showed; None for one date"
    )


class ToolCallRecord(TypedDict):
    """One tool call of the question, with its outcome (an item of :attr:`AskResult.tool_calls`)."""

    name: Annotated[str, Field(description="The tool called")]
    arguments: Annotated[
        dict[str, Any], Field(description="Arguments as the planner gave them (box keys removed)")
    ]
    step: Annotated[int, Field(description="The step of the question that made the call")]
    action_id: Annotated[
        str | None, Field(description="'s{step}t{index}' within the step; None while pending")
    ]
    status: Annotated[
        ToolCallStatus,
        Field(
            description="ok; invalid_arguments (rejected by the tool layer -- unknown argument, "
            "bad value, unknown artifact, region too large: a mistake the planner can fix); "
            "failed (the tool ran and raised); denied (approval refused); cancelled (stopped by "
            "a cancellation request; the run stopped with it); pending (not run yet)"
        ),
    ]
    error: Annotated[
        str | None, Field(description="Why the call did not succeed; None when ok or pending")
    ]
    code: Annotated[
        str | None,
        Field(
            description="Problem code of a call that did not succeed (invalid_arguments, "
            "unknown_artifact, region_too_large ..., tool_failure, denied, cancelled)"
        ),
    ]
    artifacts: Annotated[list[int], Field(description="Ids of the artifacts the call wrote")]
    result: Annotated[
        str | None,
        Field(description="The tool's short text result of a successful call (None otherwise)"),
    ]
    seconds: Annotated[float | None, Field(description="Run time of a successful call")]
    recovered: Annotated[
        bool,
        Field(
            description="The call did not succeed, but a later call of the same tool in the same "
            "question did (the planner corrected it); it does not count against the run's status"
        ),
    ]


class AskResult(BaseModel):
    """The whole record of one run (``zoomearth ask --json`` prints it).

    The JSON Schema is published in ``docs/ask.schema.json``.
    """

    thread_id: str
    status: RunStatus = Field(
        description="answered: finished and every tool request succeeded (or was recovered); "
        "partial: finished, some tool requests succeeded and some did not; failed: finished, "
        "there were tool requests and none succeeded; awaiting_approval: stopped at an approval "
        "point; cancelled: stopped by a cancellation request during a tool call (resumable); "
        "running: not finished (killed or stopped; resumable). Rule: " + RUN_STATUS_RULE
    )
    status_reason: str = Field(
        "",
        description="Why the status is partial, failed or cancelled: the requests that did "
        "not succeed, with their errors; empty otherwise",
    )
    answer: str | None = Field(
        None, description="The answer of a finished run (answered, partial or failed)"
    )
    answer_kind: Literal["answer", "best_effort"] | None = None
    summary: str | None = Field(
        None,
        description="The answer followed by one line per tool call of the question (its status "
        "and text result). In the zoomearth profile tool results never reach the model's input; "
        "this is where the user reads them",
    )
    stage_answers: list[str] = Field(default_factory=list)
    question: str = ""
    scene: dict[str, Any] = Field(default_factory=dict)
    planner: str = ""
    planner_selection: str = Field("", description="Why this planner backend was chosen")
    profile: Literal["agent", "zoomearth"] = Field(
        "agent",
        description="Protocol profile that ran: zoomearth (the reference's two stages) or agent",
    )
    profile_reason: str = Field("", description="Why this profile was chosen")
    steps: list[dict[str, Any]] = Field(default_factory=list)
    zooms: list[ZoomRecord] = Field(default_factory=list)
    tool_calls: list[ToolCallRecord] = Field(
        default_factory=list,
        description="Every tool call of the question that reached a tool, in step order, with "
        "its status and error. Requests rejected before any tool ran (a tool that does not "
        "exist, an unreadable call, an unusable bbox_2d) are in problems",
    )
    artifacts: list[dict[str, Any]] = Field(default_factory=list)
    problems: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Mistakes in the planner's output that were fed back to it: {code, message}",
    )
    warnings: list[str] = Field(default_factory=list)
    visual_tokens: int = 0
    dates: dict[str, Any] | None = Field(
        None,
        description="Time stacks: the question's dates -- available (oldest first), viewing "
        "(what the planner saw), named (what the question names), reference (whose grid the "
        "boxes are in); None for a one-date scene",
    )
    run_dir: str = ""
    trajectory: str | None = None
    pending_approval: list[dict[str, Any]] = Field(default_factory=list)
    seconds: float = 0.0


def ask_result(
    snapshot: Any, thread: str, seconds: float, default_run_dir: Callable[[], Path]
) -> AskResult:
    """The record of a thread's latest run, from its checkpoint (``Agent.result``).

    Args:
        snapshot: The thread's ``StateSnapshot`` (``graph.get_state``): values, tasks, next.
        thread: The thread id.
        seconds: Run time to record.
        default_run_dir: The thread's run directory when the state names none (called only
            then: it creates the directory).

    Returns:
        The record; its ``status`` follows :data:`RUN_STATUS_RULE` for a finished run.
    """
    from zoomearth.geometry import PixelBox

    values = snapshot.values
    pending = [
        i.value if isinstance(i.value, dict) else {"value": i.value}
        for task in snapshot.tasks
        for i in task.interrupts
    ]
    scene = values.get("scene", {})
    transform = scene.get("transform")
    # The record covers the thread's latest question; views and artifacts stay available
    # to later questions (artifacts are listed for the whole thread).
    qi = int(values.get("question_index", 0))
    all_steps = values.get("steps", [])
    steps = [s for s in all_steps if s.get("question", 0) == qi]
    cancelled = {
        str(task.name): message
        for task in snapshot.tasks
        if (message := _cancel_message(task.error)) is not None
    }
    calls = _tool_call_records(all_steps, values.get("results", []), qi, cancelled)
    rejected = [
        (int(s.get("step", 0)), p)
        for s in steps
        for p in s.get("problems", [])
        if p.get("code") in REJECTED_REQUEST_CODES
    ]
    finished = values.get("status") == "answered" and not snapshot.next
    status: RunStatus
    reason = ""
    if finished:
        status, reason = run_outcome(calls, rejected)
    elif pending:
        status = "awaiting_approval"
    elif any(c["status"] == "cancelled" for c in calls):
        status = "cancelled"
        reason = CANCELLED_REASON_TEMPLATE.format(
            tools=", ".join(c["name"] for c in calls if c["status"] == "cancelled")
        )
    else:
        status = "running"
    zooms = []
    for rec in sorted(values.get("views", {}).values(), key=lambda v: v["view_id"]):
        if rec.get("kind") != "zoom" or rec.get("question", 0) != qi:
            continue
        map_box = None
        if transform:
            from affine import Affine

            from zoomearth.geometry import full_to_map

            map_box = full_to_map(PixelBox(*rec["region_xyxy"]), Affine(*transform)).as_list()
        zooms.append(
            ZoomRecord(
                view_id=rec["view_id"],
                step=rec.get("step", 0),
                label=rec.get("label"),
                box_xyxy=rec["region_xyxy"],
                map_box=map_box,
                date=rec.get("date"),
            )
        )
    run_dir = Path(values.get("run_dir") or default_run_dir())
    trajectory = run_dir / "trajectory.png"
    answer = values.get("answer") if finished else None
    return AskResult(
        summary=answer_summary(answer, calls) if finished else None,
        thread_id=thread,
        status=status,
        status_reason=reason,
        answer=answer,
        answer_kind=values.get("answer_kind") if finished else None,
        stage_answers=[s["stage_answer"] for s in steps if s.get("stage_answer")],
        question=values.get("question", ""),
        scene=scene,
        planner=values.get("planner", ""),
        planner_selection=values.get("planner_selection", ""),
        profile=values.get("planner_profile") or "agent",
        profile_reason=values.get("profile_reason", ""),
        steps=steps,
        zooms=zooms,
        tool_calls=calls,
        artifacts=values.get("artifacts", []),
        problems=[p for s in steps for p in s.get("problems", [])],
        warnings=values.get("warnings", []),
        visual_tokens=sum(int(s.get("visual_tokens", 0)) for s in steps),
        dates=values.get("stack_dates"),
        run_dir=str(run_dir),
        trajectory=str(trajectory) if trajectory.exists() else None,
        pending_approval=pending,
        seconds=round(seconds, 3),
    )


def _cancel_message(error: Any) -> str | None:
    """The message of a task error that is a tool cancellation, else None.

    The checkpointer keeps a failed task's error as the exception or as its ``repr`` text.
    """
    from zoomearth.tools.base import ToolCancelled

    if isinstance(error, ToolCancelled):
        return str(error)
    prefix = f"{ToolCancelled.__name__}("
    if isinstance(error, str) and error.startswith(prefix) and error.endswith(")"):
        inner = error[len(prefix) : -1]
        try:
            value = ast.literal_eval(inner)
        except (ValueError, SyntaxError):
            return inner
        return str(value[0] if isinstance(value, tuple) and value else value)
    return None


def _result_order(result: dict[str, Any]) -> tuple[int, int]:
    match = _ACTION_ID.match(str(result.get("action_id", "")))
    if match is None:
        return int(result.get("step", 0)), 0
    return int(match.group(1)), int(match.group(2))


def _tool_call_records(
    steps: Sequence[dict[str, Any]],
    results: Sequence[dict[str, Any]],
    question: int,
    cancelled: dict[str, str],
) -> list[ToolCallRecord]:
    """The tool calls of one question, each paired with its outcome.

    Every call of a step record (the calls sent to tool nodes) leaves exactly one entry in
    ``results`` once it has run, so the results of earlier questions are the first ones, as many
    as their calls; within the question a step's calls and results pair by tool name in call
    order (``s{step}t{index}``).

    Args:
        steps: The thread's step records (all questions).
        results: The thread's tool results (all questions, in the order they finished).
        question: Index of the question to report.
        cancelled: Tool name -> cancellation message of tasks stopped by a cancellation request.
    """
    earlier = sum(len(s.get("tools", [])) for s in steps if s.get("question", 0) < question)
    by_step: dict[int, list[dict[str, Any]]] = {}
    for result in results[earlier:]:
        by_step.setdefault(_result_order(result)[0], []).append(result)
    for group in by_step.values():
        group.sort(key=_result_order)
    left = dict(cancelled)
    calls: list[ToolCallRecord] = []
    for record in steps:
        if record.get("question", 0) != question:
            continue
        step = int(record.get("step", 0))
        group = by_step.get(step, [])
        for tool in record.get("tools", []):
            name = str(tool.get("name", ""))
            found = next((r for r in group if r.get("tool") == name), None)
            call: ToolCallRecord = {
                "name": name,
                "arguments": dict(tool.get("arguments") or {}),
                "step": step,
                "action_id": None,
                "status": "pending",
                "error": None,
                "code": None,
                "artifacts": [],
                "result": None,
                "seconds": None,
                "recovered": False,
            }
            if found is not None:
                group.remove(found)
                status = str(found.get("status", "ok"))
                if status == "input_error":  # checkpoints written before the status was renamed
                    status = "invalid_arguments"
                call["action_id"] = found.get("action_id")
                call["status"] = status  # type: ignore[typeddict-item]
                call["artifacts"] = [int(a) for a in found.get("artifacts", [])]
                call["result"] = found.get("result")
                call["seconds"] = found.get("seconds")
                if status == "denied":
                    call["error"] = found.get("error") or DENIED_ERROR_TEMPLATE.format(tool=name)
                    call["code"] = "denied"
                elif status != "ok":
                    call["error"] = str(found.get("error") or status)
                    call["code"] = found.get("code") or status
            elif name in left:
                call["status"] = "cancelled"
                call["error"] = left.pop(name)
                call["code"] = "cancelled"
            calls.append(call)
    for i, call in enumerate(calls):
        if call["status"] not in ("ok", "pending"):
            call["recovered"] = any(
                later["name"] == call["name"] and later["status"] == "ok"
                for later in calls[i + 1 :]
            )
    return calls


def answer_summary(answer: str | None, calls: Sequence[ToolCallRecord]) -> str | None:
    """The answer and one line per tool call: ``name (status): result or error``.

    Args:
        answer: The run's answer.
        calls: The question's tool calls (:class:`ToolCallRecord`).

    Returns:
        The summary, or the answer alone when no tool was called.
    """
    lines = [
        f"{c['name']} ({c['status']}): {_clip(c.get('result') or c.get('error') or '')}"
        for c in calls
    ]
    if not lines:
        return answer
    head = answer if answer is not None else "(no answer)"
    return head + "\n\nTools:\n" + "\n".join(f"- {line}" for line in lines)


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def run_outcome(
    calls: Sequence[ToolCallRecord], rejected: Sequence[tuple[int, dict[str, Any]]] = ()
) -> tuple[Literal["answered", "partial", "failed"], str]:
    """Status of a finished run from its tool requests (:data:`RUN_STATUS_RULE`).

    Args:
        calls: The question's tool calls, ``recovered`` already set.
        rejected: ``(step, problem)`` of tool requests rejected before any tool ran.

    Returns:
        ``answered``, ``partial`` or ``failed``, and the reason (empty for ``answered``).
    """
    done = [c for c in calls if c["status"] != "pending"]
    succeeded = [c for c in done if c["status"] == "ok"]
    details = [
        CALL_DETAIL_TEMPLATE.format(
            name=c["name"], step=c["step"], status=c["status"], error=_clip(c["error"] or "")
        )
        for c in done
        if c["status"] != "ok" and not c["recovered"]
    ]
    for step, problem in rejected:
        if not any(c["step"] > step for c in succeeded):
            details.append(
                REJECTED_DETAIL_TEMPLATE.format(
                    step=step, code=problem.get("code"), error=_clip(problem.get("message", ""))
                )
            )
    if not details:
        return "answered", ""
    if not succeeded:
        return "failed", FAILED_REASON_TEMPLATE.format(details="; ".join(details))
    total = len(done) + len(rejected)
    return "partial", PARTIAL_REASON_TEMPLATE.format(
        bad=len(details), total=total, details="; ".join(details)
    )
