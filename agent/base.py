"""The planner interface shared by every backend (transformers, openai, rules, script).

A planner receives a :class:`PlanRequest` -- the question, a neutral transcript of what happened
so far (planner turns, zoom observations, tool results, feedback on mistakes), the views it may
look at, the tools it may call -- and returns a :class:`PlanReply`: the raw model text (parsed by
:func:`zoomearth.agent.parse_response`, exactly like any model output) and the bookkeeping needed to
interpret it (the pixel size at which each view was *seen*, so boxes can be mapped back to
full-resolution pixels; the visual tokens processed).

Pixels never enter the transcript: entries refer to views by id; the backend asks
``PlanRequest.render(view_id)`` for the RGB array when it needs it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from zoomearth.errors import ZoomEarthError

if TYPE_CHECKING:
    import numpy as np

    from zoomearth.agent.parsing import ParsedResponse
    from zoomearth.geometry import ViewSpec

__all__ = [
    "CoordMode",
    "EntryKind",
    "Layout",
    "PlanReply",
    "PlanRequest",
    "Planner",
    "PlannerError",
    "ProfileName",
    "TranscriptEntry",
]

CoordMode = Literal["pixels", "norm1000", "norm1"]
"""Frame of the boxes a backend's model emits.

* ``pixels``: absolute pixels of the image exactly as the model saw it (Qwen2.5-VL; a 512 px
  overview is seen as 504 x 504 after the processor's multiple-of-28 resize),
* ``norm1000``: 0-1000 normalised coordinates of the image (Qwen2-VL / Qwen3-VL style),
* ``norm1``: 0-1 normalised coordinates.
"""

Layout = Literal["chat"]
"""Where zoom crops go in an ``agent``-profile conversation: ``chat``, a plain user message
carrying the crop. (ZoomEarth-3B's continuation of the assistant turn is the ``zoomearth`` profile,
:mod:`zoomearth.agent.profiles`.)"""

ProfileName = Literal["agent", "zoomearth"]
"""The protocol profile a planner speaks (see :mod:`zoomearth.agent.profiles`)."""

EntryKind = Literal["question", "planner", "zoom", "tool_result", "feedback"]


@dataclass(frozen=True)
class TranscriptEntry:
    """One event of the conversation after the question, in order.

    Attributes:
        kind: ``question`` (a follow-up question in the same thread; the first question is
            :attr:`PlanRequest.question`), ``planner`` (the model's raw text of one turn),
            ``zoom`` (a crop was rendered; the
            image of ``view_id`` follows), ``tool_result`` (a tool's short text result, optionally
            with a preview ``view_id``), ``feedback`` (problems with the previous turn that the
            model should fix, or a request for a best-effort answer).
        text: Text of the entry (for ``zoom``: a short caption such as the region).
        view_id: The view shown with this entry, if any.
        data: Small JSON-serialisable extras (tool name, artifact ids, label ...).
    """

    kind: EntryKind
    text: str = ""
    view_id: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PlanRequest:
    """Everything a planner needs for one turn.

    Attributes:
        question: The user's current question or command (the latest one of the thread).
        overview_id: Id of the overview view shown with the question.
        transcript: Events after the question, oldest first.
        views: All views so far by id (their full-resolution region and rendered size).
        render: Returns the pixels of a view: RGB uint8 array of shape (H, W, 3) at the view's
            rendered size (``views[id].width x views[id].height``).
        tools: Tool descriptions from the registry: dicts with ``name``, ``description`` and
            ``parameters`` (JSON Schema of the arguments).
        final: True when budgets are exhausted and only an answer is acceptable.
        scene_info: Small facts about the scene (size, CRS, ground sampling distance).
        artifacts: Artifacts so far (id, kind, one-line summary), for reference by ``artifact:N``.
        check_arguments: ``check_arguments(tool_name, arguments)`` returns what running the tool
            would say about a planner's arguments (region arguments included), or None when they
            are accepted: the tool's own ``Args`` model, the validator the tool runner uses. Set
            by the graph; None where no registry is at hand (a planner then checks the JSON
            Schema in ``tools``).
        dates: The scene's time stack, None for a one-date scene: ``{"available": [labels,
            oldest first], "viewing": the label the views show, "named": [labels the question
            names, oldest first], "unknown": [dates named that no image has], "reference": the
            label whose pixel grid every box is in}`` (:mod:`zoomearth.agent.text.dates`).
    """

    question: str
    overview_id: int
    transcript: list[TranscriptEntry]
    views: dict[int, ViewSpec]
    render: Callable[[int], np.ndarray]
    tools: list[dict[str, Any]] = field(default_factory=list)
    final: bool = False
    scene_info: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    #: The thread's first question, shown with the overview, when follow-ups came after it
    #: (they are ``question`` entries of the transcript). None: ``question`` is the first one.
    first_question: str | None = None
    check_arguments: Callable[[str, Mapping[str, Any]], str | None] | None = None
    dates: Mapping[str, Any] | None = None

    @property
    def current(self) -> list[TranscriptEntry]:
        """Entries since the latest question (the whole transcript for the first question)."""
        for i in range(len(self.transcript) - 1, -1, -1):
            if self.transcript[i].kind == "question":
                return self.transcript[i + 1 :]
        return self.transcript


@dataclass
class PlanReply:
    """A planner's answer for one turn.

    Attributes:
        text: The raw model text (ZoomEarth protocol: ``<think>``, ``bbox_2d`` JSON,
            ``<tool_call>``, ``<answer>``).
        seen_sizes: For each view shown this turn, the ``(width, height)`` in pixels at which the
            model saw it (after any processor resize). Boxes in ``pixels`` mode refer to it.
        visual_tokens: Image tokens processed by the model in this call.
        backend: Backend name (``transformers``, ``openai``, ``rules``, ``script``).
        model: Model id or path, when there is one.
        parsed: A pre-parsed response for backends that produce actions directly (structured
            script turns); None means "parse ``text``".
        notes: Human-readable notes for the run log (which backend was chosen and why ...).
    """

    text: str
    seen_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    visual_tokens: int = 0
    backend: str = ""
    model: str | None = None
    parsed: ParsedResponse | None = None
    notes: list[str] = field(default_factory=list)


class PlannerError(ZoomEarthError, RuntimeError):
    """A planner backend failed for a reason the user must fix (unreachable server, no weights).

    The message says what to configure.
    """


class Planner(ABC):
    """Base class of planner backends.

    Subclasses set :attr:`name` and :attr:`coord_mode` and implement :meth:`plan`. Heavy resources
    (weights, HTTP clients) are created lazily on the first :meth:`plan` call.
    """

    name: ClassVar[str] = "planner"
    coord_mode: CoordMode = "pixels"
    layout: Layout = "chat"
    #: The protocol profile: ``agent`` (multi-step, chat layout) or ``zoomearth`` (the two-stage
    #: reference protocol; the graph then runs exactly two stages).
    profile: ProfileName = "agent"
    #: Why this profile was chosen (shown in the run).
    profile_reason: str = ""
    #: zoomearth profile: False makes the graph ignore stage 1's box (the no-zoom baseline).
    zoom_enabled: bool = True
    #: Why this backend was chosen (set by ``make_planner``; shown in the run).
    selection: str = ""

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Settle anything the graph needs before the first turn (called at each question).

        The ``openai`` backend learns the served model's name here when ``planner_model`` is not
        set, and with it the protocol profile. Cheap after the first call.
        """

    @abstractmethod
    def plan(self, request: PlanRequest) -> PlanReply:
        """Return the model's text for one turn (never raises on the model's content)."""

    def describe(self) -> str:
        """One line naming the backend and model, for logs and the run record."""
        return self.name

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (HTTP clients ...). Models stay in the pool."""
