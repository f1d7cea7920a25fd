"""Agent runs behind the HTTP server: admission, worker threads, cancellation, timeouts.

The graph is synchronous (LangGraph's sync API with a SQLite or Postgres saver), so every run
executes in its own worker thread. Its progress events travel to the asyncio side through an
:class:`asyncio.Queue` (``loop.call_soon_threadsafe``).

* **Admission** (:class:`RunLimiter`): at most ``max_concurrent_runs`` runs execute at once and at
  most ``max_queued_runs`` wait for a slot; beyond that a request gets 429 at once. A slot is
  released when the worker thread really ends, so the bound holds even for runs that were
  cancelled while inside a long model call.
* **One run per thread**: a second request for a conversation whose run is still going gets 409.
* **Cancellation** (client disconnect, run timeout): the run's event sink raises
  :class:`RunCancelled` at the next progress event, which unwinds the graph stream, and
  :func:`zoomearth.graphs.tool_node.cancel_thread` stops running tools at their next check.
  Checkpoints are written with ``durability="sync"``, so the thread stays resumable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from zoomearth.server.errors import ApiError

__all__ = ["ActiveRun", "RunCancelled", "RunLimiter", "RunManager", "Ticket"]

log = logging.getLogger("zoomearth.server")

BUSY_TEMPLATE = (
    "The server is busy: {running} run(s) executing and {queued} waiting (settings "
    "max_concurrent_runs={max_running}, max_queued_runs={max_queued}). Retry later."
)
THREAD_BUSY_TEMPLATE = (
    "Conversation {thread!r} already has a run in progress; wait for it to finish (or cancel it "
    "by closing that request) before sending the next message."
)
TIMEOUT_TEMPLATE = (
    "The run took longer than {limit:g} s (setting run_timeout_s) and was cancelled; its "
    "checkpoint is kept, so sending the same message again continues it."
)
KEEPALIVE_S = 10.0
INTERNAL_RUN_TEMPLATE = "The run failed with an internal error (request id {request_id})."


class RunCancelled(Exception):
    """Raised inside a worker thread to stop a run (disconnect or timeout)."""


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


@dataclass
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
        self.started = 0
        self.finished = 0

    # Agent(on_event=manager.dispatch): events go to the sink of the calling worker thread.
    def dispatch(self, event: dict[str, Any]) -> None:
        """Route a progress event to the run executing in the current thread."""
        sink = getattr(self._local, "sink", None)
        if sink is not None:
            sink(event)

    def admit(self, thread_id: str) -> Ticket:
        """Admit a run for a thread (409 if that thread is busy, 429 if the server is full)."""
        if thread_id in self._busy:
            raise ApiError(409, THREAD_BUSY_TEMPLATE.format(thread=thread_id),
                           code="conversation_busy")
        ticket = self.limiter.admit(thread_id)
        self._busy.add(thread_id)
        return ticket

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
        started = False
        ended = False
        try:
            if not ticket.holds_slot:
                yield ("queued", self.limiter.queued)
                await self.limiter.wait(ticket)
            started = True
            self.started += 1
            worker = threading.Thread(
                target=self._body, args=(run, ticket, fn, request_id),
                name=f"zoomearth-run-{ticket.thread_id[:24]}", daemon=True,
            )
            worker.start()
            deadline = time.monotonic() + self.timeout_s
            last_sent = time.monotonic()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    run.cancel("timeout")
                    log.warning("run timed out", extra={"request_id": request_id,
                                                        "thread_id": ticket.thread_id})
                    yield ("error", ApiError(408, TIMEOUT_TEMPLATE.format(limit=self.timeout_s),
                                             type="timeout_error", code="run_timeout"))
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
                if kind == "done":
                    ended = True
                    return
                if kind in ("result", "error"):
                    ended = True
                yield (kind, value)
                if ended:
                    return
        finally:
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

    def _finish(self, ticket: Ticket) -> None:
        self._busy.discard(ticket.thread_id)
        self.limiter.release(ticket)


def _map_error(exc: Exception) -> ApiError:
    """HTTP status of a deliberate zoomearth error raised inside a run."""
    from zoomearth.agent.base import PlannerError
    from zoomearth.api import ThreadBusyError
    from zoomearth.errors import SceneError

    text = " ".join(str(exc).split())[:1000]
    if isinstance(exc, ThreadBusyError):
        # Another process or worker is running this thread: a conflict, not a bad request.
        return ApiError(409, text, code="thread_busy")
    if isinstance(exc, PlannerError):
        return ApiError(502, f"The planner failed: {text}", type="server_error",
                        code="planner_error")
    if isinstance(exc, SceneError | ValueError | PermissionError | FileNotFoundError):
        return ApiError(400, text, code="run_error")
    return ApiError(500, text, type="server_error", code="run_error")
