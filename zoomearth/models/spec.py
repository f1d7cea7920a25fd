"""How to load, measure and move one model (:class:`ModelSpec`), and the default move.

A :class:`ModelSpec` is what callers hand to :class:`~zoomearth.models.ModelPool`; the pool
decides when to load, offload, restore or free the model it describes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zoomearth.errors import ModelPoolError

__all__ = ["ModelSpec", "default_move"]


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
