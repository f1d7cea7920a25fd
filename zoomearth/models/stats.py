"""Snapshots of the model pool (:meth:`ModelPool.stats`) and their plain-text rendering.

:class:`PoolStats` holds a :class:`ModelStats` per model and a :class:`DeviceStats` per device;
:func:`format_stats` renders them as tables for ``zoomearth models``; ``PoolStats.to_dict`` is
what the server's API returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from zoomearth.models.memory import format_bytes

__all__ = ["DeviceStats", "ModelState", "ModelStats", "PoolStats", "format_stats"]

ModelState = Literal["unloaded", "loading", "resident", "offloaded"]


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
