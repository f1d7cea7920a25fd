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
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from zoomearth.errors import ModelFallbackRequired, ModelPoolError, ModelTooLargeError

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

ModelState = Literal["unloaded", "loading", "resident", "offloaded"]

#: What to tell the user when memory is short (the setting is wired by ``zoomearth.config``).
BUDGET_HINT = "raise the model-pool budget (setting model_pool_budget) or free memory"

TOO_LARGE_TEMPLATE = (
    "Model '{key}' needs {need} on {device}, but the model-pool budget of {device} is {budget}. "
    "To load it, {hint}."
)
HELD_BY_CALLER_TEMPLATE = (
    "Model '{key}' needs {need} on {device}, but models this thread is still using there hold "
    "{held} of the {budget} budget, so nothing can be evicted to make room. Use the models one "
    "after the other, or {hint}."
)
WAIT_TIMEOUT_TEMPLATE = (
    "Model '{key}' waited {timeout:.0f} s for other threads to release {held} on {device} "
    "(budget {budget}). Lower the model-pool concurrency, or {hint}."
)
NO_BUDGET_TEMPLATE = (
    "The model pool has no memory budget for device '{device}' and cannot measure it. "
    "Pass budgets={{'{device}': <bytes>}} to ModelPool, or use 'cpu' or 'cuda'."
)
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

# Substrings of out-of-memory messages from torch (CUDA, MPS, cuDNN, cuBLAS) and allocators that
# raise plain RuntimeError instead of torch.cuda.OutOfMemoryError.
_OOM_MARKERS = ("out of memory", "cudnn_status_alloc_failed", "cublas_status_alloc_failed")

_DEFAULT_TRANSFER_BYTES_PER_S = 10e9  # a PCIe 4 x16 link in practice; configurable per pool
_DEFAULT_WAIT_TIMEOUT_S = 600.0

# Warning buckets of the enclosing ModelPool.collect_warnings() blocks. A context variable, so one
# run's warnings do not leak into another run served concurrently; asyncio.to_thread and
# contextvars.copy_context propagate it into worker threads.
_WARNING_SINKS: contextvars.ContextVar[tuple[list[PoolWarning], ...]] = contextvars.ContextVar(
    "zoomearth_pool_warning_sinks", default=()
)


