"""The Python facade: ``zoomearth.Agent(...).ask(image, question)`` -> :class:`AskResult`.

The facade owns one compiled graph, a SQLite checkpointer (``checkpoint_db`` in the data
directory) and the per-process runtime. Threads are conversations: asking again with the same
``thread`` continues with the same views and artifacts ("now denoise that crop"); a run stopped at
an approval point, or killed, continues with :meth:`Agent.resume`.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from zoomearth.config import Settings, load_settings
from zoomearth.errors import ZoomEarthError

__all__ = ["Agent", "AskResult", "ThreadError"]

THREAD_SCENE_TEMPLATE = (
    "Thread {thread!r} is about {old}; it cannot switch to {new}. Start a new thread (omit "
    "--thread) to ask about another image."
)
NO_THREAD_TEMPLATE = (
    "Thread {thread!r} has no saved run in {db}; check the id (see the run directories in {runs})."
)
NOTHING_TO_RESUME_TEMPLATE = "Thread {thread!r} has nothing to resume: its run already finished."
NEED_IMAGE_TEMPLATE = "A new thread needs an image and a question."
PENDING_APPROVAL_TEMPLATE = (
    "Thread {thread!r} is waiting for approval of {tools}. Answer first: "
    "zoomearth ask --thread {thread} --resume --approve (or --deny)."
)
UNFINISHED_TEMPLATE = (
    "Thread {thread!r} has an unfinished run (stopped or killed). Finish it first with "
    "zoomearth ask --thread {thread} --resume."
)
RUN_DIR_TEMPLATE = (
    "Thread {thread!r} writes into {old}; a thread keeps one run directory (artifact ids are "
    "unique within it). Omit --out, or start a new thread."
)


class ThreadError(ZoomEarthError, ValueError):
    """A thread id is unknown, finished, or used with another image."""


class ZoomRecord(BaseModel):
    """One zoom: where the agent looked."""

    view_id: int
    step: int
    label: str | None = None
    box_xyxy: list[float] = Field(description="Full-resolution pixels, xyxy, half-open")
    map_box: list[float] | None = Field(None, description="minx, miny, maxx, maxy in the scene CRS")


class AskResult(BaseModel):
    """The whole record of one run (``zoomearth ask --json`` prints it).

    The JSON Schema is published in ``docs/ask.schema.json``.
    """

    thread_id: str
    status: Literal["answered", "awaiting_approval", "running"]
    answer: str | None = None
    answer_kind: Literal["answer", "best_effort"] | None = None
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
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    artifacts: list[dict[str, Any]] = Field(default_factory=list)
    problems: list[dict[str, Any]] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    visual_tokens: int = 0
    run_dir: str = ""
    trajectory: str | None = None
    pending_approval: list[dict[str, Any]] = Field(default_factory=list)
    seconds: float = 0.0


def default_thread_id(image: str | Path, question: str) -> str:
    """A fresh, readable thread id: date-time plus a short random suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha1(f"{image}|{question}|{uuid.uuid4()}".encode()).hexdigest()[:6]
    return f"{stamp}-{digest}"


