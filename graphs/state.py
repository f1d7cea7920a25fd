"""Graph state: references only, never pixels.

The state is a ``TypedDict`` whose append-only fields declare reducers with ``Annotated``, as in
LangGraph's own prebuilt agents. It holds the scene reference (path + band mapping + size), the
transcript as text entries that name views and artifacts by id, the views (full-resolution region
and pixel size), the artifacts (small JSON records of files in the run directory), step records
for the run log, problems, and counters. Pixels are rendered on demand from the scene through a
small per-process cache (:meth:`zoomearth.graphs.runtime.GraphRuntime.render`), so a checkpoint
stays a few kilobytes however many zooms a run makes.

Every tool call that reaches a tool node leaves exactly one :class:`ToolResultRecord` in
``results`` (ok, invalid arguments, failed or denied), in the order the calls finish; a call
stopped by a cancellation request leaves none (its task error is kept by the checkpointer and the
call runs again when the thread is resumed). :meth:`zoomearth.api.Agent.result` pairs them with the
calls of the step records to give each call of the ``--json`` record its status
(:mod:`zoomearth.run_record`).

Frames: every ``*_xyxy`` field is in full-resolution pixels of the scene (xyxy, half-open).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, NotRequired

# typing_extensions' TypedDict: pydantic (the LangGraph server's input schema, Studio's form)
# cannot build a JSON Schema from typing.TypedDict on Python < 3.12.
from typing_extensions import TypedDict

__all__ = [
    "DENIED_TEMPLATE",
    "AgentState",
    "ActionPayload",
    "SceneRef",
    "ToolCallStatus",
    "ToolResultRecord",
    "ViewRecord",
    "merge_views",
]

ViewKind = Literal["overview", "zoom", "preview"]

#: Outcome of one tool call: ``ok``; ``invalid_arguments`` (the tool layer rejected the call
#: before or while running it -- a mistake the planner can fix); ``failed`` (the tool ran and
#: raised); ``denied`` (the user did not approve it); ``cancelled`` (stopped by a cancellation
#: request); ``pending`` (not run yet: awaiting approval, or the run stopped first).
ToolCallStatus = Literal["ok", "invalid_arguments", "failed", "denied", "cancelled", "pending"]
#: The text of a ``denied`` call (the tool node writes it; the run record reads it back).
DENIED_TEMPLATE = "The user did not approve running {tool}; it was not run."


class SceneRef(TypedDict):
    """Where the pixels come from. Attributes are JSON scalars only.

    ``path``, ``width``, ``height``, ``crs`` and ``transform`` describe the reference grid. A
    time stack adds ``stack`` (its dates, oldest first: ``{"label", "when", "source"}``, see
    :class:`zoomearth.scene.stack.StackDate`) and ``stack_reference`` (the index of the date
    whose grid ``path`` is); one-date scenes have neither.
    """

    path: str
    bands: list[int] | None
    width: int
    height: int
    crs: str | None
    transform: list[float] | None
    stack: NotRequired[list[dict[str, Any]]]
    stack_reference: NotRequired[int]


class ViewRecord(TypedDict, total=False):
    """One view the planner can see.

    Keys:
        view_id: Id within the thread (0 is the overview).
        kind: ``overview``, ``zoom`` or ``preview`` (a tool's preview image).
        region_xyxy: Full-resolution region shown (integer edges).
        width, height: Rendered pixel size.
        seen: ``[w, h]`` at which the planner saw it (after its processor's resize), once shown.
        path: For previews: the PNG file to read the pixels from.
        label: The planner's label for a zoom, or the tool name for a preview.
        step: The step that produced it.
        question: Index of the thread's question that produced it (0 = the first).
        render: ``reference`` for views rendered as the ZoomEarth reference renders them (PIL
            bicubic to long side 512 of the exact window, zero-padded outside the image:
            :mod:`zoomearth.scene.reference`); absent for the engine's own rendering.
        date: Time stacks: the label of the date the view shows (rendered on the reference
            grid through :meth:`zoomearth.scene.stack.SceneStack.render`); absent otherwise.
    """

    view_id: int
    kind: ViewKind
    region_xyxy: list[float]
    width: int
    height: int
    seen: list[int]
    path: str
    label: str | None
    step: int
    question: int
    render: Literal["reference"]
    date: str


def merge_views(
    left: dict[str, ViewRecord] | None, right: dict[str, ViewRecord] | None
) -> dict[str, ViewRecord]:
    """Reducer: merge view records by id (string keys, JSON-friendly); later fields win."""
    out = dict(left or {})
    for key, rec in (right or {}).items():
        out[key] = {**out.get(key, {}), **rec}  # type: ignore[typeddict-item]
    return out


def last_value(left: Any, right: Any) -> Any:
    """Reducer for fields written by parallel branches: keep the latest non-None value."""
    return right if right is not None else left


class ToolResultRecord(TypedDict, total=False):
    """What a tool node appends to ``results`` for one call.

    Keys:
        action_id: ``"s{step}t{index}"`` of the call (``index`` counts the turn's tool calls).
        tool: Tool name.
        step: The step number of the call.
        status: ``ok``, ``invalid_arguments``, ``failed`` or ``denied`` (older checkpoints may
            hold ``input_error`` for ``invalid_arguments``).
        error: Why the call did not succeed (the tool layer's message), else absent.
        code: Stable problem code of an ``invalid_arguments`` call (``invalid_arguments``,
            ``unknown_artifact``, ``region_too_large`` ...), ``tool_failure`` of a failed one.
        seconds: Run time of a successful call.
        artifacts: Ids of the artifacts a successful call wrote.
        streamed: Whether the tool read its region in blocks.
        result: The short text result of a successful call (what the planner reads).
    """

    action_id: str
    tool: str
    step: int
    status: ToolCallStatus | Literal["input_error"]
    error: str
    code: str
    seconds: float
    artifacts: list[int]
    streamed: bool
    result: str


class ActionPayload(TypedDict, total=False):
    """What the router sends to one zoom or tool node (fan-out with ``Send``).

    Keys:
        action_id: ``"s{step}a{index}"`` -- unique within the thread.
        step: The step number.
        kind: ``zoom`` or ``tool``.
        region_xyxy: Full-resolution region (zoom: after the minimum-crop rule; tool: the region
            to work on, or None for the whole scene).
        view_id: The view id reserved for the zoom or the tool's preview.
        label: Zoom label.
        tool: Tool name.
        arguments: Tool arguments (JSON), box keys removed.
        render: For zooms: ``reference`` to render the view as the ZoomEarth reference does.
        date: Time stacks: the label of the date a zoom shows.
    """

    action_id: str
    step: int
    kind: Literal["zoom", "tool"]
    region_xyxy: list[float] | None
    view_id: int
    label: str | None
    tool: str
    arguments: dict[str, Any]
    question: int
    render: Literal["reference"]
    date: str


class AgentState(TypedDict, total=False):
    """The whole state of one thread (one conversation about one scene).

    Append-only lists use ``operator.add``; views merge by id. Everything is JSON-serialisable and
    small; pixels never appear.
    """

    # inputs
    scene: SceneRef
    question: str
    first_question: str
    question_id: str | None
    question_index: int  # 0 for the thread's first question, +1 per follow-up
    # time stacks: the current question's dates (PlanRequest.dates; None for one date)
    stack_dates: dict[str, Any] | None
    run_dir: str
    # conversation (text with view/artifact references)
    transcript: Annotated[list[dict[str, Any]], operator.add]
    views: Annotated[dict[str, ViewRecord], merge_views]
    artifacts: Annotated[list[dict[str, Any]], operator.add]
    results: Annotated[list[ToolResultRecord], operator.add]
    steps: Annotated[list[dict[str, Any]], operator.add]
    problems: Annotated[list[dict[str, Any]], operator.add]
    warnings: Annotated[list[str], operator.add]
    visual_tokens: Annotated[int, operator.add]
    # control
    step: int
    zooms_used: int
    max_steps: int
    max_zooms: int
    next_view_id: int
    results_seen: int
    pending: list[ActionPayload]
    stage_answers: Annotated[list[str], operator.add]
    answer: str | None
    answer_kind: Literal["answer", "best_effort"] | None
    planner: str
    planner_selection: str
    planner_profile: Literal["agent", "zoomearth"]
    profile_reason: str
    status: Literal["running", "answered"]
