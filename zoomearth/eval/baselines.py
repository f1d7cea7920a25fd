"""Baseline planners for ablations, and the per-question hook of the evaluation runner.

* ``oracle`` -- :class:`OraclePlanner` wraps another planner and overrides **only where it
  looks**: on the first turn of a question with a ground-truth box, the zoom goes to that box (in
  full-resolution pixels), whatever the inner planner asked for; the inner planner's stage-1
  answer and tool calls are kept, and every later turn (the answer) is the inner planner's. An
  oracle has no vision-language model of its own, and answering with the ground truth would be a
  fake score: it measures the upper bound of crop quality (APO IoU 1.0) and what the inner
  planner answers when shown the right crop. Questions without a box go to the inner planner
  unchanged.
* ``no-zoom`` -- :class:`NoZoomPlanner` wraps another planner and forbids zooms and tools: the
  inner planner is always asked with ``final=True`` (answer now) and any zoom or tool call in its
  reply is dropped, so the answer comes from the overview only.
* ``rules`` -- the existing offline rules planner: its zooms come from the question's location
  phrases alone, so its APO IoU is that of text-only localisation.

:func:`make_eval_planner` builds any of them (or a plain backend) from the settings;
:func:`select_question` tells a planner (through its wrappers) which question comes next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

from zoomearth.agent.base import Planner, PlanReply, PlanRequest
from zoomearth.agent.protocol import THINK_CLOSE, THINK_OPEN, format_turn, format_zoom

if TYPE_CHECKING:
    from zoomearth.config import Settings

__all__ = [
    "BASELINES",
    "EVAL_PLANNERS",
    "NoZoomPlanner",
    "OraclePlanner",
    "make_eval_planner",
    "select_question",
]

BASELINES: Final[tuple[str, ...]] = ("oracle", "no-zoom", "rules")
#: Names accepted by ``zoomearth eval --planner``.
EVAL_PLANNERS: Final[tuple[str, ...]] = (
    "auto",
    "transformers",
    "openai",
    "rules",
    "script",
    "oracle",
    "no-zoom",
)
WRAPPER_INNER_TEMPLATE: Final = (
    "The {name} baseline wraps another planner, which cannot be {inner!r}; choose the inner "
    "backend with --inner (auto, transformers, openai, rules or script)."
)


def _parsed(reply: PlanReply) -> Any:
    from zoomearth.agent.parsing import parse_response

    return reply.parsed or parse_response(reply.text)


def _box_in_view(
    box_full: Sequence[float], request: PlanRequest, coord_mode: str, seen: tuple[int, int]
) -> list[float]:
    """A full-resolution box in the overview's frame as the inner planner writes boxes."""
    view = request.views[request.overview_id]
    rx1, ry1, rx2, ry2 = view.region.as_list()
    sx = (rx2 - rx1) or 1.0
    sy = (ry2 - ry1) or 1.0
    fx = [(box_full[0] - rx1) / sx, (box_full[2] - rx1) / sx]
    fy = [(box_full[1] - ry1) / sy, (box_full[3] - ry1) / sy]
    if coord_mode == "norm1000":
        scale = (1000.0, 1000.0)
    elif coord_mode == "norm1":
        scale = (1.0, 1.0)
    else:
        scale = (float(seen[0]), float(seen[1]))
    return [
        round(fx[0] * scale[0], 1),
        round(fy[0] * scale[1], 1),
        round(fx[1] * scale[0], 1),
        round(fy[1] * scale[1], 1),
    ]


class OraclePlanner(Planner):
    """Zooms to the ground-truth box on the first turn; the inner planner does the rest.

    Args:
        inner: The planner that answers (and whose stage-1 text is kept).
    """

    name: ClassVar[str] = "oracle"

    def __init__(self, inner: Planner) -> None:
        self.inner = inner
        self.coord_mode = inner.coord_mode
        self.layout = inner.layout
        self.profile = inner.profile
        self.profile_reason = inner.profile_reason
        self.selection = f"oracle baseline (zooms to the ground-truth box) over {inner.name}"
        self._box: list[float] | None = None

    def set_target(self, box_full_xyxy: Sequence[float] | None) -> None:
        """Set the next question's ground-truth box (full-resolution xyxy; None: no box)."""
        self._box = [float(v) for v in box_full_xyxy] if box_full_xyxy is not None else None

    def prepare(self) -> None:
        """Prepare the inner planner and take over its (possibly just learned) profile."""
        self.inner.prepare()
        self.profile = self.inner.profile
        self.profile_reason = self.inner.profile_reason

    def describe(self) -> str:
        """One line naming the baseline and the inner planner."""
        return f"oracle over {self.inner.describe()}"

    def plan(self, request: PlanRequest) -> PlanReply:
        """The inner planner's reply, with the first turn's zooms replaced by the oracle box."""
        from zoomearth.agent.parsing import ParsedResponse, ZoomRequest

        reply = self.inner.plan(request)
        first = not any(e.kind == "planner" for e in request.current)
        if not first or self._box is None or request.final:
            return reply
        if self.profile == "zoomearth":
            return self._zoomearth_stage1(reply, request)
        parsed = _parsed(reply)
        shown = format_zoom(
            _box_in_view(
                self._box,
                request,
                self.coord_mode,
                reply.seen_sizes.get(request.overview_id) or _own_size(request),
            ),
            "oracle",
        )
        x1, y1, x2, y2 = self._box
        zoom = ZoomRequest(
            (x1, y1, x2, y2),
            "oracle",
            None,
            format_zoom(self._box, frame="full"),
            "full",
        )
        reply.text = format_turn(parsed.think, [shown], parsed.tool_calls, parsed.answer)
        reply.parsed = ParsedResponse(
            think=parsed.think,
            zooms=(zoom,),
            tool_calls=parsed.tool_calls,
            answer=parsed.answer,
            answer_closed=parsed.answer is not None,
            problems=(),
        )
        reply.notes.append("oracle: zoom replaced by the ground-truth box")
        return reply

    def _zoomearth_stage1(self, reply: PlanReply, request: PlanRequest) -> PlanReply:
        """Stage 1 of the zoomearth profile: the first ``bbox_2d`` becomes the oracle box.

        The graph reads the first ``bbox_2d`` of the text in the 512-long-side frame, so the
        ground truth is written there (``box / factor``); the rest of the text -- which stage 2
        continues -- is the model's. Without a box in the text, the oracle object is put first.
        """
        from zoomearth.agent.profiles import reference_box_factor

        assert self._box is not None
        region = request.views[request.overview_id].region
        factor = reference_box_factor(int(region.width), int(region.height))
        box512 = [round(v / factor, 3) for v in self._box]
        oracle = format_zoom(box512, "oracle")
        key = '"bbox_2d"'
        start = reply.text.find(key)
        bracket = reply.text.find("[", start) if start >= 0 else -1
        close = reply.text.find("]", bracket) if bracket >= 0 else -1
        if close >= 0:
            numbers = ", ".join(f"{v:g}" for v in box512)
            reply.text = reply.text[: bracket + 1] + numbers + reply.text[close:]
        else:
            reply.text = oracle + "\n" + reply.text
        reply.parsed = None
        reply.notes.append("oracle: stage 1's first bbox_2d replaced by the ground-truth box")
        return reply

    def close(self) -> None:
        """Close the inner planner."""
        self.inner.close()