class Agent:
    """Ask questions about UHR images; each thread is a resumable conversation.

    Args:
        settings: Effective settings (loaded from file/environment when None).
        planner: A :class:`~zoomearth.agent.base.Planner`, or a backend name
            (``auto``/``transformers``/``openai``/``rules``/``script``), or None for the setting.
        registry: Tool registry (the default registry with built-ins and plugins when None).
        checkpointer: A LangGraph checkpoint saver; None opens the SQLite file ``checkpoint_db``.
        auto_approve: Run approval-gated tools without asking.
        strict: Re-raise tool failures (tests, ``--strict``).
        on_event: Callback receiving progress events (zooms, tool calls, tool progress).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        planner: Any = None,
        registry: Any = None,
        checkpointer: Any = None,
        auto_approve: bool = False,
        strict: bool = False,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        pool: Any = None,
    ) -> None:
        from zoomearth.graphs.builder import build_graph
        from zoomearth.graphs.persistence import open_sqlite_checkpointer
        from zoomearth.graphs.runtime import GraphRuntime

        self.settings = settings or load_settings()
        if planner is None or isinstance(planner, str):
            from zoomearth.agent.backends import make_planner

            if isinstance(planner, str):
                self.settings = self.settings.model_copy(update={"planner": planner})
            planner = make_planner(self.settings, pool=pool)
        self.planner = planner
        if registry is None:
            from zoomearth.tools.registry import get_registry

            registry = get_registry()
        self.registry = registry
        self._owns_checkpointer = checkpointer is None
        if checkpointer is None:
            assert self.settings.checkpoint_db is not None
            checkpointer = open_sqlite_checkpointer(self.settings.checkpoint_db)
        self.checkpointer = checkpointer
        self.runtime = GraphRuntime(
            settings=self.settings, pool=pool, auto_approve=auto_approve, strict=strict
        )
        self.on_event = on_event
        self.graph = build_graph(planner, registry, self.runtime, checkpointer=checkpointer)

    # ------------------------------------------------------------------------------------------
    def _config(self, thread_id: str, run_dir: str | Path | None) -> dict[str, Any]:
        run = self.runtime.run_dir(thread_id, run_dir)
        return {
            "configurable": {"thread_id": thread_id, "run_dir": str(run)},
            "recursion_limit": 10_000,
        }

    def _existing(self, thread_id: str) -> dict[str, Any] | None:
        snapshot = self.graph.get_state({"configurable": {"thread_id": thread_id}})
        return snapshot.values if snapshot and snapshot.values else None

    def ask(
        self,
        image: str | Path | None,
        question: str,
        *,
        thread: str | None = None,
        question_id: str | None = None,
        run_dir: str | Path | None = None,
        bands: list[int] | None = None,
        max_steps: int | None = None,
        max_zooms: int | None = None,
    ) -> AskResult:
        """Ask one question; returns when answered or stopped at an approval point.

        Args:
            image: The scene (any raster); may be omitted when continuing a thread.
            question: The question or command.
            thread: Thread id to continue (its views and artifacts); None starts a new one.
            question_id: Optional id recorded in the run (evaluation).
            run_dir: Output directory (default ``runs_dir/<thread>``).
            bands: Explicit band mapping (1-based R, G, B or a single band).
            max_steps: Step budget override.
            max_zooms: Zoom budget override.
        """
        t0 = time.perf_counter()
        existing = self._existing(thread) if thread else None
        if existing is not None:
            self._check_finished(thread)  # type: ignore[arg-type]
            old_dir = existing.get("run_dir")
            if run_dir is not None and old_dir and Path(run_dir).resolve() != Path(old_dir):
                raise ThreadError(RUN_DIR_TEMPLATE.format(thread=thread, old=old_dir))
        payload: dict[str, Any] = {"question": question, "question_id": question_id}
        if existing is None:
            if image is None or not question:
                raise ThreadError(
                    NEED_IMAGE_TEMPLATE
                    if not thread
                    else NO_THREAD_TEMPLATE.format(
                        thread=thread, db=self.settings.checkpoint_db, runs=self.settings.runs_dir
                    )
                )
            thread = thread or default_thread_id(image, question)
            payload["scene"] = self.runtime.scene_ref(image, bands)
        elif image is not None:
            new = str(Path(image).expanduser().resolve())
            if new != existing["scene"]["path"]:
                raise ThreadError(
                    THREAD_SCENE_TEMPLATE.format(
                        thread=thread, old=existing["scene"]["path"], new=new
                    )
                )
        if max_steps is not None:
            payload["max_steps"] = max_steps
        if max_zooms is not None:
            payload["max_zooms"] = max_zooms
        assert thread is not None
        if existing is not None and run_dir is None:
            run_dir = existing.get("run_dir")
        config = self._config(thread, run_dir)
        payload["run_dir"] = config["configurable"]["run_dir"]
        self._drive(payload, config)
        return self.result(thread, seconds=time.perf_counter() - t0)

    def _check_finished(self, thread: str) -> None:
        """Refuse a new question while the thread's last run is unfinished (it would be lost)."""
        snapshot = self.graph.get_state({"configurable": {"thread_id": thread}})
        if not snapshot.next:
            return
        pending = [i.value for task in snapshot.tasks for i in task.interrupts]
        if pending:
            tools = ", ".join(
                str(p.get("tool", "?")) if isinstance(p, dict) else "?" for p in pending
            )
            raise ThreadError(PENDING_APPROVAL_TEMPLATE.format(thread=thread, tools=tools))
        raise ThreadError(UNFINISHED_TEMPLATE.format(thread=thread))

    def resume(self, thread: str, approve: bool | None = None) -> AskResult:
        """Continue a thread stopped at an approval point (``approve``) or killed mid-run.

        Raises:
            ThreadError: Unknown or finished thread, or an approval is pending and ``approve``
                is None (say approve or deny explicitly).
        """
        from langgraph.types import Command

        t0 = time.perf_counter()
        snapshot = self.graph.get_state({"configurable": {"thread_id": thread}})
        if not snapshot or not snapshot.values:
            raise ThreadError(
                NO_THREAD_TEMPLATE.format(
                    thread=thread, db=self.settings.checkpoint_db, runs=self.settings.runs_dir
                )
            )
        if not snapshot.next:
            raise ThreadError(NOTHING_TO_RESUME_TEMPLATE.format(thread=thread))
        config = self._config(thread, snapshot.values.get("run_dir"))
        interrupts = [i for task in snapshot.tasks for i in task.interrupts]
        if interrupts and approve is None:
            tools = ", ".join(
                str(i.value.get("tool", "?")) if isinstance(i.value, dict) else "?"
                for i in interrupts
            )
            raise ThreadError(PENDING_APPROVAL_TEMPLATE.format(thread=thread, tools=tools))
        if interrupts:
            value = {"approve": bool(approve)}
            command: Command[Any] = Command(resume={i.id: value for i in interrupts})
            self._drive(command, config)
        else:
            self._drive(None, config)  # crashed run: continue from the last checkpoint
        return self.result(thread, seconds=time.perf_counter() - t0)

    def stream_events(self, payload: Any, config: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Run the graph, yielding progress events (custom stream) as they happen."""
        from zoomearth.graphs.persistence import DURABILITY

        for mode, chunk in self.graph.stream(
            payload, config, stream_mode=["custom", "updates"], durability=DURABILITY
        ):
            if mode == "custom" and isinstance(chunk, dict):
                yield chunk
            elif mode == "updates" and isinstance(chunk, dict) and "__interrupt__" in chunk:
                for intr in chunk["__interrupt__"]:
                    yield {
                        "event": "approval",
                        **(intr.value if isinstance(intr.value, dict) else {"value": intr.value}),
                    }

    def _drive(self, payload: Any, config: dict[str, Any]) -> None:
        from zoomearth.graphs.tool_node import clear_cancel

        clear_cancel(config["configurable"]["thread_id"])  # an old request must not stop this run
        for event in self.stream_events(payload, config):
            if self.on_event is not None:
                self.on_event(event)

    # ------------------------------------------------------------------------------------------
    def result(self, thread: str, seconds: float = 0.0) -> AskResult:
        """The record of a thread's latest run, from its checkpoint."""
        from zoomearth.geometry import PixelBox

        snapshot = self.graph.get_state({"configurable": {"thread_id": thread}})
        values = snapshot.values
        pending = [
            i.value if isinstance(i.value, dict) else {"value": i.value}
            for task in snapshot.tasks
            for i in task.interrupts
        ]
        status: Literal["answered", "awaiting_approval", "running"] = (
            "answered"
            if values.get("status") == "answered" and not snapshot.next
            else ("awaiting_approval" if pending else "running")
        )
        scene = values.get("scene", {})
        transform = scene.get("transform")
        # The record covers the thread's latest question; views and artifacts stay available
        # to later questions (artifacts are listed for the whole thread).
        qi = int(values.get("question_index", 0))
        steps = [s for s in values.get("steps", []) if s.get("question", 0) == qi]
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
                )
            )
        run_dir = Path(values.get("run_dir") or self.runtime.run_dir(thread))
        trajectory = run_dir / "trajectory.png"
        return AskResult(
            thread_id=thread,
            status=status,
            answer=values.get("answer") if status == "answered" else None,
            answer_kind=values.get("answer_kind") if status == "answered" else None,
            stage_answers=[s["stage_answer"] for s in steps if s.get("stage_answer")],
            question=values.get("question", ""),
            scene=scene,
            planner=values.get("planner", ""),
            planner_selection=values.get("planner_selection", ""),
            profile=values.get("planner_profile") or "agent",
            profile_reason=values.get("profile_reason", ""),
            steps=steps,
            zooms=zooms,
            tool_calls=[t for s in steps for t in s.get("tools", [])],
            artifacts=values.get("artifacts", []),
            problems=[p for s in steps for p in s.get("problems", [])],
            warnings=values.get("warnings", []),
            visual_tokens=sum(int(s.get("visual_tokens", 0)) for s in steps),
            run_dir=str(run_dir),
            trajectory=str(trajectory) if trajectory.exists() else None,
            pending_approval=pending,
            seconds=round(seconds, 3),
        )

    def close(self) -> None:
        """Release scenes, the planner's resources and the checkpointer's connection."""
        self.runtime.close()
        self.planner.close()
        conn = getattr(self.checkpointer, "conn", None)
        if self._owns_checkpointer and conn is not None:
            conn.close()
