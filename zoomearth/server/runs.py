"""Agent runs behind the HTTP server: admission, worker threads, cancellation, timeouts.

The graph is synchronous (LangGraph's sync API with a SQLite or Postgres saver), so every run
executes in its own worker thread. Its progress events travel to the asyncio side through an
:class:`asyncio.Queue` (``loop.call_soon_threadsafe``).

* **Admission** (:class:`RunLimiter`): at most ``max_concurrent_runs`` runs execute at once and at
  most ``max_queued_runs`` wait for a slot; beyond that a request gets 429 at once. A slot is
  released when the worker thread really ends, so the bound holds even for runs that were
  cancelled while inside a long model call.
* **One run per thread**: a second request for a conversation whose run is still going gets 409
  naming the process that runs it.
* **Cancellation** (client disconnect, run timeout): the run's event sink raises
  :class:`RunCancelled` at the next progress event, which unwinds the graph stream, and
  :func:`zoomearth.graphs.tool_node.cancel_thread` stops running tools at their next check.
  Checkpoints are written with ``durability="sync"``, so the thread stays resumable. A timeout's
  408 says where the run was and, from the tool's progress rate, how long it would have needed.
* **Shutdown** (:meth:`RunManager.shutdown`, on SIGTERM/SIGINT): every running and queued run
  ends with a 503 ``server_shutdown`` error (streams: an error event, then ``[DONE]``), the
  workers are cancelled, and :meth:`RunManager.join_workers` waits for them to unwind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from zoomearth.server.errors import ApiError

__all__ = [
    "ActiveRun",
    "busy_message",
    "ProgressTracker",
    "RunCancelled",
    "RunLimiter",
    "RunManager",
    "ServerShuttingDown",
    "Ticket",
    "shutdown_error",
    "timeout_message",
]

log = logging.getLogger("zoomearth.server")

BUSY_TEMPLATE = (
    "The server is busy: {running} run(s) executing and {queued} waiting (settings "
    "max_concurrent_runs={max_running}, max_queued_runs={max_queued}). Retry later."
)
THREAD_BUSY_TEMPLATE = (
    "Conversation {thread!r} already has a run in progress (in this server, process {pid}); wait "
    "for it to finish (or cancel it by closing that request) before sending the next message."
)
THREAD_BUSY_ELSEWHERE_TEMPLATE = (
    "Conversation {thread!r} already has a run in progress ({where}); wait for it to finish "
    "before sending the next message."
)
TIMEOUT_HEAD_TEMPLATE = (
    "The run took longer than {limit:g} s (setting run_timeout_s) and was cancelled"
)
TIMEOUT_AT_TEMPLATE = (
    " while {label} was at {unit} {done} of {total} ({needed}). Its checkpoint is kept{reuse}: "
    "sending the same message again continues it; or raise run_timeout_s."
)
TIMEOUT_NO_PROGRESS_TEMPLATE = (
    "; {what}, so how long it would need is unknown. Its checkpoint is kept: sending the same "
    "message again continues it; or raise run_timeout_s."
)
SHUTDOWN_MESSAGE = (
    "The server is shutting down; the conversation's checkpoint is kept, so sending the same "
    "message again (to this or another server) continues it."
)
KEEPALIVE_S = 10.0
INTERNAL_RUN_TEMPLATE = "The run failed with an internal error (request id {request_id})."


class RunCancelled(Exception):
    """Raised inside a worker thread to stop a run (disconnect or timeout)."""


class ServerShuttingDown(Exception):
    """Set on the slot future of a queued run when the server shuts down."""


def shutdown_error() -> ApiError:
    """The 503 every open request gets when the server shuts down (SIGTERM, Ctrl-C)."""
    return ApiError(503, SHUTDOWN_MESSAGE, type="server_error", code="server_shutdown",
                    headers={"Retry-After": "5"})


@dataclass
class _Step:
    """The unit of work in progress: a tool (``progress`` events) or a scene preparation."""

    label: str  # "`denoise`", or "the preparation of scene.tif"
    unit: str  # what ``done`` counts: "tile" for tools, "step" for a preparation
    started: float  # time.monotonic() when it started (its tool_start, else its first event)
    done: int = 0
    total: int = 0


class ProgressTracker:
    """Follows a run's progress events to tell, at a timeout, where the run was and how fast.

    Fed every event dict of the run (:meth:`observe`); only ``tool_start``, ``progress``
    (``{"tool", "done", "total"}``), ``tool`` (a tool's result) and ``prepare``
    (``{"scene", "done", "total"}``) matter. Times are ``time.monotonic()`` seconds.
    """

    def __init__(self) -> None:
        self.step: _Step | None = None
        self.finished_tools = 0

    def observe(self, event: dict[str, Any], now: float) -> None:
        """Update from one event received at ``now``."""
        kind = event.get("event")
        if kind == "tool_start":
            self.step = _Step(f"`{event.get('tool')}`", "tile", now)
        elif kind == "progress":
            label = f"`{event.get('tool')}`"
            if self.step is None or self.step.label != label:
                self.step = _Step(label, "tile", now)
            self.step.done = int(event.get("done") or 0)
            self.step.total = int(event.get("total") or 0)
        elif kind == "prepare":
            label = f"the preparation of {os.path.basename(str(event.get('scene') or 'the scene'))}"
            if self.step is None or self.step.label != label:
                self.step = _Step(label, "step", now)
            self.step.done = int(event.get("done") or 0)
            self.step.total = int(event.get("total") or 0)
        elif kind == "tool":
            self.step = None
            self.finished_tools += 1


def _about(seconds: float) -> str:
    """A duration rounded to two significant digits (``2133.4`` -> ``2100``)."""
    if seconds < 10:
        return f"{seconds:.1f}"
    digits = len(str(int(seconds))) - 2
    return str(int(round(seconds, -digits)))


def timeout_message(limit_s: float, tracker: ProgressTracker, now: float) -> str:
    """The 408 message: where the run was and how long that step needs at its rate so far.

    Args:
        limit_s: Setting ``run_timeout_s`` (seconds).
        tracker: The run's progress (see :class:`ProgressTracker`).
        now: ``time.monotonic()`` at the timeout.
    """
    head = TIMEOUT_HEAD_TEMPLATE.format(limit=limit_s)
    step = tracker.step
    if step is None or step.total <= 0:
        if step is not None:
            what = f"{step.label} was running but reported no progress"
        elif tracker.finished_tools:
            what = "its tools had finished and the planner was working (it reports no progress)"
        else:
            what = "no tool progress was reported"
        return head + TIMEOUT_NO_PROGRESS_TEMPLATE.format(what=what)
    elapsed = max(now - step.started, 0.0)
    if step.done > 0:
        needed = f"about {_about(elapsed / step.done * step.total)} s needed at this rate"
    else:
        needed = f"none finished in {_about(elapsed)} s, so the time needed is unknown"
    # Streamed tools keep finished tiles across a stop; a scene preparation starts over.
    reuse = " and finished tiles are reused" if step.unit == "tile" else ""
    return head + TIMEOUT_AT_TEMPLATE.format(label=step.label, unit=step.unit, done=step.done,
                                             total=step.total, needed=needed, reuse=reuse)


@dataclass
class Ticket:
    """An admitted request: it holds a slot once :meth:`RunLimiter.wait` returns."""

    thread_id: str
    future: asyncio.Future[None] | None = None
    holds_slot: bool = False
    released: bool = False
    entered: bool = False


class RunLimiter:
    """Counts executing and waiting runs (used from the event loop only).

    Args:
        max_running: Runs executing at once.
        max_queued: Runs allowed to wait for a slot.
    """

    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        """Runs waiting for a slot."""
        return sum(1 for f in self._waiters if not f.done())

    def admit(self, thread_id: str) -> Ticket:
        """Take a slot now or a place in the queue.

        Raises:
            ApiError: 429 when the queue is full.
        """
        if self.running < self.max_running and not self.queued:
            self.running += 1
            return Ticket(thread_id, holds_slot=True)
        if self.queued >= self.max_queued:
            raise ApiError(
                429,
                BUSY_TEMPLATE.format(running=self.running, queued=self.queued,
                                     max_running=self.max_running, max_queued=self.max_queued),
                type="rate_limit_error", code="server_busy", headers={"Retry-After": "5"},
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return Ticket(thread_id, future=fut)

    async def wait(self, ticket: Ticket) -> None:
        """Wait until the ticket holds a slot (returns at once if it already does)."""
        if ticket.holds_slot or ticket.future is None:
            return
        try:
            await ticket.future
        except asyncio.CancelledError:
            if ticket.future.done() and not ticket.future.cancelled():
                ticket.holds_slot = True  # the slot arrived as we were cancelled: pass it on
                self.release(ticket)
            else:
                ticket.future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(ticket.future)
            raise
        ticket.holds_slot = True

    def release(self, ticket: Ticket) -> None:
        """Give a ticket's slot to the next waiter (or free it); idempotent."""
        if ticket.released:
            return
        ticket.released = True
        if not ticket.holds_slot:
            if ticket.future is not None and not ticket.future.done():
                ticket.future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(ticket.future)
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1


@dataclass(eq=False)
class ActiveRun:
    """One run executing in a worker thread."""

    thread_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = ""

    def put(self, kind: str, value: Any) -> None:
        """Hand an item to the event loop (from any thread; dropped once the loop is closed)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def sink(self, event: dict[str, Any]) -> None:
        """Event callback inside the worker: forward, or stop the run once cancelled."""
        if self.cancelled.is_set():
            raise RunCancelled(self.reason or "cancelled")
        self.put("event", event)

    def cancel(self, reason: str) -> None:
        """Stop the run at its next event, and its tools at their next check."""
        from zoomearth.graphs.tool_node import cancel_thread

        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()
            cancel_thread(self.thread_id)


class RunManager:
    """Admission, per-thread exclusivity and the worker threads of one server process.

    Args:
        max_running: Setting ``max_concurrent_runs``.
        max_queued: Setting ``max_queued_runs``.
        timeout_s: Setting ``run_timeout_s``.
    """

    def __init__(self, max_running: int, max_queued: int, timeout_s: float) -> None:
        self.limiter = RunLimiter(max_running, max_queued)
        self.timeout_s = timeout_s
        self._busy: set[str] = set()
        self._local = threading.local()
        self._active: set[ActiveRun] = set()
        self._workers: set[threading.Thread] = set()
        self.shutting_down = False
        self.started = 0
        self.finished = 0

    # Agent(on_event=manager.dispatch): events go to the sink of the calling worker thread.
    def dispatch(self, event: dict[str, Any]) -> None:
        """Route a progress event to the run executing in the current thread."""
        sink = getattr(self._local, "sink", None)
        if sink is not None:
            sink(event)

    def admit(self, thread_id: str) -> Ticket:
        """Admit a run for a thread.

        Raises:
            ApiError: 409 if that thread is busy in this process, 429 if the server is full,
                503 once it shuts down.
        """
        if self.shutting_down:
            raise shutdown_error()
        if thread_id in self._busy:
            raise ApiError(409, THREAD_BUSY_TEMPLATE.format(thread=thread_id, pid=os.getpid()),
                           code="conversation_busy")
        ticket = self.limiter.admit(thread_id)
        self._busy.add(thread_id)
        return ticket

    def is_busy(self, thread_id: str) -> bool:
        """Whether this process has an admitted run of ``thread_id``."""
        return thread_id in self._busy

    def shutdown(self) -> None:
        """End every running and queued run with a 503 ``server_shutdown`` (event loop only).

        Running runs are cancelled (their streams get the error at once, their workers stop at
        the next progress event or cancellation check); queued ones leave the queue. Later
        :meth:`admit` calls answer 503 too. Idempotent.
        """
        self.shutting_down = True
        for run in list(self._active):
            run.put("shutdown", None)
            run.cancel("server shutdown")
        for fut in list(self.limiter._waiters):
            if not fut.done():
                fut.set_exception(ServerShuttingDown())

    def join_workers(self, timeout_s: float) -> int:
        """Wait (blocking) up to ``timeout_s`` in all for the worker threads; how many remain."""
        deadline = time.monotonic() + timeout_s
        for worker in list(self._workers):
            worker.join(max(0.0, deadline - time.monotonic()))
        return sum(1 for w in self._workers if w.is_alive())

    def abandon(self, ticket: Ticket) -> None:
        """Give back an admitted ticket whose run never started."""
        self._busy.discard(ticket.thread_id)
        self.limiter.release(ticket)

    async def run(
        self,
        ticket: Ticket,
        fn: Callable[[], Any],
        *,
        request_id: str = "-",
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[tuple[str, Any]]:
        """Wait for a slot, run ``fn`` in a worker thread and yield what it reports.

        Yields ``("queued", position)`` while waiting, ``("event", dict)`` for each progress
        event, ``("tick", None)`` after 10 s without one (SSE keep-alive), then one of
        ``("result", value)`` or ``("error", ApiError)``. Closing the iterator early (a
        disconnected streaming client) cancels the run.

        Args:
            ticket: From :meth:`admit`.
            fn: The blocking run (``Agent.ask`` / ``Agent.resume`` closure).
            request_id: For logs and internal-error messages.
            disconnected: Polled about twice a second (non-streaming requests); True cancels.
        """
        ticket.entered = True
        loop = asyncio.get_running_loop()
        run = ActiveRun(ticket.thread_id, loop)
        tracker = ProgressTracker()
        started = False
        ended = False
        try:
            if not ticket.holds_slot:
                yield ("queued", self.limiter.queued)
                try:
                    await self.limiter.wait(ticket)
                except ServerShuttingDown:
                    yield ("error", shutdown_error())
                    return
            if self.shutting_down:
                yield ("error", shutdown_error())
                return
            started = True
            self.started += 1
            worker = threading.Thread(
                target=self._body, args=(run, ticket, fn, request_id),
                name=f"zoomearth-run-{ticket.thread_id[:24]}", daemon=True,
            )
            self._active.add(run)
            self._workers.add(worker)
            worker.start()
            deadline = time.monotonic() + self.timeout_s
            last_sent = time.monotonic()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    run.cancel("timeout")
                    message = timeout_message(self.timeout_s, tracker, time.monotonic())
                    log.warning("run timed out: %s", message,
                                extra={"request_id": request_id, "thread_id": ticket.thread_id})
                    yield ("error", ApiError(408, message, type="timeout_error",
                                             code="run_timeout"))
                    return
                try:
                    kind, value = await asyncio.wait_for(run.queue.get(), min(remaining, 0.5))
                except TimeoutError:
                    if disconnected is not None and await disconnected():
                        run.cancel("client disconnected")
                        log.info("client disconnected; run cancelled",
                                 extra={"request_id": request_id, "thread_id": ticket.thread_id})
                        return
                    if time.monotonic() - last_sent > KEEPALIVE_S:
                        last_sent = time.monotonic()
                        yield ("tick", None)
                    continue
                last_sent = time.monotonic()
                if kind == "shutdown":
                    log.info("run stopped: server shutdown",
                             extra={"request_id": request_id, "thread_id": ticket.thread_id})
                    yield ("error", shutdown_error())
                    return
                if kind == "event" and isinstance(value, dict):
                    tracker.observe(value, last_sent)
                if kind == "done":
                    ended = True
                    return
                if kind in ("result", "error"):
                    ended = True
                yield (kind, value)
                if ended:
                    return
        finally:
            self._active.discard(run)
            if not started:
                self.abandon(ticket)
            elif not ended:
                # The worker releases the slot when it ends; stop it since we leave early.
                run.cancel("client disconnected")

    def _body(self, run: ActiveRun, ticket: Ticket, fn: Callable[[], Any],
              request_id: str) -> None:
        from zoomearth.errors import ZoomEarthError
        from zoomearth.graphs.tool_node import clear_cancel

        self._local.sink = run.sink
        clear_cancel(ticket.thread_id)
        try:
            run.put("result", fn())
        except RunCancelled as exc:
            log.info("run stopped: %s", exc, extra={"request_id": request_id,
                                                    "thread_id": ticket.thread_id})
        except ApiError as exc:
            run.put("error", exc)
        except ZoomEarthError as exc:
            if run.cancelled.is_set():
                log.info("run stopped: %s", exc, extra={"request_id": request_id})
            else:
                run.put("error", _map_error(exc))
        except Exception:  # noqa: BLE001 - a bug: logged with its traceback, never sent
            log.exception("run failed", extra={"request_id": request_id,
                                               "thread_id": ticket.thread_id})
            run.put("error", ApiError(500, INTERNAL_RUN_TEMPLATE.format(request_id=request_id),
                                      type="server_error", code="internal_error"))
        finally:
            self._local.sink = None
            self.finished += 1
            run.put("done", None)
            with contextlib.suppress(RuntimeError):
                run.loop.call_soon_threadsafe(self._finish, ticket)
            self._workers.discard(threading.current_thread())

    def _finish(self, ticket: Ticket) -> None:
        self._busy.discard(ticket.thread_id)
        self.limiter.release(ticket)


def busy_message(thread: str, holder: Any, where: str = "") -> str:
    """The 409 text for a thread whose lock another run holds (its PID when known).

    Args:
        thread: The thread id.
        holder: A :class:`zoomearth.threadlock.LockHolder` (``pid``, ``host``, ``started``), or
            None when the holder is unknown (e.g. a worker on another host).
        where: A description used when ``holder`` is None.
    """
    if holder is None or not getattr(holder, "pid", 0):
        return THREAD_BUSY_ELSEWHERE_TEMPLATE.format(
            thread=thread, where=where or "in another process")
    if holder.pid == os.getpid():
        return THREAD_BUSY_TEMPLATE.format(thread=thread, pid=holder.pid)
    # The holder's command line stays out of the message: it may name files of another user.
    import socket

    host = "" if holder.host in ("", socket.gethostname()) else f" on host {holder.host}"
    started = f", started {holder.started}" if holder.started and holder.started != "?" else ""
    return THREAD_BUSY_ELSEWHERE_TEMPLATE.format(
        thread=thread, where=f"process {holder.pid}{host}{started}")


def _map_error(exc: Exception) -> ApiError:
    """HTTP status of a deliberate zoomearth error raised inside a run."""
    import zoomearth.errors as errors
    from zoomearth.agent.base import PlannerError
    from zoomearth.api import ThreadBusyError

    text = " ".join(str(exc).split())[:1000]
    if isinstance(exc, ThreadBusyError):
        # Another process or worker is running this thread: a conflict, not a bad request.
        where = "another server worker or process" if exc.holder is None else ""
        return ApiError(409, busy_message(exc.thread, exc.holder, where), code="thread_busy")
    if isinstance(exc, errors.ScenePrepareBudgetError):
        # Above the work budget (max_prepare_pixels); raised before any work was done.
        return ApiError(413, text, code="prepare_budget_exceeded")
    if isinstance(exc, errors.ScenePrepareError) and not isinstance(
            exc, errors.ScenePrepareCancelled):
        # The prepared copy could not be written (disk full, the worker process died): the
        # server's fault, not the request's.
        return ApiError(500, text, type="server_error", code="prepare_failed")
    if isinstance(exc, PlannerError):
        return ApiError(502, f"The planner failed: {text}", type="server_error",
                        code="planner_error")
    if isinstance(exc, errors.SceneError | ValueError | PermissionError | FileNotFoundError):
        return ApiError(400, text, code="run_error")
    return ApiError(500, text, type="server_error", code="run_error")
