"""What the pool tells the user when it falls back: :class:`PoolWarning` and its log.

:meth:`ModelPool.run <zoomearth.models.ModelPool.run>` retries on another device, or gives up so
the caller uses its classical backend, when memory runs out; each fallback is recorded as a
:class:`PoolWarning` (message templates below). :class:`FallbackWarnings` is the pool's base
class that keeps them: a bounded log (:attr:`~FallbackWarnings.warnings`) and per-run buckets
scoped with a context variable (:meth:`~FallbackWarnings.collect_warnings`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from zoomearth.models.spec import ModelSpec

__all__ = ["FallbackWarnings", "PoolWarning"]

# The pool's logger: the warnings were always logged under the pool module's name.
logger = logging.getLogger("zoomearth.models.pool")

CPU_FALLBACK_TEMPLATE = (
    "{what} ran out of memory on {device} ({error}); it ran on {fallback} instead, which is slower."
)
CLASSICAL_FALLBACK_TEMPLATE = (
    "{what} ran out of memory on {devices} ({error}); the classical backend is used instead. "
    "To use the model, {hint}."
)
FALLBACK_REQUIRED_TEMPLATE = (
    "Model '{key}' ran out of memory on {devices} ({error}). Use the classical backend, or {hint}."
)

# Warning buckets of the enclosing ModelPool.collect_warnings() blocks. A context variable, so one
# run's warnings do not leak into another run served concurrently; asyncio.to_thread and
# contextvars.copy_context propagate it into worker threads.
_WARNING_SINKS: contextvars.ContextVar[tuple[list[PoolWarning], ...]] = contextvars.ContextVar(
    "zoomearth_pool_warning_sinks", default=()
)


@dataclass(frozen=True)
class PoolWarning:
    """A fallback the user should know about (shown with the run's answer).

    Attributes:
        key: The model's key.
        device: The device the model was asked for.
        fallback: Where the work went instead: a device name or ``"classical"``.
        message: The human-readable text.
        time: Wall-clock time (``time.time()``) when it was recorded.
    """

    key: str
    device: str
    fallback: str
    message: str
    time: float

    def __str__(self) -> str:
        return self.message


class FallbackWarnings:
    """The fallback warnings of a :class:`~zoomearth.models.ModelPool` (a base class of it).

    ``ModelPool.__init__`` sets the attributes below; the pool's lock (``_cond``) guards them.
    """

    _cond: threading.Condition
    _counters: dict[str, int]
    _warnings: deque[PoolWarning]

    def _warn(self, spec: ModelSpec, device: str, fallback: str, message: str) -> None:
        warning = PoolWarning(
            key=spec.key, device=device, fallback=fallback, message=message, time=time.time()
        )
        with self._cond:
            self._counters["fallbacks"] += 1
            self._warnings.append(warning)
        for bucket in _WARNING_SINKS.get():
            bucket.append(warning)
        logger.warning("%s", message)

    @property
    def warnings(self) -> list[PoolWarning]:
        """Fallback warnings recorded so far (oldest first; bounded by ``max_warnings``)."""
        with self._cond:
            return list(self._warnings)

    def drain_warnings(self) -> list[PoolWarning]:
        """Return the recorded warnings and forget them."""
        with self._cond:
            drained = list(self._warnings)
            self._warnings.clear()
            return drained

    @contextlib.contextmanager
    def collect_warnings(self) -> Iterator[list[PoolWarning]]:
        """Collect the warnings raised by the code inside the block (one run's warnings).

        Scoped with a context variable, so concurrent runs in other threads or tasks do not
        see each other's warnings. Work started in plain ``threading.Thread`` objects does not
        inherit the context; use ``contextvars.copy_context().run`` or ``asyncio.to_thread``.

        Yields:
            A list that receives the warnings as they are recorded.
        """
        bucket: list[PoolWarning] = []
        token = _WARNING_SINKS.set((*_WARNING_SINKS.get(), bucket))
        try:
            yield bucket
        finally:
            _WARNING_SINKS.reset(token)
