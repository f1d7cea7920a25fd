"""Byte sizes and out-of-memory errors: the model pool's memory helpers.

Parsing and formatting sizes (``"8GiB"``, ``"1.5 GiB"``), the RAM available to new allocations,
the bytes a loaded model holds, and whether an exception means memory ran out. Used by
:mod:`zoomearth.models.pool`; exported by :mod:`zoomearth.models`.

Importing this module does not import torch: torch is looked up in ``sys.modules`` (if it is not
imported, no torch object can exist yet).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from zoomearth.errors import ModelFallbackRequired, ModelTooLargeError

__all__ = [
    "available_ram_bytes",
    "format_bytes",
    "is_out_of_memory",
    "measure_bytes",
    "parse_bytes",
]

# Substrings of out-of-memory messages from torch (CUDA, MPS, cuDNN, cuBLAS) and allocators that
# raise plain RuntimeError instead of torch.cuda.OutOfMemoryError.
_OOM_MARKERS = ("out of memory", "cudnn_status_alloc_failed", "cublas_status_alloc_failed")

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
