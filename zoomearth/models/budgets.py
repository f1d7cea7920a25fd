"""Device names, memory budgets and per-device gates: the configuration half of the pool.

:class:`DeviceBudgets` is the part of :class:`~zoomearth.models.ModelPool` that turns a device
request (``"auto"``, ``"cuda"``, ``"cuda:1"``) into a device name, knows each device's memory
budget (configured, or measured on first use) and how many threads may use the device at once
(:class:`_DeviceGate`). ``ModelPool`` inherits it: the pool's ``__init__`` sets the attributes
declared here, and the pool's lock guards them. The messages the pool gives when a budget is
short live here too.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from zoomearth.errors import ModelPoolError
from zoomearth.models.memory import available_ram_bytes

__all__ = ["BUDGET_HINT", "DeviceBudgets"]

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


class DeviceBudgets:
    """Device resolution, memory budgets and gates of a :class:`~zoomearth.models.ModelPool`.

    A base class of the pool, not used alone: ``ModelPool.__init__`` sets the attributes below,
    and the pool's lock (``_cond``) guards the budget and gate dictionaries.
    """

    _cond: threading.Condition
    _budget_config: dict[str, int]
    _budgets: dict[str, int]
    _gates: dict[str, _DeviceGate]
    _concurrency: int | Mapping[str, int]
    _default_device: str | None
    budget_fraction: float

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
