"""The Python facade: ``zoomearth.Agent(...).ask(image, question)`` -> :class:`AskResult`.

The facade owns one compiled graph, a SQLite checkpointer (``checkpoint_db`` in the data
directory) and the per-process runtime. Threads are conversations: asking again with the same
``thread`` continues with the same views and artifacts ("now denoise that crop"); a run stopped at
an approval point, or killed, continues with :meth:`Agent.resume`.

The record says whether the run did what was asked (:data:`RUN_STATUS_RULE`): every tool call of
the question has its status and error, and a finished run whose tool requests did not all succeed
is ``partial`` or ``failed``, never ``answered``. The record itself -- :class:`AskResult`, the
tool-call records and the status rule -- is built in :mod:`zoomearth.run_record`; this module
re-exports its names.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoomearth.config import Settings, load_settings
from zoomearth.errors import ZoomEarthError

# The record of a run lives in zoomearth.run_record; its names stay importable from here.
from zoomearth.run_record import (  # noqa: F401
    CALL_DETAIL_TEMPLATE,
    CANCELLED_REASON_TEMPLATE,
    DENIED_ERROR_TEMPLATE,
    FAILED_REASON_TEMPLATE,
    MAX_DETAIL_CHARS,
    PARTIAL_REASON_TEMPLATE,
    REJECTED_DETAIL_TEMPLATE,
    REJECTED_REQUEST_CODES,
    RUN_STATUS_RULE,
    AskResult,
    RunStatus,
    ToolCallRecord,
    ToolCallStatus,
    ZoomRecord,
    answer_summary,
    ask_result,
    run_outcome,
)

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

__all__ = [
    "Agent",
    "AskResult",
    "RUN_STATUS_RULE",
    "RunStatus",
    "ThreadBusyError",
    "ThreadError",
    "ToolCallRecord",
    "run_outcome",
]


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
THREAD_RUNNING_TEMPLATE = (
    "Thread {thread!r} is running in {holder}; wait for it to finish, or stop it (kill {pid}) "
    "and continue it with: zoomearth ask --thread {thread} --resume."
)
THREAD_RUNNING_ELSEWHERE_TEMPLATE = (
    "Thread {thread!r} is running in {where}; wait for it to finish before asking again or "
    "resuming it."
)
THREAD_LOCK_ORPHANED_TEMPLATE = (
    "Thread {thread!r} is locked, but its run ({holder}) has exited: a process it started still "
    "holds the lock file {path}. Stop that process, then continue with: zoomearth ask --thread "
    "{thread} --resume."
)
SWEPT_RUN_DIR_TEMPLATE = (
    "Removed {files} partial file(s) ({size:,} bytes) that a killed run left in {run_dir}."
)
LOCK_TAKEN_OVER_TEMPLATE = (
    "Thread {thread!r} was left locked by {holder}, which is no longer running (killed?); this "
    "run took the lock over."
)


class ThreadError(ZoomEarthError, ValueError):
    """A thread id is unknown, finished, or used with another image."""


class ThreadBusyError(ThreadError):
    """Another run (process, server worker or thread) is running this thread right now.

    Attributes:
        thread: The thread id.
        pid: The running process's id (None when unknown, e.g. a worker on another host found
            through the PostgreSQL advisory lock).
        holder: The lock file's record of that run (``pid``, ``host``, ``started``, ``command``).
    """

    def __init__(self, message: str, thread: str, holder: Any = None) -> None:
        super().__init__(message)
        self.thread = thread
        self.holder = holder
        self.pid: int | None = holder.pid if holder is not None and holder.pid else None


log = logging.getLogger("zoomearth.api")



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
        pool: The model pool shared by the planner and the tools (default: the process pool for
            these settings' budget, :func:`zoomearth.models.get_default_pool`).
        tool_planner: ``zoomearth`` profile: the planner whose tool calls run around ZoomEarth's
            zoom (default: from the setting ``zoomearth_tool_planner``).
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
        tool_planner: Any = None,
    ) -> None:
        from zoomearth.graphs.builder import build_graph
        from zoomearth.graphs.persistence import open_sqlite_checkpointer
        from zoomearth.graphs.runtime import GraphRuntime

        self.settings = settings or load_settings()
        if pool is None:
            # One pool for the planner and the tools, sized by these settings.
            from zoomearth.models import get_default_pool

            pool = get_default_pool(self.settings)
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
        #: The thread of the run in progress or last started (for "continue with --resume").
        self.current_thread: str | None = None
        self.graph = build_graph(
            planner, registry, self.runtime, checkpointer=checkpointer, tool_planner=tool_planner
        )

    # ------------------------------------------------------------------------------------------
    def _config(self, thread_id: str, run_dir: str | Path | None) -> RunnableConfig:
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
        stack: Sequence[str | Path] | None = None,
        stack_labels: Sequence[str] | None = None,
    ) -> AskResult:
        """Ask one question; returns when answered or stopped at an approval point.

        Args:
            image: The scene (any raster), or a folder of dated rasters (a time stack on the
                newest date's grid); may be omitted when continuing a thread.
            question: The question or command.
            thread: Thread id to continue (its views and artifacts); None starts a new one.
            question_id: Optional id recorded in the run (evaluation).
            run_dir: Output directory (default ``runs_dir/<thread>``).
            bands: Explicit band mapping (1-based R, G, B or a single band).
            max_steps: Step budget override.
            max_zooms: Zoom budget override.
            stack: Other dates of the same place (paths or URLs): ``image`` and these form a
                time stack on ``image``'s grid (:mod:`zoomearth.scene.stack`). Ignored when
                continuing a thread (it keeps its dates).
            stack_labels: Names to read the stack's dates from instead of the files' own names,
                ``image`` first (e.g. uploaded file names; see
                :meth:`zoomearth.scene.stack.SceneStack.from_sources`).

        Raises:
            ThreadBusyError: Another run of ``thread`` is going (it names its process); nothing
                was read or written.
            ThreadError: Unknown thread, unfinished run, another image or run directory.
        """
        t0 = time.perf_counter()
        new_thread = not thread
        if new_thread:
            if image is None or not question:
                raise ThreadError(NEED_IMAGE_TEMPLATE)
            thread = default_thread_id(image, question)
        assert thread is not None
        self.current_thread = thread
        with self.thread_lock(thread):
            return self._ask(
                image,
                question,
                thread=thread,
                new_thread=new_thread,
                question_id=question_id,
                run_dir=run_dir,
                bands=bands,
                max_steps=max_steps,
                max_zooms=max_zooms,
                t0=t0,
                stack=stack,
                stack_labels=stack_labels,
            )

    def _ask(
        self,
        image: str | Path | None,
        question: str,
        *,
        thread: str,
        new_thread: bool,
        question_id: str | None,
        run_dir: str | Path | None,
        bands: list[int] | None,
        max_steps: int | None,
        max_zooms: int | None,
        t0: float,
        stack: Sequence[str | Path] | None = None,
        stack_labels: Sequence[str] | None = None,
    ) -> AskResult:
        """:meth:`ask` with the thread's lock held."""
        existing = None if new_thread else self._existing(thread)
        if existing is not None:
            self._check_finished(thread)
            old_dir = existing.get("run_dir")
            if run_dir is not None and old_dir and Path(run_dir).resolve() != Path(old_dir):
                raise ThreadError(RUN_DIR_TEMPLATE.format(thread=thread, old=old_dir))
        payload: dict[str, Any] = {"question": question, "question_id": question_id}
        if existing is None:
            if image is None or not question:
                raise ThreadError(
                    NO_THREAD_TEMPLATE.format(
                        thread=thread, db=self.settings.checkpoint_db, runs=self.settings.runs_dir
                    )
                )
            payload["scene"] = self._scene_ref(image, bands, stack, stack_labels)
        elif image is not None:
            from zoomearth.scene.remote import source_key

            new = source_key(image)  # a URL stays a URL
            old = existing["scene"]
            if old.get("stack") and Path(new).is_dir() and Path(old["path"]).parent == Path(new):
                new = old["path"]  # the folder of the thread's stack names its reference date
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
        if existing is not None and run_dir is None:
            run_dir = existing.get("run_dir")
        config = self._config(thread, run_dir)
        payload["run_dir"] = config["configurable"]["run_dir"]
        self._sweep_run_dir(config)
        self._drive_until_cancelled(payload, config)
        return self.result(thread, seconds=time.perf_counter() - t0)

    def _scene_ref(
        self,
        image: str | Path,
        bands: list[int] | None,
        stack: Sequence[str | Path] | None,
        labels: Sequence[str] | None = None,
    ) -> Any:
        """The state's scene reference: one raster, or a time stack (a folder, or ``stack``)."""
        from zoomearth.scene.stack import open_stack

        opened = open_stack(
            image, list(stack or ()), settings=self.settings, labels=labels if stack else None
        )
        if opened is None:
            return self.runtime.scene_ref(image, bands)
        try:
            ref = self.runtime.scene_ref(opened.dates[opened.reference_index].source, bands)
            return self.runtime.attach_stack(ref, opened)
        finally:
            opened.close()

    @property
    def lock_dir(self) -> Path:
        """Folder of the per-thread lock files (``DATA_DIR/locks``)."""
        return Path(self.settings.data_dir).expanduser() / "locks"

    @contextlib.contextmanager
    def thread_lock(self, thread: str) -> Iterator[None]:
        """Hold ``thread``'s lock: one writer per thread, across processes and threads.

        The file lock (:class:`zoomearth.threadlock.ThreadLock`) always; with a PostgreSQL
        checkpointer also its advisory lock (:class:`zoomearth.threadlock.PgAdvisoryLock`), so
        server workers on other hosts are excluded too. Both are released however the block ends
        (exceptions and ``KeyboardInterrupt`` included); a process killed while holding them
        loses them (kernel, database session), and the next run takes the file over with a note.

        Raises:
            ThreadBusyError: A live run holds the lock; nothing was read or written.
        """
        from zoomearth.threadlock import ThreadBusy, ThreadLock

        lock = ThreadLock(self.lock_dir, thread)
        try:
            lock.acquire()
        except ThreadBusy as exc:
            raise self._busy_error(thread, exc, lock.path) from None
        try:
            if lock.taken_over is not None:
                text = LOCK_TAKEN_OVER_TEMPLATE.format(
                    thread=thread, holder=lock.taken_over.describe()
                )
                log.warning(text)
                if self.on_event is not None:
                    self.on_event({"event": "note", "text": text})
            with contextlib.ExitStack() as stack:
                pg = self._pg_lock(thread)
                if pg is not None:
                    try:
                        pg.acquire()
                    except ThreadBusy as exc:
                        raise self._busy_error(thread, exc, lock.path) from None
                    stack.callback(pg.release)
                yield
        finally:
            lock.release()

    def _pg_lock(self, thread: str) -> Any:
        """The PostgreSQL advisory lock of ``thread`` when the checkpointer is a PostgresSaver."""
        if type(self.checkpointer).__name__ != "PostgresSaver":
            return None
        pool = getattr(self.checkpointer, "conn", None)
        if pool is None or not hasattr(pool, "getconn"):
            return None  # a single connection: the file lock is the only mechanism
        from zoomearth.threadlock import PgAdvisoryLock

        return PgAdvisoryLock(pool, thread)

    @staticmethod
    def _busy_error(thread: str, exc: Any, path: Path) -> ThreadBusyError:
        holder = exc.holder
        if holder is None or not holder.pid:
            where = exc.where or f"another process (lock file {path})"
            text = THREAD_RUNNING_ELSEWHERE_TEMPLATE.format(thread=thread, where=where)
        elif holder.alive() is False:
            text = THREAD_LOCK_ORPHANED_TEMPLATE.format(
                thread=thread, holder=holder.describe(), path=path
            )
        else:
            text = THREAD_RUNNING_TEMPLATE.format(
                thread=thread, holder=holder.describe(), pid=holder.pid
            )
        return ThreadBusyError(text, thread, holder)

    def running(self, thread: str) -> Any:
        """The live run of ``thread`` in any process sharing the data directory, or None.

        Returns:
            A :class:`zoomearth.threadlock.LockHolder` (``pid``, ``host``, ``started``,
            ``command``) while a run holds the thread's lock; None otherwise. A record whose
            status is ``running`` and for which this is None was stopped or killed (resumable).
        """
        from zoomearth.threadlock import running_holder

        return running_holder(self.lock_dir, thread)

    def _check_finished(self, thread: str) -> None:
        """Refuse a new question while the thread's last run is unfinished (it would be lost)."""
        snapshot = self.graph.get_state({"configurable": {"thread_id": thread}})
        if not _unfinished(snapshot):
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
            ThreadBusyError: Another run of ``thread`` is going (it names its process).
            ThreadError: Unknown or finished thread, or an approval is pending and ``approve``
                is None (say approve or deny explicitly).
        """
        t0 = time.perf_counter()
        self.current_thread = thread
        with self.thread_lock(thread):
            return self._resume(thread, approve, t0)

    def _resume(self, thread: str, approve: bool | None, t0: float) -> AskResult:
        """:meth:`resume` with the thread's lock held."""
        from langgraph.types import Command

        snapshot = self.graph.get_state({"configurable": {"thread_id": thread}})
        if not snapshot or not snapshot.values:
            raise ThreadError(
                NO_THREAD_TEMPLATE.format(
                    thread=thread, db=self.settings.checkpoint_db, runs=self.settings.runs_dir
                )
            )
        if not _unfinished(snapshot):
            raise ThreadError(NOTHING_TO_RESUME_TEMPLATE.format(thread=thread))
        config = self._config(thread, snapshot.values.get("run_dir"))
        self._sweep_run_dir(config)
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
            self._drive_until_cancelled(command, config)
        else:
            # A crashed or cancelled run: continue from the last checkpoint.
            self._drive_until_cancelled(None, config)
        return self.result(thread, seconds=time.perf_counter() - t0)

    def stream_events(self, payload: Any, config: RunnableConfig) -> Iterator[dict[str, Any]]:
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

    def _drive_until_cancelled(self, payload: Any, config: RunnableConfig) -> None:
        """Drive the graph; a tool stopped by a cancellation request ends the run, resumable.

        The cancelled call's task error stays in the checkpoint, so the record shows the call as
        ``cancelled`` and the run as ``cancelled``; :meth:`resume` runs the call again.
        """
        from zoomearth.tools.base import ToolCancelled

        try:
            self._drive(payload, config)
        except ToolCancelled:
            return

    def _drive(self, payload: Any, config: RunnableConfig) -> None:
        from zoomearth.graphs.tool_node import cancel_thread, clear_cancel

        thread = config["configurable"]["thread_id"]
        clear_cancel(thread)  # an old request must not stop this run
        with _cancel_on_signals(lambda: cancel_thread(thread)):
            for event in self.stream_events(payload, config):
                if self.on_event is not None:
                    self.on_event(event)

    def _sweep_run_dir(self, config: RunnableConfig) -> None:
        """Remove the partial files a killed run left in this thread's run folder.

        Called with the thread's lock held, when a run starts or resumes: no live run of the
        thread can own them, and temporaries of other live processes (owner alive) are kept
        (:func:`zoomearth.temporaries.sweep_stale_temporaries`). One folder, not ``runs_dir``.
        """
        from zoomearth.temporaries import sweep_stale_temporaries

        run_dir = Path(config["configurable"]["run_dir"])
        swept = sweep_stale_temporaries(run_dir)
        if swept.files:
            text = SWEPT_RUN_DIR_TEMPLATE.format(
                files=swept.files, size=swept.bytes, run_dir=run_dir
            )
            log.info(text)
            if self.on_event is not None:
                self.on_event({"event": "note", "text": text})

    def resumable(self, thread: str) -> bool:
        """Whether ``thread`` has a saved, unfinished run that :meth:`resume` continues."""
        snapshot = self.graph.get_state({"configurable": {"thread_id": thread}})
        return bool(snapshot and snapshot.values and _unfinished(snapshot))

    # ------------------------------------------------------------------------------------------
    def result(self, thread: str, seconds: float = 0.0) -> AskResult:
        """The record of a thread's latest run, from its checkpoint."""
        snapshot = self.graph.get_state({"configurable": {"thread_id": thread}})
        return ask_result(snapshot, thread, seconds, lambda: self.runtime.run_dir(thread))

    def close(self) -> None:
        """Release scenes, the planner's resources and the checkpointer's connection."""
        self.runtime.close()
        self.planner.close()
        conn = getattr(self.checkpointer, "conn", None)
        if self._owns_checkpointer and conn is not None:
            conn.close()


# ----------------------------------------------------------------------------------------------
def _unfinished(snapshot: Any) -> bool:
    """Whether a thread's saved state has a step still to run or to commit.

    ``next`` lists the tasks of the pending step that have not finished; a task that finished in
    a worker thread while the process was stopped (Ctrl-C, SIGTERM, SIGKILL) has its writes saved
    but the step not committed -- it is then only in ``tasks``, and resuming commits it.
    """
    return bool(snapshot.next or snapshot.tasks)


@contextlib.contextmanager
def _cancel_on_signals(cancel: Callable[[], None]) -> Iterator[None]:
    """While the block runs in the main thread, SIGINT and SIGTERM call ``cancel`` first.

    LangGraph runs tool nodes in worker threads and, when the main thread is interrupted, waits
    for them before the exception leaves ``stream``: without this, a tool would write on to the
    end (minutes) after Ctrl-C or SIGTERM. ``cancel`` asks it to stop at its next check; then the
    handler that was installed before runs (raising ``KeyboardInterrupt``, or the CLI's
    ``Terminated``). Elsewhere (server worker threads) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        cancel()
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_IGN:
            return
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:  # the default action (terminate), as if this handler had not been there
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for number, before in previous.items():
            # A handler that changed itself meanwhile (the CLI ignores a second SIGTERM) stays.
            if signal.getsignal(number) is handler:
                signal.signal(number, before if before is not None else signal.SIG_DFL)