def _own_size(request: PlanRequest) -> tuple[int, int]:
    view = request.views[request.overview_id]
    return int(view.width), int(view.height)


class NoZoomPlanner(Planner):
    """Answers from the overview only: zooms and tool calls of the inner planner are dropped.

    Args:
        inner: The planner that answers.
    """

    name: ClassVar[str] = "no-zoom"

    def __init__(self, inner: Planner) -> None:
        self.inner = inner
        self.coord_mode = inner.coord_mode
        self.layout = inner.layout
        self.profile = inner.profile
        self.profile_reason = inner.profile_reason
        # zoomearth profile: the graph follows no stage-1 box (stage 1's answer stands).
        self.zoom_enabled = False
        self.selection = f"no-zoom baseline (overview only) over {inner.name}"

    def prepare(self) -> None:
        """Prepare the inner planner and take over its (possibly just learned) profile."""
        self.inner.prepare()
        self.profile = self.inner.profile
        self.profile_reason = self.inner.profile_reason

    def describe(self) -> str:
        """One line naming the baseline and the inner planner."""
        return f"no-zoom over {self.inner.describe()}"

    def plan(self, request: PlanRequest) -> PlanReply:
        """Ask the inner planner for an answer now; drop any zoom or tool call it still makes."""
        from zoomearth.agent.parsing import ParsedResponse

        reply = self.inner.plan(dataclasses.replace(request, final=True))
        parsed = _parsed(reply)
        if not parsed.zooms and not parsed.tool_calls:
            return reply
        # An empty think block when there is nothing to show keeps the logged turn non-empty.
        text = format_turn(parsed.think, answer=parsed.answer)
        reply.text = text or f"{THINK_OPEN}{THINK_CLOSE}"
        reply.parsed = ParsedResponse(
            think=parsed.think,
            zooms=(),
            tool_calls=(),
            answer=parsed.answer,
            answer_closed=parsed.answer is not None,
            problems=(),
        )
        reply.notes.append("no-zoom: zooms and tool calls dropped")
        return reply

    def close(self) -> None:
        """Close the inner planner."""
        self.inner.close()


def make_eval_planner(
    name: str, settings: Settings, *, inner: str | None = None, pool: Any = None
) -> Planner:
    """Build the planner ``zoomearth eval --planner NAME`` uses.

    Args:
        name: A backend (``auto``, ``transformers``, ``openai``, ``rules``, ``script``) or a
            wrapping baseline (``oracle``, ``no-zoom``).
        settings: Effective settings (model, server, plan file ...).
        inner: The wrapped backend for ``oracle`` / ``no-zoom`` (default: ``settings.planner``).
        pool: The model pool (shared by the planners of one process).

    Returns:
        The planner.

    Raises:
        ValueError: When a wrapper would wrap another wrapper.
    """
    from zoomearth.agent.backends import make_planner

    if name in ("oracle", "no-zoom"):
        backend = inner or settings.planner
        if backend in ("oracle", "no-zoom"):
            raise ValueError(WRAPPER_INNER_TEMPLATE.format(name=name, inner=backend))
        base = make_planner(settings.model_copy(update={"planner": backend}), pool=pool)
        return OraclePlanner(base) if name == "oracle" else NoZoomPlanner(base)
    return make_planner(settings.model_copy(update={"planner": name}), pool=pool)


def select_question(
    planner: Planner, question_id: str, box_full_xyxy: Sequence[float] | None
) -> None:
    """Prepare a planner (and the planners it wraps) for the next question.

    Per-question script plans select the question's script; the oracle takes its box.

    Args:
        planner: The planner (possibly a wrapper).
        question_id: The question id.
        box_full_xyxy: The ground-truth box in full-resolution pixels, or None.
    """
    current: Planner | None = planner
    while current is not None:
        if isinstance(current, OraclePlanner):
            current.set_target(box_full_xyxy)
        setter = getattr(current, "set_question", None)
        if callable(setter):
            setter(question_id)
        nxt = getattr(current, "inner", None)
        current = nxt if isinstance(nxt, Planner) and nxt is not current else None