# --------------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """How to load, measure and move one model; the pool decides when.

    Attributes:
        key: Unique id of the model, stable across runs, e.g. ``"sam:vit_b:/models/sam_b.pth"``.
            Two specs with the same key are the same model (the first one loaded is reused).
        load: ``load(device) -> model``: builds the model on ``device`` (a normalised device
            string such as ``"cuda:0"`` or ``"cpu"``). Called without any pool lock held.
        size_bytes: Estimate of the model's bytes on the device, used to make room *before* the
            first load. Without it the pool can only make room after loading (the measured size
            is remembered for later loads), so the budget may be briefly exceeded the first time.
        move: ``move(model, device) -> model``: moves the model to another device (offload and
            restore). Default: :func:`default_move` (``model.to(device)``).
        measure: ``measure(model) -> bytes`` after loading. Default: :func:`measure_bytes`
            (parameters and buffers of torch modules); falls back to ``size_bytes``.
        description: Human-readable name used in warnings and in ``zoomearth models``.
        offloadable: Whether eviction may move the model to the offload device instead of
            freeing it (models holding non-movable state, e.g. compiled graphs, set ``False``).
        cpu_fallback: Whether :meth:`ModelPool.run` may retry on the CPU after running out of
            memory on an accelerator.
    """

    key: str
    load: Callable[[str], Any]
    size_bytes: int | None = None
    move: Callable[[Any, str], Any] | None = None
    measure: Callable[[Any], int | None] | None = None
    description: str = ""
    offloadable: bool = True
    cpu_fallback: bool = True

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("ModelSpec.key must be a non-empty string")
        if self.size_bytes is not None and self.size_bytes < 0:
            raise ValueError(f"ModelSpec.size_bytes must be >= 0, got {self.size_bytes}")

    @property
    def label(self) -> str:
        """Name used in user-facing messages: the description, else the key."""
        return self.description or self.key


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


@dataclass(frozen=True)
class ModelStats:
    """One model known to the pool (resident, offloaded, loading, or loaded before and freed).

    Attributes:
        key: The model's key.
        device: Its home device (where it runs).
        state: ``"resident"``, ``"offloaded"``, ``"loading"`` or ``"unloaded"``.
        location: The device holding its bytes now (``None`` when unloaded).
        nbytes: Bytes accounted for it on ``location`` (0 when unloaded).
        pinned: Number of active uses (a pinned model is never evicted).
        hits: Uses that found it resident.
        loads: Uses that had to call the loader (misses).
        restores: Uses that moved it back from the offload device.
        offloads: Evictions that moved it to the offload device.
        frees: Evictions that freed it.
        load_seconds: Total time spent in its loader.
        transfer_seconds: Total time spent moving it (offload and restore).
        compute_seconds: Total time it was in use (pinned).
        last_used: Wall-clock time of its last use, or ``None``.
        description: The spec's description.
    """

    key: str
    device: str
    state: ModelState
    location: str | None
    nbytes: int
    pinned: int
    hits: int
    loads: int
    restores: int
    offloads: int
    frees: int
    load_seconds: float
    transfer_seconds: float
    compute_seconds: float
    last_used: float | None
    description: str


@dataclass(frozen=True)
class DeviceStats:
    """Memory accounting of one device.

    Attributes:
        device: Device name.
        budget_bytes: The budget the pool keeps to.
        used_bytes: Bytes of resident, offloaded and loading models accounted on it now.
        peak_bytes: Highest ``used_bytes`` seen; never above ``budget_bytes``.
        concurrency: How many threads may use models on it at once.
        active: Threads using models on it now.
    """

    device: str
    budget_bytes: int
    used_bytes: int
    peak_bytes: int
    concurrency: int
    active: int


@dataclass(frozen=True)
class PoolStats:
    """A consistent snapshot of the pool, for ``zoomearth models`` and the server.

    Attributes:
        models: Every model the pool knows, most recently used first.
        devices: Every device the pool has used.
        hits: Uses served by a resident model.
        misses: Uses that called a loader.
        restores: Uses served by moving an offloaded model back.
        evictions: Models evicted (offloaded + freed).
        offloads: Evictions that moved a model to the offload device.
        frees: Evictions that freed a model.
        ooms: Out-of-memory errors caught by :meth:`ModelPool.run`.
        fallbacks: Fallbacks taken (to the CPU or to the classical backend).
        load_seconds: Time spent in loaders.
        transfer_seconds: Time spent moving models between devices.
        compute_seconds: Time models were in use.
    """

    models: tuple[ModelStats, ...]
    devices: tuple[DeviceStats, ...]
    hits: int
    misses: int
    restores: int
    evictions: int
    offloads: int
    frees: int
    ooms: int
    fallbacks: int
    load_seconds: float
    transfer_seconds: float
    compute_seconds: float

    def device(self, name: str) -> DeviceStats | None:
        """The stats of device ``name``, or ``None`` if the pool never used it."""
        return next((d for d in self.devices if d.device == name), None)

    def model(self, key: str, device: str | None = None) -> ModelStats | None:
        """The stats of model ``key`` (on ``device`` if given), or ``None``."""
        return next(
            (m for m in self.models if m.key == key and (device is None or m.device == device)),
            None,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for the server's API)."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(value: str | int | float) -> int:
    """Parse a memory size such as ``"8GiB"``, ``"512 MB"``, ``"1.5g"`` or ``1024``.

    Args:
        value: A number of bytes, or a number with a unit (B, KB/MB/GB/TB = powers of 1000,
            KiB/MiB/GiB/TiB = powers of 1024; K/M/G/T alone = powers of 1000).

    Returns:
        The size in bytes, rounded down.

    Raises:
        ValueError: The text is not a size, or it is negative.
    """
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"memory size must be >= 0, got {value}")
        return int(value)
    match = _BYTES_RE.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read {value!r} as a memory size; write e.g. '8GiB', '512MB' or '1073741824'"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(nbytes: float) -> str:
    """Format a byte count with a binary unit, e.g. ``"1.5 GiB"``."""
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def available_ram_bytes() -> int:
    """Bytes of RAM available to new allocations without swapping (``MemAvailable``).

    Uses psutil when installed, else ``/proc/meminfo``, else the physical page count.
    """
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # Last resort (no psutil, not Linux): total physical memory overestimates what is free.
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass(frozen=True)
class CudaDevice:
    """A CUDA device this process may use, as the driver reports it.

    Attributes:
        name: The pool's device name, ``"cuda:<index>"`` numbered as CUDA numbers the visible
            devices (after ``CUDA_VISIBLE_DEVICES``).
        free_bytes: Free memory now, when known without creating a CUDA context.
        total_bytes: Total memory, when known.
    """

    name: str
    free_bytes: int | None = None
    total_bytes: int | None = None


_NVIDIA_SMI_QUERY = (
    "--query-gpu=index,uuid,memory.free,memory.total",
    "--format=csv,noheader,nounits",
)
_PROC_NVIDIA_GPUS = "/proc/driver/nvidia/gpus"


@dataclass(frozen=True)
class _PhysicalGpu:
    index: int
    uuid: str | None
    free_bytes: int | None
    total_bytes: int | None


def _mib(text: str) -> int | None:
    try:
        return int(float(text)) * 2**20
    except ValueError:  # "[N/A]" and the like
        return None


def _gpus_from_nvidia_smi(executable: str) -> list[_PhysicalGpu] | None:
    import subprocess

    try:
        proc = subprocess.run(
            [executable, *_NVIDIA_SMI_QUERY],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    gpus = []
    for line in proc.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        index, uuid, free, total = fields[:4]
        gpus.append(_PhysicalGpu(int(index), uuid or None, _mib(free), _mib(total)))
    return gpus


def _gpus_from_proc(proc_dir: str) -> list[_PhysicalGpu]:
    try:
        count = sum(1 for _ in os.scandir(proc_dir))
    except OSError:
        return []
    return [_PhysicalGpu(i, None, None, None) for i in range(count)]


def _apply_visible_devices(gpus: list[_PhysicalGpu], spec: str | None) -> list[_PhysicalGpu]:
    """Select and order GPUs as CUDA does for ``CUDA_VISIBLE_DEVICES`` (None: all of them).

    Entries are physical indexes, (prefixes of) ``GPU-...`` UUIDs or ``MIG-...`` instances
    (memory unknown); like CUDA, the list ends at the first entry that names no device (or
    repeats one).
    """
    if spec is None:
        return list(gpus)
    chosen: list[_PhysicalGpu] = []
    for raw in spec.split(","):
        item = raw.strip()
        if item.isdigit():
            match = next((g for g in gpus if g.index == int(item)), None)
        elif item.startswith("GPU-"):
            match = next((g for g in gpus if g.uuid and g.uuid.startswith(item)), None)
        elif item.startswith("MIG-"):
            match = _PhysicalGpu(-1, item, None, None)
        else:
            match = None
        if match is None or match in chosen:
            break
        chosen.append(match)
    return chosen


def visible_cuda_devices(
    *,
    environ: Mapping[str, str] | None = None,
    allow_torch: bool = True,
    nvidia_smi: str | None = "nvidia-smi",
    proc_dir: str = _PROC_NVIDIA_GPUS,
) -> list[CudaDevice]:
    """The CUDA devices this process can use, found without importing torch.

    When torch is already imported (and ``allow_torch``), it is asked -- that costs nothing more.
    Otherwise the driver is: ``nvidia-smi`` (which also gives each device's free memory), else
    the entries of ``/proc/driver/nvidia/gpus``; ``CUDA_VISIBLE_DEVICES`` then selects and orders
    them as CUDA would. Physical GPUs are numbered in PCI bus order (nvidia-smi's); CUDA numbers
    them the same way with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or when the GPUs are alike (its
    default order puts the fastest first).

    Args:
        environ: Environment to read ``CUDA_VISIBLE_DEVICES`` from (default ``os.environ``).
        allow_torch: Ask torch when it is already imported.
        nvidia_smi: The nvidia-smi executable (looked up on ``PATH``); None skips it.
        proc_dir: The driver's per-GPU folder, used when nvidia-smi gives no answer.

    Returns:
        The devices, ``cuda:0`` first; empty without a driver or a visible device.
    """
    torch = sys.modules.get("torch") if allow_torch else None
    if torch is not None:
        try:
            count = int(torch.cuda.device_count())
        except Exception:  # noqa: BLE001 - a broken CUDA install means no usable device
            count = 0
        return [CudaDevice(f"cuda:{i}") for i in range(count)]
    env = os.environ if environ is None else environ
    gpus: list[_PhysicalGpu] | None = None
    if nvidia_smi:
        import shutil

        executable = shutil.which(nvidia_smi, path=env.get("PATH"))
        if executable:
            gpus = _gpus_from_nvidia_smi(executable)
    if gpus is None:
        gpus = _gpus_from_proc(proc_dir)
    visible = _apply_visible_devices(gpus, env.get("CUDA_VISIBLE_DEVICES"))
    return [CudaDevice(f"cuda:{i}", g.free_bytes, g.total_bytes) for i, g in enumerate(visible)]


def measure_bytes(obj: Any) -> int | None:
    """Bytes held by a model object: parameters and buffers of torch modules, tensors, arrays.

    Looks through torch modules, tensors, objects with an integer ``nbytes`` (numpy arrays),
    mappings, lists and tuples, diffusers pipelines (``components``) and wrappers that keep their
    module in ``.model`` (e.g. segment-anything's predictor). Storage shared by several tensors
    (tied weights) is counted once.

    Args:
        obj: The loaded model.

    Returns:
        The byte count, or ``None`` when nothing measurable was found.
    """
    torch = sys.modules.get("torch")
    seen: set[int] = set()  # ids of visited containers, so cycles end
    storages: set[int] = set()  # storages already counted, so tied weights count once
    found = False
    total = 0

    def add_tensor(tensor: Any) -> None:
        nonlocal total
        try:
            storage = tensor.untyped_storage()
            ident, nbytes = storage.data_ptr() or id(storage), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # meta or sparse tensors have no storage
            ident, nbytes = id(tensor), tensor.numel() * tensor.element_size()
        if ident not in storages:
            storages.add(ident)
            total += nbytes

    def visit(item: Any, depth: int) -> None:
        nonlocal found, total
        if item is None or depth > 4 or id(item) in seen:
            return
        if torch is not None and isinstance(item, torch.nn.Module):
            seen.add(id(item))
            found = True
            for tensor in item.parameters():
                add_tensor(tensor)
            for tensor in item.buffers():
                add_tensor(tensor)
        elif torch is not None and isinstance(item, torch.Tensor):
            found = True
            add_tensor(item)
        elif isinstance(getattr(item, "nbytes", None), int):
            seen.add(id(item))
            found = True
            total += item.nbytes
        elif isinstance(item, Mapping):
            seen.add(id(item))
            for value in item.values():
                visit(value, depth + 1)
        elif isinstance(item, list | tuple):
            seen.add(id(item))
            for value in item:
                visit(value, depth + 1)
        elif isinstance(getattr(item, "components", None), Mapping):  # diffusers pipelines
            seen.add(id(item))
            visit(item.components, depth + 1)
        elif hasattr(item, "model"):  # predictors and other thin wrappers
            seen.add(id(item))
            visit(item.model, depth + 1)

    visit(obj, 0)
    return total if found else None


def default_move(model: Any, device: str) -> Any:
    """Move ``model`` to ``device`` with its ``.to(device)`` method (torch modules, pipelines).

    Returns:
        The moved model (``.to`` of ``nn.Module`` moves in place and returns the same object).

    Raises:
        ModelPoolError: The object has no ``.to`` method; give the spec a ``move`` function.
    """
    to = getattr(model, "to", None)
    if not callable(to):
        raise ModelPoolError(
            f"cannot move a {type(model).__name__} to {device}: it has no .to(device) method. "
            "Give its ModelSpec a move=... function or offloadable=False."
        )
    moved = to(device)
    return model if moved is None else moved


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) means memory ran out.

    True for :class:`MemoryError`, ``torch.cuda.OutOfMemoryError``,
    :class:`~zoomearth.errors.ModelTooLargeError`, and any exception whose message contains
    "out of memory" (CUDA/MPS errors raised as plain ``RuntimeError``).
    """
    torch = sys.modules.get("torch")
    torch_oom: tuple[type[BaseException], ...] = ()
    if torch is not None:
        oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
        torch_oom = (oom_type,) if isinstance(oom_type, type) else ()
    current: BaseException | None = exc
    for _ in range(8):  # tools wrap errors; a short walk down the chain finds the cause
        if current is None or isinstance(current, ModelFallbackRequired):
            return False
        if isinstance(current, (MemoryError, ModelTooLargeError, *torch_oom)):
            return True
        text = str(current).lower()
        if any(marker in text for marker in _OOM_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _short_error(exc: BaseException, limit: int = 160) -> str:
    # CUDA OOM texts run to several lines of allocator advice; the first line says what happened.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


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


class _DeviceGate:
    """A counting semaphore for one device, re-entrant per thread.

    Re-entrant because one thread may legitimately use two models on one device at once (nested
    ``use``), and with ``concurrency=1`` a plain semaphore would deadlock that thread.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._cond = threading.Condition()
        self._holders: dict[int, int] = {}

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._holders)

    def acquire(self, timeout: float | None) -> bool:
        me = threading.get_ident()
        with self._cond:
            if me in self._holders:
                self._holders[me] += 1
                return True
            if not self._cond.wait_for(lambda: len(self._holders) < self.capacity, timeout):
                return False
            self._holders[me] = 1
            return True

    def release(self) -> None:
        me = threading.get_ident()
        with self._cond:
            count = self._holders.get(me, 0)
            if count <= 1:
                self._holders.pop(me, None)
                # notify_all, not notify: a woken waiter whose timeout just expired would
                # otherwise swallow the wake-up and leave the free slot unclaimed.
                self._cond.notify_all()
            else:
                self._holders[me] = count - 1


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------


class ModelPool:
    """Shares device memory between models: lazy loads, budgets, LRU eviction, OOM fallbacks.

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

    # ---- devices and budgets ---------------------------------------------------------------

    @staticmethod
    def _normalise(device: str) -> str:
        name = str(device).strip().lower()
        return "cpu" if name in ("cpu", "cpu:0") else name

    def resolve_device(self, device: str = "auto") -> str:
        """Normalise a device request: ``"auto"``, ``"cuda"`` -> ``"cuda:<current>"``, ``"cpu"``.

        ``"auto"`` and a bare ``"cuda"`` import torch (that is when a model is about to be used,
        never at import time).

        Raises:
            ModelPoolError: ``"cuda"`` was asked for but torch sees no CUDA device.
        """
        name = self._normalise(device)
        if name == "auto":
            if self._default_device is None:
                self._default_device = self._detect_default_device()
            return self._default_device
        if name == "cuda":
            torch = self._import_torch()
            if torch is None or not torch.cuda.is_available():
                raise ModelPoolError(
                    "device 'cuda' was asked for but no CUDA device is visible; "
                    "use device 'cpu' or 'auto'."
                )
            return f"cuda:{torch.cuda.current_device()}"
        return name

    @staticmethod
    def _import_torch() -> Any:
        try:
            import torch
        except ImportError:
            return None
        return torch

    def _detect_default_device(self) -> str:
        torch = self._import_torch()
        if torch is not None and torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        return "cpu"

    def budget(self, device: str) -> int:
        """The memory budget in bytes of ``device`` (measured on first call if not configured).

        Raises:
            ModelPoolError: No budget is configured and the device cannot be measured.
        """
        device = self.resolve_device(device)
        with self._cond:
            return self._budget(device)

    def configured_budget(self, device: str) -> int | None:
        """The budget of ``device`` if known without measuring it (configured or measured before).

        Unlike :meth:`budget` this never imports torch nor touches a device, so status displays
        can call it cheaply; None means the budget is measured on first use.
        """
        name = self._normalise(device)
        if name in ("auto", "cuda"):
            return None
        with self._cond:
            if name in self._budgets:
                return self._budgets[name]
            if name in self._budget_config:
                return self._budget_config[name]
            return self._budget_config.get(name.split(":", 1)[0])

    def set_budget(self, device: str, nbytes: int) -> None:
        """Change the budget of ``device``; models over it are evicted on the next load there."""
        if nbytes < 0:
            raise ValueError(f"budget must be >= 0 bytes, got {nbytes}")
        device = self.resolve_device(device)
        with self._cond:
            self._budget_config[device] = int(nbytes)
            self._budgets[device] = int(nbytes)

    def _budget(self, device: str) -> int:
        if device in self._budgets:
            return self._budgets[device]
        kind = device.split(":", 1)[0]
        if device in self._budget_config:
            budget = self._budget_config[device]
        elif kind in self._budget_config:
            budget = self._budget_config[kind]
        elif device == "cpu":
            budget = int(available_ram_bytes() * self.budget_fraction)
        elif kind == "cuda":
            torch = self._import_torch()
            if torch is None or not torch.cuda.is_available():
                raise ModelPoolError(NO_BUDGET_TEMPLATE.format(device=device))
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            free, _total = torch.cuda.mem_get_info(index)
            budget = int(free * self.budget_fraction)
        else:
            raise ModelPoolError(NO_BUDGET_TEMPLATE.format(device=device))
        self._budgets[device] = budget
        return budget

    def _concurrency_of(self, device: str) -> int:
        if isinstance(self._concurrency, Mapping):
            kind = device.split(":", 1)[0]
            value = self._concurrency.get(device, self._concurrency.get(kind, 1))
            return int(value)
        return int(self._concurrency)

    def _gate(self, device: str) -> _DeviceGate:
        with self._cond:
            gate = self._gates.get(device)
            if gate is None:
                gate = self._gates[device] = _DeviceGate(self._concurrency_of(device))
            return gate

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

    # ---- warnings -----------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def format_stats(stats: PoolStats) -> str:
    """Render :class:`PoolStats` as plain-text tables (for ``zoomearth models``)."""
    lines: list[str] = []
    if stats.devices:
        rows = [
            [
                d.device,
                format_bytes(d.budget_bytes),
                format_bytes(d.used_bytes),
                format_bytes(d.peak_bytes),
                str(d.concurrency),
                str(d.active),
            ]
            for d in stats.devices
        ]
        headers = ["device", "budget", "used", "peak", "concurrency", "active"]
        lines += _table(headers, rows, right={1, 2, 3, 4, 5})
    else:
        lines.append("no device used yet")
    lines.append("")
    if stats.models:
        rows = [
            [
                m.key,
                m.device,
                m.state if m.location in (None, m.device) else f"{m.state} ({m.location})",
                format_bytes(m.nbytes) if m.state != "unloaded" else "-",
                str(m.hits),
                str(m.loads),
                str(m.restores),
                f"{m.load_seconds:.2f}",
                f"{m.compute_seconds:.2f}",
            ]
            for m in stats.models
        ]
        headers = [
            "model",
            "device",
            "state",
            "size",
            "hits",
            "loads",
            "restores",
            "load s",
            "use s",
        ]
        lines += _table(headers, rows, right={3, 4, 5, 6, 7, 8})
    else:
        lines.append("no model loaded yet")
    lines.append("")
    lines.append(
        f"hits {stats.hits}, misses {stats.misses}, restores {stats.restores}, "
        f"evictions {stats.evictions} (offloaded {stats.offloads}, freed {stats.frees}), "
        f"out-of-memory {stats.ooms}, fallbacks {stats.fallbacks}; "
        f"loading {stats.load_seconds:.2f} s, transfers {stats.transfer_seconds:.2f} s, "
        f"in use {stats.compute_seconds:.2f} s"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Process-wide default pool
# --------------------------------------------------------------------------------------------

_default_pool: ModelPool | None = None  # installed by set_default_pool: used for every call
_pools_by_config: dict[tuple[int | None, float, int], ModelPool] = {}
_default_pool_lock = threading.Lock()


def _pool_config(settings: Any) -> tuple[int | None, float, int]:
    """The pool configuration of ``settings`` (None: the defaults), as a hashable key."""
    budget = getattr(settings, "model_pool_budget_bytes", None)
    return (
        int(budget) if budget else None,
        float(getattr(settings, "model_pool_fraction", 0.8)),
        int(getattr(settings, "model_pool_concurrency", 1)),
    )


def pool_from_settings(settings: Any) -> ModelPool:
    """A new pool configured by the settings.

    Uses ``model_pool_budget_bytes`` (per device; None = a fraction of free memory),
    ``model_pool_fraction`` and ``model_pool_concurrency``.
    """
    budget, fraction, concurrency = _pool_config(settings)
    budgets = {"cpu": budget, "cuda": budget} if budget else None
    return ModelPool(budgets, concurrency=concurrency, budget_fraction=fraction)


def get_default_pool(settings: Any = None) -> ModelPool:
    """The process-wide pool for ``settings``: shared by every component with the same budgets.

    There is one pool per distinct pool configuration (``model_pool_budget_bytes``,
    ``model_pool_fraction``, ``model_pool_concurrency``; see :func:`pool_from_settings`),
    created on first request and reused afterwards, so the planner and the tools of one
    configuration share their resident models and one budget. ``settings=None`` means the
    default configuration (the same pool as settings that leave the three values at their
    defaults). A second ``Agent`` built with another budget gets its own pool: models resident
    in the first pool stay there (owned by the first pool, freed by its LRU policy or
    :meth:`ModelPool.clear`); the two pools do not count each other's memory, so give every
    component of a process the same budget settings -- or pass one pool explicitly -- when
    they share a GPU.

    A pool installed with :func:`set_default_pool` overrides all of this: it is returned for
    every call, whatever the settings.
    """
    with _default_pool_lock:
        if _default_pool is not None:
            return _default_pool
        key = _pool_config(settings)
        pool = _pools_by_config.get(key)
        if pool is None:
            pool = _pools_by_config[key] = pool_from_settings(settings)
        return pool


def set_default_pool(pool: ModelPool | None) -> ModelPool | None:
    """Install ``pool`` as the pool of every :func:`get_default_pool` call (``None``: remove it).

    An embedding application uses this to make all components share one pool it configured;
    tests use it to install a pool with a small budget. Removing the installed pool also forgets
    the per-configuration pools, so the next requests create fresh ones (pools already handed
    out stay valid for their holders).

    Returns:
        The previously installed pool (None when there was none), so callers can restore it
        with ``set_default_pool(previous)``.
    """
    global _default_pool
    with _default_pool_lock:
        previous, _default_pool = _default_pool, pool
        if pool is None:
            _pools_by_config.clear()
        return previous
