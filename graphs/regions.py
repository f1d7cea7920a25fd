"""Where the planner's boxes land: the full-resolution regions of zoom and tool requests.

Pure functions of the thread's views and state (no graph, no runtime), used by the ``plan`` node
(:class:`zoomearth.graphs.plan_node.PlanNode`) to turn what the model wrote into the regions the
``zoom`` and tool nodes act on:

* :func:`box_to_full` -- a planner box in the frame of a view to full-resolution pixels,
* :func:`zoom_request_region` -- the crop a zoom reads (:func:`zoomearth.agent.frames.zoom_region`,
  the minimum-crop rule, snapped to whole pixels), or a :class:`~zoomearth.agent.parsing.Problem`,
* :func:`tool_request_region` -- the region a tool works on (its own ``bbox_2d``, else this
  turn's zoom, else the thread's latest zoom, else the whole scene), or a problem,
* :func:`latest_zoom` -- the thread's most recent zoom view.

A box the geometry rejects raises a :class:`~zoomearth.errors.BoxError`; its problem code follows
the error's type (:func:`box_problem_code`), never the words of its message.

Frames: every ``*_xyxy`` value and returned region is in full-resolution pixels of the scene
(xyxy, half-open).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zoomearth.agent.frames import planner_box_to_full, zoom_region
from zoomearth.agent.parsing import Problem, ProblemCode, ZoomRequest
from zoomearth.errors import BoxError, InvertedBoxError
from zoomearth.geometry import PixelBox, validate_box
from zoomearth.graphs.runtime import view_spec_of

if TYPE_CHECKING:
    from zoomearth.agent.base import Planner
    from zoomearth.graphs.state import AgentState, ViewRecord

__all__ = [
    "BOX_PROBLEM_TEMPLATE",
    "UNKNOWN_VIEW_TEMPLATE",
    "box_problem_code",
    "box_to_full",
    "latest_zoom",
    "tool_request_region",
    "zoom_request_region",
]

UNKNOWN_VIEW_TEMPLATE = "Box refers to view {view}, which does not exist. Views so far: {valid}."
BOX_PROBLEM_TEMPLATE = "Box {box} ({label}) cannot be used: {reason}"


def latest_zoom(views: dict[str, ViewRecord]) -> ViewRecord | None:
    """The thread's most recent zoom view (any question), or None before the first zoom.

    Previews (tool outputs) and the overview never count: "that crop" is where the agent last
    zoomed, even when a tool's preview was shown after it.
    """
    zooms = [v for v in views.values() if v.get("kind") == "zoom" and v.get("region_xyxy")]
    return max(zooms, key=lambda v: int(v["view_id"])) if zooms else None


def box_to_full(
    box: Sequence[float],
    frame: str,
    view_key: int,
    views: dict[str, ViewRecord],
    planner: Planner,
) -> PixelBox:
    """Map a planner box to full-resolution pixels (raises BoxError / KeyError)."""
    if frame == "full":
        return PixelBox(*map(float, box))
    rec = views[str(view_key)]
    seen_w, seen_h = rec.get("seen") or (rec["width"], rec["height"])
    return planner_box_to_full(tuple(box), planner.coord_mode, view_spec_of(rec), (seen_w, seen_h))


def box_problem_code(exc: BoxError) -> ProblemCode:
    """The problem code of a rejected zoom box, from the error's type.

    Args:
        exc: The geometry's refusal (:func:`zoomearth.geometry.validate_box`,
            :func:`zoomearth.agent.frames.planner_box_to_full`).

    Returns:
        ``inverted_box`` for an :class:`~zoomearth.errors.InvertedBoxError`, else
        ``box_outside_image`` (NaN, empty and outside boxes alike: the codes documented in
        ``docs/parsing.md``).
    """
    if isinstance(exc, InvertedBoxError):
        return ProblemCode.INVERTED_BOX
    return ProblemCode.BOX_OUTSIDE_IMAGE


def zoom_request_region(
    zoom: ZoomRequest,
    views: dict[str, ViewRecord],
    latest: int,
    state: AgentState,
    planner: Planner,
    min_crop: int,
) -> tuple[list[float] | None, Problem | None]:
    """Full-resolution crop for a zoom request (minimum-crop rule applied), or a problem.

    Args:
        zoom: The parsed zoom request (its box in the frame of ``zoom.view``, else of ``latest``;
            ``frame == "full"`` for full-resolution pixels).
        views: The thread's view records by id (``seen`` sizes of this turn merged in).
        latest: Id of the latest image shown to the planner.
        state: The graph state (``scene`` width and height).
        planner: The planner (its ``coord_mode``).
        min_crop: Minimum crop side in full-resolution pixels (setting ``min_crop``).

    Returns:
        ``(region, None)`` with the crop ``[x1, y1, x2, y2]`` snapped to whole pixels inside the
        image, or ``(None, problem)`` for the planner.
    """
    view_key = zoom.view if zoom.view is not None else latest
    frame = getattr(zoom, "frame", "view")
    label = zoom.label or "zoom"
    if frame != "full" and str(view_key) not in views:
        valid = ", ".join(sorted(views, key=int))
        return None, Problem(
            ProblemCode.UNKNOWN_VIEW, UNKNOWN_VIEW_TEMPLATE.format(view=view_key, valid=valid)
        )
    try:
        full = box_to_full(zoom.box, frame, view_key, views, planner)
        w, h = state["scene"]["width"], state["scene"]["height"]
        crop, _ = zoom_region(full, w, h, min_crop, snap=True)
    except BoxError as exc:
        return None, Problem(
            box_problem_code(exc),
            BOX_PROBLEM_TEMPLATE.format(box=list(zoom.box), label=label, reason=exc),
        )
    return crop.as_list(), None


def tool_request_region(
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
            full = box_to_full(nums, "view", view_key, views, planner)
            clipped, _ = validate_box(full, state["scene"]["width"], state["scene"]["height"])
        except BoxError as exc:
            # A tool's region is reported as outside the image whatever the box's fault (the
            # code the graph has always given here; an inverted tool box included).
            return None, Problem(
                ProblemCode.BOX_OUTSIDE_IMAGE,
                BOX_PROBLEM_TEMPLATE.format(box=nums, label="tool region", reason=exc),
            )
        return clipped.snap_out().clip(
            state["scene"]["width"], state["scene"]["height"]
        ).as_list(), None
    if turn_zoom_region is not None:
        return list(turn_zoom_region), None
    zoom = latest_zoom(views)
    if zoom is not None:
        return list(zoom["region_xyxy"]), None
    return None, None
