"""The model pool: every model (planner and tools) is obtained here, so one GPU can be shared.

What the pool does, per device (``"cuda:0"``, ``"cpu"``, or any name with an explicit budget):

- **Lazy loading.** A :class:`ModelSpec` says how to load a model; nothing is loaded until the first
  :meth:`ModelPool.use` / :meth:`ModelPool.run`. Later uses are hits on the resident object.
- **A memory budget.** Resident bytes on a device never exceed its budget (default: a fraction of
  the free device memory, or of the available RAM for ``"cpu"``). Before a load, least-recently-used
  models that are not in use are evicted until the new model fits.
- **Eviction = offload or free.** A model evicted from an accelerator is moved to the offload device
  (CPU RAM, which has its own budget) when moving it back is estimated to be cheaper than loading
  it again; otherwise it is freed. On the CPU, eviction frees (the loader reloads it).
- **A device gate.** At most ``concurrency`` threads use models on one device at a time, so heavy
  kernels (and loads, whose transient memory is not in any budget) do not collide. The gate is
  re-entrant per thread: nested ``use`` of two models on one device does not deadlock.
- **Out-of-memory policy** (:meth:`ModelPool.run`): evict the other models on the device, retry
  once, retry on the CPU, then raise :class:`~zoomearth.errors.ModelFallbackRequired` so the caller
  uses its classical backend. Every fallback is recorded as a :class:`PoolWarning` for the user.

The pool is thread-safe. Async server code calls :meth:`ModelPool.arun`, which runs the blocking
work in a worker thread (``asyncio.to_thread``), so the event loop never waits on a load or kernel.

Importing this module does not import torch: torch is looked up in ``sys.modules`` (if it is not
imported, no torch object can exist yet) or imported inside the functions that need it.

Its parts live beside it: :mod:`~zoomearth.models.spec` (:class:`ModelSpec`),
:mod:`~zoomearth.models.budgets` (device names, budgets, gates), :mod:`~zoomearth.models.fallbacks`
(:class:`PoolWarning`, the warning log), :mod:`~zoomearth.models.memory` (byte sizes,
out-of-memory errors), :mod:`~zoomearth.models.devices` (CUDA devices without torch),
:mod:`~zoomearth.models.stats` (snapshots, tables), :mod:`~zoomearth.models.defaults` (the
process-wide pool). This module holds the models' state machine, :class:`ModelPool`; every name
it exported before the split still imports from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from zoomearth.errors import ModelFallbackRequired, ModelPoolError, ModelTooLargeError
from zoomearth.models.budgets import (
    BUDGET_HINT,
    HELD_BY_CALLER_TEMPLATE,
    NO_BUDGET_TEMPLATE,  # noqa: F401 - re-exported (the old home of the template)
    TOO_LARGE_TEMPLATE,
    WAIT_TIMEOUT_TEMPLATE,
    DeviceBudgets,
    _DeviceGate,
)
from zoomearth.models.defaults import get_default_pool, pool_from_settings, set_default_pool
from zoomearth.models.devices import CudaDevice, _is_cuda, visible_cuda_devices
from zoomearth.models.fallbacks import (
    CLASSICAL_FALLBACK_TEMPLATE,
    CPU_FALLBACK_TEMPLATE,
    FALLBACK_REQUIRED_TEMPLATE,
    FallbackWarnings,
    PoolWarning,
)
from zoomearth.models.memory import (
    _short_error,
    available_ram_bytes,
    format_bytes,
    is_out_of_memory,
    measure_bytes,
    parse_bytes,
)
from zoomearth.models.spec import ModelSpec, default_move
from zoomearth.models.stats import (
    DeviceStats,
    ModelState,
    ModelStats,
    PoolStats,
    format_stats,
)

__all__ = [
    "DeviceStats",
    "ModelPool",
    "ModelSpec",
    "ModelStats",
    "PoolStats",
    "PoolWarning",
    "available_ram_bytes",
    "CudaDevice",
    "default_move",
    "format_bytes",
    "format_stats",
    "get_default_pool",
    "is_out_of_memory",
    "measure_bytes",
    "parse_bytes",
    "pool_from_settings",
    "set_default_pool",
    "visible_cuda_devices",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_DEFAULT_TRANSFER_BYTES_PER_S = 10e9  # a PCIe 4 x16 link in practice; configurable per pool
_DEFAULT_WAIT_TIMEOUT_S = 600.0


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Entry:
    """Book-keeping of one (key, home device); guarded by the pool's lock."""

    spec: ModelSpec
    device: str
    state: ModelState = "unloaded"
    model: Any = None
    nbytes: int = 0
    location: str | None = None
    known_bytes: int | None = None
    pins: dict[int, int] = field(default_factory=dict)
    loader: int | None = None
    hits: int = 0
    loads: int = 0
    restores: int = 0
    offloads: int = 0
    frees: int = 0
    load_seconds: float = 0.0
    last_load_seconds: float = 0.0
    transfer_seconds: float = 0.0
    compute_seconds: float = 0.0
    last_tick: int = 0
    last_used: float | None = None

    @property
    def pinned(self) -> int:
        return sum(self.pins.values())


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------


class ModelPool(DeviceBudgets, FallbackWarnings):
    """Shares device memory between models: lazy loads, budgets, LRU eviction, OOM fallbacks.

    Device names, budgets and gates come from :class:`~zoomearth.models.budgets.DeviceBudgets`,
    the fallback-warning log from :class:`~zoomearth.models.fallbacks.FallbackWarnings`.

    Example:
        >>> pool = ModelPool(budgets={"cpu": 2**30})
        >>> spec = ModelSpec("double", load=lambda device: (lambda x: 2 * x), size_bytes=1)
        >>> with pool.use(spec, "cpu") as model:
        ...     model(21)
        42

    Args:
        budgets: Memory budget in bytes per device, e.g. ``{"cuda:0": 20 * 2**30}``. A key
            without an index (``"cuda"``) applies to every device of that type. Devices without
            an entry get ``budget_fraction`` of their free memory when first used.
        concurrency: How many threads may use models on one device at once: one number for all
            devices, or a mapping per device (missing devices get 1).
        budget_fraction: Share of the free memory (accelerators) or available RAM (``"cpu"``)
            used as the default budget; the rest is left for activations and other programs.
        offload_device: Where evicted accelerator models are parked (``None``: always free).
        transfer_bytes_per_s: Assumed bandwidth between an accelerator and the offload device,
            to estimate whether offloading beats reloading.
        default_device: What ``"auto"`` means (default: the current CUDA device if torch sees
            one, else ``"cpu"``).
        wait_timeout: Seconds a use waits for a free device slot or for other threads to
            release memory before failing (``None``: wait forever).
        max_warnings: How many warnings :attr:`warnings` keeps (oldest dropped first).
    """

    def __init__(
        self,
        budgets: Mapping[str, int] | None = None,
        concurrency: int | Mapping[str, int] = 1,
        budget_fraction: float = 0.8,
        *,
        offload_device: str | None = "cpu",
        transfer_bytes_per_s: float = _DEFAULT_TRANSFER_BYTES_PER_S,
        default_device: str | None = None,
        wait_timeout: float | None = _DEFAULT_WAIT_TIMEOUT_S,
        max_warnings: int = 1000,
    ) -> None:
        if not 0.0 < budget_fraction <= 1.0:
            raise ValueError(f"budget_fraction must be in (0, 1], got {budget_fraction}")
        if transfer_bytes_per_s <= 0:
            raise ValueError(f"transfer_bytes_per_s must be > 0, got {transfer_bytes_per_s}")
        counts = concurrency.values() if isinstance(concurrency, Mapping) else [concurrency]
        if any(int(c) < 1 for c in counts):
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._budget_config = {self._normalise(k): int(v) for k, v in (budgets or {}).items()}
        if any(v < 0 for v in self._budget_config.values()):
            raise ValueError(f"budgets must be >= 0 bytes, got {budgets}")
        self._concurrency = concurrency
        self.budget_fraction = budget_fraction
        self.offload_device = self._normalise(offload_device) if offload_device else None
        self.transfer_bytes_per_s = float(transfer_bytes_per_s)
        self._default_device = self._normalise(default_device) if default_device else None
        self.wait_timeout = wait_timeout

        # One lock guards all book-keeping; loads and restores run outside it (they are slow) while
        # their entry is in state "loading", which makes other users of that key wait for them.
        self._cond = threading.Condition(threading.RLock())
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._budgets: dict[str, int] = {}
        self._peaks: dict[str, int] = {}
        self._gates: dict[str, _DeviceGate] = {}
        self._tick = 0
        self._warnings: deque[PoolWarning] = deque(maxlen=max_warnings)
        self._counters = dict.fromkeys(
            ("hits", "misses", "restores", "evictions", "offloads", "frees", "ooms", "fallbacks"),
            0,
        )
        self._seconds = dict.fromkeys(("load", "transfer", "compute"), 0.0)

    # ---- accounting (device names and budgets: DeviceBudgets) -------------------------------

    def _used(self, device: str, exclude: _Entry | None = None) -> int:
        return sum(
            e.nbytes for e in self._entries.values() if e.location == device and e is not exclude
        )

    def resident_bytes(self, device: str) -> int:
        """Bytes accounted on ``device`` now (resident, offloaded-to and loading models)."""
        device = self.resolve_device(device)
        with self._cond:
            return self._used(device)

    def _note_peak(self, device: str) -> None:
        used = self._used(device)
        if used > self._peaks.get(device, 0):
            self._peaks[device] = used

    def _touch(self, entry: _Entry) -> None:
        self._tick += 1
        entry.last_tick = self._tick
        entry.last_used = time.time()

    # ---- public use ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def use(self, spec: ModelSpec, device: str = "auto") -> Iterator[Any]:
        """Use a model: load it if needed, hold it (never evicted) and a device slot meanwhile.

        Do not keep references to the model after the block: the pool may free or move it.

        Args:
            spec: The model.
            device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or any device with a budget.

        Yields:
            The loaded model, on ``device``.

        Raises:
            ModelTooLargeError: The model does not fit the device's budget.
            ModelPoolError: Waiting for a device slot or for memory timed out.
        """
        device = self.resolve_device(device)
        gate = self._gate(device)
        if not gate.acquire(self.wait_timeout):
            raise ModelPoolError(
                f"Model '{spec.key}' waited {self.wait_timeout:.0f} s for a free slot on {device} "
                f"({gate.capacity} at a time). Raise the model-pool concurrency or retry later."
            )
        try:
            entry, model = self._acquire(spec, device)
            started = time.perf_counter()
            try:
                yield model
            finally:
                del model  # the pool must hold the only reference once the block ends
                self._release(entry, time.perf_counter() - started)
        finally:
            gate.release()

    def preload(self, spec: ModelSpec, device: str = "auto") -> None:
        """Load ``spec`` now (e.g. at server start) so the first request is a hit."""
        with self.use(spec, device):
            pass

    def run(
        self,
        spec: ModelSpec,
        fn: Callable[[Any, str], T],
        device: str = "auto",
        *,
        fallback_devices: Sequence[str] | None = None,
    ) -> T:
        """Run ``fn(model, device)`` under the out-of-memory policy.

        On out-of-memory (see :func:`is_out_of_memory`): evict every other model on the device
        that is not in use and retry once; then try each fallback device once (by default the
        CPU, when ``spec.cpu_fallback``); then raise :class:`ModelFallbackRequired`. Each fallback
        records a :class:`PoolWarning`. ``fn`` must put its inputs on the ``device`` it is given.

        Args:
            spec: The model.
            fn: Work to do with the model; receives the model and the device it is on.
            device: Preferred device (see :meth:`use`).
            fallback_devices: Devices to try after the preferred one runs out of memory.

        Returns:
            What ``fn`` returns.

        Raises:
            ModelFallbackRequired: Memory ran out everywhere; use the classical backend.
        """
        first = self.resolve_device(device)
        if fallback_devices is None:
            offload = self.offload_device or "cpu"
            fallback_devices = (offload,) if spec.cpu_fallback and first != offload else ()
        fallbacks = [self.resolve_device(d) for d in fallback_devices if d]
        attempts = [(first, False), (first, True)] + [(d, False) for d in fallbacks if d != first]
        tried: list[str] = []
        error = ""
        for index, (attempt_device, evict_first) in enumerate(attempts):
            if index >= 2:  # moving to a fallback device: tell the user why it is slower
                self._warn(
                    spec,
                    first,
                    attempt_device,
                    CPU_FALLBACK_TEMPLATE.format(
                        what=spec.label, device=tried[-1], error=error, fallback=attempt_device
                    ),
                )
            if evict_first:
                freed = self.evict(device=attempt_device, keep=spec.key)
                logger.info(
                    "%s ran out of memory on %s; evicted %d other model(s) and retrying once",
                    spec.key,
                    attempt_device,
                    freed,
                )
            oom = self._attempt(spec, fn, attempt_device)
            if not isinstance(oom, _OOM):
                return oom
            # Only the text is kept: the exception's traceback pins the tensors that filled memory.
            error = oom.text
            if not tried or tried[-1] != attempt_device:
                tried.append(attempt_device)
        devices = " and ".join(tried)
        self._warn(
            spec,
            first,
            "classical",
            CLASSICAL_FALLBACK_TEMPLATE.format(
                what=spec.label, devices=devices, error=error, hint=BUDGET_HINT
            ),
        )
        raise ModelFallbackRequired(
            FALLBACK_REQUIRED_TEMPLATE.format(
                key=spec.key, devices=devices, error=error, hint=BUDGET_HINT
            ),
            key=spec.key,
            devices=tuple(tried),
        )

    def _attempt(self, spec: ModelSpec, fn: Callable[[Any, str], T], device: str) -> T | _OOM:
        try:
            with self.use(spec, device) as model:
                return fn(model, device)
        except BaseException as exc:
            if not is_out_of_memory(exc):
                raise
            with self._cond:
                self._counters["ooms"] += 1
            text = _short_error(exc)
        # Outside the except block, so the traceback (and the tensors its frames hold) is gone
        # before memory is cleared and the caller retries.
        self._empty_cache(device)
        return _OOM(text)

    async def arun(
        self,
        spec: ModelSpec,
        fn: Callable[[Any, str], T],
        device: str = "auto",
        *,
        fallback_devices: Sequence[str] | None = None,
    ) -> T:
        """:meth:`run` for async code: runs in a worker thread so the event loop stays free.

        The worker thread inherits the caller's context, so :meth:`collect_warnings` blocks
        around the ``await`` receive the warnings.
        """
        return await asyncio.to_thread(
            self.run, spec, fn, device, fallback_devices=fallback_devices
        )

    # ---- acquire / release --------------------------------------------------------------------

    def _acquire(self, spec: ModelSpec, device: str) -> tuple[_Entry, Any]:
        me = threading.get_ident()
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        with self._cond:
            while True:
                entry = self._entries.get((spec.key, device))
                if entry is None:
                    entry = self._entries[(spec.key, device)] = _Entry(spec=spec, device=device)
                if entry.state == "resident":
                    entry.hits += 1
                    self._counters["hits"] += 1
                    entry.pins[me] = entry.pins.get(me, 0) + 1
                    self._touch(entry)
                    return entry, entry.model
                if entry.state == "loading":
                    if entry.loader == me:
                        raise ModelPoolError(
                            f"Model '{spec.key}' was requested again while this thread loads it "
                            "(its loader uses the pool for itself)."
                        )
                    self._wait(deadline, spec, device)
                    continue
                restoring = entry.state == "offloaded"
                need = entry.nbytes if restoring else (entry.known_bytes or spec.size_bytes or 0)
                if not self._make_room(device, need, entry, spec, deadline):
                    continue  # waited for other threads: everything may have changed
                entry.state = "loading"
                entry.loader = me
                entry.location = device
                entry.nbytes = need
                self._note_peak(device)
                old_model = entry.model
                break

        started = time.perf_counter()
        try:
            if restoring:
                model = (spec.move or default_move)(old_model, device)
            else:
                model = spec.load(device)
        except BaseException:
            with self._cond:
                # A failed restore leaves the object half-moved: drop it, the next use reloads.
                entry.model = None
                self._reset(entry)
                self._cond.notify_all()
            raise
        finally:
            del old_model
        seconds = time.perf_counter() - started
        measured = self._measure(spec, model)

        with self._cond:
            try:
                if measured is not None and measured > entry.nbytes:
                    # The estimate was low: make room for the real size before accounting it,
                    # so the accounted bytes never pass the budget.
                    while not self._make_room(device, measured, entry, spec, deadline):
                        pass
            except BaseException:
                entry.model = None
                self._reset(entry)
                self._cond.notify_all()
                del model
                self._collect(device)
                raise
            if measured is not None:
                entry.nbytes = measured
            entry.known_bytes = entry.nbytes
            entry.model = model
            entry.state = "resident"
            entry.loader = None
            if restoring:
                entry.restores += 1
                entry.transfer_seconds += seconds
                self._counters["restores"] += 1
                self._seconds["transfer"] += seconds
            else:
                entry.loads += 1
                entry.load_seconds += seconds
                entry.last_load_seconds = seconds
                self._counters["misses"] += 1
                self._seconds["load"] += seconds
            self._note_peak(device)
            entry.pins[me] = entry.pins.get(me, 0) + 1
            self._touch(entry)
            self._cond.notify_all()
            return entry, model

    def _release(self, entry: _Entry, seconds: float) -> None:
        me = threading.get_ident()
        with self._cond:
            count = entry.pins.get(me, 0)
            if count <= 1:
                entry.pins.pop(me, None)
            else:
                entry.pins[me] = count - 1
            entry.compute_seconds += seconds
            self._seconds["compute"] += seconds
            self._touch(entry)
            self._cond.notify_all()  # threads waiting for memory may now evict it

    def _wait(self, deadline: float | None, spec: ModelSpec, device: str) -> None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ModelPoolError(
                WAIT_TIMEOUT_TEMPLATE.format(
                    key=spec.key,
                    timeout=self.wait_timeout or 0.0,
                    held=format_bytes(self._used(device)),
                    device=device,
                    budget=format_bytes(self._budget(device)),
                    hint=BUDGET_HINT,
                )
            )
        self._cond.wait(remaining)

    def _reset(self, entry: _Entry) -> None:
        entry.state = "unloaded"
        entry.location = None
        entry.nbytes = 0
        entry.loader = None

    def _measure(self, spec: ModelSpec, model: Any) -> int | None:
        measured = (spec.measure or measure_bytes)(model)
        if measured is None:
            return spec.size_bytes
        return int(measured)

    # ---- eviction -----------------------------------------------------------------------------

    def _make_room(
        self,
        device: str,
        need: int,
        entry: _Entry,
        spec: ModelSpec,
        deadline: float | None,
    ) -> bool:
        """Evict LRU models until ``need`` more bytes fit on ``device`` (lock held).

        Returns:
            True when room was made; False after waiting for other threads to release models
            (the caller re-examines the state, which may have changed while the lock was free).
        """
        budget = self._budget(device)
        if need > budget:
            raise ModelTooLargeError(
                TOO_LARGE_TEMPLATE.format(
                    key=spec.key,
                    need=format_bytes(need),
                    device=device,
                    budget=format_bytes(budget),
                    hint=BUDGET_HINT,
                )
            )
        while self._used(device, exclude=entry) + need > budget:
            victim = self._lru_victim(device, exclude=entry)
            if victim is not None:
                self._evict(victim)
                continue
            # Everything left is in use or loading. What this thread holds will not be released
            # while it waits here, so if that alone leaves no room, waiting would deadlock.
            me = threading.get_ident()
            held = sum(
                e.nbytes
                for e in self._entries.values()
                if e.location == device and e is not entry and (me in e.pins or e.loader == me)
            )
            if held + need > budget:
                raise ModelTooLargeError(
                    HELD_BY_CALLER_TEMPLATE.format(
                        key=spec.key,
                        need=format_bytes(need),
                        device=device,
                        held=format_bytes(held),
                        budget=format_bytes(budget),
                        hint=BUDGET_HINT,
                    )
                )
            self._wait(deadline, spec, device)
            return False
        return True

    def _try_make_room(self, device: str, need: int) -> bool:
        """Evict unpinned LRU models until ``need`` bytes fit; never waits, never raises."""
        try:
            budget = self._budget(device)
        except ModelPoolError:
            return False
        if need > budget:
            return False
        while self._used(device) + need > budget:
            victim = self._lru_victim(device, exclude=None)
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _lru_victim(self, device: str, exclude: _Entry | None) -> _Entry | None:
        candidates = [
            e
            for e in self._entries.values()
            if e.location == device
            and e is not exclude
            and e.state in ("resident", "offloaded")
            and not e.pins
        ]
        return min(candidates, key=lambda e: e.last_tick, default=None)

    def _should_offload(self, entry: _Entry) -> bool:
        target = self.offload_device
        if target is None or not entry.spec.offloadable or entry.state != "resident":
            return False
        if entry.location == target:
            return False
        if entry.spec.move is None and not callable(getattr(entry.model, "to", None)):
            return False
        # Offload pays a transfer now and one back later; a reload pays the loader again.
        round_trip = 2 * entry.nbytes / self.transfer_bytes_per_s
        return round_trip < entry.last_load_seconds

    def _evict(self, entry: _Entry) -> None:
        """Offload or free ``entry`` (lock held; it is resident or offloaded and not pinned).

        The move runs under the lock so the accounting is exact at every instant (the bytes are
        on one device or the other, never on neither). Evictions happen on the path of a thread
        that holds the device's gate, so users of that device are waiting for it anyway.
        """
        self._counters["evictions"] += 1
        if self._should_offload(entry):
            target = self.offload_device
            assert target is not None  # _should_offload checked it
            if self._try_make_room(target, entry.nbytes):
                started = time.perf_counter()
                try:
                    moved = (entry.spec.move or default_move)(entry.model, target)
                except Exception as exc:  # an offload that fails degrades to a free, not a crash
                    logger.warning(
                        "offloading %s to %s failed (%s); freeing it instead",
                        entry.spec.key,
                        target,
                        _short_error(exc),
                    )
                else:
                    seconds = time.perf_counter() - started
                    entry.model = moved
                    entry.state = "offloaded"
                    entry.location = target
                    entry.offloads += 1
                    entry.transfer_seconds += seconds
                    self._counters["offloads"] += 1
                    self._seconds["transfer"] += seconds
                    self._note_peak(target)
                    self._empty_cache(entry.device)
                    return
        self._free(entry)

    def _free(self, entry: _Entry) -> None:
        location = entry.location or entry.device
        entry.model = None
        self._reset(entry)
        entry.frees += 1
        self._counters["frees"] += 1
        self._collect(location)

    def _collect(self, device: str) -> None:
        # Module graphs often hold reference cycles (hooks, closures), so freeing accelerator
        # memory needs a collection, and the CUDA caching allocator keeps freed blocks until
        # empty_cache. On the CPU, refcounting frees the weights; a full collection per eviction
        # would cost more than it returns.
        if device != "cpu":
            gc.collect()
            self._empty_cache(device)

    @staticmethod
    def _empty_cache(device: str) -> None:
        torch = sys.modules.get("torch")
        if torch is not None and _is_cuda(device) and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def evict(
        self, key: str | None = None, device: str | None = None, *, keep: str | None = None
    ) -> int:
        """Evict models that are not in use (offloading or freeing, as on a load).

        Args:
            key: Only this model (``None``: all).
            device: Only models resident on this device (``None``: all devices).
            keep: Never this model (used by the out-of-memory retry).

        Returns:
            The number of models evicted.
        """
        device = self.resolve_device(device) if device else None
        count = 0
        with self._cond:
            for entry in list(self._entries.values()):
                if (
                    entry.state in ("resident", "offloaded")
                    and not entry.pins
                    and (key is None or entry.spec.key == key)
                    and (device is None or entry.location == device)
                    and entry.spec.key != keep
                ):
                    self._evict(entry)
                    count += 1
            self._cond.notify_all()
        return count

    def clear(self) -> int:
        """Free every model that is not in use (offloaded ones too).

        Returns:
            The number of models freed.
        """
        count = 0
        with self._cond:
            for entry in list(self._entries.values()):
                if entry.state in ("resident", "offloaded") and not entry.pins:
                    self._counters["evictions"] += 1
                    self._free(entry)
                    count += 1
            self._cond.notify_all()
        return count

    # ---- stats --------------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A consistent snapshot of the models, devices and counters."""
        with self._cond:
            entries = sorted(self._entries.values(), key=lambda e: -e.last_tick)
            models = tuple(
                ModelStats(
                    key=e.spec.key,
                    device=e.device,
                    state=e.state,
                    location=e.location,
                    nbytes=e.nbytes,
                    pinned=e.pinned,
                    hits=e.hits,
                    loads=e.loads,
                    restores=e.restores,
                    offloads=e.offloads,
                    frees=e.frees,
                    load_seconds=e.load_seconds,
                    transfer_seconds=e.transfer_seconds,
                    compute_seconds=e.compute_seconds,
                    last_used=e.last_used,
                    description=e.spec.description,
                )
                for e in entries
            )
            names = sorted(set(self._budgets) | set(self._peaks) | set(self._gates))
            devices = tuple(
                DeviceStats(
                    device=name,
                    budget_bytes=self._budgets.get(name, 0),
                    used_bytes=self._used(name),
                    peak_bytes=self._peaks.get(name, 0),
                    concurrency=self._concurrency_of(name),
                    active=self._gates[name].active if name in self._gates else 0,
                )
                for name in names
            )
            return PoolStats(
                models=models,
                devices=devices,
                load_seconds=self._seconds["load"],
                transfer_seconds=self._seconds["transfer"],
                compute_seconds=self._seconds["compute"],
                **self._counters,
            )

    def __repr__(self) -> str:
        with self._cond:
            resident = sum(e.state == "resident" for e in self._entries.values())
            return f"ModelPool(resident={resident}, devices={sorted(self._budgets)})"


@dataclass(frozen=True)
class _OOM:
    """Marker for an attempt that ran out of memory (carries the error text only)."""

    text: str
